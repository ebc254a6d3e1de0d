"""Where background regenerations run.

Under gevent (``gunicorn -k gevent`` patches the process) a greenlet pool; in an
unpatched process a bounded thread pool — a greenlet spawned in an unpatched
sync worker would never run. Both are bounded: when full, ``submit`` returns
False at once and the caller simply does not start the regeneration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

log = logging.getLogger("wsgi_isr")

Task = Callable[[], Any]


class Runner(Protocol):
    def submit(self, task: Task) -> bool:
        """Start ``task`` in the background; False (without blocking) if full."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait for pending tasks; True if none are left."""


def _run_logged(task: Task) -> None:
    try:
        task()
    except Exception:  # a task's failure must never kill the pool
        log.exception("wsgi_isr: background regeneration crashed")


class ThreadRunner:
    """A bounded pool of daemon-less worker threads."""

    def __init__(self, max_pending: int = 32, workers: int = 4) -> None:
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsgi_isr")
        self._pending = 0
        self._cond = threading.Condition()

    def submit(self, task: Task) -> bool:
        with self._cond:
            if self._pending >= self.max_pending:
                return False
            self._pending += 1
        try:
            self._executor.submit(self._run, task)
        except RuntimeError:  # interpreter shutting down
            self._done()
            return False
        return True

    def _run(self, task: Task) -> None:
        try:
            _run_logged(task)
        finally:
            self._done()

    def _done(self) -> None:
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True


class GeventRunner:
    """A bounded ``gevent.pool.Pool``."""

    def __init__(self, max_pending: int = 32) -> None:
        from gevent.pool import Pool

        self.max_pending = max_pending
        self._pool = Pool(max_pending)

    def submit(self, task: Task) -> bool:
        if self._pool.full():
            return False
        self._pool.spawn(_run_logged, task)
        return True

    def join(self, timeout: float | None = None) -> bool:
        self._pool.join(timeout=timeout)
        return len(self._pool) == 0


def gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is an install requirement
        return False
    return bool(monkey.is_module_patched("threading") or monkey.is_module_patched("socket"))


class AutoRunner:
    """Chooses greenlets or threads at the first submit, after the server had its
    chance to monkey-patch (gunicorn's gevent worker patches after forking)."""

    def __init__(self, max_pending: int = 32) -> None:
        if max_pending <= 0:
            raise ValueError("max_pending must be positive")
        self.max_pending = max_pending
        self._runner: Runner | None = None
        self._lock = threading.Lock()

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    self._runner = (
                        GeventRunner(self.max_pending)
                        if gevent_patched()
                        else ThreadRunner(self.max_pending)
                    )
        return self._runner

    def submit(self, task: Task) -> bool:
        return self.runner.submit(task)

    def join(self, timeout: float | None = None) -> bool:
        return True if self._runner is None else self._runner.join(timeout)
