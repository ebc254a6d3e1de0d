"""The in-process layer in front of Redis: hits without a round trip, kept coherent
by pub/sub, with its TTL bounding a lost message; and the cluster clock."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest
from helpers import CountingApp, FakeClock
from werkzeug.test import Client

from wsgi_isr import ISRMiddleware, RedisStore
from wsgi_isr.entry import Entry, Record, TagState
from wsgi_isr.stores import LocalLayer

ENTRY = Entry("200 OK", (), b"page", 1_000.0, 60.0, None, (), '"e"', "")

pytestmark = pytest.mark.redis


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Close every RedisStore a test made (connections, pub/sub listener)."""
    created: list[RedisStore] = []
    original = RedisStore.__init__

    def init(self: RedisStore, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(RedisStore, "__init__", init)
    yield
    for store in created:
        store.close()


class CountingRedis(RedisStore):
    """A RedisStore that counts its record lookups (round trips on the hit path)."""

    lookups = 0

    def lookup(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        self.lookups += 1
        return super().lookup(key)


def wait_for(predicate: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_hits_from_the_local_layer_cost_no_round_trip(redis_url: str) -> None:
    backend = CountingRedis(redis_url)
    app = CountingApp()
    mw = ISRMiddleware(app, store=backend, local_ttl=5)
    client = Client(mw, use_cookies=False)
    client.get("/p")
    before = backend.lookups
    for _ in range(20):
        assert client.get("/p").headers["X-ISR-Cache"] == "HIT"
    assert backend.lookups == before
    assert "local layer" in mw.store.description


def test_invalidation_elsewhere_reaches_the_layer_through_pubsub(redis_url: str) -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "t")])
    mw = ISRMiddleware(app, store=RedisStore(redis_url), local_ttl=60)
    client = Client(mw, use_cookies=False)
    client.get("/p")
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"
    time.sleep(0.05)  # let the subscriber connect
    other_host = ISRMiddleware(CountingApp(), store=RedisStore(redis_url))
    time.sleep(0.01)
    other_host.revalidate_tag("t")
    # the local copy is good for 60 s: only the pub/sub message can make it stale this soon
    assert wait_for(lambda: client.get("/p").headers["X-ISR-Cache"] != "HIT", 1.0)
    mw.join(5)


class Deaf(RedisStore):
    """A store whose pub/sub messages never arrive."""

    def subscribe(self, callback: Any) -> bool:
        return False


def test_a_lost_message_costs_at_most_the_layer_ttl(redis_url: str) -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "t")])
    mw = ISRMiddleware(app, store=Deaf(redis_url), local_ttl=0.5)
    client = Client(mw, use_cookies=False)
    client.get("/p")
    time.sleep(0.01)
    RedisStore(redis_url).invalidate(["t"], time.time(), hard=False)
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"  # not heard yet
    time.sleep(0.6)
    assert client.get("/p").headers["X-ISR-Cache"] == "STALE"
    mw.join(5)


@pytest.mark.parametrize("given", ["local_ttl", "layer"], ids=["local-ttl", "layer-as-store"])
def test_a_copy_made_stale_by_another_process_does_not_regenerate_twice(
    redis_url: str, given: str
) -> None:
    clock = FakeClock()
    app = CountingApp()

    def middleware() -> ISRMiddleware:
        backend = RedisStore(redis_url, clock=clock)
        if given == "layer":  # a LocalLayer passed as the store is trusted no more
            return ISRMiddleware(app, store=LocalLayer(backend, ttl=60))
        return ISRMiddleware(app, store=backend, local_ttl=60)

    a, b = middleware(), middleware()
    ca, cb = Client(a, use_cookies=False), Client(b, use_cookies=False)
    ca.get("/p")
    assert cb.get("/p").headers["X-ISR-Cache"] == "HIT"  # b now holds a local copy
    clock.advance(61)
    assert ca.get("/p").headers["X-ISR-Cache"] == "STALE"
    assert a.join(5)
    assert app.count("/p") == 2
    # b's local copy is stale by the clock, but the store already has the new render
    r = cb.get("/p")
    assert r.headers["X-ISR-Cache"] == "HIT" and b"render 2" in r.data
    assert b.join(5) and app.count("/p") == 2


def test_local_layer_bounds_its_size(redis_url: str) -> None:
    layer = LocalLayer(RedisStore(redis_url), ttl=60, max_entries=5, max_markers=3)
    for i in range(20):
        layer.put(f"page{i}", ENTRY, None)
        layer.lookup(f"missing{i}")
    assert (len(layer._pages), len(layer._others)) == (5, 3)
    layer.close()
    with pytest.raises(ValueError):
        LocalLayer(RedisStore(redis_url), ttl=0)
    with pytest.raises(ValueError):
        ISRMiddleware(CountingApp(), store="memory://", local_ttl=-1)


def test_redis_store_uses_the_servers_clock(redis_url: str) -> None:
    store = RedisStore(redis_url)
    seconds, micros = store.client.time()
    assert abs(store.now() - (seconds + micros / 1e6)) < 0.5
    store._offset_checked = float("-inf")
    store.clock = lambda: time.time() - 3600  # this host's clock is an hour late
    store._server_clock = True
    assert abs(store.now() - time.time()) < 0.5  # still stamped on the server's clock
