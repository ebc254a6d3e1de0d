"""``memory://`` — a per-process store on cachelib's ``SimpleCache``.

For tests and single-process servers: nothing is shared between workers.

    store = MemoryStore(max_entries=10_000)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cachelib import SimpleCache

from ..entry import DataEntry, Entry, PassMarker, Record, TagState, VaryMarker, decode, encode
from .base import Store, merge_tag_state, new_token, record_ttl


class _LRUCache(SimpleCache):
    """``SimpleCache`` whose pruning is O(1): it drops the least recently written
    records in order, where ``SimpleCache`` scans and sorts every record on each
    write once full (milliseconds at 10,000 entries, the whole worker blocked)."""

    def __init__(self, threshold: int) -> None:
        super().__init__(threshold=threshold, default_timeout=0)
        self._lru: OrderedDict[str, Any] = OrderedDict()
        self._cache = self._lru
        # records are immutable: keep the objects themselves, no pickling per hit
        self.serializer = _Identity()  # type: ignore[assignment]

    def set(self, key: str, value: Any, timeout: Any = None) -> bool:
        with self._lock:
            self._lru.pop(key, None)  # re-inserted at the end: most recently written
            self._lru[key] = (self._normalize_timeout(timeout), value)
            while len(self._lru) > self._threshold:
                self._lru.popitem(last=False)
            return True


class _Identity:
    """A cachelib serializer that stores objects as they are."""

    def dumps(self, value: Any) -> Any:
        return value

    def loads(self, value: Any) -> Any:
        return value


class MemoryStore(Store):
    """Records in a ``SimpleCache`` bounded by ``max_entries``; tag state and
    locks in plain dictionaries that are never pruned."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        cache: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.cache = cache if cache is not None else _LRUCache(max_entries)
        self._tags: dict[str, TagState] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._mutex = threading.Lock()
        self.description = f"memory (max_entries={max_entries})"

    def lookup(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        value = self.cache.get(key)
        if isinstance(value, Entry | PassMarker | VaryMarker | DataEntry):
            return value, self._tags
        return decode(value), self._tags  # a user's SimpleCache holds encoded records

    def put(self, key: str, record: Record, ttl: float | None) -> None:
        # never timeout 0: SimpleCache prunes "never expires" records first
        identity = isinstance(self.cache.serializer, _Identity)
        self.cache.set(key, record if identity else encode(record), timeout=record_ttl(ttl))

    def delete(self, key: str) -> None:
        self.cache.delete(key)

    def tag_states(self, tags: Iterable[str]) -> dict[str, TagState]:
        return {t: self._tags[t] for t in tags if t in self._tags}

    def known_tag_states(self) -> Mapping[str, TagState]:
        return self._tags

    def invalidate(self, tags: Iterable[str], at: float, *, hard: bool) -> None:
        with self._mutex:
            for tag in tags:
                self._tags[tag] = merge_tag_state(self._tags.get(tag), at, hard)

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

    def count(self) -> int | None:
        return len(getattr(self.cache, "_cache", ()))
