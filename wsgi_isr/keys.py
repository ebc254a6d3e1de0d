"""Cache keys, the implicit path tags, and the clean environ a cached render sees.

A key is ``scheme://host/path?normalised-query`` (``scheme://host/mount|/path?...``
for an application mounted under a ``SCRIPT_NAME``: the split is part of what a
render sees, so it is part of the key; ``|`` never stands unquoted in a quoted
path, so the two forms cannot meet). Query parameters are sorted by name
(values of a repeated name keep their order), re-encoded one canonical way, and
optionally reduced to an allow-list. Keys longer than :data:`MAX_KEY` are
shortened with a SHA-256 of the whole, so an attacker cannot grow them.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import sys
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote_to_bytes

from .bounded import Memo, text_size

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

MAX_KEY = 512
#: Layout tags are implied for at most this many leading path segments.
MAX_LAYOUT_DEPTH = 16
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_QUERY_SAFE = "/:@!$'()*,;-._~?"
_HOST_RE = re.compile(r"(?:[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
PAGE_TAG = "_isr_page:"
LAYOUT_TAG = "_isr_layout:"


class RequestKey(NamedTuple):
    """Where a request's page lives in the store, and how to render it again (a named
    tuple: one is built per request, in a third of a frozen dataclass' time)."""

    key: str
    scheme: str
    host: str
    script_name: str
    path_info: str
    query: str
    path: str  # quoted SCRIPT_NAME + PATH_INFO, for path tags


def normalise_query(qs: str, allow: Collection[str] | None = None) -> str:
    if not qs:
        return ""
    # latin-1 maps every byte to one character, so decoding and re-quoting round-trips
    pairs = parse_qsl(qs, keep_blank_values=True, encoding="latin-1")
    if allow is not None:
        pairs = [p for p in pairs if p[0] in allow]
    pairs.sort(key=lambda p: p[0])
    return "&".join(
        f"{quote(k, _QUERY_SAFE, encoding='latin-1')}={quote(v, _QUERY_SAFE, encoding='latin-1')}"
        for k, v in pairs
    )


def normalise_host(environ: WSGIEnvironment) -> str | None:
    """Lower-cased host with the default port removed, or ``None`` if malformed."""
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST")
    if not host:
        host = environ.get("SERVER_NAME", "")
        port = environ.get("SERVER_PORT", "")
        if port:
            host = f"{host}:{port}"
    host = host.strip().lower()
    if not _HOST_RE.fullmatch(host):
        return None
    if (scheme == "http" and host.endswith(":80")) or (scheme == "https" and host.endswith(":443")):
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".") or None


def quote_path(path: str) -> str:
    """Canonical percent-encoding of a WSGI path (latin-1 characters standing for bytes)."""
    try:
        raw = path.encode("latin-1")
    except UnicodeEncodeError:
        raw = path.encode("utf-8")
    return quote(raw, _PATH_SAFE)


#: What :func:`quote` leaves as it is in a path, and in a query name or value: a request
#: made of these characters only (nearly every request) is its own canonical form.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/:@!$&'()*+,;=._~-]*")
_PLAIN_QUERY = re.compile(
    r"[A-Za-z0-9/:@!$'()*,;._~?-]*=[A-Za-z0-9/:@!$'()*,;._~?-]*"
    r"(?:&[A-Za-z0-9/:@!$'()*,;._~?-]*=[A-Za-z0-9/:@!$'()*,;._~?-]*)*"
)
#: Normalised hosts by scheme: a site has a handful, and checking one costs a regular
#: expression; bounded, since a visitor chooses the ``Host`` header.
_HOSTS: dict[str, Memo[str, str | None]] = {
    "http": Memo(256, 64 << 10),
    "https": Memo(256, 64 << 10),
}
#: Keys of requests off the fast path (quoted paths, unsorted queries...): the same
#: URLs come back again and again, and parsing them costs more than the rest of a hit.
_MEMO_SIZE = 4096
_MEMO_BYTES = 8 << 20  # with 8 KiB URLs, 4096 keys would be ~100 MiB: bounded in bytes too
_memo: Memo[tuple[Any, ...], RequestKey | None] = Memo(_MEMO_SIZE, _MEMO_BYTES)
_UNSET: Any = object()
#: ``RequestKey(...)`` without the generated ``__new__``'s Python frame (once per request).
_new_key: Callable[[tuple[str, ...]], RequestKey] = functools.partial(tuple.__new__, RequestKey)


def request_key(
    environ: WSGIEnvironment, *, query_params: Collection[str] | None = None
) -> RequestKey | None:
    """The key of this request, or ``None`` if its host or path is malformed (the
    cache is then bypassed)."""
    get = environ.get
    scheme = get("wsgi.url_scheme", "http")
    http_host = get("HTTP_HOST")
    script_name = get("SCRIPT_NAME", "")
    path_info = get("PATH_INFO", "") or "/"
    qs = get("QUERY_STRING", "")
    # the fast path: plain strings need no parsing or quoting, and give the very key the
    # general path below would (tests/test_properties.py checks it on random requests)
    hosts = _HOSTS.get(scheme) if type(scheme) is str else None
    if (
        hosts is not None
        and type(http_host) is str
        and type(path_info) is str
        and type(script_name) is str
        and type(qs) is str
        and http_host
        and path_info[0] == "/"
        and _PLAIN_PATH.fullmatch(path_info)
        and (not script_name or (script_name[0] == "/" and _PLAIN_PATH.fullmatch(script_name)))
    ):
        query = _plain_query(qs, query_params) if qs else ""
        if query is not None:
            host = hosts.get(http_host, _UNSET)
            if host is _UNSET:
                host = normalise_host({"wsgi.url_scheme": scheme, "HTTP_HOST": http_host})
                hosts.remember(http_host, host, text_size(http_host, host))
            if host is None:
                return None
            if script_name:
                where, path = f"{script_name}|{path_info}", script_name + path_info
            else:
                where = path = path_info
            key = f"{scheme}://{host}{where}?{query}"
            if len(key) > MAX_KEY:
                key = shorten(key)
            return _new_key((key, scheme, host, script_name, path_info, query, path))
    memo_key = (
        scheme,
        http_host,
        get("SERVER_NAME"),
        get("SERVER_PORT"),
        script_name,
        path_info,
        qs,
        query_params,
    )
    try:
        return _memo[memo_key]
    except KeyError:
        pass
    except TypeError:  # an unhashable value where a string belongs: compute, do not memo
        return _request_key(environ, query_params)
    rk = _request_key(environ, query_params)
    size = text_size(*memo_key[:7]) + (0 if rk is None else text_size(*rk))
    _memo.remember(memo_key, rk, size)
    return rk


def _plain_query(qs: str, allow: Collection[str] | None) -> str | None:
    """:func:`normalise_query` of a non-empty query made of ``name=value`` pairs of plain
    characters whose names are already in order; ``None`` for any other query."""
    if not _PLAIN_QUERY.fullmatch(qs):
        return None
    if "&" not in qs:
        return qs if allow is None or qs.partition("=")[0] in allow else ""
    pairs = qs.split("&")
    names = [p.partition("=")[0] for p in pairs]
    if names != sorted(names):
        return None
    if allow is None:
        return qs
    return "&".join(p for p, n in zip(pairs, names, strict=True) if n in allow)


def _request_key(
    environ: WSGIEnvironment, query_params: Collection[str] | None
) -> RequestKey | None:
    host = normalise_host(environ)
    if host is None:
        return None
    scheme = "https" if environ.get("wsgi.url_scheme") == "https" else "http"
    script_name = environ.get("SCRIPT_NAME", "")
    path_info = environ.get("PATH_INFO", "") or "/"
    # a path is "/..." or nothing: "victim.co" + "m/x" would spell the key of
    # "victim.com" + "/x" (werkzeug's and wsgiref's servers pass "GET m/x" through)
    if (script_name and not script_name.startswith("/")) or not path_info.startswith("/"):
        return None
    path = quote_path(script_name + path_info)
    query = normalise_query(environ.get("QUERY_STRING", ""), query_params)
    where = f"{quote_path(script_name)}|{quote_path(path_info)}" if script_name else path
    key = f"{scheme}://{host}{where}?{query}"
    return RequestKey(shorten(key), scheme, host, script_name, path_info, query, path)


def shorten(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    return key[:200] + "#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _environ_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def vary_value(environ: WSGIEnvironment, name: str) -> str:
    """The value of request header ``name`` as a variant is keyed on, and as its render
    sees it: runs of whitespace folded to one space, an empty value as no header."""
    return " ".join(environ.get(_environ_name(name), "").split())


def variant_key(base: str, vary: Iterable[str], environ: WSGIEnvironment) -> str:
    """The key of one variant of a page that varies on request headers.

    The header values are hashed, never spelled out: a raw value could otherwise
    imitate the shortened (hashed) form of another key.
    """
    values = "\n".join(f"{name}={vary_value(environ, name)}" for name in vary)
    digest = hashlib.sha256(values.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{shorten(base)}#vary:{digest}"


def _path_tag(prefix: str, path: str) -> str:
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    tag = prefix + path
    if len(tag) > 200:
        tag = prefix + "#" + hashlib.sha256(path.encode()).hexdigest()
    return tag


def canonical_path(path: str) -> str:
    """A path as a user writes it (``/blog/héllo`` or ``/blog/h%C3%A9llo``), quoted
    the way keys are."""
    return quote(unquote_to_bytes(path), _PATH_SAFE)


def page_tag(path: str) -> str:
    """The implicit tag every query variant of ``path`` carries."""
    return _path_tag(PAGE_TAG, canonical_path(path))


def layout_tag(path: str) -> str:
    """The implicit tag every page at or below ``path`` carries (capped depth)."""
    segments = [s for s in canonical_path(path).split("/") if s][:MAX_LAYOUT_DEPTH]
    return _path_tag(LAYOUT_TAG, "/" + "/".join(segments))


def path_tags(quoted_path: str) -> tuple[str, ...]:
    """Page tag plus layout tags for ``/`` and every ancestor of a quoted path."""
    segments = [s for s in quoted_path.split("/") if s][:MAX_LAYOUT_DEPTH]
    tags = [_path_tag(PAGE_TAG, quoted_path), _path_tag(LAYOUT_TAG, "/")]
    for i in range(1, len(segments) + 1):
        tags.append(_path_tag(LAYOUT_TAG, "/" + "/".join(segments[:i])))
    return tuple(tags)


def split_host(host: str, scheme: str) -> tuple[str, str]:
    """``"example.com:8080"`` -> ``("example.com", "8080")``; the scheme's default port
    when the (normalised) host has none."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and not name.endswith(":") and "]" not in port:
        return name, port
    return host, "443" if scheme == "https" else "80"


def render_environ(
    rk: RequestKey, source: WSGIEnvironment, vary: Iterable[str] = ()
) -> dict[str, Any]:
    """A clean GET environ for rendering ``rk``: no cookies, no credentials, no
    forwarding headers, no body, nothing left behind by other middleware — only
    what the key holds plus the request headers the page is keyed on."""
    server_name, port = split_host(rk.host, rk.scheme)
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": rk.script_name,
        "PATH_INFO": rk.path_info,
        "QUERY_STRING": rk.query,
        # from the key, never from the first requester (HTTP/1.0, another port...)
        "SERVER_NAME": server_name,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": rk.host,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": rk.scheme,
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": source.get("wsgi.errors", sys.stderr),
        "wsgi.multithread": source.get("wsgi.multithread", True),
        "wsgi.multiprocess": source.get("wsgi.multiprocess", True),
        "wsgi.run_once": False,
        "wsgi_isr.render": True,
    }
    for name in vary:  # as the key holds them (vary_value): never the raw spelling
        value = vary_value(source, name)
        if value:
            env[_environ_name(name)] = value
    return env
