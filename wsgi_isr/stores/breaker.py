"""A circuit breaker in front of a remote store: a hung server costs a few requests
the socket timeout, not every request.

A Redis server that hangs (stopped, swapping, a network black hole) still accepts
connections, and every command waits for the socket timeout. After ``threshold``
timeouts in a row the breaker opens: commands are refused at once (the middleware
fails open, the revalidation endpoint answers 503) for ``first`` seconds, doubling
at each further timeout up to ``longest``. When the interval ends one command goes
through as a probe (the others are still refused while it runs); its success closes
the breaker, and caching resumes by itself.

A timeout also holds back the thread (the greenlet, under gevent) that waited for it:
its further commands for the next ``probe_window`` seconds are refused at once, so one
request costs one socket timeout, not one per command it still had to send (the lookup,
then the write and the unlock of its render) before the breaker opened.

    breaker = Breaker(is_timeout=lambda exc: isinstance(exc, redis.TimeoutError))
    client = guarded(redis.Redis(...), breaker)   # every command passes the breaker
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..forks import generation

log = logging.getLogger("wsgi_isr")
T = TypeVar("T")

#: Commands that never pass the breaker (they do no I/O, or must always run).
_UNGUARDED = frozenset({"close", "pubsub", "get_encoder", "connection_pool"})


class BreakerOpen(Exception):
    """Raised instead of sending a command while the breaker is open."""


class Breaker:
    """Counts timeouts in a row; open means "do not even ask"."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        first: float = 0.5,
        longest: float = 5.0,
        probe_window: float = 2.0,
        is_timeout: Callable[[BaseException], bool] = lambda exc: isinstance(exc, TimeoutError),
        slow: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.first = first
        self.longest = longest
        self.probe_window = probe_window  # how long a probe may take (the socket timeout)
        self.is_timeout = is_timeout
        # a failure of any kind that took this long counts as a timeout: what was waited
        # for is what the breaker saves (Sentinels that all hang answer "no primary")
        self.slow = slow
        self.monotonic = monotonic
        self.streak = 0  # timeouts in a row
        self.skipped = 0  # commands refused while open
        self._interval = first
        self._open_until = 0.0
        self._probe_until = 0.0
        # per thread: until when its commands are refused after one of them timed out.
        # Made on first use in each process, so after gevent patched threading: per
        # greenlet under gunicorn -k gevent, --preload or not
        self._waited: tuple[int, threading.local] | None = None

    def _thread_state(self) -> threading.local:
        waited = self._waited
        if waited is None or waited[0] != generation():
            waited = self._waited = (generation(), threading.local())
        return waited[1]

    @property
    def open(self) -> bool:
        return self.streak >= self.threshold

    def check(self) -> None:
        """Raise :class:`BreakerOpen` unless a command may be sent now."""
        if self.streak == 0:
            return
        now = self.monotonic()
        if getattr(self._thread_state(), "until", 0.0) > now:
            self.skipped += 1
            raise BreakerOpen("skipped: this thread's last command timed out")
        if self.streak < self.threshold:
            return
        if now < self._open_until or now < self._probe_until:
            self.skipped += 1
            raise BreakerOpen(
                f"skipped: the server timed out {self.streak} times in a row (circuit open)"
            )
        self._probe_until = now + self.probe_window  # this one is the probe

    def succeeded(self) -> None:
        if self.streak:
            if self.streak >= self.threshold:
                log.warning("wsgi_isr: the store answers again; circuit closed")
            self.streak, self._interval, self._probe_until = 0, self.first, 0.0

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` as one command to the server: skipped while the
        circuit is open (:class:`BreakerOpen`), its outcome counted."""
        self.check()
        started = self.monotonic() if self.slow is not None else 0.0
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            slow = self.slow is not None and self.monotonic() - started >= self.slow
            self.failed(exc, slow)
            raise
        self.succeeded()
        return result

    def failed(self, exc: BaseException, slow: bool = False) -> None:
        if not (slow or self.is_timeout(exc)):
            return  # refused, reset, an error reply: answered at once, nothing to save
        self._thread_state().until = self.monotonic() + self.probe_window
        self.streak += 1
        if self.streak >= self.threshold:
            self._open_until = self.monotonic() + self._interval
            self._probe_until = 0.0
            log.warning(
                "wsgi_isr: the store timed out %d times in a row; not asking it for %g s",
                self.streak,
                self._interval,
            )
            self._interval = min(self._interval * 2, self.longest)


class _Guarded:
    """``client`` with every command passed through ``breaker``."""

    def __init__(self, client: Any, breaker: Breaker) -> None:
        self._client = client
        self._breaker = breaker

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name in _UNGUARDED or name.startswith("_") or not callable(attr):
            return attr
        call = self._breaker.call

        def command(*args: Any, **kwargs: Any) -> Any:
            return call(attr, *args, **kwargs)

        self.__dict__[name] = command  # made once per command name
        return command

    def register_script(self, script: str) -> Any:
        """A script whose calls (``EVALSHA``, ``SCRIPT LOAD``) go through the breaker."""
        from redis.commands.core import Script

        return Script(self, script)  # type: ignore[arg-type]  # it only calls commands

    def __repr__(self) -> str:
        return repr(self._client)


def guarded(client: Any, breaker: Breaker) -> Any:
    """``client`` (a redis-py client) with every command passed through ``breaker``;
    scripts registered on the result are guarded too."""
    return _Guarded(client, breaker)
