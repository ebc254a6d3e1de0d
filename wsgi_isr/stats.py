"""Process-local counters and the regeneration-time histogram, for ``/status`` and
``/metrics`` (Prometheus text format)."""

from __future__ import annotations

import bisect
import os
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
    "data_hits",
    "data_stale",
    "data_misses",
    "data_refreshes_failed",
)
#: Upper bounds (seconds) of the regeneration duration histogram.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_STATE_COUNTERS = {
    "hit": "hits",
    "stale": "stale",
    "miss": "misses",
    "bypass": "bypasses",
    "pass": "passes",
}
_SIMPLE = (
    ("coalesced_waits", "coalesced", "Misses that waited for another request's render."),
    ("coalesce_timeouts", "coalesce_timeouts", "Waits that gave up and rendered alone."),
    ("invalidations", "invalidations", "Tags and paths invalidated through this process."),
    ("store_errors", "store_errors", "Store operations that failed (served by the app)."),
    ("data_hits", "data_hits", "Cached function calls answered from the store."),
    (
        "data_stale",
        "data_stale",
        "Cached function calls answered stale (refreshed in the background).",
    ),
    (
        "data_misses",
        "data_misses",
        "Cached function calls that ran the function in the foreground.",
    ),
    ("data_refreshes_failed", "data_refreshes_failed", "Background data refreshes that raised."),
)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._duration_sum = 0.0

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def observe_regeneration(self, seconds: float) -> None:
        with self._lock:
            self._buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._duration_sum += seconds

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def prometheus(self) -> str:
        """The counters in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            values = dict(self._values)
            buckets = list(self._buckets)
            total = self._duration_sum
        pid = f'pid="{os.getpid()}"'
        out = [
            "# HELP wsgi_isr_requests_total GET/HEAD requests by cache state.",
            "# TYPE wsgi_isr_requests_total counter",
        ]
        for state, counter in _STATE_COUNTERS.items():
            out.append(f'wsgi_isr_requests_total{{{pid},state="{state}"}} {values[counter]}')
        out += [
            "# HELP wsgi_isr_regenerations_total Background regenerations by result.",
            "# TYPE wsgi_isr_regenerations_total counter",
        ]
        for result in ("started", "ok", "failed", "skipped"):
            count = values[f"regenerations_{result}"]
            out.append(f'wsgi_isr_regenerations_total{{{pid},result="{result}"}} {count}')
        for name, counter, help_text in _SIMPLE:
            out += [
                f"# HELP wsgi_isr_{name}_total {help_text}",
                f"# TYPE wsgi_isr_{name}_total counter",
                f"wsgi_isr_{name}_total{{{pid}}} {values[counter]}",
            ]
        hist = "wsgi_isr_regeneration_duration_seconds"
        out += [
            f"# HELP {hist} Time to render a page in the background.",
            f"# TYPE {hist} histogram",
        ]
        cumulative = 0
        for bound, n in zip((*BUCKETS, None), buckets, strict=True):
            cumulative += n
            le = "+Inf" if bound is None else f"{bound:g}"
            out.append(f'{hist}_bucket{{{pid},le="{le}"}} {cumulative}')
        out.append(f"{hist}_sum{{{pid}}} {total}")
        out.append(f"{hist}_count{{{pid}}} {cumulative}")
        return "\n".join(out) + "\n"
