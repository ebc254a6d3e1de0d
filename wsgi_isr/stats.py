"""Process-local counters reported by ``/status``."""

from __future__ import annotations

import threading

COUNTERS = (
    "hits",
    "stale",
    "misses",
    "bypasses",
    "passes",
    "coalesced",
    "coalesce_timeouts",
    "regenerations_started",
    "regenerations_ok",
    "regenerations_failed",
    "regenerations_skipped",
    "invalidations",
    "store_errors",
)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def __getitem__(self, name: str) -> int:
        return self._values[name]
