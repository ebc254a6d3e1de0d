"""``memory://`` — a per-process store.

For tests and single-process servers: nothing is shared between workers.

    store = MemoryStore(max_entries=10_000, max_bytes="256MB")

Pages are kept as the immutable record objects (no encoding per hit) in a
:class:`~wsgi_isr.bounded.ByteLRU`; hit-for-pass markers in a second, small one, so a
flood of URLs that do not opt in never evicts a page. A user's cachelib
``SimpleCache`` may stand in for the page LRU (records are then kept as codec bytes).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any

from .. import codec
from ..bounded import ByteLRU, parse_size
from ..entry import DataEntry, Entry, PassMarker, Record, TagState
from ..responses import prepared
from .base import Store, merge_tag_state, new_token, record_ttl

#: What a holder keeps for an item beyond the record and its key: the ordered
#: dictionary's slot and link, the tuples the item is held in.
HELD_OVERHEAD = 300


def record_size(record: Record) -> int:
    """About how many bytes of memory ``record`` keeps alive in a process, the
    :class:`~wsgi_isr.responses.Prepared` answer its hits build included: an object's
    header, a string's 49 bytes (a JSON value's exact size: it may hold characters of 2
    or 4 bytes each), a tuple slot, the allocator's rounding. Checked against the
    process's resident set under churn (``tests/test_memory_bounds.py``)."""
    if isinstance(record, Entry):  # header values are Latin-1, tags ASCII: 1 byte a char
        # (sums of ``map(len)``: a file store's memo sizes every record it reads)
        headers, tags = record.headers, record.tags
        return (
            len(record.body)
            + sum(map(len, chain.from_iterable(headers)))
            + 180 * len(headers)
            # a tag also appears in the tag headers for the caches in front, when any
            + 2 * sum(map(len, tags))
            + 70 * len(tags)
            + len(record.status)
            + len(record.etag)
            + len(record.last_modified)
            + 1000
        )
    if isinstance(record, DataEntry):
        return sys.getsizeof(record.value) + sum(len(t) + 60 for t in record.tags) + 300
    if isinstance(record, PassMarker):
        return sys.getsizeof(record.reason) + 100
    return sum(len(h) + 70 for h in record.headers) + 200


def held_size(key: str, record: Record | None) -> int:
    """What every in-process byte bound counts for ``record`` held under ``key`` (the
    memory store, the local layer, the file store's memo)."""
    return len(key) + HELD_OVERHEAD + (0 if record is None else record_size(record))


class MemoryStore(Store):
    """Pages in a :class:`ByteLRU` bounded by ``max_entries`` and ``max_bytes``; markers
    in one bounded by ``max_markers``; tag state and locks in plain dictionaries (tag
    state is never pruned)."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int | str = 0,
        max_markers: int = 1_000,
        cache: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        if max_entries <= 0 or max_markers <= 0:
            raise ValueError("max_entries and max_markers must be positive")
        max_bytes = parse_size(max_bytes)
        self.cache = cache  # a user's SimpleCache, or None
        self.pages: ByteLRU[tuple[float, Record]] = ByteLRU(max_entries, max_bytes)
        self.passes: ByteLRU[tuple[float, Record]] = ByteLRU(max_markers, 0)
        self._tags: dict[str, TagState] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._mutex = threading.Lock()
        self._landing_watchers: list[Callable[[str], None]] = []
        bounds = f"max_entries={max_entries}" + (f", max_bytes={max_bytes}" if max_bytes else "")
        self.description = f"memory ({bounds})"

    def lookup(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        if self.cache is not None:
            return codec.loads(self.cache.get(key)), self._tags
        held = self.pages.get(key) or self.passes.get(key)
        # record TTLs in wall-clock seconds, as the other backends keep them
        if held is None or held[0] < time.time():
            return None, self._tags
        return held[1], self._tags

    def put(self, key: str, record: Record, ttl: float | None) -> None:
        if self.cache is not None:
            self.cache.set(key, codec.dumps(record), timeout=record_ttl(ttl))
            return
        held = (time.time() + record_ttl(ttl), record)
        lru, other = self.pages, self.passes
        if isinstance(record, PassMarker):
            lru, other = other, lru
        elif isinstance(record, Entry):
            prepared(record)  # what its hits send, built at write time, not by the first hit
        lru.set(key, held, held_size(key, record))
        other.pop(key)

    def delete(self, key: str) -> None:
        if self.cache is not None:
            self.cache.delete(key)
            return
        self.pages.pop(key)
        self.passes.pop(key)

    def tag_states(self, tags: Iterable[str]) -> dict[str, TagState]:
        return {t: self._tags[t] for t in tags if t in self._tags}

    def known_tag_states(self) -> Mapping[str, TagState]:
        return self._tags

    def invalidate(self, tags: Iterable[str], at: float | None = None, *, hard: bool) -> float:
        with self._mutex:
            if at is None:
                at = self.clock()
            for tag in tags:
                self._tags[tag] = merge_tag_state(self._tags.get(tag), at, hard)
            return at

    def acquire(self, name: str, ttl: float) -> str | None:
        now = self.clock()
        with self._mutex:
            held = self._locks.get(name)
            if held is not None and held[1] > now:
                return None
            token = new_token()
            self._locks[name] = (token, now + ttl)
            if len(self._locks) > 1024:
                self._locks = {k: v for k, v in self._locks.items() if v[1] > now}
            return token

    def release(self, name: str, token: str) -> bool:
        with self._mutex:
            held = self._locks.get(name)
            if held is None or held[0] != token:
                return False
            del self._locks[name]
            return True

    def extend(self, name: str, token: str, ttl: float) -> bool:
        with self._mutex:
            held = self._locks.get(name)
            now = self.clock()
            if held is None or held[0] != token or held[1] <= now:
                return False
            self._locks[name] = (token, now + ttl)
            return True

    def announce_landing(self, key: str) -> None:
        for callback in self._landing_watchers:  # every waiter is in this process
            callback(key)

    def watch_landings(self, callback: Callable[[str], None]) -> bool:
        if callback not in self._landing_watchers:
            self._landing_watchers = [*self._landing_watchers, callback]
        return True

    def count(self) -> int | None:
        if self.cache is not None:
            return len(getattr(self.cache, "_cache", ()))
        return len(self.pages) + len(self.passes)
