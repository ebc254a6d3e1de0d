"""Real Redis topologies for the production-Redis tests: a TLS server with an ACL user,
a primary with a replica watched by three Sentinels, a three-primary Cluster.

Every process is a child of the test session, on free loopback ports, keeps nothing on
disk and is stopped by PID. The fixtures at the bottom are re-exported by
``conftest.py`` (one topology per session).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from servers import free_port, stop_process, wait_for

#: The commands the store sends, for an ACL user that may run exactly them (the
#: README's "Production Redis" section lists the same). Found by running the store
#: contract suite as a user with ``-@all`` plus these, leaving out one at a time: each
#: of them fails it, except ``subscribe`` (pub/sub), ``wait`` and ``script|exists``
#: (durable: a pipeline checks its scripts are loaded) and ``ping``
#: (health checks of idle connections), which test_redis_production.py needs.
ACL_COMMANDS = (
    "get", "mget", "set", "del", "scan", "hget", "hset", "hmget", "hgetall", "zadd",
    "zrangebyscore", "pexpire", "evalsha", "script|load", "script|exists", "publish",
    "subscribe", "time", "ping", "wait",
)  # fmt: skip
ACL_USER, ACL_PASSWORD = "isr", "isr-acl-password-0123456789"
ACL_PREFIX = "acl-app:"
SERVICE = "mymaster"


def redis_binary(name: str = "redis-server") -> str:  # or redis-sentinel, redis-cli, openssl
    """The binary's path; skips without it, except on CI (``CI=true``): a failure."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} binary not found", pytrace=False)
        pytest.skip(f"{name} binary not found")
    return found


class Node:
    """One ``redis-server`` (or ``redis-sentinel``) child on ``127.0.0.1:port``."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        args: list[str],
        *,
        port: int | None = None,
        client: dict[str, Any] | None = None,
        config: str | None = None,
    ) -> None:
        self.binary, self.args, self.config = binary, args, config
        self.port = port or free_port()
        self.workdir = workdir / f"node-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_options = {"host": "127.0.0.1", "port": self.port, **(client or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(socket_timeout=2, **{**self.client_options, **options})

    def answers(self) -> bool:
        try:
            with self.client(socket_connect_timeout=0.5) as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def start(self, timeout: float = 10.0, attempts: int = 3) -> Node:
        """Start and wait until it answers PING. ``{port}`` and ``{bus}`` in the
        arguments are this node's port and a free one; a port taken meanwhile (the
        race of :func:`free_port`) means another free port (see :meth:`restart`)."""
        for attempt in range(attempts):
            try:
                return self._start(timeout, self.port, free_port())
            except RuntimeError:
                if attempt == attempts - 1 or "already in use" not in self.log():
                    raise
                self.port = free_port()
                self.client_options["port"] = self.port
        raise AssertionError("unreachable")

    def _start(self, timeout: float, port: int, bus: int) -> Node:
        argv = [self.binary]
        (self.workdir / "log").unlink(missing_ok=True)
        if self.config is not None:
            conf = self.workdir / "node.conf"
            conf.write_text(self.config.format(port=port))
            argv.append(str(conf))
        argv += ["--bind", "127.0.0.1", "--dir", str(self.workdir), "--daemonize", "no"]
        argv += ["--logfile", str(self.workdir / "log")]
        argv += [a.format(port=port, bus=bus) for a in self.args]
        if "--tls-port" not in self.args:
            argv += ["--port", str(port)]
        proc = self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=self.workdir)
        if not wait_for(lambda: proc.poll() is not None or self.answers(), timeout, 0.05) or (
            proc.poll() is not None
        ):
            self.stop()
            raise RuntimeError(f"{self.binary} did not come up on {port}:\n{self.log()}")
        return self

    def restart(self) -> Node:
        """Start again on the same port (replicas and Sentinels know it)."""
        return self._start(10.0, self.port, free_port())

    def log(self) -> str:
        path = self.workdir / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to clients or replicas."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)


_NO_DISK = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(root: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with the
    ``openssl`` CLI; returns their paths by name."""
    redis_binary("openssl")  # skipped without it, failed under CI
    root.mkdir(parents=True, exist_ok=True)
    days = ["-days", "2"]
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-subj", "/CN=wsgi-isr test CA", *days, cwd=root)  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN=wsgi-isr test {name}", cwd=root)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-extfile", "san.ext", *days,
                 cwd=root)  # fmt: skip
    return {
        n: str(root / n) for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }


class TLSServer:
    """A TLS-only redis-server that requires client certificates, with the ACL user
    :data:`ACL_USER` restricted to :data:`ACL_PREFIX` keys and channels and
    :data:`ACL_COMMANDS` (the default user is off)."""

    def __init__(self, workdir: Path) -> None:
        self.certs = make_certificates(workdir / "certs")
        tls = {
            "ssl": True,
            "ssl_ca_certs": self.certs["ca.pem"],
            "ssl_certfile": self.certs["client.pem"],
            "ssl_keyfile": self.certs["client.key"],
        }
        self.admin_password = "admin-password-0123456789"
        args = [
            "--port", "0", "--tls-port", "{port}",
            "--tls-cert-file", self.certs["server.pem"], "--tls-key-file", self.certs["server.key"],
            "--tls-ca-cert-file", self.certs["ca.pem"], "--tls-auth-clients", "yes",
            "--user", *f"admin on >{self.admin_password} ~* &* +@all".split(),
            "--user", *self.acl_rule().split(),
            "--user", "default", "off", *_NO_DISK,
        ]  # fmt: skip
        admin = {"username": "admin", "password": self.admin_password, **tls}
        self.node = Node(redis_binary(), workdir, args, client=admin)

    @staticmethod
    def acl_rule() -> str:
        commands = " ".join(f"+{c}" for c in ACL_COMMANDS)
        return (
            f"{ACL_USER} on >{ACL_PASSWORD} resetkeys ~{ACL_PREFIX}* "
            f"resetchannels &{ACL_PREFIX}* -@all {commands}"
        )

    def url(self, prefix: str = ACL_PREFIX, *, client_cert: bool = True, **extra: str) -> str:
        query = {
            "ssl_ca_certs": self.certs["ca.pem"],
            "ssl_cert_reqs": "required",
            "prefix": prefix,
        }
        if client_cert:
            query |= {
                "ssl_certfile": self.certs["client.pem"],
                "ssl_keyfile": self.certs["client.key"],
            }
        query |= extra
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{self.node.port}/0?{qs}"


_SENTINEL_CONF = """\
port {port}
sentinel monitor mymaster 127.0.0.1 {primary} 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 4000
sentinel parallel-syncs mymaster 1
"""


class SentinelSet:
    """A primary, one replica and three Sentinels (quorum 2) watching them.

    ``primary`` and ``replica`` are the nodes by their role at the start; after a
    failover the caller reads :meth:`current_primary_port`."""

    def __init__(self, workdir: Path) -> None:
        binary = redis_binary()
        self.primary = Node(binary, workdir, [*_NO_DISK])
        self.replica = Node(binary, workdir, [*_NO_DISK])
        sentinel = redis_binary("redis-sentinel")
        self.sentinels = [Node(sentinel, workdir, []) for _ in range(3)]

    def start(self) -> SentinelSet:
        self.primary.start()
        self.replica.args += ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        for s in self.sentinels:
            s.config = _SENTINEL_CONF.replace("{primary}", str(self.primary.port))
        assert wait_for(self._replica_in_sync, 10), self.replica.log()
        for s in self.sentinels:
            s.start()
        # each Sentinel knows the replica and the two others: a failover can happen
        assert wait_for(self._sentinels_agree, 20), [s.log() for s in self.sentinels]
        return self

    def _replica_in_sync(self) -> bool:
        port = self.current_primary_port() if self.sentinels[0].proc else self.primary.port
        try:
            info = self.node(port or self.primary.port).client().info("replication")
        except redis.RedisError:
            return False
        return info.get("connected_slaves") == 1 and info.get("slave0", {}).get("state") == "online"

    def heal(self) -> None:
        """Start again a node that was killed (the Sentinels make it the new primary's
        replica) and wait until the replica is in sync: the set can fail over again."""
        for n in (self.primary, self.replica):
            if n.proc is None:
                n.restart()
        assert wait_for(self._replica_in_sync, 30), [n.log() for n in self.sentinels]
        assert wait_for(self._sentinels_agree, 20), [s.log() for s in self.sentinels]

    def _sentinels_agree(self) -> bool:
        try:
            for s in self.sentinels:
                c = s.client()
                up = [r for r in c.sentinel_slaves(SERVICE) if not r.get("is_sdown")]
                if not up or len(c.sentinel_sentinels(SERVICE)) < 2:
                    return False
            return True
        except redis.RedisError:
            return False

    def url(self, prefix: str, **options: str) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **options}.items())
        return f"redis+sentinel://{hosts}/{SERVICE}/0?{query}"

    def current_primary_port(self) -> int | None:
        for s in self.sentinels:
            try:
                host, port = s.client().sentinel_get_master_addr_by_name(SERVICE)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        return None

    def node(self, port: int) -> Node:
        return next(n for n in (self.primary, self.replica) if n.port == port)

    def stop(self) -> None:
        for n in [*self.sentinels, self.replica, self.primary]:
            n.stop()


class Cluster:
    """Three primaries (no replicas) made one cluster by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path) -> None:
        binary = redis_binary()
        args = [*_NO_DISK, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
        args += ["--cluster-config-file", "nodes.conf"]
        # the bus port, explicit: port + 10000 would not fit for a free port above 55535
        self.nodes = [Node(binary, workdir, [*args, "--cluster-port", "{bus}"]) for _ in range(3)]

    def start(self) -> Cluster:
        for n in self.nodes:
            n.start()
        cli = redis_binary("redis-cli")
        hosts = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run([cli, "--cluster", "create", *hosts, "--cluster-yes"], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        assert wait_for(self._ok, 20), [n.log() for n in self.nodes]
        return self

    def _ok(self) -> bool:
        for n in self.nodes:
            info = n.client().cluster("info")
            if info.get("cluster_state") != "ok":
                return False
        return True

    def url(self, prefix: str) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])  # any node will do
        return f"redis+cluster://{hosts}/?prefix={prefix}"

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def _session(topology: SentinelSet | Cluster) -> Iterator[Any]:
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """A TLS + ACL redis-server for the session."""
    server = TLSServer(tmp_path_factory.mktemp("redis-tls"))
    server.node.start()
    try:
        yield server
    finally:
        server.node.stop()


@pytest.fixture(scope="session")
def redis_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A primary + replica + three Sentinels for the session."""
    yield from _session(SentinelSet(tmp_path_factory.mktemp("redis-sentinel")))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A three-primary Redis Cluster for the session."""
    yield from _session(Cluster(tmp_path_factory.mktemp("redis-cluster")))
