"""Misses: the coalesced foreground render, and the visitor with credentials.

Concurrent misses for one key are coalesced: the first takes the key's render
lock (a short lease, renewed while it renders) and renders; the others wait,
checking whether the render landed, and serve it. If the leader dies or hangs as
a whole, its lease runs out within seconds and a waiter takes the lock and
renders (and stores) in its place; a leader whose render hangs keeps its lease
for ``coalesce_timeout`` at most, then the same happens. Each wait is bounded by
``coalesce_timeout``: past it a waiter renders for itself without storing.

Waiters are woken the moment the leader's render lands, at O(1) store work per
process (see :class:`Landings`): in the leader's process it hands them the entry; in
the others one waiter per key looks, woken through the store (Redis pub/sub) or at
growing intervals up to the store's ``landing_poll`` (a short one for the file store,
which has no way to wake it), and hands what it found to the rest.

A page that turns out to vary on request headers (``Vary: Accept-Encoding``
from a compression middleware) leaves a marker under its base key; waiters
follow it to their own variant's key and coalesce there, so N concurrent first
visitors cause one render per variant, not one each.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import responses as R
from .entry import Entry, PassMarker, State
from .errors import StoreError
from .keys import RequestKey, render_environ, variant_key, vary_value
from .policy import (
    client_headers,
    decide,
    header_values,
    private_headers,
    unshared_headers,
)
from .regeneration import Settled, lock_name
from .render import Captured, capture

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .middleware import ISRMiddleware
    from .stores import Store

#: First pause between two looks of a waiting miss that only polling can tell of a
#: landing elsewhere (it doubles up to the store's ``landing_poll``).
FIRST_POLL = 0.005
#: Pause between two tries of the leader's lock (a dead leader's lease lasts seconds).
LOCK_RETRY = 0.5
#: Keys with waiters at most tracked per process (more: they fall back to polling).
MAX_WAITED_KEYS = 10_000


class Landings:
    """Wakes the misses that wait on a key when it lands, with as little store work as
    possible: the leader hands what it stored to the waiters of its own process (no
    lookup); in every other process one waiter per key (the *looker*) looks, woken by
    the store (Redis pub/sub: the leader announces the landing) or, if the store cannot
    wake it, every ``landing_poll`` seconds, and hands what it found to the others (the
    *followers*): one lookup per process and landing, not one per waiter. A follower
    looks by itself only when the looker leaves without finding the page, or after
    ``patience`` (should the looker be stuck).

    Waits are made when first waited on (so, in a gunicorn gevent worker, after gevent
    patched ``threading``), per process (a forked child starts with none, and starts its
    own subscriber) and dropped when over.
    """

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self._waiting: dict[str, _Landing] = {}
        #: keys whose leader renders in this process: it hands its waiters the page, so
        #: the store's word of the landing (its own announcement) is not theirs to act on
        self._leading: set[str] = set()
        #: nothing waited on or rendered here (a hint, for the hit path: one attribute
        #: read, not :meth:`joinable`'s two lookups; a stale value only costs a lookup)
        self.idle = True
        self._pid = 0
        self._woken_by_store = False
        self._watchers: list[Callable[[str], None]] = []

    def watch(self, callback: Callable[[str], None]) -> bool:
        """Also call ``callback(key)`` at every landing of a key, here or (if the store
        tells) in another process; True if those elsewhere are heard."""
        if callback not in self._watchers:
            self._watchers = [*self._watchers, callback]  # replaced: _wake iterates a copy
        self.first_pause()  # this process listens to the store
        return self._woken_by_store

    def wait(self, key: str, delay: float, patience: float) -> Entry | None:
        """Wait on ``key``: the entry handed over, or ``None`` when it is this waiter's
        turn to look (the looker: after ``delay``, or at once when the store says the
        key landed; a follower: when the looker left, or after ``patience``)."""
        self.first_pause()  # this process listens to the store
        landing = self._waiting.get(key)
        if landing is None:
            if len(self._waiting) >= MAX_WAITED_KEYS:
                time.sleep(delay)
                return None
            landing = self._waiting.setdefault(key, _Landing())
            self.idle = False
        me = threading.get_ident()
        if landing.looker == me or landing.claim.acquire(blocking=False):  # one looker
            landing.looker = me
            # no need to poll a render of this process: its leader hands the page over
            landing.prod.wait(patience if key in self._leading else delay)
            landing.prod.clear()  # a word that comes during the look brings another
        else:
            landing.event.wait(patience)
        return landing.entry

    def leave(self, key: str) -> None:
        """The calling waiter no longer waits on ``key``; if it was the looker and the
        wait is not over, the followers look by themselves (one becomes the looker)."""
        landing = self._waiting.get(key)
        if landing is not None and landing.looker == threading.get_ident():
            self._wake(key, landed=False)

    def hand_over(self, key: str, entry: Entry | None) -> None:
        """``entry`` is what ``key`` holds now (found by a waiter, or stored by this
        process' leader): the waiters here are served it as is (``None``: they look)."""
        self._wake(key, entry)

    def first_pause(self) -> float:
        """How long a waiter first waits before it looks by itself: short if nothing
        but polling tells it of a landing elsewhere, the store's ``landing_poll`` if
        the store wakes it (every look costs a round trip that the leader, landing,
        waits behind too)."""
        if self._pid != os.getpid():
            self._waiting, self._leading, self._pid = {}, set(), os.getpid()
            self.idle = True
            self._woken_by_store = self.store is not None and self.store.watch_landings(self._heard)
        if self._woken_by_store and self.store is not None:
            return self.store.landing_poll
        return FIRST_POLL

    def notify(self, key: str, entry: Entry | None = None) -> None:
        """The render of ``key`` landed here (``entry``: what was stored under ``key``):
        wake the waiters, here (handing them the entry) and elsewhere."""
        self._wake(key, entry)
        self.announce(key)

    def announce(self, key: str) -> None:
        """Tell the other processes' waiters that ``key`` landed."""
        if self.store is not None:
            # a hint: without it the waiters elsewhere look by themselves
            with contextlib.suppress(StoreError):
                self.store.announce_landing(key)

    def lead(self, key: str) -> None:
        """A miss leader of this process renders ``key`` (it wakes the waiters here
        itself, with :meth:`led`, once its own answer is built)."""
        self.first_pause()  # a forked child's sets start empty
        self._leading.add(key)
        self.idle = False

    def led(self, key: str, entry: Entry | None) -> None:
        """The leader of ``key`` is done: its waiters here are handed ``entry``."""
        self._leading.discard(key)  # first: a waiter coming now must not count on it
        self._wake(key, entry)  # (which brings ``idle`` up to date)

    def joinable(self, key: str) -> bool:
        """Whether this process already waits on or renders ``key``: a miss coming now
        waits with them, without a lock try or a look of its own."""
        return key in self._waiting or key in self._leading

    def _heard(self, key: str) -> None:
        """The store says ``key`` landed somewhere: this process' looker looks now."""
        self._tell_watchers(key)
        landing = self._waiting.get(key)
        if landing is not None and key not in self._leading:
            landing.prod.set()

    def _tell_watchers(self, key: str) -> None:
        for watcher in self._watchers:  # a list replaced, never changed: no copy needed
            watcher(key)

    def _wake(self, key: str, entry: Entry | None = None, *, landed: bool = True) -> None:
        if landed:  # (not when a looker merely leaves: nothing landed)
            self._tell_watchers(key)
        landing = self._waiting.pop(key, None)
        self.idle = not (self._waiting or self._leading)
        if landing is not None:
            landing.entry = entry
            landing.event.set()
            landing.prod.set()


class _Landing:
    """One wait on a key in this process: ``event`` is set when it is over (``entry``:
    what was handed over, if anything), ``prod`` wakes the ``looker`` (a thread id)."""

    __slots__ = ("claim", "entry", "event", "looker", "prod")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.prod = threading.Event()
        self.entry: Entry | None = None
        self.claim = threading.Lock()  # taken by the looker, never released (one wait)
        self.looker: int | None = None


def personal_miss(
    mw: ISRMiddleware,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    rk: RequestKey,
    key: str,
    vary: tuple[str, ...],
    seen: float | None,
) -> Iterable[bytes]:
    """A visitor with cookies or credentials gets the app's answer for them, marked
    ``private`` and never stored. If the page may be stored, a clean render fills
    the cache in the background (``seen``: the creation time of a stale or expired
    entry the key still holds, so that it does not count as a newer render; ``None``
    when the key holds nothing, or a fresh copy, which a fill then leaves alone)."""

    def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        decision = decide(status, headers, 0, max_entry_bytes=mw.max_entry_bytes)
        if decision.store:
            mw.regen.schedule(environ, rk, key, vary, seen, fill=True)
        headers = private_headers(client_headers(headers))
        headers += [("X-ISR-Cache", R.MISS), ("Cache-Status", R.CS_CREDENTIALS)]
        return start_response(status, headers, exc_info)

    return mw.app(environ, sr)


def coalesced_miss(
    mw: ISRMiddleware,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    rk: RequestKey,
    key: str,
    vary: tuple[str, ...],
) -> Iterable[bytes]:
    """Render in the foreground, one request per key at a time (see the module)."""
    store, regen, landings = mw.store, mw.regen, mw.landings
    deadline = time.monotonic() + mw.coalesce_timeout
    delay = landings.first_pause()
    leads = 0
    next_try = 0.0  # when to try the lock again (a look in between costs much less)
    # this process already waits on (or renders) the key: join them, no round trips
    joined = landings.joinable(key)
    try:
        while True:
            lock = lock_name(key)
            held: tuple[str, float] | None = None
            if joined:
                joined, landed, lkey, lvary, fresh = False, None, key, vary, False
            else:
                try:
                    if time.monotonic() >= next_try:
                        held = regen.lock(lock)
                        next_try = time.monotonic() + LOCK_RETRY
                    # taken or not, a render may have landed since our lookup: look first
                    landed, lkey, lvary, fresh = _landed(mw, environ, rk)
                except StoreError as exc:
                    return mw._store_down(environ, start_response, exc)
            if (landed is not None or lkey != key) and held is not None:
                regen.unlock(lock, held[0])
                held = None
            if isinstance(landed, PassMarker):
                return mw._hit_for_pass(environ, start_response, landed)
            if isinstance(landed, Entry):
                # the other waiters on that key in this process need no lookup of their
                # own, unless it was invalidated while it rendered (then they look too)
                landings.hand_over(lkey, landed if fresh else None)
                mw.stats.incr("coalesced")
                detail = "coalesced" if fresh else R.LANDED_STALE
                return mw._respond(environ, start_response, landed, store.now(), R.HIT, detail)
            if lkey != key:  # the page varies: coalesce on this visitor's variant instead
                landings.leave(key)
                key, vary, next_try = lkey, lvary, 0.0
                continue
            if held is not None:
                leads += 1
                served = _lead(mw, environ, start_response, rk, key, vary, held, leads > 2)
                if served is not None:
                    return served
                # stored under another variant than this visitor's: look again
                continue
            now = time.monotonic()
            if now >= deadline:
                # the leader takes too long: render for ourselves, store nothing
                mw.stats.incr("coalesce_timeouts")
                captured = capture(mw.app, render_environ(rk, environ, vary), mw.max_entry_bytes)
                return send_captured(environ, start_response, captured, R.CS_TIMEOUT)
            entry = landings.wait(key, delay, min(LOCK_RETRY, deadline - now))
            if entry is not None:
                # handed over by the leader (in this process) or by this process' looker
                mw.stats.incr("coalesced")
                return mw._respond(environ, start_response, entry, store.now(), R.HIT, "coalesced")
            delay = min(delay * 2, store.landing_poll)
    finally:
        landings.leave(key)  # the key waited on last: its followers look without us


def _lead(
    mw: ISRMiddleware,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    rk: RequestKey,
    key: str,
    vary: tuple[str, ...],
    held: tuple[str, float],
    last: bool,
) -> Iterable[bytes] | None:
    """Render ``key`` holding its lock (``held``: the token, and the store-clock time
    it was taken, when the render counts as started), and store it. ``None`` when the
    render was stored under another variant than the visitor's (the caller looks
    again), unless this is the ``last`` try (a page whose ``Vary`` keeps changing).

    The waiters elsewhere are told as soon as the page is stored; those of this process
    are handed it once the leader's own answer is built (under gevent they would
    otherwise all be served while the leader waits for its next round trip)."""
    handed: Entry | None = None
    mw.landings.lead(key)
    try:
        served = _render_and_answer(mw, environ, start_response, rk, key, vary, held, last)
        handed = served[1]
        return served[0]
    finally:
        mw.landings.led(key, handed)


def _render_and_answer(
    mw: ISRMiddleware,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    rk: RequestKey,
    key: str,
    vary: tuple[str, ...],
    held: tuple[str, float],
    last: bool,
) -> tuple[Iterable[bytes] | None, Entry | None]:
    """:func:`_lead`'s work: its answer, and the entry to hand this process' waiters."""
    regen, lock = mw.regen, lock_name(key)
    token, started = held
    env = render_environ(rk, environ, vary)
    settled: Settled | None = None
    try:
        try:
            # renewed while waiters wait: past coalesce_timeout a hung leader's lease
            # lapses, and a waiter that came later takes over and stores its render
            captured = regen.render(lock, token, env, mw.coalesce_timeout)
        except Exception:
            # a first fill that raises leaves a marker of a second, not pass_ttl
            regen.mark_failed(key, "the application raised", started)
            raise
        settled = regen.settle(rk, key, vary, captured, started, env, foreground=True)
    finally:
        regen.unlock(lock, token)
        # stored, refused or failed: the waiters elsewhere look now (those here get the
        # entry, if it was stored under the key they wait on, from _lead)
        mw.landings.announce(key)
    entry, now = settled.entry, mw.store.now()  # its age counts from its render's start
    fresh = entry is not None and _still_fresh(mw, entry, now)
    # the waiters here are handed only a page still fresh: one invalidated while it
    # rendered is looked up by them (and judged as they find it), never served as a HIT
    handed = entry if settled.key == key and fresh else None
    if settled.entry is None and not _rendered_as_asked(captured, env, environ):
        # not stored, and it varies on a request header the clean render did not have
        # as this visitor sent it: the visitor gets the app's answer to their own request
        captured.close()
        asked = settled.decision.opted_in
        sent = mw._pass(environ, start_response, R.MISS, R.CS_MISS, unshared=True, asked=asked)
        return sent, handed
    if settled.entry is None or (last and settled.key != _visitor_key(rk, settled, environ)):
        sent = send_captured(environ, start_response, captured, R.CS_MISS)
        return sent, handed
    if settled.key != _visitor_key(rk, settled, environ):
        captured.close()
        return None, handed
    detail = None if fresh else R.LANDED_STALE
    return mw._respond(environ, start_response, settled.entry, now, R.MISS, detail), handed


def _still_fresh(mw: ISRMiddleware, entry: Entry, now: float) -> bool:
    """Whether a page that just landed is still fresh by the store's tag state (an
    invalidation may have come while it rendered)."""
    try:
        return entry.state(now, mw.store.tag_states(entry.tags)) is State.FRESH
    except StoreError as exc:
        mw._store_failed(exc)
        return False  # cannot tell: promise nothing to the caches in front


def _rendered_as_asked(captured: Captured, env: WSGIEnvironment, environ: WSGIEnvironment) -> bool:
    """Whether the request headers the answer says it varies on had, in the render,
    the values this visitor sent."""
    for value in header_values(captured.headers, "vary"):
        for name in value.split(","):
            name = name.strip()
            if name and vary_value(env, name) != vary_value(environ, name):
                return False
    return True


def _visitor_key(rk: RequestKey, settled: Settled, environ: WSGIEnvironment) -> str:
    vary = settled.decision.vary
    return variant_key(rk.key, vary, environ) if vary else rk.key


def _landed(
    mw: ISRMiddleware, environ: WSGIEnvironment, rk: RequestKey
) -> tuple[Entry | PassMarker | None, str, tuple[str, ...], bool]:
    """A servable record for this visitor (read past any local layer), the key and
    vary names it lives under (following a Vary marker to the visitor's variant), and
    whether it is fresh (a page invalidated while it rendered is not: it is served,
    as its leader serves it, without a promise to the caches in front)."""
    record, tag_states, key, vary = mw._find(environ, rk, through=True)
    if isinstance(record, Entry):
        state = record.state(mw.store.now(), tag_states)
        if state is State.EXPIRED:
            return None, key, vary, False
        return record, key, vary, state is State.FRESH
    if isinstance(record, PassMarker):
        return record, key, vary, False
    return None, key, vary, False


def send_captured(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    captured: Captured,
    status_value: str,
) -> Iterable[bytes]:
    """A render sent as it is, not stored: private if the page asked to be cached (no
    tags went out with it, so no purge could reach a copy kept in front), else as the
    app sent it (:func:`~wsgi_isr.policy.unshared_headers`)."""
    headers = unshared_headers(captured.headers)
    headers += [("X-ISR-Cache", R.MISS), ("Cache-Status", status_value)]
    start_response(captured.status, headers)
    if environ.get("REQUEST_METHOD") == "HEAD":
        captured.close()
        return []
    return captured.stream()
