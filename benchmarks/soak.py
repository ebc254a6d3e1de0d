"""Soak test: the example blog under sustained load with constant invalidations.

    python benchmarks/soak.py                      # 10 minutes, file store
    python benchmarks/soak.py --minutes 1 --store redis

Starts ``gunicorn -k gevent -w 2`` on the example blog (its own SQLite database and
store in a temporary directory; with ``--store redis`` its own redis-server on a free
port), warms it up, then runs ``wrk`` over a mix of post pages, listing pages and the
time-based ``/clock`` page for the given time while, every second, a random post's tag
is revalidated through the endpoint and, every five seconds, a random post is edited
through the password-protected form. It reports requests served, non-2xx/3xx answers,
socket errors, regenerations, p50/p99 latency, and each worker's RSS after warm-up and
at the end. Not part of the test suite; loopback only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SECRET = "soak-secret-0123456789abcdef0123456789abcdef"
PASSWORD = "soak-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def worker_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def regenerations(port: int, workers: int) -> dict[str, int]:
    """Sum of regenerations_ok over the workers (scraped until every pid answered)."""
    seen: dict[str, int] = {}
    for _ in range(200):
        status, body = request(
            port, "GET", "/_isr/metrics", headers={"Authorization": f"Bearer {SECRET}"}
        )
        m = re.search(rb'wsgi_isr_regenerations_total\{pid="(\d+)",result="ok"\} (\d+)', body)
        if status == 200 and m:
            seen[m.group(1).decode()] = int(m.group(2))
        if len(seen) >= workers:
            break
    return seen


def churn(port: int, slugs: list[str], stop: threading.Event, counts: dict[str, int]) -> None:
    """A tag invalidation every second, an edit every fifth second."""
    rng = random.Random(7)
    tick = 0
    while not stop.wait(1.0):
        tick += 1
        slug = rng.choice(slugs)
        body = json.dumps({"tag": f"post-{slug}"}).encode()
        status, _ = request(
            port,
            "POST",
            "/_isr/revalidate",
            body,
            {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
        )
        counts["invalidations" if status == 200 else "invalidation_errors"] += 1
        if tick % 5 == 0:
            form = urllib.parse.urlencode(
                {"title": f"Edited {tick}", "body": f"edit {tick}", "password": PASSWORD}
            ).encode()
            status, _ = request(
                port,
                "POST",
                f"/edit/{rng.choice(slugs)}",
                form,
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
            counts["edits" if status == 303 else "edit_errors"] += 1


def wrk_script(paths: list[str], directory: str) -> str:
    path = os.path.join(directory, "paths.lua")
    with open(path, "w") as f:
        f.write("paths = {" + ",".join(json.dumps(p) for p in paths) + "}\n")
        f.write(
            "request = function()\n  return wrk.format('GET', paths[math.random(#paths)])\nend\n"
        )
    return path


def parse_wrk(out: str) -> dict[str, Any]:
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    def latency(label: str) -> float:
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return 0.0
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": num(r"(\d+) requests in"),
        "non_2xx_3xx": num(r"Non-2xx or 3xx responses: (\d+)"),
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
        "socket_error_detail": errors.group(0) if errors else "",
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "rps": num(r"Requests/sec:\s+([\d.]+)"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before RSS baseline")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--store", choices=["file", "redis"], default="file")
    parser.add_argument("--no-churn", action="store_true", help="load only (for comparison)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2

    tmp = tempfile.mkdtemp(prefix="wsgi-isr-soak-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = dict(
            os.environ,
            BLOG_DB=os.path.join(tmp, "blog.db"),
            ISR_SECRET=SECRET,
            BLOG_PASSWORD=PASSWORD,
        )
        if args.store == "redis":
            rport = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(rport),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        tmp,
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            env["ISR_STORE"] = f"redis://127.0.0.1:{rport}/0"
        else:
            env["ISR_STORE"] = f"file://{tmp}/store"
        port = free_port()
        log = open(os.path.join(tmp, "gunicorn.log"), "wb")  # noqa: SIM115
        gunicorn = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "examples/flask_blog/gunicorn.conf.py",
                "-w",
                str(args.workers),
                "-b",
                f"127.0.0.1:{port}",
                "--access-logfile",
                "/dev/null",
                "--no-control-socket",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(gunicorn)
        for _ in range(300):
            try:
                if request(port, "GET", "/clock")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        db = sqlite3.connect(env["BLOG_DB"])
        slugs = [r[0] for r in db.execute("SELECT slug FROM posts ORDER BY id LIMIT 2000")]
        db.close()
        paths = [f"/posts/{s}" for s in slugs] + [f"/?page={i}" for i in range(1, 51)] + ["/clock"]
        script = wrk_script(paths, tmp)

        def load(seconds: float) -> dict[str, Any]:
            out = subprocess.run(
                [
                    "wrk",
                    "-t2",
                    f"-c{args.connections}",
                    f"-d{int(seconds)}s",
                    "--latency",
                    "-s",
                    script,
                    f"http://127.0.0.1:{port}",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            return parse_wrk(out)

        print(f"warming up for {args.warmup:.0f} s ...", flush=True)
        load(args.warmup)
        pids = worker_pids(gunicorn.pid)
        rss_start = {pid: rss_kib(pid) for pid in pids}
        regen_start = regenerations(port, len(pids))

        counts = {"invalidations": 0, "invalidation_errors": 0, "edits": 0, "edit_errors": 0}
        stop = threading.Event()
        churner = threading.Thread(target=churn, args=(port, slugs, stop, counts))
        if not args.no_churn:
            churner.start()
        print(f"soaking for {args.minutes:g} min ...", flush=True)
        result = load(args.minutes * 60)
        stop.set()
        if churner.is_alive():
            churner.join()
        time.sleep(2)  # let the last regenerations land

        pids_end = worker_pids(gunicorn.pid)
        rss_end = {pid: rss_kib(pid) for pid in pids_end}
        regen_end = regenerations(port, len(pids_end))
        regens = sum(regen_end.values()) - sum(
            v for k, v in regen_start.items() if int(k) in pids_end
        )
        growth = max((rss_end.get(pid, 0) - rss_start[pid]) / rss_start[pid] for pid in rss_start)
        print(f"\nstore: {args.store}; workers: {args.workers}; connections: {args.connections}")
        print(f"duration:              {args.minutes:g} min (after {args.warmup:.0f} s warm-up)")
        print(f"requests served:       {int(result['requests'])} ({result['rps']:.0f} req/s)")
        print(f"non-2xx/3xx answers:   {int(result['non_2xx_3xx'])}")
        print(
            f"socket errors:         {int(result['socket_errors'])} {result['socket_error_detail']}"
        )
        print(f"latency p50 / p99:     {result['p50_ms']:.2f} ms / {result['p99_ms']:.2f} ms")
        print(
            f"invalidations / edits: {counts['invalidations']} / {counts['edits']} "
            f"(errors {counts['invalidation_errors']} / {counts['edit_errors']})"
        )
        print(f"regenerations:         {regens}")
        print(f"workers restarted:     {sorted(set(pids) ^ set(pids_end)) or 'none'}")
        for pid in pids:
            end = rss_end.get(pid)
            print(
                f"RSS worker {pid}:      {rss_start[pid] / 1024:.1f} MiB -> "
                f"{(end or 0) / 1024:.1f} MiB"
            )
        print(f"max RSS growth:        {growth * 100:.1f} %")
        ok = (
            result["non_2xx_3xx"] == 0
            and result["socket_errors"] == 0
            and counts["invalidation_errors"] == 0
            and counts["edit_errors"] == 0
            and growth < 0.10
        )
        print("RESULT:", "PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
