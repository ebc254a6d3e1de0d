"""Session fixtures: a real throwaway ``redis-server`` and a fake clock.

The Redis server listens on a free loopback port (never the machine's 6379), keeps
nothing on disk and lives for the whole session; tests that need a clean slate get
a URL with a key prefix of their own from ``redis_url``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_topologies import redis_cluster, redis_sentinels, redis_tls
from servers import free_port, stop_process, wait_for

__all__ = ["redis_cluster", "redis_sentinels", "redis_tls"]  # session topologies

#: Fixtures whose users need a real redis-server; such tests get the ``redis`` marker.
_REDIS_FIXTURES = frozenset(
    {"redis_server", "redis_url", "redis_tls", "redis_sentinels", "redis_cluster", "own_redis"}
)


class FakeClock:
    """A clock the test moves by hand: ``clock()`` returns ``clock.now``.

    >>> clock = FakeClock(100.0)
    >>> clock.advance(5)
    105.0
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A fresh :class:`FakeClock` at 1,000,000 s."""
    return FakeClock()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process on ``127.0.0.1:port`` without persistence."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again) on the same port and wait until it answers PING."""
        if self._proc is not None:
            raise RuntimeError("redis-server is already running")
        if _answers_ping(self.port):
            raise RuntimeError(f"something else answers on 127.0.0.1:{self.port}")
        # "--save ''" and "--appendonly no": a restart loses everything, which
        # the restart tests rely on
        argv = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        proc = self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=self.workdir)
        # stops waiting early if redis-server exits (a port taken meanwhile, say)
        up = wait_for(lambda: proc.poll() is not None or _answers_ping(self.port), timeout, 0.02)
        if not up or proc.poll() is not None:
            self.stop()
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"redis-server did not come up on port {self.port}:\n{log}")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server (``SIGSTOP``: it hangs, connections still open)."""
        assert self._proc is not None, "redis-server is not running"
        self._proc.send_signal(sig)

    def stop(self) -> None:
        """Stop the server; everything it held is lost."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the session (``.url``, ``.port``, ``.stop()``, ``.start()``).

    Skipped when the binary is missing, except on CI (``CI=true``) where it fails.
    """
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if binary is None:
        msg = "redis-server binary not found"
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    workdir = tmp_path_factory.mktemp("redis")
    for attempt in range(3):  # the free port may be taken before redis binds it
        server = RedisServer(binary, workdir)
        try:
            server.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (it may be SIGSTOPped, killed, reconfigured):
    resumed and stopped at the end whatever the test did."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server binary not found", pytrace=False)
        pytest.skip("redis-server binary not found")
    workdir = tmp_path / "own-redis"
    workdir.mkdir()
    server = RedisServer(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        try:
            server.signal(signal.SIGCONT)
        finally:
            server.stop()


_prefix_counter = itertools.count()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL with a key prefix no other test uses (``?prefix=...``)."""
    prefix = f"t{next(_prefix_counter)}-{uuid.uuid4().hex[:8]}:"
    return f"{redis_server.url}?prefix={prefix}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # so "-m 'not redis'" also deselects tests that only ask for the fixtures
    for item in items:
        if _REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)
