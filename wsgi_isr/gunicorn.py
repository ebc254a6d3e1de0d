"""Gunicorn hooks: let background regenerations finish when a worker stops, and keep
the metrics of every worker in one place.

A worker stops on ``SIGTERM``, on a ``max_requests`` restart, or on ``HUP``; without
this hook a regeneration in flight is simply lost (its lock then expires by TTL and
another worker redoes it). Put this in your ``gunicorn.conf.py``::

    from wsgi_isr.gunicorn import worker_exit  # noqa: F401

    graceful_timeout = 30   # regenerations get most of it

With ``PROMETHEUS_MULTIPROC_DIR`` set in gunicorn's environment, ``/_isr/metrics``
sums every worker (``prometheus_client`` multiprocess mode); add the two other hooks::

    from wsgi_isr.gunicorn import child_exit, on_starting, worker_exit  # noqa: F401
"""

from __future__ import annotations

import glob
import logging
import os
import time
from typing import Any

from .invalidation import instances
from .purge.queue import exit_by
from .stats import multiprocess_dir

log = logging.getLogger("wsgi_isr")


def finish_regenerations(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds in all for every middleware of this process."""
    deadline = time.monotonic() + timeout
    done = True
    for mw in list(instances):
        done = mw.join(max(0.0, deadline - time.monotonic())) and done
    return done


def worker_exit(server: Any, worker: Any) -> None:
    """Gunicorn ``worker_exit`` hook: use most of ``graceful_timeout`` to finish (the
    regenerations, then the purges of the caches in front; the process's exit waits no
    longer for them, or the master would kill it first)."""
    timeout = float(getattr(getattr(worker, "cfg", None), "graceful_timeout", 30)) * 0.8
    exit_by(time.monotonic() + timeout)
    if not finish_regenerations(timeout):
        log.warning("wsgi_isr: worker exiting with regenerations still running")


def on_starting(server: Any) -> None:
    """Gunicorn ``on_starting`` hook: clear the metric files of a previous run from
    ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client asks for a wiped directory)."""
    path = multiprocess_dir()
    if path is None:
        return
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def child_exit(server: Any, worker: Any) -> None:
    """Gunicorn ``child_exit`` hook: tell prometheus_client a worker is gone (its
    counts stay in the totals; its live gauges are dropped)."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
