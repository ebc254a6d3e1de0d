"""Sending purges in the background: one worker per target, bounded retries.

:meth:`PurgeQueue.submit` is called by the process that recorded an invalidation,
after the store recorded it. It only appends to an in-memory queue and returns:
the caller (a view, the revalidation endpoint, the CLI) never waits for a CDN.
Each target has its own worker thread (a greenlet under gevent's monkey-patching),
so a slow or failing CDN never delays another. Invalidations that queue up while a
call is in flight are merged into the next call (a hard purge of a key covers its
soft one), then cut into the target's batches.

A failed batch is retried ``retries`` times, waiting ``backoff`` seconds, doubled
each time (or what a 429 asked for), capped at ``max_backoff``. A batch that still
fails is dropped: the page at the origin is stale all the same, and the edge holds
it until its own TTL ends (cap that with ``cdn_max_age``). Failures are logged at
most once per ``log_interval`` per target and counted in
``wsgi_isr_purges_total{target,result}``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence

from ..forks import generation
from .base import PurgeError, Purger, edge_key

log = logging.getLogger("wsgi_isr")

#: ``result`` label values of ``wsgi_isr_purges_total``.
RESULTS = ("ok", "retried", "failed", "dropped")

#: Seconds a process that is exiting waits for the purges it queued (a CLI, a shell,
#: a cron script, a worker shutting down): the workers are daemon threads, and what
#: they had not sent would be lost with them, the CDN keeping the old page.
EXIT_WAIT = 30.0

_queues: weakref.WeakSet[PurgeQueue] = weakref.WeakSet()
_exit_deadline = [-1, math.inf]  # the fork generation that set it, and the deadline
_finalizing = [-1]  # the fork generation whose multiprocessing exit sends them too
_exited = [-1]  # the fork generation that ran the exit's wait (once: atexit or mp's)


def exit_by(deadline: float) -> None:
    """The process has to be gone by ``deadline`` (``time.monotonic()``): its exit waits
    for pending purges until then at most. gunicorn's ``worker_exit`` hook (which has
    waited for them already) sets it, or the master kills the worker at
    ``graceful_timeout``, before it could log what was not sent."""
    if _exit_deadline[0] != generation():  # not one inherited through fork
        _exit_deadline[:] = [generation(), math.inf]
    _exit_deadline[1] = min(_exit_deadline[1], deadline)


@atexit.register
def _send_pending_at_exit() -> None:
    if _exited[0] == generation():
        return
    _exited[0] = generation()
    deadline = time.monotonic() + EXIT_WAIT
    if _exit_deadline[0] == generation():
        deadline = min(deadline, _exit_deadline[1])
    for queue in list(_queues):
        if not queue.join(max(0.0, deadline - time.monotonic())):
            log.warning(
                "wsgi_isr: exiting with purges of %s not sent (the caches in front keep"
                " their copies until their TTL ends)",
                ", ".join(queue.descriptions),
            )


def _finalize_in_multiprocessing() -> None:
    """A ``multiprocessing`` child ends with ``os._exit``, past ``atexit``: send what it
    queued from multiprocessing's own exit finalizers too (registered in each process,
    as multiprocessing clears them in its children)."""
    if _finalizing[0] == generation() or "multiprocessing.util" not in sys.modules:
        return
    _finalizing[0] = generation()
    from multiprocessing import util

    util.Finalize(None, _send_pending_at_exit, exitpriority=100)


class _Worker:
    """The queue and thread of one target."""

    def __init__(self, owner: PurgeQueue, target: Purger) -> None:
        self.owner = owner
        self.target = target
        self.soft: dict[str, None] = {}  # ordered sets of keys waiting to be sent
        self.hard: dict[str, None] = {}
        self.busy = False
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        self.last_log = -float("inf")

    def _forked(self) -> None:
        """Start afresh in a forked child (gunicorn ``--preload``): threads do not survive
        fork, the parent sends what it queued, and a condition made before gevent's
        monkey-patching would block the whole worker."""
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.cond = threading.Condition()
            self.soft, self.hard, self.busy, self.thread = {}, {}, False, None

    def add(self, keys: Sequence[str], hard: bool) -> bool:
        self._forked()
        with self.cond:
            if len(self.soft) + len(self.hard) + len(keys) > self.owner.max_queued:
                return False
            into = self.hard if hard else self.soft
            for key in keys:
                into[key] = None
            self._ensure_thread()
            self.cond.notify()
        return True

    def _ensure_thread(self) -> None:
        if self.thread is None or not self.thread.is_alive():  # started on first use
            self.thread = threading.Thread(
                target=self._run, name=f"wsgi_isr purge {self.target.description}", daemon=True
            )
            self.thread.start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.soft and not self.hard:
                    self.busy = False
                    self.cond.notify_all()
                    self.cond.wait()
                hard, soft = list(self.hard), [k for k in self.soft if k not in self.hard]
                self.hard.clear()
                self.soft.clear()
                self.busy = True
            for keys, is_soft in ((hard, False), (soft, True)):
                for batch in self.target.batches(keys):
                    self._send(batch, is_soft)

    def _send(self, batch: list[str], soft: bool) -> None:
        owner = self.owner
        wait = owner.backoff
        for attempt in range(owner.retries + 1):
            try:
                self.target.purge(batch, soft=soft)
            except PurgeError as exc:
                last_try = attempt == owner.retries or not exc.retry
                self._failed(exc, len(batch), soft, last_try)
                if last_try:
                    return
                owner.count(self.target, "retried")
                owner.sleep(min(exc.retry_after or wait, owner.max_backoff))
                wait = min(wait * 2, owner.max_backoff)
                continue
            except Exception as exc:  # a bug in a custom Purger must not kill the worker
                self._failed(exc, len(batch), soft, True)
                return
            owner.count(self.target, "ok")
            return

    def _failed(self, exc: Exception, n: int, soft: bool, final: bool) -> None:
        if final:
            self.owner.count(self.target, "failed")
        now = time.monotonic()
        if final and now - self.last_log >= self.owner.log_interval:
            self.last_log = now
            log.error(
                "wsgi_isr: %s purge of %d keys at %s failed: %s (the origin is invalidated;"
                " the edge keeps its copy until its TTL ends)",
                "soft" if soft else "hard",
                n,
                self.target.description,
                exc,
            )

    def join(self, deadline: float) -> bool:
        self._forked()
        with self.cond:
            while self.busy or self.soft or self.hard:
                if self.thread is None or not self.thread.is_alive():
                    return not (self.soft or self.hard)
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True


class PurgeQueue:
    """Purges for a list of targets, sent in the background.

    :param targets: :class:`~wsgi_isr.purge.Purger` objects.
    :param retries: further attempts of a failed call (so ``retries + 1`` in all).
    :param backoff: first wait before a retry, doubled for each further one.
    :param max_backoff: longest wait between two attempts.
    :param max_queued: keys at most waiting per target; past it an invalidation is
        not sent to that target (counted as ``dropped``).
    :param log_interval: seconds between two failure logs of one target.
    :param sleep: how to wait between attempts (tests pass a fake).
    """

    def __init__(
        self,
        targets: Iterable[Purger],
        *,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_queued: int = 100_000,
        log_interval: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.targets = list(targets)
        for target in self.targets:
            if not isinstance(target, Purger):
                raise TypeError(f"purge targets must be Purger objects, got {target!r}")
        if retries < 0 or backoff < 0 or max_backoff < 0 or max_queued < 1:
            raise ValueError("retries, backoff and max_backoff must be >= 0, max_queued >= 1")
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_queued = int(max_queued)
        self.log_interval = float(log_interval)
        self.sleep = sleep
        self._workers = [_Worker(self, t) for t in self.targets]
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {
            (t.description, r): 0 for t in self.targets for r in RESULTS
        }
        #: Also told of every count: the middleware's metrics (``wsgi_isr_purges_total``,
        #: summed across workers in prometheus_client's multiprocess mode).
        self.on_count: Callable[[str, str], None] | None = None
        _queues.add(self)

    @property
    def descriptions(self) -> list[str]:
        """The targets as ``/status`` lists them (no tokens)."""
        return [t.description for t in self.targets]

    def submit(self, tags: Iterable[str], *, hard: bool) -> None:
        """Queue a purge of ``tags`` (the store's tags, implicit path tags included) on
        every target. Returns at once."""
        keys = list(dict.fromkeys(edge_key(t) for t in tags))
        if not keys:
            return
        _finalize_in_multiprocessing()
        for worker in self._workers:
            if not worker.add(keys, hard):
                self.count(worker.target, "dropped")
                log.warning(
                    "wsgi_isr: purge queue of %s is full; %d keys not sent",
                    worker.target.description,
                    len(keys),
                )

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every queued purge was sent or given up; True if none is left."""
        deadline = time.monotonic() + (3600.0 if timeout is None else timeout)
        return all([w.join(deadline) for w in self._workers])

    def count(self, target: Purger, result: str) -> None:
        with self._lock:
            key = (target.description, result)
            self._counts[key] = self._counts.get(key, 0) + 1
        if self.on_count is not None:
            self.on_count(target.description, result)

    def counts(self) -> dict[tuple[str, str], int]:
        """``(target, result) -> count`` for this process."""
        with self._lock:
            return dict(self._counts)
