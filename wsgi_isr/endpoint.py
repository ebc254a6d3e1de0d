"""The revalidation endpoint: ``POST {endpoint}/revalidate`` and ``GET {endpoint}/status``.

Bodies (JSON)::

    {"tag": "post-1"}                      {"tags": ["post-1", "posts"]}
    {"path": "/blog", "type": "layout"}    {"paths": ["/a", "/b"]}
    optional "mode": "soft" | "hard"; the secret as "secret" or Authorization: Bearer

Errors are JSON ``{"error": "..."}`` with 400, 401, 404, 405, 413 or 503.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import DurabilityError, StoreError
from .invalidation import check_mode, checked_tags, path_tag
from .policy import same_secret

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .middleware import ISRMiddleware

MAX_ITEMS = 1024
_METRICS_HEADERS = (
    ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
    ("Cache-Control", "no-store"),
)
_STATUS_TEXT = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    413: "413 Content Too Large",
    503: "503 Service Unavailable",
}


class _Reject(Exception):
    def __init__(self, code: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or []


def _json(
    start_response: StartResponse, code: int, data: Any, extra: list[tuple[str, str]] | None = None
) -> Iterable[bytes]:
    body = json.dumps(data, sort_keys=True).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        *(extra or []),
    ]
    start_response(_STATUS_TEXT[code], headers)
    return [body]


def _bearer(environ: WSGIEnvironment) -> str | None:
    scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def _authorised(mw: ISRMiddleware, environ: WSGIEnvironment, body_secret: Any) -> bool:
    assert mw.secret is not None
    given = _bearer(environ)
    if given is not None:
        return same_secret(given, mw.secret)
    if isinstance(body_secret, str):
        return same_secret(body_secret, mw.secret)
    return False


def _declared_length(mw: ISRMiddleware, environ: WSGIEnvironment) -> int | None:
    """The body's ``Content-Length`` (``None`` for a chunked body the server ends, 0 for
    no body); a declared length over the limit is a 413 before anything is read."""
    raw_length = environ.get("CONTENT_LENGTH")
    if not raw_length:
        return None if environ.get("wsgi.input_terminated") else 0
    try:
        length = int(raw_length)
    except ValueError:
        raise _Reject(400, "invalid Content-Length") from None
    if length < 0:
        raise _Reject(400, "invalid Content-Length")
    if length > mw.max_request_bytes:
        raise _Reject(413, f"body larger than {mw.max_request_bytes} bytes")
    return length


def _read_body(mw: ISRMiddleware, environ: WSGIEnvironment, length: int | None) -> bytes:
    limit = mw.max_request_bytes
    if length is None:
        # chunked (gunicorn, werkzeug): read one byte past the limit to tell a body
        # that is too large
        data: bytes = environ["wsgi.input"].read(limit + 1)
        if len(data) > limit:
            raise _Reject(413, f"body larger than {limit} bytes")
        return data
    data = environ["wsgi.input"].read(length) if length else b""
    return data


def _strings(value: Any, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise _Reject(400, f"'{field}' must be a string or a non-empty list of strings")


def _revalidate(mw: ISRMiddleware, environ: WSGIEnvironment) -> dict[str, Any]:
    assert mw.secret is not None
    length = _declared_length(mw, environ)
    bearer = _bearer(environ)
    if bearer is not None and not same_secret(bearer, mw.secret):
        raise _Reject(401, "missing or wrong secret")  # no need to read the body
    raw = _read_body(mw, environ, length)
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        body = None
    if not isinstance(body, dict):
        # authenticate before revealing anything about the body's shape
        if bearer is None:
            raise _Reject(401, "missing or wrong secret")
        raise _Reject(400, "body must be a JSON object")
    if bearer is None and not _authorised(mw, environ, body.get("secret")):
        raise _Reject(401, "missing or wrong secret")
    tags: list[str] = []
    for field in ("tag", "tags"):
        if field in body:
            tags += _strings(body[field], field)
    paths: list[str] = []
    for field in ("path", "paths"):
        if field in body:
            paths += _strings(body[field], field)
    if not tags and not paths:
        raise _Reject(400, "give 'tag', 'tags', 'path' or 'paths'")
    if len(tags) + len(paths) > MAX_ITEMS:
        raise _Reject(400, f"at most {MAX_ITEMS} tags and paths per request")
    try:
        mode = check_mode(body.get("mode", "soft"))
        kind = body.get("type", "page")
        targets = (checked_tags(tags) if tags else []) + [path_tag(p, kind) for p in paths]
    except ValueError as exc:
        raise _Reject(400, str(exc)) from None
    now = mw.invalidate(targets, mode)
    return {"revalidated": True, "tags": tags, "paths": paths, "mode": mode, "now": now}


def handle(
    mw: ISRMiddleware, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    action = environ.get("PATH_INFO", "")[len(mw.endpoint) :]
    method = environ.get("REQUEST_METHOD", "GET")
    try:
        if action == "/revalidate":
            if method != "POST":
                raise _Reject(405, "use POST", [("Allow", "POST")])
            return _json(start_response, 200, _revalidate(mw, environ))
        if action in ("/status", "/metrics"):
            if method not in ("GET", "HEAD"):
                raise _Reject(405, "use GET", [("Allow", "GET, HEAD")])
            if not _authorised(mw, environ, None):
                raise _Reject(401, "missing or wrong secret")
            if action == "/status":
                status = {"store": mw.store.description, "counters": mw.stats.snapshot()}
                if mw.purges is not None:
                    status["purge"] = mw.purges.descriptions
                return _json(start_response, 200, status)
            body = mw.stats.prometheus().encode()
            start_response("200 OK", [*_METRICS_HEADERS, ("Content-Length", str(len(body)))])
            return [body]
        raise _Reject(404, f"unknown endpoint; use {mw.endpoint}/revalidate, /status or /metrics")
    except _Reject as r:
        return _json(start_response, r.code, {"error": r.message}, r.headers)
    except StoreError as exc:
        mw._store_failed(exc)
        # a durability failure says what happened (no server details in it); others do not
        message = str(exc) if isinstance(exc, DurabilityError) else "the cache store is unavailable"
        return _json(start_response, 503, {"error": message})
