"""The site a real headless Chromium visits in ``tests/test_browser.py``, served by
``gunicorn -k gevent -w 1``::

    BROWSER_DIR=/tmp/site ISR_STORE=file:///tmp/isr gunicorn -k gevent tests.browser_app:app

What the pages say comes from files in ``BROWSER_DIR`` (``post.txt``), so a test (or the
``/publish`` webhook) changes the content the next render shows.

``GET /post``
    cached until invalidated, tagged ``post``, with the application's own
    ``Last-Modified``: the post's edit date, long ago (what Django's ``@last_modified``
    or ``@condition`` decorators send, and ``send_file``).
``GET /moved``
    a cached ``301`` to ``/to/<post.txt>``, tagged ``post`` (a CMS redirect).
``GET /to/<text>``
    where ``/moved`` leads; not cached.
``POST /publish``
    the CMS webhook: writes ``text`` into ``post.txt`` and calls
    ``wsgi_isr.revalidate_tag("post", mode="hard")``.
``GET /probe``
    the page the browser is pointed at: its script visits the pages above in iframes
    (navigations, as a visitor's clicks), publishes, visits them again, and writes what
    it saw into ``<pre id="out">``.

Every request to the cached pages is appended to ``BROWSER_DIR/requests.log`` as
``<path> <If-None-Match or -> <status>``, recorded outside the cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, request

import wsgi_isr
from wsgi_isr import ISRMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

DIR = Path(os.environ["BROWSER_DIR"])
#: The post's edit date: what a browser's heuristic freshness counts from (a tenth of
#: the time since, in Chromium and Firefox, when nothing says how long to keep it).
EDITED = "Mon, 01 Jan 2024 00:00:00 GMT"

PROBE = b"""<!doctype html><html><body><pre id="out">running</pre><script>
function visit(path, read) {
  return new Promise(done => {
    const frame = document.createElement("iframe");
    frame.onload = () => done(read(frame));
    frame.src = path;
    document.body.appendChild(frame);
  });
}
const text = frame => frame.contentDocument.getElementById("v").textContent;
const where = frame => frame.contentWindow.location.pathname;
(async () => {
  const post = [], moved = [];
  post.push(await visit("/post", text));
  moved.push(await visit("/moved", where));
  await fetch("/publish", {method: "POST", body: new URLSearchParams({text: "B"})});
  post.push(await visit("/post", text));
  moved.push(await visit("/moved", where));
  post.push(await visit("/post", text));
  document.getElementById("out").textContent =
    "OUT post=" + post.join(",") + " moved=" + moved.join(",");
})().catch(e => { document.getElementById("out").textContent = "OUT error " + e; });
</script></body></html>"""

site = Flask(__name__)


def _text() -> str:
    return (DIR / "post.txt").read_text().strip()


@site.get("/health")
def health() -> tuple[str, dict[str, str]]:
    return "ok", {"Content-Type": "text/plain", "X-Worker-Pid": str(os.getpid())}


@site.get("/post")
def post() -> tuple[str, dict[str, str]]:
    return f'<p id="v">{_text()}</p>', {
        "Content-Type": "text/html; charset=utf-8",
        "Last-Modified": EDITED,
        "X-ISR-Revalidate": "false",
        "X-ISR-Tags": "post",
    }


@site.get("/moved")
def moved() -> tuple[str, int, dict[str, str]]:
    return (
        "",
        301,
        {"Location": f"/to/{_text()}", "X-ISR-Revalidate": "false", "X-ISR-Tags": "post"},
    )


@site.get("/to/<text>")
def to(text: str) -> tuple[str, dict[str, str]]:
    return f'<p id="v">{text}</p>', {"Content-Type": "text/html; charset=utf-8"}


@site.post("/publish")
def publish() -> tuple[str, int]:
    (DIR / "post.txt").write_text(request.form["text"])
    wsgi_isr.revalidate_tag("post", mode="hard")
    return "", 204


@site.get("/probe")
def probe() -> tuple[bytes, dict[str, str]]:
    return PROBE, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}


isr = ISRMiddleware(site.wsgi_app, store=os.environ["ISR_STORE"])


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path not in ("/post", "/moved"):
        return isr(environ, start_response)

    def recording(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        given = environ.get("HTTP_IF_NONE_MATCH") or "-"
        with open(DIR / "requests.log", "a") as f:
            f.write(f"{path} {given} {status.split()[0]}\n")
        return start_response(status, headers, exc_info)

    return isr(environ, recording)
