"""The app of the scale-out benchmarks (:mod:`benchmarks.scaleout`), public API only so
that it also runs on an older wsgi_isr (the baseline):

    BENCH_STORE=redis://... BENCH_RENDER=0.2 gunicorn -k gevent -w 4 wakeup_app:app

``GET /w/<anything>`` renders in ``BENCH_RENDER`` seconds (2 KB, fresh for 60 s,
tagged ``w``). Every answer carries ``X-Served-At`` (this host's ``time.time()`` when
the cache answered, so processes on one host compare) and ``X-Worker-Pid``; the page
itself carries ``X-Rendered-At`` (when its render ended).
``BENCH_LOCAL_TTL`` turns on the local layer; ``BENCH_SECRET`` the endpoint;
``BENCH_STORE=bare`` serves the reference (:func:`bare`) instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from wsgi_isr import ISRMiddleware

RENDER = float(os.environ.get("BENCH_RENDER", "0.2"))
BODY = b"x" * 2048


def page(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    time.sleep(RENDER)  # gevent-patched under gunicorn -k gevent
    headers = [("Content-Type", "text/plain"), ("X-ISR-Revalidate", "60"), ("X-ISR-Tags", "w")]
    headers.append(("X-Rendered-At", repr(time.time())))  # stored: every copy says it
    start_response("200 OK", headers)
    return [BODY + str(time.time()).encode()]


def bare(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """``BENCH_STORE=bare``, the reference: no cache; ``GET /b/<anything>?<t>`` sleeps
    until ``t`` (this host's ``time.time()``), then answers the same 2 KB: every request
    of a burst woken at one instant, at no cost, as a perfect coalescing would."""
    if environ.get("PATH_INFO") != "/health":
        time.sleep(max(0.0, float(environ.get("QUERY_STRING") or 0) - time.time()))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2048")])
    return [BODY]


_ttl = os.environ.get("BENCH_LOCAL_TTL")
_mw = (
    bare
    if os.environ["BENCH_STORE"] == "bare"
    else ISRMiddleware(
        page,
        store=os.environ["BENCH_STORE"],
        secret=os.environ.get("BENCH_SECRET"),
        local_ttl=float(_ttl) if _ttl else None,
    )
)


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        stamp = [("X-Served-At", repr(time.time())), ("X-Worker-Pid", str(os.getpid()))]
        return start_response(status, headers + stamp, exc_info)

    return _mw(environ, sr)
