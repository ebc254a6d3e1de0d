"""The contract every store implements.

A store keeps three things: records (cached pages and markers) under cache
keys, the invalidation state of tags, and short-lived locks. It never decides
freshness — the middleware does, from the record and the tag states the store
hands back. Errors from the backend are raised as :class:`~wsgi_isr.errors.StoreError`.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Iterable, Mapping

from ..entry import Record, TagState


class Store(abc.ABC):
    """Base class of the stores. Subclasses implement the abstract methods."""

    #: Human-readable description for ``/status`` (never contains a password).
    description: str = "store"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def now(self) -> float:
        """The store's clock, used for render-start and invalidation timestamps.

        Stores shared by several hosts may override it with one clock for
        the whole cluster.
        """
        return self.clock()

    @abc.abstractmethod
    def lookup(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        """Return the record under ``key`` (``None`` if absent or unreadable)
        and the tag states as they were when the record was read.

        The mapping holds only tags that were ever invalidated; it must not be
        mutated by the caller.
        """

    def lookup_through(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        """Like :meth:`lookup`, but past any in-process copy: what the shared backend
        holds right now. The same as :meth:`lookup` for stores without such copies."""
        return self.lookup(key)

    @abc.abstractmethod
    def put(self, key: str, record: Record, ttl: float | None) -> None:
        """Store ``record`` under ``key``, replacing any previous one atomically.

        ``ttl`` is how long the backend may keep it (``None``: as long as it
        likes); freshness is not the store's business.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""

    @abc.abstractmethod
    def tag_states(self, tags: Iterable[str]) -> dict[str, TagState]:
        """Current state of the given tags (absent tags are left out)."""

    @abc.abstractmethod
    def invalidate(self, tags: Iterable[str], at: float | None = None, *, hard: bool) -> float:
        """Record that ``tags`` were invalidated at ``at`` and return the time recorded.

        ``at=None`` (what the middleware passes): the store stamps the invalidation
        with its own clock at the moment it records it — for a store shared by
        several hosts, the one clock that also stamps :meth:`acquire_stamped`, so
        the store's own order of the two decides which render is stale.
        Soft sets ``stale_at``, hard sets both ``stale_at`` and ``expired_at``.
        Timestamps only move forward. Tag state is never evicted.
        """

    @abc.abstractmethod
    def acquire(self, name: str, ttl: float) -> str | None:
        """Take the lock ``name`` for ``ttl`` seconds. Return a token, or ``None``
        if someone else holds it. Atomic across every process sharing the store."""

    def acquire_stamped(self, name: str, ttl: float) -> tuple[str, float] | None:
        """:meth:`acquire`, and the store-clock time the lock was taken: a render done
        under the lock counts as started then (compared with the times
        :meth:`invalidate` records). ``None`` if someone else holds the lock.

        Stores whose :meth:`now` is the clock :meth:`invalidate` stamps with need
        not override this; a store shared by hosts takes both in one step.
        """
        token = self.acquire(name, ttl)
        return None if token is None else (token, self.now())

    def stamp(self) -> float:
        """The store-clock time right now, as :meth:`invalidate` would record it (one
        round trip for a remote store; :meth:`now` may be an estimate)."""
        return self.now()

    @abc.abstractmethod
    def release(self, name: str, token: str) -> bool:
        """Release the lock if ``token`` still owns it; return whether it did."""

    @abc.abstractmethod
    def extend(self, name: str, token: str, ttl: float) -> bool:
        """Keep the lock for ``ttl`` more seconds from now if ``token`` owns it."""

    @abc.abstractmethod
    def known_tag_states(self) -> Mapping[str, TagState]:
        """Every tag state as this process last saw it, with as little I/O as the
        backend allows (a local layer in front uses it on its hits)."""

    def subscribe(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` whenever any process sharing the store invalidates tags.

        Returns False if the backend has no way to tell (the default); a hint only,
        correctness never depends on it.
        """
        return False

    #: The longest pause between two looks of a miss waiting for another process' render
    #: (the fallback when no wake-up comes; see :meth:`watch_landings`).
    landing_poll: float = 0.1

    def announce_landing(self, key: str) -> None:
        """Tell the misses waiting for ``key`` in other processes that its render
        landed (stored, refused or failed). A hint; the default does nothing."""
        return None

    def watch_landings(self, callback: Callable[[str], None]) -> bool:
        """Call ``callback(key)`` when another process announces a landing. False if
        the backend cannot tell (the default): waiters then look every
        :attr:`landing_poll` seconds at most."""
        return False

    def count(self) -> int | None:
        """Number of cached records, or ``None`` if the backend cannot tell cheaply."""
        return None

    def close(self) -> None:
        """Release resources (connections, file handles)."""
        return None


#: The longest a backend keeps a record (a year). Records without an expiry of their own
#: get it too, so eviction policies see a TTL on every record and never touch tag state.
MAX_RECORD_TTL = 365 * 24 * 3600


def record_ttl(ttl: float | None) -> int:
    """Whole seconds a backend keeps a record: at least 1, at most :data:`MAX_RECORD_TTL`
    (``None`` and absurd values such as ``X-ISR-Expire: 1e308`` included)."""
    if ttl is None or not ttl < MAX_RECORD_TTL:
        return MAX_RECORD_TTL
    return max(1, math.ceil(ttl))


def merge_tag_state(old: TagState | None, at: float, hard: bool) -> TagState:
    """The state of a tag after an invalidation at ``at``: timestamps never go back."""
    stale, expired = old or (0.0, 0.0)
    stale = max(stale, at)
    if hard:
        expired = max(expired, at)
    return (stale, expired)


def new_token() -> str:
    import secrets

    return secrets.token_hex(16)
