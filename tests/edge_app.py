"""The application behind a real Varnish in ``tests/test_edge.py``, served by
``gunicorn -k gevent -w 2`` (see ``tests/servers.py``)::

    ISR_STORE=file:///tmp/isr ISR_SECRET=... ISR_BYPASS_TOKEN=... \\
    ISR_PURGE="varnish://127.0.0.1:6081" gunicorn -k gevent -w 2 tests.edge_app:app

Every render says which render it is (a random id), so a test tells a new page from
an old copy without counting.

``GET /docs/<name>``
    cached until revalidated, tagged ``doc-<name>`` and ``docs``.
``GET /host/<name>``
    cached until revalidated, tagged ``host-<name>``; shows the ``Host`` it was rendered for.
``GET /whoami``
    shows the visitor's ``user`` cookie, yet opts in (cached 60 s).
``GET /aged/<name>``
    outside the middleware: an answer shaped like a cached page at age 31 with 29 s of
    freshness left (``Age: 31``, ``s-maxage=29``), as wsgi_isr sends one.
``GET /preview``
    shows the draft to requests carrying ``X-ISR-Bypass`` or the ``__isr_bypass`` cookie
    (the middleware lets only the right token through uncached), the published page to
    everyone else.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, abort, request

from wsgi_isr import ISRMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_NAME = re.compile(r"[a-z0-9-]{1,64}")

app = Flask(__name__)


def render_id() -> str:
    return uuid.uuid4().hex[:12]


@app.get("/health")
def health() -> tuple[str, dict[str, str]]:
    return f"ok {os.getpid()}", {"Content-Type": "text/plain", "X-Worker-Pid": str(os.getpid())}


def until_revalidated(name: str, text: str, tags: str) -> tuple[str, dict[str, str]]:
    """A page cached until revalidated, saying which render it is."""
    if not _NAME.fullmatch(name):
        abort(404)
    return f"{text} render {render_id()}", {
        "Content-Type": "text/plain",
        "X-ISR-Revalidate": "false",
        "X-ISR-Tags": tags,
    }


@app.get("/docs/<name>")
def doc(name: str) -> tuple[str, dict[str, str]]:
    return until_revalidated(name, f"doc {name}", f"doc-{name}, docs")


@app.get("/host/<name>")
def host(name: str) -> tuple[str, dict[str, str]]:
    return until_revalidated(name, f"host {request.host}", f"host-{name}")


@app.get("/whoami")
def whoami() -> tuple[str, dict[str, str]]:
    user = request.cookies.get("user", "anonymous")
    return f"hello {user} render {render_id()}", {
        "Content-Type": "text/plain",
        "X-ISR-Revalidate": "60",
    }


@app.get("/preview")
def preview() -> tuple[str, dict[str, str]]:
    asked = request.headers.get("X-ISR-Bypass") or request.cookies.get("__isr_bypass")
    state = "draft" if asked else "published"
    return f"{state} render {render_id()}", {
        "Content-Type": "text/plain",
        "X-ISR-Revalidate": "false",
    }


def with_aged(wsgi_app: WSGIApplication) -> WSGIApplication:
    """Answer ``/aged/...`` here, everything else through ``wsgi_app``."""

    def wrapper(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not environ.get("PATH_INFO", "").startswith("/aged/"):
            return wsgi_app(environ, start_response)
        body = f"aged render {render_id()}".encode()
        headers: list[tuple[str, str]] = [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "public, s-maxage=29"),
            ("Age", "31"),
        ]
        start_response("200 OK", headers)
        return [body]

    return wrapper


middleware: Any = ISRMiddleware(
    app.wsgi_app,
    store=os.environ["ISR_STORE"],
    secret=os.environ["ISR_SECRET"],
    bypass_token=os.environ["ISR_BYPASS_TOKEN"],
    purge=os.environ.get("ISR_PURGE", "").split(),
    cdn_max_age=int(os.environ["ISR_CDN_MAX_AGE"]) if os.environ.get("ISR_CDN_MAX_AGE") else None,
)
app.wsgi_app = with_aged(middleware)  # type: ignore[method-assign]
