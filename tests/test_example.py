"""The example blog: one edit re-renders exactly the pages that show the post."""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers import FakeClock
from werkzeug.test import Client

from examples.flask_blog import data
from examples.flask_blog.app import DEFAULT_SECRET, create_app
from wsgi_isr import MemoryStore


@pytest.fixture
def blog(tmp_path: Any) -> tuple[Any, Client, FakeClock]:
    clock = FakeClock()
    app = create_app(
        {
            "BLOG_DB": str(tmp_path / "blog.db"),
            "BLOG_POSTS": 400,
            "BLOG_PREBUILD": 10,
            "ISR_STORE": MemoryStore(clock=clock),
        }
    )
    return app, Client(app, use_cookies=False), clock


def rendered_at(response: Any) -> str:
    match = re.search(r"rendered at ([0-9.]+)", response.get_data(as_text=True))
    assert match, response.get_data(as_text=True)[:200]
    return match.group(1)


def slugs(app: Any, n: int) -> list[str]:
    conn = data.connect(app.config["BLOG_DB"])
    try:
        return data.top_slugs(conn, n)
    finally:
        conn.close()


def test_editing_one_post_rerenders_only_the_pages_that_show_it(blog: Any) -> None:
    app, client, clock = blog
    all_slugs = slugs(app, 40)
    edited = all_slugs[8]  # post 9: in the related posts of post 1, listed on page 1
    pages = ["/", "/?page=2"] + [f"/posts/{s}" for s in all_slugs]
    before = {url: rendered_at(client.get(url)) for url in pages}
    for url in pages:
        assert client.get(url).headers["X-ISR-Cache"] == "HIT"
    clock.advance(1)

    r = client.post(
        f"/edit/{edited}", data={"title": "Edited title", "body": "new", "password": "letmein"}
    )
    assert r.status_code == 303
    clock.advance(1)

    labels = {url: client.get(url).headers["X-ISR-Cache"] for url in pages}
    app.wsgi_app.join(10)
    stale = {url for url, label in labels.items() if label == "STALE"}
    showing = {url for url in pages if edited in client.get(url).get_data(as_text=True)}
    showing.add(f"/posts/{edited}")  # its own page does not link to itself
    # the post itself, page 1 of the listing, and every post whose related widget shows it
    assert f"/posts/{edited}" in stale and "/" in stale
    assert f"/posts/{all_slugs[0]}" in stale
    assert stale == showing
    assert "/?page=2" not in stale
    for url in pages:
        response = client.get(url)
        assert response.headers["X-ISR-Cache"] == "HIT"
        changed = rendered_at(response) != before[url]
        assert changed is (url in stale), url
    assert "Edited title" in client.get(f"/posts/{edited}").get_data(as_text=True)


def test_wrong_password_changes_nothing(blog: Any) -> None:
    app, client, clock = blog
    slug = slugs(app, 1)[0]
    client.get(f"/posts/{slug}")
    r = client.post(f"/edit/{slug}", data={"title": "x", "body": "y", "password": "nope"})
    assert r.status_code == 403
    assert client.get(f"/posts/{slug}").headers["X-ISR-Cache"] == "HIT"


def test_cms_webhook(blog: Any) -> None:
    app, client, clock = blog
    slug = slugs(app, 1)[0]
    client.get(f"/posts/{slug}")
    clock.advance(1)
    wrong = client.post("/api/cms-webhook", json={"slug": slug, "secret": "wrong"})
    assert wrong.status_code == 401
    clock.advance(1)
    assert client.get(f"/posts/{slug}").headers["X-ISR-Cache"] == "HIT"
    ok = client.post("/api/cms-webhook", json={"slug": slug, "secret": DEFAULT_SECRET})
    assert ok.status_code == 200 and ok.json["revalidated"] is True
    clock.advance(1)
    assert client.get(f"/posts/{slug}").headers["X-ISR-Cache"] == "STALE"
    app.wsgi_app.join(10)
    assert client.post("/api/cms-webhook", json={"nope": 1}).status_code == 400


def test_docs_layout_invalidation_and_unknown_docs_404(blog: Any) -> None:
    app, client, clock = blog
    urls = ["/docs/guide/install", "/docs/guide/deploy", "/docs/reference/headers", "/docs/"]
    for url in urls:
        assert client.get(url).status_code == 200
    assert client.get("/docs/guide/nope").status_code == 404
    clock.advance(1)
    app.wsgi_app.revalidate_path("/docs/guide", "layout")
    clock.advance(1)
    labels = {url: client.get(url).headers["X-ISR-Cache"] for url in urls}
    app.wsgi_app.join(10)
    assert labels == {
        "/docs/guide/install": "STALE",
        "/docs/guide/deploy": "STALE",
        "/docs/reference/headers": "HIT",
        "/docs/": "HIT",
    }


def test_build_prebuilds_the_top_posts(blog: Any) -> None:
    app, client, clock = blog
    result = app.test_cli_runner().invoke(args=["isr", "build"])
    assert result.exit_code == 0, result.output
    assert "19 built" in result.output  # 10 posts, 6 docs, /, /docs/, /clock
    top = slugs(app, 11)
    assert client.get(f"/posts/{top[0]}").headers["X-ISR-Cache"] == "HIT"
    assert client.get(f"/posts/{top[10]}").headers["X-ISR-Cache"] == "MISS"  # long tail


def test_pages_carry_their_render_time_and_the_home_page_explains_isr(blog: Any) -> None:
    app, client, clock = blog
    home = client.get("/").get_data(as_text=True)
    assert "Try ISR" in home and 'href="/edit/' in home and "STALE" in home
    assert re.search(r'id="rendered" data-ago="[0-9.]+"', home)  # the script's "12 s ago"
    assert '<link rel="stylesheet" href="/static/style.css">' in home
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.mimetype == "text/css"


def test_the_saved_post_visibly_comes_back_regenerated(blog: Any) -> None:
    app, client, clock = blog
    slug = slugs(app, 1)[0]
    old = rendered_at(client.get(f"/posts/{slug}"))
    clock.advance(1)
    form = {"title": "Watch me", "body": "new", "password": "letmein"}
    saved_url = client.post(f"/edit/{slug}", data=form).headers["Location"]
    assert saved_url.startswith(f"/edit/{slug}/saved?at=")
    saved = client.get(saved_url)
    assert saved.headers.get("X-ISR-Cache") != "HIT"  # the watching page itself is live
    assert f'data-url="/posts/{slug}"' in saved.get_data(as_text=True)
    # what the page's script sees: the old copy first (STALE), then a newer render
    first = client.get(f"/posts/{slug}")
    assert first.headers["X-ISR-Cache"] == "STALE" and rendered_at(first) == old
    app.wsgi_app.join(10)
    again = client.get(f"/posts/{slug}")
    assert again.headers["X-ISR-Cache"] == "HIT" and "Watch me" in again.get_data(as_text=True)
    assert float(rendered_at(again)) >= float(saved_url.rsplit("=", 1)[1])


def test_after_an_edit_each_regeneration_runs_one_query(blog: Any) -> None:
    """Through the data cache, a regenerated page re-runs only the query whose data
    changed (its post, the listing, or one related-posts widget); the rest are hits."""
    app, client, clock = blog
    all_slugs = slugs(app, 40)
    pages = ["/", "/?page=2"] + [f"/posts/{s}" for s in all_slugs]
    for url in pages:
        client.get(url)
    clock.advance(1)
    edited = all_slugs[8]
    r = client.post(
        f"/edit/{edited}", data={"title": "Edited title", "body": "new", "password": "letmein"}
    )
    assert r.status_code == 303
    clock.advance(1)
    before = data.queries[0]
    stale = [url for url in pages if client.get(url).headers["X-ISR-Cache"] == "STALE"]
    assert app.wsgi_app.join(10)
    assert len(stale) >= 3
    assert data.queries[0] - before == len(stale)
    assert "Edited title" in client.get(f"/posts/{edited}").get_data(as_text=True)
