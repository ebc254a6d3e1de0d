"""Failures never reach visitors, and every request path keeps its promises (DESIGN 5).

Real Flask apps with Flask's own error handling: a view that raises, or
``abort(500)``, answers with Flask's 500 page, which carries no opt-in header —
the case that used to replace good pages. A fake clock drives freshness; the
background regenerations run on the real runner (``mw.join``).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from flask import Flask, abort
from helpers import CountingApp, make
from werkzeug.test import Client

import wsgi_isr
from wsgi_isr import ISRMiddleware
from wsgi_isr.entry import Entry, PassMarker
from wsgi_isr.errors import StoreError
from wsgi_isr.regeneration import lock_name

KEY = "http://localhost/p?"


def flask_site(state: dict[str, Any]) -> Flask:
    """A real Flask app whose ``/p`` fails in the way ``state["mode"]`` says."""
    app = Flask(__name__)

    @app.get("/p")
    def page() -> Any:
        state["renders"] = state.get("renders", 0) + 1
        mode = state.get("mode", "ok")
        if mode == "raise":
            raise RuntimeError("database is down")
        if mode in ("abort500", "abort503"):
            abort(int(mode[-3:]))
        if mode in ("502", "504"):
            return "upstream trouble", int(mode)
        if mode == "not-opted-in":
            return f"live v{state['v']}"
        if mode == "set-cookie":
            return f"live v{state['v']}", {"X-ISR-Revalidate": "60", "Set-Cookie": "sid=1"}
        if mode == "private":
            return f"live v{state['v']}", {"X-ISR-Revalidate": "60", "Cache-Control": "private"}
        if mode == "oversized":
            return "x" * 5000, {"X-ISR-Revalidate": "60"}
        if mode == "deleted":
            abort(404)
        return f"page v{state['v']}", {"X-ISR-Revalidate": "60", "X-ISR-Tags": "p"}

    return app


def site(**options: Any) -> tuple[ISRMiddleware, Client, Any, dict[str, Any]]:
    state: dict[str, Any] = {"v": 1}
    app = flask_site(state)
    options.setdefault("max_entry_bytes", 1000)
    mw, client, clock, _ = make(app.wsgi_app, **options)
    app.wsgi_app = mw  # type: ignore[method-assign]
    return mw, Client(app, use_cookies=False), clock, state


# -- 1. a failed regeneration never replaces a good page ----------------------------------


@pytest.mark.parametrize("mode", ["raise", "abort500", "abort503", "502", "504"])
def test_failed_regeneration_of_a_real_flask_view_keeps_the_page(mode: str) -> None:
    mw, client, clock, state = site(regeneration_backoff=30)
    assert client.get("/p").data == b"page v1"
    clock.advance(61)
    state.update(mode=mode, v=2)
    for _ in range(4):
        r = client.get("/p")
        assert (r.status_code, r.data, r.headers["X-ISR-Cache"]) == (200, b"page v1", "STALE")
        assert mw.join(5)
    assert state["renders"] == 2  # one failed attempt, then backed off: not one per request
    assert mw.stats["regenerations_failed"] == 1
    entry = mw.store.lookup(KEY)[0]
    assert isinstance(entry, Entry) and entry.body == b"page v1"
    # recovered, and the back-off has passed (the store's locks run on its clock)
    state["mode"] = "ok"
    clock.advance(31)
    client.get("/p")
    assert mw.join(5)
    r = client.get("/p")
    assert (r.data, r.headers["X-ISR-Cache"]) == (b"page v2", "HIT")


# -- 2. a first render that raises leaves only a short marker ------------------------------


def test_first_render_that_fails_leaves_a_short_marker_not_pass_ttl() -> None:
    mw, client, clock, state = site(pass_ttl=60)
    state["mode"] = "raise"
    assert client.get("/p").status_code == 500  # Flask's own 500 page
    record = mw.store.lookup(KEY)[0]
    assert isinstance(record, PassMarker)
    state["mode"] = "ok"
    time.sleep(1.2)  # records expire by the wall clock; the marker lives one second
    r = client.get("/p")
    assert (r.data, r.headers["X-ISR-Cache"]) == (b"page v1", "MISS")
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"


def test_first_render_of_a_bare_wsgi_app_that_raises_propagates_and_leaves_a_short_marker() -> None:
    app = CountingApp()
    app.before = lambda environ: (_ for _ in ()).throw(RuntimeError("boom"))
    mw, client, _, _ = make(app, pass_ttl=60)
    with pytest.raises(RuntimeError):
        client.get("/p")
    assert isinstance(mw.store.lookup(KEY)[0], PassMarker)
    app.before = None
    time.sleep(1.2)
    assert client.get("/p").headers["X-ISR-Cache"] == "MISS"


# -- 3. a healthy answer is the truth ------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status", "body"),
    [
        pytest.param("not-opted-in", 200, b"live v2", id="stopped-opting-in"),
        pytest.param("set-cookie", 200, b"live v2", id="now-sets-a-cookie"),
        pytest.param("private", 200, b"live v2", id="now-private"),
        pytest.param("oversized", 200, b"x" * 5000, id="outgrew-max-entry-bytes"),
        pytest.param("deleted", 404, None, id="deleted-404"),
    ],
)
def test_healthy_answer_that_cannot_be_stored_drops_the_old_copy(
    mode: str, status: int, body: bytes | None
) -> None:
    mw, client, clock, state = site()
    client.get("/p")
    clock.advance(61)
    state.update(mode=mode, v=2)
    assert client.get("/p").data == b"page v1"  # STALE, regenerating
    assert mw.join(5)
    for _ in range(2):
        r = client.get("/p")
        assert r.status_code == status and b"page v1" not in r.data
        if body is not None:
            assert r.data == body
    assert mw.stats["regenerations_failed"] == 0
    assert not isinstance(mw.store.lookup(KEY)[0], Entry)


def test_opted_in_404_for_deleted_content_replaces_the_page() -> None:
    app = CountingApp({"/p": [("X-ISR-Revalidate", "60")]})
    mw, client, clock, _ = make(app)
    client.get("/p")
    clock.advance(61)
    app.pages["/p"] = ("404 Not Found", [("X-ISR-Revalidate", "60")])
    client.get("/p")
    assert mw.join(5)
    r = client.get("/p")
    assert r.status_code == 404 and r.headers["X-ISR-Cache"] == "HIT"


# -- 4. back-off never makes a visitor wait ------------------------------------------------


def test_back_off_delays_background_attempts_only() -> None:
    mw, client, clock, state = site(regeneration_backoff=60, coalesce_timeout=5)
    client.get("/p")
    clock.advance(61)
    state["mode"] = "abort503"
    client.get("/p")
    assert mw.join(5) and mw.stats["regenerations_failed"] == 1
    state.update(mode="ok", v=2)
    mw.revalidate_tag("p", mode="hard")  # the visitor must now have a fresh page
    clock.advance(1)
    started = time.monotonic()
    r = client.get("/p")
    assert (r.data, r.headers["X-ISR-Cache"]) == (b"page v2", "MISS")
    assert time.monotonic() - started < 2.5  # not the whole coalesce_timeout
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"


# -- 5. a dead or hung miss leader is noticed within a lease -------------------------------


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr("wsgi_isr.regeneration.LEASE", 0.4)
    return 0.4


def test_waiter_takes_over_from_a_dead_miss_leader(short_lease: float) -> None:
    mw, client, _, app = make(clock=time.time, lock_timeout=60, coalesce_timeout=20)
    # a leader that took the lock and died: nobody renews its lease
    assert mw.regen.lock(KEY) is not None
    started = time.monotonic()
    r = client.get("/p")
    waited = time.monotonic() - started
    assert r.headers["X-ISR-Cache"] == "MISS" and "stored" in r.headers["Cache-Status"]
    assert waited < 5  # one lease (0.4 s), not lock_timeout (60 s) nor coalesce_timeout
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"


def test_live_leader_keeps_its_lease_while_it_renders(short_lease: float) -> None:
    app = CountingApp()
    app.before = lambda environ: time.sleep(1.5)  # several leases long
    mw, client, _, _ = make(app, clock=time.time, lock_timeout=60, coalesce_timeout=20)
    results: list[str] = []

    def visit() -> None:
        results.append(Client(mw).get("/p").headers["X-ISR-Cache"])

    threads = [threading.Thread(target=visit) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(10)
    assert app.count("/p") == 1  # renewed: nobody took over from the live leader
    assert sorted(results) == ["HIT", "HIT", "HIT", "MISS"]


# -- 6. concurrent first misses of a Vary page coalesce ------------------------------------


def test_concurrent_first_misses_of_a_vary_page_coalesce() -> None:
    app = CountingApp({"/p": [("X-ISR-Revalidate", "60"), ("Vary", "Accept-Encoding")]})
    app.before = lambda environ: time.sleep(0.2)
    mw, _, _, _ = make(app, coalesce_timeout=20)
    bodies: list[bytes] = []

    def visit() -> None:
        bodies.append(Client(mw).get("/p", headers={"Accept-Encoding": "gzip"}).data)

    threads = [threading.Thread(target=visit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(bodies) == 8
    # one clean render (the variant without the header) and one for "gzip": not 2 x 8
    assert app.count("/p") == 2


def test_vary_miss_serves_the_render_made_with_the_visitors_header() -> None:
    app = CountingApp({"/p": [("X-ISR-Revalidate", "60"), ("Vary", "Accept-Language")]})
    _, client, _, _ = make(app)
    r = client.get("/p", headers={"Accept-Language": "fr"})
    assert b"lang=fr" in r.data and r.headers["X-ISR-Cache"] == "MISS"
    assert b"lang=fr" in client.get("/p", headers={"Accept-Language": "fr"}).data
    assert b"lang=-" in client.get("/p").data


# -- 7. visitors with cookies refill an expired page ---------------------------------------


def test_visitor_with_cookies_refills_an_expired_page() -> None:
    app = CountingApp({"/p": [("X-ISR-Revalidate", "60"), ("X-ISR-Tags", "t")]})
    mw, client, clock, _ = make(app)
    client.get("/p")
    clock.advance(1)
    mw.revalidate_tag("t", mode="hard")
    clock.advance(1)
    r = client.get("/p", headers={"Cookie": "theme=dark"})
    assert r.headers["X-ISR-Cache"] == "MISS" and b"cookie=theme=dark" in r.data
    assert mw.join(5)
    r = client.get("/p")
    assert r.headers["X-ISR-Cache"] == "HIT" and b"render 3 cookie=-" in r.data


# -- 8. non-GET requests, and which middleware module-level helpers act on -----------------


def two_sites() -> tuple[Any, Any, Client, Client]:
    def make_site(name: str) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            if environ["REQUEST_METHOD"] == "POST":
                wsgi_isr.revalidate_tag("posts")
                start_response("200 OK", [("X-ISR-Revalidate", "60"), ("X-ISR-Debug", "1")])
                return [b"ok"]
            start_response("200 OK", [("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "posts")])
            return [name.encode()]

        return app

    a, _, clock, _ = make(make_site("a"))
    b, _, _, _ = make(make_site("b"), clock=clock)
    return a, b, Client(a), Client(b)


def test_webhook_in_a_post_view_revalidates_its_own_site_only() -> None:
    a, b, client_a, client_b = two_sites()
    client_a.get("/p")
    client_b.get("/p")
    a.store.clock.advance(1)  # type: ignore[attr-defined]
    r = client_b.post("/hook")
    assert r.status_code == 200
    assert not [k for k, _ in r.headers.items() if k.lower().startswith("x-isr-")]
    a.store.clock.advance(1)  # type: ignore[attr-defined]
    assert client_a.get("/p").headers["X-ISR-Cache"] == "HIT"
    assert client_b.get("/p").headers["X-ISR-Cache"] == "STALE"
    b.join(5)


def test_module_level_revalidate_outside_a_request_with_two_sites_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import weakref

    a, b, _, _ = two_sites()
    with pytest.raises(
        RuntimeError, match=r"\d+ ISRMiddleware instances exist .* mw\.revalidate_tag"
    ):
        wsgi_isr.revalidate_tag("posts")
    only: weakref.WeakSet[ISRMiddleware] = weakref.WeakSet([a])
    monkeypatch.setattr("wsgi_isr.invalidation.instances", only)
    assert wsgi_isr.revalidate_tag("posts") == a.store.now()  # exactly one: unambiguous
    assert b is not None


# -- 10. CDN headers never over-promise; the app's browser directives survive --------------


def test_s_maxage_respects_x_isr_expire() -> None:
    app = CountingApp({"/p": [("X-ISR-Revalidate", "false"), ("X-ISR-Expire", "3600")]})
    _, client, clock, _ = make(app)
    client.get("/p")
    clock.advance(600)
    cc = client.get("/p").headers["Cache-Control"]
    # what is left before it expires, no stale window; browsers revalidate (below)
    assert cc == "public, s-maxage=2999, max-age=0"


@pytest.mark.parametrize(
    "opt_in",
    [
        pytest.param([("X-ISR-Revalidate", "60")], id="revalidate"),
        pytest.param([("X-ISR-Revalidate", "false"), ("X-ISR-Expire", "90")], id="expire"),
        pytest.param([("X-ISR-Revalidate", "false")], id="forever"),
    ],
)
def test_hits_in_one_second_send_the_same_headers_and_the_next_second_new_ones(
    opt_in: list[tuple[str, str]],
) -> None:
    """A hit's clock headers are built once per second of age and reused by the hits in
    that second (a popular page): never carried into the next second, nor to a STALE."""
    app = CountingApp({"/p": opt_in})
    _, client, clock, _ = make(app)
    client.get("/p")
    seen = []
    for step in (0.2, 0.3, 0.6, 0.1, 0.9, 57.5, 1.0):
        clock.advance(step)
        r = client.get("/p")
        cc = r.headers["Cache-Control"]
        seen.append((r.headers["X-ISR-Cache"], r.headers["Age"], cc, r.headers["Cache-Status"]))
    assert [int(s[1]) for s in seen] == [0, 0, 1, 1, 2, 59, 60], seen
    assert seen[0] == seen[1] and seen[2] == seen[3], seen  # one second, one answer
    s_maxages = [re.search(r"s-maxage=(\d+)", s[2]).group(1) for s in seen]  # type: ignore[union-attr]
    if opt_in == [("X-ISR-Revalidate", "60")]:
        assert [s[0] for s in seen] == ["HIT"] * 6 + ["STALE"], seen
        assert s_maxages == ["59", "59", "58", "58", "57", "0", "0"], seen
        assert seen[6][3].endswith("detail=stale-while-revalidate"), seen
    elif opt_in[1:]:  # expire: 90 s of age at most, whatever the second
        assert s_maxages == ["89", "89", "88", "88", "87", "30", "29"], seen
    else:  # forever: nothing but Age moves
        assert {s[2:] for s in seen} == {seen[0][2:]}, seen


@pytest.mark.parametrize(
    "directives", ["max-age=30", "must-revalidate", "no-transform", "max-age=600, immutable"]
)
def test_app_browser_directives_survive_on_hits(directives: str) -> None:
    opt_in = [("X-ISR-Revalidate", "60"), ("Cache-Control", directives)]
    app = CountingApp({"/p": opt_in})
    _, client, _, _ = make(app)
    for label in ("MISS", "HIT"):
        r = client.get("/p")
        assert r.headers["X-ISR-Cache"] == label
        cc = [d.strip() for d in r.headers["Cache-Control"].split(",")]
        assert cc[0] == "public" and cc[1].startswith("s-maxage=")
        assert cc[-len(directives.split(",")) :] == [d.strip() for d in directives.split(",")]


def _max_ages(r: Any) -> list[str]:
    cc = [d.strip() for d in r.headers["Cache-Control"].split(",")]
    return [d for d in cc if d.lower().startswith("max-age")]


@pytest.mark.parametrize(
    ("status", "opt_in"),
    [
        pytest.param("200 OK", [("X-ISR-Revalidate", "60")], id="revalidate"),
        pytest.param("200 OK", [("X-ISR-Revalidate", "false")], id="forever"),
        pytest.param(
            "200 OK", [("X-ISR-Revalidate", "false"), ("X-ISR-Expire", "90")], id="expire"
        ),
        pytest.param(
            "200 OK",
            [("X-ISR-Revalidate", "60"), ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
            id="app-last-modified",
        ),
        pytest.param(
            "301 Moved Permanently", [("X-ISR-Revalidate", "60"), ("Location", "/b")], id="301"
        ),
        pytest.param("410 Gone", [("X-ISR-Revalidate", "60")], id="410"),
        pytest.param(
            "200 OK", [("X-ISR-Revalidate", "60"), ("Cache-Control", "immutable")], id="no-max-age"
        ),
    ],
)
def test_browsers_are_told_to_revalidate_unless_the_app_says_how_long(
    status: str, opt_in: list[tuple[str, str]]
) -> None:
    """``s-maxage`` is for shared caches: a browser told nothing else keeps an answer as
    long as its heuristics say (a tenth of the time since ``Last-Modified``; a ``301``
    or ``410`` forever), past any invalidation. So every cached answer says
    ``max-age=0`` (tests/test_browser.py shows it in a real Chromium)."""
    app = CountingApp({"/p": (status, opt_in)})
    _, client, clock, _ = make(app)
    first = client.get("/p")
    hit = client.get("/p")
    assert (first.headers["X-ISR-Cache"], hit.headers["X-ISR-Cache"]) == ("MISS", "HIT")
    replies = [first, hit]
    if status == "200 OK":
        replies.append(client.get("/p", headers={"If-None-Match": hit.headers["ETag"]}))
        assert replies[-1].status_code == 304
    if opt_in[0][1] == "60":
        clock.advance(61)
        replies.append(client.get("/p"))
        assert replies[-1].headers["X-ISR-Cache"] == "STALE"
    for r in replies:
        assert _max_ages(r) == ["max-age=0"], r.headers


@pytest.mark.parametrize("directive", ["max-age=30", "Max-Age=30", "max-age=600, immutable"])
def test_the_apps_own_browser_max_age_is_kept_alone(directive: str) -> None:
    app = CountingApp({"/p": [("X-ISR-Revalidate", "60"), ("Cache-Control", directive)]})
    _, client, _, _ = make(app)
    for label in ("MISS", "HIT"):
        r = client.get("/p")
        assert r.headers["X-ISR-Cache"] == label
        assert _max_ages(r) == [directive.split(",")[0]], r.headers


@pytest.mark.parametrize(
    "directive",
    ["max-age = 5", 'max-age="5"', "max-age=", "max-age=-1", 'ext="a, max-age=5"'],
)
def test_a_max_age_browsers_do_not_read_gets_max_age_0_first(directive: str) -> None:
    """Chromium reads only the token form ``max-age=5``: with any other spelling (or a
    ``max-age`` inside a quoted value) it guesses from ``Last-Modified`` again. The first
    ``max-age`` is the one caches use (RFC 9111 4.2.1)."""
    app = CountingApp({"/p": [("X-ISR-Revalidate", "60"), ("Cache-Control", directive)]})
    _, client, _, _ = make(app)
    for label in ("MISS", "HIT"):
        r = client.get("/p")
        assert r.headers["X-ISR-Cache"] == label
        assert r.headers["Cache-Control"].endswith(f", max-age=0, {directive}"), r.headers


_UNSHARED_PAGES = {
    "301": ("301 Moved Permanently", [("X-ISR-Revalidate", "60"), ("Location", "/b")]),
    "app-last-modified": (
        "200 OK",
        [("X-ISR-Revalidate", "60"), ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
    ),
}


def _unshared_answers(monkeypatch: Any, page: str) -> list[tuple[str, Any]]:
    """An opted-in page served without the store, each way that happens."""
    answers = []
    mw, client, _, _ = make(CountingApp({"/p": _UNSHARED_PAGES[page]}))
    client.get("/p")

    def down(key: str) -> Any:
        raise StoreError("redis restarting")

    with monkeypatch.context() as m:
        m.setattr(mw.store, "lookup", down)
        answers.append(("store-down", client.get("/p")))
    mw, client, _, _ = make(CountingApp({"/p": _UNSHARED_PAGES[page]}), coalesce_timeout=0.3)
    assert mw.regen.lock(lock_name("http://localhost/p?")) is not None  # a leader rendering
    answers.append(("coalesce-timeout", client.get("/p")))
    mw, client, _, _ = make(CountingApp({"/p": _UNSHARED_PAGES[page]}))

    def full(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("OOM command not allowed when used memory > 'maxmemory'")

    with monkeypatch.context() as m:
        m.setattr(mw.store, "put", full)
        answers.append(("store-write-failed", client.get("/p")))
    _, client, _, _ = make(CountingApp({"/p": _UNSHARED_PAGES[page]}), max_entry_bytes=1)
    answers += [("refused", client.get("/p")), ("hit-for-pass", client.get("/p"))]
    return answers


@pytest.mark.parametrize("page", list(_UNSHARED_PAGES))
def test_an_opted_in_answer_served_without_the_store_leaves_private(
    monkeypatch: Any, page: str
) -> None:
    """The store down, a coalesce timeout, a failed write, a page too large: the app
    answered the visitor's own request, and no tags went out with it. It leaves
    ``private, no-cache``: no cache in front keeps it, and a browser told nothing would
    keep the ``301`` for ever, or the post for a tenth of its age, past the next
    invalidation."""
    answers = _unshared_answers(monkeypatch, page)
    assert [a[1].headers["X-ISR-Cache"] for a in answers] == [
        "BYPASS", "MISS", "MISS", "MISS", "BYPASS"
    ]  # fmt: skip
    for how, r in answers:
        assert r.status_code == int(_UNSHARED_PAGES[page][0][:3]), how
        assert r.headers["Cache-Control"] == "private, no-cache", (how, r.headers)


@pytest.mark.parametrize(
    ("directives", "left", "max_bytes"),
    [
        ("private", "private, no-cache", None),
        ("private, max-age=60", "private, max-age=60", None),
        # Chromium reads a no-cache with field names as nothing: a bare one goes first
        (
            'no-cache="Set-Cookie, X-Token"',
            'private, no-cache, no-cache="Set-Cookie, X-Token"',
            None,
        ),
        # refused for its size: the app's max-age would let a cache in front keep it too
        ("public, s-maxage=60, max-age=300", "private, max-age=300", 1),
        ("s-maxage=60, must-revalidate", "private, no-cache, must-revalidate", 1),
    ],
)
def test_an_unshared_answer_is_private_and_keeps_the_apps_browser_directives(
    directives: str, left: str, max_bytes: int | None
) -> None:
    """Refused, the page's answers are each visitor's own request rendered (an unkeyed
    ``X-Forwarded-Host`` a ``ProxyFix`` inside trusted, a geolocated or A/B page): they
    leave ``private`` whatever the app said to shared caches, or a cache in front keeps
    one for the next visitor (tests/test_failures_server.py shows it with a real nginx,
    for a view that said ``private`` itself)."""
    app = CountingApp({"/p": [("X-ISR-Revalidate", "60"), ("Cache-Control", directives)]})
    _, client, _, _ = make(app, **({} if max_bytes is None else {"max_entry_bytes": max_bytes}))
    for label in ("MISS", "BYPASS"):
        r = client.get("/p")
        assert r.headers["X-ISR-Cache"] == label
        assert r.headers["Cache-Control"] == left, (label, r.headers)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([], id="nothing"),
        pytest.param([("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")], id="expires"),
        pytest.param([("Cache-Control", "public, max-age=3600")], id="public-max-age"),
        pytest.param(  # "do not cache", as if absent
            [("X-ISR-Revalidate", "0"), ("Cache-Control", "public, max-age=3600")],
            id="revalidate-0",
        ),
    ],
)
def test_a_page_that_never_opted_in_leaves_as_the_app_sent_it_on_every_path(
    monkeypatch: Any, headers: list[tuple[str, str]]
) -> None:
    """Its headers are the app's business: a miss, hit-for-pass, the store down, a
    coalesce timeout and a 5xx leave them as they are."""
    sent = dict(headers).get("Cache-Control")
    app = CountingApp({"/s": headers, "/t": headers, "/f": ("500 Internal Server Error", headers)})
    mw, client, _, _ = make(app, coalesce_timeout=0.3)
    replies = [client.get("/s"), client.get("/s")]

    def down(key: str) -> Any:
        raise StoreError("redis restarting")

    with monkeypatch.context() as m:
        m.setattr(mw.store, "lookup", down)
        replies.append(client.get("/s"))
    assert mw.regen.lock(lock_name("http://localhost/t?")) is not None  # a leader rendering
    replies += [client.get("/t"), client.get("/f"), client.get("/f")]
    details = [r.headers["Cache-Status"] for r in replies]
    assert "detail=coalesce-timeout" in details[3] and "store-error" in details[2], details
    assert [r.headers.get("Cache-Control") for r in replies] == [sent] * 6, details


@pytest.mark.parametrize(
    "cc",
    [
        pytest.param([("Cache-Control", 'foo="x, private')], id="open-quote-private"),
        pytest.param([("Cache-Control", 'foo="x, no-store')], id="open-quote-no-store"),
        pytest.param(
            [("Cache-Control", 'foo="x'), ("Cache-Control", "private")], id="across-lines"
        ),
        pytest.param(
            [("Cache-Control", 'max-age=60"'), ("Cache-Control", "no-store")], id="stray-quote"
        ),
        pytest.param([("Cache-Control", 's-maxage=60, a"b, private')], id="quote-in-token"),
    ],
)
def test_a_quote_left_open_never_hides_private_or_no_store(cc: list[tuple[str, str]]) -> None:
    """Read as nginx and Varnish read it, at every comma: a malformed quote in one
    directive must not make the store take a page the app marked ``private``."""
    app = CountingApp({"/p": [("X-ISR-Revalidate", "60"), *cc]})
    _, client, _, _ = make(app)
    replies = [client.get("/p"), client.get("/p"), client.get("/p")]
    assert [r.headers["X-ISR-Cache"] for r in replies] == ["MISS", "BYPASS", "BYPASS"]
    for r in replies:
        assert r.headers["Cache-Control"].startswith("private"), r.headers


def test_cached_204_has_no_content_length() -> None:
    app = CountingApp({"/p": ("204 No Content", [("X-ISR-Revalidate", "60")])})
    app_204 = app

    def no_body(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        app_204(environ, start_response)
        return []

    _, client, _, _ = make(no_body)
    client.get("/p")
    r = client.get("/p")
    assert r.status_code == 204 and r.headers["X-ISR-Cache"] == "HIT"
    assert "Content-Length" not in r.headers


# -- 11. personal and preview answers leave private on every path --------------------------


def _is_private(headers: Any) -> bool:
    cc = [d.strip().lower() for d in headers.get("Cache-Control", "").split(",")]
    return "private" in cc and "public" not in cc and not any(d.startswith("s-maxage") for d in cc)


@pytest.mark.parametrize(
    ("options", "headers", "path"),
    [
        pytest.param(
            {"bypass_cookies": ["session"]}, {"Cookie": "session=alice"}, "/p", id="bypass-cookie"
        ),
        pytest.param(
            {"bypass_token": "preview-token"}, {"X-ISR-Bypass": "preview-token"}, "/p", id="token"
        ),
        pytest.param(
            {"bypass_token": "preview-token"},
            {"Cookie": "__isr_bypass=preview-token"},
            "/p",
            id="token-cookie",
        ),
        pytest.param({}, {"Cookie": "session=alice"}, "/plain", id="hit-for-pass"),
        pytest.param({}, {"Authorization": "Basic YTpi"}, "/p", id="personal-miss"),
    ],
)
def test_personal_and_preview_answers_leave_private(
    options: dict[str, Any], headers: dict[str, str], path: str
) -> None:
    surrogate = [("X-ISR-Revalidate", "60"), ("Cache-Control", "public, s-maxage=600")]
    app = CountingApp(
        {
            "/p": surrogate,
            "/plain": [
                ("Cache-Control", "public, max-age=60"),
                ("Surrogate-Control", "max-age=9"),
                ("Edge-Control", "!no-store, max-age=3600"),  # Akamai's
            ],
        }
    )
    _, client, _, _ = make(app, **options)
    client.get("/plain")  # leaves the hit-for-pass marker
    r = client.get(path, headers=headers)
    assert r.status_code == 200 and _is_private(r.headers), r.headers
    assert "Surrogate-Control" not in r.headers and "Edge-Control" not in r.headers


def test_store_down_answer_for_a_visitor_with_cookies_is_private(monkeypatch: Any) -> None:
    from wsgi_isr.errors import StoreError

    mw, client, _, _ = make()

    def down(key: str) -> Any:
        raise StoreError("down")

    monkeypatch.setattr(mw.store, "lookup", down)
    r = client.get("/p", headers={"Cookie": "session=alice"})
    assert r.status_code == 200 and _is_private(r.headers)
    # anonymous too: rendered from the visitor's own request, with no tags for a purge to
    # find (Varnish's default TTL would keep a page without directives for 120 s)
    anonymous = client.get("/p")
    assert anonymous.status_code == 200 and _is_private(anonymous.headers)


def test_empty_bypass_token_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="bypass_token"):
        make(bypass_token="")


# -- 12. SCRIPT_NAME is part of the key; renders see only the key --------------------------


def test_forged_script_name_split_is_keyed_apart() -> None:
    app = CountingApp()
    _, client, _, _ = make(app)
    forged = client.get("/intro", environ_overrides={"SCRIPT_NAME": "/docs"})
    assert forged.headers["X-ISR-Cache"] == "MISS"
    seen = app.environs[-1]
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/docs", "/intro")
    r = client.get("/docs/intro")
    assert r.headers["X-ISR-Cache"] == "MISS"  # not the forged render
    assert (app.environs[-1]["SCRIPT_NAME"], app.environs[-1]["PATH_INFO"]) == ("", "/docs/intro")


def test_proxyfix_prefix_from_a_forged_header_does_not_poison_another_page() -> None:
    from flask import url_for
    from werkzeug.middleware.proxy_fix import ProxyFix

    flask_app = Flask(__name__)

    @flask_app.get("/intro")
    def intro() -> Any:
        return f"intro at {url_for('intro')}", {"X-ISR-Revalidate": "60"}

    @flask_app.get("/docs/intro")
    def docs_intro() -> Any:
        return "the docs' own intro", {"X-ISR-Revalidate": "60"}

    mw = ISRMiddleware(flask_app.wsgi_app, store="memory://")
    flask_app.wsgi_app = ProxyFix(mw, x_prefix=1)  # type: ignore[method-assign]
    client = Client(flask_app)
    forged = client.get("/intro", headers={"X-Forwarded-Prefix": "/docs"})
    assert forged.data == b"intro at /docs/intro"
    for _ in range(2):
        assert client.get("/docs/intro").data == b"the docs' own intro"


def test_renders_take_server_fields_from_the_key_not_the_first_requester() -> None:
    app = CountingApp()
    _, client, _, _ = make(app)
    client.get(
        "/p",
        environ_overrides={
            "SERVER_PROTOCOL": "HTTP/1.0",
            "SERVER_NAME": "internal-node-7",
            "SERVER_PORT": "8443",
        },
    )
    seen = app.environs[-1]
    assert (seen["SERVER_PROTOCOL"], seen["SERVER_NAME"], seen["SERVER_PORT"]) == (
        "HTTP/1.1",
        "localhost",
        "80",
    )


def test_revalidate_path_and_prebuild_for_an_app_mounted_under_a_prefix() -> None:
    app = CountingApp({"/intro": [("X-ISR-Revalidate", "false")]})
    mw, client, clock, _ = make(app)
    report = mw.prebuild(["/intro"], script_name="/docs")
    assert report.built == ["/intro"]
    mounted = {"SCRIPT_NAME": "/docs"}
    r = client.get("/intro", environ_overrides=mounted)
    assert r.headers["X-ISR-Cache"] == "HIT" and app.count("/intro") == 1
    assert app.environs[-1]["SCRIPT_NAME"] == "/docs"
    clock.advance(1)
    mw.revalidate_path("/docs/intro")
    clock.advance(1)
    assert client.get("/intro", environ_overrides=mounted).headers["X-ISR-Cache"] == "STALE"
    mw.join(5)
    clock.advance(1)
    mw.revalidate_path("/docs", "layout")
    clock.advance(1)
    assert client.get("/intro", environ_overrides=mounted).headers["X-ISR-Cache"] == "STALE"
    mw.join(5)


# -- 13. bad input gets a clear answer -----------------------------------------------------


def test_revalidate_path_with_a_query_is_a_value_error_and_a_400() -> None:
    mw, client, _, _ = make(secret="s" * 32)
    with pytest.raises(ValueError, match="no query"):
        mw.revalidate_path("/blog?page=2")
    r = client.post(
        "/_isr/revalidate",
        json={"path": "/blog?page=2"},
        headers={"Authorization": "Bearer " + "s" * 32},
    )
    assert r.status_code == 400 and "query" in r.json["error"]


def test_revalidate_tag_given_a_list_is_a_value_error() -> None:
    mw, _, _, _ = make()
    with pytest.raises(ValueError, match=r"revalidate_tag\(\*tags\)"):
        mw.revalidate_tag(["a", "b"])  # type: ignore[arg-type]


def test_endpoint_reads_a_chunked_body() -> None:
    import io
    import json

    secret = "s" * 32
    mw, client, _, _ = make(secret=secret, max_request_bytes=1000)
    body = json.dumps({"tag": "posts", "secret": secret}).encode()
    chunked = {"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True}
    r = client.post("/_isr/revalidate", environ_overrides=chunked)
    assert r.status_code == 200 and r.json["tags"] == ["posts"]
    big = {"wsgi.input": io.BytesIO(b" " * 2000), "wsgi.input_terminated": True}
    assert client.post("/_isr/revalidate", environ_overrides=big).status_code == 413
