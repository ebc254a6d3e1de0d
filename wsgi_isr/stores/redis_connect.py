"""How the Redis store reaches Redis: one server, Sentinel or Cluster; TLS, ACL users;
durable invalidations.

URL grammar (every form takes ``?prefix=``, ``?durable=1``, ``?durable_timeout=``,
``?durable_replicas=``; a password or user name with reserved characters is
percent-encoded)::

    redis://[[user]:password@]host[:port][/db][?options]        one server
    rediss://[[user]:password@]host[:port][/db]?ssl_ca_certs=/ca.pem[&ssl_certfile=...
        &ssl_keyfile=...&ssl_cert_reqs=required|optional|none]  one server over TLS
    unix:///path/to/redis.sock[?db=0]
    redis+sentinel://[[user]:password@]host:26379[,host:26379...]/service[/db][?options]
    redis+cluster://[[user]:password@]host:port[,host:port...][/][?options]

``user``/``password`` authenticate against the Redis servers; Sentinels that need a
password of their own take ``?sentinel_username=``/``?sentinel_password=``.

>>> parse_options("redis://h/0?prefix=app:&durable=1")
('redis://h/0', {'prefix': 'app:', 'durable': True})
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..errors import DurabilityError

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
_TRUE = ("1", "true", "yes", "on")
_OURS = ("prefix", "durable", "durable_timeout", "durable_replicas")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


@dataclasses.dataclass(frozen=True)
class Durability:
    """Invalidations return only once ``replicas`` replicas hold them (Redis ``WAIT``),
    else :class:`~wsgi_isr.errors.DurabilityError` after ``timeout`` seconds."""

    replicas: int = 1
    timeout: float = 1.0

    def run(self, client: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` and ``WAIT`` on one connection (``WAIT`` counts the replicas
        that acknowledged this connection's writes); return the script's result."""
        target = client
        if is_cluster(client):  # the node that owns the script's slot
            target = client.get_redis_connection(client.get_node_from_key(keys[0]))
        with target.pipeline(transaction=False) as pipe:
            script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self.replicas, max(1, int(self.timeout * 1000)))
            result, acked = pipe.execute()
        if int(acked) < self.replicas:
            raise DurabilityError(
                f"the invalidation reached {int(acked)} of {self.replicas} Redis replica(s) "
                f"within {self.timeout:g} s: it is recorded on the primary but could be lost "
                "in a failover; send it again"
            )
        return result


@dataclasses.dataclass(frozen=True)
class Connection:
    client: Any
    prefix: str
    description: str
    cluster: bool
    durability: Durability | None


def parse_options(url: str) -> tuple[str, dict[str, Any]]:
    """Split the store's own options (``prefix``, ``durable*``) off ``url``; the rest
    of the query stays in the URL for redis-py."""
    base, _, query = url.partition("?")
    ours: dict[str, Any] = {}
    rest = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _OURS:
            rest.append((name, value))
            continue
        try:
            if name == "durable":
                ours[name] = value.lower() in _TRUE
            elif name == "durable_timeout":
                ours[name] = float(value)
            elif name == "durable_replicas":
                ours[name] = int(value)
            else:
                ours[name] = value
        except ValueError as exc:
            raise ValueError(f"bad {name} in redis URL: {exc}") from exc
    return base + ("?" + urlencode(rest) if rest else ""), ours


def tag_keys(prefix: str, cluster: bool) -> tuple[str, str, str]:
    """The invalidation sequence, the tag state hash and the change log. One script
    writes all three, so on a cluster they share a hash tag (one slot): an
    invalidation costs one call on one node whatever the number of nodes or pages."""
    if not cluster:
        return prefix + "tagseq", prefix + "tagstate", prefix + "tagchanges"
    slot = f"{prefix}{{{prefix}tags}}"
    return slot + "seq", slot + "state", slot + "changes"


def is_cluster(client: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def disconnect(client: Any) -> None:
    """Close every connection of a client this store built."""
    if is_cluster(client):
        client.disconnect_connection_pools()
    else:
        client.connection_pool.disconnect()


def connect(
    url: str,
    *,
    prefix: str,
    durable: bool,
    durable_timeout: float,
    socket_timeout: float,
    socket_connect_timeout: float,
    max_connections: int,
) -> Connection:
    """A client for ``url`` (see the module's URL grammar), its key prefix, a
    description without secrets, and the durability the URL or the caller asked for."""
    import redis

    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(f"not a redis URL: {url!r}")
    url, ours = parse_options(url)
    prefix = ours.get("prefix", prefix)
    durability = None
    if ours.get("durable", durable):
        timeout = ours.get("durable_timeout", durable_timeout)
        if not 0 < timeout <= 0.8 * socket_timeout:  # room for the WAIT's reply
            raise ValueError(
                f"durable_timeout must be above 0 and at most {0.8 * socket_timeout:g} s"
                f" (0.8 x the socket timeout, {socket_timeout:g} s)"
            )
        replicas = ours.get("durable_replicas", 1)
        if replicas < 1:
            raise ValueError("durable_replicas must be at least 1")
        durability = Durability(replicas, timeout)
    common = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_connect_timeout}
    cluster = False
    try:
        if scheme == "redis+sentinel":
            client, where = _sentinel(url, common, max_connections)
        elif scheme == "redis+cluster":
            if "{" in prefix or "}" in prefix:  # it would move the keys' hash tags
                raise ValueError(f"a cluster prefix cannot hold braces: {prefix!r}")
            client, where, cluster = _cluster(url, common, max_connections), "", True
        else:
            # a bounded pool that makes callers wait their turn: 500 greenlets on a
            # stale page must not open 500 connections at once (connect timeouts would
            # turn into fail-open renders: a stampede)
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=socket_timeout,
                health_check_interval=30,
                **common,
            )
            client, where = redis.Redis(connection_pool=pool), ""
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad redis URL {_without_secrets(url)!r}: {exc}") from exc
    where = where or _without_secrets(url)
    return Connection(client, prefix, f"redis: {where} (prefix {prefix!r})", cluster, durability)


def _without_secrets(url: str) -> str:
    parts = urlsplit(url.split("?", 1)[0])
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


def _hosts_and_auth(url: str) -> tuple[list[tuple[str, int]], dict[str, Any], str, dict[str, str]]:
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    credentials: dict[str, Any] = {}
    if auth:
        user, _, password = auth.partition(":")
        credentials = {"username": unquote(user) or None, "password": unquote(password) or None}
    nodes = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"expected host:port, got {host!r}")
        nodes.append((name.strip("[]"), int(port)))
    return nodes, credentials, parts.path, dict(parse_qsl(parts.query))


def _sentinel(url: str, common: dict[str, Any], max_connections: int) -> tuple[Any, str]:
    from redis import sentinel as redis_sentinel

    nodes, credentials, path, query = _hosts_and_auth(url)
    service, _, db = path.strip("/").partition("/")
    if not service or (db and not db.isdigit()):
        raise ValueError("expected redis+sentinel://host:port[,host:port]/service[/db]")
    unknown = set(query) - set(_SENTINEL_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for a sentinel URL")
    sentinel_auth = {
        "username": query.get("sentinel_username"),
        "password": query.get("sentinel_password"),
    }
    # the Sentinels are asked one after another: each within its share of the timeouts,
    # so finding the primary when all of them hang costs one socket timeout, not n
    share = {name: seconds / len(nodes) for name, seconds in common.items()}
    sentinels: Any = redis_sentinel.Sentinel  # untyped in redis-py
    sentinel = sentinels(nodes, sentinel_kwargs={**share, **sentinel_auth}, **common)
    client = sentinel.master_for(
        service,
        connection_pool_class=_BlockingSentinelPool(),
        db=int(db or 0),
        max_connections=max_connections,
        timeout=common["socket_timeout"],
        health_check_interval=30,
        **credentials,
    )
    where = ",".join(f"{h}:{p}" for h, p in nodes)
    return client, f"redis+sentinel://{where}/{service}/{int(db or 0)}"


@functools.cache
def _BlockingSentinelPool() -> type:  # noqa: N802 - a class built on first use
    """redis-py's Sentinel pool (re-reads the primary's address from the Sentinels on
    every new connection and drops idle ones when it moved) with the blocking bound
    of :class:`redis.BlockingConnectionPool`."""
    from redis import BlockingConnectionPool
    from redis.sentinel import SentinelConnectionPool

    return type("BlockingSentinelPool", (SentinelConnectionPool, BlockingConnectionPool), {})


def _cluster(url: str, common: dict[str, Any], max_connections: int) -> Any:
    from redis import cluster as redis_cluster
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException, RedisError

    node: Any = redis_cluster.ClusterNode  # untyped in redis-py

    class Cluster(RedisCluster):
        def mget(self, keys: Any, *args: Any) -> Any:
            # a record and the invalidation sequence live in two slots: one round
            # trip per node that holds them, not a CROSSSLOT error
            return self.mget_nonatomic(keys, *args)

    nodes, credentials, path, query = _hosts_and_auth(url)
    if path.strip("/") not in ("", "0"):
        raise ValueError("a cluster has only database 0")
    if query:
        raise ValueError(f"unknown option(s) {sorted(query)} for a cluster URL")
    try:
        return Cluster(
            startup_nodes=[node(h, p) for h, p in nodes],
            max_connections=max_connections,
            **credentials,
            **common,
        )
    except (RedisClusterException, RedisError) as exc:
        # at start-up too, a cluster that cannot be reached is a store error: the
        # middleware then serves from the application until it answers
        from ..errors import StoreError

        raise StoreError(f"redis cluster not reachable: {exc}") from exc
