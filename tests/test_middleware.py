"""In-process behaviour of the middleware: opt-in, states, client headers, invalidation.

A fake clock drives time; background regenerations run on the real runner and
tests wait for them with ``mw.join()``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import CountingApp, make

import wsgi_isr


def get(client: Any, url: str, **kw: Any) -> Any:
    return client.get(url, **kw)


# -- opting in -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "cached"),
    [
        pytest.param([("X-ISR-Revalidate", "60")], True, id="revalidate-seconds"),
        pytest.param([("X-ISR-Revalidate", "false")], True, id="revalidate-false"),
        pytest.param([("X-ISR-Revalidate", "0")], False, id="revalidate-zero"),
        pytest.param([], False, id="absent"),
        pytest.param([("X-ISR-Revalidate", "soon")], False, id="revalidate-garbage"),
        pytest.param([("X-ISR-Revalidate", "-5")], False, id="revalidate-negative"),
        pytest.param([("Cache-Control", "public, s-maxage=60")], True, id="s-maxage"),
        pytest.param([("Cache-Control", "max-age=60")], False, id="max-age-only"),
        pytest.param([("X-ISR-Revalidate", "60"), ("Set-Cookie", "a=b")], False, id="set-cookie"),
        pytest.param(
            [("X-ISR-Revalidate", "60"), ("Cache-Control", "private")], False, id="private"
        ),
        pytest.param(
            [("X-ISR-Revalidate", "60"), ("Cache-Control", "no-store")], False, id="no-store"
        ),
        pytest.param([("X-ISR-Revalidate", "60"), ("Vary", "*")], False, id="vary-star"),
    ],
)
def test_what_opts_in(headers: list[tuple[str, str]], cached: bool) -> None:
    mw, client, clock, app = make(CountingApp(default=headers))
    first = get(client, "/p")
    second = get(client, "/p")
    assert first.status_code == 200
    assert app.count("/p") == (1 if cached else 2)
    assert (second.headers.get("X-ISR-Cache") == "HIT") is cached
    for response in (first, second):
        assert not [
            h
            for h, _ in response.headers.items()
            if h.lower().startswith("x-isr-") and h != "X-ISR-Cache"
        ]


@pytest.mark.parametrize("status", [500, 502, 503, 206])
def test_error_and_partial_statuses_are_never_stored(status: int) -> None:
    mw, client, clock, app = make(
        CountingApp(pages={"/e": (f"{status} X", [("X-ISR-Revalidate", "60")])})
    )
    get(client, "/e")
    clock.advance(2)  # past the short hit-for-miss marker
    get(client, "/e")
    assert app.count("/e") == 2


def test_404_that_opted_in_is_cached() -> None:
    mw, client, clock, app = make(
        CountingApp(pages={"/gone": ("404 Not Found", [("X-ISR-Revalidate", "60")])})
    )
    assert get(client, "/gone").status_code == 404
    r = get(client, "/gone")
    assert r.status_code == 404 and r.headers["X-ISR-Cache"] == "HIT"
    assert app.count("/gone") == 1


def test_body_over_max_entry_bytes_is_streamed_but_not_stored() -> None:
    def big(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("X-ISR-Revalidate", "60")])
        return [b"x" * 600, b"y" * 600]

    mw, client, clock, _ = make(big, max_entry_bytes=1000)
    r = get(client, "/big")
    assert r.data == b"x" * 600 + b"y" * 600
    assert "stored" not in r.headers["Cache-Status"]
    assert get(client, "/big").headers["X-ISR-Cache"] != "HIT"


def test_cache_control_stale_while_revalidate_bounds_the_stale_window() -> None:
    app = CountingApp(default=[("Cache-Control", "s-maxage=10, stale-while-revalidate=20")])
    mw, client, clock, _ = make(app)
    get(client, "/p")
    clock.advance(15)
    assert get(client, "/p").headers["X-ISR-Cache"] == "STALE"
    mw.join(5)
    clock.advance(31)  # past 10 + 20 since the regeneration started
    r = get(client, "/p")
    assert r.headers["X-ISR-Cache"] == "MISS"


def test_x_isr_revalidate_wins_over_cache_control() -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "100"), ("Cache-Control", "s-maxage=5")])
    mw, client, clock, _ = make(app)
    get(client, "/p")
    clock.advance(50)
    assert get(client, "/p").headers["X-ISR-Cache"] == "HIT"


def test_x_isr_expire_turns_old_stale_pages_into_misses() -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "10"), ("X-ISR-Expire", "100")])
    mw, client, clock, _ = make(app)
    get(client, "/p")
    clock.advance(50)
    assert get(client, "/p").headers["X-ISR-Cache"] == "STALE"
    mw.join(5)
    clock.advance(101)
    r = get(client, "/p")
    assert r.headers["X-ISR-Cache"] == "MISS"
    assert b"render 3" in r.data


# -- states and client headers ---------------------------------------------------------------


def test_fresh_stale_and_one_background_regeneration() -> None:
    mw, client, clock, app = make()
    assert get(client, "/p").headers["X-ISR-Cache"] == "MISS"
    clock.advance(30)
    hit = get(client, "/p")
    assert hit.headers["X-ISR-Cache"] == "HIT"
    assert hit.headers["Age"] == "30"
    # freshness as at the end of the current second of age: never more than remains
    assert hit.headers["Cache-Control"].startswith("public, s-maxage=29,")
    assert hit.headers["Cache-Status"] == "wsgi-isr; hit; ttl=29"
    clock.advance(34)
    stale = get(client, "/p")
    assert stale.headers["X-ISR-Cache"] == "STALE"
    assert b"render 1" in stale.data  # the old copy, at once
    assert stale.headers["Cache-Status"] == ("wsgi-isr; hit; ttl=-4; detail=stale-while-revalidate")
    assert "s-maxage=0" in stale.headers["Cache-Control"]
    assert mw.join(5)
    fresh = get(client, "/p")
    assert fresh.headers["X-ISR-Cache"] == "HIT" and b"render 2" in fresh.data
    assert app.count("/p") == 2


def test_visitor_does_not_wait_for_a_slow_regeneration() -> None:
    release = threading.Event()
    app = CountingApp()
    mw, client, clock, _ = make(app)
    get(client, "/p")
    clock.advance(61)
    app.before = lambda env: release.wait(5)
    started = time.monotonic()
    r = get(client, "/p")
    elapsed = time.monotonic() - started
    assert r.headers["X-ISR-Cache"] == "STALE"
    assert elapsed < 2.5  # the regeneration is blocked on the event for up to 5 s
    release.set()
    assert mw.join(5)


def test_many_concurrent_stale_requests_start_exactly_one_regeneration() -> None:
    release = threading.Event()
    app = CountingApp()
    mw, client, clock, _ = make(app)
    get(client, "/p")
    clock.advance(61)
    app.before = lambda env: release.wait(5)
    results: list[str] = []

    def visit() -> None:
        results.append(make_client(mw).get("/p").headers["X-ISR-Cache"])

    threads = [threading.Thread(target=visit) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    release.set()
    assert mw.join(5)
    assert results == ["STALE"] * 30
    assert app.count("/p") == 2
    assert mw.stats["regenerations_started"] == 1


def make_client(mw: Any) -> Any:
    from werkzeug.test import Client

    return Client(mw, use_cookies=False)


def test_concurrent_misses_coalesce_into_one_render() -> None:
    app = CountingApp()
    app.before = lambda env: time.sleep(0.3)
    mw, client, clock, _ = make(app)
    labels: list[str] = []
    bodies: list[bytes] = []

    def visit() -> None:
        r = make_client(mw).get("/cold")
        labels.append(r.headers["X-ISR-Cache"])
        bodies.append(r.data)

    threads = [threading.Thread(target=visit) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert app.count("/cold") == 1
    assert sorted(labels) == ["HIT"] * 9 + ["MISS"]
    assert len(set(bodies)) == 1
    assert mw.stats["coalesced"] == 9


def test_coalesced_wait_is_bounded_and_late_waiters_do_not_store() -> None:
    app = CountingApp()
    gate = threading.Event()
    app.before = lambda env: gate.wait(3) if app.count("/slow") == 1 else None
    mw, client, clock, _ = make(app, coalesce_timeout=0.2)
    leader = threading.Thread(target=lambda: make_client(mw).get("/slow"))
    leader.start()
    time.sleep(0.05)
    waiter = get(client, "/slow")
    assert waiter.headers["Cache-Status"] == "wsgi-isr; fwd=uri-miss; detail=coalesce-timeout"
    assert b"render 2" in waiter.data
    gate.set()
    leader.join()
    assert b"render 1" in get(client, "/slow").data  # the leader's render is what was stored
    assert mw.stats["coalesce_timeouts"] == 1


def test_uncacheable_page_does_not_serialise_waiters() -> None:
    app = CountingApp(default=[])
    mw, client, clock, _ = make(app)
    get(client, "/plain")
    r = get(client, "/plain", headers={"Cookie": "session=1"})
    # remembered as uncacheable: later requests go straight through, with their own cookies
    assert r.headers["Cache-Status"] == "wsgi-isr; fwd=bypass; detail=uncacheable"
    assert b"cookie=session=1" in r.data


def test_conditional_requests_get_304() -> None:
    mw, client, clock, _ = make()
    first = get(client, "/p")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    r = get(client, "/p", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.data == b"" and r.headers["ETag"] == etag
    assert get(client, "/p", headers={"If-None-Match": '"other"'}).status_code == 200
    assert get(client, "/p", headers={"If-Modified-Since": modified}).status_code == 304
    assert get(client, "/p", headers={"If-None-Match": f'W/{etag}, "x"'}).status_code == 304


def test_a_page_changed_within_its_second_is_never_304_by_date() -> None:
    """Last-Modified has one-second resolution: a version regenerated within the second
    of the one before carries none, so a client that revalidates by date alone (curl
    -z, feed readers) gets the new page, not a 304 for the old one. A version in a
    later second has its date again."""
    mw, client, clock, app = make()
    first = get(client, "/p")
    since = first.headers["Last-Modified"]
    bodies = [first.data]
    for _ in range(2):  # the 2nd and 3rd versions, within the 1st one's second
        clock.advance(0.2)
        mw.revalidate_path("/p")
        assert get(client, "/p").headers["X-ISR-Cache"] == "STALE"
        assert mw.join(10)
        now = get(client, "/p")
        assert now.headers["X-ISR-Cache"] == "HIT" and now.data not in bodies
        bodies.append(now.data)
        assert "Last-Modified" not in now.headers
        again = get(client, "/p", headers={"If-Modified-Since": since})
        assert again.status_code == 200 and again.data == now.data
        etag = now.headers["ETag"]
        assert get(client, "/p", headers={"If-None-Match": etag}).status_code == 304
    clock.advance(1)
    mw.revalidate_path("/p")
    get(client, "/p")
    assert mw.join(10)
    later = get(client, "/p")
    assert later.headers["Last-Modified"] != since
    assert get(client, "/p", headers={"If-Modified-Since": since}).status_code == 200
    modified = later.headers["Last-Modified"]
    assert get(client, "/p", headers={"If-Modified-Since": modified}).status_code == 304


@pytest.mark.parametrize(
    ("etag", "matches", "misses"),
    [
        ('"v7"', ['"v7"', 'W/"v7"', '"x", "v7"', "*"], ['"v8"', "v7"]),
        # RFC 9110 etagc admits a comma: one tag, not two
        ('"a,b"', ['"a,b"', 'W/"a,b"', '"x","a,b"', '"a,b" , "c"'], ['"a"', 'b"']),
        ("v1", ["v1", "W/v1", "x, v1"], ['"v1"']),  # bare, as some apps send it
    ],
)
def test_app_etag_is_kept(etag: str, matches: list[str], misses: list[str]) -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "60"), ("ETag", etag)])
    mw, client, clock, _ = make(app)
    get(client, "/p")
    r = get(client, "/p")
    assert r.headers.getlist("ETag") == [etag]
    for value in matches:
        assert get(client, "/p", headers={"If-None-Match": value}).status_code == 304, value
    for value in misses:
        assert get(client, "/p", headers={"If-None-Match": value}).status_code == 200, value


def test_head_is_served_from_the_get_entry() -> None:
    mw, client, clock, app = make()
    r = client.head("/p")
    assert r.data == b"" and r.headers["X-ISR-Cache"] == "MISS"
    got = get(client, "/p")
    assert got.headers["X-ISR-Cache"] == "HIT"
    assert int(r.headers["Content-Length"]) == len(got.data)
    assert client.head("/p").headers["X-ISR-Cache"] == "HIT"
    assert app.count("/p") == 1
    assert app.environs[0]["REQUEST_METHOD"] == "GET"


def test_query_order_is_normalised_and_allow_list_ignores_other_params() -> None:
    mw, client, clock, app = make(query_params=["page", "q"])
    get(client, "/list?q=x&page=2&utm_source=mail")
    r = get(client, "/list?page=2&q=x&utm_source=other")
    assert r.headers["X-ISR-Cache"] == "HIT"
    assert app.environs[0]["QUERY_STRING"] == "page=2&q=x"  # the render never sees utm_*
    assert get(client, "/list?page=3").headers["X-ISR-Cache"] == "MISS"


def test_vary_keys_variants_on_the_named_header() -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "60"), ("Vary", "Accept-Language, Cookie")])
    mw, client, clock, _ = make(app)
    fr = get(client, "/v", headers={"Accept-Language": "fr"})
    assert b"lang=fr" in fr.data
    de = get(client, "/v", headers={"Accept-Language": "de"})
    assert b"lang=de" in de.data and de.headers["X-ISR-Cache"] == "MISS"
    assert b"lang=fr" in get(client, "/v", headers={"Accept-Language": "fr"}).data
    hit = get(client, "/v", headers={"Accept-Language": "de"})
    assert hit.headers["X-ISR-Cache"] == "HIT" and b"lang=de" in hit.data


# -- tags and invalidation -------------------------------------------------------------------


def test_tags_from_every_source_invalidate() -> None:
    def headers(environ: Any, n: int) -> list[tuple[str, str]]:
        wsgi_isr.tag("from-helper")
        return [
            ("X-ISR-Revalidate", "false"),
            ("X-ISR-Tags", "a, b"),
            ("Cache-Tag", "c,d"),
            ("Surrogate-Key", "e f"),
        ]

    for tag in ("a", "b", "c", "d", "e", "f", "from-helper"):
        mw, client, clock, app = make(CountingApp(default=headers))
        get(client, "/p")
        clock.advance(1)
        mw.revalidate_tag(tag)
        clock.advance(1)
        assert get(client, "/p").headers["X-ISR-Cache"] == "STALE", tag


def test_invalid_tags_are_dropped_and_never_echoed(caplog: pytest.LogCaptureFixture) -> None:
    bad = "x" * 300
    app = CountingApp(
        default=[("X-ISR-Revalidate", "60"), ("X-ISR-Tags", f"good, {bad}, _isr_page:/")]
    )
    mw, client, clock, _ = make(app)
    r = get(client, "/p")
    assert bad not in str(r.headers)
    assert "dropping invalid tag" in caplog.text
    clock.advance(1)
    mw.revalidate_tag("good")
    clock.advance(1)
    assert get(client, "/p").headers["X-ISR-Cache"] == "STALE"
    with pytest.raises(ValueError):
        mw.revalidate_tag("has space")


def test_soft_and_hard_tag_invalidation() -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "posts")])
    mw, client, clock, _ = make(app)
    get(client, "/a")
    get(client, "/b")
    clock.advance(5)
    mw.revalidate_tag("posts")
    clock.advance(1)
    assert get(client, "/a").headers["X-ISR-Cache"] == "STALE"
    mw.join(5)
    assert get(client, "/a").headers["X-ISR-Cache"] == "HIT"
    clock.advance(1)
    mw.revalidate_tag("posts", mode="hard")
    clock.advance(1)
    r = get(client, "/b")
    assert r.headers["X-ISR-Cache"] == "MISS"
    assert app.count("/b") == 2  # rendered in the foreground


def test_revalidate_path_page_covers_query_variants_only() -> None:
    mw, client, clock, app = make()
    for url in ("/blog?page=1", "/blog?page=2", "/blog/post", "/blogroll"):
        get(client, url)
    clock.advance(1)
    mw.revalidate_path("/blog")
    clock.advance(1)
    assert get(client, "/blog?page=1").headers["X-ISR-Cache"] == "STALE"
    assert get(client, "/blog?page=2").headers["X-ISR-Cache"] == "STALE"
    assert get(client, "/blog/post").headers["X-ISR-Cache"] == "HIT"
    assert get(client, "/blogroll").headers["X-ISR-Cache"] == "HIT"
    mw.join(5)


@pytest.mark.parametrize(
    ("layout", "stale", "untouched"),
    [
        pytest.param("/docs", ["/docs", "/docs/a", "/docs/a/b"], ["/doc", "/blog"], id="docs"),
        pytest.param("/", ["/docs/a", "/blog", "/"], [], id="whole-site"),
        pytest.param("/docs/a", ["/docs/a/b"], ["/docs", "/docs/ab"], id="nested"),
    ],
)
def test_revalidate_path_layout(layout: str, stale: list[str], untouched: list[str]) -> None:
    mw, client, clock, app = make()
    for url in stale + untouched:
        get(client, url)
    clock.advance(1)
    mw.revalidate_path(layout, "layout")
    clock.advance(1)
    for url in stale:
        assert get(client, url).headers["X-ISR-Cache"] == "STALE", url
    for url in untouched:
        assert get(client, url).headers["X-ISR-Cache"] == "HIT", url
    mw.join(5)


def test_render_in_flight_during_invalidation_lands_stale() -> None:
    app = CountingApp(default=[("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "t")])
    mw, client, clock, _ = make(app)

    def invalidate_mid_render(environ: Any) -> None:
        clock.advance(1)
        mw.revalidate_tag("t")  # the data changed while this render was running
        clock.advance(1)

    app.before = invalidate_mid_render
    get(client, "/p")
    app.before = None
    assert get(client, "/p").headers["X-ISR-Cache"] == "STALE"
    mw.join(5)
    assert get(client, "/p").headers["X-ISR-Cache"] == "HIT"


def test_module_level_revalidate_uses_the_current_middleware() -> None:
    seen: list[float] = []

    def webhook(environ: Any, start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/hook":
            seen.append(wsgi_isr.revalidate_tag("posts"))
            start_response("200 OK", [])
            return [b"ok"]
        start_response("200 OK", [("X-ISR-Revalidate", "false"), ("X-ISR-Tags", "posts")])
        return [b"page"]

    mw, client, clock, _ = make(webhook)
    get(client, "/p")
    clock.advance(1)
    get(client, "/hook")
    clock.advance(1)
    assert seen and get(client, "/p").headers["X-ISR-Cache"] == "STALE"
    mw.join(5)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"store": "ftp://nope"}, id="bad-store-url"),
        pytest.param({"store": "file://"}, id="file-without-path"),
        pytest.param({"store": 42}, id="store-type"),
        pytest.param({"lock_timeout": 0}, id="lock-timeout-zero"),
        pytest.param({"coalesce_timeout": -1}, id="coalesce-negative"),
        pytest.param({"max_entry_bytes": 0}, id="max-entry-zero"),
        pytest.param({"endpoint": "_isr"}, id="endpoint-relative"),
        pytest.param({"secret": ""}, id="empty-secret"),
        pytest.param({"trusted_hosts": "example.com"}, id="hosts-string"),
    ],
)
def test_bad_configuration_is_a_value_error(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        wsgi_isr.ISRMiddleware(CountingApp(), **options)


def test_default_store_is_a_shared_file_store(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGI_ISR_CACHE_DIR", str(tmp_path / "cache"))
    mw = wsgi_isr.ISRMiddleware(CountingApp())
    assert isinstance(mw.store, wsgi_isr.FileStore)
    assert mw.store.path == str(tmp_path / "cache")


def test_client_headers_never_promise_more_freshness_than_remains() -> None:
    mw, client, clock, app = make()
    client.get("/p")
    for step in (0.0, 0.3, 0.6, 0.9, 1.2, 29.99, 30.5, 59.7):
        clock.now = 1_000_000.0 + step
        r = client.get("/p")
        s_maxage = int(r.headers["Cache-Control"].split("s-maxage=")[1].split(",")[0])
        assert s_maxage <= 60 - step, step
        assert int(r.headers["Age"]) + s_maxage <= 60
