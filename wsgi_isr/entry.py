"""The values kept in a store: cached pages and the two markers.

An :class:`Entry` is immutable and carries everything the hit path needs,
precomputed when it was written (status line, header list, ETag), plus the
moment its render *started* — the reference point for time-based and
tag-based staleness. How records become bytes (versioned, never pickled) is
:mod:`wsgi_isr.codec`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any


class State(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    EXPIRED = "expired"


#: Per tag: ``(stale_at, expired_at)`` in store-clock seconds, 0.0 meaning "never".
TagState = tuple[float, float]


class Freshness:
    """Freshness of a stored value (a page or a cached function result): its fields
    ``created`` (when its render started), ``revalidate``, ``expire`` and ``tags``."""

    __slots__ = ()
    created: float
    revalidate: float | None
    expire: float | None
    tags: tuple[str, ...]

    def state(self, now: float, tag_states: Any, extra_tags: tuple[str, ...] = ()) -> State:
        """Classify the value at ``now`` given the store's tag states (a mapping);
        ``extra_tags`` are checked too (a cached function result read while a page
        renders: that page's implicit path tags, so ``revalidate_path`` reaches the
        data it used)."""
        created = self.created
        age = now - created
        if self.expire is not None and age >= self.expire:
            return State.EXPIRED
        stale = self.revalidate is not None and age >= self.revalidate
        tags = self.tags + extra_tags if extra_tags else self.tags
        # nearly always none of them was ever invalidated: one call (in C for a dict)
        # tells, instead of a lookup per tag
        if not tag_states or tag_states.keys().isdisjoint(tags):
            return State.STALE if stale else State.FRESH
        get = tag_states.get
        for tag in tags:
            st = get(tag)
            if st is None:
                continue
            if st[1] > created:
                return State.EXPIRED
            if st[0] > created:
                stale = True
        return State.STALE if stale else State.FRESH

    def remaining(self, now: float) -> float:
        """Seconds of freshness left by the clock (may be negative, ``inf`` for no limit)."""
        if self.revalidate is None:
            return math.inf
        return self.revalidate - (now - self.created)


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class Entry(Freshness):
    """A cached response.

    ``revalidate`` is ``None`` for "until invalidated" (``X-ISR-Revalidate: false``);
    ``expire`` is ``None`` when stale copies may be served forever.
    """

    status: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    created: float
    revalidate: float | None
    expire: float | None
    tags: tuple[str, ...]
    etag: str
    last_modified: str
    #: What serving it sends that never changes (:class:`wsgi_isr.responses.Prepared`),
    #: built by the first hit and kept as long as the entry is: not part of its value.
    prepared: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class PassMarker:
    """ "Hit-for-pass": this URL did not produce a cacheable response recently.

    While it lives, requests go straight to the application with their own
    environ and are not coalesced (Varnish's hit-for-pass object).
    """

    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class VaryMarker:
    """The response for this URL varies on these request headers (lower-case)."""

    headers: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class DataEntry(Freshness):
    """A cached function result (:mod:`wsgi_isr.datacache`): the value as canonical JSON
    text, with the same freshness fields as a page (``created`` is when the call started)."""

    value: str
    created: float
    revalidate: float | None
    expire: float | None
    tags: tuple[str, ...]


Record = Entry | PassMarker | VaryMarker | DataEntry
