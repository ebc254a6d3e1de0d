"""The processes a benchmark run starts: gunicorn per contender, its own redis-server,
its own nginx. Every one listens on a free loopback port, keeps its files in the run's
temporary directory, and is stopped (by its own process id) when the run ends.

    with Servers(workdir) as servers:
        redis = servers.redis()
        srv = servers.gunicorn("isr-redis", {"BENCH_APP": "isr", "BENCH_STORE": redis.url()})
        servers.wait_ready()
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import os
import pwd
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from types import TracebackType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
NGINX_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nginx.conf.template")


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` alone (all its threads), not its
    children (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid: int) -> list[int]:
    """The processes ``pid`` forked and that still run (Linux ``/proc``; [] elsewhere, or
    when ``pid`` went while they were read)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return []
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants (Linux
    ``/proc``; 0.0 elsewhere). Differences over a measurement give the server's cost
    per request, which other load on the machine barely moves."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
        todo += children(p)
    return total


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def reserve_port() -> socket.socket:
    """A socket bound to a free loopback port and kept bound: while it is open no other
    socket gets that port (the kernel hands out no bound port, and two reservations never
    share one). Close it right before a server binds the port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    return s


@dataclasses.dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: str
    ready_path: str = "/health"

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def cpu_parts(self) -> dict[str, float]:
        """CPU seconds so far by role: the master (gunicorn's arbiter, nginx's master)
        and its workers."""
        own = own_cpu_seconds(self.proc.pid)
        return {"master": own, "workers": self.cpu_seconds() - own}

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the process we started (gunicorn and nginx masters stop their
        workers), SIGKILL to its process group if it does not go within 10 s."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only its children
            self.proc.wait(5)


@dataclasses.dataclass
class RedisServer(Server):
    def cpu_parts(self) -> dict[str, float]:
        return {"redis-server": self.cpu_seconds()}

    def redis_url(self, prefix: str) -> str:
        return f"redis://{HOST}:{self.port}/0?prefix={prefix}"


class Servers:
    """Starts servers, waits until they answer, and stops every one of them on exit."""

    def __init__(self, workdir: str, *, workers: int = 2) -> None:
        self.workdir = workdir
        self.workers = workers
        self.started: list[Server] = []

    def __enter__(self) -> Servers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()

    def _spawn(
        self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.workdir, f"{name}.log"), "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                cmd,
                cwd=REPO,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the harness only
            )
        finally:
            log.close()

    def gunicorn(self, name: str, env: dict[str, str], port: int | None = None) -> Server:
        """``gunicorn -k gevent -w 2`` serving ``benchmarks.apps:from_env()`` with ``env``
        (on ``port``, else a free one)."""
        port = port or free_port()
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "-w",
            str(self.workers),
            "--worker-connections",
            "2000",
            "--backlog",
            "2048",
            "--keep-alive",
            "30",
            "--graceful-timeout",
            "3",
            "-b",
            f"{HOST}:{port}",
            "--chdir",
            REPO,
            "--log-level",
            "warning",
            "benchmarks.apps:from_env()",
        ]
        if _gunicorn_has_control_socket():
            # not the shared ~/.gunicorn/gunicorn.ctl: the run's servers would fight over it
            cmd.insert(-1, "--no-control-socket")
        server = Server(name, port, self._spawn(name, cmd, port, env), self._log(name))
        self.started.append(server)
        return server

    def redis(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        rdir = os.path.join(self.workdir, "redis")
        os.makedirs(rdir, exist_ok=True)
        cmd = [
            binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            rdir,
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        server = RedisServer("redis", port, self._spawn("redis", cmd, port), self._log("redis"))
        server.ready_path = ""
        self.started.append(server)
        return server

    def nginx(self, origin_port: int, *, workers: int | None = None) -> Server | None:
        """nginx ``proxy_cache`` in front of ``origin_port``, from ``nginx.conf.template``,
        with its own prefix, config, pid, temp and cache directories. None if nginx
        is not installed."""
        binary = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
            None,
        )
        if binary is None:
            return None
        port = free_port()
        prefix = os.path.join(self.workdir, "nginx")
        os.makedirs(prefix, exist_ok=True)
        user = ""
        if os.geteuid() == 0:  # workers drop to nobody: they must reach the cache directory
            os.chmod(self.workdir, 0o755)
            os.chmod(prefix, 0o755)
            nobody = pwd.getpwnam("nobody")
            user = f"user nobody {'nogroup' if _group_exists('nogroup') else nobody.pw_gid};"
        with open(NGINX_TEMPLATE) as f:
            conf = string.Template(f.read()).substitute(
                prefix=prefix,
                port=port,
                origin_port=origin_port,
                workers=workers or self.workers,
                user=user,
            )
        conf_path = os.path.join(prefix, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        cmd = [binary, "-p", prefix + "/", "-c", conf_path, "-e", os.path.join(prefix, "error.log")]
        server = Server("nginx", port, self._spawn("nginx", cmd, port), self._log("nginx"))
        self.started.append(server)
        return server

    def _log(self, name: str) -> str:
        return os.path.join(self.workdir, f"{name}.log")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every started server answers (HTTP, or a TCP connect for redis)."""
        deadline = time.monotonic() + timeout
        for server in self.started:
            while not _answers(server):
                if server.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{server.name} did not start on port {server.port}:\n{server.log_tail()}"
                    )
                time.sleep(0.05)


@functools.cache
def _gunicorn_has_control_socket() -> bool:
    from importlib import metadata

    major, minor = (int(x) for x in metadata.version("gunicorn").split(".")[:2])
    return (major, minor) >= (25, 1)


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _answers(server: Server) -> bool:
    if not server.ready_path:
        try:
            with socket.create_connection((HOST, server.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False
    conn = http.client.HTTPConnection(HOST, server.port, timeout=2)
    try:
        conn.request("GET", server.ready_path)
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
