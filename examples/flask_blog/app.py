"""A small blog behind wsgi_isr, through the Flask extension.

    gunicorn -c examples/flask_blog/gunicorn.conf.py    # serve it (gevent, 4 workers)
    flask --app examples.flask_blog.app isr build --host 127.0.0.1:8000    # pre-build top 100

Environment: ``ISR_STORE`` (default: a file store in the instance folder; set
``redis://127.0.0.1:6379/0`` to share one cache between hosts), ``ISR_SECRET``
(revalidation endpoint and CMS webhook), ``BLOG_PASSWORD`` (the edit form),
``BLOG_DB`` (SQLite path).

What it shows:
- ``/posts/<slug>``: tagged ``post-<slug>`` (and, through the data layer, the tags of
  the related posts it shows) and ``posts``; the top 100 are pre-built
  (``static_params``), the other 9,900 render on first visit.
- ``/``: a paginated listing, revalidated every 60 s; each page carries the tags of
  the posts it lists.
- The data comes through the data cache (``isr.cached``): a post, its related posts,
  a listing page and the category sidebar are each cached under their own tags, so
  after an edit a regeneration re-runs only the queries whose data changed
  (``BLOG_DATA_CACHE=False`` turns it off, for comparison).
- ``/docs/...``: nested pages for ``revalidate_path("/docs/guide", "layout")``.
- ``/clock``: purely time-based, fresh for 10 s.
- ``/edit/<slug>``: a password-protected form that saves and revalidates.
- ``/api/cms-webhook``: the seed's webhook, JSON ``{slug, secret}``.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, abort, g, redirect, render_template, request

from wsgi_isr.flask import ISR

from . import data

DEFAULT_SECRET = "change-me-please-this-is-the-demo-secret"
DOCS = {
    "guide": ["install", "configure", "deploy"],
    "reference": ["headers", "stores", "endpoint"],
}
isr = ISR()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    here = os.path.dirname(os.path.abspath(__file__))
    app = Flask(__name__, instance_path=os.path.join(here, "instance"))
    app.config.update(
        BLOG_DB=os.environ.get("BLOG_DB", os.path.join(app.instance_path, "blog.db")),
        BLOG_POSTS=data.POSTS,
        BLOG_PREBUILD=100,
        BLOG_PASSWORD=os.environ.get("BLOG_PASSWORD", "letmein"),
        ISR_STORE=os.environ.get("ISR_STORE") or None,  # None: file store in instance/
        ISR_SECRET=os.environ.get("ISR_SECRET", DEFAULT_SECRET),
        BLOG_DATA_CACHE=True,
    )
    app.config.update(config or {})
    data.ensure_schema(app.config["BLOG_DB"], app.config["BLOG_POSTS"])

    def db() -> Any:
        if "db" not in g:
            g.db = data.connect(app.config["BLOG_DB"])
        return g.db

    @app.teardown_appcontext
    def close_db(exc: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            conn.close()

    def top_posts() -> list[dict[str, str]]:
        conn = data.connect(app.config["BLOG_DB"])
        try:
            return [{"slug": s} for s in data.top_slugs(conn, app.config["BLOG_PREBUILD"])]
        finally:
            conn.close()

    @app.template_filter("utc")
    def utc(seconds: float) -> str:
        return time.strftime("%H:%M:%S UTC", time.gmtime(seconds))

    # -- the data layer, through the data cache: JSON values, one entry per call ----------

    def cache(
        revalidate: Any, tags: Any = ()
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if not app.config["BLOG_DATA_CACHE"]:
            return lambda fn: fn
        return isr.cached(revalidate, tags=tags)

    @cache("hours", tags=lambda slug: [f"post-{slug}"])
    def load_post(slug: str) -> dict[str, Any] | None:
        found = data.get_post(db(), slug)
        return dataclasses.asdict(found) if found else None

    @cache("hours")  # tagged by the body: post-<slug> of every post it returns
    def load_related(slug: str) -> list[dict[str, Any]]:
        return [dataclasses.asdict(p) for p in data.related_posts(db(), slug)]

    @cache(60, tags=["posts"])  # and the tags of the posts it lists
    def load_listing(page: int) -> list[dict[str, Any]]:
        return [dataclasses.asdict(p) for p in data.list_posts(db(), page)]

    @cache("days", tags=["categories"])  # shared by every page
    def load_categories() -> list[dict[str, Any]]:
        return data.categories(db())

    @app.get("/")
    @isr.page(revalidate=60, tags=["posts"])
    def index() -> Any:
        page = request.args.get("page", 1, type=int)
        pages = (app.config["BLOG_POSTS"] + data.PER_PAGE - 1) // data.PER_PAGE
        if page < 1 or page > pages:
            abort(404)
        return render_template(
            "index.html",
            posts=load_listing(page),
            page=page,
            categories=load_categories(),
            rendered=time.time(),
        )

    @app.get("/posts/<slug>")
    @isr.page(revalidate=3600, tags=["posts"], static_params=top_posts)
    def post(slug: str) -> Any:
        found = load_post(slug)  # tags post-<slug>
        if found is None:
            abort(404)
        return render_template(
            "post.html",
            post=found,
            related=load_related(slug),  # tags post-<each related slug>
            categories=load_categories(),
            rendered=time.time(),
        )

    def doc_params() -> list[dict[str, str]]:
        return [{"section": s, "page": p} for s, pages in DOCS.items() for p in pages]

    @app.get("/docs/")
    @isr.page(tags=["docs"])
    def docs_index() -> Any:
        return render_template(
            "docs.html", docs=DOCS, section=None, page=None, rendered=time.time()
        )

    @app.get("/docs/<section>/<page>")
    @isr.page(tags=["docs"], static_params=doc_params, dynamic_params=False)
    def doc(section: str, page: str) -> Any:
        return render_template(
            "docs.html", docs=DOCS, section=section, page=page, rendered=time.time()
        )

    @app.get("/clock")
    @isr.page(revalidate=10)
    def clock() -> Any:
        return render_template("clock.html", rendered=time.time())

    @app.route("/edit/<slug>", methods=["GET", "POST"])
    def edit(slug: str) -> Any:
        found = data.get_post(db(), slug)
        if found is None:
            abort(404)
        if request.method == "POST":
            given = request.form.get("password", "")
            if not hmac.compare_digest(given, app.config["BLOG_PASSWORD"]):
                return render_template("edit.html", post=found, error="wrong password"), 403
            data.update_post(db(), slug, request.form["title"], request.form["body"])
            isr.revalidate_tag(f"post-{slug}")  # its page, listings and related widgets
            return redirect(f"/edit/{slug}/saved?at={time.time():.3f}", code=303)
        return render_template("edit.html", post=found, error=None)

    @app.get("/edit/<slug>/saved")
    def edit_saved(slug: str) -> Any:
        """Not cached: shows the post coming back regenerated (the page's script asks)."""
        found = data.get_post(db(), slug)
        if found is None:
            abort(404)
        saved = request.args.get("at", type=float) or time.time()
        return render_template("saved.html", post=found, saved=saved)

    @app.post("/api/cms-webhook")
    def cms_webhook() -> Any:
        """The seed's webhook: ``{"slug": "...", "secret": "..."}``."""
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("slug"), str):
            return {"error": "expected JSON {slug, secret}"}, 400
        if not hmac.compare_digest(str(body.get("secret", "")), app.config["ISR_SECRET"]):
            return {"error": "invalid secret"}, 401
        try:
            now = isr.revalidate_tag(f"post-{body['slug']}")
        except ValueError as exc:
            return {"error": str(exc)}, 400
        return {"revalidated": True, "slug": body["slug"], "now": now}

    isr.init_app(app)
    return app
