"""The Redis store's auto-pipelined lookups, on a real redis-server: concurrent callers
(threads, greenlets) share one connection and each gets its own key's record; a
connection killed mid-flight or a hung server fails what is pending with a
StoreError (never someone else's reply) and the next lookups connect again; a forked
child pipelines on a connection of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import RedisServer
from servers import wait_for

from wsgi_isr.entry import Entry
from wsgi_isr.errors import StoreError
from wsgi_isr.stores import RedisStore

pytestmark = [pytest.mark.redis]

REPO = Path(__file__).resolve().parent.parent


def _entry(n: int) -> Entry:
    return Entry(
        status="200 OK",
        headers=(("Content-Type", "text/plain"),),
        body=f"page {n} ".encode() * 50,
        created=1000.0,
        revalidate=None,
        expire=None,
        tags=(f"t{n}",),
        etag=f'"{n}"',
        last_modified="",
    )


def _body(store: RedisStore, n: int) -> bytes | None:
    record = store.lookup(f"k{n}")[0]
    return record.body if isinstance(record, Entry) else None


def _mget_connections(admin: redis.Redis) -> list[dict[str, Any]]:
    """The server's clients whose last command was a lookup."""
    return [c for c in admin.client_list() if c.get("cmd") == "mget"]


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    s = RedisStore(redis_url)
    try:
        yield s
    finally:
        s.close()


def _in_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a lookup never returned"


def test_concurrent_threads_each_get_their_own_record_on_one_connection(
    store: RedisStore, redis_server: RedisServer
) -> None:
    for n in range(16):
        store.put(f"k{n}", _entry(n), None)
    admin = redis.Redis(port=redis_server.port)
    before = {c["id"] for c in _mget_connections(admin)}
    wrong: list[tuple[int, bytes | None]] = []

    def lookups(n: int) -> None:
        for _ in range(200):
            got = _body(store, n)
            if got != _entry(n).body:
                wrong.append((n, got))

    _in_threads(16, lookups)
    assert not wrong, wrong[:3]
    # 3,200 lookups from 16 threads at once: one connection, not one per thread
    assert len({c["id"] for c in _mget_connections(admin)} - before) == 1


_GEVENT_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import json, sys, gevent, redis
from wsgi_isr.entry import Entry
from wsgi_isr.stores import RedisStore
url, port = sys.argv[1], int(sys.argv[2])
store = RedisStore(url)
def entry(n):
    return Entry(status="200 OK", headers=(), body=b"greenlet %d" % n * 40, created=1000.0,
                 revalidate=None, expire=None, tags=(), etag="", last_modified="")
for n in range(50):
    store.put("g%d" % n, entry(n), None)
wrong = []
def lookups(n):
    for _ in range(100):
        record = store.lookup("g%d" % n)[0]
        if record is None or record.body != entry(n).body:
            wrong.append(n)
gevent.joinall([gevent.spawn(lookups, n) for n in range(50)], timeout=60)
admin = redis.Redis(port=port)
mget = [c for c in admin.client_list() if c.get("cmd") == "mget"]
print(json.dumps({"wrong": wrong, "mget_connections": len(mget)}))
"""


def test_concurrent_greenlets_each_get_their_own_record_on_one_connection(
    own_redis: RedisServer,
) -> None:
    url = f"{own_redis.url}?prefix=g-{uuid.uuid4().hex[:6]}:"
    out = subprocess.run(
        [sys.executable, "-c", _GEVENT_SCRIPT, url, str(own_redis.port)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"wrong": [], "mget_connections": 1}, result


_INTERRUPTED_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import json, os, signal, sys, gevent
from wsgi_isr.entry import Entry
from wsgi_isr.errors import StoreError
from wsgi_isr.stores import RedisStore
url, server_pid = sys.argv[1], int(sys.argv[2])
store = RedisStore(url, socket_timeout=5.0)
def entry(n):
    return Entry(status="200 OK", headers=(), body=b"greenlet %d" % n * 40, created=1000.0,
                 revalidate=None, expire=None, tags=(), etag="", last_modified="")
for n in range(6):
    store.put("g%d" % n, entry(n), None)
store.lookup("g0")
def interrupted(n):
    try:  # the first greenlet leads: cut off while it waits for the replies of all
        with gevent.Timeout(0.3 if n == 0 else None):
            store.lookup("g%d" % n)
    except gevent.Timeout:
        return "timeout"
    except StoreError:
        return "store-error"
    return "answered"
os.kill(server_pid, signal.SIGSTOP)
try:
    greenlets = [gevent.spawn(interrupted, n) for n in range(6)]
    gevent.joinall(greenlets, timeout=10)
    cut = [g.value for g in greenlets]
finally:
    os.kill(server_pid, signal.SIGCONT)
def own(n):
    return store.lookup("g%d" % n)[0].body == entry(n).body
after = [g.value for g in gevent.joinall([gevent.spawn(own, n) for n in range(6)], timeout=10)]
print(json.dumps({"cut": cut, "after": after}))
"""


def test_greenlets_cut_off_mid_lookup_leave_the_pipeline_working(own_redis: RedisServer) -> None:
    """gevent.Timeout in the leader while the server hangs: the lookups it carried fail
    at once (not left waiting for a leader that is gone), and the next lookups get
    their own records (the connection the cut-off leader was reading is dropped)."""
    assert own_redis._proc is not None
    url = f"{own_redis.url}?prefix=cut-{uuid.uuid4().hex[:6]}:"
    out = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_SCRIPT, url, str(own_redis._proc.pid)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cut"] == ["timeout"] + ["store-error"] * 5, result
    assert result["after"] == [True] * 6, result


def test_a_connection_lost_mid_flight_fails_the_pending_lookups_then_reconnects(
    own_redis: RedisServer,
) -> None:
    store = RedisStore(f"{own_redis.url}?prefix=kill:", socket_timeout=5.0)
    try:
        for n in range(8):
            store.put(f"k{n}", _entry(n), None)
        assert _body(store, 0) == _entry(0).body
        outcomes: dict[int, object] = {}

        def lookup(n: int) -> None:
            try:
                outcomes[n] = _body(store, n)
            except StoreError as exc:
                outcomes[n] = exc

        own_redis.signal(signal.SIGSTOP)  # the lookups are sent, none is answered ...
        threads = [threading.Thread(target=lookup, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        # ... and the server dies before it answers them: their connection is gone (a
        # CLIENT KILL would race the lookups queued before it once the server resumed)
        own_redis.signal(signal.SIGKILL)
        own_redis.stop()
        for t in threads:
            t.join(10)
        assert len(outcomes) == 8 and all(isinstance(o, StoreError) for o in outcomes.values()), (
            outcomes
        )
        assert not store.breaker.open  # answered at once: nothing for the breaker
        own_redis.start()  # back (empty): the next lookups connect again
        for n in range(8):
            store.put(f"k{n}", _entry(n), None)
        assert [_body(store, n) for n in range(8)] == [_entry(n).body for n in range(8)]
    finally:
        store.close()
        if own_redis._proc is None:
            own_redis.start()


def test_a_hung_server_times_out_the_pending_lookups_and_opens_the_breaker(
    own_redis: RedisServer,
) -> None:
    store = RedisStore(f"{own_redis.url}?prefix=hung:", socket_timeout=0.3)
    try:
        for n in range(10):
            store.put(f"k{n}", _entry(n), None)
        assert _body(store, 0) == _entry(0).body
        errors: list[StoreError] = []

        def lookup(n: int) -> None:
            try:
                _body(store, n)
            except StoreError as exc:
                errors.append(exc)

        own_redis.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            _in_threads(10, lookup)
            took = time.monotonic() - started
            refused_at_once = time.monotonic()
            with pytest.raises(StoreError, match="circuit open"):
                store.lookup("k1")
            refused_took = time.monotonic() - refused_at_once
        finally:
            own_redis.signal(signal.SIGCONT)
        # every pending lookup timed out together (one socket timeout, not ten), and
        # the breaker counted them: it is open, the next lookup is refused at once
        assert len(errors) == 10 and all("Timeout" in str(e) for e in errors), errors
        assert took < 3.0, took
        assert store.breaker.open and refused_took < 0.1
        # the server answers again: after the breaker's interval, lookups get their own
        # record (the hung connection was dropped: its late replies reach no one)
        assert wait_for(lambda: _try(store, 3) == _entry(3).body, 10, 0.1)
        assert [_body(store, n) for n in range(10)] == [_entry(n).body for n in range(10)]
        assert not store.breaker.open
    finally:
        store.close()


def _try(store: RedisStore, n: int) -> bytes | None:
    try:
        return _body(store, n)
    except StoreError:
        return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_after_fork_the_child_pipelines_on_its_own_connection(store: RedisStore) -> None:
    for n in range(4):
        store.put(f"k{n}", _entry(n), None)
    assert _body(store, 0) == _entry(0).body  # the parent's pipeline is connected
    pid = os.fork()
    if pid == 0:  # the child: its lookups and the parent's run at once
        code = 1
        try:
            ok = all(_body(store, 1 + i % 3) == _entry(1 + i % 3).body for i in range(500))
            code = 0 if ok else 2
        finally:
            os._exit(code)
    wrong = [i for i in range(500) if _body(store, 0) != _entry(0).body]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child got someone else's replies"
    assert not wrong
    assert _body(store, 2) == _entry(2).body  # the parent's connection still in step


def test_an_unchanged_record_is_decoded_once_and_a_changed_one_again(redis_url: str) -> None:
    reader, writer = RedisStore(redis_url), RedisStore(redis_url)
    try:
        writer.put("k1", _entry(1), None)
        first = reader.lookup("k1")[0]
        # the same bytes: the same immutable entry (no decode; the header memo hits)
        assert first == _entry(1) and reader.lookup("k1")[0] is first
        writer.put("k1", _entry(2), None)  # another process replaces the page
        assert reader.lookup("k1")[0] == _entry(2)
        writer.delete("k1")
        assert reader.lookup("k1")[0] is None
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize(
    ("url", "pipelined"),
    [
        pytest.param("redis://127.0.0.1:1/0", True, id="redis"),
        pytest.param("unix:///tmp/nowhere.sock?db=1", True, id="unix-socket"),
        pytest.param("rediss://127.0.0.1:1/0?ssl_cert_reqs=none", True, id="tls"),
        # RESP3 may interleave push messages with replies: one MGET per lookup there
        pytest.param("redis://127.0.0.1:1/0?protocol=3", False, id="resp3"),
    ],
)
def test_which_clients_pipeline_their_lookups(url: str, pipelined: bool) -> None:
    store = RedisStore(url)  # nothing connects before the first command
    try:
        assert (store._pipe is not None) is pipelined
    finally:
        store.close()
