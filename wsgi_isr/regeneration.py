"""Writing renders to the store, and regenerating stale pages in the background.

The :class:`Regenerator` decides nothing about freshness; it turns a captured
render into a stored entry (or a marker, or nothing), and runs regenerations
under the per-key render lock, holding the lock longer after a failure so the
next attempt is backed off.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import responses as R
from .bounded import Memo, text_size
from .entry import Entry, PassMarker, Record, VaryMarker
from .errors import StoreError
from .keys import RequestKey, path_tags, render_environ, variant_key
from .policy import Decision, decide, stored_headers
from .render import Captured, capture
from .runner import Runner
from .stats import Stats
from .stores import Store

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

log = logging.getLogger("wsgi_isr")

#: A refused opted-in answer (5xx, Set-Cookie, too large) is remembered only
#: briefly, so concurrent misses do not queue behind it and it is retried soon.
REFUSED_PASS_TTL = 1.0
MAX_BACKOFF = 300.0


def lock_name(key: str) -> str:
    return "render:" + key


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
    ) -> None:
        self.app = app
        self.store = store
        self.runner = runner
        self.stats = stats
        self.max_entry_bytes = max_entry_bytes
        self.lock_timeout = lock_timeout
        self.pass_ttl = pass_ttl
        self.backoff = backoff
        self._store_failed = on_store_error
        self._failures: Memo[str, int] = Memo(10_000, 4 << 20)  # bounded in bytes: keys can be long

    def unlock(self, lock: str, token: str, hold: float | None = None) -> None:
        try:
            if hold is None:
                self.store.release(lock, token)
            else:
                self.store.extend(lock, token, hold)
        except StoreError as exc:  # the lock's TTL frees it anyway
            self._store_failed(exc)

    def settle(
        self,
        environ: WSGIEnvironment | None,
        rk: RequestKey,
        key: str,
        vary: tuple[str, ...],
        captured: Captured,
        started: float,
        *,
        foreground: bool,
        decision: Decision | None = None,
    ) -> tuple[Entry | None, str]:
        """Store what a render produced, if it may be stored. Returns the entry
        (``None`` if nothing was stored) and the key it landed under."""
        if decision is None:
            decision = self.decide(captured)
        if not decision.store:
            if not captured.overflow and not decision.opted_in:
                self.put(key, PassMarker(decision.reason), self.pass_ttl)
            elif foreground:
                self.put(key, PassMarker(decision.reason), REFUSED_PASS_TTL)
            log.info("wsgi_isr: not storing %s: %s", key, decision.reason)
            return None, key
        if decision.vary != vary:
            # the page varies on request headers it was not keyed on yet: remember that,
            # and store this render only if it saw all of them (a foreground render with
            # the visitor's request at hand renders again, once)
            self.put(rk.key, VaryMarker(decision.vary) if decision.vary else None, None)
            if environ is None:
                return None, key
            key = variant_key(rk.key, decision.vary, environ) if decision.vary else rk.key
            captured.close()
            captured = capture(
                self.app, render_environ(rk, environ, decision.vary), self.max_entry_bytes
            )
            retry = self.settle(None, rk, key, decision.vary, captured, started, foreground=False)
            return retry
        newer = self._newer_entry(key, started)
        if newer is not None:  # a render that started later already landed: keep it
            return newer, key
        entry = self.entry(rk, captured, decision, started)
        ttl = None if decision.expire is None else decision.expire + 60
        if self.put(key, entry, ttl):
            return entry, key
        return None, key

    def _newer_entry(self, key: str, started: float) -> Entry | None:
        try:
            existing, _ = self.store.lookup_through(key)
        except StoreError:
            return None  # the write will tell
        if isinstance(existing, Entry) and existing.created > started:
            return existing
        return None

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
        self, rk: RequestKey, captured: Captured, decision: Decision, started: float
    ) -> Entry:
        body = captured.body()
        etags = [v for k, v in captured.headers if k.lower() == "etag"]
        lms = [v for k, v in captured.headers if k.lower() == "last-modified"]
        return Entry(
            status=captured.status,
            headers=stored_headers(captured.headers),
            body=body,
            created=float(started),
            revalidate=decision.revalidate,
            expire=decision.expire,
            tags=decision.tags + path_tags(rk.path),
            etag=etags[-1] if etags else R.make_etag(body),
            last_modified=lms[-1] if lms else R.last_modified(started),
        )

    def schedule(
        self,
        environ: WSGIEnvironment,
        rk: RequestKey,
        key: str,
        vary: tuple[str, ...],
        seen: float | None,
    ) -> None:
        """Start a background regeneration of ``key`` unless one is running somewhere, or
        a render newer than the one the visitor saw (created at ``seen``) has landed."""
        lock = lock_name(key)
        try:
            token = self.store.acquire(lock, self.lock_timeout)
        except StoreError as exc:
            self._store_failed(exc)
            return
        if token is None:
            return  # someone, somewhere, is already on it (or backing off)
        if self._newer_entry(key, -math.inf if seen is None else seen) is not None:
            self.unlock(lock, token)  # a regeneration finished between our read and now
            return
        env = render_environ(rk, environ, vary)
        if self.runner.submit(lambda: self.regenerate(rk, key, vary, env, lock, token)):
            self.stats.incr("regenerations_started")
        else:
            self.stats.incr("regenerations_skipped")
            self.unlock(lock, token)

    def regenerate(
        self,
        rk: RequestKey,
        key: str,
        vary: tuple[str, ...],
        env: dict[str, Any],
        lock: str,
        token: str,
    ) -> None:
        hold: float | None = None
        try:
            started = self.store.now()
            timer = time.monotonic()
            try:
                captured = capture(self.app, env, self.max_entry_bytes)
                self.stats.observe_regeneration(time.monotonic() - timer)
                if captured.overflow:
                    for _ in captured.rest or ():
                        pass
                    captured.close()
            except Exception:
                log.exception("wsgi_isr: regeneration of %s raised; keeping the stale page", key)
                hold = self.failed(key)
                return
            decision = self.decide(captured)
            if not self._still_ours(lock, token):
                # it ran past lock_timeout: another regeneration may have started since,
                # and this older render must not replace what that one stores
                log.warning("wsgi_isr: regeneration of %s outlived its lock; dropped", key)
                self.stats.incr("regenerations_failed")
                return
            if decision.store or not decision.opted_in:
                entry, _ = self.settle(
                    None, rk, key, vary, captured, started, foreground=False, decision=decision
                )
                if decision.store and entry is None:
                    log.warning("wsgi_isr: regeneration of %s could not be stored", key)
                    hold = self.failed(key)
                    return
                self._failures.pop(key, None)
                self.stats.incr("regenerations_ok")
            else:
                log.warning(
                    "wsgi_isr: regeneration of %s refused (%s); keeping the stale page",
                    key,
                    decision.reason,
                )
                hold = self.failed(key)
        finally:
            self.unlock(lock, token, hold)

    def _still_ours(self, lock: str, token: str) -> bool:
        try:
            return self.store.extend(lock, token, self.lock_timeout)
        except StoreError as exc:
            self._store_failed(exc)
            return False

    def failed(self, key: str) -> float:
        """Count a failed regeneration and return how long to hold the lock (backoff)."""
        self.stats.incr("regenerations_failed")
        n = self._failures.get(key, 0) + 1
        self._failures.remember(key, n, text_size(key))
        return float(min(self.backoff * 2.0 ** (n - 1), MAX_BACKOFF))
