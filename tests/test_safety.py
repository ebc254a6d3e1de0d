"""What is never cached and never leaked (DESIGN §5), in process."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from helpers import CountingApp, make

from wsgi_isr import MemoryStore, StoreError
from wsgi_isr.entry import Record, TagState


def test_other_methods_pass_through_untouched() -> None:
    seen: list[bytes] = []

    def app(environ: Any, start_response: Any) -> Any:
        seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [("X-ISR-Revalidate", "60")])
        return [environ["REQUEST_METHOD"].encode()]

    mw, client, clock, _ = make(app)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r = client.open("/p", method=method, data=b"payload")
        assert r.data == method.encode()
        assert "X-ISR-Cache" not in r.headers
    assert seen == [b"payload"] * 4
    assert mw.store.count() == 0


@pytest.mark.parametrize(
    ("header", "value", "marker"),
    [
        pytest.param("Cookie", "session=alice", b"alice", id="cookie"),
        pytest.param("Authorization", "Bearer alice-token", b"alice", id="authorization"),
        pytest.param("X-Forwarded-Host", "evil.example", b"evil", id="x-forwarded-host"),
    ],
)
def test_cached_renders_never_see_visitor_credentials_or_forwarding_headers(
    header: str, value: str, marker: bytes
) -> None:
    mw, client, clock, app = make()
    first = client.get("/p", headers={header: value})
    if header in ("Cookie", "Authorization"):
        # the visitor gets their own page (rendered with their credentials) ...
        assert marker in first.data
        assert first.headers["Cache-Control"] == "private, no-cache"
        assert mw.join(5)  # ... and a clean render fills the cache in the background
    anonymous = client.get("/p")
    assert anonymous.headers["X-ISR-Cache"] == "HIT"
    assert marker not in anonymous.data
    for environ in app.environs:
        if environ.get("wsgi_isr.render"):
            assert "HTTP_COOKIE" not in environ
            assert "HTTP_AUTHORIZATION" not in environ
            assert "HTTP_X_FORWARDED_HOST" not in environ


def test_cached_page_is_served_to_visitors_with_ordinary_cookies() -> None:
    mw, client, clock, app = make()
    client.get("/p")
    r = client.get("/p", headers={"Cookie": "theme=dark"})
    assert r.headers["X-ISR-Cache"] == "HIT"
    assert app.count("/p") == 1


def test_render_environ_is_clean() -> None:
    mw, client, clock, app = make()
    client.get(
        "/p?x=1",
        headers={"X-Original-URL": "/admin", "X-HTTP-Method-Override": "DELETE"},
        data=b"fat get body",
        environ_overrides={"werkzeug.request": object(), "REMOTE_USER": "alice"},
    )
    env = app.environs[0]
    assert env["REQUEST_METHOD"] == "GET"
    assert env["wsgi.input"].read() == b""
    for leftover in (
        "werkzeug.request",
        "REMOTE_USER",
        "HTTP_X_ORIGINAL_URL",
        "HTTP_X_HTTP_METHOD_OVERRIDE",
        "CONTENT_LENGTH",
    ):
        assert leftover not in env


def test_bypass_cookie_goes_straight_to_the_app_and_is_not_stored() -> None:
    mw, client, clock, app = make(bypass_cookies=["session"])
    r = client.get("/p", headers={"Cookie": "session=admin"})
    assert r.headers["X-ISR-Cache"] == "BYPASS"
    assert b"session=admin" in r.data
    assert "s-maxage" not in r.headers.get("Cache-Control", "")
    assert client.get("/p").headers["X-ISR-Cache"] == "MISS"
    assert mw.stats["bypasses"] == 1


@pytest.mark.parametrize(
    ("headers", "bypassed"),
    [
        pytest.param({"X-ISR-Bypass": "draft-token-0123456789"}, True, id="header"),
        pytest.param({"Cookie": "__isr_bypass=draft-token-0123456789"}, True, id="cookie"),
        pytest.param({"X-ISR-Bypass": "wrong"}, False, id="wrong-header"),
        pytest.param({"Cookie": "__isr_bypass=wrong"}, False, id="wrong-cookie"),
    ],
)
def test_bypass_token_for_drafts(headers: dict[str, str], bypassed: bool) -> None:
    mw, client, clock, app = make(bypass_token="draft-token-0123456789")
    client.get("/p")  # cached
    r = client.get("/p", headers=headers)
    assert (r.headers["X-ISR-Cache"] == "BYPASS") is bypassed
    assert app.count("/p") == (2 if bypassed else 1)


@pytest.mark.parametrize(
    ("host", "cached"),
    [
        pytest.param("example.com", True, id="trusted"),
        pytest.param("www.example.com", True, id="trusted-subdomain"),
        pytest.param("evil.test", False, id="untrusted"),
        pytest.param("example.com.evil.test", False, id="suffix-trick"),
    ],
)
def test_trusted_hosts(host: str, cached: bool) -> None:
    mw, client, clock, app = make(trusted_hosts=[".example.com"])
    client.get("/p", headers={"Host": host})
    r = client.get("/p", headers={"Host": host})
    assert (r.headers["X-ISR-Cache"] == "HIT") is cached


def test_hosts_are_separate_keys_without_trusted_hosts() -> None:
    mw, client, clock, app = make()
    client.get("/p", headers={"Host": "a.test"})
    r = client.get("/p", headers={"Host": "b.test"})
    assert r.headers["X-ISR-Cache"] == "MISS"
    assert client.get("/p", headers={"Host": "A.TEST:80"}).headers["X-ISR-Cache"] == "HIT"


def test_malformed_host_bypasses() -> None:
    mw, client, clock, app = make()
    r = client.get("/p", headers={"Host": "bad host/with\\stuff"})
    assert r.headers["X-ISR-Cache"] == "BYPASS"


def test_failed_regeneration_keeps_the_stale_page_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = CountingApp()
    mw, client, clock, _ = make(app, regeneration_backoff=30)
    client.get("/p")
    clock.advance(61)

    def boom(environ: Any) -> None:
        raise RuntimeError("database down")

    app.before = boom
    with caplog.at_level(logging.ERROR, logger="wsgi_isr"):
        for _ in range(5):
            r = client.get("/p")
            assert r.status_code == 200 and r.headers["X-ISR-Cache"] == "STALE"
            assert b"render 1" in r.data
            mw.join(5)
    assert app.count("/p") == 2  # one failed attempt, then backed off
    assert mw.stats["regenerations_failed"] == 1
    assert "database down" in caplog.text
    clock.advance(31)  # backoff over: tried again, and this time it works
    app.before = None
    client.get("/p")
    mw.join(5)
    assert b"render 3" in client.get("/p").data


def test_regeneration_returning_5xx_keeps_the_stale_page() -> None:
    app = CountingApp()
    mw, client, clock, _ = make(app)
    client.get("/p")
    clock.advance(61)
    app.pages["/p"] = ("503 Service Unavailable", [("X-ISR-Revalidate", "60")])
    client.get("/p")
    mw.join(5)
    r = client.get("/p")
    assert r.status_code == 200 and b"render 1" in r.data
    assert mw.stats["regenerations_failed"] == 1


def test_page_that_stops_opting_in_is_no_longer_served_from_cache() -> None:
    app = CountingApp()
    mw, client, clock, _ = make(app)
    client.get("/p")
    clock.advance(61)
    app.pages["/p"] = []
    client.get("/p")
    mw.join(5)
    r = client.get("/p")
    assert b"render 3" in r.data


class BrokenStore(MemoryStore):
    """A store whose backend is down."""

    def lookup(self, key: str) -> tuple[Record | None, Mapping[str, TagState]]:
        raise StoreError("connection refused")

    def acquire(self, name: str, ttl: float) -> str | None:
        raise StoreError("connection refused")

    def invalidate(self, tags: Iterable[str], at: float | None = None, *, hard: bool) -> float:
        raise StoreError("connection refused")


def test_store_failure_falls_back_to_the_app(caplog: pytest.LogCaptureFixture) -> None:
    mw, client, clock, app = make(store=BrokenStore(), secret="s" * 32)
    with caplog.at_level(logging.ERROR, logger="wsgi_isr"):
        for _ in range(3):
            r = client.get("/p", headers={"Cookie": "a=b"})
            assert r.status_code == 200
    assert app.count("/p") == 3
    assert b"cookie=a=b" in r.data  # straight to the app, with the visitor's own request
    assert caplog.text.count("store error") == 1  # logged once per interval, not per request
    r = client.post("/_isr/revalidate", json={"tag": "x", "secret": "s" * 32})
    assert r.status_code == 503 and "error" in r.json


class FailingWrites(MemoryStore):
    def put(self, key: str, record: Record, ttl: float | None) -> None:
        raise StoreError("disk full")


def test_failing_store_writes_still_answer() -> None:
    mw, client, clock, app = make(store=FailingWrites())
    for _ in range(2):
        r = client.get("/p")
        assert r.status_code == 200 and r.headers["X-ISR-Cache"] == "MISS"
    assert mw.stats["store_errors"] >= 2
