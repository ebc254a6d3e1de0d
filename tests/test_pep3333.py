"""PEP 3333 on every path: the middleware between two ``wsgiref.validate`` layers.

The outer validator checks what the server sees (status, headers, the iterable
and its ``close()``); the inner one what the application sees (the environ of
every render, ``start_response`` use, and that its iterable is always closed).
"""

from __future__ import annotations

import gc
import io
import json
from collections.abc import Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
from helpers import FakeClock
from werkzeug.test import Client

from wsgi_isr import ISRMiddleware

SECRET = "v" * 32


class ClosingBody:
    """An app iterable that records whether ``close()`` was called."""

    closed: list[str] = []

    def __init__(self, path: str, chunks: list[bytes]) -> None:
        self.path, self.chunks = path, chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        ClosingBody.closed.append(self.path)


def app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    headers = [("Content-Type", "text/plain")]
    if path == "/plain":
        start_response("200 OK", headers)
        return ClosingBody(path, [b"not cached"])
    if path == "/big":
        start_response("200 OK", [*headers, ("X-ISR-Revalidate", "60")])
        return ClosingBody(path, [b"x" * 600, b"y" * 600])
    if path == "/vary":
        start_response(
            "200 OK", [*headers, ("X-ISR-Revalidate", "60"), ("Vary", "Accept-Language")]
        )
        lang = environ.get("HTTP_ACCEPT_LANGUAGE", "-")
        return ClosingBody(path, [f"lang={lang}".encode()])
    if path == "/hook":
        start_response("200 OK", [*headers, ("X-ISR-Debug", "internal")])
        return ClosingBody(path, [b"ok"])
    start_response("200 OK", [*headers, ("X-ISR-Revalidate", "60"), ("X-ISR-Tags", "t")])
    return ClosingBody(path, [b"page ", path.encode()])


class ClosingClient(Client):
    """A test client that reads every answer whole and closes it, as servers do."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["buffered"] = True
        return super().open(*args, **kwargs)


@pytest.fixture
def setup() -> tuple[Client, FakeClock, ISRMiddleware]:
    ClosingBody.closed = []
    clock = FakeClock()
    mw = ISRMiddleware(
        validator(app),
        store="memory://",
        clock=clock,
        secret=SECRET,
        max_entry_bytes=1000,
        bypass_token="preview-token",
    )
    return ClosingClient(validator(mw), use_cookies=False), clock, mw


def test_every_path_keeps_pep_3333(setup: tuple[Client, FakeClock, ISRMiddleware]) -> None:
    client, clock, mw = setup
    assert client.get("/p").headers["X-ISR-Cache"] == "MISS"
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"
    assert client.head("/p").data == b""
    etag = client.get("/p").headers["ETag"]
    assert client.get("/p", headers={"If-None-Match": etag}).status_code == 304
    clock.advance(61)
    assert client.get("/p").headers["X-ISR-Cache"] == "STALE"
    assert mw.join(5)
    assert client.get("/p", headers={"Cookie": "a=b"}).status_code == 200
    assert client.get("/new", headers={"Cookie": "a=b"}).headers["X-ISR-Cache"] == "MISS"
    assert client.get("/p", headers={"X-ISR-Bypass": "preview-token"}).status_code == 200
    assert client.get("/plain").headers["X-ISR-Cache"] == "MISS"
    assert client.get("/plain").headers["X-ISR-Cache"] == "BYPASS"  # the marker
    assert client.get("/big").data == b"x" * 600 + b"y" * 600
    assert client.get("/vary", headers={"Accept-Language": "fr"}).data == b"lang=fr"
    assert client.get("/vary", headers={"Accept-Language": "de"}).data == b"lang=de"
    assert client.get("/vary").data == b"lang=-"
    r = client.post("/hook")
    assert r.status_code == 200 and "X-ISR-Debug" not in r.headers
    body = json.dumps({"tag": "t"}).encode()
    r = client.post(
        "/_isr/revalidate",
        data=body,
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
    )
    assert r.status_code == 200
    assert client.get("/_isr/status", headers={"Authorization": f"Bearer {SECRET}"}).json
    assert mw.join(5)
    gc.collect()  # the inner validator complains of an iterable collected unclosed


def test_oversized_miss_closed_before_its_first_chunk_closes_the_app_iterable() -> None:
    ClosingBody.closed = []
    mw = ISRMiddleware(app, store="memory://", max_entry_bytes=1000)
    started: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/big",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    result = mw(environ, lambda status, headers, exc_info=None: started.append(status))
    assert started == ["200 OK"]
    result.close()  # type: ignore[attr-defined]  # the client went away: never iterated
    assert ClosingBody.closed == ["/big"]


def test_vary_miss_sends_the_visitor_the_render_made_with_their_header() -> None:
    ClosingBody.closed = []
    mw = ISRMiddleware(validator(app), store="memory://")
    client = ClosingClient(validator(mw))
    r = client.get("/vary", headers={"Accept-Language": "fr"})
    assert r.data == b"lang=fr" and r.headers["X-ISR-Cache"] == "MISS"
    assert ClosingBody.closed.count("/vary") == 2  # the clean render and the visitor's
