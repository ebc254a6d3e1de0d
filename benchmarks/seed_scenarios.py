"""The seed's two scenarios, measured on the example blog.

    python benchmarks/seed_scenarios.py [--posts 10000] [--docs 2000] [--prebuilt 50]
                                        [--data-posts 1000]

1. Blog: the "full rebuild" (pre-render all posts, what a static site generator does for
   one typo) against the ISR path (edit one post, then the time until a visitor is served
   its fresh page, through the real background regeneration).
2. Docs site: pre-build the 50 most visited of 2,000 pages at deploy time against
   pre-building all 2,000 (the long tail then renders on first visit).
3. Data cache: edit one post, then count the SQL queries run by the regenerations that
   follow (every listing page and post page was cached), with the blog's data cache
   (``isr.cached``) and without it (``BLOG_DATA_CACHE=False``).

Both sides run in this one process, on a file store in a temporary directory, so the
ratio is what matters on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

from flask import Flask, render_template_string
from werkzeug.test import Client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from examples.flask_blog import data  # noqa: E402
from examples.flask_blog.app import create_app  # noqa: E402
from wsgi_isr.flask import ISR  # noqa: E402

DOC_TEMPLATE = """<!doctype html><title>{{ title }}</title>
<nav>{% for s in sections %}<a href="/docs/{{ s }}/">{{ s }}</a> {% endfor %}</nav>
<h1>{{ title }}</h1>{% for p in paragraphs %}<p>{{ p }}</p>{% endfor %}"""


def blog_scenario(posts: int, workdir: str, concurrency: int) -> dict[str, float]:
    app = create_app(
        {
            "BLOG_DB": os.path.join(workdir, "blog.db"),
            "BLOG_POSTS": posts,
            "ISR_STORE": "file://" + os.path.join(workdir, "blog-cache"),
        }
    )
    mw: Any = app.wsgi_app
    conn = data.connect(app.config["BLOG_DB"])
    all_slugs = data.top_slugs(conn, posts)
    paths = [f"/posts/{s}" for s in all_slugs]

    report = mw.prebuild(paths, host="localhost", concurrency=concurrency)
    assert report.ok and len(report.built) == posts, report.summary()
    full = report.seconds

    client = Client(app, use_cookies=False)
    slug = all_slugs[len(all_slugs) // 2]
    assert client.get(f"/posts/{slug}").headers["X-ISR-Cache"] == "HIT"
    start = time.perf_counter()
    data.update_post(conn, slug, "Typo fixed", "The corrected body.")
    mw.revalidate_tag(f"post-{slug}")
    while True:  # visitors keep coming; the first ones get the stale copy instantly
        r = client.get(f"/posts/{slug}")
        if b"Typo fixed" in r.data:
            break
        time.sleep(0.001)
    isr = time.perf_counter() - start
    conn.close()
    return {"full": full, "isr": isr}


def docs_scenario(pages: int, prebuilt: int, workdir: str, concurrency: int) -> dict[str, float]:
    sections = [f"section-{i}" for i in range(max(1, pages // 100))]

    def make(store: str) -> tuple[Flask, ISR]:
        app = Flask(__name__)
        app.config["ISR_STORE"] = store
        isr = ISR()

        @app.get("/docs/<section>/<int:n>")
        @isr.page(revalidate=3600, tags=lambda section, n: [f"doc-{section}-{n}"])
        def doc(section: str, n: int) -> str:
            paragraphs = [f"Paragraph {i} of page {n} in {section}." * 8 for i in range(30)]
            return render_template_string(
                DOC_TEMPLATE, title=f"{section} {n}", sections=sections, paragraphs=paragraphs
            )

        isr.init_app(app)
        return app, isr

    paths = [f"/docs/{sections[i % len(sections)]}/{i}" for i in range(pages)]
    results = {}
    for name, subset in (("all", paths), ("popular", paths[:prebuilt])):
        app, _ = make("file://" + os.path.join(workdir, f"docs-{name}"))
        report = app.wsgi_app.prebuild(subset, concurrency=concurrency)  # type: ignore[attr-defined]
        assert report.ok and len(report.built) == len(subset), report.summary()
        results[name] = report.seconds
    return results


def data_cache_scenario(posts: int, workdir: str, concurrency: int) -> dict[str, int]:
    """Queries run by the regenerations after one edit, with and without the data cache."""
    results: dict[str, int] = {}
    for cached in (True, False):
        name = "cached" if cached else "uncached"
        app = create_app(
            {
                "BLOG_DB": os.path.join(workdir, f"data-{name}.db"),
                "BLOG_POSTS": posts,
                "BLOG_DATA_CACHE": cached,
                "ISR_STORE": "file://" + os.path.join(workdir, f"data-{name}-cache"),
            }
        )
        mw: Any = app.wsgi_app
        conn = data.connect(app.config["BLOG_DB"])
        all_slugs = data.top_slugs(conn, posts)
        listing = [f"/?page={n}" for n in range(2, (posts + data.PER_PAGE - 1) // data.PER_PAGE)]
        pages = ["/", *listing, *(f"/posts/{s}" for s in all_slugs)]
        report = mw.prebuild(pages, host="localhost", concurrency=concurrency)
        assert report.ok and len(report.built) == len(pages), report.summary()

        client = Client(app, use_cookies=False)
        slug = all_slugs[len(all_slugs) // 2]
        data.update_post(conn, slug, "Typo fixed", "The corrected body.")
        time.sleep(0.01)  # the invalidation comes strictly after every stored render
        mw.revalidate_tag(f"post-{slug}")
        before_queries, before_regens = data.queries[0], mw.stats.snapshot()["regenerations_ok"]
        stale = [p for p in pages if client.get(p).headers["X-ISR-Cache"] == "STALE"]
        assert mw.join(60)
        results[f"{name}_queries"] = data.queries[0] - before_queries
        results[f"{name}_regenerations"] = mw.stats.snapshot()["regenerations_ok"] - before_regens
        results[f"{name}_stale"] = len(stale)
        assert b"Typo fixed" in client.get(f"/posts/{slug}").data
        conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=10_000)
    parser.add_argument("--docs", type=int, default=2_000)
    parser.add_argument("--prebuilt", type=int, default=50)
    parser.add_argument("--data-posts", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsgi-isr-seed-") as workdir:
        blog = blog_scenario(args.posts, workdir, args.concurrency)
        docs = docs_scenario(args.docs, args.prebuilt, workdir, args.concurrency)
        dc = data_cache_scenario(args.data_posts, workdir, args.concurrency)
    print(f"blog, {args.posts} posts:")
    print(f"  full rebuild (pre-render every post):   {blog['full']:8.2f} s")
    print(f"  ISR: edit one post -> fresh page served: {blog['isr']:8.3f} s")
    print(f"  ratio full / ISR:                        {blog['full'] / blog['isr']:8.0f}x")
    print(f"docs site, {args.docs} pages:")
    print(f"  pre-build all {args.docs}:                  {docs['all']:8.2f} s")
    print(f"  pre-build the {args.prebuilt} most visited:        {docs['popular']:8.2f} s")
    print(f"  ratio all / popular:                     {docs['all'] / docs['popular']:8.1f}x")
    print(f"blog, {args.data_posts} posts, every page cached:")
    print("  edit one post: queries run by the regenerations that follow")
    for name, label in (("cached", "with the data cache"), ("uncached", "without it")):
        print(
            f"    {label + ':':24}{dc[name + '_queries']:5d} queries"
            f" ({dc[name + '_regenerations']} pages regenerated)"
        )


if __name__ == "__main__":
    main()
