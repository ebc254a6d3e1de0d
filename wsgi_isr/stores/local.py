"""An in-process layer in front of a shared store: hits without a round trip.

    store = LocalLayer(RedisStore("redis://10.0.0.5:6379/0"), ttl=1.0)
    # or: ISRMiddleware(app, store="redis://...", local_ttl=1.0)

A record is kept in process for ``ttl`` seconds. Tag state still comes from the
backend: every invalidation is announced over Redis pub/sub, and each process
catches up with the backend's tag state when it hears one — a hint only; the
layer's short TTL bounds what a lost message can cost. The middleware only
trusts a local copy that it classifies FRESH; anything else is looked up again
in the backend (:meth:`LocalLayer.lookup_through`), so a copy made stale by a
regeneration in another process never causes a second regeneration.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping

from ..bounded import ByteLRU, parse_size
from ..entry import Entry, PassMarker, Record, TagState
from ..errors import StoreError
from ..forks import generation
from ..responses import prepared
from .base import Store
from .memory import held_size


class LocalLayer(Store):
    """Pages, Vary markers and cached function results in a :class:`ByteLRU` of
    ``max_entries`` and ``max_bytes``; misses and hit-for-pass markers in a small one of
    their own (``max_markers``), so URLs that do not opt in never push pages out."""

    def __init__(
        self,
        backend: Store,
        *,
        ttl: float = 1.0,
        max_entries: int = 10_000,
        max_bytes: int | str = 64 << 20,
        max_markers: int = 1_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=backend.clock)
        if ttl <= 0 or max_entries <= 0 or max_markers <= 0:
            raise ValueError("local layer ttl, max_entries and max_markers must be positive")
        self.backend = backend
        self.ttl = ttl
        self.max_entries = max_entries
        self.monotonic = monotonic
        self.description = f"{backend.description} + local layer (ttl {ttl:g} s)"
        self._pages: ByteLRU[tuple[Record | None, float]] = ByteLRU(
            max_entries, parse_size(max_bytes)
        )
        self._others: ByteLRU[tuple[Record | None, float]] = ByteLRU(max_markers, 0)
        self._subscribed_in = -1  # the fork that subscribed
        self.landing_poll = backend.landing_poll
        self.now = backend.now  # type: ignore[method-assign]

    def now(self) -> float:  # shadowed in __init__ by the backend's own, one call less a hit
        return self.backend.now()

    def _on_invalidation(self) -> None:
        sync = getattr(self.backend, "sync_tags", None)
        if sync is not None:
            with contextlib.suppress(StoreError):  # the TTL bounds a missed update's cost
                sync()

    def lookup(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        if self._subscribed_in != generation():  # per process: threads do not survive fork
            self._subscribed_in = generation()
            self.backend.subscribe(self._on_invalidation)
        held = self._pages.get(key) or self._others.get(key)
        if held is not None and held[1] > self.monotonic():
            return held[0], self.backend.known_tag_states()
        return self.lookup_through(key)

    def lookup_through(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        """Look ``key`` up in the backend and refresh the local copy."""
        record, tags = self.backend.lookup(key)
        self._remember(key, record)
        return record, tags

    def _remember(self, key: str, record: Record | None) -> None:
        held = (record, self.monotonic() + self.ttl)
        if isinstance(record, Entry):
            prepared(record)  # what its hits send, built now, not by the first hit
        # misses and hit-for-pass markers on a small budget of their own; every other
        # record (pages, Vary markers, cached function results) bounded in bytes
        lru, other = self._pages, self._others
        if record is None or isinstance(record, PassMarker):
            lru, other = other, lru
        other.pop(key)
        lru.set(key, held, held_size(key, record))

    def forget(self, key: str) -> None:
        self._pages.pop(key)
        self._others.pop(key)

    def put(self, key: str, record: Record, ttl: float | None) -> None:
        self.forget(key)
        self.backend.put(key, record, ttl)
        self._remember(key, record)

    def delete(self, key: str) -> None:
        self.forget(key)
        self.backend.delete(key)

    def tag_states(self, tags: Iterable[str]) -> dict[str, TagState]:
        return self.backend.tag_states(tags)

    def known_tag_states(self) -> Mapping[str, TagState]:
        return self.backend.known_tag_states()

    def invalidate(self, tags: Iterable[str], at: float | None = None, *, hard: bool) -> float:
        at = self.backend.invalidate(tags, at, hard=hard)
        self._on_invalidation()
        return at

    def acquire(self, name: str, ttl: float) -> str | None:
        return self.backend.acquire(name, ttl)

    def acquire_stamped(self, name: str, ttl: float) -> tuple[str, float] | None:
        return self.backend.acquire_stamped(name, ttl)

    def stamp(self) -> float:
        return self.backend.stamp()

    def release(self, name: str, token: str) -> bool:
        return self.backend.release(name, token)

    def extend(self, name: str, token: str, ttl: float) -> bool:
        return self.backend.extend(name, token, ttl)

    def announce_landing(self, key: str) -> None:
        self.backend.announce_landing(key)

    def watch_landings(self, callback: Callable[[str], None]) -> bool:
        return self.backend.watch_landings(callback)

    def count(self) -> int | None:
        return self.backend.count()

    def close(self) -> None:
        self.backend.close()
