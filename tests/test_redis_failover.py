"""A Sentinel failover under traffic: two ``gunicorn -k gevent -w 2`` instances on one
``redis+sentinel://`` store (durable invalidations), a real primary, replica and three
Sentinels (``tests/redis_topologies.py``), and the primary SIGKILLed mid-traffic.

No request fails, caching resumes on the promoted replica without a restart, and
every invalidation the endpoint acknowledged (200) is on the new primary.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis_topologies import SentinelSet
from servers import (
    Instance,
    Outcome,
    fetch_outcome,
    free_port,
    logs_on_failure,
    poll,
    start_gunicorn,
    wait_for,
)

from wsgi_isr.errors import StoreError
from wsgi_isr.stores.redis import RedisStore

pytestmark = [pytest.mark.server, pytest.mark.redis]

SECRET = "failover-secret-0123456789abcdef0123456789abcd"
AUTH = {"Authorization": f"Bearer {SECRET}"}
HOST = "isr.test"


def _traffic(a: Instance, b: Instance, stop: threading.Event, out: list[Outcome], n: int) -> None:
    """Requests back to back until ``stop``: a cached page and a new key each time."""
    i = 0
    while not stop.is_set():
        server = (a, b)[i % 2]
        path = ("/page/steady", f"/page/flow?n={n}-{i}")[i % 2]
        out.append(fetch_outcome(server, path))
        i += 1
        time.sleep(0.01)


def _invalidations(
    a: Instance, b: Instance, stop: threading.Event, out: list[tuple[str, int]]
) -> None:
    """A new tag invalidated every 50 ms, through A and B in turn; ``(tag, status)``."""
    i = 0
    while not stop.is_set():
        tag = f"inv-{i}"
        try:
            status = (a, b)[i % 2].revalidate({"tag": tag}, AUTH).status
        except (OSError, http.client.HTTPException):
            status = 0
        out.append((tag, status))
        i += 1
        time.sleep(0.05)


@pytest.fixture
def instances(
    tmp_path_factory: pytest.TempPathFactory,
    redis_sentinels: SentinelSet,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[tuple[Instance, Instance, str]]:
    root = tmp_path_factory.mktemp("isr-failover")
    counter_dir = root / "renders"
    counter_dir.mkdir()
    prefix = f"fo-{uuid.uuid4().hex[:6]}:"
    env = {
        "ISR_STORE": redis_sentinels.url(prefix, durable="1", durable_timeout="0.5"),
        "ISR_SECRET": SECRET,
        "ISR_COUNTER_DIR": str(counter_dir),
        "ISR_LOCK_TIMEOUT": "3",
    }
    a = Instance(free_port(), counter_dir, root / "gunicorn-a.log", name="A", host=HOST)
    b = Instance(free_port(), counter_dir, root / "gunicorn-b.log", name="B", host=HOST)
    with start_gunicorn(a, b, env=env), logs_on_failure(request, capsys, a, b):
        yield a, b, prefix


def test_primary_killed_mid_traffic_fails_over_without_a_5xx_or_a_lost_invalidation(
    redis_sentinels: SentinelSet, instances: tuple[Instance, Instance, str]
) -> None:
    a, b, prefix = instances
    first = a.fetch("/page/steady")
    assert (first.status, first.cache) == (200, "MISS")
    assert b.fetch("/page/steady").cache == "HIT"
    old_port = redis_sentinels.current_primary_port()
    assert old_port is not None

    outcomes: list[Outcome] = []
    acked: list[tuple[str, int]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_traffic, args=(a, b, stop, outcomes, n)) for n in range(3)]
    threads.append(threading.Thread(target=_invalidations, args=(a, b, stop, acked)))
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        killed_at = time.monotonic()
        redis_sentinels.node(old_port).kill()
        promoted = wait_for(lambda: redis_sentinels.current_primary_port() != old_port, 30, 0.1)
        assert promoted, [s.log() for s in redis_sentinels.sentinels]
        promoted_at = time.monotonic()
        # caching resumes on the new primary, on both instances, without a restart
        path = f"/page/after-{uuid.uuid4().hex[:6]}"
        poll(lambda: [a.fetch(path)], lambda r: r.cache == "HIT", timeout=15)
        poll(lambda: [b.fetch(path)], lambda r: r.cache == "HIT", timeout=15)
        resumed_at = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    assert not [o for o in outcomes if o.error], [o for o in outcomes if o.error][:5]
    assert {o.status for o in outcomes} == {200}, {o.status for o in outcomes}
    during = [o for o in outcomes if killed_at + 0.2 < o.started < promoted_at]
    assert during and {o.server for o in during} == {"A", "B"}, len(during)
    assert {o.cache for o in outcomes if o.started > resumed_at} <= {"HIT", "MISS"}

    statuses = [s for _, s in acked]
    print(  # the figures, with -s
        f"\nfailover: promoted {promoted_at - killed_at:.2f} s and caching again "
        f"{resumed_at - killed_at:.2f} s after the kill; {len(outcomes)} requests, "
        f"{sum(o.cache == 'BYPASS' for o in outcomes)} served by the app (store away); "
        f"invalidations: {statuses.count(200)} acknowledged, {statuses.count(503)} refused"
    )
    assert set(statuses) <= {200, 503}, set(statuses)
    ok = [tag for tag, s in acked if s == 200]
    assert len(ok) >= 5 and 503 in statuses, statuses
    new_primary = redis_sentinels.current_primary_port()
    assert new_primary is not None and new_primary != old_port
    client = redis.Redis(host="127.0.0.1", port=new_primary, socket_timeout=2)
    held = client.hmget(prefix + "tagstate", ok)
    lost = [tag for tag, state in zip(ok, held, strict=True) if state is None]
    assert not lost, f"acknowledged invalidations lost in the failover: {lost}"

    # the old primary comes back as a replica: durable invalidations are accepted again,
    # and an invalidation regenerates the page once, seen by both instances
    redis_sentinels.heal()
    assert a.revalidate({"tag": "page-steady"}, AUTH).status == 200
    fresh = poll(lambda: [b.fetch("/page/steady")], lambda r: r.body != first.body, timeout=10)
    assert fresh[-1].status == 200


def test_a_listener_on_a_primary_that_hangs_follows_the_failover(
    redis_sentinels: SentinelSet,
) -> None:
    """The primary hangs (SIGSTOP: a frozen VM) instead of dying: its sockets stay open
    and silent, and the Sentinels promote the replica. The pub/sub listener pings a
    silent server and leaves one that does not answer, so what is published on the new
    primary is heard (a listener waiting for messages on the old socket heard nothing,
    ever: landings and local-layer invalidations were lost until a restart)."""
    prefix = f"ps-{uuid.uuid4().hex[:6]}:"
    listener = RedisStore(redis_sentinels.url(prefix), socket_timeout=1.0)
    publisher = RedisStore(redis_sentinels.url(prefix), socket_timeout=1.0)
    heard: list[str] = []
    listener.watch_landings(heard.append)
    try:
        assert wait_for(lambda: (publisher.announce_landing("before"), "before" in heard)[1], 10)
        old = redis_sentinels.current_primary_port()
        assert old is not None
        hung = redis_sentinels.node(old)
        assert hung.proc is not None
        hung.proc.send_signal(signal.SIGSTOP)
        try:
            assert wait_for(lambda: redis_sentinels.current_primary_port() not in (None, old), 30)

            def published() -> bool:
                try:
                    publisher.announce_landing("after")
                except StoreError:
                    return False  # its own connections still find the old primary
                return "after" in heard

            assert wait_for(published, 20, 0.25), "never heard on the new primary"
        finally:
            hung.proc.send_signal(signal.SIGCONT)
        redis_sentinels.heal()  # the old primary rejoins as the new one's replica
    finally:
        listener.close()
        publisher.close()


def test_sentinels_that_all_hang_cost_one_socket_timeout_and_open_the_breaker(
    redis_sentinels: SentinelSet,
) -> None:
    """Every Sentinel hangs while a process needs the primary's address (a new
    connection): the Sentinels are asked within one socket timeout together (it was
    one each), and "no primary found" counts as a timeout for the breaker, which opens
    and backs off (it never did: each request asked the hung Sentinels again)."""
    store = RedisStore(redis_sentinels.url(f"sh-{uuid.uuid4().hex[:6]}:"), socket_timeout=1.0)
    for sentinel in redis_sentinels.sentinels:
        assert sentinel.proc is not None
        sentinel.proc.send_signal(signal.SIGSTOP)
    try:
        took: list[float] = []
        errors: list[BaseException] = []

        def request() -> None:  # one visitor's lookup, in a thread of its own
            started = time.monotonic()
            try:
                store.lookup("http://isr.test/p?")
            except StoreError as exc:
                errors.append(exc)
            took.append(time.monotonic() - started)

        for _ in range(4):
            visitor = threading.Thread(target=request)
            visitor.start()
            visitor.join(30)
        assert len(errors) == 4, (errors, took)
        assert store.breaker.open, store.breaker.streak
        assert max(took[:3]) < 2.2, took  # one socket timeout (1 s), not three
        assert took[3] < 0.1, took  # refused at once: the breaker is open
    finally:
        for sentinel in redis_sentinels.sentinels:
            assert sentinel.proc is not None
            sentinel.proc.send_signal(signal.SIGCONT)
        store.close()
