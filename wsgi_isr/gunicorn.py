"""Gunicorn hooks: let background regenerations finish when a worker stops.

A worker stops on ``SIGTERM``, on a ``max_requests`` restart, or on ``HUP``; without
this hook a regeneration in flight is simply lost (its lock then expires by TTL and
another worker redoes it). Put this in your ``gunicorn.conf.py``::

    from wsgi_isr.gunicorn import worker_exit  # noqa: F401

    graceful_timeout = 30   # regenerations get most of it
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .invalidation import instances

log = logging.getLogger("wsgi_isr")


def finish_regenerations(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds in all for every middleware of this process."""
    deadline = time.monotonic() + timeout
    done = True
    for mw in list(instances):
        done = mw.join(max(0.0, deadline - time.monotonic())) and done
    return done


def worker_exit(server: Any, worker: Any) -> None:
    """Gunicorn ``worker_exit`` hook: use most of ``graceful_timeout`` to finish."""
    timeout = float(getattr(getattr(worker, "cfg", None), "graceful_timeout", 30)) * 0.8
    if not finish_regenerations(timeout):
        log.warning("wsgi_isr: worker exiting with regenerations still running")
