"""Load generation: ``wrk`` when installed, else a Python generator; plus concurrent bursts.

    result = measure("127.0.0.1", 8000, ["/page"], connections=50, duration=5.0)
    result.rps, result.p50_ms, result.p99_ms

The Python generator (keep-alive ``http.client`` connections, one thread each, spread
over one process per core) runs as ``python -m benchmarks.load`` children, so it is not
held back by the harness's own GIL; it still saturates long before a server does, so
its figures are only comparable with each other. Install ``wrk`` for real numbers.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import http.client
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Numbered:
    """The paths ``prefix + str(i)`` for ``i`` in ``range(count)``, without listing them
    (wrk's Lua cannot hold a table of 100,000 strings)."""

    prefix: str
    count: int

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return f"{self.prefix}{i}"


Paths = Sequence[str] | Numbered


@dataclasses.dataclass(frozen=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors and non-2xx/3xx answers
    tool: str
    #: server-side CPU (user + system, every process of the contender) per request, µs
    cpu_us: float | None = None
    #: the same by role ("workers", "master", "redis-server"), µs per request
    cpu_parts_us: dict[str, float] | None = None


def wrk_path() -> str | None:
    return shutil.which("wrk")


def measure(
    host: str,
    port: int,
    paths: Paths,
    *,
    connections: int,
    duration: float,
    tool: str = "auto",
) -> LoadResult:
    """Load ``paths`` (one picked at random per request) for ``duration`` seconds."""
    if tool == "auto":
        tool = "wrk" if wrk_path() else "python"
    if tool == "wrk":
        return _wrk(host, port, paths, connections, duration)
    return _python(host, port, paths, connections, duration)


# -- wrk ----------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION = re.compile(r"([\d.]+)(us|ms|s|m|h)$")


def _ms(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> LoadResult:
    """Read ``wrk --latency`` output: Requests/sec, the 50% and 99% latencies, errors."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    if not (rps and p50 and p99 and total):
        raise ValueError("unexpected wrk output:\n" + output)
    errors = 0
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return LoadResult(
        float(rps.group(1)),
        _ms(p50.group(1)),
        _ms(p99.group(1)),
        int(total.group(1)),
        errors,
        "wrk",
    )


def _wrk(host: str, port: int, paths: Paths, connections: int, duration: float) -> LoadResult:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
    ]
    script = None
    if len(paths) > 1:  # a random path per request
        if isinstance(paths, Numbered):
            lua = (
                f"local prefix, n = {json.dumps(paths.prefix)}, {paths.count}\n"
                "request = function() return wrk.format(nil, prefix .. math.random(0, n - 1)) end\n"
            )
        else:
            table = ",".join(json.dumps(p) for p in paths)
            lua = (
                f"local paths = {{{table}}}\nlocal n = #paths\n"
                "request = function() return wrk.format(nil, paths[math.random(n)]) end\n"
            )
        fd, script = tempfile.mkstemp(suffix=".lua", prefix="bench-wrk-")
        with os.fdopen(fd, "w") as f:
            f.write(lua)
        cmd += ["-s", script]
    cmd.append(f"http://{host}:{port}{paths[0]}")
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 60, check=True
        ).stdout
    finally:
        if script:
            os.unlink(script)
    return parse_wrk(out)


# -- the Python generator -----------------------------------------------------------------


def _python(host: str, port: int, paths: Paths, connections: int, duration: float) -> LoadResult:
    procs = max(1, min(os.cpu_count() or 1, connections))
    share = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    fd, paths_file = tempfile.mkstemp(suffix=".json", prefix="bench-paths-")
    with os.fdopen(fd, "w") as f:
        json.dump(
            {"prefix": paths.prefix, "count": paths.count}
            if isinstance(paths, Numbered)
            else list(paths),
            f,
        )
    try:
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.load",
                    host,
                    str(port),
                    paths_file,
                    str(n),
                    str(duration),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
            )
            for n in share
        ]
        outputs = [json.loads(c.communicate(timeout=duration + 60)[0]) for c in children]
    finally:
        os.unlink(paths_file)
    latencies = sorted(x for o in outputs for x in o["latencies"])
    if not latencies:
        raise RuntimeError(f"no request succeeded against {host}:{port}")
    elapsed = max(o["elapsed"] for o in outputs)
    return LoadResult(
        len(latencies) / elapsed,
        percentile(latencies, 50) * 1e3,
        percentile(latencies, 99) * 1e3,
        len(latencies),
        sum(o["errors"] for o in outputs),
        "python",
    )


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def _generate(
    host: str, port: int, paths: Paths, connections: int, duration: float
) -> dict[str, object]:
    deadline = time.perf_counter() + duration
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections

    def loop(i: int) -> None:
        rng = random.Random(i)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine, path = latencies[i], paths[0]
        while (now := time.perf_counter()) < deadline:
            if len(paths) > 1:
                path = rng.choice(paths)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                if resp.status >= 400:
                    errors[i] += 1
                else:
                    mine.append(time.perf_counter() - now)
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "latencies": [x for lat in latencies for x in lat],
        "errors": sum(errors),
        "elapsed": time.perf_counter() - started,
    }


# -- bursts -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int  # 0: the connection failed
    headers: dict[str, str]  # lower-case names
    elapsed: float

    @property
    def cache(self) -> str:
        """``X-ISR-Cache`` (nginx: ``X-Cache-Status``), ``""`` when absent."""
        return self.headers.get("x-isr-cache") or self.headers.get("x-cache-status", "")


def burst(
    host: str,
    port: int,
    path: str,
    n: int,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> list[Reply]:
    """``n`` requests on ``n`` connections, all connected first, then sent at once."""
    barrier = threading.Barrier(n)
    replies: list[Reply | None] = [None] * n

    def one(i: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            try:
                conn.connect()
            finally:
                barrier.wait()
            started = time.perf_counter()
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            resp.read()
            replies[i] = Reply(
                resp.status,
                {k.lower(): v for k, v in resp.getheaders()},
                time.perf_counter() - started,
            )
        except (OSError, http.client.HTTPException):
            replies[i] = Reply(0, {}, 0.0)
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in replies if r is not None]


@dataclasses.dataclass(frozen=True)
class Probe:
    latencies: dict[str, list[float]]  # per path, seconds
    tally: dict[str, dict[str, int]]  # per path, "status X-ISR-Cache" -> count


def latency_probe(
    host: str, port: int, paths: Sequence[str], duration: float, connections: int = 4
) -> Probe:
    """Request ``paths`` in turn on a few keep-alive connections for ``duration`` seconds
    (while something else loads the server), timing every request. Interleaving puts
    every path under the same load."""
    deadline = time.perf_counter() + duration
    samples: dict[str, list[float]] = {p: [] for p in paths}
    tallies: dict[str, collections.Counter[str]] = {p: collections.Counter() for p in paths}
    lock = threading.Lock()

    def loop(i: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        k = i
        while time.perf_counter() < deadline:
            path = paths[k % len(paths)]
            k += 1
            try:
                t0 = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                elapsed = time.perf_counter() - t0
                with lock:
                    samples[path].append(elapsed)
                    tallies[path][f"{resp.status} {resp.getheader('X-ISR-Cache', '-')}"] += 1
            except (OSError, http.client.HTTPException):
                with lock:
                    tallies[path]["error"] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Probe(samples, {p: dict(t) for p, t in tallies.items()})


def visit_all(host: str, port: int, paths: Paths, threads: int = 8) -> dict[str, int]:
    """Request every path once (``threads`` keep-alive connections, each a slice of the
    paths, bounded by their number); the count of each ``X-ISR-Cache`` answer."""

    def visit(part: int) -> collections.Counter[str]:
        seen: collections.Counter[str] = collections.Counter()
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            for i in range(part, len(paths), threads):
                conn.request("GET", paths[i])
                reply = conn.getresponse()
                reply.read()
                seen[f"{reply.status} {reply.getheader('X-ISR-Cache')}"] += 1
        finally:
            conn.close()
        return seen

    total: collections.Counter[str] = collections.Counter()
    with ThreadPoolExecutor(threads) as pool:
        for seen in pool.map(visit, range(threads)):
            total.update(seen)
    return dict(total)


def fetch(host: str, port: int, path: str, **kwargs: object) -> Reply:
    return burst(host, port, path, 1, **kwargs)[0]  # type: ignore[arg-type]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description="one Python load generator process (JSON out)")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("paths_file")
    parser.add_argument("connections", type=int)
    parser.add_argument("duration", type=float)
    args = parser.parse_args()
    with open(args.paths_file) as f:
        spec = json.load(f)
    paths = Numbered(spec["prefix"], spec["count"]) if isinstance(spec, dict) else spec
    json.dump(_generate(args.host, args.port, paths, args.connections, args.duration), sys.stdout)


if __name__ == "__main__":
    main()
