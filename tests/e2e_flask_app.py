"""A Flask site that fails the way real Flask sites fail, behind
:class:`wsgi_isr.ISRMiddleware`, served by ``tests/test_failures_server.py`` under
``gunicorn -k gevent -w 2`` (see ``tests/servers.py``)::

    ISR_STORE=file:///tmp/isr ISR_SECRET=... ISR_CONTROL_DIR=/tmp/control \\
        gunicorn -k gevent -w 2 tests.e2e_flask_app:app

The test never makes the middleware see an imitation of a failure: it flips a control
file, and the *view* then raises, calls ``abort()`` or returns an error status, and
Flask's own error handling answers (its 500 page carries none of the ``X-ISR-*``
headers the page opts in with).

Configuration comes from the environment:

``ISR_STORE`` / ``ISR_SECRET``
    the store URL (shared by every worker) and the revalidation secret.
``ISR_CONTROL_DIR``
    ``<dir>/<page>.mode`` holds how ``/article/<page>`` behaves on its next render
    (missing: ``ok``); every render of a controlled page appends
    ``<pid> <unix time> <mode>`` to ``<dir>/<page>.log`` when it *starts* (``O_APPEND``
    under ``flock``: renders happen in several worker processes), so a test counts
    attempts over all workers and finds the process rendering right now.
``ISR_LOCK_TIMEOUT`` / ``ISR_COALESCE_TIMEOUT`` / ``ISR_BACKOFF``
    the middleware's ``lock_timeout``, ``coalesce_timeout`` and
    ``regeneration_backoff`` (seconds).
``ISR_MAX_ENTRY_BYTES``
    the middleware's ``max_entry_bytes`` (default 5 MiB).
``ISR_BYPASS_COOKIES`` / ``ISR_BYPASS_TOKEN``
    ``bypass_cookies`` (comma-separated names) and ``bypass_token`` (unset: none).

Modes of ``/article/<page>``:

``ok``
    ``article <page> render <n> by <pid>``, cached until its tag ``article-<page>``
    is revalidated.
``raise``
    the view raises (a database that is down): Flask's 500 page.
``abort-<code>``
    ``abort(<code>)``: werkzeug's error page for that status.
``status-<code>``
    the view returns a plain ``<code>`` answer without opt-in headers (a proxy view
    whose upstream failed).
``optin-<code>``
    the view returns a ``<code>`` maintenance page that still carries the page's
    cache headers (a site that adds them to every answer).
``sleep-<seconds>``
    renders normally, after sleeping that long (gevent-patched: the worker keeps
    serving meanwhile).

Other routes: ``/me/<name>`` opts in and greets the visitor by the ``session`` or
``user`` cookie; ``/doc/<name>`` opts in and shows the draft to a visitor carrying the
preview token (``X-ISR-Bypass`` or the ``__isr_bypass`` cookie); ``/account/<name>``
greets the ``user`` cookie and never opts in; ``/ab/<name>`` opts in but answers
``Cache-Control: private, max-age=60`` with the visitor's ``X-Bucket`` (an A/B page
personalised without a cookie); ``/wide/<name>`` is ``/ab`` without ``private`` but larger
than ``max_entry_bytes`` and varying on ``Accept-Encoding``. Every response carries
``X-Worker-Pid``, the pid of the worker that *served* it (added outside the cache).
"""

from __future__ import annotations

import fcntl
import hmac
import logging
import os
import re
import time
from typing import TYPE_CHECKING

from flask import Flask, abort, request

from tests.e2e_common import served_by
from wsgi_isr import ISRMiddleware

if TYPE_CHECKING:
    pass

logging.basicConfig(level=logging.INFO, format="%(process)d %(levelname)s %(name)s: %(message)s")

CONTROL_DIR = os.environ["ISR_CONTROL_DIR"]
BYPASS_TOKEN = os.environ.get("ISR_BYPASS_TOKEN") or None
_NAME = re.compile(r"[a-z0-9-]{1,64}")
_MODE = re.compile(r"ok|raise|(abort|status|optin)-[0-9]{3}|sleep-[0-9.]{1,6}")
TEXT = {"Content-Type": "text/plain; charset=utf-8"}
WIDE_BYTES = 64 << 10


def _checked(name: str) -> str:
    if not _NAME.fullmatch(name):
        abort(404)
    return name


def read_mode(page: str) -> str:
    try:
        with open(os.path.join(CONTROL_DIR, page + ".mode")) as f:
            mode = f.read().strip()
    except FileNotFoundError:
        return "ok"
    if not _MODE.fullmatch(mode):
        raise ValueError(f"bad mode {mode!r} for {page}")
    return mode


def record_attempt(page: str, mode: str) -> int:
    """Append ``<pid> <unix time> <mode>`` for one render of ``page`` (call it when
    the render starts); return how many renders it has had."""
    fd = os.open(
        os.path.join(CONTROL_DIR, page + ".log"), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644
    )
    try:
        # the lock makes "append, then count" one step across worker processes
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()} {time.time():.6f} {mode}\n".encode())
        return os.pread(fd, os.fstat(fd).st_size, 0).count(b"\n")
    finally:
        os.close(fd)


app = Flask(__name__)


@app.get("/health")
def health() -> tuple[str, dict[str, str]]:
    return f"ok {os.getpid()}", TEXT


@app.get("/article/<page>")
def article(page: str) -> tuple[str, int, dict[str, str]]:
    page = _checked(page)
    mode = read_mode(page)
    n = record_attempt(page, mode)
    cache = {"X-ISR-Revalidate": "false", "X-ISR-Tags": f"article-{page}"}
    kind, _, arg = mode.partition("-")
    if kind == "raise":
        raise RuntimeError(f"database is down (rendering {page})")
    if kind == "abort":
        abort(int(arg))
    if kind == "status":
        return f"upstream failed ({arg})", int(arg), TEXT
    if kind == "optin":
        return "down for maintenance", int(arg), {**TEXT, **cache}
    if kind == "sleep":
        time.sleep(float(arg))
    return f"article {page} render {n} by {os.getpid()}", 200, {**TEXT, **cache}


@app.get("/me/<name>")
def me(name: str) -> tuple[str, dict[str, str]]:
    """Opts in, and shows who is logged in: the middleware must keep every visitor's
    own answer out of every shared cache."""
    user = request.cookies.get("session") or request.cookies.get("user") or "anonymous"
    return f"{_checked(name)}: hello {user}", {**TEXT, "X-ISR-Revalidate": "60"}


def _previewing() -> bool:
    given = request.headers.get("X-ISR-Bypass") or request.cookies.get("__isr_bypass")
    return (
        BYPASS_TOKEN is not None
        and given is not None
        and hmac.compare_digest(given.encode(), BYPASS_TOKEN.encode())
    )


@app.get("/doc/<name>")
def doc(name: str) -> tuple[str, dict[str, str]]:
    """A CMS page: the published text for everyone, the draft in preview."""
    state = "DRAFT" if _previewing() else "published"
    return f"{_checked(name)}: {state}", {**TEXT, "X-ISR-Revalidate": "60"}


@app.get("/account/<name>")
def account(name: str) -> tuple[str, dict[str, str]]:
    """Never opts in: the middleware remembers that (hit-for-pass)."""
    return f"{_checked(name)}: account of {request.cookies.get('user', 'anonymous')}", TEXT


@app.get("/ab/<name>")
def ab(name: str) -> tuple[str, dict[str, str]]:
    """Opts in (the site's default headers), but the view knows it is the visitor's own."""
    bucket = request.headers.get("X-Bucket", "none")
    headers = {**TEXT, "X-ISR-Revalidate": "60", "Cache-Control": "private, max-age=60"}
    return f"{_checked(name)}: bucket {bucket}", headers


@app.get("/wide/<name>")
def wide(name: str) -> tuple[str, dict[str, str]]:
    """Opts in, varies on ``Accept-Encoding`` (as behind a gzip middleware), and is too
    large for the store: the visitor's own request is rendered, ``X-Bucket`` and all."""
    bucket = request.headers.get("X-Bucket", "none")
    headers = {**TEXT, "X-ISR-Revalidate": "60", "Vary": "Accept-Encoding"}
    return f"{_checked(name)}: bucket {bucket} " + "w" * WIDE_BYTES, headers


app.wsgi_app = served_by(  # type: ignore[method-assign,assignment]
    ISRMiddleware(
        app.wsgi_app,
        store=os.environ["ISR_STORE"],
        secret=os.environ["ISR_SECRET"],
        lock_timeout=float(os.environ.get("ISR_LOCK_TIMEOUT", "60")),
        coalesce_timeout=float(os.environ.get("ISR_COALESCE_TIMEOUT", "10")),
        regeneration_backoff=float(os.environ.get("ISR_BACKOFF", "5")),
        bypass_cookies=[c for c in os.environ.get("ISR_BYPASS_COOKIES", "").split(",") if c],
        bypass_token=BYPASS_TOKEN,
        max_entry_bytes=int(os.environ.get("ISR_MAX_ENTRY_BYTES", str(5 << 20))),
    )
)
