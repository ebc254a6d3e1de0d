"""Shared pieces of the real-server tests (``test_server.py``, ``test_cluster.py``,
``test_shutdown.py``): gunicorn instances serving ``tests/e2e_app.py``, driven over
real sockets.

``start_gunicorn(instance, ..., env=...)`` runs ``gunicorn -k gevent -w N`` for each
:class:`Instance`, waits until all N workers of every instance answer ``/health`` and
stops them (SIGTERM, then SIGKILL) on the way out. An :class:`Instance` sends requests
(:meth:`~Instance.fetch`, :meth:`~Instance.fetch_many`, :meth:`~Instance.revalidate`)
and reads what the app recorded: one ``<pid> <unix time>`` line per render start in
``<counter_dir>/<page>.log`` (:meth:`~Instance.render_log`, :meth:`~Instance.renders`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
APP = "tests.e2e_app:app"
ACCESS_LOG_FORMAT = '%(p)s "%(r)s" %(s)s %(L)ss'


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: str
    started: float  # time.monotonic() when the request was sent
    elapsed: float

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-isr-cache")

    @property
    def pid(self) -> str | None:
        return self.headers.get("x-worker-pid")


@dataclasses.dataclass
class Instance:
    """One gunicorn on ``127.0.0.1:port``; ``host``, when set, is the ``Host`` header
    of every request (what a load balancer in front of several instances forwards)."""

    port: int
    counter_dir: Path
    log_path: Path
    name: str = ""
    host: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        return f"gunicorn {self.name}" if self.name else "gunicorn"

    def fetch(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 20.0,
    ) -> Reply:
        """One request on its own connection (so requests spread over the workers)."""
        sent = {"Host": self.host} if self.host else {}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            started = time.monotonic()
            conn.request(method, path, body=body, headers={**sent, **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            return Reply(
                resp.status,
                {k.lower(): v for k, v in resp.getheaders()},
                data.decode(),
                started,
                time.monotonic() - started,
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

    def render_log(self, page: str) -> list[tuple[int, float]]:
        """``(pid, unix time)`` of every render start of ``page``, over every worker
        (and every instance sharing ``counter_dir``)."""
        try:
            lines = (self.counter_dir / f"{page}.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [(int(pid), float(at)) for pid, at in (line.split() for line in lines)]

    def renders(self, page: str) -> int:
        """How many times the app rendered ``page``, over every worker."""
        return len(self.render_log(page))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(
        self,
        *,
        workers: int,
        config: Path | None,
        graceful_timeout: int | None,
        app: str,
        worker_class: str = "gevent",
        args: tuple[str, ...] = (),
    ) -> list[str]:
        cmd = [sys.executable, "-m", "gunicorn"]
        if config is not None:
            cmd += ["-c", str(config)]
        cmd += ["-k", worker_class, "-w", str(workers), "--bind", f"127.0.0.1:{self.port}"]
        cmd += args
        if graceful_timeout is not None:
            cmd += ["--graceful-timeout", str(graceful_timeout)]
        cmd += ["--access-logfile", "-", "--access-logformat", ACCESS_LOG_FORMAT]
        if Version(metadata.version("gunicorn")) >= Version("25.1"):
            # not the shared default ~/.gunicorn/gunicorn.ctl: parallel runs and
            # several instances would fight over it
            cmd.append("--no-control-socket")
        return [*cmd, app]

    def wait_ready(self, workers: int, timeout: float) -> str | None:
        """None once ``workers`` different workers answer ``/health``; else why not."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        pids: set[str] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"{self.label} exited with {self.proc.returncode}"
            try:
                replies = self.fetch_many("/health", 8, timeout=2.0)
            except OSError:
                time.sleep(0.1)
                continue
            pids.update(r.pid for r in replies if r.status == 200 and r.pid)
            if len(pids) >= workers:
                return None
            time.sleep(0.1)
        return f"{self.label} not ready after {timeout} s (workers seen: {sorted(pids)})"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@contextlib.contextmanager
def start_gunicorn(
    *instances: Instance,
    env: Mapping[str, str],
    workers: int = 2,
    config: Path | None = None,
    graceful_timeout: int | None = 3,
    app: str = APP,
    ready_timeout: float = 20.0,
    worker_class: str = "gevent",
    args: tuple[str, ...] = (),
) -> Iterator[None]:
    """Run ``gunicorn -k <worker_class> -w <workers> <args>`` for every instance (the
    environment is ``os.environ`` plus ``env``; ``config`` is passed as ``-c``), wait
    until all their workers answer, and stop them all on exit. Fails the test with the
    gunicorn log if an instance does not come up within ``ready_timeout``."""
    full_env = {**os.environ, **env}
    try:
        for instance in instances:
            cmd = instance.command(
                workers=workers,
                config=config,
                graceful_timeout=graceful_timeout,
                app=app,
                worker_class=worker_class,
                args=args,
            )
            with open(instance.log_path, "wb") as log_file:
                instance.proc = subprocess.Popen(
                    cmd, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
                )
        for instance in instances:
            problem = instance.wait_ready(workers, ready_timeout)
            if problem is not None:
                for other in instances:
                    other.stop()
                pytest.fail(f"{problem}\n--- gunicorn log ---\n{instance.log()}", pytrace=False)
        yield
    finally:
        for instance in instances:
            instance.stop()


@contextlib.contextmanager
def logs_on_failure(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], *instances: Instance
) -> Iterator[None]:
    """Around one test: print the instances' logs (every worker, wsgi_isr's log lines)
    if it failed."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        with capsys.disabled():
            for instance in instances:
                print(f"\n--- {instance.label} log ({instance.log_path}) ---\n{instance.log()}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, up to 10 s to exit, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def summary(replies: list[Reply]) -> list[tuple[int, str | None, str, str | None]]:
    return [(r.status, r.cache, r.body, r.pid) for r in replies]


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Call ``check`` every ``interval`` s until it holds (True) or ``timeout`` passes."""
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
        return int(s.getsockname()[1])


def require_binary(name: str, *fallbacks: str) -> str:
    """The path of the server binary ``name`` (on ``PATH``, else the first executable
    of ``fallbacks``). Skips the test when it is missing, except on CI (``CI=true``)
    where that is a failure."""
    import shutil

    found = shutil.which(name) or next((p for p in fallbacks if os.access(p, os.X_OK)), None)
    if found is None:
        msg = f"{name} binary not found"
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return found


_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
{user}
events {{ worker_connections 256; }}
http {{
    log_format edge '$server_port "$request" $status edge=$upstream_cache_status';
    access_log {root}/access.log edge;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    proxy_cache_path {root}/cache levels=1:2 keys_zone=edge:1m max_size=16m inactive=10m
                     use_temp_path=off;
{servers}
}}
"""
_NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $http_host;
            proxy_cache edge;
            # a common micro-cache: answers without freshness headers are kept too;
            # Cache-Control private / no-store / no-cache and Set-Cookie still forbid it
            proxy_cache_valid 200 {valid};
            add_header X-Edge $upstream_cache_status always;
        }}
    }}
"""


@contextlib.contextmanager
def start_nginx_cache(
    upstreams: list[int], root: Path, *, valid: str = "30s", ready_timeout: float = 10.0
) -> Iterator[list[int]]:
    """A real nginx ``proxy_cache`` in front of each upstream port (one free loopback
    port each, yielded in order), with its config, cache, logs and pid under ``root``
    (``-p root``, ``daemon off``: it is our child, stopped by PID on exit). Every answer
    carries ``X-Edge: $upstream_cache_status`` (``HIT`` means nginx served its stored
    copy without asking the upstream). Skipped without nginx, failed under CI."""
    ports = [free_port() for _ in upstreams]
    servers = "".join(
        _NGINX_SERVER.format(port=port, upstream=up, valid=valid)
        for port, up in zip(ports, upstreams, strict=True)
    )
    with _run_nginx(root, servers, ports, ready_timeout):
        yield ports


#: ``wsgi_isr/contrib/nginx.conf``, the config the README ships for nginx in front.
NGINX_CONF = REPO / "wsgi_isr" / "contrib" / "nginx.conf"


@contextlib.contextmanager
def start_shipped_nginx(upstream: int, root: Path, ready_timeout: float = 10.0) -> Iterator[int]:
    """A real nginx running the shipped config as it is, but for its addresses and its
    cache directory (under ``root``); yields its port."""
    text = NGINX_CONF.read_text()
    port = free_port()
    for old, new in (
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("http://127.0.0.1:8000;", f"http://127.0.0.1:{upstream};"),
        ("/var/lib/nginx/isr-cache", str(root / "isr-cache")),
    ):
        assert text.count(old) == 1, f"{old!r} is not in {NGINX_CONF} once"
        text = text.replace(old, new)
    with _run_nginx(root, text, [port], ready_timeout):
        yield port


@contextlib.contextmanager
def _run_nginx(root: Path, http: str, ports: list[int], ready_timeout: float) -> Iterator[None]:
    """nginx with ``http`` (servers, caches) in its ``http`` block, until every port in
    ``ports`` answers; stopped by PID on exit."""
    binary = require_binary("nginx", "/usr/sbin/nginx")
    for sub in ("tmp", "cache"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # as root, nginx's workers would run as "nobody" and could not write the cache here
    user = "user root;" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(root=root, user=user, servers=http))
    argv = [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
    checked = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    if checked.returncode != 0:
        pytest.fail(f"nginx rejected its config:\n{checked.stderr}", pytrace=False)
    log_file = open(root / "nginx.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                return True
            for port in ports:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                except OSError:
                    return False
            return True

        if not wait_for(listening, ready_timeout) or proc.poll() is not None:
            error_log = (root / "error.log").read_text(errors="replace")
            pytest.fail(f"nginx did not come up on {ports}:\n{error_log}", pytrace=False)
        yield
    finally:
        stop_process(proc)
        log_file.close()


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One request of a traffic loop: its answer, or the error it ended in."""

    server: str
    path: str
    started: float
    status: int | None = None
    cache: str | None = None
    error: str | None = None


def fetch_outcome(server: Instance, path: str, timeout: float = 10.0) -> Outcome:
    """Fetch ``path`` from ``server`` and say how it went, never raising for the network."""
    started = time.monotonic()
    try:
        r = server.fetch(path, timeout=timeout)
        return Outcome(server.name, path, started, r.status, r.cache)
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(server.name, path, started, error=repr(exc))
