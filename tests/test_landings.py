"""How coalesced waiters learn that their page landed, and how little store work that
costs: one lookup per process and landing (the looker's, handed to the others), and
the leader's own answer first.

Two middlewares, each with a store of its own on one Redis (or one directory), stand
for two processes; the waiters are threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import wait_for
from werkzeug.test import Client

import wsgi_isr.misses
from wsgi_isr import FileStore, ISRMiddleware, RedisStore
from wsgi_isr.stores import Store


class _Gated:
    """A page whose render waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.gate.wait(10)
        start_response("200 OK", [("X-ISR-Revalidate", "60")])
        return [b"the leader's render"]


def _count_lookups(store: Store) -> list[int]:
    """Wrap ``store.lookup``: the thread id of every call."""
    calls: list[int] = []
    lookup = store.lookup

    def counted(key: str) -> Any:
        calls.append(threading.get_ident())
        return lookup(key)

    store.lookup = counted  # type: ignore[method-assign]
    return calls


def _waiters(mw: ISRMiddleware, n: int) -> tuple[list[threading.Thread], list[Any]]:
    replies: list[Any] = []

    def get() -> None:
        r = Client(mw, use_cookies=False).get("/p")
        replies.append((r.headers["X-ISR-Cache"], r.headers["Cache-Status"], r.data))

    threads = [threading.Thread(target=get) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, replies


@pytest.fixture
def redis_stores(redis_url: str) -> Iterator[list[RedisStore]]:
    made = [RedisStore(redis_url), RedisStore(redis_url)]
    yield made
    for store in made:
        store.close()


def test_waiters_elsewhere_cost_one_lookup_per_landing(
    redis_stores: list[RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Woken by pub/sub, the waiters of the other process do not all look: one does,
    and hands the page to the others."""
    monkeypatch.setattr(wsgi_isr.misses, "FIRST_POLL", 30.0)  # only a wake-up brings them back
    monkeypatch.setattr(wsgi_isr.misses, "LOCK_RETRY", 5.0)
    redis_stores[1].landing_poll = 30.0
    app = _Gated()
    leader = ISRMiddleware(app, store=redis_stores[0])
    waiter = ISRMiddleware(app, store=redis_stores[1])
    calls = _count_lookups(redis_stores[1])
    lead, _ = _waiters(leader, 1)
    assert wait_for(lambda: bool(leader.regen.leases._held), 5.0, 0.01), "the leader took the lock"
    n = 8
    threads, replies = _waiters(waiter, n)
    assert wait_for(
        lambda: waiter.stats["misses"] == n and len(waiter.landings._waiting) == 1, 5.0, 0.01
    )
    time.sleep(0.2)  # all waiting
    arrived = len(calls)
    app.gate.set()
    for t in [*lead, *threads]:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "the waiters were not woken"
    assert len(replies) == n
    assert all(r[0] == "HIT" and "coalesced" in r[1] and b"leader" in r[2] for r in replies)
    assert len(calls) - arrived == 1, "each waiter looked for itself after the landing"


def test_one_waiter_per_process_polls_a_file_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file store cannot wake another process: one waiter (the looker) polls, the
    others wait for what it finds."""
    monkeypatch.setattr(wsgi_isr.misses, "LOCK_RETRY", 5.0)  # followers' patience
    app = _Gated()
    leader = ISRMiddleware(app, store=FileStore(str(tmp_path)))
    store = FileStore(str(tmp_path))
    waiter = ISRMiddleware(app, store=store)
    calls = _count_lookups(store)
    lead, _ = _waiters(leader, 1)
    assert wait_for(lambda: bool(leader.regen.leases._held), 5.0, 0.01), "the leader took the lock"
    n = 6
    threads, replies = _waiters(waiter, n)
    assert wait_for(
        lambda: waiter.stats["misses"] == n and len(waiter.landings._waiting) == 1, 5.0, 0.01
    )
    time.sleep(0.2)  # polled every landing_poll meanwhile
    app.gate.set()
    for t in [*lead, *threads]:
        t.join(10)
    assert len(replies) == n and all(r[0] == "HIT" and b"leader" in r[2] for r in replies)
    # on arrival each looks twice at most (the request's lookup, the miss' look before
    # waiting), or not at all (it joins a wait of its process)
    looked_again = {t for t in calls if calls.count(t) > 2}
    assert len(calls) > 2 + 5, "the looker polled"
    assert len(looked_again) == 1, f"{len(looked_again)} waiters polled, not one"


def test_the_leader_answers_before_its_own_process_waiters(
    redis_stores: list[RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiters of the leader's process are handed the page once the leader's own
    answer is built, not while it makes its last round trips (under gevent they would
    all be served first); the leader's own announcement does not send them looking."""
    monkeypatch.setattr(wsgi_isr.misses, "LOCK_RETRY", 5.0)  # no look of their own
    order: list[str] = []
    app = _Gated()

    def stamped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            order.append(dict(headers)["X-ISR-Cache"])
            return start_response(status, headers, exc_info)

        return mw(environ, sr)

    store = redis_stores[0]
    mw = ISRMiddleware(app, store=store)
    tag_states = store.tag_states

    def slow_tag_states(tags: Any) -> Any:  # the leader's freshness check, after storing
        time.sleep(0.3)
        return tag_states(tags)

    monkeypatch.setattr(store, "tag_states", slow_tag_states)
    client = Client(stamped, use_cookies=False)
    lead = threading.Thread(target=client.get, args=("/p",))
    lead.start()
    assert wait_for(lambda: bool(mw.regen.leases._held), 5.0, 0.01), "the leader took the lock"
    others = [threading.Thread(target=client.get, args=("/p",)) for _ in range(4)]
    for t in others:
        t.start()
    assert wait_for(lambda: len(mw.landings._waiting) == 1, 5.0, 0.01)
    time.sleep(0.1)
    app.gate.set()
    for t in [lead, *others]:
        t.join(10)
    assert order == ["MISS", "HIT", "HIT", "HIT", "HIT"]


def test_a_miss_joins_the_waiters_of_its_process_without_a_round_trip(
    redis_stores: list[RedisStore],
) -> None:
    """Its process already waits on the key (or renders it): a request for it coming
    now waits with them, with no lookup and no lock try (500 of them would take the
    leader's process all its time, its leader's last round trips waiting behind)."""
    app = _Gated()
    mw = ISRMiddleware(app, store=redis_stores[0])
    tries: list[str] = []
    lock = mw.regen.lock

    def counted(name: str) -> Any:
        tries.append(name)
        return lock(name)

    mw.regen.lock = counted  # type: ignore[method-assign]
    calls = _count_lookups(redis_stores[0])
    lead, _ = _waiters(mw, 1)
    assert wait_for(lambda: bool(mw.regen.leases._held), 5.0, 0.01), "the leader took the lock"
    n = 6
    threads, replies = _waiters(mw, n)
    assert wait_for(lambda: mw.stats["misses"] == 1 + n, 5.0, 0.01)
    time.sleep(0.1)
    app.gate.set()
    for t in [*lead, *threads]:
        t.join(10)
    assert len(replies) == n and all(r[0] == "HIT" and "coalesced" in r[1] for r in replies)
    assert len(tries) == 1, "the waiters tried the leader's lock"
    assert set(calls) == {calls[0]}, "a waiter looked (calls[0]: the leader's request)"
