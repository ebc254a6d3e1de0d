"""Writing renders to the store, and regenerating stale pages in the background.

The :class:`Regenerator` decides nothing about freshness; it turns a captured
render into a stored entry (or a marker, or nothing), and runs regenerations
under the per-key render lock (a short lease, renewed while the render runs).

What a render did decides what happens to the stored page (DESIGN 5):

- a **failure** (an exception, a 5xx, a timeout) never replaces it: a background
  regeneration keeps the stale copy and backs the key off; a first fill leaves a
  marker of a second, so the next visitors are not queued behind a failing backend;
- a **healthy** answer is the truth: stored if it may be, else the old copy is
  dropped for a hit-for-pass marker and visitors get the live page.

The back-off is a lock of its own (``backoff:<key>``) that only background
regenerations look at: a visitor who must have a fresh page is never held by it.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import responses as R
from .bounded import Memo, text_size
from .entry import Entry, PassMarker, Record, State, VaryMarker
from .errors import StoreError
from .keys import RequestKey, path_tags, render_environ, variant_key
from .lease import LEASE, HeldLocks, LeaseKeeper, Ticket
from .policy import Decision, decide, stored_headers
from .render import Captured, capture
from .runner import Runner
from .stats import Stats
from .stores import Store
from .stores.breaker import one_wait

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

log = logging.getLogger("wsgi_isr")

#: A refused opted-in answer (Set-Cookie, too large) or a failed first fill is
#: remembered only briefly, so concurrent misses do not queue behind it and it is
#: retried soon.
REFUSED_PASS_TTL = 1.0
MAX_BACKOFF = 300.0
#: How long after this process starts listening for landings elsewhere it trusts
#: that it hears them (its subscription is set up meanwhile).
LISTENING_AFTER = 1.0


class Landings(Protocol):
    """Where renders of a key are announced when they land (``misses.Landings``)."""

    def notify(self, key: str) -> None:
        """The render of ``key`` landed here: tell whoever waits, here and elsewhere."""

    def watch(self, callback: Callable[[str], None]) -> bool:
        """Call ``callback(key)`` at every landing, here or elsewhere; True if landings
        in other processes are heard at all."""


def lock_name(key: str) -> str:
    """The lock of a foreground (miss) render of ``key``."""
    return "render:" + key


def regen_lock_name(key: str) -> str:
    """The lock of a background regeneration of ``key``: a lock of its own, so that a
    visitor who must have a fresh page never waits behind a regeneration (perhaps hung,
    or started before the hard invalidation that made the page expire)."""
    return "regen:" + key


def backoff_name(key: str) -> str:
    return "backoff:" + key


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """What became of a render: the stored entry (``None`` if nothing was stored),
    the key it was written under, and the decision."""

    entry: Entry | None
    key: str
    decision: Decision


def _newer(record: Record | None, started: float) -> Entry | None:
    """``record`` if it is a page whose render started after ``started``."""
    return record if isinstance(record, Entry) and record.created > started else None


class Regenerator:
    def __init__(
        self,
        app: WSGIApplication,
        store: Store,
        runner: Runner,
        stats: Stats,
        *,
        max_entry_bytes: int,
        lock_timeout: float,
        pass_ttl: float,
        backoff: float,
        on_store_error: Callable[[StoreError], None],
        fill_limit: float | None = None,
        landings: Landings | None = None,
    ) -> None:
        self.app = app
        self.fill_limit = fill_limit
        self.landings = landings
        self.store = store
        self.runner = runner
        self.stats = stats
        self.max_entry_bytes = max_entry_bytes
        self.lock_timeout = lock_timeout
        self.lease = min(LEASE, lock_timeout)
        self.pass_ttl = pass_ttl
        self.backoff = backoff
        self._store_failed = on_store_error
        self._failures: Memo[str, int] = Memo(10_000, 4 << 20)  # bounded in bytes: keys can be long
        self.leases = LeaseKeeper(
            store, lease=self.lease, limit=lock_timeout, on_error=on_store_error
        )
        # the visitors of a page being regenerated cost no lock attempt each: see
        # HeldLocks. Another holder's lock is taken to be held no longer than a back-off
        # lasts, so that even a failure whose landing was not heard here delays nothing
        # that the back-off would not have delayed
        self.held = HeldLocks(store.clock)
        self.quiet_for = min(self.lease, backoff)
        self._listening = (0, math.inf)  # (pid, monotonic time from when it is trusted)

    def lock(self, name: str) -> tuple[str, float] | None:
        """Take the lock ``name`` for one lease: its token and the store-clock time it
        was taken, when a render under it counts as started (``StoreError`` propagates)."""
        return self.store.acquire_stamped(name, self.lease)

    def unlock(self, lock: str, token: str) -> None:
        try:
            self.store.release(lock, token)
        except StoreError as exc:  # the lease runs out anyway
            self._store_failed(exc)

    def render(
        self, lock: str, token: str, env: dict[str, Any], limit: float | None = None
    ) -> Captured:
        """Render under the lock, renewing its lease meanwhile (for at most ``limit``
        seconds, default ``lock_timeout``); exceptions propagate. The render counts as
        started when the lock was taken (:meth:`lock`): on the store's clock, before
        anything it reads."""
        with self.leases.hold(lock, token, limit):
            return capture(self.app, env, self.max_entry_bytes)

    def settle(
        self,
        rk: RequestKey,
        key: str,
        vary: tuple[str, ...],
        captured: Captured,
        started: float,
        env: WSGIEnvironment,
        *,
        foreground: bool,
        decision: Decision | None = None,
    ) -> Settled:
        """Store what a render of ``env`` produced, if it may be stored."""
        if decision is None:
            decision = self.decide(captured)
        if decision.failed:
            if foreground:  # a first fill failed: nothing good is lost by a short marker
                self.mark_failed(key, decision.reason, started)
            log.warning("wsgi_isr: render of %s failed: %s", key, decision.reason)
            return Settled(None, key, decision)
        if not decision.store:
            # a healthy answer is the truth: whatever was stored before it goes (a page
            # that a later render stored meanwhile is newer truth, and stays)
            pass_ttl = REFUSED_PASS_TTL if decision.opted_in else self.pass_ttl
            if self._newer_entry(key, started) is None:
                self.put(key, PassMarker(decision.reason), pass_ttl)
            log.info("wsgi_isr: not storing %s: %s", key, decision.reason)
            return Settled(None, key, decision)
        if decision.vary != vary:
            # the page varies on request headers it was not keyed on yet: remember that;
            # this render saw exactly the values in ``env``, so it is that variant
            self.put(rk.key, VaryMarker(decision.vary) if decision.vary else None, None)
            key = variant_key(rk.key, decision.vary, env) if decision.vary else rk.key
        existing = self._existing(key)
        newer = _newer(existing, started)
        if newer is not None:  # a render that started later already landed: keep it
            return Settled(newer, key, decision)
        entry = self.entry(rk, captured, decision, started, existing)
        ttl = None if decision.expire is None else decision.expire + 60
        stored = self.put(key, entry, ttl)
        return Settled(entry if stored else None, key, decision)

    def mark_failed(self, key: str, reason: str, started: float) -> None:
        """After a failed first fill: a marker of a second, unless a render that started
        later (a waiter that took over from this hung leader) stored a page meanwhile."""
        if self._newer_entry(key, started) is None:
            self.put(key, PassMarker(reason), REFUSED_PASS_TTL)

    def _existing(self, key: str) -> Record | None:
        try:
            return self.store.lookup_through(key)[0]
        except StoreError:
            return None  # the write will tell

    def _newer_entry(self, key: str, started: float) -> Entry | None:
        return _newer(self._existing(key), started)

    def decide(self, captured: Captured) -> Decision:
        return decide(
            captured.status,
            captured.headers,
            captured.size,
            extra_tags=captured.tags,
            max_entry_bytes=self.max_entry_bytes,
        )

    def put(self, key: str, record: Record | None, ttl: float | None) -> bool:
        try:
            if record is None:
                self.store.delete(key)
            else:
                self.store.put(key, record, ttl)
            return True
        except StoreError as exc:
            self._store_failed(exc)
            return False

    def entry(
        self,
        rk: RequestKey,
        captured: Captured,
        decision: Decision,
        started: float,
        previous: Record | None = None,
    ) -> Entry:
        body = captured.body()
        etags = [v for k, v in captured.headers if k.lower() == "etag"]
        etag = etags[-1] if etags else R.make_etag(body)
        lms = [v for k, v in captured.headers if k.lower() == "last-modified"]
        if lms:
            last_modified = lms[-1]
        elif (
            isinstance(previous, Entry)
            and int(previous.created) >= int(started)
            and previous.etag != etag
        ):
            # another version within the same second: a date of one-second resolution
            # cannot tell them apart, and If-Modified-Since would be answered 304 for a
            # page that changed. No Last-Modified (the ETag still validates it).
            last_modified = ""
        else:
            last_modified = R.last_modified(started)
        return Entry(
            status=captured.status,
            headers=stored_headers(captured.headers),
            body=body,
            created=float(started),
            revalidate=decision.revalidate,
            expire=decision.expire,
            tags=decision.tags + path_tags(rk.path),
            etag=etag,
            last_modified=last_modified,
        )

    def schedule(
        self,
        environ: WSGIEnvironment,
        rk: RequestKey,
        key: str,
        vary: tuple[str, ...],
        seen: float | None,
        *,
        fill: bool = False,
        ticket: Ticket | None = None,
    ) -> None:
        """Start a background regeneration of ``key`` unless one is running somewhere,
        the key is backing off after a failure, or a render newer than the one the
        visitor saw (created at ``seen``; ``None``: none) has landed. ``ticket``: taken
        before the visitor's record was looked up (default: now).

        ``fill``: the key holds nothing servable (a visitor with cookies got a page of
        their own): the render takes the foreground lock, so that anonymous misses
        meanwhile wait for it, and keeps it no longer than a miss leader would."""
        lock = lock_name(key) if fill else regen_lock_name(key)
        if self.held.quiet(lock, seen):
            return  # known to be running, here or elsewhere, since the visitor's record
        if ticket is None:
            ticket = self.held.ticket()
        # while this visitor asks, the others who saw the same record wait for its answer
        # (they would have lost the race for the lock): one attempt, not a burst of them
        self.held.note(lock, seen, ticket, self.lease)
        keep = 0.0
        try:
            keep = self._attempt(environ, rk, key, vary, seen, lock, fill)
        finally:
            if keep > 0:
                self.held.note(lock, seen, ticket, keep)
            else:
                self.held.drop(lock, ticket)

    def _attempt(
        self,
        environ: WSGIEnvironment,
        rk: RequestKey,
        key: str,
        vary: tuple[str, ...],
        seen: float | None,
        lock: str,
        fill: bool,
    ) -> float:
        """Try the lock and start the regeneration: how long the lock is then known to
        be held (0: not known)."""
        try:
            held = self.lock(lock)
            if held is None:
                # someone, somewhere, is already on it. The foreground (fill) lock is
                # the misses' too: a visitor with cookies asks for it every time, as before
                return self.quiet_for if not fill and self._hears_landings() else 0.0
            token, started = held
            if self._backing_off(key) or self._newer_entry(
                key, -math.inf if seen is None else seen
            ):
                self.unlock(lock, token)
                return 0.0
        except StoreError as exc:
            self._store_failed(exc)
            return 0.0
        env = render_environ(rk, environ, vary)
        # the render runs elsewhere but in this request's context (the current middleware)
        ctx = contextvars.copy_context()
        limit = self.fill_limit if fill else None
        task = lambda: ctx.run(  # noqa: E731
            self.regenerate, rk, key, vary, env, lock, token, started, limit
        )
        if self.runner.submit(task):
            self.stats.incr("regenerations_started")
            # this process runs it: its visitors need not ask until it ends (forget()
            # in regenerate; a note the task's quick end came before is refused)
            return self.lease
        self.stats.incr("regenerations_skipped")
        self.unlock(lock, token)
        return 0.0

    def ask(self, key: str, record: Record | None, state: State | None) -> Ticket | None:
        """Before a visitor looks ``key`` up in the store again, its local copy
        ``record`` (in ``state``) not being FRESH: the ticket of the look, or ``None``
        if there is no need — the copy is STALE, its regeneration is known to run and
        nothing landed since it was read from the store, so the store holds it still
        (but for a landing not heard yet). The other visitors of that STALE copy wait
        for this look meanwhile (:meth:`asked` when it is done): not a burst of them."""
        ticket = self.held.ticket()  # before the look: a landing heard after it counts
        if state is State.STALE and isinstance(record, Entry):
            lock = regen_lock_name(key)
            if self.held.quiet(lock, record.created):
                return None
            self.held.note(lock, record.created, ticket, self.lease)
        return ticket

    def asked(self, key: str, ticket: Ticket) -> None:
        """The look of :meth:`ask` is done: its visitor schedules what it found."""
        self.held.drop(regen_lock_name(key), ticket)

    def _hears_landings(self) -> bool:
        """True if a landing of a key in another process is heard here (and so ends
        what this process knows of the key's lock: :meth:`_heard`)."""
        pid, since = self._listening
        if pid != os.getpid():
            hears = self.landings is not None and self.landings.watch(self._heard)
            since = time.monotonic() + LISTENING_AFTER if hears else math.inf
            self._listening = (os.getpid(), since)
        return time.monotonic() >= since

    def _heard(self, key: str) -> None:
        """A render of ``key`` landed (stored, refused or failed), here or elsewhere."""
        self.held.forget(regen_lock_name(key))
        self.held.forget(lock_name(key))

    def _backing_off(self, key: str) -> bool:
        probe = self.store.acquire(backoff_name(key), self.lease)
        if probe is None:
            return True
        self.store.release(backoff_name(key), probe)
        return False

    @one_wait(fresh=True)  # in a copy of the request's context: a block of its own
    def regenerate(
        self,
        rk: RequestKey,
        key: str,
        vary: tuple[str, ...],
        env: dict[str, Any],
        lock: str,
        token: str,
        started: float,
        limit: float | None = None,
    ) -> None:
        ok = False
        try:
            timer = time.monotonic()
            try:
                captured = self.render(lock, token, env, limit)
            except Exception:
                log.exception("wsgi_isr: regeneration of %s raised; keeping the stale page", key)
                return
            self.stats.observe_regeneration(time.monotonic() - timer)
            captured.drain()
            decision = self.decide(captured)
            if decision.failed:
                log.warning(
                    "wsgi_isr: regeneration of %s failed (%s); keeping the stale page",
                    key,
                    decision.reason,
                )
                return
            if time.monotonic() - timer > self.lock_timeout:
                # hung past lock_timeout: its lease was given up, other regenerations
                # may have run since; what it saw is too old to be worth storing. (A lease
                # that lapsed sooner — a gevent hub blocked by a C driver — is no reason
                # to drop it: settle() keeps any page a later render stored meanwhile.)
                log.warning("wsgi_isr: regeneration of %s outlived its lock; dropped", key)
                return
            settled = self.settle(
                rk, key, vary, captured, started, env, foreground=False, decision=decision
            )
            if decision.store and settled.entry is None:
                log.warning("wsgi_isr: regeneration of %s could not be stored", key)
                return
            ok = True
        finally:
            # interrupted (a gevent timeout), raised or failed: back off; never the
            # visitor's business, who keeps getting the stale copy
            if ok:
                self._failures.pop(key, None)
                self.stats.incr("regenerations_ok")
            else:
                self.back_off(key)
            self.unlock(lock, token)
            self._heard(key)  # the next visitor asks again (and may start the next one)
            if self.landings is not None:
                # misses waiting on a fill look now; other processes forget the lock too
                self.landings.notify(key)

    def back_off(self, key: str) -> float:
        """Count a failed regeneration and hold further background attempts of ``key``
        off, everywhere the store is shared, for a doubling interval (returned)."""
        self.stats.incr("regenerations_failed")
        n = self._failures.get(key, 0) + 1
        self._failures.remember(key, n, text_size(key))
        hold = float(min(self.backoff * 2.0 ** (n - 1), MAX_BACKOFF))
        try:
            self.store.acquire(backoff_name(key), hold)
        except StoreError as exc:
            self._store_failed(exc)
        return hold
