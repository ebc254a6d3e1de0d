"""A circuit breaker in front of a remote store: a hung server costs a few requests
the socket timeout, not every request.

A Redis server that hangs (stopped, swapping, a network black hole) still accepts
connections, and every command waits for the socket timeout. After ``threshold``
timeouts in a row the breaker opens: commands are refused at once (the middleware
fails open, the revalidation endpoint answers 503) for ``first`` seconds, doubling
at each further timeout up to ``longest``. When the interval ends one command goes
through as a probe (the others are still refused while it runs); its success closes
the breaker, and caching resumes by itself.

Within one request (the middleware opens a block for each: :func:`new_block`), or one
block of work outside any (:func:`one_wait`: a regeneration, a cached call from a
script), once a command to a store timed out the block's later commands to that store
are refused at once for ``probe_window``: its visitor waits for one socket timeout, not
one each for the lookup, the write, the unlock and the landing. Outside any block (the
lease keeper, the pub/sub listener) nothing is held back but by the breaker itself.

    breaker = Breaker(is_timeout=lambda exc: isinstance(exc, redis.TimeoutError))
    client = guarded(redis.Redis(...), breaker)   # every command passes the breaker
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

log = logging.getLogger("wsgi_isr")
T = TypeVar("T")

#: Commands that never pass the breaker (they do no I/O, or must always run).
_UNGUARDED = frozenset({"close", "pubsub", "get_encoder", "connection_pool"})


class BreakerOpen(Exception):
    """Raised instead of sending a command while the breaker is open."""


#: The block running: breaker -> until when its commands are refused (a command to
#: its store timed out); ``None`` outside any block.
_block: ContextVar[dict[Breaker, float] | None] = ContextVar("wsgi_isr_block", default=None)


def new_block() -> None:
    """Start a block for the request beginning in this context (the middleware's first
    step, never undone: the next request on the thread, or greenlet, starts its own)."""
    _block.set({})


@contextlib.contextmanager
def one_wait(fresh: bool = False) -> Iterator[None]:
    """A block of work that waits for a hung store once (see the module). Inside another
    it is part of it (a cached call in a request); ``fresh``: a block of its own, for
    work started in a copy of a request's context (a background regeneration)."""
    if _block.get() is not None and not fresh:
        yield
        return
    token = _block.set({})
    try:
        yield
    finally:
        _block.reset(token)


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
        may_hang: Callable[[BaseException], bool] = lambda exc: isinstance(exc, OSError),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.first = first
        self.longest = longest
        self.probe_window = probe_window  # how long a probe may take (the socket timeout)
        self.is_timeout = is_timeout
        # a connection failure (``may_hang``) that took this long counts as a timeout:
        # what was waited for is what the breaker saves (Sentinels that all hang answer
        # "no primary found"); an error the store's own code raised after a wait it chose
        # (a durable invalidation's WAIT) does not
        self.slow = slow
        self.may_hang = may_hang
        self.monotonic = monotonic
        self.streak = 0  # timeouts in a row
        self.skipped = 0  # commands refused while open
        self._interval = first
        self._open_until = 0.0
        self._probe_until = 0.0

    @property
    def open(self) -> bool:
        return self.streak >= self.threshold

    def check(self) -> None:
        """Raise :class:`BreakerOpen` unless a command may be sent now."""
        block = _block.get()
        if block and block.get(self, 0.0) > self.monotonic():
            self.skipped += 1
            raise BreakerOpen("skipped: a command of this request timed out")
        if self.streak < self.threshold:
            return
        now = self.monotonic()
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
            slow = (
                self.slow is not None
                and self.monotonic() - started >= self.slow
                and self.may_hang(exc)
            )
            self.failed(exc, slow)
            raise
        self.succeeded()
        return result

    def failed(self, exc: BaseException, slow: bool = False) -> None:
        if not (slow or self.is_timeout(exc)):
            return  # refused, reset, an error reply: answered at once, nothing to save
        block = _block.get()
        if block is not None:
            block[self] = self.monotonic() + self.probe_window
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
