"""Attacks on the cache layer, one named test each: poisoning through unkeyed input,
cache deception, personal data and Set-Cookie in stored pages, header injection
through tags, Host header tricks, filling the cache, and the endpoint's secret.

Every test plays the attacker's request first and then checks what the next clean
visitor gets (or what the store holds), which is what an attack would change.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CountingApp, FakeClock, make
from werkzeug.http import parse_cookie
from werkzeug.test import Client, EnvironBuilder

import wsgi_isr
from wsgi_isr import FileStore, ISRMiddleware, MemoryStore, codec
from wsgi_isr.entry import Entry, PassMarker
from wsgi_isr.keys import MAX_KEY, request_key, shorten

SECRET = "attack-tests-secret-0123456789abcdef"


def stored_bytes(store: Any) -> bytes:
    """Everything a store holds, raw, whatever the serialisation."""
    if isinstance(store, MemoryStore):  # the record objects, as they would be encoded
        return b"".join(
            k.encode("utf-8", "replace") + codec.dumps(lru.get(k)[1])
            for lru in (store.pages, store.passes)
            for k in lru
        )
    assert isinstance(store, FileStore)
    return b"".join(p.read_bytes() for p in Path(store.path).rglob("*") if p.is_file())


def call(mw: Any, **environ: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    """One request straight through WSGI, returning exactly what the server would get."""
    env = EnvironBuilder(path=environ.pop("path", "/p")).get_environ()
    env.update(environ)
    seen: list[Any] = []
    body = b"".join(mw(env, lambda s, h, e=None: seen.append((s, list(h)))))
    return seen[-1][0], seen[-1][1], body


# -- cache poisoning through unkeyed input ---------------------------------------------------


def naive_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A page that trusts every forwarding and override header, as apps behind a
    misconfigured proxy do. Whatever reaches it ends up in the page."""
    host = (
        environ.get("HTTP_X_FORWARDED_HOST")
        or environ.get("HTTP_X_HOST")
        or environ.get("HTTP_X_FORWARDED_SERVER")
        or environ["HTTP_HOST"]
    )
    scheme = (
        environ.get("HTTP_X_FORWARDED_PROTO")
        or environ.get("HTTP_X_FORWARDED_SCHEME")
        or environ["wsgi.url_scheme"]
    )
    port = environ.get("HTTP_X_FORWARDED_PORT", "")
    prefix = environ.get("HTTP_X_FORWARDED_PREFIX", "")
    path = (
        environ.get("HTTP_X_ORIGINAL_URL")
        or environ.get("HTTP_X_REWRITE_URL")
        or environ.get("REQUEST_URI")
        or environ["PATH_INFO"]
    )
    method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE") or environ["REQUEST_METHOD"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    fat = environ["wsgi.input"].read(length) if length else b""
    page = (
        f"<link rel=canonical href='{scheme}://{host}{port and ':' + port}{prefix}{path}'>"
        f" method={method} forwarded={environ.get('HTTP_FORWARDED', '')} body={fat!r}"
        f" user={environ.get('REMOTE_USER', '')}"
    )
    start_response("200 OK", [("Content-Type", "text/html"), ("X-ISR-Revalidate", "60")])
    return [page.encode()]


UNKEYED = [
    pytest.param({"X-Forwarded-Host": "evil.test"}, id="x-forwarded-host"),
    pytest.param({"X-Forwarded-Proto": "evil"}, id="x-forwarded-proto"),
    pytest.param({"X-Forwarded-Scheme": "evil"}, id="x-forwarded-scheme"),
    pytest.param({"X-Forwarded-Port": "6666evil"}, id="x-forwarded-port"),
    pytest.param({"X-Forwarded-Prefix": "/evil"}, id="x-forwarded-prefix"),
    pytest.param({"X-Forwarded-Server": "evil.test"}, id="x-forwarded-server"),
    pytest.param({"X-Host": "evil.test"}, id="x-host"),
    pytest.param({"X-Original-URL": "/evil"}, id="x-original-url"),
    pytest.param({"X-Rewrite-URL": "/evil"}, id="x-rewrite-url"),
    pytest.param({"X-HTTP-Method-Override": "EVIL"}, id="x-http-method-override"),
    pytest.param({"Forwarded": "for=6.6.6.6;host=evil.test;proto=evil"}, id="forwarded"),
]


def clean_page() -> bytes:
    mw, client, clock, _ = make(naive_app)
    return bytes(client.get("/p").data)


def attack(mw: Any, client: Client, clock: FakeClock, scenario: str, request: Any) -> None:
    """Play the attacker's request in one of the states where the cache renders."""
    if scenario == "cold":  # the attacker's request is the one that fills the cache
        assert request().headers["X-ISR-Cache"] == "MISS"
    elif scenario == "stale":  # ... or triggers the background regeneration
        client.get("/p")
        clock.advance(61)
        assert request().headers["X-ISR-Cache"] == "STALE"
    elif scenario == "hard-invalidated":  # ... or the foreground re-render
        client.get("/p")
        clock.advance(1)
        mw.revalidate_path("/p", mode="hard")
        clock.advance(1)
        assert request().headers["X-ISR-Cache"] == "MISS"
    else:  # with credentials: a personal answer, and a background fill
        assert "private" in request(Cookie="session=attacker").headers["Cache-Control"]
    assert mw.join(5)


SCENARIOS = ["cold", "stale", "hard-invalidated", "with-cookie"]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("headers", UNKEYED)
def test_unkeyed_header_cannot_poison_the_next_visitor(
    headers: dict[str, str], scenario: str
) -> None:
    mw, client, clock, _ = make(naive_app)

    def request(**extra: str) -> Any:
        return client.get("/p", headers={**headers, **extra})

    attack(mw, client, clock, scenario, request)
    victim = client.get("/p")
    assert victim.headers["X-ISR-Cache"] == "HIT"
    assert b"evil" not in victim.data
    assert victim.data == clean_page()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fat_get_body_cannot_poison_the_next_visitor(scenario: str) -> None:
    mw, client, clock, _ = make(naive_app)

    def request(**extra: str) -> Any:
        return client.get("/p", data=b"evil-body", headers=extra)

    attack(mw, client, clock, scenario, request)
    victim = client.get("/p")
    assert victim.headers["X-ISR-Cache"] == "HIT"
    assert b"evil" not in victim.data and victim.data == clean_page()


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(
            {"REQUEST_URI": "http://evil.test/evil", "RAW_URI": "/evil"}, id="absolute-uri"
        ),
        pytest.param({"REMOTE_USER": "evil", "werkzeug.request": object()}, id="server-environ"),
    ],
)
def test_server_environ_cannot_poison_the_next_visitor(extra: dict[str, Any]) -> None:
    mw, client, clock, _ = make(naive_app)
    client.get("/p", environ_overrides=extra)
    victim = client.get("/p")
    assert victim.headers["X-ISR-Cache"] == "HIT" and b"evil" not in victim.data


def test_vary_header_value_cannot_forge_another_variants_hashed_key() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-ISR-Revalidate", "60"), ("Vary", "User-Agent")])
        return [f"ua-length={len(environ.get('HTTP_USER_AGENT', ''))}".encode()]

    mw, client, clock, _ = make(app)
    victim_ua = "Mozilla/5.0 " + "x" * 600  # long enough for the variant key to be hashed
    client.get("/p", headers={"User-Agent": "warm-up"})  # learns that /p varies
    prefix = "http://localhost/p?\nuser-agent="
    forged = shorten(prefix + victim_ua)[len(prefix) :]  # "Mozilla/5.0 xxx…#<sha256>"
    assert client.get("/p", headers={"User-Agent": forged}).headers["X-ISR-Cache"] == "MISS"
    victim = client.get("/p", headers={"User-Agent": victim_ua})
    assert victim.data == f"ua-length={len(victim_ua)}".encode()


MOBILE_UA = "Mozilla/5.0 (Linux; Android 14) Chrome/126.0 Mobile Safari/537.36"


@pytest.mark.parametrize(
    ("header", "spelling", "value"),
    [
        pytest.param(
            "User-Agent", "spaces", MOBILE_UA.replace("Mobile Safari", "Mobile  Safari"), id="ws"
        ),
        pytest.param("User-Agent", "tabs", "\t" + MOBILE_UA.replace(" ", " \t") + " ", id="tabs"),
        pytest.param("X-Beta", "empty", "", id="empty-as-absent"),
    ],
)
@pytest.mark.parametrize("when", ["first-fill", "regeneration"])
def test_a_vary_value_spelled_otherwise_renders_as_its_key_holds_it(
    header: str, spelling: str, value: str, when: str
) -> None:
    """Variants are keyed on the header's value with whitespace folded (and an empty
    one as none): the render must see that value, not the attacker's spelling, or a
    spelling the page's own test tells apart fills (or regenerates) the variant of
    every visitor who spells it plainly. A real Flask view, PEP 3333's validator on
    both sides."""
    from wsgiref.validate import validator

    from flask import Flask, request

    app = Flask(__name__)

    @app.get("/layout")
    def layout() -> Any:
        if header == "X-Beta":
            ui = "BETA" if request.headers.get("X-Beta") is not None else "STABLE"
        else:
            ui = "MOBILE" if "Mobile Safari" in request.headers.get(header, "") else "DESKTOP"
        return ui, {"X-ISR-Revalidate": "60", "Vary": header}

    clock = FakeClock()
    mw = ISRMiddleware(validator(app.wsgi_app), store="memory://", clock=clock)
    client = Client(validator(mw))
    plain = {"X-Beta": "yes"} if header == "X-Beta" else {header: MOBILE_UA}
    attacker = {header: value}
    if header == "X-Beta":  # the plain visitor sends no X-Beta; the attacker an empty one
        plain = {}

    def get(headers: dict[str, str]) -> tuple[str, str]:
        r = client.get("/layout", headers=headers, buffered=True)
        r.close()
        return r.headers["X-ISR-Cache"], r.get_data(as_text=True)

    if when == "regeneration":
        assert get(plain)[0] == "MISS"
        clock.advance(61)
    seen = get(attacker)
    assert seen[0] == ("STALE" if when == "regeneration" else "MISS")
    assert mw.join(10)
    state, body = get(plain)
    assert state == "HIT"
    assert body == ("STABLE" if header == "X-Beta" else "MOBILE"), (spelling, seen, body)


# -- cache deception -------------------------------------------------------------------------


def account_app(opt_in_everything: bool = False) -> Callable[..., list[bytes]]:
    """Personal data at any path under /account (the view ignores the rest of the path);
    static files opt in. With ``opt_in_everything`` a careless global hook opts every
    response in, the account pages included."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        user = parse_cookie(environ.get("HTTP_COOKIE", "")).get("session")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth.startswith("Bearer "):
            user = auth[7:]
        headers = [("Content-Type", "text/html")]
        if path.startswith("/account"):
            body = f"account of {user}: card 4111-{user}" if user else "please log in"
        else:
            body = "body { color: red }"
            headers.append(("X-ISR-Revalidate", "3600"))
        if opt_in_everything:
            headers.append(("X-ISR-Revalidate", "3600"))
        start_response("200 OK", headers)
        return [body.encode()]

    return app


VICTIM = [
    pytest.param({"Cookie": "session=victim"}, id="cookie"),
    pytest.param({"Authorization": "Bearer victim"}, id="authorization"),
]
DECEPTIVE_PATHS = [
    "/account/settings/x.css",
    "/account/settings/x.js",
    "/account;x.css",
    "/account/settings/..%2Fx.png",
    "/account/settings/%0A.css",
]


@pytest.mark.parametrize("path", DECEPTIVE_PATHS)
@pytest.mark.parametrize("victim", VICTIM)
def test_cache_deception_static_looking_path_is_not_cached_without_opt_in(
    victim: dict[str, str], path: str
) -> None:
    mw, client, clock, _ = make(account_app())
    for _ in range(2):  # the victim is lured to the URL, twice
        r = client.get(path, headers=victim)
        assert b"card 4111-victim" in r.data  # they get their own page...
        assert "s-maxage" not in r.headers.get("Cache-Control", "")  # ...that no CDN keeps
    assert mw.join(5)
    stolen = client.get(path)  # the attacker fetches it without credentials
    assert b"victim" not in stolen.data
    assert stolen.headers["X-ISR-Cache"] != "HIT"
    rk = request_key(EnvironBuilder(path=path).get_environ())
    assert rk is not None
    assert not isinstance(mw.store.lookup(rk.key)[0], Entry)
    assert b"victim" not in stored_bytes(mw.store)


@pytest.mark.parametrize("victim", VICTIM)
def test_cache_deception_even_an_opted_in_account_page_is_rendered_without_credentials(
    victim: dict[str, str],
) -> None:
    mw, client, clock, _ = make(account_app(opt_in_everything=True))
    client.get("/account/settings/x.css", headers=victim)
    assert mw.join(5)
    stolen = client.get("/account/settings/x.css")
    assert stolen.headers["X-ISR-Cache"] == "HIT"  # cached, but as nobody's page
    assert stolen.data == b"please log in"
    assert b"victim" not in stored_bytes(mw.store)


def test_cache_deception_opted_in_static_file_is_still_cached() -> None:
    mw, client, clock, app = make(account_app())
    client.get("/static/site.css", headers={"Cookie": "session=victim"})
    assert mw.join(5)
    r = client.get("/static/site.css")
    assert r.headers["X-ISR-Cache"] == "HIT" and r.data == b"body { color: red }"


# -- personal data and Set-Cookie ------------------------------------------------------------

COOKIE_SECRET = "alice-session-7f3a9c"
AUTH_SECRET = "alice-token-0b1d2e"


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore(clock=clock)
    else:
        yield FileStore(str(tmp_path / "store"), clock=clock)


def test_cookie_and_authorization_never_reach_a_stored_page(store: Any, clock: Any) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        vary = {"/vary-cookie": "Cookie", "/vary-auth": "Authorization"}.get(
            path, "Accept-Language"
        )
        start_response(
            "200 OK",
            [("X-ISR-Revalidate", "60"), ("Vary", vary), ("X-ISR-Tags", "pages")],
        )
        seen = f"{environ.get('HTTP_COOKIE')} {environ.get('HTTP_AUTHORIZATION')}"
        return [f"{path} saw {seen}".encode()]

    mw = ISRMiddleware(app, store=store, clock=clock)
    client = Client(mw, use_cookies=False)
    alice = {
        "Cookie": f"session={COOKIE_SECRET}",
        "Authorization": f"Bearer {AUTH_SECRET}",
        "Accept-Language": "fr",
    }
    for path in ("/plain", "/vary-cookie", "/vary-auth", "/plain?x=1"):
        mine = client.get(path, headers=alice)
        assert COOKIE_SECRET.encode() in mine.data  # alice's own answer, rendered for her
        assert mw.join(5)
        assert COOKIE_SECRET.encode() not in client.get(path).data
        clock.advance(61)  # stale: alice's visit triggers the regeneration
        client.get(path, headers=alice)
        assert mw.join(5)
        clock.advance(1)
        mw.revalidate_tag("pages", mode="hard")  # expired: alice's visit renders again
        clock.advance(1)
        client.get(path, headers=alice)
        assert mw.join(5)
    raw = stored_bytes(store)
    assert b"/plain saw None None" in raw  # the scan does see page bodies
    assert COOKIE_SECRET.encode() not in raw
    assert AUTH_SECRET.encode() not in raw


def test_set_cookie_is_never_stored_or_replayed(store: Any, clock: Any) -> None:
    renders = iter(range(1, 1000))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        n = next(renders)
        start_response("200 OK", [("X-ISR-Revalidate", "60"), ("Set-Cookie", f"sid=s{n}")])
        return [b"page"]

    mw = ISRMiddleware(app, store=store, clock=clock)
    client = Client(mw, use_cookies=False)
    given: list[str] = []
    for i in range(6):
        r = client.get("/p", headers={"Cookie": "sid=old"} if i % 2 else {})
        assert r.status_code == 200 and r.headers.get("X-ISR-Cache") != "HIT"
        given += r.headers.getlist("Set-Cookie")
        clock.advance(2)  # past the short hit-for-pass marker
    assert mw.join(5)
    assert len(given) == len(set(given))  # each visitor got only the cookie made for them
    assert b"sid=s" not in stored_bytes(store)


def test_set_cookie_from_a_regeneration_is_refused_and_never_replayed(clock: Any) -> None:
    """A page that starts minting cookies can no longer be shared: its old copy is
    dropped (DESIGN 5: a healthy answer is the truth), every visitor gets a live
    render of their own, and no minted cookie is ever stored or replayed."""
    app = CountingApp()
    mw, client, _, _ = make(app, clock=clock)
    client.get("/p")
    clock.advance(61)
    app.pages["/p"] = [("X-ISR-Revalidate", "60"), ("Set-Cookie", "sid=minted-in-regeneration")]
    client.get("/p")
    assert mw.join(5)
    for i in range(3):
        r = client.get("/p")
        assert r.headers["X-ISR-Cache"] == "BYPASS" and b"render 1" not in r.data
        assert r.headers.getlist("Set-Cookie") == ["sid=minted-in-regeneration"]
        assert app.count("/p") == 3 + i  # rendered for this visitor, not replayed
        clock.advance(2)  # past the short hit-for-pass marker
    assert b"minted" not in stored_bytes(mw.store)


def test_refreshed_session_cookie_goes_only_to_its_owner() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = [("X-ISR-Revalidate", "60")]
        sid = parse_cookie(environ.get("HTTP_COOKIE", "")).get("sid")
        if sid:  # a session framework refreshing the cookie on every response
            headers.append(("Set-Cookie", f"sid={sid}; Max-Age=3600"))
        start_response("200 OK", headers)
        return [b"page"]

    mw, client, clock, _ = make(app)
    owner = client.get("/p", headers={"Cookie": "sid=owner-123"})
    assert owner.headers["Set-Cookie"].startswith("sid=owner-123")
    assert mw.join(5)
    anonymous = [client.get("/p") for _ in range(3)]
    assert anonymous[-1].headers["X-ISR-Cache"] == "HIT"
    assert not [r for r in anonymous if "Set-Cookie" in r.headers]
    assert b"owner-123" not in stored_bytes(mw.store)


def test_one_pages_headers_are_never_served_for_another() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        target = {"/a": "/x", "/b": "/y"}[environ["PATH_INFO"]]
        start_response("301 Moved Permanently", [("X-ISR-Revalidate", "60"), ("Location", target)])
        return [b""]  # redirects: empty bodies, so equal ETags

    mw, client, clock, _ = make(app)  # a clock that reads the same for both renders
    assert client.get("/a").headers["Location"] == "/x"
    assert client.get("/b").headers["Location"] == "/y"


# -- header injection through tags -----------------------------------------------------------

PAYLOADS = [
    pytest.param("ok\r\nSet-Cookie: pwn=1", id="crlf"),
    pytest.param("ok\nX-Pwn: 1", id="lf"),
    pytest.param("ok\rX-Pwn: 1", id="cr"),
    pytest.param("pwn\x00nul", id="nul"),
    pytest.param("pwn\u2028line-separator", id="unicode-line-separator"),
    pytest.param("pwn-\u00e9\u00e8", id="latin-1"),
    pytest.param("pwn\x85next-line", id="nel"),
    pytest.param("pwn\x7fdel", id="del"),
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("source", ["X-ISR-Tags", "wsgi_isr.tag"])
def test_tag_injection_is_never_echoed_and_never_crashes(
    source: str, payload: str, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = [("X-ISR-Revalidate", "false")]
        if source == "X-ISR-Tags":
            headers.append(("X-ISR-Tags", f"good, {payload}"))
        else:
            wsgi_isr.tag("good", payload, None, 42, b"bytes")  # type: ignore[arg-type]
        start_response("200 OK", headers)
        return [b"page"]

    mw, client, clock, _ = make(app)
    with caplog.at_level(logging.DEBUG, logger="wsgi_isr"):
        for expected in ("MISS", "HIT"):
            status, headers, body = call(mw)
            assert status == "200 OK" and body == b"page"
            labels = dict(headers)
            assert labels["X-ISR-Cache"] == expected
            for name, value in headers:
                assert "pwn" not in name.lower() and "pwn" not in value.lower()
                assert not set("\r\n\x00").intersection(name + value)
            assert "Set-Cookie" not in labels
    entry = mw.store.lookup("http://localhost/p?")[0]
    assert isinstance(entry, Entry)
    kept = [t for t in entry.tags if not t.startswith("_isr_")]
    if source == "wsgi_isr.tag" and payload == "pwn-\u00e9\u00e8":
        # printable beyond ASCII, through the Python API: kept percent-encoded (the
        # form revalidate_tag("pwn-éè") invalidates), never raw in a header
        assert kept == ["good", "pwn-%C3%A9%C3%A8"]
    else:
        assert kept == ["good"]
    assert "pwn" not in caplog.text  # not echoed into the log either
    clock.advance(1)
    mw.revalidate_tag("good")  # the valid tag still works
    clock.advance(1)
    assert dict(call(mw)[1])["X-ISR-Cache"] == "STALE"
    assert mw.join(5)


def test_a_url_argument_cannot_add_tags_through_a_page_decorator() -> None:
    """``@isr.page(tags=lambda q: [f"search-{q}"])`` and a visitor asking for
    ``/s/x,articles``: the tag made of the argument is dropped (it has a comma), never
    split into ``search-x`` and a tag the visitor chose. A single string is one tag."""
    from flask import Flask

    from wsgi_isr.flask import ISR

    app = Flask(__name__)
    app.config["ISR_STORE"] = "memory://"
    isr = ISR(app)

    @app.get("/s/<q>")
    @isr.page(tags=lambda q: [f"search-{q}"])
    def search(q: str) -> str:
        return f"results for {q}"

    @app.get("/one")
    @isr.page(tags="articles")
    def one() -> str:
        return "one"

    client = app.test_client()
    paths = ("/s/x,articles", "/s/plain", "/one")
    for path in paths:
        assert client.get(path).headers["X-ISR-Cache"] == "MISS"
    entries = {path: isr.middleware.store.lookup(f"http://localhost{path}?")[0] for path in paths}
    kept = {
        path: sorted(t for t in e.tags if not t.startswith("_isr_")) for path, e in entries.items()
    }
    assert kept == {"/s/x,articles": [], "/s/plain": ["search-plain"], "/one": ["articles"]}


@pytest.mark.parametrize("header", ["Cache-Tag", "Surrogate-Key"])
def test_cdn_tag_headers_with_invalid_tags_store_only_valid_ones(header: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        sep = " " if header == "Surrogate-Key" else ","
        value = sep.join(["good", "pwn\x00nul", "_isr_page:/", "pwn-\u00e9", "x" * 300])
        start_response("200 OK", [("X-ISR-Revalidate", "60"), (header, value)])
        return [b"page"]

    mw, client, clock, _ = make(app)
    call(mw)
    entry = mw.store.lookup("http://localhost/p?")[0]
    assert isinstance(entry, Entry)
    assert [t for t in entry.tags if not t.startswith("_isr_")] == ["good"]
    # the forged implicit tag was dropped: invalidating "/" as a page leaves /p alone
    clock.advance(1)
    mw.revalidate_path("/")
    clock.advance(1)
    assert dict(call(mw)[1])["X-ISR-Cache"] == "HIT"


# -- Host header -----------------------------------------------------------------------------


def host_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("X-ISR-Revalidate", "60")])
    return [f"<a href='//{environ.get('HTTP_HOST')}/next'>".encode()]


TRUSTED = [
    pytest.param(None, id="no-trusted-hosts"),
    pytest.param(["example.com"], id="trusted-hosts"),
]


@pytest.mark.parametrize("trusted", TRUSTED)
@pytest.mark.parametrize(
    "spelling", ["EXAMPLE.COM", "example.com:80", "example.com.", "Example.Com.:80", " example.com"]
)
def test_host_spellings_share_the_key_and_render_with_the_canonical_host(
    spelling: str, trusted: list[str] | None
) -> None:
    mw, client, clock, _ = make(host_app, trusted_hosts=trusted)
    attacker = client.get("/p", environ_overrides={"HTTP_HOST": spelling})
    assert attacker.headers["X-ISR-Cache"] == "MISS"
    victim = client.get("/p", headers={"Host": "example.com"})
    assert victim.headers["X-ISR-Cache"] == "HIT"
    assert victim.data == b"<a href='//example.com/next'>"


@pytest.mark.parametrize("trusted", TRUSTED)
@pytest.mark.parametrize(
    "other",
    ["evil.test", "example.com:8080", "example.com:443", "evil.test:80", "www.example.com"],
)
def test_other_hosts_and_ports_never_fill_the_canonical_key(
    other: str, trusted: list[str] | None
) -> None:
    mw, client, clock, app = make(host_app, trusted_hosts=trusted)
    r = client.get("/p", headers={"Host": other})
    if trusted is not None and not other.startswith("example.com"):
        assert r.headers["X-ISR-Cache"] == "BYPASS"  # untrusted: never stored at all
    victim = client.get("/p", headers={"Host": "example.com"})
    assert victim.headers["X-ISR-Cache"] == "MISS"
    assert victim.data == b"<a href='//example.com/next'>"


@pytest.mark.parametrize("trusted", TRUSTED)
@pytest.mark.parametrize(
    "host",
    [
        "example.com@evil.test",
        "evil.test/example.com",
        "evil.test#example.com",
        "evil.test?example.com",
        "example.com evil.test",
        "example.com\r\nX-Injected: 1",
        "example.com\x00evil.test",
        "ex\u00e4mple.com",
        "example.com:80:80",
        "example.com:",
        "example.com:123456",
        "[::1",
        "evil.test\\example.com",
        "..",
    ],
)
def test_malformed_host_bypasses_and_stores_nothing(host: str, trusted: list[str] | None) -> None:
    mw, client, clock, app = make(host_app, trusted_hosts=trusted)
    r = client.get("/p", environ_overrides={"HTTP_HOST": host})
    assert r.headers["X-ISR-Cache"] == "BYPASS"
    assert mw.store.count() == 0
    victim = client.get("/p", headers={"Host": "example.com"})
    assert victim.headers["X-ISR-Cache"] == "MISS"
    assert victim.data == b"<a href='//example.com/next'>"


@pytest.mark.parametrize("trusted", [None, ["example.com", "example.com.au", "example.com:8080"]])
@pytest.mark.parametrize(
    ("host", "path_info", "victim_host", "victim_path"),
    [
        ("example.co", "m/p", "example.com", "/p"),
        ("example.com", ".au/p", "example.com.au", "/p"),
        ("example.com", ":8080/p", "example.com:8080", "/p"),
        ("example.com", "p", "example.com", "/p"),
    ],
)
def test_a_path_without_its_slash_never_spells_another_hosts_key(
    host: str, path_info: str, victim_host: str, victim_path: str, trusted: list[str] | None
) -> None:
    # werkzeug's and wsgiref's servers hand "GET m/p" to the app as PATH_INFO "m/p"
    mw, client, clock, app = make(host_app, trusted_hosts=trusted)
    environ = EnvironBuilder("/", headers={"Host": host}).get_environ()
    environ["PATH_INFO"] = path_info
    status, headers, _ = call(mw, **environ)
    assert dict(headers)["X-ISR-Cache"] == "BYPASS"
    assert mw.store.count() == 0
    victim = client.get(victim_path, headers={"Host": victim_host})
    assert victim.headers["X-ISR-Cache"] == "MISS"
    assert victim.data == f"<a href='//{victim_host}/next'>".encode()


@pytest.mark.parametrize("server", ["werkzeug", "wsgiref"])
def test_a_slashless_request_target_through_a_real_server_poisons_nothing(server: str) -> None:
    mw, _, clock, app = make(host_app)
    if server == "werkzeug":
        from werkzeug.serving import make_server as werkzeug_server

        httpd: Any = werkzeug_server("127.0.0.1", 0, mw, threaded=True)
    else:
        from wsgiref.simple_server import WSGIRequestHandler
        from wsgiref.simple_server import make_server as wsgiref_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        httpd = wsgiref_server("127.0.0.1", 0, mw, handler_class=Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]

    def ask(target: str, host: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return answer

    try:
        attacker = ask("m/p", "example.co")
        assert attacker.startswith(b"HTTP/1.") and b"X-ISR-Cache: BYPASS" in attacker
        victim = ask("/p", "example.com")
        assert b"X-ISR-Cache: MISS" in victim
        assert victim.endswith(b"<a href='//example.com/next'>")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.mark.parametrize(
    "server_environ",
    [
        # werkzeug's server takes the host from an absolute request-target
        pytest.param(
            {"HTTP_HOST": "evil.test", "REQUEST_URI": "http://evil.test/p"}, id="werkzeug"
        ),
        # gunicorn keeps the Host header and passes the raw target along
        pytest.param(
            {
                "HTTP_HOST": "example.com",
                "RAW_URI": "http://evil.test/p",
                "REQUEST_URI": "http://evil.test/p",
            },
            id="gunicorn",
        ),
    ],
)
def test_absolute_uri_request_line_cannot_poison_the_canonical_page(
    server_environ: dict[str, str],
) -> None:
    mw, client, clock, app = make(naive_app)
    client.get("/p", environ_overrides=server_environ)  # GET http://evil.test/p HTTP/1.1
    victim = client.get("/p", headers={"Host": "example.com"})
    assert b"evil" not in victim.data
    assert victim.data == b"".join(
        naive_app(
            EnvironBuilder("/p", headers={"Host": "example.com"}).get_environ(), lambda *a: None
        )
    )


# -- cache filling ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "file"])
def bounded(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Any:
    if request.param == "memory":
        return MemoryStore(max_entries=20, max_markers=5, clock=clock)
    return FileStore(str(tmp_path / "store"), max_entries=20, max_markers=5, clock=clock)


def test_cache_filling_with_distinct_query_strings_stays_within_max_entries(
    bounded: Any, clock: Any
) -> None:
    app = CountingApp(pages={"/plain": []})  # /plain does not opt in: markers count too
    mw = ISRMiddleware(app, store=bounded, clock=clock)
    client = Client(mw, use_cookies=False)
    for i in range(200):
        assert client.get(f"/{'plain' if i % 3 == 0 else 'p'}?junk={i}").status_code == 200
        assert bounded.count() <= 25  # pages and hit-for-pass markers, each on its budget
    assert client.get("/p?junk=199").headers["X-ISR-Cache"] == "HIT"  # still caching
    assert app.count("/p") + app.count("/plain") == 200


def test_cache_filling_with_ignored_params_lands_on_one_entry(bounded: Any, clock: Any) -> None:
    app = CountingApp()
    mw = ISRMiddleware(app, store=bounded, clock=clock, query_params=["page"])
    client = Client(mw, use_cookies=False)
    for i in range(100):
        r = client.get(f"/p?page=1&utm_{i}=x&ref={i}")
        assert r.status_code == 200
    assert bounded.count() == 1 and app.count("/p") == 1


def test_cache_filling_does_not_grow_the_file_store_without_bound(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / "store"), max_entries=20)
    mw = ISRMiddleware(CountingApp(), store=store)
    client = Client(mw, use_cookies=False)
    for i in range(300):
        client.get(f"/p?junk={i}")
    files = sum(len(names) for _, _, names in os.walk(store.path))
    assert files <= 100  # entries are bounded; so must everything else be


# -- the endpoint's secret -------------------------------------------------------------------


class RecordingHmac:
    """Wraps ``hmac.compare_digest`` and records every comparison, wherever in the
    package it is made (so the test survives moving the comparison around)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = hmac.compare_digest
        self.calls: list[tuple[bytes, bytes]] = []
        monkeypatch.setattr(hmac, "compare_digest", self.compare_digest)

    def compare_digest(self, a: Any, b: Any) -> bool:
        self.calls.append((a, b))
        return self.real(a, b)


@pytest.mark.parametrize(
    ("headers", "body", "given", "status"),
    [
        pytest.param(
            {"Authorization": f"Bearer {SECRET}"}, {"tag": "t"}, SECRET, 200, id="bearer-right"
        ),
        pytest.param(
            {"Authorization": "Bearer guess"}, {"tag": "t"}, "guess", 401, id="bearer-wrong"
        ),
        pytest.param({}, {"tag": "t", "secret": SECRET}, SECRET, 200, id="body-right"),
        pytest.param({}, {"tag": "t", "secret": SECRET[:-1]}, SECRET[:-1], 401, id="body-prefix"),
        pytest.param({}, {"tag": "t", "secret": "g"}, "g", 401, id="body-wrong"),
    ],
)
def test_endpoint_secret_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
    body: dict[str, str],
    given: str,
    status: int,
) -> None:
    recorder = RecordingHmac(monkeypatch)
    mw, client, clock, _ = make(secret=SECRET)
    r = client.post("/_isr/revalidate", json=body, headers=headers)
    assert r.status_code == status
    assert recorder.calls == [(given.encode(), SECRET.encode())]


def test_status_secret_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = RecordingHmac(monkeypatch)
    mw, client, clock, _ = make(secret=SECRET)
    assert client.get("/_isr/status", headers={"Authorization": "Bearer no"}).status_code == 401
    ok = client.get("/_isr/status", headers={"Authorization": f"Bearer {SECRET}"})
    assert ok.status_code == 200
    assert recorder.calls == [(b"no", SECRET.encode()), (SECRET.encode(), SECRET.encode())]


@pytest.mark.parametrize("where", ["header", "cookie"])
def test_bypass_token_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    recorder = RecordingHmac(monkeypatch)
    token = "draft-preview-token-0123456789"
    mw, client, clock, _ = make(bypass_token=token)
    headers = {"X-ISR-Bypass": "guess"} if where == "header" else {"Cookie": "__isr_bypass=guess"}
    assert client.get("/p", headers=headers).headers["X-ISR-Cache"] != "BYPASS"
    assert (b"guess", token.encode()) in recorder.calls


class Untouchable:
    """A request body that must never be read (it would be endless)."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the endpoint read a body it should have refused")

    readline = read


@pytest.mark.parametrize("length", [64 * 1024 + 1, 10**9, 10**30])
def test_endpoint_refuses_large_bodies_without_reading_them(length: int) -> None:
    mw = ISRMiddleware(CountingApp(), store=MemoryStore(), secret=SECRET)
    status, headers, body = call(
        mw,
        path="/_isr/revalidate",
        REQUEST_METHOD="POST",
        CONTENT_LENGTH=str(length),
        CONTENT_TYPE="application/json",
        HTTP_AUTHORIZATION=f"Bearer {SECRET}",
        **{"wsgi.input": Untouchable()},
    )
    assert status.startswith("413") and b"error" in body


def test_endpoint_does_not_read_a_body_it_cannot_bound_or_need() -> None:
    """Without ``Content-Length`` the body is read only when the server ends the stream
    (``wsgi.input_terminated``: a chunked body), and never for a wrong Bearer secret."""
    mw = ISRMiddleware(CountingApp(), store=MemoryStore(), secret=SECRET)
    unterminated: dict[str, Any] = {"wsgi.input": Untouchable()}
    status, headers, body = call(
        mw, path="/_isr/revalidate", REQUEST_METHOD="POST", CONTENT_LENGTH="", **unterminated
    )
    assert status.startswith("401")
    chunked: dict[str, Any] = {"wsgi.input": Untouchable(), "wsgi.input_terminated": True}
    status, headers, body = call(
        mw,
        path="/_isr/revalidate",
        REQUEST_METHOD="POST",
        HTTP_AUTHORIZATION="Bearer wrong",
        **chunked,
    )
    assert status.startswith("401")


@pytest.mark.parametrize(
    ("secret", "warns"),
    [
        pytest.param("s" * 31, True, id="31-chars"),
        pytest.param("s" * 32, False, id="32-chars"),
        pytest.param("correct horse", True, id="passphrase"),
    ],
)
def test_short_secret_warning_boundary_and_no_secret_in_the_log(
    secret: str, warns: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="wsgi_isr"):
        ISRMiddleware(CountingApp(), store=MemoryStore(), secret=secret)
    assert ("shorter than 32" in caplog.text) is warns
    assert secret not in caplog.text


def test_keys_never_exceed_max_key_whatever_the_url_length() -> None:
    mw, client, clock, app = make()
    for n in (10, 600, 5000, 60_000):
        client.get("/p/" + "a" * n + "?q=" + "b" * n)
    keys = [*mw.store.pages, *mw.store.passes]
    assert keys and all(len(k) <= MAX_KEY for k in keys)
    assert isinstance(mw.store.lookup(keys[-1])[0], Entry | PassMarker)
