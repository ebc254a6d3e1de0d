"""The machine and software a benchmark run measured on, for ``RESULTS.md``."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata

from benchmarks.load import wrk_path


def machine() -> dict[str, str]:
    """CPU, cores, OS, Python and the versions of everything measured."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wsgi_isr commit": _commit(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    for dist in ("gunicorn", "gevent", "werkzeug", "flask", "flask-caching", "cachelib", "redis"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    info["redis-server"] = _version(["redis-server", "--version"], r"v=(\S+)")
    info["wrk"] = _version([wrk_path() or "wrk", "--version"], r"wrk (\S+)")
    info["nginx"] = _version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"], r"nginx/(\S+)")
    return info


def _commit() -> str:
    """The checked-out commit, ``+ changes`` when the work tree differs from it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "wsgi_isr"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + (" + uncommitted changes to wsgi_isr/" if dirty else "")


def _version(cmd: list[str], pattern: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    m = re.search(pattern, proc.stdout + proc.stderr)
    return m.group(1) if m else "unknown"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
