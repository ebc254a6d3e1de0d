"""Auto-pipelining for the Redis store's hits: the lookups that run at once in a process
share one connection and one round trip (ioredis' ``enableAutoPipelining``).

A hit is one ``MGET``; through redis-py's pool each costs a pool checkout and return
(locks, a readiness poll), a send, a receive and, under gevent, a trip through the
hub, and wakes redis-server once. Here every lookup of the process goes down one
connection: a caller queues its packed command; whoever finds no flush running
becomes the leader, writes every queued command in one ``sendall``, reads the replies
in order with a ``hiredis.Reader`` and hands each to its caller; the next leader is
the first caller queued meanwhile. Under gevent the leader first lets the greenlets
already runnable queue theirs (one batch per turn of the event loop, as ioredis
flushes on the next tick). N concurrent hits cost one send, one receive and one
wake-up of the server.

    pipe = Pipeline(client.connection_pool)
    record, seq = pipe.call(pipe.pack(("MGET", key, seq_key)))

The connection is made from the pool's class and keyword arguments (host or socket,
TLS, user and password, database, timeouts; Sentinel's pool finds the primary), by
redis-py, and is not one of the pool's ``max_connections``. Only lookups use it; every
other command still goes through the pool.

No lock is held across I/O (the leader role is a flag; the lock guards a few list
operations), so neither greenlets nor threads block each other behind a slow server,
and a lock made before gevent patched ``threading`` (``--preload``) cannot deadlock a
worker: all state, locks included, is made per process on first use.

Failures: a connection error or a timeout fails every lookup in flight or queued
with the error (redis-py's :class:`redis.ConnectionError` / :class:`redis.TimeoutError`,
which the store turns into a StoreError and counts in its breaker) and drops the
connection, so a late reply can never be read as someone else's; the next lookup
connects again. An idle connection that has something to read (the server restarted
or closed it) is replaced before it is written to, as redis-py's pool does; nothing
is retried (a timeout is for the breaker to count).
"""

from __future__ import annotations

import os
import select
import sys
import threading
from collections.abc import Callable
from typing import Any

#: Read size of a reply batch: 25 hits of a 2 KB page fit in one receive.
_CHUNK = 256 * 1024


class _Call:
    """One queued command: its reply (or error) once ``done``; ``lead`` when it was
    made the next leader; ``wake`` is released by whoever sets either."""

    __slots__ = ("done", "error", "lead", "packed", "reply", "wake")

    def __init__(self, packed: bytes) -> None:
        self.packed = packed
        self.reply: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        self.wake: Any = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply


class _State:
    """One process' pipeline: made after a fork (and after gevent's patching) anew."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.queue: list[_Call] = []
        self.flushing = False
        self.conn: Any = None
        self.reader: Any = None
        # gevent's select yields to the hub even with a zero timeout: the check of an
        # idle connection must not (resolved here, once gevent has patched the process)
        monkey = sys.modules.get("gevent.monkey")
        self.select = monkey.get_original("select", "select") if monkey else select.select
        # under gevent a leader lets the greenlets already runnable go first, so the
        # lookups of one turn of the event loop leave together (ioredis flushes on the
        # next tick likewise); threads run at once, and queue while a batch is out
        self.defer: Callable[[], object] | None = None
        if monkey is not None and monkey.is_module_patched("threading"):
            import gevent

            self.defer = gevent.sleep

    def dead(self, conn: Any) -> bool:
        """Whether an idle connection has something to read: the server closed it (a
        restart, its idle timeout, CLIENT KILL) or it is out of step; either way it is
        not to be written to (redis-py's pool checks its connections the same way)."""
        try:
            return bool(self.select([conn._sock], [], [], 0)[0])
        except (OSError, ValueError, TypeError):  # closed meanwhile
            return True


def supported(client: Any) -> bool:
    """Whether ``client``'s lookups can be pipelined here: a plain :class:`redis.Redis`
    (not a cluster: its keys live on several nodes) speaking RESP2 (RESP3 may interleave
    push messages with replies), without client-side caching, with hiredis installed."""
    import redis

    try:
        import hiredis  # noqa: F401
    except ImportError:  # pragma: no cover - an install requirement (redis[hiredis])
        return False
    if not isinstance(client, redis.Redis):
        return False
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict) or getattr(pool, "cache", None) is not None:
        return False
    return str(kwargs.get("protocol") or 2) == "2"


class Pipeline:
    """Lookups of every greenlet and thread of a process on one connection of
    ``pool``'s kind (its class and keyword arguments: host or socket, TLS, user and
    password, database, timeouts; Sentinel's pool finds the primary)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        kwargs = pool.connection_kwargs
        self._encoding = (kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict"))
        self._state = _State()

    def pack(self, args: tuple[str, ...]) -> bytes:
        """``args`` as one RESP command, encoded as the client encodes them."""
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode(*self._encoding)
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return b"".join(parts)

    def call(self, packed: bytes) -> Any:
        """Send ``packed`` (one command, RESP-encoded) with whatever else is queued and
        return its reply (bytes, lists, ``None``; an error reply is raised)."""
        st = self._state
        if st.pid != os.getpid():  # forked: the parent's connection is not ours
            st = self._state = _State()
        me = _Call(packed)
        with st.lock:
            st.queue.append(me)
            if st.flushing:
                me.wake = threading.Lock()  # gevent's once patched: waits yield
                me.wake.acquire()
            else:
                st.flushing = True
        if me.wake is not None:
            self._wait(st, me)
            if me.done:
                return me.result()  # answered by a leader ahead of us
        elif st.defer is not None:
            try:
                st.defer()
            except BaseException:  # gevent.Timeout, GreenletExit: another leads
                self._leave(st, me)
                raise
        self._lead(st, me)
        return me.result()

    def _wait(self, st: _State, me: _Call) -> None:
        """Wait to be answered or made the leader. No timer of its own: the leaders
        ahead are bounded by the socket timeouts, and fail or answer every waiter."""
        try:
            me.wake.acquire()
        except BaseException:  # gevent.Timeout, KeyboardInterrupt: leave the queue in order
            self._leave(st, me)
            raise

    def _leave(self, st: _State, me: _Call) -> None:
        """``me`` is interrupted: out of the queue (in flight, its reply goes to this
        abandoned call, no one else's), and if it was to lead, the next one does."""
        with st.lock:
            lead = (me.lead or me.wake is None) and not me.done
            if me in st.queue:
                st.queue.remove(me)
        if lead:
            self._hand_over(st)

    def _lead(self, st: _State, me: _Call) -> None:
        with st.lock:
            batch, st.queue = st.queue, []
        if not batch:  # cannot happen (the leader is queued), but must never wedge
            self._hand_over(st)
            return
        try:
            self._exchange(st, batch)
        except BaseException as exc:
            self._fail(st, batch, exc)
            if not isinstance(exc, Exception):
                raise  # gevent.Timeout, KeyboardInterrupt: the caller's own business
            return
        for call in batch:
            call.done = True
            if call.wake is not None and call is not me:
                call.wake.release()
        self._hand_over(st)

    def _hand_over(self, st: _State) -> None:
        """The first caller queued leads next; none: the next caller will."""
        with st.lock:
            if not st.queue:
                st.flushing = False
                return
            nxt = st.queue[0]
            nxt.lead = True
        nxt.wake.release()

    def _exchange(self, st: _State, batch: list[_Call]) -> None:
        import redis

        conn = st.conn
        if conn is not None and (st.dead(conn) or self._moved(conn)):
            self._drop(st)
            conn = None
        try:
            if conn is None:
                conn = self._connect(st)
            sock, reader = conn._sock, st.reader
            sock.sendall(batch[0].packed if len(batch) == 1 else b"".join(c.packed for c in batch))
            for call in batch:
                reply = reader.gets()
                while reply is False:
                    chunk = sock.recv(_CHUNK)
                    if not chunk:
                        raise redis.ConnectionError("Connection closed by server.")
                    reader.feed(chunk)
                    reply = reader.gets()
                if isinstance(reply, Exception):  # an error reply: this call's own
                    call.error = conn._parser.parse_error(str(reply))
                else:
                    call.reply = reply
        except TimeoutError as exc:
            raise redis.TimeoutError("Timeout reading from socket") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error while talking to redis: {exc}") from exc
        except Exception as exc:  # hiredis' ProtocolError, or anything else: never a 500
            if isinstance(exc, redis.RedisError):
                raise
            raise redis.ConnectionError(f"Error from redis: {exc!r}") from exc

    def _moved(self, conn: Any) -> bool:
        """Sentinel's pool learnt of a new primary (the client's own connections found
        the old one demoted): reads must follow, a demoted primary answers them stale."""
        if not getattr(self.pool, "is_master", False):
            return False
        address = self.pool.master_address
        return address is not None and address != (conn.host, conn.port)

    def _connect(self, st: _State) -> Any:
        """A connection of the pool's kind, connected and set up (TLS, AUTH, SELECT) by
        redis-py; health checks off: they would read replies meant for callers."""
        import hiredis

        kwargs = {**self.pool.connection_kwargs, "health_check_interval": 0}
        conn = self.pool.connection_class(**kwargs)
        conn.connect()
        st.conn, st.reader = conn, hiredis.Reader()
        return conn

    def _drop(self, st: _State) -> None:
        conn, st.conn, st.reader = st.conn, None, None
        if conn is not None:
            conn.disconnect()

    def _fail(self, st: _State, batch: list[_Call], exc: BaseException) -> None:
        """Drop the connection (whatever it still holds answers no one) and fail every
        call in flight or queued; the next caller connects again."""
        self._drop(st)
        with st.lock:
            queued, st.queue = st.queue, []
            st.flushing = False
        error = exc if isinstance(exc, Exception) else _interrupted(exc)
        for call in batch + queued:
            call.error, call.done = error, True
            if call.wake is not None:
                call.wake.release()

    def close(self) -> None:
        """Close this process' connection (lookups after it connect again)."""
        st = self._state
        if st.pid == os.getpid():
            self._drop(st)


def _interrupted(exc: BaseException) -> Exception:
    import redis

    return redis.ConnectionError(f"pipelined lookup interrupted: {exc!r}")
