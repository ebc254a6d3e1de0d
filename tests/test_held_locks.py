"""STALE as cheap as HIT: what a process knows of a page's regeneration lock.

The visitors of a page being regenerated must not each try its lock (on Redis a
round trip each), yet nothing the lock decides may change: a landed regeneration is
served to the next visitor, an invalidation that came while it ran leads to another
one at once, a failure backs the key off as before, and a holder that dies is taken
over from within one lease. Two middlewares on one store stand for two processes
(for Redis: two connections, the landing announced over pub/sub).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock
from werkzeug.test import Client

import wsgi_isr.regeneration as regeneration
from wsgi_isr import ISRMiddleware
from wsgi_isr.lease import HeldLocks
from wsgi_isr.stores import LocalLayer, Store, open_store

KEY = "http://localhost/p?"


class Renders:
    """/p, fresh for 60 s; each render waits for its own ``go`` event (or fails)."""

    def __init__(self) -> None:
        self.n = 0
        self.started = threading.Semaphore(0)
        self.gates: list[threading.Event] = []
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self.lock:
            self.n += 1
            n = self.n
            gate = threading.Event()
            self.gates.append(gate)
        if n > 1:  # the first fill runs at once; regenerations wait to be let go
            self.started.release()
            gate.wait(20)
        if self.fail:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"down"]
        start_response("200 OK", [("X-ISR-Revalidate", "60"), ("X-ISR-Tags", "p")])
        return [f"render {n}".encode()]

    def let_go(self) -> None:
        for gate in self.gates:
            gate.set()


class Counted:
    """Counts the lock attempts a middleware makes on its (real) store."""

    def __init__(self, store: Store) -> None:
        self.attempts: list[str] = []
        real = store.acquire_stamped

        def acquire_stamped(name: str, ttl: float) -> tuple[str, float] | None:
            self.attempts.append(name)
            return real(name, ttl)

        store.acquire_stamped = acquire_stamped  # type: ignore[method-assign]

    def regen(self) -> int:
        return sum(1 for a in self.attempts if a.startswith("regen:"))


@pytest.fixture(
    params=[
        "memory",
        "file",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-local", marks=pytest.mark.redis),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    url = str(request.getfixturevalue("redis_url"))
    return url + "&local_ttl=60" if request.param == "redis-local" else url


@pytest.fixture
def pair(store_url: str) -> Iterator[tuple[Any, ...]]:
    """Two middlewares ("processes") on one store, one fake clock, one app."""
    clock = FakeClock()
    app = Renders()
    first = open_store(store_url, clock=clock)
    # memory: one store object is what two middlewares of one process share
    second = first if store_url == "memory://" else open_store(store_url, clock=clock)
    # a short back-off: on Redis its lock runs out on the server's clock
    a = ISRMiddleware(app, store=first, regeneration_backoff=1.0)
    b = ISRMiddleware(app, store=second, regeneration_backoff=1.0)
    try:
        yield a, b, clock, app
    finally:
        app.let_go()
        a.join(5)
        b.join(5)
        first.close()
        if second is not first:
            second.close()


def _count_backend_lookups(store: Store, delay: float = 0.0) -> list[str]:
    looked: list[str] = []
    if isinstance(store, LocalLayer):
        real = store.backend.lookup

        def lookup(key: str) -> Any:
            looked.append(key)
            time.sleep(delay)
            return real(key)

        store.backend.lookup = lookup  # type: ignore[method-assign]
    return looked


def _get(mw: ISRMiddleware) -> Any:
    return Client(mw, use_cookies=False).get("/p")


def _stale_with_regeneration_running(a: ISRMiddleware, clock: FakeClock, app: Renders) -> None:
    assert _get(a).data == b"render 1"
    clock.advance(61)
    assert _get(a).headers["X-ISR-Cache"] == "STALE"
    assert app.started.acquire(timeout=5)  # regeneration 2 runs in a


def _wait_landed(mw: ISRMiddleware, body: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while mw.store.lookup_through(KEY)[0].body != body:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the regeneration never landed"
        time.sleep(0.01)


def test_the_process_running_a_regeneration_does_not_ask_for_its_lock_again(
    store_url: str,
) -> None:
    app = Renders()
    mw = ISRMiddleware(app, store=store_url, clock=FakeClock())
    clock = mw.store.clock
    assert isinstance(clock, FakeClock)
    counted = Counted(mw.store)
    try:
        _stale_with_regeneration_running(mw, clock, app)
        assert counted.regen() == 1
        replies = [_get(mw) for _ in range(20)]
        assert {r.headers["X-ISR-Cache"] for r in replies} == {"STALE"}
        assert counted.regen() == 1, counted.attempts  # not one per visitor
        app.let_go()
        assert mw.join(5)
        # it landed: the next visitor is served the new page at once (and, as it is
        # fresh, starts nothing)
        assert _get(mw).data == b"render 2"
    finally:
        app.let_go()
        mw.join(5)
        mw.store.close()


def test_concurrent_visitors_of_a_stale_page_make_one_lock_attempt(store_url: str) -> None:
    """The first visitor's attempt is under way (a slow store): the others who saw the
    same record wait for its answer instead of each asking (a burst of round trips, on
    every landing of a page visited by hundreds of connections at once)."""
    app = Renders()
    mw = ISRMiddleware(app, store=store_url, clock=FakeClock())
    clock = mw.store.clock
    assert isinstance(clock, FakeClock)
    counted = Counted(mw.store)
    slow = mw.store.acquire_stamped

    def slowly(name: str, ttl: float) -> tuple[str, float] | None:
        time.sleep(0.3)
        return slow(name, ttl)

    mw.store.acquire_stamped = slowly  # type: ignore[method-assign]
    try:
        assert _get(mw).data == b"render 1"
        clock.advance(61)
        looked = _count_backend_lookups(mw.store, delay=0.3)  # the local copy is re-read
        replies: list[str] = []
        threads = [
            threading.Thread(target=lambda: replies.append(_get(mw).headers["X-ISR-Cache"]))
            for _ in range(10)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert replies == ["STALE"] * 10
        assert counted.regen() == 1, counted.attempts
        assert app.started.acquire(timeout=5) and app.n == 2
        if isinstance(mw.store, LocalLayer):  # the visitor's, and the lock holder's (newer?)
            assert len(looked) == 2, looked
    finally:
        app.let_go()
        mw.join(5)
        mw.store.close()


def test_another_process_asks_once_per_lease_while_a_regeneration_runs(
    pair: tuple[Any, ...],
) -> None:
    a, b, clock, app = pair
    counted = Counted(b.store)
    _stale_with_regeneration_running(a, clock, app)
    assert _get(b).headers["X-ISR-Cache"] == "STALE"  # held: b starts to listen
    time.sleep(regeneration.LISTENING_AFTER + 0.1)  # ...and trusts it hears landings now
    before = counted.regen()
    looked = _count_backend_lookups(b.store)
    for _ in range(20):
        assert _get(b).headers["X-ISR-Cache"] == "STALE"
    hears = b.landings.watch(b.regen._heard)  # the file store cannot tell of landings
    assert counted.regen() - before == (1 if hears else 20), counted.attempts
    if isinstance(b.store, LocalLayer):  # and its stale local copy is as good as Redis'
        assert len(looked) == 1, looked
    if hears:  # past its note (on the store's clock) it asks again, once
        clock.advance(b.regen.quiet_for + 0.1)
        for _ in range(5):
            _get(b)
        assert counted.regen() - before == 2, counted.attempts
    assert app.n == 2  # one regeneration in all


def test_a_landing_elsewhere_is_served_and_its_invalidation_regenerated_at_once(
    pair: tuple[Any, ...],
) -> None:
    """An invalidation while a's regeneration runs: what it lands is stale already, and
    b's next visitor must get it and start the next regeneration, quiet or not."""
    a, b, clock, app = pair
    _stale_with_regeneration_running(a, clock, app)
    _get(b)
    time.sleep(regeneration.LISTENING_AFTER + 0.1)
    assert _get(b).headers["X-ISR-Cache"] == "STALE"  # b knows a holds the lock
    clock.advance(0.5)
    b.revalidate_tag("p")  # after regeneration 2 started: it reads old data
    app.gates[1].set()
    assert a.join(5)  # landed, let go of the lock, announced
    time.sleep(0.2)  # the announcement (pub/sub) reaches b
    r = _get(b)
    assert (r.data, r.headers["X-ISR-Cache"]) == (b"render 2", "STALE")
    assert app.started.acquire(timeout=5), "b did not start regeneration 3"
    assert app.n == 3
    app.let_go()
    _wait_landed(b, b"render 3")
    assert _get(a).data == b"render 3" and _get(b).headers["X-ISR-Cache"] == "HIT"


def test_an_invalidation_during_this_process_regeneration_leads_to_another(
    store_url: str,
) -> None:
    app = Renders()
    mw = ISRMiddleware(app, store=store_url, clock=FakeClock())
    clock = mw.store.clock
    assert isinstance(clock, FakeClock)
    try:
        _stale_with_regeneration_running(mw, clock, app)
        clock.advance(0.5)
        mw.revalidate_tag("p")
        assert _get(mw).headers["X-ISR-Cache"] == "STALE"  # still running: nothing new
        app.gates[1].set()
        _wait_landed(mw, b"render 2")
        assert mw.join(5)
        r = _get(mw)
        assert (r.data, r.headers["X-ISR-Cache"]) == (b"render 2", "STALE")
        assert app.started.acquire(timeout=5) and app.n == 3
    finally:
        app.let_go()
        mw.join(5)
        mw.store.close()


def test_a_failure_elsewhere_backs_off_as_before(pair: tuple[Any, ...]) -> None:
    """a's regeneration fails: b, which knew it was running, neither starts one during
    the back-off nor waits any longer than the back-off once it is over."""
    a, b, clock, app = pair
    _stale_with_regeneration_running(a, clock, app)
    _get(b)
    time.sleep(regeneration.LISTENING_AFTER + 0.1)
    _get(b)
    app.fail = True
    app.gates[1].set()
    assert a.join(5) and a.stats["regenerations_failed"] == 1
    time.sleep(0.2)
    for _ in range(5):
        assert _get(b).headers["X-ISR-Cache"] == "STALE"
    assert app.n == 2 and b.stats["regenerations_started"] == 0  # backing off
    app.fail = False
    clock.advance(1.1)  # past the back-off, on the store's clock...
    time.sleep(1.1)  # ...and on Redis' own
    assert _get(b).headers["X-ISR-Cache"] == "STALE"
    assert app.started.acquire(timeout=5), "the back-off outlasted itself"
    assert b.stats["regenerations_started"] == 1 and app.n == 3


def test_a_dead_holder_is_taken_over_within_a_lease(pair: tuple[Any, ...], store_url: str) -> None:
    a, b, clock, app = pair
    assert _get(a).data == b"render 1"
    clock.advance(61)
    # a holder that took the lock and died: no landing will ever be announced
    assert a.regen.lock(regeneration.regen_lock_name(KEY)) is not None
    _get(b)
    time.sleep(regeneration.LISTENING_AFTER + 0.1)
    for _ in range(3):
        assert _get(b).headers["X-ISR-Cache"] == "STALE"
    assert app.n == 1
    clock.advance(b.regen.lease + 0.1)  # its lease ran out...
    if store_url.startswith("redis"):
        time.sleep(b.regen.lease + 0.1)  # ...on Redis' own clock too, which keeps it
    assert _get(b).headers["X-ISR-Cache"] == "STALE"
    assert app.started.acquire(timeout=5) and app.n == 2


# -- HeldLocks itself: the order of attempts and landings, both clocks ---------------------


def test_a_note_lapses_at_a_landing_another_record_or_either_clock() -> None:
    clock, mono = FakeClock(), FakeClock()
    held = HeldLocks(clock, monotonic=mono)
    held.note("regen:k", 1.0, held.ticket(), 5.0)
    assert held.quiet("regen:k", 1.0)
    assert not held.quiet("regen:k", 2.0)  # a visitor who saw another record asks
    assert not held.quiet("regen:other", 1.0)
    mono.advance(5.0)
    assert not held.quiet("regen:k", 1.0)  # the monotonic clock bounds it...
    held.note("regen:k", 1.0, held.ticket(), 5.0)
    clock.advance(5.0)
    assert not held.quiet("regen:k", 1.0)  # ...and so does the store's
    held.note("regen:k", 1.0, held.ticket(), 5.0)
    held.forget("regen:k")
    assert not held.quiet("regen:k", 1.0)  # a landing ends it


def test_an_attempt_under_way_when_a_landing_is_heard_leaves_no_note() -> None:
    """The store said "held" just before the holder let go and announced it: that
    answer is out of date by the time it is noted."""
    held = HeldLocks(FakeClock())
    ticket = held.ticket()  # the attempt begins
    held.forget("regen:k")  # the landing is heard before its answer comes back
    held.note("regen:k", 1.0, ticket, 5.0)
    assert not held.quiet("regen:k", 1.0)
    held.note("regen:k", 1.0, held.ticket(), 5.0)  # a later attempt's answer counts
    assert held.quiet("regen:k", 1.0)


def test_notes_are_bounded_in_bytes() -> None:
    held = HeldLocks(FakeClock(), max_bytes=10_000)
    for i in range(1_000):
        held.note(f"regen:{i}" + "x" * 100, 1.0, held.ticket(), 5.0)
    assert len(held._notes) < 100
    assert held.quiet("regen:999" + "x" * 100, 1.0)  # the newest survive


def test_a_forked_child_knows_nothing_of_its_parents_locks() -> None:
    held = HeldLocks(FakeClock())
    held.note("regen:k", 1.0, held.ticket(), 5.0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its parent's regeneration is not its own to wait for
        os.write(write, b"quiet" if held.quiet("regen:k", 1.0) else b"asks")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 16) == b"asks"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert held.quiet("regen:k", 1.0)  # the parent still knows
