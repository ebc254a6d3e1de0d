"""Run by test_failures_edges.py in a process of its own: ``python ... gevent|threads``.

A regeneration whose render blocks the whole process (a C database driver gevent
cannot make cooperative) for longer than one lease must still be stored: the lease
keeper could not run meanwhile, but nobody else took the page.
"""
# ruff: noqa: E402 -- gevent must patch before anything else is imported

import sys

if sys.argv[1] == "gevent":
    import gevent.monkey

    gevent.monkey.patch_all()
import time

from gevent.monkey import get_original

block = get_original("time", "sleep")  # a C database driver gevent cannot make cooperative

import wsgi_isr.regeneration as regeneration

regeneration.LEASE = 0.4
from werkzeug.test import Client

from wsgi_isr import ISRMiddleware

n = {"v": 0}


def app(environ: dict, start_response: object) -> list[bytes]:  # type: ignore[type-arg]
    n["v"] += 1
    if n["v"] == 2:
        block(1.5)  # the regeneration's query: blocks the whole process (the hub too)
    start_response("200 OK", [("X-ISR-Revalidate", "1")])
    return [f"v{n['v']}".encode()]


mw = ISRMiddleware(app, store="memory://", lock_timeout=60)
c = Client(mw)
print(c.get("/p").data)
time.sleep(1.1)
print(c.get("/p").headers["X-ISR-Cache"])
mw.join(10)
r = c.get("/p")
print(r.data, r.headers["X-ISR-Cache"], dict(mw.stats.snapshot()).get("regenerations_failed"))
