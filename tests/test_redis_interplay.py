"""The interplay of the scale-out machinery (circuit breaker, one clock, landings) and
production topologies (Sentinel, Cluster, durable invalidations), on real servers:
found by a red-team review of the two merged together."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest
from conftest import RedisServer
from helpers import CountingApp, elsewhere
from redis_topologies import Cluster, SentinelSet
from werkzeug.test import Client

from wsgi_isr import ISRMiddleware
from wsgi_isr.errors import StoreError
from wsgi_isr.stores.redis import RedisStore

pytestmark = [pytest.mark.server, pytest.mark.redis]


def test_cluster_unreachable_at_boot_is_a_store_error() -> None:
    # redis:// builds a store with the server down (requests then fail open); a
    # cluster client must read the slot map first: that it cannot is a clear store
    # error, never redis-py's own RedisClusterException
    RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.3)
    with pytest.raises(StoreError, match="cluster not reachable"):
        RedisStore("redis+cluster://127.0.0.1:1/", socket_timeout=0.3)


def test_cluster_down_at_runtime_fails_open(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path).start()
    try:
        store = RedisStore(cluster.url(f"rt3-{uuid.uuid4().hex[:6]}:"), socket_timeout=0.5)
        app = CountingApp()
        client = Client(ISRMiddleware(app, store=store), use_cookies=False)
        assert client.get("/page").status_code == 200
        for n in cluster.nodes:
            n.stop()
        got = client.get("/page")  # the cache layer never turns a request into a 500
        assert got.status_code == 200, got.status_code
    finally:
        cluster.stop()


def test_count_on_a_hung_redis_does_not_close_the_breaker(own_redis: RedisServer) -> None:
    store = RedisStore(f"{own_redis.url}?prefix=rt3:", socket_timeout=0.3)
    own_redis.signal(signal.SIGSTOP)
    for _ in range(3):  # three visitors
        with pytest.raises(StoreError):
            elsewhere(lambda: store.lookup("x"))
    assert store.breaker.open
    store.breaker._open_until = 0.0  # the open interval is over: the next command probes
    assert store.count() is None  # scan_iter() returned a generator: "success", no I/O
    assert store.breaker.open, "the breaker closed although the server is still hung"


def test_durable_invalidation_as_the_breakers_probe(redis_sentinels: SentinelSet) -> None:
    prefix = f"rt3d-{uuid.uuid4().hex[:6]}:"
    store = RedisStore(redis_sentinels.url(prefix, durable="1"), socket_timeout=2.0)
    first = store.invalidate(["t"], hard=False)  # durable, replica acknowledges: fine
    # the breaker was open (Redis hung a moment ago) and its interval is over:
    store.breaker.streak, store.breaker._open_until = 3, 0.0
    try:
        stamp = store.invalidate(["t"], hard=False)  # Redis answers again
    except StoreError as exc:
        applied = float(store._raw.hget(store._state_key, "t").split()[0])
        assert applied > first  # the second invalidation is on the primary (and replica)
        pytest.fail(f"503 for an invalidation that was applied and replicated ({applied!r}): {exc}")
    assert stamp > 0


def test_durable_timeouts_feed_the_breaker(own_redis: RedisServer) -> None:
    store = RedisStore(f"{own_redis.url}?prefix=rt3t:&durable=1&durable_timeout=0.1",
                       socket_timeout=0.3)  # fmt: skip
    own_redis.signal(signal.SIGSTOP)
    for _ in range(3):  # three webhook calls
        with pytest.raises(StoreError):
            elsewhere(lambda: store.invalidate(["t"], hard=False))  # each waits the timeout
    assert store.breaker.open, f"3 timeouts in a row, breaker streak {store.breaker.streak}"


def test_durable_invalidations_missing_their_replica_leave_page_traffic_alone(
    own_redis: RedisServer,
) -> None:
    """No replica, and a durable_timeout close to the socket timeout: each invalidation
    waits its WAIT and is refused (DurabilityError), but that is the store's own answer,
    not a hung server: the breaker stays closed and visitors keep their cache."""
    store = RedisStore(f"{own_redis.url}?prefix=rt3r:&durable=1&durable_timeout=0.8",
                       socket_timeout=1.0)  # fmt: skip
    try:
        for _ in range(3):  # three webhook calls
            with pytest.raises(StoreError):
                elsewhere(lambda: store.invalidate(["t"], hard=False))
        assert store.breaker.streak == 0 and not store.breaker.open
        assert store.lookup("x")[0] is None  # a visitor's lookup goes through
    finally:
        store.close()


def test_readme_acl_user_on_a_cluster(redis_cluster: Cluster) -> None:
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rules = re.findall(r"ACL SETUSER isr (on .*)", readme)
    assert len(rules) == 2  # one server; a cluster's nodes (with the discovery commands)
    rule = re.match(r"(.*)", rules[1])
    assert rule
    user, password = f"rt3{uuid.uuid4().hex[:6]}", "pw-0123456789"
    words = rule.group(1).replace(">PASSWORD", f">{password}").split()
    for n in redis_cluster.nodes:
        n.client().acl_setuser(user, reset=True)
        n.client().execute_command("ACL", "SETUSER", user, *words)
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster.nodes)
    store = RedisStore(f"redis+cluster://{user}:{password}@{hosts}/?prefix=app:")
    assert store.lookup("k")[0] is None
    store.invalidate(["t"], hard=False)


def test_landing_crosses_cluster_nodes(redis_cluster: Cluster) -> None:
    import threading

    prefix = f"rt3l-{uuid.uuid4().hex[:6]}:"
    a, b = RedisStore(redis_cluster.url(prefix)), RedisStore(redis_cluster.url(prefix))
    heard: list[str] = []
    got = threading.Event()
    a.watch_landings(lambda key: (heard.append(key), got.set()))
    try:
        for _ in range(50):  # bounded: until A's subscriber is listening
            b.announce_landing("page-key")
            if got.wait(0.1):
                break
        assert heard and heard[0] == "page-key"
    finally:
        a.close()
        b.close()


def test_one_cluster_primary_down_fails_open(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path).start()
    try:
        store = RedisStore(cluster.url(f"rt3o-{uuid.uuid4().hex[:6]}:"), socket_timeout=0.5)
        client = Client(ISRMiddleware(CountingApp(), store=store), use_cookies=False)
        assert client.get("/p0").status_code == 200
        cluster.nodes[2].stop()  # a primary without replica (not one of the URL's nodes)
        codes = [client.get(f"/p{i}").status_code for i in range(12)]
        assert set(codes) == {200}, codes
    finally:
        cluster.stop()


def test_cluster_render_start_and_invalidation_on_one_clock(redis_cluster: Cluster) -> None:
    # DESIGN §7 / issue 11: the render start (TIME in _ACQUIRE_STAMPED, run on the lock
    # key's node) and the invalidation (TIME in _INVALIDATE, on the tags' node) are
    # compared with each other; on a cluster they are read from different servers'
    # clocks (different hosts in production), so Redis' serial order no longer decides
    store = RedisStore(redis_cluster.url(f"rt3c-{uuid.uuid4().hex[:6]}:"))
    tags_node = store._raw.get_node_from_key(store._seq_key).name
    lock_nodes = {store._raw.get_node_from_key(store._lock_key(f"/p{i}")).name for i in range(20)}
    assert lock_nodes == {tags_node}, f"locks stamped on {sorted(lock_nodes)}, tags on {tags_node}"


def test_landings_and_invalidations_after_a_graceful_sentinel_failover(
    redis_sentinels: SentinelSet,
) -> None:
    import threading
    import time

    prefix = f"rt3s-{uuid.uuid4().hex[:6]}:"
    a = RedisStore(redis_sentinels.url(prefix, durable="1"))
    b = RedisStore(redis_sentinels.url(prefix, durable="1"))
    heard: list[str] = []
    got = threading.Event()
    a.watch_landings(lambda key: (heard.append(key), got.set()))
    try:
        for _ in range(50):
            b.announce_landing("before")
            if got.wait(0.1):
                break
        assert heard, "no landing heard before the failover"
        old = redis_sentinels.current_primary_port()
        redis_sentinels.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", "mymaster")
        for _ in range(300):  # bounded: 30 s
            if redis_sentinels.current_primary_port() not in (None, old):
                break
            time.sleep(0.1)
        assert redis_sentinels.current_primary_port() != old
        errors = []
        for _ in range(100):  # the store follows (a few errors while it moves are fine)
            try:
                b.invalidate(["t"], hard=False)
                break
            except StoreError as exc:
                errors.append(str(exc))
                time.sleep(0.1)
        else:
            pytest.fail(f"invalidations never resumed: {errors[-3:]}")
        got.clear()
        heard.clear()
        for _ in range(50):
            b.announce_landing("after")
            if got.wait(0.1):
                break
        assert "after" in heard, "A's subscriber no longer hears landings after the failover"
    finally:
        a.close()
        b.close()
        redis_sentinels.heal()


def test_forked_child_hears_landings_on_sentinel(redis_sentinels: SentinelSet) -> None:
    import os
    import threading

    prefix = f"rt3f-{uuid.uuid4().hex[:6]}:"
    store = RedisStore(redis_sentinels.url(prefix))
    store.watch_landings(lambda key: None)  # the parent's subscriber runs (pre-fork)
    store.lookup("k")  # pooled connections exist in the parent
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: what misses.Landings does after a fork
        ok = b"0"
        try:
            got = threading.Event()
            store.watch_landings(lambda key: got.set())
            store.lookup("k")
            for _ in range(50):
                store.announce_landing("child")
                if got.wait(0.1):
                    ok = b"1"
                    break
        finally:
            os.write(w, ok)
            os._exit(0)
    os.close(w)
    result = os.read(r, 1)
    os.waitpid(pid, 0)
    store.lookup("k")  # the parent's pool still works after the child used its copy
    store.close()
    assert result == b"1", "the forked child never heard its own landing"
