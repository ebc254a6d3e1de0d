"""The byte format of every record a store keeps: versioned and non-executable.

    data = dumps(entry)        # fixed header, the record's strings, the raw body
    loads(data) == entry       # anything else (a pickle, garbage, another version): None

Layout: a fixed 38-byte header (struct ``>4sBBHHdddII``: magic ``wISR``, version, kind,
header and tag counts, ``created``, ``revalidate`` and ``expire`` as doubles with NaN for
"none", the lengths of the text and of the body), then the record's strings (status,
ETag, Last-Modified, header names and values, tags) as UTF-8 joined by NUL — a
character no HTTP field or valid tag may hold; one found anyway is replaced by U+FFFD
— then the body as it is. Decoding never runs code: it slices bytes, splits one string
and checks every count and length before a record is built; a truncated, padded or
malformed record, or one of another format version, is a miss.

Chosen for the hit path: no JSON and no per-field parsing, so decoding costs about what
unpickling did (see ``benchmarks`` section ``stores`` for the figures).
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from typing import Any

from .bounded import Memo
from .entry import DataEntry, Entry, PassMarker, Record, VaryMarker

log = logging.getLogger("wsgi_isr")

MAGIC = b"wISR"
#: Bumped whenever the layout or the meaning of a field changes; other versions are misses.
VERSION = 2
_HEAD = struct.Struct(">4sBBHHdddII")
HEAD_SIZE = _HEAD.size
_PREFIX = MAGIC + bytes([VERSION])
_ENTRY, _PASS, _VARY, _DATA = 1, 2, 3, 4
_NAN = math.nan
_SEP = "\x00"


def _text(parts: list[str]) -> bytes:
    text = _SEP.join(parts)
    if text.count(_SEP) != len(parts) - 1:
        text = _SEP.join(p.replace(_SEP, "\ufffd") for p in parts)
    return text.encode("utf-8", "surrogatepass")


def dumps(record: Record) -> bytes:
    """Encode ``record`` (a page, a cached function result or a marker) as bytes."""
    if isinstance(record, Entry):
        parts = [record.status, record.etag, record.last_modified]
        for name, value in record.headers:
            parts += (name, value)
        parts += record.tags
        text = _text(parts)
        head = _HEAD.pack(
            MAGIC,
            VERSION,
            _ENTRY,
            len(record.headers),
            len(record.tags),
            record.created,
            _NAN if record.revalidate is None else record.revalidate,
            _NAN if record.expire is None else record.expire,
            len(text),
            len(record.body),
        )
        return b"".join((head, text, record.body))
    if isinstance(record, DataEntry):
        # the value is canonical JSON text: control characters, NUL included, are escaped
        text = _text([record.value, *record.tags])
        head = _HEAD.pack(
            MAGIC,
            VERSION,
            _DATA,
            0,
            len(record.tags),
            record.created,
            _NAN if record.revalidate is None else record.revalidate,
            _NAN if record.expire is None else record.expire,
            len(text),
            0,
        )
        return head + text
    if isinstance(record, PassMarker):
        text = _text([record.reason])
        return _HEAD.pack(MAGIC, VERSION, _PASS, 0, 1, 0.0, _NAN, _NAN, len(text), 0) + text
    text = _text(list(record.headers)) if record.headers else b""
    n = len(record.headers)
    return _HEAD.pack(MAGIC, VERSION, _VARY, 0, n, 0.0, _NAN, _NAN, len(text), 0) + text


def _none(x: float) -> float | None:
    return None if x != x else x  # NaN stands for None


def _times_ok(created: float, reval: float, expire: float) -> bool:
    """A creation time and two durations (NaN: none) a hit can compute with: finite,
    not negative — anything else was planted or corrupted."""
    return (
        0.0 <= created < math.inf
        and (reval != reval or 0.0 <= reval < math.inf)
        and (expire != expire or 0.0 <= expire < math.inf)
    )


#: What a server will send: a three-digit status with its reason phrase, header names
#: that are RFC 9110 tokens, no control characters but TAB in any string (gunicorn
#: refuses others with a 500; a stored record carrying them was planted). Checked with
#: one scan of the record's text and one match of its header names.
_STATUS = re.compile(r"[1-5][0-9]{2}(?: [^\x00-\x1f\x7f]*)?")
_CONTROL = bytes([*range(0x01, 0x09), *range(0x0A, 0x20), 0x7F])
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_NAMES = re.compile(rf"(?:{_TOKEN}(?:\x00{_TOKEN})*)?")


#: Verdicts of :func:`_headers_ok` for the status lines and header-name lists seen (pages
#: share a few): two regex matches saved per decode. Short ones only, and at most 1,024.
_verdicts: dict[tuple[str, str], bool] = {}


def _headers_ok(status: str, names: list[str]) -> bool:
    joined = _SEP.join(names)
    key = (status, joined)
    ok = _verdicts.get(key)
    if ok is None:
        ok = bool(_STATUS.fullmatch(status) and _NAMES.fullmatch(joined))
        if len(status) + len(joined) <= 512:
            if len(_verdicts) >= 1024:
                _verdicts.clear()
            _verdicts[key] = ok
    return ok


def loads(data: Any, start: int = 0) -> Record | None:
    """Decode bytes written by :func:`dumps` (``data[start:]``, without copying them: a
    file's content after its own header); anything else is ``None`` (a miss)."""
    if (
        type(data) is not bytes
        or data[start : start + 5] != _PREFIX
        or len(data) < start + HEAD_SIZE
    ):
        return None
    try:
        _, _, kind, nh, nt, created, reval, expire, tlen, blen = _HEAD.unpack_from(data, start)
        end = start + HEAD_SIZE + tlen
        if end + blen != len(data):
            return None
        text = data[start + HEAD_SIZE : end]
        if len(text.translate(None, _CONTROL)) != tlen:  # (a C loop: cheaper than a regex)
            return None
        parts = text.decode("utf-8", "surrogatepass").split(_SEP)
        if kind == _VARY and not tlen:
            parts = []  # no headers at all, not one empty header
        if not _times_ok(created, reval, expire):
            return None
        if kind == _ENTRY:
            if len(parts) != 3 + 2 * nh + nt:
                return None
            if not _headers_ok(parts[0], parts[3 : 3 + 2 * nh : 2]):
                return None
            flat = iter(parts[3 : 3 + 2 * nh])
            return Entry(
                parts[0],
                tuple(zip(flat, flat, strict=True)),
                data[end:],
                created,
                _none(reval),
                _none(expire),
                tuple(parts[3 + 2 * nh :]),
                parts[1],
                parts[2],
            )
        if blen:
            return None
        if kind == _DATA:
            if len(parts) != 1 + nt:
                return None
            try:
                json.loads(parts[0])
            except (ValueError, RecursionError):
                return None  # planted: a cached function never stores anything but JSON
            return DataEntry(parts[0], created, _none(reval), _none(expire), tuple(parts[1:]))
        if kind == _PASS and len(parts) == 1:
            return PassMarker(parts[0])
        if kind == _VARY and len(parts) == nt:
            return VaryMarker(tuple(parts))
    except (ValueError, struct.error):
        return None
    return None


def loads_logged(data: Any, where: str) -> Record | None:
    """:func:`loads`, logging a warning when bytes were there but were not a record."""
    record = loads(data)
    if record is None and data:
        log.warning("wsgi_isr: unreadable record in %s, treated as a miss", where)
    return record


class Decoded:
    """Records decoded from bytes read from a store, by key: the same bytes again give
    the same (immutable) record object back instead of a new decode, so a hit on an
    unchanged page costs one comparison of bytes, and the middleware's memos by entry
    (its headers) keep working. Bounded (emptied when full): a miss decodes."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 8 << 20) -> None:
        self._memo: Memo[str, tuple[bytes, Record]] = Memo(max_entries, max_bytes)

    def loads(self, key: str, data: Any, where: str) -> Record | None:
        """:func:`loads_logged` of ``data`` read at ``key`` of ``where`` (a store)."""
        held = self._memo.get(key)
        if held is not None and held[0] == data:
            return held[1]
        record = loads(data)
        if record is None and data:
            msg = "wsgi_isr: unreadable record in %s key %.200r, treated as a miss"
            log.warning(msg, where, key)
        if record is not None:  # bytes: loads accepts nothing else
            # the bytes and the decoded copy of the body, and the key
            self._memo.remember(key, (data, record), 2 * len(data) + len(key) + 200)
        return record
