"""Building what the client receives for a cached entry, and the fixed answers.

Per-request work is limited to the few headers that depend on the clock (``Age``,
``Cache-Control``, ``Cache-Status``); the rest is built once per entry
(:class:`Prepared`), so a hit on the hundred-thousandth page costs what one on the
first does.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.http import http_date, parse_date

from .entry import Entry
from .policy import directives, says_how_long, varies_on_credentials

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

HIT, STALE, MISS, BYPASS = "HIT", "STALE", "MISS", "BYPASS"
#: What "forever" is announced as to CDNs (one year, like Next.js).
FOREVER = 31_536_000
STATUS_304 = "304 Not Modified"
#: Representation headers a 304 leaves out (it has no content; RFC 9110 15.4.5).
_304_DROP = frozenset(("content-length", "content-type", "content-encoding", "content-language"))

#: Statuses that never carry a body, hence no ``Content-Length`` (RFC 9110 8.6).
_NO_BODY_STATUS = frozenset(("204", "304"))

#: A miss whose render was overtaken by an invalidation while it ran: served, but
#: announced with ``s-maxage=0`` (a cache in front fetching it now missed the purge).
LANDED_STALE = "invalidated-while-rendering"

CS_MISS = "wsgi-isr; fwd=uri-miss"
CS_BYPASS = "wsgi-isr; fwd=bypass"
CS_STORE_ERROR = "wsgi-isr; fwd=bypass; detail=store-error"
CS_UNCACHEABLE = "wsgi-isr; fwd=bypass; detail=uncacheable"
CS_CREDENTIALS = "wsgi-isr; fwd=uri-miss; detail=credentials"
CS_TIMEOUT = "wsgi-isr; fwd=uri-miss; detail=coalesce-timeout"


def make_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def last_modified(ts: float) -> str:
    return http_date(int(ts))


def cdn_cache_control(entry: Entry, now: float, stale: bool) -> str:
    """``public, s-maxage=<remaining>, stale-while-revalidate=<window>``: never more
    freshness than the entry has left, and never past its ``X-ISR-Expire``."""
    age = max(0.0, now - entry.created)
    remaining = entry.remaining(now)
    if entry.expire is not None:
        remaining = min(remaining, entry.expire - age)
    s_maxage = 0 if stale else max(0, int(min(remaining, FOREVER)))
    if entry.expire is None:
        return f"public, s-maxage={s_maxage}, stale-while-revalidate={FOREVER}"
    # a CDN may serve it stale from the end of s-maxage up to the expire age
    window = max(0, int(entry.expire - (age + s_maxage)))
    if window == 0:
        return f"public, s-maxage={s_maxage}"
    return f"public, s-maxage={s_maxage}, stale-while-revalidate={window}"


def cache_status(label: str, entry: Entry, now: float, detail: str | None = None) -> str:
    if label == MISS:
        if detail:
            return f"wsgi-isr; fwd=uri-miss; stored; detail={detail}"
        return "wsgi-isr; fwd=uri-miss; stored"
    remaining = entry.remaining(now)
    parts = ["wsgi-isr; hit"]
    if label == STALE:
        # how long ago it went stale, counted from the start of the second (see below)
        ttl = min(0, math.floor(remaining) + 1) if not math.isinf(remaining) else 0
        parts.append(f"ttl={ttl}")
        parts.append("detail=stale-while-revalidate")
    else:
        if not math.isinf(remaining):
            parts.append(f"ttl={max(0, int(remaining))}")
        if detail:
            parts.append(f"detail={detail}")
    return "; ".join(parts)


#: Appended to our ``Cache-Control`` when the app did not tell browsers how long
#: (:func:`~wsgi_isr.policy.says_how_long`; ``s-maxage`` binds shared caches only):
#: revalidate every time, so that an invalidation reaches them at their next visit (a
#: page unchanged costs a ``304``).
_BROWSER_REVALIDATES = ", max-age=0"


class Prepared:
    """What serving one entry sends that never changes, built once per entry object (the
    whitenoise way: a hit then only adds the few headers that depend on the clock).

    ``head``: the stored headers but ``Cache-Control``, then ``Content-Length``, ``ETag``,
    ``Last-Modified``; ``browser``: the application's browser directives, to append to our
    ``Cache-Control`` (``max-age=0`` first unless they say how long); ``forever_hit``:
    the clock-free tail of a plain HIT of a page without ``revalidate`` nor ``expire``;
    ``personal``: the page varies on credentials; ``edge``: the tag headers of the caches
    in front (:mod:`wsgi_isr.purge.edge`); ``last_hit``: ``(age, headers)``, what a plain
    HIT sent after the stored ones in its last second of age (the same for every hit in
    that second: a popular page builds its ``Cache-Control`` once a second, not per hit).
    """

    __slots__ = ("browser", "edge", "forever_hit", "head", "last_hit", "personal")

    def __init__(self, entry: Entry) -> None:
        head = []
        kept: list[tuple[str, str]] = []
        for pair in entry.headers:  # the entry's own pairs, not copies: one per page held
            if pair[0] == "Cache-Control":  # the app's browser directives (stored_headers)
                kept += directives(pair[1])
            else:
                head.append(pair)
        browser = "".join(f", {part}" for _, part in kept)
        if not says_how_long(kept):  # s-maxage binds shared caches only
            browser = _BROWSER_REVALIDATES + browser
        if entry.status[:3] not in _NO_BODY_STATUS:
            head.append(("Content-Length", str(len(entry.body))))
        head.append(("ETag", entry.etag))
        if entry.last_modified:  # none for a second version within one second
            head.append(("Last-Modified", entry.last_modified))
        self.head: tuple[tuple[str, str], ...] = tuple(head)
        self.browser = browser
        self.forever_hit: tuple[tuple[str, str], ...] | None = None
        if entry.revalidate is None and entry.expire is None:
            same = browser == _BROWSER_REVALIDATES
            self.forever_hit = _FOREVER_HIT if same else _forever_hit(browser)
        self.personal = varies_on_credentials(entry.headers)
        self.edge: tuple[object, tuple[tuple[str, str], ...], bool] | None = None
        self.last_hit: tuple[int, tuple[tuple[str, str], ...]] | None = None


_FOREVER_CC = f"public, s-maxage={FOREVER}, stale-while-revalidate={FOREVER}"


def _forever_hit(browser: str) -> tuple[tuple[str, str], ...]:
    return (
        ("Cache-Control", f"{_FOREVER_CC}{browser}"),
        ("X-ISR-Cache", HIT),
        ("Cache-Status", "wsgi-isr; hit"),
    )


#: The tail of every such page without a browser ``max-age``: one object, not one per page.
_FOREVER_HIT = _forever_hit(_BROWSER_REVALIDATES)


def prepared(entry: Entry) -> Prepared:
    """The entry's :class:`Prepared` (built on first use; two threads building it at
    once build equal ones)."""
    p: Prepared | None = entry.prepared
    if p is None:
        p = Prepared(entry)
        object.__setattr__(entry, "prepared", p)  # a cache, not part of the frozen value
    return p


def entry_headers(
    entry: Entry, now: float, label: str, detail: str | None = None
) -> list[tuple[str, str]]:
    """The full header list for serving ``entry`` at ``now`` as ``label``."""
    p = entry.prepared or prepared(entry)
    age = int(now - entry.created)
    if age < 0:
        age = 0
    if label != HIT or detail is not None:
        return [*p.head, *_clock_tail(entry, p, age, label, detail)]
    # a plain HIT: every hit in the same second of age sends the same tail
    last = p.last_hit
    if last is None or last[0] != age:
        if p.forever_hit is not None:
            tail = (("Age", str(age)), *p.forever_hit)
        else:
            tail = _clock_tail(entry, p, age, HIT, None)
        last = p.last_hit = (age, tail)
    return [*p.head, *last[1]]


def _clock_tail(
    entry: Entry, p: Prepared, age: int, label: str, detail: str | None
) -> tuple[tuple[str, str], ...]:
    """``Age`` and what follows it, at this second of age."""
    # freshness as at the END of this second of age: the headers must never promise
    # more than remains at its last instant
    at = entry.created + age + 1
    stale = label == STALE or detail == LANDED_STALE
    return (
        ("Age", str(age)),
        ("Cache-Control", cdn_cache_control(entry, at, stale) + p.browser),
        ("X-ISR-Cache", label),
        ("Cache-Status", cache_status(label, entry, at, detail)),
    )


#: One entity tag of an ``If-None-Match`` list, its ``W/`` left out: quoted (a comma
#: inside is part of it, RFC 9110 ``etagc``), or as an app that sends them bare wrote it.
_ETAG = re.compile(r'(?:W/)?(?:("[^"]*")|([^\s,"]+))')


def _etags(value: str) -> Iterable[str]:
    for found in _ETAG.finditer(value):
        yield found.group(1) or found.group(2)


def not_modified(entry: Entry, environ: WSGIEnvironment) -> bool:
    """Whether a conditional GET/HEAD for this entry can be answered with 304."""
    inm = environ.get("HTTP_IF_NONE_MATCH")
    ims = environ.get("HTTP_IF_MODIFIED_SINCE")
    if (inm is None and not ims) or not entry.status.startswith("200"):
        return False
    if inm is not None:
        strong = entry.etag[2:] if entry.etag.startswith("W/") else entry.etag
        return any(t == "*" or t == strong for t in _etags(inm))
    if ims:
        since, modified = parse_date(ims), parse_date(entry.last_modified)
        return since is not None and modified is not None and modified <= since
    return False


def headers_304(full: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in full if k.lower() not in _304_DROP]
