"""Across processes through Redis pub/sub: coalesced misses woken when their leader
lands, and what a lost message costs the local layer.

Two middlewares on one real Redis, each with a store of its own (its own connection
pool and subscriber), stand for two hosts. Lost messages are real: the server drops
the subscribers' connections (``CLIENT KILL TYPE pubsub``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import redis
from helpers import CountingApp
from servers import wait_for
from werkzeug.test import Client

import wsgi_isr.misses
from wsgi_isr import ISRMiddleware, RedisStore

pytestmark = pytest.mark.redis


@pytest.fixture
def stores(redis_url: str) -> Iterator[list[RedisStore]]:
    made: list[RedisStore] = []
    yield made
    for store in made:
        store.close()


def _admin(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url.split("?", 1)[0])


def _prefix(redis_url: str) -> str:
    return redis_url.split("prefix=", 1)[1]


def _subscribers(admin: redis.Redis, channel: str) -> int:
    return int(dict(admin.pubsub_numsub(channel)).get(channel.encode(), 0))


def test_a_waiter_elsewhere_is_woken_by_the_landing(
    redis_url: str, stores: list[RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()

    def slow(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        gate.wait(10)
        start_response("200 OK", [("X-ISR-Revalidate", "60")])
        return [b"the leader's render"]

    stores += [RedisStore(redis_url), RedisStore(redis_url)]
    # a waiter's pauses are 30 s: only a wake-up brings it back sooner
    monkeypatch.setattr(wsgi_isr.misses, "FIRST_POLL", 30.0)
    stores[1].landing_poll = 30.0
    leader = ISRMiddleware(slow, store=stores[0])
    waiter = ISRMiddleware(CountingApp(), store=stores[1])
    replies: dict[str, Any] = {}

    def get(name: str, mw: ISRMiddleware) -> None:
        r = Client(mw, use_cookies=False).get("/p")
        replies[name] = (r.headers["X-ISR-Cache"], r.headers["Cache-Status"], r.data)

    lead = threading.Thread(target=get, args=("leader", leader))
    lead.start()
    assert wait_for(lambda: bool(leader.regen.leases._held), 5.0, 0.01), "the leader took the lock"
    wait = threading.Thread(target=get, args=("waiter", waiter))
    wait.start()
    admin = _admin(redis_url)
    landings = _prefix(redis_url) + "landings"
    assert wait_for(
        lambda: bool(waiter.landings._waiting) and _subscribers(admin, landings) >= 1, 5.0, 0.01
    )
    gate.set()
    lead.join(10)
    wait.join(10)  # woken: well before its 30 s pause ends
    assert not wait.is_alive(), "the waiter was not woken by the leader's landing"
    assert replies["leader"][0] == "MISS"
    assert replies["waiter"][0] == "HIT" and replies["waiter"][2] == b"the leader's render"
    assert waiter.stats["coalesced"] == 1 and waiter.app.count("/p") == 0  # type: ignore[attr-defined]


def test_a_subscriber_cut_off_longer_than_local_ttl_serves_no_older_page(
    redis_url: str, stores: list[RedisStore]
) -> None:
    """The local layer hears invalidations over pub/sub; when the message is lost (the
    server dropped the connection), its copy is trusted for ``local_ttl`` at most."""
    ttl = 0.5
    app = CountingApp(default=[("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "t")])
    stores += [RedisStore(redis_url), RedisStore(redis_url)]
    host_b = ISRMiddleware(app, store=stores[0], local_ttl=ttl)
    client = Client(host_b, use_cookies=False)
    assert client.get("/p").headers["X-ISR-Cache"] == "MISS"
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"
    admin = _admin(redis_url)
    channel = _prefix(redis_url) + "invalidations"
    assert wait_for(lambda: _subscribers(admin, channel) >= 1, 5.0, 0.01), "host B listens"

    admin.client_kill_filter(_type="pubsub")  # every subscriber's connection is dropped
    assert _subscribers(admin, channel) == 0
    host_a = ISRMiddleware(CountingApp(), store=stores[1])
    cut_until = time.monotonic() + ttl + 0.2
    host_a.revalidate_tag("t")  # its message reaches nobody
    lost = client.get("/p")
    served = []
    while time.monotonic() < cut_until:  # keep B deaf for longer than local_ttl
        admin.client_kill_filter(_type="pubsub")
        time.sleep(0.02)
    served.append(client.get("/p").headers["X-ISR-Cache"])
    # the message was lost: B still trusted its local copy for a moment ...
    assert lost.headers["X-ISR-Cache"] == "HIT"
    # ... but past local_ttl it asked Redis, which knows of the invalidation
    assert served == ["STALE"], served
    assert host_b.join(5)
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT" and app.count("/p") == 2
