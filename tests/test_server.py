"""Real-server tests: one ``gunicorn -k gevent -w 2`` serving ``tests/e2e_app.py`` with a
shared file store, driven over real sockets.

These prove what only a deployment shows — wall-clock stale-while-revalidate, one
regeneration across worker processes, invalidations reaching every worker, and no
cookie leaking through a background fill. Renders are counted in files written by
the app (see ``e2e_app.py``), because they happen in two processes.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parent.parent
SECRET = "e2e-secret-0123456789abcdef0123456789abcdef"
SLOW_SECONDS = 2.0
POST_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: str
    elapsed: float

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-isr-cache")

    @property
    def pid(self) -> str | None:
        return self.headers.get("x-worker-pid")


@dataclasses.dataclass
class Server:
    port: int
    counter_dir: Path
    log_path: Path

    def fetch(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 20.0,
    ) -> Reply:
        """One request on its own connection (so requests spread over both workers)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            started = time.monotonic()
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.monotonic() - started
            return Reply(
                resp.status,
                {k.lower(): v for k, v in resp.getheaders()},
                data.decode(),
                elapsed,
            )
        finally:
            conn.close()

    def fetch_many(
        self, path: str, n: int, *, headers: dict[str, str] | None = None, timeout: float = 20.0
    ) -> list[Reply]:
        """``n`` concurrent requests, each on its own connection."""
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [
                pool.submit(self.fetch, path, headers=headers, timeout=timeout) for _ in range(n)
            ]
            return [f.result() for f in futures]

    def revalidate(
        self, payload: dict[str, object], headers: dict[str, str] | None = None
    ) -> Reply:
        return self.fetch(
            "/_isr/revalidate",
            method="POST",
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def renders(self, page: str) -> int:
        """How many times the app rendered ``page``, over all workers."""
        try:
            return (self.counter_dir / f"{page}.log").read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def summary(replies: list[Reply]) -> list[tuple[int, str | None, str, str | None]]:
    return [(r.status, r.cache, r.body, r.pid) for r in replies]


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def poll(
    fetch: Callable[[], list[Reply]],
    until: Callable[[Reply], bool],
    timeout: float = 10.0,
    interval: float = 0.25,
) -> list[Reply]:
    """Fetch until some reply satisfies ``until``; return every reply seen (the last
    batch holds the match). Fails the test after ``timeout``."""
    seen: list[Reply] = []
    deadline = time.monotonic() + timeout
    while True:
        batch = fetch()
        seen += batch
        if any(until(r) for r in batch):
            return seen
        if time.monotonic() >= deadline:
            pytest.fail(f"no matching reply within {timeout} s; last: {summary(seen[-4:])}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(proc: subprocess.Popen[bytes], server: Server, timeout: float) -> str | None:
    """None once both workers answer; else why not."""
    deadline = time.monotonic() + timeout
    pids: set[str] = set()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"gunicorn exited with {proc.returncode}"
        try:
            replies = server.fetch_many("/health", 8, timeout=2.0)
        except OSError:
            time.sleep(0.1)
            continue
        pids.update(r.pid for r in replies if r.status == 200 and r.pid)
        if len(pids) >= 2:
            return None
        time.sleep(0.1)
    return f"not ready after {timeout} s (workers seen: {sorted(pids)})"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("isr-e2e")
    store_dir, counter_dir = root / "store", root / "renders"
    store_dir.mkdir()
    counter_dir.mkdir()
    srv = Server(free_port(), counter_dir, root / "gunicorn.log")
    env = {
        **os.environ,
        "ISR_STORE": f"file://{store_dir}",
        "ISR_SECRET": SECRET,
        "ISR_COUNTER_DIR": str(counter_dir),
        "ISR_SLOW_SECONDS": str(SLOW_SECONDS),
        "ISR_POST_SECONDS": str(POST_SECONDS),
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        "gevent",
        "-w",
        "2",
        "--bind",
        f"127.0.0.1:{srv.port}",
        "--graceful-timeout",
        "3",
        "--access-logfile",
        "-",
        "--access-logformat",
        '%(p)s "%(r)s" %(s)s %(L)ss',
        "tests.e2e_app:app",
    ]
    if Version(metadata.version("gunicorn")) >= Version("25.1"):
        # not the shared default ~/.gunicorn/gunicorn.ctl: parallel runs would fight over it
        cmd.insert(-1, "--no-control-socket")
    with open(srv.log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        problem = _wait_ready(proc, srv, timeout=20.0)
        if problem is not None:
            _stop(proc)
            pytest.fail(f"{problem}\n--- gunicorn log ---\n{srv.log()}", pytrace=False)
        yield srv
    finally:
        _stop(proc)


@pytest.fixture(autouse=True)
def _log_on_failure(
    request: pytest.FixtureRequest, server: Server, capsys: pytest.CaptureFixture[str]
) -> Iterator[None]:
    """Show gunicorn's log (both workers, wsgi_isr's log lines) when a test fails."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        with capsys.disabled():
            print(f"\n--- gunicorn log ({server.log_path}) ---\n{server.log()}")


def test_stale_page_is_served_without_waiting_for_the_render(server: Server) -> None:
    first = server.fetch("/slow/a")
    assert (first.status, first.cache) == (200, "MISS")
    assert first.body.startswith("slow a render 1 ")
    assert first.elapsed >= SLOW_SECONDS * 0.9, "the render is supposed to be slow"

    time.sleep(1.1)  # X-ISR-Revalidate: 1
    stale = server.fetch("/slow/a")
    assert (stale.status, stale.cache, stale.body) == (200, "STALE", first.body)
    assert stale.elapsed < 1.0, f"the visitor waited {stale.elapsed:.2f} s for a stale page"

    seen = poll(lambda: [server.fetch("/slow/a")], lambda r: r.body != first.body)
    assert seen[-1].body.startswith("slow a render 2 "), summary(seen)
    # nobody waited for the regeneration, and until it landed everyone got the old copy
    assert all(r.elapsed < 1.0 for r in seen), [round(r.elapsed, 2) for r in seen]
    assert all((r.status, r.cache) == (200, "STALE") for r in seen[:-1]), summary(seen)


def test_burst_on_stale_page_regenerates_once_across_workers(server: Server) -> None:
    page = "slow-burst"
    first = server.fetch("/slow/burst")
    assert (first.status, first.cache) == (200, "MISS")
    assert server.renders(page) == 1
    time.sleep(1.1)  # stale now

    started = time.monotonic()
    replies = server.fetch_many("/slow/burst", 100)
    assert [r.status for r in replies] == [200] * 100
    # every answer was the old copy, marked stale: all 100 arrived while the single
    # regeneration was still running, so any extra render would be a duplicate
    assert {(r.cache, r.body) for r in replies} == {("STALE", first.body)}, summary(replies)
    pids = {r.pid for r in replies}
    assert len(pids) >= 2, f"only one worker served the burst: {pids}"

    # the regeneration takes SLOW_SECONDS; give a duplicate every chance to show up
    assert wait_for(lambda: server.renders(page) >= 2, timeout=5.0)
    time.sleep(max(0.0, started + SLOW_SECONDS + 1.5 - time.monotonic()))
    assert server.renders(page) == 2

    after = server.fetch("/slow/burst")
    assert after.status == 200
    assert after.body.startswith("slow burst render 2 "), summary([after])


def test_tag_revalidation_reaches_every_worker(server: Server) -> None:
    page = "post-hello"
    first = server.fetch("/post/hello")
    assert (first.status, first.cache) == (200, "MISS")
    assert first.body.startswith("post hello render 1 ")
    warm = server.fetch_many("/post/hello", 20)
    assert {(r.cache, r.body) for r in warm} == {("HIT", first.body)}, summary(warm)
    assert len({r.pid for r in warm}) >= 2

    done = server.revalidate({"tag": "post-hello", "secret": SECRET})
    assert done.status == 200, done.body
    answer = json.loads(done.body)
    assert answer["revalidated"] is True
    assert answer["tags"] == ["post-hello"]

    # while the one regeneration renders (POST_SECONDS), both workers know the page is
    # stale: the old body only ever comes marked STALE, never as a HIT
    during = server.fetch_many("/post/hello", 30)
    assert all(r.status == 200 for r in during)
    assert all(r.cache == "STALE" for r in during if r.body == first.body), summary(during)
    assert len({r.pid for r in during}) >= 2, "the invalidation must be seen by both workers"

    fresh = poll(lambda: [server.fetch("/post/hello")], lambda r: r.cache == "HIT")
    assert all(r.cache == "STALE" for r in fresh[:-1]), summary(fresh)

    after = server.fetch_many("/post/hello", 40)
    new_body = after[0].body
    assert new_body.startswith("post hello render 2 "), summary(after)
    assert {(r.status, r.cache, r.body) for r in after} == {(200, "HIT", new_body)}, summary(after)
    assert len({r.pid for r in after}) >= 2
    assert server.renders(page) == 2, "one regeneration across both workers"


def test_cookie_visitor_data_is_never_cached_for_others(server: Server) -> None:
    alice = server.fetch("/whoami", headers={"Cookie": "user=alice"})
    assert (alice.status, alice.cache) == (200, "MISS")
    assert "hello alice" in alice.body, "alice sees her own page"
    assert "private" in alice.headers.get("cache-control", "")

    anonymous = poll(lambda: server.fetch_many("/whoami", 4), lambda r: r.cache == "HIT")
    anonymous += server.fetch_many("/whoami", 20)
    anonymous.append(server.fetch("/whoami", headers={"Cookie": "user=carol"}))
    assert all(r.status == 200 for r in anonymous)
    assert not [r for r in anonymous if "alice" in r.body], summary(anonymous)
    hits = [r for r in anonymous if r.cache == "HIT"]
    assert hits and all(r.body.startswith("hello anonymous ") for r in hits), summary(anonymous)
    # alice's own render plus one clean background fill; the rest were served from it
    assert server.renders("whoami") == 2


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        pytest.param({"tag": "post-guarded", "secret": "wrong"}, {}, id="wrong-body-secret"),
        pytest.param({"tag": "post-guarded"}, {"Authorization": "Bearer wrong"}, id="wrong-bearer"),
        pytest.param({"tag": "post-guarded"}, {}, id="no-secret"),
    ],
)
def test_revalidate_rejects_wrong_secret(
    server: Server, payload: dict[str, object], headers: dict[str, str]
) -> None:
    first = server.fetch("/post/guarded")
    assert first.status == 200 and first.cache in ("MISS", "HIT")

    denied = server.revalidate(payload, headers)
    assert denied.status == 401, denied.body
    assert "revalidated" not in json.loads(denied.body)

    again = server.fetch_many("/post/guarded", 10)
    assert {(r.cache, r.body) for r in again} == {("HIT", first.body)}, summary(again)
    assert server.renders("post-guarded") == 1
