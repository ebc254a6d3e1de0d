"""The circuit breaker in front of Redis: a hung server costs a few requests the
socket timeout, then is not asked for a short, growing interval; caching resumes by
itself. The logic on a fake clock, then a real redis-server (started by the test,
not the session's) stopped with ``SIGSTOP`` under a real gunicorn."""

from __future__ import annotations

import contextvars
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, RedisServer
from helpers import elsewhere
from servers import Instance, Reply, free_port, start_gunicorn, summary, wait_for
from werkzeug.test import Client

from wsgi_isr import ISRMiddleware
from wsgi_isr.lease import LeaseKeeper
from wsgi_isr.stores.breaker import Breaker, BreakerOpen, guarded, new_block, one_wait
from wsgi_isr.stores.redis import RedisStore

SECRET = "breaker-secret-0123456789abcdef0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}


class Flaky:
    """A client whose ``get`` raises what ``errors`` holds next, else answers."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.calls = 0

    def get(self, key: str) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "value"


def _breaker(clock: FakeClock) -> Breaker:
    return Breaker(threshold=3, first=0.5, longest=2.0, probe_window=1.0, monotonic=clock)


def another(client: Any) -> str:
    """``client.get("k")`` as another request sends it: from a thread of its own."""
    return str(elsewhere(lambda: client.get("k")))


def test_opens_after_timeouts_in_a_row_and_grows(clock: FakeClock) -> None:
    flaky, breaker = Flaky(), _breaker(clock)
    client = guarded(flaky, breaker)
    flaky.errors = [TimeoutError()] * 3
    for _ in range(3):
        with pytest.raises(TimeoutError):
            another(client)
    with pytest.raises(BreakerOpen, match="circuit open"):
        another(client)  # not sent
    assert flaky.calls == 3 and breaker.skipped == 1
    intervals = []
    for _ in range(4):  # each failed probe doubles the interval, up to `longest`
        waited = 0.0
        while True:
            try:
                flaky.errors = [TimeoutError()]
                another(client)
            except BreakerOpen:
                clock.advance(0.25)
                waited += 0.25
                continue
            except TimeoutError:
                break
        intervals.append(waited)
    assert intervals == [0.5, 1.0, 2.0, 2.0]


def test_one_probe_at_a_time_then_closed_by_a_success(clock: FakeClock) -> None:
    flaky, breaker = Flaky(), _breaker(clock)
    client = guarded(flaky, breaker)
    flaky.errors = [TimeoutError()] * 3
    for _ in range(3):
        with pytest.raises(TimeoutError):
            another(client)
    clock.advance(0.5)
    breaker.check()  # a probe goes (as if it were still waiting for its answer) ...
    with pytest.raises(BreakerOpen):
        another(client)  # ... and nobody else while it runs
    clock.advance(1.0)  # the probe's window is over without an answer: another may go
    assert another(client) == "value"  # it answers: closed
    assert not breaker.open and [another(client) for _ in range(3)] == ["value"] * 3


def test_errors_answered_at_once_do_not_open_it(clock: FakeClock) -> None:
    flaky, breaker = Flaky(), _breaker(clock)
    client = guarded(flaky, breaker)
    flaky.errors = [ConnectionRefusedError()] * 5 + [TimeoutError()] * 2
    for _ in range(7):
        with pytest.raises(OSError):
            another(client)
    assert another(client) == "value"  # a success between: the streak starts over
    assert not breaker.open and breaker.streak == 0


def test_a_block_whose_command_timed_out_sends_no_more_for_a_while(clock: FakeClock) -> None:
    """Inside a block (a request: new_block; work outside one: one_wait) a command that
    timed out holds back the block's later ones for ``probe_window``: its visitor waits
    once. Outside any block (the lease keeper, the pub/sub listener: threads of their
    own, with an empty context), and in the next request's block (the next visitor of a
    sync worker's thread), commands go as before."""
    flaky, breaker = Flaky(), _breaker(clock)
    client = guarded(flaky, breaker)

    def request() -> None:
        new_block()
        flaky.errors = [TimeoutError()]
        with pytest.raises(TimeoutError):
            client.get("k")
        with pytest.raises(BreakerOpen, match="a command of this request timed out"):
            client.get("k")
        # a cached call inside the render: part of the same block
        with one_wait(), pytest.raises(BreakerOpen):
            client.get("k")
        with one_wait(fresh=True):  # a background regeneration started from it
            assert client.get("k") == "value"
        assert flaky.calls == 2
        new_block()  # the next visitor on this thread
        assert client.get("k") == "value"

    def keeper() -> None:  # a thread of its own: no block
        flaky.errors = [TimeoutError()]
        with pytest.raises(TimeoutError):
            client.get("k")  # outside a block a timeout holds nothing back...
        assert client.get("k") == "value"  # ...but the breaker's own count

    contextvars.Context().run(request)
    contextvars.Context().run(keeper)


def test_only_a_connection_failure_that_took_the_timeout_counts_as_one(clock: FakeClock) -> None:
    """``slow``: Sentinels that all hang end in "no primary found" after the socket
    timeout, a connection error; a durable invalidation's own error after its WAIT is not
    one (it would open the breaker for page traffic when a replica is missing)."""

    class Slow:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def get(self, key: str) -> str:
            clock.advance(1.0)
            raise self.exc

    for exc, counted in ((ConnectionError("no primary"), True), (ValueError("no replica"), False)):
        breaker = Breaker(probe_window=1.0, slow=0.9, monotonic=clock)
        with pytest.raises(type(exc)):
            guarded(Slow(exc), breaker).get("k")
        assert breaker.streak == (1 if counted else 0), exc


@pytest.mark.redis
def test_a_request_during_which_redis_hangs_waits_for_one_socket_timeout(
    own_redis: RedisServer,
) -> None:
    """Redis hangs while a page renders (and while a cached function runs): the visitor
    waits for one socket timeout — the write after the render — and its remaining
    commands (the unlock, the landing) are refused at once; it waited for each. The
    next visitor on the same thread (a sync worker's) is not held back for it."""
    hang = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if hang.is_set():
            own_redis.signal(signal.SIGSTOP)
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-ISR-Revalidate", "60")])
        return [b"page " + environ["PATH_INFO"].encode()]

    url = f"{own_redis.url}?prefix=h-{uuid.uuid4().hex[:6]}:"
    mw = ISRMiddleware(app, store=RedisStore(url, socket_timeout=0.5))
    cached = mw.cached(revalidate=60)(_stops_redis(own_redis, hang))
    client = Client(mw)
    assert client.get("/warm").headers["X-ISR-Cache"] == "MISS"
    assert cached(0) == {"n": 0}
    breaker = mw.store.breaker
    try:
        for n, visit in enumerate((lambda: client.get("/miss").data, lambda: cached(1))):
            hang.set()
            try:
                assert visit() in (b"page /miss", {"n": 1})
            finally:
                hang.clear()
                own_redis.signal(signal.SIGCONT)
            assert breaker.streak == 1, "more than one command waited for the timeout"
            assert breaker.skipped >= 1
            after = client.get(f"/next-{n}")  # at once, on this thread, Redis answering
            assert after.headers["X-ISR-Cache"] == "MISS", after.headers
            assert breaker.streak == 0
    finally:
        own_redis.signal(signal.SIGCONT)
        mw.store.close()


@pytest.mark.redis
def test_the_lease_keeper_is_not_held_back_by_its_own_timeout(own_redis: RedisServer) -> None:
    """Redis stalls while two renders hold their locks: the keeper's renewal of the
    first times out, and it still sends the second's (and the next round's) instead of
    refusing them as one request's later commands: the keeper is no request."""
    url = f"{own_redis.url}?prefix=l-{uuid.uuid4().hex[:6]}:"
    store = RedisStore(url, socket_timeout=1.0)
    errors: list[str] = []
    keeper = LeaseKeeper(store, lease=3.0, limit=60.0, on_error=lambda exc: errors.append(str(exc)))
    tokens = [store.acquire(name, 3.0) for name in ("render:a", "render:b")]
    assert None not in tokens
    try:
        with keeper.hold("render:a", str(tokens[0])), keeper.hold("render:b", str(tokens[1])):
            own_redis.signal(signal.SIGSTOP)  # the first renewal comes at 1 s
            assert wait_for(lambda: errors, 10), "no renewal timed out"
            own_redis.signal(signal.SIGCONT)
            time.sleep(1.5)  # the second lease's renewal, then the next round's
        assert errors and not [e for e in errors if "skipped" in e], errors
    finally:
        own_redis.signal(signal.SIGCONT)
        store.close()


@pytest.mark.redis
def test_a_request_whose_lookup_timed_out_waits_no_more_in_the_app(
    own_redis: RedisServer, redis_url: str
) -> None:
    """Redis hangs before the request: its lookup times out, the app renders for it
    (fail open), and the app's cached calls are refused at once (called uncached) — one
    socket timeout for the request. A second site's store on a healthy Redis, used in the
    same render, is not held back by the first one's timeout."""
    url = f"{own_redis.url}?prefix=r-{uuid.uuid4().hex[:6]}:"
    other = ISRMiddleware(lambda e, s: [], store=RedisStore(redis_url, socket_timeout=0.5))
    elsewhere_cached = other.cached(revalidate=60)(_doubled)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        values = [cached(1), cached(2), elsewhere_cached(3)]
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-ISR-Revalidate", "60")])
        return [repr(values).encode()]

    mw = ISRMiddleware(app, store=RedisStore(url, socket_timeout=0.5))
    cached = mw.cached(revalidate=60)(_doubled)
    client = Client(mw)
    own_redis.signal(signal.SIGSTOP)
    try:
        r = client.get("/p")
    finally:
        own_redis.signal(signal.SIGCONT)
    assert r.status_code == 200 and r.data == b"[2, 4, 6]"
    assert mw.store.breaker.streak == 1, "the app's cached calls waited for the timeout too"
    assert other.store.breaker.skipped == 0 and other.store.breaker.streak == 0
    assert other.store.lookup(elsewhere_cached.key(3))[0] is not None, "not stored"
    mw.store.close()
    other.store.close()


def _doubled(n: int) -> int:
    return 2 * n


def _stops_redis(server: RedisServer, hang: threading.Event) -> Any:
    def stops_redis(n: int) -> dict[str, int]:
        if hang.is_set():
            server.signal(signal.SIGSTOP)
        return {"n": n}

    return stops_redis


@pytest.mark.server
@pytest.mark.redis
def test_a_hung_redis_is_skipped_then_caching_resumes(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    counter_dir = tmp_path / "renders"
    counter_dir.mkdir()
    instance = Instance(free_port(), counter_dir, tmp_path / "gunicorn.log")
    env = {
        "ISR_STORE": f"{own_redis.url}?socket_timeout=0.5&prefix=b-{uuid.uuid4().hex[:6]}:",
        "ISR_SECRET": SECRET,
        "ISR_COUNTER_DIR": str(counter_dir),
    }
    with start_gunicorn(instance, env=env, workers=1):
        assert instance.fetch("/page/b").cache == "MISS"
        assert instance.fetch("/page/b").cache == "HIT"
        own_redis.signal(signal.SIGSTOP)
        try:
            during: list[Reply] = []
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                during.append(instance.fetch("/page/b", timeout=10.0))
            refused = instance.revalidate({"tag": "page-b"}, AUTH)
            log_while_hung = instance.log()
        finally:
            own_redis.signal(signal.SIGCONT)
        seen: list[Reply] = []
        deadline = time.monotonic() + 15.0
        while not any(r.cache == "HIT" for r in seen[-1:]) and time.monotonic() < deadline:
            seen.append(instance.fetch("/page/b"))
            time.sleep(0.1)
        log = instance.log()
    # while Redis hung: every request answered by the application, none failed
    assert {(r.status, r.cache) for r in during} == {(200, "BYPASS")}, summary(during)
    assert "timed out 3 times in a row; not asking it for 0.5 s" in log_while_hung, log
    assert refused.status == 503, refused.body  # the endpoint says so, at once or not
    # Redis answers again: the breaker closes by itself and the page is a hit again
    assert seen and seen[-1].cache == "HIT", summary(seen)
    assert "the store answers again; circuit closed" in log
    slow = [r for r in during if r.elapsed >= 0.4]
    print(f"while hung: {len(during)} requests in 3 s, {len(slow)} waited for the timeout")
