"""Run with PROMETHEUS_MULTIPROC_DIR set: two processes each send one purge; one
scrape through the survivor prints its /_isr/metrics (like gunicorn with a worker
recycled by max_requests: the dead worker's counts must stay in the totals)."""

import os
import sys

from werkzeug.test import Client

from wsgi_isr import ISRMiddleware
from wsgi_isr.purge import Purger


class Ok(Purger):
    header = "xkey"
    description = "ok://edge"

    def purge(self, keys, *, soft):  # type: ignore[no-untyped-def]
        return None


def app(environ, start_response):  # type: ignore[no-untyped-def]
    start_response("200 OK", [])
    return [b""]


def site() -> ISRMiddleware:
    return ISRMiddleware(app, store="memory://", secret="s" * 40, purge=[Ok()])


pid = os.fork()
if pid == 0:  # the worker that is recycled
    mw = site()
    mw.revalidate_tag("a")
    mw.join(10)
    os._exit(0)
os.waitpid(pid, 0)
mw = site()
mw.revalidate_tag("b")
mw.join(10)
r = Client(mw).get("/_isr/metrics", headers={"Authorization": "Bearer " + "s" * 40})
sys.stdout.write(r.get_data(as_text=True))
