"""DESIGN 3/5 at the edges: what a red-team review of the issue-9 work found.

Each test is a promise a real app or deployment broke before it was fixed: hung
leaders that finally fail, a hung background regeneration in front of a visitor who
needs a fresh page, renders that block the gevent hub past a lease, iterables left
open, CDN headers counted from the wrong instant, unstorable ``Vary`` pages, garbage
tag state in Redis, ``Vary: Cookie``, a rate-limited regeneration, fail-open answers
rendered from unkeyed headers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from helpers import CountingApp, make
from werkzeug.test import Client

from wsgi_isr.entry import Entry

KEY = "http://localhost/p?"


class Gate:
    """A WSGI app whose n-th render of /p does what ``plan[n]`` says."""

    def __init__(self, plan: dict[int, str]) -> None:
        self.plan = plan
        self.n = 0
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.n += 1
        what = self.plan.get(self.n, "ok")
        if what.startswith("hang"):
            self.entered.set()
            self.release.wait(20)
            if what == "hang-raise":
                raise RuntimeError("database timeout after a long hang")
            if what == "hang-503":
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"db down"]
        start_response("200 OK", [("X-ISR-Revalidate", "60"), ("X-ISR-Tags", "p")])
        return [f"good {self.n}".encode()]


# -- a hung BACKGROUND regeneration holds the lock for lock_timeout -------------------


def test_hung_background_regeneration_does_not_hold_foreground_visitors() -> None:
    """DESIGN 3/5: a visitor who must have a fresh page (hard invalidation, past expire)
    gets a foreground render; a hung leader is noticed within seconds and a waiter
    takes over and stores. A hung *background* regeneration keeps its lease for the
    whole lock_timeout (60 s), so every such visitor waits coalesce_timeout, then gets
    an unstored render, again and again."""
    app = Gate({2: "hang"})
    mw, client, clock, _ = make(app, coalesce_timeout=0.3, lock_timeout=60)
    try:
        assert client.get("/p").data == b"good 1"
        clock.advance(61)
        assert client.get("/p").headers["X-ISR-Cache"] == "STALE"  # starts regeneration 2
        assert app.entered.wait(5)
        mw.revalidate_tag("p", mode="hard")  # the editor needs the fresh page now
        clock.advance(1)
        first = client.get("/p")
        time.sleep(0.5)  # well past coalesce_timeout: a hung miss leader would stop renewing
        for _ in range(3):  # keeper ticks, while the store clock moves past several leases
            mw.regen.leases.renew_once()
            clock.advance(3)
        second = client.get("/p")
        statuses = [first.headers["Cache-Status"], second.headers["Cache-Status"]]
        # the first visitor after the hard invalidation got a foreground render, stored
        assert "stored" in first.headers["Cache-Status"], statuses
        assert second.headers["X-ISR-Cache"] == "HIT", statuses
        assert isinstance(mw.store.lookup(KEY)[0], Entry)
    finally:
        app.release.set()
        mw.join(5)


# -- a hung miss leader that finally fails wipes the takeover's good page -----------


def _hung_leader_then_failure(kind: str) -> tuple[Any, bytes]:
    import wsgi_isr.regeneration as regeneration

    app = Gate({1: kind})
    old = regeneration.LEASE
    regeneration.LEASE = 0.4
    try:
        mw, client, clock, _ = make(app, coalesce_timeout=0.3, lock_timeout=60)
    finally:
        regeneration.LEASE = old
    errors: list[BaseException] = []

    def leader() -> None:
        try:
            Client(mw).get("/p")
        except BaseException as exc:  # the app's own exception reaches its server
            errors.append(exc)

    t = threading.Thread(target=leader)
    t.start()
    assert app.entered.wait(5)
    time.sleep(0.8)  # past coalesce_timeout: the hung leader's lease is no longer renewed
    clock.advance(2)  # ...and has run out on the store's clock
    taken = client.get("/p")  # a later visitor takes over and stores its render
    assert "stored" in taken.headers["Cache-Status"], taken.headers["Cache-Status"]
    app.release.set()  # the hung leader's database call finally fails
    t.join(10)
    record = mw.store.lookup(KEY)[0]
    return record, client.get("/p").data


def test_hung_leader_that_finally_raises_keeps_the_page_the_takeover_stored() -> None:
    record, body = _hung_leader_then_failure("hang-raise")
    assert isinstance(record, Entry), record  # "a failed render never replaces a good page"
    assert body == b"good 2"


def test_hung_leader_that_finally_answers_503_keeps_the_page_the_takeover_stored() -> None:
    record, body = _hung_leader_then_failure("hang-503")
    assert isinstance(record, Entry), record
    assert body == b"good 2"


# -- an oversized background render that fails mid-stream is never closed -----------


class Streamed:
    """A response iterable that records ``close()`` (PEP 3333) and can fail mid-stream."""

    closed = 0

    def __init__(self, chunks: int, fail: bool) -> None:
        self.chunks, self.fail = chunks, fail

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            yield b"x" * 400
        if self.fail:
            raise RuntimeError("database went away mid-stream")

    def close(self) -> None:
        Streamed.closed += 1


def test_oversized_regeneration_failing_mid_stream_still_closes_the_iterable() -> None:
    plan = {"fail": False}

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("X-ISR-Revalidate", "60")])
        return Streamed(2 if not plan["fail"] else 5, plan["fail"])

    mw, client, clock, _ = make(app, max_entry_bytes=1000)
    client.get("/p")
    assert isinstance(mw.store.lookup(KEY)[0], Entry)
    Streamed.closed = 0
    clock.advance(61)
    plan["fail"] = True  # grows past max_entry_bytes, then raises while drained
    assert client.get("/p").headers["X-ISR-Cache"] == "STALE"
    assert mw.join(5)
    assert Streamed.closed == 1  # PEP 3333: close() on every path


# -- a MISS answer promises freshness from the render's start, counted from now ------


def test_miss_cache_control_counts_the_render_time() -> None:
    holder: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        holder["clock"].advance(50)  # a slow render: 50 s of the page's 60 are gone
        start_response("200 OK", [("X-ISR-Revalidate", "60")])
        return [b"slow page"]

    mw, client, clock, _ = make(app)
    holder["clock"] = clock
    r = client.get("/p")
    assert r.headers["X-ISR-Cache"] == "MISS"
    # the store will call this entry stale 10 s from now; a CDN told s-maxage=59 serves
    # it as fresh for 49 s longer than the origin itself would
    s_maxage = int(r.headers["Cache-Control"].split("s-maxage=")[1].split(",")[0])
    assert s_maxage <= 10, r.headers["Cache-Control"]
    hit = client.get("/p")
    assert hit.headers["Age"] == "50"


# -- the first render of a Vary page that cannot be stored ignores the visitor's Vary


def test_unstorable_vary_page_is_sent_rendered_with_the_visitors_header() -> None:
    # e.g. Django LocaleMiddleware (Vary: Accept-Language) on a page with a CSRF cookie
    app = CountingApp(
        {"/p": [("X-ISR-Revalidate", "60"), ("Vary", "Accept-Language"), ("Set-Cookie", "c=1")]}
    )
    _, client, _, _ = make(app)
    r = client.get("/p", headers={"Accept-Language": "fr"})
    assert b"lang=fr" in r.data, r.data


# -- garbage tag state / sequence numbers in Redis are a 500, not a StoreError --------

import pytest  # noqa: E402

from wsgi_isr import ISRMiddleware  # noqa: E402
from wsgi_isr.stores.redis import RedisStore  # noqa: E402


@pytest.mark.redis
@pytest.mark.parametrize(
    "where, value",
    [
        ("tagseq", b"garbage"),  # int(seq) -> ValueError
        ("tagstate", b"not-two-floats"),  # _parse_state -> ValueError
        ("tagchanges", float("inf")),  # int(score) -> OverflowError
        ("tagstate-name", b"\xff\xfe"),  # tag.decode() -> UnicodeDecodeError
    ],
)
def test_garbage_tag_state_in_redis_fails_open(redis_url: str, where: str, value: Any) -> None:
    store = RedisStore(redis_url)
    mw = ISRMiddleware(CountingApp(), store=store)
    client = Client(mw)
    try:
        assert client.get("/p").status_code == 200
        mw.revalidate_tag("t")
        p = store.prefix
        if where == "tagseq":
            store.client.set(p + "tagseq", value)
        elif where == "tagstate":
            store.client.hset(p + "tagstate", "t", value)
            store.client.incr(p + "tagseq")
        elif where == "tagchanges":
            store.client.zadd(p + "tagchanges", {"t": value})
            store.client.incr(p + "tagseq")
        else:
            store.client.hset(p + "tagstate", value, "1 1")
            store._seq = 0  # a fresh process reads the whole state
            store._tags = {}
            store.client.incr(p + "tagseq")
        r = client.get("/p")  # fail open: the app's page, never a 500
        assert r.status_code == 200
    finally:
        store.close()


# -- under gevent, a render that blocks the hub past one lease is dropped ------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


@pytest.mark.parametrize("worker", ["threads", "gevent"])
def test_blocking_regeneration_is_stored_under_gevent_too(worker: str) -> None:
    """A regeneration whose database call blocks the process (a C driver gevent cannot
    make cooperative) for longer than one lease: under threads the keeper renews the
    lease and the new page lands; under gevent the keeper greenlet never runs, the
    lease lapses, and the finished render is dropped ('outlived its lock') and backed
    off, every time: the page stays stale for ever."""
    script = Path(__file__).with_name("gevent_blocking_regeneration.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, str(script), worker], capture_output=True, text=True, env=env, timeout=60
    )
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("b'v2'"), (last, out.stderr[-500:])


# -- a page that says Vary: Cookie is served to visitors with cookies from the
#       cookie-less render (Django: SessionMiddleware/AuthenticationMiddleware)


def test_vary_cookie_page_is_not_served_from_the_shared_copy_to_a_visitor_with_cookies() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        user = "alice" if "sessionid=" in environ.get("HTTP_COOKIE", "") else "anonymous"
        start_response("200 OK", [("X-ISR-Revalidate", "60"), ("Vary", "Cookie")])
        return [f"hello {user}".encode()]

    _, client, _, _ = make(app)
    assert client.get("/p").data == b"hello anonymous"
    r = client.get("/p", headers={"Cookie": "sessionid=abc"})
    # the response itself says it depends on Cookie, and DESIGN 5 keys on Vary values
    assert r.data == b"hello alice", (r.data, r.headers["X-ISR-Cache"])


# -- a 429 (rate limited) regeneration is taken for "the truth" and drops the page ----


def test_rate_limited_regeneration_keeps_the_stale_page() -> None:
    """Renders carry no REMOTE_ADDR, so Flask-Limiter & co. put every regeneration in one
    bucket; its 429 (RFC 6585: transient, "try again later") is not a statement that
    the page changed, yet it drops the good copy and disables the cache for pass_ttl."""
    from flask import Flask

    app = Flask(__name__)
    state = {"limited": False}

    @app.get("/p")
    def page() -> Any:
        if state["limited"]:
            return "Too Many Requests", 429, {"Retry-After": "30"}
        return "page v1", {"X-ISR-Revalidate": "60"}

    mw, _, clock, _ = make(app.wsgi_app)
    client = Client(mw)
    assert client.get("/p").data == b"page v1"
    clock.advance(61)
    state["limited"] = True
    assert client.get("/p").headers["X-ISR-Cache"] == "STALE"
    assert mw.join(5)
    r = client.get("/p")
    assert (r.status_code, r.data) == (200, b"page v1"), (r.status_code, r.headers["X-ISR-Cache"])


# -- fail-open answers rendered from unkeyed headers keep the app's s-maxage ----------


def test_store_down_answer_from_a_forged_forwarded_host_is_not_public(monkeypatch: Any) -> None:
    """While the store is down, an anonymous request reaches the app with its own
    environ, X-Forwarded-Host included (ProxyFix inside, as many apps have it), and the
    answer leaves with the app's 'public, s-maxage=60': the CDN in front keeps a page
    whose links point at the attacker's host and serves it to everyone (DESIGN 5: what
    shared caches may keep is the middleware's business; renders for the shared cache
    never see unkeyed forwarding headers)."""
    from flask import Flask, url_for
    from werkzeug.middleware.proxy_fix import ProxyFix

    from wsgi_isr.errors import StoreError

    app = Flask(__name__)

    @app.get("/p")
    def page() -> Any:
        link = url_for("page", _external=True)
        return f'<a href="{link}">me</a>', {"Cache-Control": "public, s-maxage=60"}

    mw, _, _, _ = make(ProxyFix(app.wsgi_app, x_host=1))

    def down(key: str) -> Any:
        raise StoreError("redis restarting")

    monkeypatch.setattr(mw.store, "lookup", down)
    r = Client(mw).get("/p", headers={"X-Forwarded-Host": "evil.example"})
    poisoned = b"evil.example" in r.data
    shared = "s-maxage" in r.headers.get("Cache-Control", "")
    assert not (poisoned and shared), (r.data, r.headers["Cache-Control"])


def test_vary_cookie_page_past_its_time_is_refreshed_by_a_visitor_with_cookies() -> None:
    """A visitor with cookies gets a render of their own for a ``Vary: Cookie`` page;
    when the shared copy is stale or expired, that visit refreshes it too."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        user = "alice" if "sessionid=" in environ.get("HTTP_COOKIE", "") else "anonymous"
        start_response("200 OK", [("X-ISR-Revalidate", "60"), ("Vary", "Cookie")])
        return [f"hello {user} {app.n}".encode()]  # type: ignore[attr-defined]

    app.n = 1  # type: ignore[attr-defined]
    mw, client, clock, _ = make(app)
    assert client.get("/p").data == b"hello anonymous 1"
    clock.advance(61)
    app.n = 2  # type: ignore[attr-defined]
    r = client.get("/p", headers={"Cookie": "sessionid=abc"})
    assert r.data == b"hello alice 2"
    assert mw.join(5)
    assert client.get("/p").data == b"hello anonymous 2"  # refreshed: not the old copy
