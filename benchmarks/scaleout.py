"""Scale-out figures: how soon coalesced waiters get a page after their leader, and how
long another host's local layer serves a page after an invalidation returned.

    python -m benchmarks.scaleout                      # both sections, ~3 minutes
    python -m benchmarks.scaleout waiters --baseline 321a328
    python -m benchmarks.scaleout window --rounds 50

``waiters``: N concurrent first requests (N = 50, 500) for a never-rendered page whose
render takes 200 ms, on ``gunicorn -k gevent`` with 1 worker (every waiter in the
leader's process) and 4 workers (most waiters in other processes), file and redis
stores, sent from one thread (a selector; ``--client threads``: a Python thread per
connection, the old client). Per burst: every coalesced waiter's ``X-Served-At`` (the
time the cache answered it, on the host's clock, stamped by a wrapper outside the
middleware) minus the leader's; p50 / p99 split into waiters in the leader's process
and in others; minus the end of the leader's render (``after_render``, ``X-Rendered-At``,
stored with the page) and the same for the time the client read the answer
(``received``); the leader's own answer minus its render's end (``leader``); the
server's CPU per request (``cpu_us``). ``--baseline REF`` runs the same on the wsgi_isr
of git ``REF`` (``git archive``), and ``bare`` is the floor: the app without a cache,
every request of a burst woken at one instant. All contenders' servers are up at once
and the bursts alternate between them.

``window``: two gunicorn instances on one Redis with ``local_ttl=1``; page cached and
served by B; A revalidates its tag through the endpoint; from the moment that POST
returned, 4 threads fetch from B until it stops answering the old copy as a HIT. The
window is the start of the last such request minus the POST's return (0 if none).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .load import percentile
from .servers import HOST, REPO, Server, Servers, free_port

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


@contextmanager
def gunicorn(
    workdir: str, name: str, env: dict[str, str], workers: int, code: str | None
) -> Iterator[Server]:
    """``gunicorn -k gevent -w workers`` serving ``wakeup_app``, on this checkout's
    wsgi_isr or (``code``: a directory holding an older ``wsgi_isr``) that one."""
    port = free_port()
    chdir = code or os.path.join(REPO, "benchmarks")
    if code is not None:
        with open(os.path.join(REPO, "benchmarks", "wakeup_app.py"), "rb") as f:
            app_text = f.read()
        with open(os.path.join(code, "wakeup_app.py"), "wb") as f:
            f.write(app_text)
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers)]
    cmd += ["--worker-connections", "2000", "--backlog", "2048", "--graceful-timeout", "2"]
    cmd += ["-b", f"{HOST}:{port}", "--chdir", chdir, "--log-level", "warning"]
    cmd += ["wakeup_app:app"]
    log_path = os.path.join(workdir, f"{name}.log")
    with open(log_path, "ab") as log:
        # PYTHONPATH: the chdir's wsgi_isr (the baseline) before the installed one
        proc = subprocess.Popen(
            cmd,
            cwd=chdir,
            env={**os.environ, **env, "PYTHONPATH": chdir},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Server(name, port, proc, log_path)
    try:
        deadline = time.monotonic() + 30
        pids: set[str] = set()
        while len(pids) < workers:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{name} did not come up:\n{server.log_tail()}")
            try:
                pids.add(fetch(port, "/health")[1].get("x-worker-pid", ""))
            except OSError:
                time.sleep(0.1)
        yield server
    finally:
        server.stop()


def fetch(
    port: int, path: str, method: str = "GET", body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"}
        conn.request(method, path, body=body, headers=headers if body else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def burst(port: int, path: str, n: int) -> list[dict[str, str]]:
    """``n`` requests on ``n`` connections, connected first, then sent at once, from one
    thread (a selector, not ``n`` Python threads: on 2 cores, 500 client threads woken
    by 500 answers took the CPU the server needed to write them). Each answer's headers,
    plus ``received``: this host's ``time.time()`` when its last byte was read."""
    socks = [socket.create_connection((HOST, port), timeout=30) for _ in range(n)]
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    bufs: dict[socket.socket, bytearray] = {}
    out: list[dict[str, str]] = []
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.sendall(request)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, s)
            bufs[s] = bytearray()
        deadline = time.monotonic() + 30
        while bufs and time.monotonic() < deadline:
            for sk, _ in sel.select(timeout=1.0):
                s = sk.data
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    bufs[s] += chunk
                    continue
                received = time.time()  # the server closed: the answer is complete
                sel.unregister(s)
                out.append(_parse(bytes(bufs.pop(s)), received))
                s.close()
        for s in bufs:  # no answer within 30 s
            out.append({})
            s.close()
    return out


def burst_threads(port: int, path: str, n: int) -> list[dict[str, str]]:
    """The same with one Python thread per connection (``--client threads``: the old
    client, to see what it costs the server)."""
    barrier = threading.Barrier(n)
    out: list[dict[str, str]] = []

    def one() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            try:
                conn.connect()
            finally:
                barrier.wait()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            out.append({**headers, "received": repr(time.time())})
        except (OSError, http.client.HTTPException):
            out.append({})
        finally:
            conn.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _parse(raw: bytes, received: float) -> dict[str, str]:
    head, sep, _ = raw.partition(b"\r\n\r\n")
    if not sep:
        return {}
    headers = {"received": repr(received)}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _ms(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50": round(percentile(ordered, 50) * 1000, 1),
        "p99": round(percentile(ordered, 99) * 1000, 1),
    }


class _Tally:
    """One row's samples: a contender (``code``: "this", the baseline's ref, or "bare",
    the reference), a store, a worker count, a burst size."""

    def __init__(self, code: str, store: str, workers: int, n: int) -> None:
        self.key = {"code": code, "store": store, "workers": workers, "n": n}
        self.same: list[float] = []  # waiter served - leader served, leader's process
        self.other: list[float] = []  # the same, other processes
        self.landed: list[float] = []  # waiter served - leader's render ended
        self.received: list[float] = []  # waiter's answer read - render ended
        self.leader: list[float] = []  # the leader's own answer - its render ended
        self.cpu = 0.0
        self.requests = 0
        self.errors = 0

    def add_isr(self, replies: list[dict[str, str]]) -> None:
        self.errors += sum(1 for r in replies if not r)
        leaders = [r for r in replies if r.get("x-isr-cache") == "MISS"]
        if len(leaders) != 1:
            self.errors += 1
            return
        lead = leaders[0]
        t0 = float(lead["x-served-at"])
        self.leader.append(t0 - float(lead["x-rendered-at"]))
        for r in replies:
            if "detail=coalesced" not in r.get("cache-status", ""):
                continue  # a late visitor that found the page: a plain hit
            into = self.same if r["x-worker-pid"] == lead["x-worker-pid"] else self.other
            into.append(float(r["x-served-at"]) - t0)
            self.landed.append(float(r["x-served-at"]) - float(r["x-rendered-at"]))
            self.received.append(float(r["received"]) - float(r["x-rendered-at"]))

    def add_bare(self, replies: list[dict[str, str]], at: float) -> None:
        for r in replies:
            if not r:
                self.errors += 1
                continue
            self.landed.append(float(r["x-served-at"]) - at)
            self.received.append(float(r["received"]) - at)

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = dict(self.key)
        if self.key["code"] != "bare":
            row |= {"in_process": _ms(self.same), "other_processes": _ms(self.other)}
        row |= {"after_render": _ms(self.landed), "received": _ms(self.received)}
        if self.key["code"] != "bare":
            row["leader"] = _ms(self.leader)
        cpu_us = round(self.cpu / self.requests * 1e6) if self.requests else None
        return row | {"cpu_us": cpu_us, "errors": self.errors}


def waiters(
    workdir: str,
    redis_url: str,
    codes: dict[str, str | None],
    reps: int,
    client: str = "selector",
) -> list[dict[str, Any]]:
    """Per worker count, every contender's server is up at once and the bursts
    alternate between them (``codes``: label -> directory of its ``wsgi_isr``, ``None``
    for this checkout's), with the reference (``bare``) among them: the same machine
    load for all. The reference is the floor: the app without a cache, every request
    sleeping until one instant ``t`` (0.5 s after the burst starts), then answering;
    its served (and received) minus ``t`` is what answering N requests woken at once
    costs these workers, with no wake-up to pay for."""
    send = burst_threads if client == "threads" else burst
    rows = []
    for workers in (1, 4):
        with contextlib.ExitStack() as stack:
            servers: list[tuple[str, str, Server]] = []
            env = {"BENCH_STORE": "bare"}
            bare = gunicorn(workdir, f"w-bare-{workers}", env, workers, None)
            servers.append(("bare", "-", stack.enter_context(bare)))
            for label, code in codes.items():
                for store in ("file", "redis"):
                    url = (
                        f"file://{workdir}/store-{uuid.uuid4().hex[:6]}"
                        if store == "file"
                        else f"{redis_url}{uuid.uuid4().hex[:6]}:"
                    )
                    env = {"BENCH_STORE": url, "BENCH_RENDER": "0.2"}
                    name = f"w-{label.replace('/', '_')}-{store}-{workers}"
                    server = stack.enter_context(gunicorn(workdir, name, env, workers, code))
                    servers.append((label, store, server))
            for n in (50, 500):
                tallies = [_Tally(label, store, workers, n) for label, store, _ in servers]
                for _ in range(reps):
                    for tally, (label, _, server) in zip(tallies, servers, strict=True):
                        before = server.cpu_seconds()
                        if label == "bare":
                            at = time.time() + 0.5
                            replies = send(server.port, f"/b/{uuid.uuid4().hex}?{at!r}", n)
                            tally.add_bare(replies, at)
                        else:
                            tally.add_isr(send(server.port, f"/w/{uuid.uuid4().hex}", n))
                        tally.cpu += server.cpu_seconds() - before
                        tally.requests += n
                        time.sleep(0.2)
                for tally in tallies:
                    rows.append(tally.row())
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def _probe(port: int, path: str, old: set[bytes], returned: float) -> list[float]:
    """4 threads fetch ``path`` until it is no longer the old copy as a HIT (or 3 s);
    the start times of the requests that still got it."""
    last_old: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.monotonic()
            _, headers, data = fetch(port, path)
            if headers.get("x-isr-cache") == "HIT" and data in old:
                last_old.append(started)
            elif started - returned > 0.05:
                stop.set()

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for t in threads:
        t.start()
    stop.wait(3.0)
    stop.set()
    for t in threads:
        t.join()
    return last_old


def window(workdir: str, redis_url: str, rounds: int) -> dict[str, Any]:
    prefix = f"{redis_url}{uuid.uuid4().hex[:6]}:"
    env = {"BENCH_STORE": prefix, "BENCH_LOCAL_TTL": "1", "BENCH_SECRET": SECRET}
    windows: list[float] = []
    with (
        gunicorn(workdir, "win-a", env, 2, None) as a,
        gunicorn(workdir, "win-b", env, 2, None) as b,
    ):
        for i in range(rounds):
            path = f"/w/win-{i}"
            fetch(a.port, path)
            old = {fetch(b.port, path)[2] for _ in range(8)}  # both of B's workers hold it
            if len(old) != 1:
                raise RuntimeError("B did not serve A's render")
            body = json.dumps({"tag": "w"}).encode()
            status = fetch(a.port, "/_isr/revalidate", "POST", body)[0]
            returned = time.monotonic()
            if status != 200:
                raise RuntimeError(f"revalidate answered {status}")
            last_old = _probe(b.port, path, old, returned)
            windows.append(max(0.0, max(last_old, default=returned) - returned))
            time.sleep(1.1)  # past local_ttl: the next round starts from a clean layer
    ordered = sorted(windows)
    return {
        "rounds": rounds,
        "p50_ms": round(percentile(ordered, 50) * 1000, 1),
        "p99_ms": round(percentile(ordered, 99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", default=["waiters", "window"])
    parser.add_argument("--baseline", help="also run `waiters` on the wsgi_isr of this git ref")
    parser.add_argument("--reps", type=int, default=3, help="bursts per row")
    parser.add_argument("--rounds", type=int, default=30, help="invalidations in `window`")
    parser.add_argument(
        "--client",
        choices=("selector", "threads"),
        default="selector",
        help="`waiters`' load: one thread with a selector, or a Python thread per connection",
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="isr-scaleout-") as workdir,
        Servers(workdir) as servers,
    ):
        redis = servers.redis()
        servers.wait_ready()
        redis_url = redis.redis_url("")
        if "waiters" in args.sections:
            codes: dict[str, str | None] = {"this": None}
            if args.baseline:
                code = os.path.join(workdir, "baseline")
                os.makedirs(code)
                archive = subprocess.run(
                    ["git", "-C", REPO, "archive", args.baseline, "wsgi_isr"],
                    check=True,
                    capture_output=True,
                ).stdout
                subprocess.run(["tar", "-x", "-C", code], input=archive, check=True)
                codes[args.baseline] = code
            results["waiters"] = waiters(workdir, redis_url, codes, args.reps, args.client)
        if "window" in args.sections:
            results["window"] = window(workdir, redis_url, args.rounds)
            print(json.dumps(results["window"]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
