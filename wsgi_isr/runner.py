"""Where background regenerations run.

Under gevent (``gunicorn -k gevent`` patches the process) a greenlet pool; in an
unpatched process short-lived threads — a greenlet spawned in an unpatched
sync worker would never run. Both are bounded: when full, ``submit`` returns
False at once and the caller simply does not start the regeneration.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
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
    """One short-lived daemon thread per regeneration, at most ``max_pending`` at once.

    A thread per task rather than a fixed pool, so renders that hang (a data source
    without a timeout) cannot hold back other pages: a task stops counting towards
    ``max_pending`` after ``timeout`` seconds, though its thread runs on (Python cannot
    kill a thread) and whatever it renders that late is dropped by the regenerator.
    """

    def __init__(self, max_pending: int = 32, timeout: float = 60.0) -> None:
        self.max_pending = max_pending
        self.timeout = timeout
        self._ids = itertools.count()
        self._pid = 0
        self._forked()

    def _forked(self) -> threading.Condition:
        """This process' condition: a forked child starts afresh (its parent's threads
        did not come along, and must not count towards ``max_pending`` nor be joined)."""
        if self._pid != os.getpid():
            self._deadlines: dict[int, float] = {}
            self._cond = threading.Condition()
            self._pid = os.getpid()
        return self._cond

    def submit(self, task: Task) -> bool:
        with self._forked():
            now = time.monotonic()
            counted = sum(1 for d in self._deadlines.values() if d > now)
            if counted >= self.max_pending:
                return False
            task_id = next(self._ids)
            self._deadlines[task_id] = now + self.timeout
        try:
            threading.Thread(
                target=self._run, args=(task_id, task), name="wsgi_isr-regen", daemon=True
            ).start()
        except RuntimeError:  # interpreter shutting down, or no more threads
            self._done(task_id)
            return False
        return True

    def _run(self, task_id: int, task: Task) -> None:
        try:
            _run_logged(task)
        finally:
            self._done(task_id)

    def _done(self, task_id: int) -> None:
        with self._cond:
            self._deadlines.pop(task_id, None)
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._forked():
            while self._deadlines:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True


class GeventRunner:
    """A bounded ``gevent.pool.Pool``."""

    def __init__(self, max_pending: int = 32, timeout: float = 60.0) -> None:
        from gevent.pool import Pool

        self.max_pending = max_pending
        self.timeout = timeout
        self._pool = Pool(max_pending)

    def submit(self, task: Task) -> bool:
        if self._pool.full():
            return False
        self._pool.spawn(self._run, task)
        return True

    def _run(self, task: Task) -> None:
        import gevent

        # a render blocked on I/O past the timeout is interrupted there, freeing its slot
        try:
            with gevent.Timeout(self.timeout):
                _run_logged(task)
        except gevent.Timeout:
            log.warning("wsgi_isr: regeneration interrupted after %g s", self.timeout)

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
    """Chooses greenlets or threads at the first submit in each process, after the
    server had its chance to monkey-patch (gunicorn's gevent worker patches after
    forking; under ``--preload`` the middleware is made in the unpatched master)."""

    def __init__(self, max_pending: int = 32, timeout: float = 60.0) -> None:
        if max_pending <= 0:
            raise ValueError("max_pending must be positive")
        self.max_pending = max_pending
        self.timeout = timeout
        self._runner: Runner | None = None
        self._pid = 0

    @property
    def runner(self) -> Runner:
        runner = self._runner
        if runner is None or self._pid != os.getpid():
            # no lock: two threads racing here at a process' first submit at worst make
            # a runner each, and one is forgotten with its task still running
            kind = GeventRunner if gevent_patched() else ThreadRunner
            runner = self._runner = kind(self.max_pending, self.timeout)
            self._pid = os.getpid()
        return runner

    def submit(self, task: Task) -> bool:
        return self.runner.submit(task)

    def join(self, timeout: float | None = None) -> bool:
        if self._runner is None or self._pid != os.getpid():
            return True
        return self._runner.join(timeout)
