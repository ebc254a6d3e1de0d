"""The values kept in a store: cached pages and the two markers.

An :class:`Entry` is immutable and carries everything the hit path needs,
precomputed when it was written (status line, header list, ETag), plus the
moment its render *started* — the reference point for time-based and
tag-based staleness. Records are encoded as tuples of builtin types with a
format version in front: a version mismatch or a malformed record is a miss,
never an exception.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

FORMAT_VERSION = 1

_ENTRY = "E"
_PASS = "P"
_VARY = "V"
_DATA = "D"


class State(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    EXPIRED = "expired"


#: Per tag: ``(stale_at, expired_at)`` in store-clock seconds, 0.0 meaning "never".
TagState = tuple[float, float]


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class Entry:
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

    def state(self, now: float, tag_states: Any) -> State:
        """Classify the entry at ``now`` given the store's tag states (a mapping)."""
        age = now - self.created
        if self.expire is not None and age >= self.expire:
            return State.EXPIRED
        stale = self.revalidate is not None and age >= self.revalidate
        get = tag_states.get
        for tag in self.tags:
            st = get(tag)
            if st is None:
                continue
            if st[1] > self.created:
                return State.EXPIRED
            if st[0] > self.created:
                stale = True
        return State.STALE if stale else State.FRESH

    def remaining(self, now: float) -> float:
        """Seconds of freshness left by the clock (may be negative, ``inf`` for no limit)."""
        if self.revalidate is None:
            return math.inf
        return self.revalidate - (now - self.created)

    def to_record(self) -> tuple[Any, ...]:
        return (
            FORMAT_VERSION,
            _ENTRY,
            self.status,
            self.headers,
            self.body,
            self.created,
            self.revalidate,
            self.expire,
            self.tags,
            self.etag,
            self.last_modified,
        )


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
class DataEntry:
    """A cached function result (:mod:`wsgi_isr.datacache`): the value as canonical JSON
    text, with the same freshness fields as a page (``created`` is when the call started)."""

    value: str
    created: float
    revalidate: float | None
    expire: float | None
    tags: tuple[str, ...]

    def state(self, now: float, tag_states: Any, extra_tags: tuple[str, ...] = ()) -> State:
        """As :meth:`Entry.state`; ``extra_tags`` are checked too (the implicit path tags
        of the page being rendered, so ``revalidate_path`` reaches the data it used)."""
        age = now - self.created
        if self.expire is not None and age >= self.expire:
            return State.EXPIRED
        stale = self.revalidate is not None and age >= self.revalidate
        get = tag_states.get
        for tag in self.tags + extra_tags:
            st = get(tag)
            if st is None:
                continue
            if st[1] > self.created:
                return State.EXPIRED
            if st[0] > self.created:
                stale = True
        return State.STALE if stale else State.FRESH

    def remaining(self, now: float) -> float:
        """Seconds of freshness left by the clock (``inf`` for no limit)."""
        if self.revalidate is None:
            return math.inf
        return self.revalidate - (now - self.created)


Record = Entry | PassMarker | VaryMarker | DataEntry


def encode(record: Record) -> tuple[Any, ...]:
    if isinstance(record, Entry):
        return record.to_record()
    if isinstance(record, DataEntry):
        r = record
        return (FORMAT_VERSION, _DATA, r.value, r.created, r.revalidate, r.expire, r.tags)
    if isinstance(record, PassMarker):
        return (FORMAT_VERSION, _PASS, record.reason)
    return (FORMAT_VERSION, _VARY, record.headers)


def decode(value: Any) -> Record | None:
    """Turn a stored value back into a record; anything unexpected is ``None`` (a miss)."""
    if type(value) is not tuple or len(value) < 3 or value[0] != FORMAT_VERSION:
        return None
    kind = value[1]
    try:
        if kind == _ENTRY and len(value) == 11:
            _, _, status, headers, body, created, reval, expire, tags, etag, lm = value
            if not (
                type(status) is str
                and type(headers) is tuple
                and all(
                    type(h) is tuple and len(h) == 2 and type(h[0]) is str and type(h[1]) is str
                    for h in headers
                )
                and type(body) is bytes
                and type(created) is float
                and (reval is None or type(reval) is float)
                and (expire is None or type(expire) is float)
                and type(tags) is tuple
                and all(type(t) is str for t in tags)
                and type(etag) is str
                and type(lm) is str
            ):
                return None
            return Entry(status, headers, body, created, reval, expire, tags, etag, lm)
        if kind == _DATA and len(value) == 7:
            _, _, text, created, reval, expire, tags = value
            if not (
                type(text) is str
                and type(created) is float
                and (reval is None or type(reval) is float)
                and (expire is None or type(expire) is float)
                and type(tags) is tuple
                and all(type(t) is str for t in tags)
            ):
                return None
            return DataEntry(text, created, reval, expire, tags)
        if kind == _PASS and type(value[2]) is str:
            return PassMarker(value[2])
        if kind == _VARY and type(value[2]) is tuple and all(type(h) is str for h in value[2]):
            return VaryMarker(value[2])
    except (TypeError, ValueError):
        return None
    return None
