"""The byte format of every record a store keeps: versioned and non-executable.

    data = dumps(entry)        # b"wISR" + version + length, JSON metadata, raw body
    loads(data) == entry       # anything else (a pickle, garbage, another version): None

Layout: a 13-byte header (magic ``wISR``, one version byte, the lengths of the
metadata and of the body as big-endian uint32: a truncated record is a miss), the
metadata as compact JSON (a list whose first item names the kind of record), then —
for a page — the body bytes as they are. Decoding never runs code: ``json.loads``
builds only lists, strings and numbers, and every field is type-checked before a
record is built. A format-version change is a miss.

The body is kept out of the JSON so that a hit costs a small ``json.loads`` plus one
slice, whatever the size of the page (see ``benchmarks`` ``codec`` for the figures
against the pickle used before).
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Any

from .entry import Entry, PassMarker, Record, VaryMarker

log = logging.getLogger("wsgi_isr")

MAGIC = b"wISR"
#: Bumped whenever the layout or the meaning of a field changes; other versions are misses.
VERSION = 2
_HEAD = struct.Struct(">4sBII")
HEAD_SIZE = _HEAD.size
_PREFIX = MAGIC + bytes([VERSION])

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode
_loads = json.JSONDecoder().decode


def dumps(record: Record) -> bytes:
    """Encode ``record`` (a page or a marker) as bytes."""
    body = b""
    meta: list[Any]
    if isinstance(record, Entry):
        meta = [
            "E",
            record.status,
            record.headers,
            record.created,
            record.revalidate,
            record.expire,
            record.tags,
            record.etag,
            record.last_modified,
        ]
        body = record.body
    elif isinstance(record, PassMarker):
        meta = ["P", record.reason]
    else:
        meta = ["V", record.headers]
    raw = _dumps(meta).encode("utf-8", "surrogatepass")
    return b"".join((_HEAD.pack(MAGIC, VERSION, len(raw), len(body)), raw, body))


def _strs(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _float(value: Any) -> float | None:
    if type(value) is float:
        return value
    if type(value) is int:  # JSON writes 60.0 as 60.0, but accept a hand-written 60
        return float(value)
    raise TypeError


def loads(data: Any) -> Record | None:
    """Decode bytes written by :func:`dumps`; anything else is ``None`` (a miss)."""
    if type(data) is not bytes or data[:5] != _PREFIX or len(data) < HEAD_SIZE:
        return None
    try:
        (_, _, size, body_size) = _HEAD.unpack_from(data)
        end = HEAD_SIZE + size
        if end + body_size != len(data):
            return None
        meta = _loads(data[HEAD_SIZE:end].decode("utf-8", "surrogatepass"))
        if type(meta) is not list or not meta:
            return None
        kind = meta[0]
        if kind == "E" and len(meta) == 9:
            _, status, headers, created, reval, expire, tags, etag, lm = meta
            if not (
                type(status) is str
                and type(headers) is list
                and all(type(h) is list and len(h) == 2 and _strs(h) for h in headers)
                and _strs(tags)
                and type(etag) is str
                and type(lm) is str
            ):
                return None
            return Entry(
                status,
                tuple((h[0], h[1]) for h in headers),
                data[end:],
                _float(created),  # type: ignore[arg-type]
                None if reval is None else _float(reval),
                None if expire is None else _float(expire),
                tuple(tags),
                etag,
                lm,
            )
        if body_size:
            return None
        if kind == "P" and len(meta) == 2 and type(meta[1]) is str:
            return PassMarker(meta[1])
        if kind == "V" and len(meta) == 2 and _strs(meta[1]):
            return VaryMarker(tuple(meta[1]))
    except (ValueError, TypeError, RecursionError, struct.error):
        return None
    return None


def loads_logged(data: Any, where: str) -> Record | None:
    """:func:`loads`, logging a warning when bytes were there but were not a record."""
    record = loads(data)
    if record is None and data:
        log.warning("wsgi_isr: unreadable record in %s, treated as a miss", where)
    return record
