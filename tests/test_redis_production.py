"""Redis as production runs it: TLS with client certificates and an ACL user, durable
invalidations (``WAIT``) on a primary with a replica, Sentinel and Cluster URLs.

The store contract suite itself also runs over TLS as the ACL user and on the Cluster
(``test_stores.py``, backends ``redis-tls-acl`` and ``redis-cluster``); the Sentinel
failover under traffic is in ``test_redis_failover.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_topologies import ACL_COMMANDS, ACL_PREFIX, Cluster, SentinelSet, TLSServer
from servers import wait_for
from werkzeug.test import Client

from wsgi_isr import ISRMiddleware
from wsgi_isr.entry import Entry
from wsgi_isr.errors import DurabilityError, StoreError
from wsgi_isr.stores import RedisStore, open_store
from wsgi_isr.stores.redis_connect import parse_options, tag_keys

pytestmark = [pytest.mark.redis]

README = Path(__file__).resolve().parent.parent / "README.md"
SECRET = "production-secret-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {SECRET}"}
ENTRY = Entry(
    status="200 OK",
    headers=(("Content-Type", "text/plain"),),
    body=b"hello",
    created=1_000_000.0,
    revalidate=60.0,
    expire=None,
    tags=("posts",),
    etag='"e"',
    last_modified="Wed, 21 Oct 2015 07:28:00 GMT",
)


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "posts")],
    )
    return [b"page " + uuid.uuid4().hex.encode()]


@pytest.fixture
def stores() -> Iterator[list[RedisStore]]:
    opened: list[RedisStore] = []
    yield opened
    for store in opened:
        store.close()


def _open(stores: list[RedisStore], url: str, **options: Any) -> RedisStore:
    store = RedisStore(url, **options)
    stores.append(store)
    return store


# -- TLS and ACL ----------------------------------------------------------------------------


def test_tls_acl_store_serves_pages_through_the_middleware(redis_tls: TLSServer) -> None:
    mw = ISRMiddleware(_app, store=redis_tls.url(f"{ACL_PREFIX}mw-{uuid.uuid4().hex[:6]}:"))
    try:
        client = Client(mw)
        first = client.get("/a")
        again = client.get("/a")
        assert (first.headers["X-ISR-Cache"], again.headers["X-ISR-Cache"]) == ("MISS", "HIT")
        assert first.get_data() == again.get_data()
        assert "acl-password" not in mw.store.description
    finally:
        mw.store.close()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        pytest.param({"client_cert": False}, "no client certificate", id="no-client-cert"),
        pytest.param({"prefix": "other-app:"}, "keys outside the ACL's prefix", id="other-prefix"),
    ],
)
def test_tls_acl_server_refuses_what_it_should(
    redis_tls: TLSServer, stores: list[RedisStore], change: dict[str, Any], why: str
) -> None:
    store = _open(stores, redis_tls.url(**change))
    with pytest.raises(StoreError):
        store.lookup("k")
    with pytest.raises(StoreError):
        store.put("k", ENTRY, ttl=10)


def test_tls_wrong_password_is_a_store_error(
    redis_tls: TLSServer, stores: list[RedisStore]
) -> None:
    store = _open(stores, redis_tls.url().replace("isr-acl-password", "wrong-password"))
    with pytest.raises(StoreError):
        store.lookup("k")


@pytest.mark.parametrize("topology", ["redis_tls", "redis_cluster"])
def test_invalidations_wake_other_instances(
    topology: str, request: pytest.FixtureRequest, stores: list[RedisStore]
) -> None:
    """Pub/sub through the ACL (its channel pattern) and through a cluster."""
    prefix = f"{ACL_PREFIX}ps-{uuid.uuid4().hex[:6]}:"
    url = request.getfixturevalue(topology).url(prefix)
    listener, sender = _open(stores, url), _open(stores, url)
    woken = threading.Event()
    assert listener.subscribe(woken.set)
    assert wait_for(woken.is_set, 5.0)  # it catches up once it listens
    woken.clear()
    # the subscriber may still be between SUBSCRIBE and its first read: keep sending
    assert wait_for(lambda: sender.invalidate(["t"], 5.0, hard=False) or woken.is_set(), 5.0, 0.2)
    assert listener.tag_states(["t"]) == {"t": (5.0, 0.0)}


def test_durable_and_health_checks_are_allowed_by_the_acl(
    redis_tls: TLSServer, stores: list[RedisStore]
) -> None:
    url = redis_tls.url(durable="1", durable_timeout="0.1", health_check_interval="1")
    store = _open(stores, url)
    # WAIT ran (no replica acknowledged it), it was not refused (a plain StoreError)
    with pytest.raises(DurabilityError):
        store.invalidate(["t"], 1.0, hard=False)
    assert store.tag_states(["t"]) == {"t": (1.0, 0.0)}
    time.sleep(1.1)  # the pooled connection is idle past its health-check interval
    assert store.lookup("k")[0] is None  # PING first, then the MGET


def test_readme_lists_exactly_the_acl_commands() -> None:
    """Operators grant what the README says; the contract suite proves it is enough."""
    text = README.read_text()
    rule = re.search(r"ACL SETUSER isr on >\S+ ~app:\* &app:\* -@all (.+?)$", text, re.M)
    assert rule, "the README's Production Redis section shows the ACL SETUSER line"
    assert sorted(c.lstrip("+") for c in rule.group(1).split()) == sorted(ACL_COMMANDS)


# -- durable invalidations ------------------------------------------------------------------


def _primary_url(sentinels: SentinelSet, prefix: str, query: str = "") -> str:
    port = sentinels.current_primary_port()
    return f"redis://127.0.0.1:{port}/0?prefix={prefix}{query}"


def _replica(sentinels: SentinelSet) -> Any:
    port = sentinels.current_primary_port()
    return next(n for n in (sentinels.primary, sentinels.replica) if n.port != port)


def test_durable_invalidation_is_on_the_replica_when_it_returns(
    redis_sentinels: SentinelSet, stores: list[RedisStore]
) -> None:
    prefix = f"dur-{uuid.uuid4().hex[:6]}:"
    store = _open(stores, _primary_url(redis_sentinels, prefix, "&durable=1"))
    assert store.durability is not None
    for i in range(20):
        store.invalidate([f"tag-{i}"], float(i + 1), hard=True)
        # read on the replica right away: WAIT returned, so it has it
        got = _replica(redis_sentinels).client().hget(prefix + "tagstate", f"tag-{i}")
        assert got == f"{i + 1:.6f} {i + 1:.6f}".encode()


def test_durable_invalidation_fails_when_the_replica_does_not_acknowledge(
    redis_sentinels: SentinelSet, stores: list[RedisStore]
) -> None:
    prefix = f"dur-{uuid.uuid4().hex[:6]}:"
    durable = _open(stores, _primary_url(redis_sentinels, prefix, "&durable=1&durable_timeout=0.3"))
    plain = _open(stores, _primary_url(redis_sentinels, prefix))
    durable.invalidate(["warm"], 1.0, hard=False)  # connection and script in place
    replica = _replica(redis_sentinels)
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)  # our own child: it stops acknowledging
    try:
        with pytest.raises(DurabilityError, match="0 of 1 Redis replica"):
            durable.invalidate(["posts"], 2.0, hard=False)
        plain.invalidate(["other"], 2.0, hard=False)  # not durable: returns at once
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    # recorded on the primary all the same (the error says so)
    assert plain.tag_states(["posts", "other"]) == {"posts": (2.0, 0.0), "other": (2.0, 0.0)}


def test_durable_as_a_keyword(redis_url: str, stores: list[RedisStore]) -> None:
    store = _open(stores, redis_url, durable=True, durable_timeout=0.1)
    with pytest.raises(DurabilityError):
        store.invalidate(["t"], 1.0, hard=False)
    assert _open(stores, redis_url).durability is None


def test_durable_store_without_a_replica_answers_503_with_the_reason(redis_url: str) -> None:
    mw = ISRMiddleware(_app, store=redis_url + "&durable=1&durable_timeout=0.2", secret=SECRET)
    try:
        client = Client(mw)
        assert client.get("/p").headers["X-ISR-Cache"] == "MISS"
        reply = client.post("/_isr/revalidate", json={"tag": "posts"}, headers=AUTH)
        assert reply.status_code == 503
        assert "0 of 1 Redis replica" in json.loads(reply.get_data())["error"]
        with pytest.raises(DurabilityError):
            mw.revalidate_tag("posts")
    finally:
        mw.store.close()


# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("redis://h/0", ("redis://h/0", {}), id="plain"),
        pytest.param(
            "rediss://u:p@h:1/0?ssl_ca_certs=/ca.pem&prefix=a:&durable=yes",
            ("rediss://u:p@h:1/0?ssl_ca_certs=%2Fca.pem", {"prefix": "a:", "durable": True}),
            id="tls-durable",
        ),
        pytest.param(
            "redis+sentinel://a:1,b:2/m/0?durable_timeout=0.5&durable_replicas=2",
            ("redis+sentinel://a:1,b:2/m/0", {"durable_timeout": 0.5, "durable_replicas": 2}),
            id="sentinel",
        ),
    ],
)
def test_store_options_are_split_off_the_url(url: str, expected: Any) -> None:
    assert parse_options(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis+sentinel://127.0.0.1:1/", id="sentinel-without-service"),
        pytest.param("redis+sentinel://127.0.0.1/m", id="sentinel-without-port"),
        pytest.param("redis+sentinel://127.0.0.1:1/m/x", id="sentinel-bad-db"),
        pytest.param("redis+sentinel://127.0.0.1:1/m?bogus=1", id="sentinel-unknown-option"),
        pytest.param("redis+cluster://127.0.0.1:1/3", id="cluster-db"),
        pytest.param("redis://127.0.0.1:1/0?durable=1&durable_timeout=5", id="durable-too-long"),
        pytest.param(  # the WAIT's reply would race the socket timeout (2 s)
            "redis://127.0.0.1:1/0?durable=1&durable_timeout=1.9", id="durable-no-room"
        ),
        pytest.param("redis://127.0.0.1:1/0?durable_timeout=soon", id="durable-not-a-number"),
        pytest.param("redis://127.0.0.1:1/0?durable=1&durable_replicas=0", id="durable-no-replica"),
        pytest.param("redis+cluster://127.0.0.1:1/?prefix=a{b}:", id="cluster-braces-prefix"),
    ],
)
def test_bad_production_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


def test_sentinel_url_finds_the_primary(
    redis_sentinels: SentinelSet, stores: list[RedisStore]
) -> None:
    store = _open(stores, redis_sentinels.url(f"s-{uuid.uuid4().hex[:6]}:"))
    assert store.description.startswith("redis: redis+sentinel://127.0.0.1:")
    store.put("k", ENTRY, ttl=10)
    assert store.lookup("k")[0] == ENTRY
    primary = redis_sentinels.current_primary_port()
    assert primary is not None
    assert store.client.connection_pool.get_master_address() == ("127.0.0.1", primary)


def test_cluster_keeps_tag_state_in_one_slot_and_records_spread(
    redis_cluster: Cluster, stores: list[RedisStore]
) -> None:
    prefix = f"c-{uuid.uuid4().hex[:6]}:"
    store = _open(stores, redis_cluster.url(prefix))
    assert store.cluster
    slots = {store.client.keyslot(k) for k in tag_keys(prefix, cluster=True)}
    assert len(slots) == 1, "one script writes all three"
    for i in range(30):
        store.put(f"page-{i}", ENTRY, ttl=60)
    # where the records really are: each primary asked for the prefix's keys (not the
    # client's slot map, which is what put them there)
    held = []
    for n in redis_cluster.nodes:
        with n.client() as c:
            held.append(sum(1 for _ in c.scan_iter(match=f"{prefix}e:*", count=1000)))
    assert sum(held) == 30 and all(held), ("pages are spread over the three primaries", held)
    store.invalidate(["posts"], 7.0, hard=False)
    other = _open(stores, redis_cluster.url(prefix))
    assert other.lookup("page-3") == (ENTRY, {"posts": (7.0, 0.0)})
    assert other.count() == 30
