"""Real-server tests: one ``gunicorn -k gevent -w 2`` serving ``tests/e2e_app.py`` with a
shared file store, driven over real sockets.

These prove what only a deployment shows — wall-clock stale-while-revalidate, one
regeneration across worker processes, invalidations reaching every worker, and no
cookie leaking through a background fill. Renders are counted in files written by
the app (see ``e2e_app.py``), because they happen in two processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from servers import Instance, free_port, logs_on_failure, poll, start_gunicorn, summary, wait_for

pytestmark = pytest.mark.server

SECRET = "e2e-secret-0123456789abcdef0123456789abcdef"
SLOW_SECONDS = 2.0
POST_SECONDS = 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    root = tmp_path_factory.mktemp("isr-e2e")
    store_dir, counter_dir = root / "store", root / "renders"
    store_dir.mkdir()
    counter_dir.mkdir()
    srv = Instance(free_port(), counter_dir, root / "gunicorn.log")
    env = {
        "ISR_STORE": f"file://{store_dir}",
        "ISR_SECRET": SECRET,
        "ISR_COUNTER_DIR": str(counter_dir),
        "ISR_SLOW_SECONDS": str(SLOW_SECONDS),
        "ISR_POST_SECONDS": str(POST_SECONDS),
    }
    with start_gunicorn(srv, env=env):
        yield srv


@pytest.fixture(autouse=True)
def _log_on_failure(
    request: pytest.FixtureRequest, server: Instance, capsys: pytest.CaptureFixture[str]
) -> Iterator[None]:
    """Show gunicorn's log (both workers, wsgi_isr's log lines) when a test fails."""
    with logs_on_failure(request, capsys, server):
        yield


def test_stale_page_is_served_without_waiting_for_the_render(server: Instance) -> None:
    first = server.fetch("/slow/a")
    assert (first.status, first.cache) == (200, "MISS")
    assert first.body.startswith("slow a render 1 ")
    assert first.elapsed >= SLOW_SECONDS * 0.9, "the render is supposed to be slow"

    time.sleep(1.1)  # X-ISR-Revalidate: 1
    stale = server.fetch("/slow/a")
    assert (stale.status, stale.cache, stale.body) == (200, "STALE", first.body)
    assert stale.elapsed < 1.0, f"the visitor waited {stale.elapsed:.2f} s for a stale page"

    seen = poll(lambda: [server.fetch("/slow/a")], lambda r: r.body != first.body)
    assert seen[-1].body.startswith("slow a render 2 "), summary(seen)
    # nobody waited for the regeneration, and until it landed everyone got the old copy
    assert all(r.elapsed < 1.0 for r in seen), [round(r.elapsed, 2) for r in seen]
    assert all((r.status, r.cache) == (200, "STALE") for r in seen[:-1]), summary(seen)


def test_burst_on_stale_page_regenerates_once_across_workers(server: Instance) -> None:
    page = "slow-burst"
    first = server.fetch("/slow/burst")
    assert (first.status, first.cache) == (200, "MISS")
    assert server.renders(page) == 1
    time.sleep(1.1)  # stale now

    started = time.monotonic()
    replies = server.fetch_many("/slow/burst", 100)
    assert [r.status for r in replies] == [200] * 100
    # every answer was the old copy, marked stale: all 100 arrived while the single
    # regeneration was still running, so any extra render would be a duplicate
    assert {(r.cache, r.body) for r in replies} == {("STALE", first.body)}, summary(replies)
    pids = {r.pid for r in replies}
    assert len(pids) >= 2, f"only one worker served the burst: {pids}"

    # the regeneration takes SLOW_SECONDS; give a duplicate every chance to show up
    assert wait_for(lambda: server.renders(page) >= 2, timeout=5.0, interval=0.1)
    time.sleep(max(0.0, started + SLOW_SECONDS + 1.5 - time.monotonic()))
    assert server.renders(page) == 2

    after = server.fetch("/slow/burst")
    assert after.status == 200
    assert after.body.startswith("slow burst render 2 "), summary([after])


def test_tag_revalidation_reaches_every_worker(server: Instance) -> None:
    page = "post-hello"
    first = server.fetch("/post/hello")
    assert (first.status, first.cache) == (200, "MISS")
    assert first.body.startswith("post hello render 1 ")
    warm = server.fetch_many("/post/hello", 20)
    assert {(r.cache, r.body) for r in warm} == {("HIT", first.body)}, summary(warm)
    assert len({r.pid for r in warm}) >= 2

    done = server.revalidate({"tag": "post-hello", "secret": SECRET})
    assert done.status == 200, done.body
    answer = json.loads(done.body)
    assert answer["revalidated"] is True
    assert answer["tags"] == ["post-hello"]

    # while the one regeneration renders (POST_SECONDS), both workers know the page is
    # stale: the old body only ever comes marked STALE, never as a HIT
    during = server.fetch_many("/post/hello", 30)
    assert all(r.status == 200 for r in during)
    assert all(r.cache == "STALE" for r in during if r.body == first.body), summary(during)
    assert len({r.pid for r in during}) >= 2, "the invalidation must be seen by both workers"

    fresh = poll(lambda: [server.fetch("/post/hello")], lambda r: r.cache == "HIT")
    assert all(r.cache == "STALE" for r in fresh[:-1]), summary(fresh)

    after = server.fetch_many("/post/hello", 40)
    new_body = after[0].body
    assert new_body.startswith("post hello render 2 "), summary(after)
    assert {(r.status, r.cache, r.body) for r in after} == {(200, "HIT", new_body)}, summary(after)
    assert len({r.pid for r in after}) >= 2
    assert server.renders(page) == 2, "one regeneration across both workers"


def test_cookie_visitor_data_is_never_cached_for_others(server: Instance) -> None:
    alice = server.fetch("/whoami", headers={"Cookie": "user=alice"})
    assert (alice.status, alice.cache) == (200, "MISS")
    assert "hello alice" in alice.body, "alice sees her own page"
    assert "private" in alice.headers.get("cache-control", "")

    anonymous = poll(lambda: server.fetch_many("/whoami", 4), lambda r: r.cache == "HIT")
    anonymous += server.fetch_many("/whoami", 20)
    anonymous.append(server.fetch("/whoami", headers={"Cookie": "user=carol"}))
    assert all(r.status == 200 for r in anonymous)
    assert not [r for r in anonymous if "alice" in r.body], summary(anonymous)
    hits = [r for r in anonymous if r.cache == "HIT"]
    assert hits and all(r.body.startswith("hello anonymous ") for r in hits), summary(anonymous)
    # alice's own render plus one clean background fill; the rest were served from it
    assert server.renders("whoami") == 2


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        pytest.param({"tag": "post-guarded", "secret": "wrong"}, {}, id="wrong-body-secret"),
        pytest.param({"tag": "post-guarded"}, {"Authorization": "Bearer wrong"}, id="wrong-bearer"),
        pytest.param({"tag": "post-guarded"}, {}, id="no-secret"),
    ],
)
def test_revalidate_rejects_wrong_secret(
    server: Instance, payload: dict[str, object], headers: dict[str, str]
) -> None:
    first = server.fetch("/post/guarded")
    assert first.status == 200 and first.cache in ("MISS", "HIT")

    denied = server.revalidate(payload, headers)
    assert denied.status == 401, denied.body
    assert "revalidated" not in json.loads(denied.body)

    again = server.fetch_many("/post/guarded", 10)
    assert {(r.cache, r.body) for r in again} == {("HIT", first.body)}, summary(again)
    assert server.renders("post-guarded") == 1


def test_data_cache_reruns_only_the_invalidated_function_once_across_workers(
    server: Instance,
) -> None:
    """``wsgi_isr.cached`` in a deployment: invalidating one post's tag re-runs only that
    post's function, once over both workers; invalidating the shared sidebar's tag
    regenerates every article but runs the sidebar function once for all of them."""
    slugs = ("a", "b", "c")
    for slug in slugs:
        first = server.fetch(f"/article/{slug}")
        assert (first.status, first.cache) == (200, "MISS")
        assert first.body.startswith(f"article {slug} post v1 sidebar v1 render 1"), first.body
    assert server.renders("data-sidebar") == 1, "the second and third articles read it cached"
    warm = server.fetch_many("/article/a", 10)
    assert {r.cache for r in warm} == {"HIT"} and len({r.pid for r in warm}) >= 2

    def counts() -> dict[str, int]:
        pages = [f"data-post-{s}" for s in slugs] + [f"article-{s}" for s in slugs]
        return {p: server.renders(p) for p in [*pages, "data-sidebar"]}

    assert server.revalidate({"tag": "post-b", "secret": SECRET}).status == 200
    burst = [r for s in slugs for r in server.fetch_many(f"/article/{s}", 10)]
    assert {r.cache for r in burst if "article b" not in r.body} == {"HIT"}, summary(burst)
    poll(lambda: [server.fetch("/article/b")], lambda r: "post v2" in r.body)
    time.sleep(0.5)  # room for a duplicate run to show up
    assert counts() == {
        "data-post-a": 1,
        "data-post-b": 2,
        "data-post-c": 1,
        "article-a": 1,
        "article-b": 2,
        "article-c": 1,
        "data-sidebar": 1,
    }

    assert server.revalidate({"tag": "sidebar", "secret": SECRET}).status == 200
    burst = [r for _ in range(3) for s in slugs for r in server.fetch_many(f"/article/{s}", 4)]
    assert len({r.pid for r in burst}) >= 2
    for slug in slugs:
        poll(lambda slug=slug: [server.fetch(f"/article/{slug}")], lambda r: "sidebar v2" in r.body)
    time.sleep(0.5)
    after = counts()
    assert after["data-sidebar"] == 2, after
    assert [after[f"data-post-{s}"] for s in slugs] == [1, 2, 1], after
    assert [after[f"article-{s}"] for s in slugs] == [2, 3, 2], after
