"""A small blog behind wsgi_isr.

    gunicorn -c examples/flask_blog/gunicorn.conf.py

Environment: ``ISR_STORE`` (default: a file store in the instance folder; set
``redis://127.0.0.1:6379/0`` to share one cache between hosts), ``ISR_SECRET``
(revalidation endpoint and CMS webhook secret), ``BLOG_DB`` (SQLite path).
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, abort, g, render_template, request

from wsgi_isr import ISRMiddleware

from . import data

DEFAULT_SECRET = "change-me-please-this-is-the-demo-secret"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_path=os.path.join(os.path.dirname(__file__), "instance"))
    app.config.update(
        BLOG_DB=os.environ.get("BLOG_DB", os.path.join(app.instance_path, "blog.db")),
        BLOG_POSTS=data.POSTS,
        ISR_STORE=os.environ.get("ISR_STORE")
        or "file://" + os.path.join(app.instance_path, "isr-cache"),
        ISR_SECRET=os.environ.get("ISR_SECRET", DEFAULT_SECRET),
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

    @app.get("/")
    def index() -> Any:
        page = request.args.get("page", 1, type=int)
        if page < 1 or page > (app.config["BLOG_POSTS"] + data.PER_PAGE - 1) // data.PER_PAGE:
            abort(404)
        posts = data.list_posts(db(), page)
        html = render_template("index.html", posts=posts, page=page, rendered=time.time())
        return html, {"X-ISR-Revalidate": "60", "X-ISR-Tags": "posts"}

    @app.get("/posts/<slug>")
    def post(slug: str) -> Any:
        found = data.get_post(db(), slug)
        if found is None:
            abort(404)
        related = data.related_posts(db(), found)
        html = render_template("post.html", post=found, related=related, rendered=time.time())
        return html, {"X-ISR-Revalidate": "3600", "X-ISR-Tags": "posts"}

    @app.get("/clock")
    def clock() -> Any:
        """Time-revalidated: fresh for 10 s, then regenerated in the background."""
        return render_template("clock.html", rendered=time.time()), {"X-ISR-Revalidate": "10"}

    @app.post("/api/cms-webhook")
    def cms_webhook() -> Any:
        """The seed's webhook: ``{"slug": "...", "secret": "..."}``."""
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("slug"), str):
            return {"error": "expected JSON {slug, secret}"}, 400
        import hmac

        if not hmac.compare_digest(str(body.get("secret", "")), app.config["ISR_SECRET"]):
            return {"error": "invalid secret"}, 401
        app.wsgi_app.revalidate_tag(f"post-{body['slug']}")  # type: ignore[attr-defined]
        return {"revalidated": True, "slug": body["slug"], "now": time.time()}

    app.wsgi_app = ISRMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store=app.config["ISR_STORE"], secret=app.config["ISR_SECRET"]
    )
    return app


app = create_app()
