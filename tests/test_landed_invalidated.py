"""Coalesced waiters and a page invalidated while its leader rendered it (found by the
issue-16 red team): never served to a waiter as a fresh HIT, nor promised to a CDN.

Real stores only (memory, file, a real redis-server from conftest); the waiters are
threads, two middlewares with stores of their own stand for two processes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from servers import wait_for
from werkzeug.test import Client

from wsgi_isr import ISRMiddleware


def _s_maxage(headers: Any) -> int:
    m = re.search(r"s-maxage=(\d+)", headers.get("Cache-Control", ""))
    assert m, headers.get("Cache-Control")
    return int(m.group(1))


class _Slow:
    """A tagged page whose render waits for ``gate``; counts renders."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.renders = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.renders += 1
        n = self.renders
        self.gate.wait(10)
        start_response("200 OK", [("X-ISR-Revalidate", "60"), ("X-ISR-Tags", "post")])
        return [f"render {n}".encode()]


def _waiting_on(mw: ISRMiddleware, key_part: str) -> bool:
    lands = mw.landings
    return any(key_part in k for k in (*lands._waiting, *lands._leading))


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_coalesced_waiter_of_an_invalidated_render_promises_no_cdn_freshness(
    tmp_path: Path, mode: str
) -> None:
    """An invalidation comes while a miss leader renders: the leader's own answer says
    so (``detail=invalidated-while-rendering``, ``s-maxage=0``: a cache in front
    fetching it now missed the purge). A waiter of the same process, a visitor who
    arrived AFTER the invalidation and joined the wait without a lookup, is not handed
    that entry as a plain ``HIT; coalesced`` with ``s-maxage=59`` (the CDN would keep
    the invalidated page for a minute; the red team's finding): after a soft one it
    gets the same render with ``s-maxage=0``, after a hard one a render made since."""
    app = _Slow()
    mw = ISRMiddleware(app, store=f"file://{tmp_path / 'c'}", secret="s" * 32)
    replies: dict[str, Any] = {}

    def get(name: str) -> None:
        replies[name] = Client(mw).get("/post", headers={"Host": "example.com"})

    leader = threading.Thread(target=get, args=("leader",))
    leader.start()
    assert wait_for(lambda: _waiting_on(mw, "/post"), 5.0, 0.005)
    mw.revalidate_tag("post", mode=mode)  # the render in flight is stale when it lands
    time.sleep(0.05)
    waiter = threading.Thread(target=get, args=("waiter",))
    waiter.start()  # arrives after the invalidation; joins the wait
    assert wait_for(lambda: any(k for k in mw.landings._waiting), 5.0, 0.005)
    app.gate.set()
    leader.join(10)
    waiter.join(10)
    lead, wait = replies["leader"], replies["waiter"]
    assert lead.get_data() == b"render 1"
    assert _s_maxage(lead.headers) == 0, lead.headers  # the leader's: right
    if mode == "soft":
        # the same (invalidated) entry, served to the waiter: must not promise more
        assert app.renders == 1
        assert wait.get_data() == b"render 1"
        assert _s_maxage(wait.headers) == 0, (wait.headers["Cache-Status"], wait.headers)
    else:
        # expired by the time it landed: a miss for the waiter, who gets a render made
        # after the invalidation (and the caches in front may keep that one)
        assert app.renders == 2
        assert wait.get_data() == b"render 2", wait.headers


def test_waiter_elsewhere_serves_an_invalidated_landing_without_promising_it(
    redis_url: str,
) -> None:
    """The same over Redis, two processes: the waiter of process B is woken by the
    landing of A's render, which an invalidation made stale while it ran; B's looker
    serves that one render (no second one) with ``s-maxage=0``, as A's own answer does,
    not as a fresh ``HIT; coalesced`` with the full minute."""
    from wsgi_isr import RedisStore

    app = _Slow()
    store_a, store_b = RedisStore(redis_url), RedisStore(redis_url)
    try:
        mw_a = ISRMiddleware(app, store=store_a)
        mw_b = ISRMiddleware(app, store=store_b)
        replies: dict[str, Any] = {}

        def get(name: str, mw: ISRMiddleware) -> None:
            replies[name] = Client(mw).get("/post", headers={"Host": "example.com"})

        leader = threading.Thread(target=get, args=("leader", mw_a))
        leader.start()
        assert wait_for(lambda: _waiting_on(mw_a, "/post"), 5.0, 0.005)
        waiter = threading.Thread(target=get, args=("waiter", mw_b))
        waiter.start()
        assert wait_for(lambda: _waiting_on(mw_b, "/post"), 5.0, 0.005)
        mw_a.revalidate_tag("post")  # soft, while the render runs
        time.sleep(0.05)
        app.gate.set()
        leader.join(10)
        waiter.join(10)
        lead, wait = replies["leader"], replies["waiter"]
        assert app.renders == 1
        assert lead.get_data() == wait.get_data() == b"render 1"
        assert _s_maxage(lead.headers) == 0, lead.headers
        assert _s_maxage(wait.headers) == 0, (wait.headers["Cache-Status"], wait.headers)
    finally:
        store_a.close()
        store_b.close()
