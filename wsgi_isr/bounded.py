"""An in-process mapping bounded in entries *and* bytes, O(1) per operation.

Used for the memory store, the local layer and the per-key memos: whatever a visitor
can make long (hosts, paths, queries, bodies) must not grow a process without bound.

    lru = ByteLRU(max_entries=4096, max_bytes=8 << 20)
    lru.set("k", value, size=len(value))
    lru.get("k")   # value, or None; least recently used entries go first
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(value: str | int) -> int:
    """Bytes from ``2GB``, ``512MiB``, ``100k`` or a plain number (``KB`` = 1000, ``KiB`` = 1024).

    >>> parse_size("2GB"), parse_size("1KiB"), parse_size(42)
    (2000000000, 1024, 42)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value!r}")
        return value
    m = _SIZE_RE.fullmatch(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (expected e.g. 500MB, 2GB, 1GiB or bytes)")
    unit = (m.group(2) or "").lower()
    binary = "i" in unit
    letter = unit.rstrip("b").rstrip("i")
    factor = 1024 ** " kmgt".index(letter) if binary and letter else _UNITS[letter]
    return int(float(m.group(1)) * factor)


def text_size(*parts: Any) -> int:
    """A rough count of the bytes a tuple of strings keeps alive (object overhead included)."""
    return sum(len(p) + 50 for p in parts if isinstance(p, str | bytes)) + 64


class ByteLRU(Generic[V]):
    """Least-recently-used mapping of at most ``max_entries`` items and ``max_bytes``
    (as the caller sizes them). Thread-safe for string (or tuple of string) keys. ``0`` for
    either bound means unbounded.
    An item larger than ``max_bytes`` on its own is not kept (``set`` returns False)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 0 (0: unbounded)")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Any, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Any]:
        """The keys, least recently used first (a snapshot: safe while others write)."""
        return iter(list(self._items))

    def get(self, key: Any) -> V | None:
        # no lock (a hit's only access): ``get`` and ``move_to_end`` are each one atomic
        # step for string keys under the GIL, and the byte count they do not touch is
        # what the lock guards; an item popped between the two was simply just removed
        items = self._items
        held = items.get(key)
        if held is None:
            return None
        try:  # noqa: SIM105 (contextlib.suppress would cost more than the lookup)
            items.move_to_end(key)
        except KeyError:
            pass
        return held[0]

    def set(self, key: Any, value: V, size: int) -> bool:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if self.max_bytes and size > self.max_bytes:
                return False
            self._items[key] = (value, size)
            self.bytes += size
            while (self.max_entries and len(self._items) > self.max_entries) or (
                self.max_bytes and self.bytes > self.max_bytes
            ):
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped
            return True

    def pop(self, key: Any) -> V | None:
        with self._lock:
            held = self._items.pop(key, None)
            if held is None:
                return None
            self.bytes -= held[1]
            return held[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


class Memo(dict[K, V]):
    """A dict for memoisation, emptied when it holds ``max_entries`` items or about
    ``max_bytes`` (as :meth:`remember` is told): no lock and no bookkeeping on a hit,
    and a visitor who sends long hosts or queries cannot grow it without bound."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0

    def remember(self, key: K, value: V, size: int) -> None:
        if len(self) >= self.max_entries or self.bytes + size > self.max_bytes:
            self.clear()
            self.bytes = 0
        self[key] = value
        self.bytes += size
