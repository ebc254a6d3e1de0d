"""``redis://host:port/db`` — shared by every worker on every host.

Records are stored in the non-executable format of :mod:`wsgi_isr.codec` (never a
pickle: whoever can write to the server can spoil pages, not run code); tag state
lives in a hash that never expires (configure Redis with ``maxmemory`` and a
``volatile-*`` eviction policy so only records, which always carry a TTL, can be
evicted — the store checks this once and logs a warning otherwise). Every tag
invalidation moves a sequence number forward; a hit reads the record and that number
in one ``MGET`` and refreshes its in-process copy of tag state only when the
number moved. Locks are ``SET NX PX`` with a random token, released by an
atomic compare-and-delete.

    store = RedisStore("redis://127.0.0.1:6379/0?prefix=myapp:")

Sentinel, Cluster, TLS and durable invalidations: see :mod:`.redis_connect` (the URL
grammar and the connection setup).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import codec
from ..entry import Record, TagState
from ..errors import StoreError
from .base import Store, new_token, record_ttl
from .breaker import Breaker, BreakerOpen, guarded
from .redis_connect import Durability, connect, disconnect, tag_keys
from .redis_pipeline import Pipeline, supported

log = logging.getLogger("wsgi_isr")

CLOCK_CHECK_INTERVAL = 30.0

_INVALIDATE = """
local t = redis.call('TIME')
local stamp = ARGV[1]
if stamp == '' then
  -- one clock (the server's), and Redis' serial order decides: one microsecond later
  -- than now, so a render lock taken within this same microsecond, before this
  -- script ran (_ACQUIRE_STAMPED), still counts as started before the invalidation
  local sec, usec = tonumber(t[1]), tonumber(t[2]) + 1
  if usec >= 1000000 then sec, usec = sec + 1, usec - 1000000 end
  stamp = string.format('%d.%06d', sec, usec)
end
local at = tonumber(stamp)
local hard = ARGV[2] == '1'
-- the sequence only moves forward, even across a restart that lost it: it is at
-- least the server's time in milliseconds, so readers notice a reset (seq goes back)
-- instead of mistaking new invalidations for ones they have already seen
local seq = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now_ms > seq then seq = now_ms end
redis.call('SET', KEYS[1], string.format('%d', seq))
for i = 3, #ARGV do
  local tag = ARGV[i]
  local stale, expired = 0, 0
  local cur = redis.call('HGET', KEYS[2], tag)
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    stale = tonumber(string.sub(cur, 1, sp - 1))
    expired = tonumber(string.sub(cur, sp + 1))
  end
  if at > stale then stale = at end
  if hard and at > expired then expired = at end
  redis.call('HSET', KEYS[2], tag, string.format('%.6f %.6f', stale, expired))
  redis.call('ZADD', KEYS[3], seq, tag)
end
return {seq, stamp}
"""

# a render lock, and the server's time it was taken: the render's start on the one clock
_ACQUIRE_STAMPED = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  return string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
end
return false
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def _parse_state(raw: bytes | str) -> TagState:
    """``b"stale expired"`` as written by the invalidation script; anything else in the
    hash is a :class:`StoreError` (the middleware fails open), never a 500."""
    try:
        stale, expired = (raw.decode("ascii") if isinstance(raw, bytes) else raw).split()
        state = (float(stale), float(expired))
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise StoreError(f"garbage tag state in redis: {raw!r:.80}") from exc
    if not (math.isfinite(state[0]) and math.isfinite(state[1])):
        raise StoreError(f"garbage tag state in redis: {raw!r:.80}")
    return state


def _parse_stamp(raw: Any) -> float:
    """``b"1764600000.123456"``, a time on the server's clock as the scripts write it
    (parsed like the tag states, so equal stamps compare equal)."""
    try:
        stamp = float(raw.decode("ascii") if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        raise StoreError(f"garbage time from redis: {raw!r:.80}") from exc
    if not math.isfinite(stamp):
        raise StoreError(f"garbage time from redis: {raw!r:.80}")
    return stamp


def _parse_seq(raw: Any) -> int:
    try:
        seq = int(raw or 0)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: a score of inf
        raise StoreError(f"garbage invalidation sequence in redis: {raw!r:.80}") from exc
    if seq < 0:
        raise StoreError(f"garbage invalidation sequence in redis: {raw!r:.80}")
    return seq


def _tag_name(raw: Any) -> str:
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError as exc:
        raise StoreError(f"garbage tag name in redis: {raw!r:.80}") from exc


def _timed_out(exc: BaseException) -> bool:
    """A command that waited for the socket timeout (or for a pooled connection that
    never came back): what the breaker counts, as a connection failure that took the
    socket timeout (:func:`_may_hang`: Sentinels that all hang, "no primary found")."""
    import redis as _redis

    return isinstance(exc, _redis.TimeoutError) or (
        isinstance(exc, _redis.ConnectionError) and "No connection available" in str(exc)
    )


def _may_hang(exc: BaseException) -> bool:
    """A failure to reach the server (a connection, the Sentinels' answer), as opposed to
    one this store raised itself after a wait it chose (:class:`DurabilityError`)."""
    import redis as _redis

    return isinstance(exc, _redis.ConnectionError)


def config_warnings(maxmemory: str | None, policy: str | None) -> list[str]:
    """What is wrong with a server's eviction settings for this store, in words."""
    out = []
    if maxmemory is not None and maxmemory.strip() in ("0", ""):
        out.append(
            "redis maxmemory is 0 (unbounded): cached pages can fill the server's memory. "
            "Set maxmemory (e.g. maxmemory 2gb) with maxmemory-policy volatile-lru"
        )
    elif policy == "noeviction":
        out.append(
            "redis maxmemory-policy is noeviction: once maxmemory is reached every write "
            "fails, invalidations included (pages then stay stale). Set maxmemory-policy "
            "volatile-lru (or volatile-lfu): every page has a TTL, tag state has none"
        )
    if policy is not None and policy.startswith("allkeys-"):
        out.append(
            f"redis maxmemory-policy is {policy}: it can evict tag invalidation state, so an "
            "invalidated page could be served as fresh again. Set maxmemory-policy "
            "volatile-lru (or volatile-lfu): every page has a TTL, tag state has none"
        )
    if policy == "volatile-ttl":
        out.append(
            "redis maxmemory-policy is volatile-ttl: it evicts the keys nearest their expiry "
            "first, the render locks (a few seconds) before any page, so two hosts can "
            "render one page at once under memory pressure. Set maxmemory-policy "
            "volatile-lru (or volatile-lfu)"
        )
    return out


class RedisStore(Store):
    """A store on one Redis server (or anything speaking its protocol)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: Any = None,
        prefix: str = "isr:",
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 1.0,
        max_connections: int = 64,
        durable: bool = False,
        durable_timeout: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        # imported here, not at module level: a gunicorn.conf.py that imports wsgi_isr
        # must not pull in ssl (through redis-py) before the gevent worker patches it
        try:
            import redis as _redis
        except ImportError as exc:  # pragma: no cover - redis is an install requirement
            raise ImportError("the redis store needs redis-py: pip install redis") from exc
        # RedisClusterException (a cluster that cannot be reached, slots not covered)
        # derives from Exception, not RedisError
        self._errors: tuple[type[Exception], ...] = (
            _redis.RedisError,
            _redis.exceptions.RedisClusterException,
            BreakerOpen,
        )
        self.cluster = False
        self.durability: Durability | None = None
        if client is None:
            conn = connect(
                url,
                prefix=prefix,
                durable=durable,
                durable_timeout=durable_timeout,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                max_connections=max_connections,
            )
            client, prefix, self.description = conn.client, conn.prefix, conn.description
            self.cluster, self.durability = conn.cluster, conn.durability
        else:
            self.description = f"redis client {client!r} (prefix {prefix!r})"
            if durable:
                self.durability = Durability(timeout=durable_timeout)
        # a hung server costs a few requests the socket timeout, then is not asked for a
        # short, growing interval (wsgi_isr.stores.breaker)
        self.breaker = Breaker(
            probe_window=socket_timeout + 0.5,
            is_timeout=_timed_out,
            slow=0.9 * socket_timeout,
            may_hang=_may_hang,
        )
        self._raw = client  # for what needs the client's own type (pipelines, cluster nodes)
        self.client = guarded(client, self.breaker)
        # hits: the lookups running at once in a process share one round trip (a
        # cluster's keys live on several nodes: there, one MGET per lookup as before)
        self._pipe = Pipeline(client.connection_pool) if supported(client) else None
        self.prefix = prefix
        self._config_checked = False
        self._seq_key, self._state_key, self._changes_key = tag_keys(prefix, self.cluster)
        self._lock_prefix = self._seq_key[: -len("seq")] if self.cluster else prefix
        self._invalidate = self.client.register_script(_INVALIDATE)
        self._acquire_stamped = self.client.register_script(_ACQUIRE_STAMPED)
        self._release = self.client.register_script(_RELEASE)
        self._extend = self.client.register_script(_EXTEND)
        self._tags: dict[str, TagState] = {}
        self._seq = 0
        self._decoded = codec.Decoded()
        self._channel = prefix + "invalidations"
        self._landings_channel = prefix + "landings"
        self._on_invalidation: Callable[[], None] | None = None
        self._on_landing: Callable[[str], None] | None = None
        # one clock for the cluster, the server's: render starts and invalidations are
        # stamped by the server (TIME in the scripts); ages are counted on an estimate of
        # it (an offset to ours, refreshed now and then). A clock passed in (tests) is
        # used for everything instead.
        self._server_clock = clock is time.time
        self._offset = 0.0
        self._offset_checked = -math.inf
        self._subscriber: _Subscriber | None = None

    def now(self) -> float:
        """Seconds on the Redis server's clock (via an offset refreshed every 30 s), so
        every host stamps renders and invalidations on one clock."""
        local = self.clock()
        if self._server_clock and local - self._offset_checked > CLOCK_CHECK_INTERVAL:
            self._offset_checked = local
            try:
                before = self.clock()
                seconds, micros = self.client.time()
                after = self.clock()
                self._offset = seconds + micros / 1e6 - (before + after) / 2
            except self._errors:
                pass  # keep the last offset; the store's errors surface elsewhere
        return local + self._offset

    def known_tag_states(self) -> Mapping[str, TagState]:
        return self._tags

    def sync_tags(self) -> None:
        """Read the invalidation sequence and catch up with it (one round trip when
        nothing changed)."""
        try:
            self._sync_tags(_parse_seq(self.client.get(self._seq_key)))
        except self._errors as exc:
            raise StoreError(f"redis read failed: {exc}") from exc

    def subscribe(self, callback: Callable[[], None]) -> bool:
        self._on_invalidation = callback
        self._listen()
        return True

    # waiters woken at once: a miss leader's landing is published, every process'
    # subscriber wakes its waiters for that key (polling stays the fallback)
    landing_poll = 0.1

    def announce_landing(self, key: str) -> None:
        try:
            self.client.publish(self._landings_channel, key)
        except self._errors as exc:
            raise StoreError(f"redis publish failed: {exc}") from exc

    def watch_landings(self, callback: Callable[[str], None]) -> bool:
        self._on_landing = callback
        self._listen()
        return True

    def _listen(self) -> None:
        """Start this process' subscriber (both channels) unless it runs."""
        if self._subscriber is None or not self._subscriber.alive():
            channels = [self._channel, self._landings_channel]
            self._subscriber = _Subscriber(self.client, channels, self._heard)

    def _heard(self, channel: str | None, data: Any) -> None:
        if channel == self._landings_channel:
            if self._on_landing is not None:
                self._on_landing(_tag_name(data))
        elif self._on_invalidation is not None:  # an invalidation, or (re)connected
            self._on_invalidation()

    def _record_key(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def _lock_key(self, name: str) -> str:
        # on a cluster, locks live on the node that holds tag state: the render start a
        # lock script stamps and the invalidation time are then read off one clock
        return f"{self._lock_prefix}lock:{name}"

    def check_config(self) -> list[str]:
        """Read ``maxmemory`` and ``maxmemory-policy`` and log what is unsafe about them
        (once per store; a server that denies ``CONFIG`` is noted at debug level)."""
        self._config_checked = True
        try:
            got = self.client.config_get("maxmemory*")
        except self._errors as exc:
            log.info("wsgi_isr: could not read redis maxmemory settings (%s); check them", exc)
            return []
        found = {_tag_name(k): _tag_name(v) for k, v in got.items()}
        warnings = config_warnings(found.get("maxmemory"), found.get("maxmemory-policy"))
        for warning in warnings:
            log.warning("wsgi_isr: %s", warning)
        return warnings

    def lookup(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        record_key = self._record_key(key)
        try:
            if self._pipe is not None:
                raw, seq = self._pipelined("MGET", record_key, self._seq_key)
            else:
                raw, seq = self.client.mget([record_key, self._seq_key])
            tags = self._sync_tags(_parse_seq(seq))
        except self._errors as exc:
            raise StoreError(f"redis lookup failed: {exc}") from exc
        if not self._config_checked:  # the first time the server answers
            self.check_config()
        return self._decoded.loads(record_key, raw, "redis"), tags

    def _pipelined(self, *command: str) -> Any:
        """``command`` through the auto-pipeline, passed through the breaker like the
        client's commands."""
        assert self._pipe is not None
        return self.breaker.call(self._pipe.call, self._pipe.pack(command))

    def _sync_tags(self, seq: int) -> Mapping[str, TagState]:
        # no lock: one held across this I/O would, under gevent, block every greenlet of
        # the worker behind one waiting for Redis (and one made before gevent patched
        # threading, under --preload, deadlocks it). Concurrent catch-ups each build a
        # complete view from their own base; the one reaching further wins.
        base_seq, base = self._seq, self._tags
        if seq == base_seq:
            return base
        reset = seq < base_seq  # the server lost its data (restart without persistence)
        if reset:
            base_seq, base = 0, {}
        tags = dict(base)
        if base_seq == 0:
            changed = self.client.zrangebyscore(self._changes_key, "-inf", "+inf", withscores=True)
            states = self.client.hgetall(self._state_key)
            tags = {_tag_name(tag): _parse_state(raw) for tag, raw in states.items()}
        else:
            changed = self.client.zrangebyscore(
                self._changes_key, f"({base_seq}", "+inf", withscores=True
            )
            names = [t for t, _ in changed]
            if names:
                for tag, raw in zip(names, self.client.hmget(self._state_key, names), strict=True):
                    if raw is not None:
                        tags[_tag_name(tag)] = _parse_state(raw)
        top = max(max((_parse_seq(s) for _, s in changed), default=seq), seq)
        if reset or top >= self._seq:  # ours goes at least as far as what is there now
            self._tags, self._seq = tags, top
        return tags

    def put(self, key: str, record: Record, ttl: float | None) -> None:
        try:
            self.client.set(self._record_key(key), codec.dumps(record), ex=record_ttl(ttl))
        except self._errors as exc:
            raise StoreError(f"redis write failed: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete(self._record_key(key))
        except self._errors as exc:
            raise StoreError(f"redis delete failed: {exc}") from exc

    def tag_states(self, tags: Iterable[str]) -> dict[str, TagState]:
        names = list(tags)
        if not names:
            return {}
        try:
            raws = self.client.hmget(self._state_key, names)
        except self._errors as exc:
            raise StoreError(f"redis read failed: {exc}") from exc
        return {t: _parse_state(r) for t, r in zip(names, raws, strict=True) if r is not None}

    def invalidate(self, tags: Iterable[str], at: float | None = None, *, hard: bool) -> float:
        names = list(tags)
        if at is None and not self._server_clock:
            at = self.clock()  # a clock of the caller's (tests): it stamps everything
        if not names:
            return self.now() if at is None else at
        try:
            keys = [self._seq_key, self._state_key, self._changes_key]
            args = ["" if at is None else repr(float(at)), "1" if hard else "0", *names]
            if self.durability is not None:  # + WAIT for the replicas, on one connection
                # on the client's own connection (a pipeline), so the breaker is told here
                run = self.durability.run
                seq, stamp = self.breaker.call(run, self._raw, self._invalidate, keys, args)
            else:
                seq, stamp = self._invalidate(keys=keys, args=args)
            self.client.publish(self._channel, seq)
        except self._errors as exc:
            raise StoreError(f"redis invalidation failed: {exc}") from exc
        return _parse_stamp(stamp)

    def acquire(self, name: str, ttl: float) -> str | None:
        token = new_token()
        try:
            ok = self.client.set(self._lock_key(name), token, nx=True, px=max(1, int(ttl * 1000)))
        except self._errors as exc:
            raise StoreError(f"redis lock failed: {exc}") from exc
        return token if ok else None

    def acquire_stamped(self, name: str, ttl: float) -> tuple[str, float] | None:
        if not self._server_clock:  # a clock of the caller's (tests): it stamps everything
            return super().acquire_stamped(name, ttl)
        token = new_token()
        try:
            stamp = self._acquire_stamped(
                keys=[self._lock_key(name)], args=[token, max(1, int(ttl * 1000))]
            )
        except self._errors as exc:
            raise StoreError(f"redis lock failed: {exc}") from exc
        return None if stamp is None else (token, _parse_stamp(stamp))

    def stamp(self) -> float:
        if not self._server_clock:
            return self.now()
        try:
            seconds, micros = self.client.time()
        except self._errors as exc:
            raise StoreError(f"redis TIME failed: {exc}") from exc
        return _parse_stamp(f"{int(seconds)}.{int(micros):06d}")

    def release(self, name: str, token: str) -> bool:
        try:
            return bool(self._release(keys=[self._lock_key(name)], args=[token]))
        except self._errors as exc:
            raise StoreError(f"redis unlock failed: {exc}") from exc

    def extend(self, name: str, token: str, ttl: float) -> bool:
        try:
            return bool(
                self._extend(keys=[self._lock_key(name)], args=[token, max(1, int(ttl * 1000))])
            )
        except self._errors as exc:
            raise StoreError(f"redis lock extend failed: {exc}") from exc

    def count(self) -> int | None:
        try:
            # the raw client: a generator would "succeed" at once and close the breaker
            # on a server that is still hung
            self.breaker.check()
            return sum(1 for _ in self._raw.scan_iter(match=f"{self.prefix}e:*", count=1000))
        except self._errors:
            return None

    def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.stop()
        if self._pipe is not None:
            self._pipe.close()
        self.client.close()
        disconnect(self._raw)  # a pool we built is ours to close


#: Seconds of silence on the pub/sub connection before the listener sends a PING, and
#: seconds it then waits for any answer before it connects again.
PING_AFTER = 2.0
PONG_WITHIN = 2.0


class _Subscriber:
    """Listens to ``channels`` in a background thread (a greenlet when the process is
    gevent-patched) and calls ``callback(channel, data)`` for each message, and
    ``callback(None, None)`` on every (re)connection (to catch up with what was missed);
    reconnects by itself, quietly.

    Started lazily and per process: a subscriber inherited through ``fork`` is dead.
    """

    def __init__(
        self, client: Any, channels: list[str], callback: Callable[[str | None, Any], None]
    ) -> None:
        self.client, self.channels, self.callback = client, channels, callback
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wsgi_isr-pubsub", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self.pid == os.getpid() and self._thread.is_alive()

    def stop(self, wait: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(wait)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                try:
                    pubsub.subscribe(*self.channels)
                    self.callback(None, None)  # catch up with what happened while not listening
                    self._listen(pubsub)
                finally:
                    pubsub.close()
            except Exception:  # Redis down or restarting: wait, then listen again
                self._stop.wait(1.0)

    def _listen(self, pubsub: Any) -> None:
        """Pass messages on until stopped; a server silent for :data:`PING_AFTER` s is
        sent a PING, and one that does not answer it within :data:`PONG_WITHIN` s is
        left (``TimeoutError``: listen again). A hung primary keeps the socket open and
        sends nothing, and a Sentinel failover away from it would go unheard for good."""
        heard = time.monotonic()
        pinged = False
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is not None:
                heard, pinged = now, False
                if message.get("type") == "pong":
                    continue
                self.callback(_tag_name(message["channel"]), message["data"])
            elif pinged and now - heard >= PING_AFTER + PONG_WITHIN:
                raise TimeoutError("the pub/sub connection went silent")
            elif not pinged and now - heard >= PING_AFTER:
                pubsub.ping()
                pinged = True
