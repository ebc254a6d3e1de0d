"""What every section of a benchmark run shares: the settings, the contenders, and the
:class:`Run` (work directory, the run's own redis-server, starting a contender, loading it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import shutil
from collections.abc import Callable

from benchmarks.load import LoadResult, Paths, measure
from benchmarks.servers import HOST, RedisServer, Server, Servers

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int = 5
    aux_rounds: int = 3
    duration: float = 5.0
    connections: int = 50
    stale_connections: tuple[int, ...] = (50, 500)
    tool: str = "auto"
    only: frozenset[str] | None = None
    sizes: tuple[int, ...] = (100, 10_000, 100_000)
    first: int = 200
    stampede: int = 500
    memory_urls: int = 100_000
    memory_max_entries: int = 1_000
    store_entries: int = 100_000
    profile_hits: int = 10_000
    profile_pages: int = 5_000
    seed_args: tuple[str, ...] = ()
    warm: float = 1.0


@dataclasses.dataclass(frozen=True)
class Contender:
    name: str
    what: str
    app: str  # BENCH_APP, or "nginx"
    store: str | None = None  # memory, file, redis
    local: bool = False


CONTENDERS = (
    Contender("bare", "WSGI callable, constant 2 KB body", "bare"),
    Contender("bare-headers", "the same, with the headers an ISR hit sends", "bare-headers"),
    Contender("isr-memory", "wsgi_isr hit, memory://", "isr", "memory"),
    Contender("isr-file", "wsgi_isr hit, file://", "isr", "file"),
    Contender("isr-redis", "wsgi_isr hit, redis://", "isr", "redis"),
    Contender("isr-redis-local", "wsgi_isr hit, redis:// + local_ttl", "isr", "redis", True),
    Contender("flask-caching", "Flask-Caching @cached view (SimpleCache)", "flask-caching"),
    Contender("flask-caching-file", "Flask-Caching (FileSystemCache)", "flask-caching", "file"),
    Contender("flask-caching-redis", "Flask-Caching (RedisCache)", "flask-caching", "redis"),
    Contender("uncached", "the Flask view, 50 ms render", "uncached"),
    Contender("nginx", "nginx proxy_cache hit (non-Python reference)", "nginx"),
)
BY_NAME = {c.name: c for c in CONTENDERS}


def local_ttl_supported() -> bool:
    from wsgi_isr import ISRMiddleware

    return "local_ttl" in inspect.signature(ISRMiddleware).parameters


class Run:
    """What the sections share: settings, the work directory, one redis-server."""

    def __init__(self, settings: Settings, workdir: str, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.workdir = workdir
        self.say = say
        self._redis_servers = Servers(workdir)
        self._redis: RedisServer | None = None

    def close(self) -> None:
        self._redis_servers.stop_all()

    def redis(self) -> RedisServer:
        if self._redis is None:
            self._redis = self._redis_servers.redis()
            self._redis_servers.wait_ready()
        return self._redis

    def unavailable(self, c: Contender) -> str | None:
        """Why a contender cannot run here (``None``: it can)."""
        if c.store == "redis" and not shutil.which("redis-server"):
            return "redis-server not installed"
        if c.local and not local_ttl_supported():
            return "ISRMiddleware does not accept local_ttl yet"
        if c.app == "flask-caching" and importlib.util.find_spec("flask_caching") is None:
            return "Flask-Caching not installed (pip install -e '.[bench]')"
        if c.app == "nginx" and not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
            return "nginx not installed (apt-get install nginx)"
        return None

    def store_url(self, store: str, tag: str) -> str:
        if store == "memory":
            return "memory://"
        if store == "file":
            return "file://" + os.path.join(self.workdir, f"store-{tag}")
        return self.redis().redis_url(f"{tag}:")

    def env(self, c: Contender, tag: str, **extra: str) -> dict[str, str]:
        env = {"BENCH_APP": c.app if c.app != "nginx" else "uncached", **extra}
        if c.store:
            # Flask-Caching's own directory / key prefix: a FileSystemCache prunes the
            # files of the directory it is given
            own = f"{tag}-fc" if c.app == "flask-caching" else tag
            env["BENCH_STORE"] = self.store_url(c.store, own)
            env["BENCH_SECRET"] = SECRET
        if c.local:
            env["BENCH_LOCAL_TTL"] = "60"
        return env

    def start(self, servers: Servers, c: Contender, tag: str, **extra: str) -> Server:
        if c.app == "nginx":
            origin = servers.gunicorn(f"{tag}-nginx-origin", self.env(c, tag, **extra))
            server = servers.nginx(origin.port)
            assert server is not None
            return server
        return servers.gunicorn(f"{tag}-{c.name}", self.env(c, tag, **extra))

    def load(
        self,
        port: int,
        paths: Paths,
        duration: float | None = None,
        *,
        connections: int | None = None,
    ) -> LoadResult:
        s = self.settings
        return measure(
            HOST,
            port,
            paths,
            connections=connections or s.connections,
            duration=duration or s.duration,
            tool=s.tool,
        )
