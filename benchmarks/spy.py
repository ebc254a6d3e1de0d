"""Where a worker's time goes, from py-spy samples of a running gunicorn worker.

Each sample is a Python stack; it is counted for the first of these found on it:
the store's client (``wsgi_isr/stores``, redis-py, hiredis: the Redis round trip and
its socket calls), the cache layer (the rest of ``wsgi_isr``, Flask-Caching and
cachelib), the application (Flask, werkzeug), else the server (gunicorn's HTTP
parsing and writing, gevent's hub). Samples of a worker waiting in its event loop are
not taken (py-spy leaves idle threads out), so the shares are of its busy time —
wall-clock samples: a system call that wakes another process (a send to Redis or to
the client) counts for as long as it takes, preemption by other processes included,
so the shares lean towards the socket calls on a loaded machine; the harness's CPU
per request from ``/proc`` is the steadier figure.

    shares = worker_shares(server_pid, seconds=3)   # {"store client": 0.31, ...}

Needs ``py-spy`` (``pip install py-spy``) and the right to trace the worker (root, or
``kernel.yama.ptrace_scope=0``); without them the split is left out of the report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks.servers import children

#: (group, path prefixes of py-spy's frame files), first match wins
GROUPS = (
    ("store client", ("wsgi_isr/stores/", "redis/", "hiredis/")),
    ("cache layer", ("wsgi_isr/", "flask_caching/", "cachelib/")),
    ("app (Flask, werkzeug)", ("flask/", "werkzeug/")),
)
SERVER = "server (gunicorn, gevent hub)"


def _binary() -> str | None:
    """py-spy on PATH, else next to this Python (a virtualenv not activated)."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return shutil.which("py-spy") or (beside if os.access(beside, os.X_OK) else None)


def available() -> bool:
    return _binary() is not None


def record(pid: int, seconds: float, rate: int = 250) -> str | None:
    """py-spy's collapsed stacks (``frame;frame;... count`` lines) of ``pid`` over
    ``seconds``; None if py-spy could not trace it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "stacks.txt")
        cmd = [_binary() or "py-spy", "record", "-p", str(pid), "-d", str(max(1, round(seconds)))]
        cmd += ["-r", str(rate), "-f", "raw", "-o", out, "--nonblocking"]
        try:
            subprocess.run(cmd, capture_output=True, timeout=seconds + 30, check=True)
            with open(out) as f:
                return f.read()
        except (OSError, subprocess.SubprocessError):
            return None


def _group(frames: list[str]) -> str:
    files = [f.rpartition(" (")[2] for f in frames]
    for name, prefixes in GROUPS:
        marks = tuple("/" + p for p in prefixes)
        if any(path.startswith(prefixes) or any(m in path for m in marks) for path in files):
            return name
    return SERVER


def shares(stacks: str) -> dict[str, float]:
    """Each group's share of the samples in ``stacks`` (py-spy's raw format).

    >>> shares("a (gunicorn/x.py:1);b (wsgi_isr/m.py:2);c (redis/c.py:3) 3\\n"
    ...        "a (gunicorn/x.py:1);b (wsgi_isr/m.py:2) 1\\n")
    {'store client': 0.75, 'cache layer': 0.25}
    """
    counts: dict[str, int] = {}
    for line in stacks.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        group = _group(stack.split(";"))
        counts[group] = counts.get(group, 0) + int(n)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def worker_shares(master: int, seconds: float) -> dict[str, float] | None:
    """:func:`shares` of one worker of gunicorn ``master`` over ``seconds`` (the caller
    keeps it loaded meanwhile)."""
    pids = children(master)  # gunicorn's workers
    stacks = record(pids[0], seconds) if pids and available() else None
    return shares(stacks) if stacks else None
