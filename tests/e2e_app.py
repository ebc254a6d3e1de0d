"""A small Flask application behind :class:`wsgi_isr.ISRMiddleware`, served by the
real-server tests (``tests/test_server.py``, ``tests/test_cluster.py``,
``tests/test_shutdown.py``) under ``gunicorn -k gevent -w N`` (see ``tests/servers.py``)::

    ISR_STORE=file:///tmp/isr ISR_SECRET=... ISR_COUNTER_DIR=/tmp/renders \\
        gunicorn -k gevent -w 2 tests.e2e_app:app

Configuration comes from the environment:

``ISR_STORE``
    the store URL, shared by every worker and instance (``file:///...``,
    ``redis://...?prefix=...``).
``ISR_SECRET``
    enables ``POST /_isr/revalidate``.
``ISR_COUNTER_DIR``
    every render appends ``<pid> <unix time>`` to ``<dir>/<page>.log`` (``slow-<name>``,
    ``post-<slug>``, ``whoami``, ``page-<name>``) when it *starts*, so a test can count
    renders over all workers and instances and find the process that is rendering
    right now (to kill it). Renders happen in several worker processes, so they are
    counted in files (``O_APPEND`` under ``flock``), never in memory.
``ISR_SLOW_SECONDS`` / ``ISR_POST_SECONDS``
    how long ``/slow/<name>`` and ``/post/<slug>`` take to render.
``ISR_LOCK_TIMEOUT``
    the middleware's ``lock_timeout`` (small, so a killed renderer's lock expires soon).
``ISR_LOCAL_TTL``
    when set, the middleware's ``local_ttl`` (an in-process layer in front of the store).

Routes:

``GET /slow/<name>``
    renders in ``ISR_SLOW_SECONDS`` and is fresh for one second.
``GET /post/<slug>``
    renders in ``ISR_POST_SECONDS``, tagged ``post-<slug>`` and ``posts``, cached until
    revalidated.
``GET /whoami``
    shows the visitor's ``user`` cookie, yet opts in to caching.
``GET /page/<name>?revalidate=<seconds|false>&delay=<seconds>``
    renders in ``delay`` seconds, carries the tag ``page-<name>`` and is cached for
    ``revalidate``.
``GET /plain/<name>``
    never opts in.
``GET /content/<name>?delay=<seconds>``
    shows ``<counter dir>/content-<name>.txt`` as read when the render starts, tagged
    ``content-<name>``, cached until revalidated.
``GET /article/<slug>``
    cached until invalidated and declares no tags of its own: it shows
    ``load_post(slug)`` (a cached function tagged ``post-<slug>``) and ``sidebar()``
    (tagged ``sidebar``, shared by every article), counted as ``data-post-<slug>`` and
    ``data-sidebar`` when they run, ``article-<slug>`` when the page renders.

Every response carries ``X-Worker-Pid``, the pid of the worker that *served* it
(added outside the cache, so a cached page still says who answered).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

from flask import Flask, abort, request

from tests.e2e_common import served_by
from wsgi_isr import ISRMiddleware, cached

if TYPE_CHECKING:
    pass

logging.basicConfig(level=logging.INFO, format="%(process)d %(levelname)s %(name)s: %(message)s")

COUNTER_DIR = os.environ["ISR_COUNTER_DIR"]
SLOW_SECONDS = float(os.environ.get("ISR_SLOW_SECONDS", "2"))
POST_SECONDS = float(os.environ.get("ISR_POST_SECONDS", "0.5"))
DATA_SECONDS = 0.5
_NAME = re.compile(r"[a-z0-9-]{1,64}")
_REVALIDATE = re.compile(r"false|[0-9]{1,5}")


def record_render(page: str) -> int:
    """Append ``<pid> <unix time>`` for one render of ``page`` (call it when the render
    starts); return how many renders it has had."""
    fd = os.open(
        os.path.join(COUNTER_DIR, page + ".log"), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644
    )
    try:
        # the lock makes "append, then count" one step across worker processes
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()} {time.time():.6f}\n".encode())
        return os.pread(fd, os.fstat(fd).st_size, 0).count(b"\n")
    finally:
        os.close(fd)


def _checked(name: str) -> str:
    if not _NAME.fullmatch(name):
        abort(404)
    return name


app = Flask(__name__)


@app.get("/health")
def health() -> tuple[str, dict[str, str]]:
    return f"ok {os.getpid()}", {"Content-Type": "text/plain"}


@app.get("/slow/<name>")
def slow(name: str) -> tuple[str, dict[str, str]]:
    """Takes ``SLOW_SECONDS`` to render and is fresh for one second."""
    name = _checked(name)
    n = record_render(f"slow-{name}")
    time.sleep(SLOW_SECONDS)  # gevent-patched: the worker keeps serving meanwhile
    return f"slow {name} render {n} by {os.getpid()}", {
        "Content-Type": "text/plain",
        "X-ISR-Revalidate": "1",
    }


@app.get("/post/<slug>")
def post(slug: str) -> tuple[str, dict[str, str]]:
    """Cached until its tag is revalidated."""
    slug = _checked(slug)
    n = record_render(f"post-{slug}")
    time.sleep(POST_SECONDS)
    return f"post {slug} render {n} by {os.getpid()}", {
        "Content-Type": "text/plain",
        "X-ISR-Revalidate": "false",
        "X-ISR-Tags": f"post-{slug}, posts",
    }


@app.get("/whoami")
def whoami() -> tuple[str, dict[str, str]]:
    """Opts in to caching although it shows the visitor's cookie: the middleware must
    never let one visitor's render reach another."""
    user = request.cookies.get("user", "anonymous")
    n = record_render("whoami")
    return f"hello {user} render {n}", {"Content-Type": "text/plain", "X-ISR-Revalidate": "60"}


@app.get("/page/<name>")
def page(name: str) -> tuple[str, dict[str, str]]:
    name = _checked(name)
    revalidate = request.args.get("revalidate", "false")
    if not _REVALIDATE.fullmatch(revalidate):
        abort(400)
    delay = min(float(request.args.get("delay", "0")), 10.0)
    n = record_render(f"page-{name}")
    time.sleep(delay)  # gevent-patched: the worker keeps serving meanwhile
    return f"{name} render {n} by {os.getpid()}", {
        "Content-Type": "text/plain",
        "X-ISR-Revalidate": revalidate,
        "X-ISR-Tags": f"page-{name}",
    }


@app.get("/content/<name>")
def content(name: str) -> tuple[str, dict[str, str]]:
    """Shows ``<counter dir>/content-<name>.txt`` as read when the render *starts*
    (then takes ``delay`` seconds), tagged ``content-<name>``, cached until revalidated:
    a render in flight when the file changes and the tag is revalidated has old content."""
    name = _checked(name)
    delay = min(float(request.args.get("delay", "0")), 10.0)
    try:
        with open(os.path.join(COUNTER_DIR, f"content-{name}.txt")) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    record_render(f"content-{name}")
    time.sleep(delay)
    return f"{name} {text}", {
        "Content-Type": "text/plain",
        "X-ISR-Revalidate": "false",
        "X-ISR-Tags": f"content-{name}",
    }


@app.get("/plain/<name>")
def plain(name: str) -> tuple[str, dict[str, str]]:
    """Does not opt in: always rendered by the application."""
    return f"plain {_checked(name)} by {os.getpid()}", {"Content-Type": "text/plain"}


@cached(revalidate=False, tags=lambda slug: [f"post-{slug}"])
def load_post(slug: str) -> dict[str, Any]:
    n = record_render(f"data-post-{slug}")
    return {"slug": slug, "version": n}


@cached(revalidate=False, tags=["sidebar"])
def sidebar() -> dict[str, Any]:
    n = record_render("data-sidebar")
    time.sleep(DATA_SECONDS)  # long enough for concurrent regenerations to overlap
    return {"version": n}


@app.get("/article/<slug>")
def article(slug: str) -> tuple[str, dict[str, str]]:
    """No tags of its own: its data's tags reach it (``wsgi_isr.cached``)."""
    slug = _checked(slug)
    n = record_render(f"article-{slug}")
    post, side = load_post(slug), sidebar()
    body = f"article {slug} post v{post['version']} sidebar v{side['version']} render {n}"
    return body, {"Content-Type": "text/plain", "X-ISR-Revalidate": "false"}


app.wsgi_app = served_by(  # type: ignore[method-assign,assignment]
    ISRMiddleware(
        app.wsgi_app,
        store=os.environ["ISR_STORE"],
        secret=os.environ["ISR_SECRET"],
        lock_timeout=float(os.environ.get("ISR_LOCK_TIMEOUT", "60")),  # the default
        local_ttl=float(os.environ["ISR_LOCAL_TTL"]) if "ISR_LOCAL_TTL" in os.environ else None,
    )
)
