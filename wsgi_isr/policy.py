"""Header policy: what opts a response in, what refuses it, which tags it carries.

Everything here is a pure function of the response's status and headers, so it
is cheap to test exhaustively.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import hmac
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from urllib.parse import quote

log = logging.getLogger("wsgi_isr")

MAX_TAG_LENGTH = 256
MAX_TAGS = 128
#: Tags of the implicit path kind; user tags may not forge them.
RESERVED_TAG_PREFIX = "_isr_"

_STATUS_RE = re.compile(r"([0-9]{3})(?: |$)", re.ASCII)
_TAG_RE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII, no space, no comma
#: What :func:`tag_text` leaves as it is: ASCII from space to tilde (spaces and commas
#: stay, and are refused as in any tag; a ``%`` stays a ``%``).
_TAG_SAFE = "".join(chr(c) for c in range(0x20, 0x7F))
_HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
#: The reason a page that never asked to be cached is not stored.
NOT_OPTED_IN = "not opted in"
#: Statuses we never store even when the response opted in.
_UNSTORABLE_STATUS = frozenset((206, 304))
#: 4xx answers that say "not now" rather than anything about the page: a render that
#: timed out waiting for its request, or was rate limited (renders carry no client
#: address, so every regeneration shares one limiter bucket). Failures, like a 5xx.
_TRANSIENT_STATUS = frozenset((408, 429))
#: Request headers a cached page is never allowed to vary on: cached renders never see them.
UNKEYABLE = frozenset(("cookie", "authorization"))

_render_tags: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "wsgi_isr.render_tags", default=None
)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a secret from a request (any string, even one with
    lone surrogates from JSON or latin-1 characters from a header)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def cookie_names_and_values(header: str) -> dict[str, str]:
    """A forgiving ``Cookie`` header parser: names and raw values, no decoding, so no
    byte sequence a client sends can make it raise."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, _, value = part.partition("=")
        name = name.strip()
        if name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


def tag(*tags: str) -> None:
    """Add tags to the response being rendered for the cache.

    Call it from anywhere while a cached page renders — a data-access helper, a
    template filter — like Next.js ``fetch(url, {next: {tags}})``::

        def get_post(slug):
            wsgi_isr.tag(f"post-{slug}")
            return db.fetch_post(slug)

    Outside a render (a script, a request that bypasses the cache) it does nothing.
    Invalid tags are dropped with a warning when the response is stored.
    """
    current = _render_tags.get()
    if current is not None:
        current.extend(api_tags(tags))


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a response. ``store`` is False when ``reason`` says why.

    ``failed`` means the application failed (a 5xx, or no valid status): judged by
    what it did, not by its headers, since a framework's error page carries no
    opt-in headers. A failure never replaces a stored page. Any other answer is
    healthy, and the truth: if it cannot be stored, the stored copy is dropped.
    """

    store: bool
    reason: str
    opted_in: bool
    revalidate: float | None = None
    expire: float | None = None
    tags: tuple[str, ...] = ()
    vary: tuple[str, ...] = ()
    failed: bool = False


def status_code(status: str) -> int:
    """The numeric code of a WSGI status line (0 if it has none)."""
    match = _STATUS_RE.match(status)
    return int(match.group(1)) if match else 0


def tag_text(tag: str) -> str:
    """A tag given through the Python API (``revalidate_tag``, ``wsgi_isr.tag``, the
    page decorators, ``cached``) in the form it is kept and compared in: printable
    characters beyond ASCII percent-encoded as UTF-8 (``"article-café"`` ->
    ``"article-caf%C3%A9"``), so that a ``SlugField(allow_unicode=True)`` slug tags a
    page and invalidates it alike, and its header stays ASCII; NFC-normalised first, and
    a tag within :data:`MAX_TAG_LENGTH` whose encoded form is not keeps a prefix of it
    and a SHA-256 of the tag. Anything else is left as
    it is, for :func:`valid_tags` to judge: ASCII tags are their own form, and a tag
    with a control or separator character (``\\x85``, ``\\u2028``) is refused."""
    if tag.isascii() or not tag.isprintable():
        return tag
    tag = unicodedata.normalize("NFC", tag)  # "café" typed or decomposed: one tag
    encoded = quote(tag, safe=_TAG_SAFE)
    if len(encoded) > MAX_TAG_LENGTH >= len(tag):
        # within the limit as written, over it encoded (a 50-letter Cyrillic slug):
        # a prefix and a digest of the whole, the same wherever it is given
        digest = hashlib.sha256(tag.encode("utf-8")).hexdigest()
        encoded = f"{encoded[: MAX_TAG_LENGTH - len(digest) - 1]}#{digest}"
    return encoded


def api_tags(tags: Iterable[str]) -> list[str]:
    """Tags as the Python API takes them, each string in its :func:`tag_text` form
    (anything else left as it is, for :func:`valid_tags` to refuse)."""
    return [tag_text(t) if isinstance(t, str) else t for t in tags]


def given_tags(raw: str | Iterable[str], source: str) -> list[str]:
    """The tags a decorator was given (``tags=`` of a page or a cached function, or
    what its callable returned, a single string taken as one tag) in their
    :func:`tag_text` form, each checked on its own: one with a comma or a space, which a
    URL argument can bring in, is dropped, never split into several."""
    return valid_tags(api_tags([raw] if isinstance(raw, str) else raw), source=source)


def valid_tags(
    raw: Iterable[str], *, source: str = "response", limit: int | None = MAX_TAGS
) -> list[str]:
    """Keep the valid tags, in order, without duplicates; log what is dropped.
    At most ``limit`` are kept (``None``: no limit)."""
    out: list[str] = []
    seen: set[str] = set()
    for t in raw:
        t = t.strip() if isinstance(t, str) else t
        if not t:
            continue
        if (
            not isinstance(t, str)
            or len(t) > MAX_TAG_LENGTH
            or not _TAG_RE.fullmatch(t)
            or t.startswith(RESERVED_TAG_PREFIX)
        ):
            log.warning("wsgi_isr: dropping invalid tag from %s (%d chars)", source, len(str(t)))
            continue
        if t in seen:
            continue
        if limit is not None and len(out) >= limit:
            log.warning("wsgi_isr: more than %d tags on one %s; the rest dropped", limit, source)
            break
        seen.add(t)
        out.append(t)
    return out


def parse_seconds(value: str) -> float | None:
    """``"60"`` -> 60.0; anything that is not a finite non-negative number -> ``None``."""
    try:
        n = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(n) or n < 0:
        return None
    return n


def directives(value: str) -> list[tuple[str, str]]:
    """The directives of a ``Cache-Control`` value: ``(lower-case name, as written)``,
    nameless parts dropped. Every reader of the header goes by it. Split at every comma,
    as nginx and Varnish read it: a quoted argument holding one (``no-cache="Set-Cookie,
    X-Token"``) comes apart and joins up again, and a quote left open never hides a
    ``private`` or ``no-store`` after it."""
    out = []
    for part in value.split(","):
        part = part.strip()
        name = part.partition("=")[0].strip().lower()
        if name:
            out.append((name, part))
    return out


def _cache_control_directives(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [d for k, v in headers if k.lower() == "cache-control" for d in directives(v)]


def parse_cache_control(value: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, part in directives(value):
        _, eq, arg = part.partition("=")
        out[name] = arg.strip().strip('"') if eq else None
    return out


#: What a browser reads as "this long": a ``max-age`` in the token form of RFC 9111, or
#: a bare ``no-cache`` (Chromium ignores ``max-age = 5``, ``max-age="5"`` and
#: ``no-cache="Set-Cookie"``, and then guesses from ``Last-Modified``).
_BROWSER_SAYS = re.compile(r"max-age=[0-9]+|no-cache", re.IGNORECASE)


def says_how_long(parts: Iterable[tuple[str, str]]) -> bool:
    """Whether these directives tell a browser how long it may reuse the answer without
    asking: a ``max-age`` it reads, a bare ``no-cache``, or ``no-store``. Without one it works
    out its own freshness, 10 % of the time since ``Last-Modified`` (an app's, a post's
    edit date say), and keeps a ``301``, ``308`` or ``410`` for ever (seen in Chromium:
    tests/test_browser.py), past every invalidation."""
    return any(name == "no-store" or _BROWSER_SAYS.fullmatch(part) for name, part in parts)


def header_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    name = name.lower()
    return [v for k, v in headers if k.lower() == name]


def decide(
    status: str,
    headers: Sequence[tuple[str, str]],
    body_size: int,
    *,
    extra_tags: Iterable[str] = (),
    max_entry_bytes: int,
) -> Decision:
    """Decide whether a response is stored, for how long, and with which tags."""
    code = status_code(status)
    if code < 200 or code >= 500 or code in _TRANSIENT_STATUS:
        return Decision(False, f"status {code}", False, failed=True)
    cc = parse_cache_control(", ".join(header_values(headers, "cache-control")))
    revalidate: float | None
    expire: float | None = None
    isr = header_values(headers, "x-isr-revalidate")
    if isr:
        if isr[-1].strip().lower() == "false":
            revalidate = None  # until invalidated on demand
        else:
            revalidate = parse_seconds(isr[-1])
            if revalidate is None:
                log.warning("wsgi_isr: ignoring invalid X-ISR-Revalidate value (not cached)")
                return Decision(False, "invalid X-ISR-Revalidate", False)
    elif "s-maxage" in cc:
        s_maxage = parse_seconds(cc["s-maxage"] or "")
        if s_maxage is None:
            return Decision(False, "invalid s-maxage", False)
        revalidate = s_maxage
        swr_raw = cc.get("stale-while-revalidate")
        swr = parse_seconds(swr_raw) if swr_raw else None
        # without a valid stale-while-revalidate a CDN would not serve it stale either
        expire = s_maxage if swr is None else s_maxage + swr
    else:
        return Decision(False, NOT_OPTED_IN, False)
    if revalidate == 0:
        return Decision(False, "revalidate is 0", False)
    for raw in header_values(headers, "x-isr-expire")[-1:]:
        exp = parse_seconds(raw)
        if not exp:
            log.warning("wsgi_isr: ignoring invalid X-ISR-Expire value")
        else:
            expire = exp

    if code in _UNSTORABLE_STATUS:
        return Decision(False, f"status {code}", True)
    if header_values(headers, "set-cookie"):
        return Decision(False, "Set-Cookie", True)
    for refused in ("private", "no-store", "no-cache"):
        if refused in cc:
            return Decision(False, f"Cache-Control: {refused}", True)
    vary = [v.strip().lower() for h in header_values(headers, "vary") for v in h.split(",")]
    if "*" in vary:
        return Decision(False, "Vary: *", True)
    if body_size > max_entry_bytes:
        return Decision(False, "body larger than max_entry_bytes", True)

    raw_tags: list[str] = []
    for h in header_values(headers, "x-isr-tags") + header_values(headers, "cache-tag"):
        raw_tags.extend(h.split(","))
    for h in header_values(headers, "surrogate-key"):
        raw_tags.extend(h.split())
    raw_tags.extend(extra_tags)
    tags = valid_tags(raw_tags)
    keyed = tuple(sorted({v for v in vary if v and v not in UNKEYABLE}))
    return Decision(True, "stored", True, revalidate, expire, tuple(tags), keyed)


def client_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The application's headers minus our internal ``X-ISR-*`` ones."""
    return [(k, v) for k, v in headers if not k.lower().startswith("x-isr-")]


#: ``Cache-Control`` directives the middleware owns on the answers it serves: what
#: shared caches may do is its business; everything else (``max-age``,
#: ``must-revalidate``, ``no-transform``, ``immutable``...) is the browser's, and the
#: application's to set.
SHARED_DIRECTIVES = frozenset(("public", "private", "s-maxage", "proxy-revalidate"))
#: Headers that tell a CDN or proxy in front how long to keep an answer, over
#: ``Cache-Control`` (Fastly/Varnish, RFC 9213, Cloudflare, nginx, Akamai).
_DOWNSTREAM_TTL_HEADERS = frozenset(
    (
        "surrogate-control",
        "cdn-cache-control",
        "cloudflare-cdn-cache-control",
        "x-accel-expires",
        "edge-control",
    )
)
_REFUSED_DIRECTIVES = frozenset(("no-cache", "no-store", "stale-while-revalidate"))


def browser_directives(headers: Iterable[tuple[str, str]]) -> str:
    """The application's ``Cache-Control`` directives that are not the shared
    caches' (kept on stored pages, merged into the header each hit sends)."""
    return ", ".join(
        part
        for name, part in _cache_control_directives(headers)
        if name not in SHARED_DIRECTIVES and name not in _REFUSED_DIRECTIVES
    )


def private_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Mark an answer rendered for one visitor (their cookies or credentials, a
    preview) so that no shared cache in front stores it: ``Cache-Control: private``
    (plus ``no-cache`` unless the app said how long browsers may keep it), and no
    CDN-specific TTL header that would override it."""
    kept = [d for d in _cache_control_directives(headers) if d[0] not in SHARED_DIRECTIVES]
    parts = [part for _, part in kept]
    if not says_how_long(kept):
        parts.insert(0, "no-cache")
    return [*_without_cache_control(headers), ("Cache-Control", ", ".join(["private", *parts]))]


def _without_cache_control(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    drop = _DOWNSTREAM_TTL_HEADERS | {"cache-control"}
    return [(k, v) for k, v in headers if k.lower() not in drop]


def opts_in(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether these headers ask for the answer to be cached, as :func:`decide` reads
    them whatever the status (a site that adds them to its error pages asks too):
    ``X-ISR-Revalidate: 0`` or an invalid value asks for nothing, as if absent."""
    return decide("200 OK", headers, 0, max_entry_bytes=1).opted_in


def unshared_headers(
    headers: Iterable[tuple[str, str]], *, asked: bool = False
) -> list[tuple[str, str]]:
    """The client's headers (no ``X-ISR-*``) for the app's answer to the visitor's own
    request when it would have been rendered from the cache key (the store is down or
    full, a coalesced wait timed out, the page was refused): what it saw of the request
    (an unkeyed ``X-Forwarded-Host`` a ``ProxyFix`` inside trusted, say) may be the
    visitor's alone, and no tags went out with it for a purge to find. A page that asked
    to be cached (:func:`opts_in`, or ``asked``: known to, as a ``304`` that Django's
    ``ConditionalGetMiddleware`` strips of ``X-ISR-*`` does not say) leaves
    :func:`private_headers`, since its ``max-age`` or ``Expires`` would let a shared
    cache keep it too; one that never did is the app's business, left as it is."""
    headers = list(headers)
    if asked or opts_in(headers):
        return private_headers(client_headers(headers))
    return client_headers(headers)


def varies_on_credentials(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a stored page says it depends on ``Cookie`` or ``Authorization``
    (``Vary: Cookie``, as Django's session middleware sets): its copy, rendered without
    them, is then only for visitors who send none."""
    for k, v in headers:
        if k.lower() == "vary":
            for name in v.split(","):
                if name.strip().lower() in UNKEYABLE:
                    return True
    return False


def stored_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """What a stored entry keeps: no internal, hop-by-hop, length or freshness headers
    (those are computed per response), except the browser's ``Cache-Control``
    directives, kept as one ``Cache-Control`` header that each hit merges into its own."""
    drop = (
        _HOP_BY_HOP
        | _DOWNSTREAM_TTL_HEADERS
        | {
            "content-length",
            "cache-control",
            "age",
            "date",
            "expires",
            "etag",
            "last-modified",
        }
    )
    kept = [
        (k, v) for k, v in headers if not k.lower().startswith("x-isr-") and k.lower() not in drop
    ]
    browser = browser_directives(headers)
    if browser:
        kept.append(("Cache-Control", browser))
    return tuple(kept)
