"""Counters and the regeneration-time histogram, for ``/status`` and ``/metrics``.

``/metrics`` is produced by :mod:`prometheus_client`. By default every middleware has
its own registry and a scrape shows the counts of the process that answered it. With
``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts, as
:mod:`prometheus_client.multiprocess` requires), the metrics of every process are
written to that directory and one scrape, through any worker, gives the deployment's
totals; :func:`wsgi_isr.gunicorn.child_exit` marks a stopped worker dead::

    # gunicorn.conf.py
    from wsgi_isr.gunicorn import child_exit, on_starting, worker_exit  # noqa: F401

Adding a counter is one line in :data:`METRICS`; then ``stats.count("name", **labels)``.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

#: Counter ``wsgi_isr_<name>_total`` -> (help, label names). Add a line to add a counter.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "requests": ("GET/HEAD requests by cache state.", ("state",)),
    "regenerations": ("Background regenerations by result.", ("result",)),
    "coalesced_waits": ("Misses that waited for another request's render.", ()),
    "coalesce_timeouts": ("Waits that gave up and rendered alone.", ()),
    "invalidations": ("Tags and paths invalidated through this process.", ()),
    "store_errors": ("Store operations that failed (served by the app).", ()),
    "data_calls": ("Cached function calls by state.", ("state",)),
    "purges": ("Purge calls to CDNs and caches in front, by result.", ("target", "result")),
    "data_refreshes_failed": ("Background data refreshes that raised.", ()),
}
#: The names ``/status`` reports (and :meth:`Stats.incr` takes) -> (metric, labels).
COUNTERS: dict[str, tuple[str, dict[str, str]]] = {
    "hits": ("requests", {"state": "hit"}),
    "stale": ("requests", {"state": "stale"}),
    "misses": ("requests", {"state": "miss"}),
    "bypasses": ("requests", {"state": "bypass"}),
    "passes": ("requests", {"state": "pass"}),
    "coalesced": ("coalesced_waits", {}),
    "coalesce_timeouts": ("coalesce_timeouts", {}),
    "regenerations_started": ("regenerations", {"result": "started"}),
    "regenerations_ok": ("regenerations", {"result": "ok"}),
    "regenerations_failed": ("regenerations", {"result": "failed"}),
    "regenerations_skipped": ("regenerations", {"result": "skipped"}),
    "invalidations": ("invalidations", {}),
    "store_errors": ("store_errors", {}),
    "data_hits": ("data_calls", {"state": "hit"}),
    "data_stale": ("data_calls", {"state": "stale"}),
    "data_misses": ("data_calls", {"state": "miss"}),
    "data_refreshes_failed": ("data_refreshes_failed", {}),
}
#: Upper bounds (seconds) of the regeneration duration histogram.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HISTOGRAM = "wsgi_isr_regeneration_duration_seconds"


def multiprocess_dir() -> str | None:
    """The directory shared by the processes of a deployment, when one is configured."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _Metrics:
    """The prometheus_client objects: per middleware, or (multiprocess) per process."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.counters: dict[str, Counter] = {
            name: Counter(f"wsgi_isr_{name}", help_text, labels, registry=registry)
            for name, (help_text, labels) in METRICS.items()
        }
        self.histogram = Histogram(
            HISTOGRAM, "Time to render a page in the background.", buckets=BUCKETS,
            registry=registry,
        )  # fmt: skip


_shared: _Metrics | None = None
_shared_lock = threading.Lock()


def _process_metrics() -> _Metrics:
    # in multiprocess mode a value lives in a per-process file keyed by its name: two
    # objects for one name in one process would overwrite each other's counts
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = _Metrics(registry=None)
        return _shared


class Stats:
    """The counters of one middleware: ``/status`` reads :meth:`snapshot` (this
    middleware, this process), ``/metrics`` :meth:`prometheus`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # a hit costs a few µs: counting takes no lock. ``next()`` on an itertools.count
        # is one atomic step under the GIL; reading one advances it too, so each counter
        # also remembers how often it was read (reads take the lock, in turn)
        self._counts = {name: itertools.count() for name in COUNTERS}
        self._reads = dict.fromkeys(COUNTERS, 0)
        self._multiprocess = multiprocess_dir() is not None
        if self._multiprocess:
            self._registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(self._registry)  # type: ignore[no-untyped-call]
            self._metrics = _process_metrics()
        else:
            self._registry = CollectorRegistry()
            self._metrics = _Metrics(self._registry)
        # resolved once: a label lookup per request would cost more than the count
        self._children: dict[str, Any] = {}
        for name, (metric, labels) in COUNTERS.items():
            counter = self._metrics.counters[metric]
            self._children[name] = counter.labels(**labels) if labels else counter
        # what the prometheus counters were last told (single-process mode: they are
        # brought up to date at each scrape, not on every request — a hit is a few µs,
        # and prometheus_client's lock and float add were a fifth of it)
        self._exported = dict.fromkeys(COUNTERS, 0)

    def incr(self, name: str, n: int = 1) -> None:
        count = self._counts[name]
        if n == 1:
            next(count)
        else:
            for _ in range(n):
                next(count)
        if self._multiprocess:  # other processes' scrapes read this one's file
            self._children[name].inc(n)

    def counter(self, name: str) -> Callable[[], object]:
        """``incr(name)`` as one call for the hottest counters (a C call, unless other
        processes' scrapes read this one's file)."""
        if self._multiprocess:
            return functools.partial(self.incr, name)
        return functools.partial(next, self._counts[name])

    def count(self, metric: str, n: float = 1, **labels: str) -> None:
        """Add ``n`` to the counter ``wsgi_isr_<metric>_total`` with these labels."""
        counter = self._metrics.counters[metric]
        (counter.labels(**labels) if labels else counter).inc(n)

    def observe_regeneration(self, seconds: float) -> None:
        self._metrics.histogram.observe(seconds)

    def _read(self, name: str) -> int:
        # with the lock held
        value = next(self._counts[name]) - self._reads[name]
        self._reads[name] += 1
        return value

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: self._read(name) for name in COUNTERS}

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._read(name)

    def prometheus(self) -> str:
        """The metrics in the Prometheus text exposition format (version 0.0.4): this
        middleware's, or with ``PROMETHEUS_MULTIPROC_DIR`` every process's, summed."""
        if not self._multiprocess:
            with self._lock:
                for name in COUNTERS:
                    value = self._read(name)
                    delta = value - self._exported[name]
                    if delta:
                        self._children[name].inc(delta)
                        self._exported[name] = value
        return generate_latest(self._registry).decode()
