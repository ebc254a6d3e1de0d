"""Instructions per request of a real gunicorn worker, counted by callgrind (noise-free).

    python benchmarks/callgrind/server_instructions.py [--requests 1000] [--only a,b]

Each contender of the throughput section (``bare``, ``bare-headers``, ``isr-memory``, ``isr-
file``, ``isr-redis-local``, ``isr-redis``, ``flask-caching``; the Redis ones on a redis-
server of their own), and ``isr-file-no-memo`` (``memo_bytes=0``: each hit reads and decodes
its file, as a page out of the memo's reach does), runs under ``gunicorn -k gevent -w 1``
inside valgrind with instrumentation off; after warm-up requests on ``/page`` (every answer
a hit), the worker's counters are switched on and zeroed (``callgrind_control``), one keep-
alive connection makes ``--requests`` more, and the dump's total over that number is the
figure: every instruction the worker runs in user space for one request (gunicorn's parsing
and writing, gevent, the app, the middleware, the store client), none of redis-server's or
the kernel's. The same code gives the same count on any load, which wall-clock and CPU
ratios on a shared machine do not (``benchmarks/PROFILE.md`` reads these figures).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

from benchmarks.servers import HOST, children, free_port  # noqa: E402

#: name -> the environment of ``benchmarks.apps:from_env()`` ("{redis}": the server's URL,
#: "{dir}": a directory of the run's own)
CONTENDERS: dict[str, dict[str, str]] = {
    "bare": {"BENCH_APP": "bare"},
    "bare-headers": {"BENCH_APP": "bare-headers"},
    "isr-memory": {"BENCH_APP": "isr", "BENCH_STORE": "memory://"},
    "isr-file": {"BENCH_APP": "isr", "BENCH_STORE": "file://{dir}/file-store"},
    # no memo: every hit reads and decodes its file, as a page out of a memo's reach does
    "isr-file-no-memo": {"BENCH_APP": "isr", "BENCH_STORE": "file://{dir}/file-nm?memo_bytes=0"},
    "isr-redis-local": {"BENCH_APP": "isr", "BENCH_STORE": "{redis}", "BENCH_LOCAL_TTL": "60"},
    "isr-redis": {"BENCH_APP": "isr", "BENCH_STORE": "{redis}"},
    "flask-caching": {"BENCH_APP": "flask-caching"},
}


def requests(port: int, n: int, hits: bool = False) -> None:
    """``n`` GETs of ``/page`` on one keep-alive connection, each answered 200 (and, with
    ``hits``, a wsgi_isr ``HIT``: a store that failed open would count the render path)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        for _ in range(n):
            conn.request("GET", "/page")
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise SystemExit(f"/page answered {reply.status}")
            if hits and reply.getheader("X-ISR-Cache") != "HIT":
                raise SystemExit(f"/page answered X-ISR-Cache: {reply.getheader('X-ISR-Cache')}")
    finally:
        conn.close()


def _worker_of(master: int) -> int:
    """The one worker gunicorn forked (valgrind follows it: same pid, its own dump)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        forked = children(master)
        if forked:
            return forked[0]
        time.sleep(0.2)
    raise SystemExit("gunicorn started no worker")


def count(name: str, env: dict[str, str], workdir: str, n: int) -> int:
    """Instructions the worker of ``name`` runs per request, over ``n`` requests."""
    port = free_port()
    out = os.path.join(workdir, f"cg.{name}.%p.out")
    hits = env.get("BENCH_APP") == "isr"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        shutil.which("gunicorn") or "gunicorn",
        "-k",
        "gevent",
        "-w",
        "1",
        "-b",
        f"{HOST}:{port}",
        "--timeout",
        "0",  # a worker slowed down 50 times by valgrind is not hung
        "benchmarks.apps:from_env()",
    ]
    full_env = {**os.environ, "PYTHONPATH": REPO, **env}
    with open(os.path.join(workdir, f"{name}.log"), "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stdout=log, stderr=log, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                requests(port, 1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{name} did not start (see {workdir}/{name}.log)") from None
                time.sleep(1)
        requests(port, 200)  # every page cached, every lazy set-up done
        requests(port, 10, hits)
        worker = _worker_of(proc.pid)
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(worker)], check=True, capture_output=True)
        requests(port, 200)  # what instrumenting anew costs once: not counted
        subprocess.run([*control, "-z", str(worker)], check=True, capture_output=True)
        requests(port, n, hits)
        subprocess.run([*control, "-d", str(worker)], check=True, capture_output=True)
        dumps = sorted(
            glob.glob(os.path.join(workdir, f"cg.{name}.{worker}.out.*")),
            key=lambda path: int(path.rsplit(".", 1)[1]),
        )
        if not dumps:
            raise SystemExit(f"no callgrind dump for {name}")
        with open(dumps[-1]) as f:
            total = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if total is None:
            raise SystemExit(f"no total in {dumps[-1]}")
        return int(total.group(1)) // n
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_redis(url: str) -> None:
    """Until redis-server answers PING (a store that is not up fails open: renders)."""
    import redis

    deadline = time.monotonic() + 10
    client = redis.Redis.from_url(url)
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--only", help="comma-separated contenders (default: all)")
    args = parser.parse_args()
    names = list(CONTENDERS) if not args.only else args.only.split(",")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install valgrind)")
    workdir = tempfile.mkdtemp(prefix="isr-cg-")  # kept when a contender fails: its log
    redis_server = None
    redis_url = ""
    if any("{redis}" in v for n in names for v in CONTENDERS[n].values()):
        rport = free_port()
        redis_server = subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", HOST, "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        redis_url = f"redis://{HOST}:{rport}/0"
    try:
        if redis_server is not None:
            _wait_for_redis(redis_url)
        counts: dict[str, int] = {}
        for name in names:
            env = {k: v.format(redis=redis_url, dir=workdir) for k, v in CONTENDERS[name].items()}
            counts[name] = count(name, env, workdir, args.requests)
            base = counts.get("bare")
            vs = f"  bare / this {base / counts[name]:.3f}" if base else ""
            print(f"{name:16s} {counts[name]:>9,} instructions per request{vs}", flush=True)
    finally:
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait()
    shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
