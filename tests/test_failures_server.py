"""Failures in a real deployment (issue 9, items 1, 4, 5 and 11): ``gunicorn -k gevent
-w 2`` serving ``tests/e2e_flask_app.py``, a Flask site that fails the way Flask sites
fail — the view raises, calls ``abort()``, answers a 5xx — with Flask's own error
handling, and a real nginx ``proxy_cache`` in front of it.

A test never imitates a failure: it writes the page's mode into a control file and
the view, on its next render, does what that mode says. Every render start is logged
by the app (``<pid> <time> <mode>``, over both workers), so the tests count attempts
and find the worker that is rendering. Two sites, one gunicorn each for the module:

- **A**: file store, ``regeneration_backoff=0.5`` (so a back-off passes quickly),
  ``bypass_cookies=["session"]``, a ``bypass_token``; nginx in front for item 11.
- **B**: a real redis-server, ``regeneration_backoff=30`` (still in force whenever
  the test acts), ``lock_timeout=60``, ``coalesce_timeout=10``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from servers import (
    Instance,
    Reply,
    free_port,
    logs_on_failure,
    poll,
    start_gunicorn,
    start_nginx_cache,
    summary,
    wait_for,
)

pytestmark = pytest.mark.server

APP = "tests.e2e_flask_app:app"
SECRET = "failures-secret-0123456789abcdef0123456789abcdef"
TOKEN = "preview-token-0123456789abcdef"
BACKOFF_A = 0.5
BACKOFF_B = 30.0
LOCK_TIMEOUT = 60.0
COALESCE_TIMEOUT = 10.0
#: Failed attempts allowed while A's visitors hammer a failing page for VISIT_SECONDS:
#: back-offs of 0.5, 1 and 2 s allow 3 (a little more if each worker counts its own);
#: retrying on every request would make one per request (~25).
VISIT_SECONDS = 1.5
MAX_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class Attempt:
    pid: int
    at: float
    mode: str


@dataclasses.dataclass
class Site:
    """One gunicorn serving the Flask site, and its control directory."""

    server: Instance
    control: Path

    def fetch(self, path: str, **kwargs: Any) -> Reply:
        return self.server.fetch(path, **kwargs)

    def set_mode(self, page: str, mode: str) -> None:
        """How ``/article/<page>`` behaves from its next render on (atomic: a render
        never reads a half-written mode)."""
        tmp = self.control / f".{page}.mode.tmp"
        tmp.write_text(mode)
        os.replace(tmp, self.control / f"{page}.mode")

    def attempts(self, page: str) -> list[Attempt]:
        """Every render start of ``/article/<page>``, over both workers."""
        try:
            lines = (self.control / f"{page}.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [Attempt(int(p), float(t), m) for p, t, m in (line.split() for line in lines)]

    def revalidate_tag(self, tag: str, mode: str = "soft") -> Reply:
        return self.server.revalidate({"tag": tag, "mode": mode, "secret": SECRET})


def _env(control: Path, store: str, backoff: float) -> dict[str, str]:
    return {
        "ISR_STORE": store,
        "ISR_SECRET": SECRET,
        "ISR_CONTROL_DIR": str(control),
        "ISR_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
        "ISR_COALESCE_TIMEOUT": str(COALESCE_TIMEOUT),
        "ISR_BACKOFF": str(backoff),
        "ISR_BYPASS_COOKIES": "session",
        "ISR_BYPASS_TOKEN": TOKEN,
        "ISR_MAX_ENTRY_BYTES": str(32 << 10),  # /wide's pages are larger
    }


@contextlib.contextmanager
def _serve(root: Path, name: str, store: str | None, backoff: float) -> Iterator[Site]:
    control = root / "control"
    control.mkdir()
    if store is None:
        (root / "store").mkdir()
        store = f"file://{root / 'store'}"
    server = Instance(free_port(), control, root / "gunicorn.log", name=name)
    with start_gunicorn(server, env=_env(control, store, backoff), app=APP):
        yield Site(server, control)


@pytest.fixture(scope="module")
def site_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with _serve(tmp_path_factory.mktemp("isr-fail-a"), "A", None, BACKOFF_A) as site:
        yield site


@pytest.fixture(scope="module")
def site_b(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[Site]:
    store = f"{redis_server.url}?prefix=failures-{uuid.uuid4().hex[:8]}:"
    with _serve(tmp_path_factory.mktemp("isr-fail-b"), "B", store, BACKOFF_B) as site:
        yield site


@pytest.fixture(scope="module")
def edge_a(tmp_path_factory: pytest.TempPathFactory, site_a: Site) -> Iterator[Instance]:
    """nginx ``proxy_cache`` in front of site A."""
    root = tmp_path_factory.mktemp("nginx-a")
    with start_nginx_cache([site_a.server.port], root) as (port,):
        yield Instance(port, site_a.control, root / "access.log", name="nginx -> A")


@pytest.fixture(autouse=True)
def _log_on_failure(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> Iterator[None]:
    """Show the logs of the servers this test used (both workers, wsgi_isr's lines,
    nginx's access log) when it fails."""
    instances = []
    for name in ("site_a", "site_b"):
        if name in request.fixturenames:
            instances.append(request.getfixturevalue(name).server)
    if "edge_a" in request.fixturenames:
        instances.append(request.getfixturevalue("edge_a"))
    with logs_on_failure(request, capsys, *instances):
        yield


def _visit(site: Site, path: str, seconds: float) -> list[Reply]:
    """Two concurrent visitors every 0.1 s for ``seconds`` (they spread over both
    workers)."""
    replies: list[Reply] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        replies += site.server.fetch_many(path, 2)
        time.sleep(0.1)
    return replies


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


# -- item 1: a failed regeneration never replaces a good page -----------------------------


@pytest.mark.parametrize("failure", ["raise", "abort-500", "abort-503", "status-502", "status-504"])
def test_failed_regeneration_keeps_serving_the_stale_page(site_a: Site, failure: str) -> None:
    page = f"i1-{failure}"
    path = f"/article/{page}"
    first = site_a.fetch(path)
    assert (first.status, first.cache) == (200, "MISS"), summary([first])
    assert first.body.startswith(f"article {page} render 1 "), first.body
    hit = site_a.fetch(path)
    assert (hit.status, hit.cache, hit.body) == (200, "HIT", first.body)

    # the database goes down; an editor's change makes the page stale
    site_a.set_mode(page, failure)
    assert site_a.revalidate_tag(f"article-{page}").status == 200
    during = _visit(site_a, path, VISIT_SECONDS)
    wrong = [r for r in during if (r.status, r.cache, r.body) != (200, "STALE", first.body)]
    assert not wrong, (
        f"{len(wrong)} of {len(during)} visitors did not get the stale page while its "
        f"regeneration failed ({failure}): {summary(wrong[:3])}"
    )
    assert len({r.pid for r in during}) >= 2, f"one worker served them all: {summary(during)}"
    failed = [a for a in site_a.attempts(page) if a.mode == failure]
    assert failed, "the stale page was never regenerated: the failure was not exercised"
    assert len(during) >= 3 * MAX_ATTEMPTS, f"too few visits to judge the back-off: {len(during)}"
    assert len(failed) <= MAX_ATTEMPTS, (
        f"{len(failed)} failed regenerations for {len(during)} stale requests in "
        f"{VISIT_SECONDS} s: not backed off"
    )

    # the database is back: once the back-off has passed, the page is regenerated
    site_a.set_mode(page, "ok")
    seen = poll(lambda: [site_a.fetch(path)], lambda r: r.body != first.body, timeout=10.0)
    before = seen[:-1]
    assert {(r.status, r.cache, r.body) for r in before} <= {(200, "STALE", first.body)}, summary(
        seen
    )
    fresh = seen[-1]
    assert fresh.status == 200, summary([fresh])
    assert fresh.body.startswith(f"article {page} render "), summary([fresh])
    after = site_a.server.fetch_many(path, 4)
    assert {(r.status, r.cache, r.body) for r in after} == {(200, "HIT", fresh.body)}, summary(
        after
    )


# -- item 4: a back-off never makes a visitor wait ------------------------------------------


def test_hard_invalidation_during_backoff_renders_in_the_foreground(site_b: Site) -> None:
    page = "i4"
    path = f"/article/{page}"
    first = site_b.fetch(path)
    assert (first.status, first.cache) == (200, "MISS"), summary([first])

    # a regeneration fails (a 503 maintenance page that still carries the page's cache
    # headers: every version of the middleware counts that as a failure and backs off)
    site_b.set_mode(page, "optin-503")
    assert site_b.revalidate_tag(f"article-{page}").status == 200
    stale = site_b.fetch(path)
    assert (stale.status, stale.cache, stale.body) == (200, "STALE", first.body)
    assert wait_for(lambda: len(site_b.attempts(page)) >= 2, timeout=5.0), site_b.attempts(page)
    time.sleep(0.5)  # the failed attempt ends and its back-off (BACKOFF_B) begins
    more = site_b.server.fetch_many(path, 6)
    assert {(r.status, r.cache, r.body) for r in more} == {(200, "STALE", first.body)}, summary(
        more
    )
    assert [a.mode for a in site_b.attempts(page)] == ["ok", "optin-503"], "no back-off in force"

    # the backend recovers and the editor demands a fresh page now
    site_b.set_mode(page, "ok")
    assert site_b.revalidate_tag(f"article-{page}", mode="hard").status == 200
    fresh = site_b.fetch(path, timeout=3 * COALESCE_TIMEOUT)
    assert fresh.status == 200, summary([fresh])
    assert fresh.body.startswith(f"article {page} render 3 "), summary([fresh])
    assert fresh.elapsed < COALESCE_TIMEOUT, (
        f"the visitor waited {fresh.elapsed:.1f} s (coalesce_timeout {COALESCE_TIMEOUT} s) "
        f"behind the back-off for a foreground render; Cache-Status: "
        f"{fresh.headers.get('cache-status')!r}"
    )
    assert fresh.cache == "MISS", summary([fresh])
    after = site_b.server.fetch_many(path, 4, timeout=3 * COALESCE_TIMEOUT)
    assert {(r.status, r.cache, r.body) for r in after} == {(200, "HIT", fresh.body)}, (
        "the foreground render was not stored: " + repr(summary(after))
    )


# -- item 5: a dead miss leader is noticed within seconds -----------------------------------


def _outcome(future: Future[Reply]) -> Reply | str:
    try:
        return future.result()
    except (OSError, http.client.HTTPException) as exc:
        return repr(exc)


def test_waiter_takes_over_from_a_killed_miss_leader(site_b: Site) -> None:
    page = "i5"
    path = f"/article/{page}"
    server = site_b.server
    assert server.proc is not None
    site_b.set_mode(page, "sleep-30")  # the leader's render hangs
    pool = ThreadPoolExecutor(max_workers=12)
    try:
        leader = pool.submit(site_b.fetch, path, timeout=45.0)
        assert wait_for(lambda: bool(site_b.attempts(page)), timeout=5.0), "no render started"
        victim = site_b.attempts(page)[0].pid
        assert _parent_pid(victim) == server.proc.pid, "only ever kill our own worker"
        # concurrent misses: they wait for the leader (on both workers)
        waiters = []
        for _ in range(10):
            waiters.append(pool.submit(site_b.fetch, path, timeout=45.0))
            time.sleep(0.05)  # one connection at a time: each worker gets some
        time.sleep(0.3)
        assert not any(w.done() for w in waiters + [leader]), "the misses did not wait"
        assert len(site_b.attempts(page)) == 1, "the misses were not coalesced"

        site_b.set_mode(page, "ok")  # whoever takes over renders at once
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.1)
        # misses after the death, while its lock is still there (they cannot land on
        # the dead worker: so some waiters survive however the early ones spread)
        for _ in range(3):
            waiters.append(pool.submit(site_b.fetch, path, timeout=45.0))
            time.sleep(0.05)
        outcomes = [_outcome(w) for w in waiters]
        assert isinstance(_outcome(leader), str), "the killed leader answered"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        # gunicorn replaces the killed worker: later tests get two workers again
        server.wait_ready(2, 20.0)

    replies = [o for o in outcomes if isinstance(o, Reply)]
    assert all(isinstance(o, Reply) for o in outcomes[-3:]), outcomes
    assert all(r.status == 200 for r in replies), summary(replies)
    slow = [r for r in replies if r.elapsed >= COALESCE_TIMEOUT]
    assert not slow, (
        f"{len(slow)} of {len(replies)} surviving waiters waited up to "
        f"{max(r.elapsed for r in slow):.1f} s (coalesce_timeout {COALESCE_TIMEOUT} s, "
        f"lock_timeout {LOCK_TIMEOUT} s): the dead leader was not noticed; "
        f"Cache-Status: {sorted({r.headers.get('cache-status', '') for r in slow})}"
    )
    takeovers = site_b.attempts(page)[1:]
    assert [a.mode for a in takeovers] == ["ok"], f"one takeover render expected: {takeovers}"
    assert takeovers[0].pid != victim
    assert {r.body for r in replies} == {f"article {page} render 2 by {takeovers[0].pid}"}, summary(
        replies
    )
    after = server.fetch_many(path, 4, timeout=3 * COALESCE_TIMEOUT)
    assert {(r.status, r.cache, r.body) for r in after} == {(200, "HIT", replies[0].body)}, (
        "the takeover's render was not stored: " + repr(summary(after))
    )


# -- item 11: personal and preview answers leave `private`, and nginx never stores them -----


def _directives(cache_control: str) -> set[str]:
    return {d.strip().split("=")[0].lower() for d in cache_control.split(",") if d.strip()}


def _assert_kept_private(edge: Instance, path: str, headers: dict[str, str], personal: str) -> None:
    """A request with ``headers`` through nginx gets its own answer (containing
    ``personal``), marked ``private``; the anonymous visitors after it never get it."""
    own = edge.fetch(path, headers=headers)
    assert own.status == 200 and personal in own.body, summary([own])
    assert own.headers.get("x-edge") != "HIT", "the page was already in nginx's cache"
    others = [edge.fetch(path) for _ in range(2)]
    cache_control = own.headers.get("cache-control", "")
    leaked = [(r.headers.get("x-edge"), r.body) for r in others if personal in r.body]
    assert not leaked, (
        f"nginx stored the answer to {headers} (X-ISR-Cache {own.cache!r}, "
        f"Cache-Control {cache_control!r}) and served it to anonymous visitors: {leaked}"
    )
    assert "private" in _directives(cache_control), (
        f"X-ISR-Cache {own.cache!r}: Cache-Control {cache_control!r}"
    )
    assert not {"public", "s-maxage"} & _directives(cache_control), cache_control


def test_edge_stores_public_pages(edge_a: Instance) -> None:
    """The harness itself: nginx in front does store what the middleware calls public,
    so "not stored" below means something."""
    first, second = edge_a.fetch("/me/i11-public"), edge_a.fetch("/me/i11-public")
    assert (first.cache, first.headers.get("x-edge")) == ("MISS", "MISS"), summary([first])
    assert "public" in _directives(first.headers.get("cache-control", ""))
    assert (second.headers.get("x-edge"), second.body) == ("HIT", first.body)


def test_edge_never_stores_a_personal_miss(edge_a: Instance) -> None:
    _assert_kept_private(edge_a, "/me/i11-plain-cookie", {"Cookie": "user=bob"}, "hello bob")


def test_edge_never_stores_a_bypass_cookie_answer(edge_a: Instance) -> None:
    _assert_kept_private(edge_a, "/me/i11-session", {"Cookie": "session=alice"}, "hello alice")


def test_edge_never_stores_a_preview(edge_a: Instance) -> None:
    _assert_kept_private(edge_a, "/doc/i11-preview", {"X-ISR-Bypass": TOKEN}, "DRAFT")


def test_edge_never_stores_a_hit_for_pass_answer_with_cookies(
    edge_a: Instance, site_a: Site
) -> None:
    path = "/account/i11-pass"
    # straight to gunicorn (not through nginx, which would keep the anonymous answer),
    # for the host nginx forwards: the middleware learns the page does not opt in and
    # remembers that (hit-for-pass)
    host = {"Host": f"127.0.0.1:{edge_a.port}"}
    site_a.fetch(path, headers=host)
    marked = site_a.fetch(path, headers=host)
    assert (marked.status, marked.cache) == (200, "BYPASS"), summary([marked])
    _assert_kept_private(edge_a, path, {"Cookie": "user=carol"}, "account of carol")


def test_edge_never_stores_an_answer_the_app_marked_private(edge_a: Instance, site_a: Site) -> None:
    """The page opts in, but the view says ``private, max-age=60``: the store refuses it
    and the answers after are each visitor's own (hit-for-pass), which nginx must not
    keep for the next one (it did while the middleware dropped the app's ``private``)."""
    path = "/ab/i11-private"
    host = {"Host": f"127.0.0.1:{edge_a.port}"}
    site_a.fetch(path, headers=host)  # refused: the middleware remembers it (hit-for-pass)
    marked = site_a.fetch(path, headers=host)
    assert (marked.status, marked.cache) == (200, "BYPASS"), summary([marked])
    own = edge_a.fetch(path, headers={"X-Bucket": "b"})
    assert own.status == 200 and "bucket b" in own.body, summary([own])
    assert own.headers.get("cache-control") == "private, max-age=60", summary([own])
    other = edge_a.fetch(path, headers={"X-Bucket": "c"})
    assert "bucket c" in other.body, (own.headers.get("x-edge"), other.headers.get("x-edge"))


def test_edge_never_stores_a_refused_page_rendered_for_the_visitors_own_request(
    edge_a: Instance,
) -> None:
    """Too large to store, the page varies on ``Accept-Encoding``: the visitor's own
    request is rendered, unkeyed headers and all (here ``X-Bucket``; an ``X-Forwarded-Host``
    a ``ProxyFix`` inside trusts, elsewhere). nginx kept that answer for the next visitor
    while it left without ``private``."""
    path = "/wide/i11-vary"
    own = edge_a.fetch(path, headers={"X-Bucket": "b", "Accept-Encoding": "gzip"})
    assert own.status == 200 and "bucket b" in own.body, summary([own])
    assert own.headers.get("cache-control") == "private, no-cache", summary([own])
    other = edge_a.fetch(path, headers={"X-Bucket": "c", "Accept-Encoding": "gzip"})
    assert "bucket c" in other.body, (own.headers.get("x-edge"), other.headers.get("x-edge"))


def test_edge_never_stores_an_answer_with_cookies_while_the_store_is_down(
    site_b: Site, redis_server: Any, tmp_path: Path
) -> None:
    with start_nginx_cache([site_b.server.port], tmp_path) as (port,):
        edge = Instance(port, site_b.control, tmp_path / "access.log", name="nginx -> B")
        redis_server.stop()
        try:
            _assert_kept_private(edge, "/me/i11-down", {"Cookie": "user=dave"}, "hello dave")
        finally:
            redis_server.start()
