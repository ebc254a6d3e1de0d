"""Cluster tests: two ``gunicorn -k gevent -w 2`` instances (A and B, two ports) serving
``tests/e2e_app.py`` on ONE real redis-server, driven over real sockets.

They prove that many hosts on one Redis behave as one cache: a page rendered on A
is a hit on B, one regeneration per stale page over all four workers, an
invalidation sent to A is seen by B at once, a Redis outage is ridden out without a
single 5xx, and a renderer killed mid-regeneration only delays the page by the lock
TTL. Every request carries the same ``Host`` (what a load balancer in front of both
instances forwards), so both instances compute the same cache keys. Renders are
counted in files written by the app, one line per render start (``<pid> <time>``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from servers import (
    Instance,
    Outcome,
    Reply,
    fetch_outcome,
    free_port,
    logs_on_failure,
    start_gunicorn,
    summary,
    wait_for,
)

pytestmark = [pytest.mark.server, pytest.mark.redis]

SECRET = "cluster-secret-0123456789abcdef0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
HOST = "isr.test"  # the public host both instances are behind
LOCK_TIMEOUT = 3.0  # ISR_LOCK_TIMEOUT: how long a dead renderer blocks a page


@dataclasses.dataclass
class Cluster:
    a: Instance
    b: Instance

    def render_log(self, page: str) -> list[tuple[int, float]]:
        """``(pid, unix time)`` of every render start of ``page``, over all four workers
        (both instances write to one counter directory)."""
        return self.a.render_log(page)

    def renders(self, page: str) -> int:
        return len(self.render_log(page))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("isr-cluster")
    counter_dir = root / "renders"
    counter_dir.mkdir()
    env = {
        # one Redis, one prefix: the two instances are one cache
        "ISR_STORE": f"{redis_server.url}?prefix=cluster-{uuid.uuid4().hex[:8]}:",
        "ISR_SECRET": SECRET,
        "ISR_COUNTER_DIR": str(counter_dir),
        "ISR_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
    }
    a = Instance(free_port(), counter_dir, root / "gunicorn-a.log", name="A", host=HOST)
    b = Instance(free_port(), counter_dir, root / "gunicorn-b.log", name="B", host=HOST)
    with start_gunicorn(a, b, env=env):
        yield Cluster(a, b)


@pytest.fixture(autouse=True)
def _log_on_failure(
    request: pytest.FixtureRequest, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> Iterator[None]:
    """Show both instances' logs (all four workers, wsgi_isr's lines) when a test fails."""
    with logs_on_failure(request, capsys, cluster.a, cluster.b):
        yield


def test_page_rendered_on_a_is_a_hit_on_b(cluster: Cluster) -> None:
    first = cluster.a.fetch("/page/shared")
    assert (first.status, first.cache) == (200, "MISS")
    assert first.body.startswith("shared render 1 ")

    on_b = cluster.b.fetch_many("/page/shared", 20)
    assert {(r.status, r.cache, r.body) for r in on_b} == {(200, "HIT", first.body)}, summary(on_b)
    assert len({r.pid for r in on_b}) >= 2, "both of B's workers read A's render"
    assert cluster.renders("page-shared") == 1


def test_burst_on_stale_page_over_both_instances_regenerates_once(cluster: Cluster) -> None:
    revalidate, render = 4.0, 1.0
    path = f"/page/burst?revalidate={revalidate:.0f}&delay={render}"
    sent = time.monotonic()
    first = cluster.a.fetch(path)
    assert (first.status, first.cache) == (200, "MISS")
    assert cluster.b.fetch(path).cache == "HIT"
    time.sleep(max(0.0, sent + revalidate + 0.3 - time.monotonic()))  # stale now

    burst_started = time.monotonic()
    servers = [cluster.a, cluster.b] * 100
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = [pool.submit(s.fetch, path) for s in servers]
        replies = [f.result() for f in futures]
    burst_took = time.monotonic() - burst_started
    # the regenerated entry is fresh for `revalidate` s from its render start: a burst
    # that took longer could legitimately start a second regeneration
    assert burst_took < revalidate - render, f"the burst took {burst_took:.2f} s"

    assert all(200 <= r.status < 300 for r in replies), summary(replies)
    on_a, on_b = replies[0::2], replies[1::2]
    assert any(r.cache == "STALE" for r in on_a), summary(on_a)
    assert any(r.cache == "STALE" for r in on_b), summary(on_b)
    assert len({r.pid for r in on_a}) >= 2 and len({r.pid for r in on_b}) >= 2, "all 4 workers"
    # give a duplicate regeneration every chance to show up before counting
    assert wait_for(lambda: cluster.renders("page-burst") >= 2, timeout=3.0)
    time.sleep(max(0.0, burst_started + burst_took + render + 0.5 - time.monotonic()))
    assert cluster.renders("page-burst") == 2, cluster.render_log("page-burst")

    new = [r for r in replies if r.body != first.body]
    assert all(r.cache == "HIT" and " render 2 " in r.body for r in new), summary(new)
    assert all(r.cache == "STALE" for r in replies if r.body == first.body), summary(replies)
    after = [cluster.a.fetch(path), cluster.b.fetch(path)]
    assert [(r.status, r.cache) for r in after] == [(200, "HIT")] * 2, summary(after)
    assert after[0].body == after[1].body and after[0].body.startswith("burst render 2 ")


def test_invalidation_sent_to_a_is_served_fresh_by_b(cluster: Cluster) -> None:
    render = 0.2
    path = f"/page/news?delay={render}"
    first = cluster.a.fetch(path)
    assert (first.status, first.cache) == (200, "MISS")
    warm = cluster.b.fetch_many(path, 8)
    assert {(r.cache, r.body) for r in warm} == {("HIT", first.body)}, summary(warm)

    done = cluster.a.revalidate({"tag": "page-news"}, AUTH)
    posted = time.monotonic()
    assert done.status == 200, done.body
    assert json.loads(done.body)["revalidated"] is True

    seen: list[Reply] = []
    deadline = posted + 1.0 + render + 1.0
    while not any(r.body != first.body for r in seen) and time.monotonic() < deadline:
        seen += cluster.b.fetch_many(path, 2)  # both of B's workers, usually
        time.sleep(0.05)
    assert all(r.status == 200 for r in seen), summary(seen)
    # from the moment the POST returned, B never served the old copy as fresh
    assert not [r for r in seen if r.cache == "HIT" and r.body == first.body], summary(seen)
    assert seen[0].started - posted < 1.0 and seen[0].cache in ("STALE", "HIT"), summary(seen)
    fresh = [r for r in seen if r.body != first.body]
    assert fresh, f"B never served the fresh page: {summary(seen)}"
    assert fresh[0].body.startswith("news render 2 "), summary(fresh)
    assert fresh[0].started + fresh[0].elapsed - posted < 1.0 + render, summary(seen)

    after = cluster.b.fetch_many(path, 4) + cluster.a.fetch_many(path, 4)
    assert {(r.cache, r.body) for r in after} == {("HIT", fresh[0].body)}, summary(after)
    assert cluster.renders("page-news") == 2


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_worker_killed_mid_regeneration_recovers_after_lock_ttl(cluster: Cluster) -> None:
    render = 1.5
    path = f"/page/victim?delay={render}"
    first = cluster.a.fetch(path)
    assert (first.status, first.cache) == (200, "MISS")
    assert cluster.a.revalidate({"tag": "page-victim"}, AUTH).status == 200

    trigger = cluster.b.fetch(path)
    assert (trigger.status, trigger.cache, trigger.body) == (200, "STALE", first.body)
    assert wait_for(lambda: cluster.renders("page-victim") >= 2, timeout=2.0)
    victim, render_started = cluster.render_log("page-victim")[1]
    assert str(victim) == trigger.pid, "the regeneration runs where the stale page was served"
    assert cluster.b.proc is not None
    assert _parent_pid(victim) == cluster.b.proc.pid, "only ever kill our own worker"
    os.kill(victim, signal.SIGKILL)

    seen: list[Reply] = []
    deadline = time.monotonic() + LOCK_TIMEOUT + render + 5.0
    while not any(r.body != first.body for r in seen) and time.monotonic() < deadline:
        seen += [cluster.a.fetch(path), cluster.b.fetch(path)]
        time.sleep(0.1)
    assert all(r.status == 200 for r in seen), summary(seen)
    assert str(victim) not in {r.pid for r in seen}
    fresh = [r for r in seen if r.body != first.body]
    assert fresh, f"nobody regenerated after the lock TTL: {summary(seen[-4:])}"
    until_fresh = seen[: seen.index(fresh[0])]
    assert until_fresh, "the page was served while the dead worker held the lock"
    assert {(r.cache, r.body) for r in until_fresh} == {("STALE", first.body)}, summary(seen)

    renders = cluster.render_log("page-victim")
    assert len(renders) == 3, renders
    rescuer, rescue_started = renders[2]
    assert rescuer != victim
    # the dead worker's lock blocked the page for its TTL, not forever and not less
    assert rescue_started - render_started >= LOCK_TIMEOUT - 0.25, renders
    assert rescue_started - render_started < LOCK_TIMEOUT + 2.0, renders
    assert fresh[0].body.startswith("victim render 3 "), summary(fresh)
    after = [cluster.a.fetch(path), cluster.b.fetch(path)]
    assert {(r.status, r.cache, r.body) for r in after} == {(200, "HIT", fresh[0].body)}


def _stream(cluster: Cluster, stop: threading.Event, out: list[Outcome], worker: int) -> None:
    """Requests back to back until ``stop``: a cached page, a page that never opts
    in, and a new (uncached) key each time, alternating between the instances."""
    i = 0
    while not stop.is_set():
        server = (cluster.a, cluster.b)[i % 2]
        path = ("/page/steady", "/plain/steady", f"/page/flow?n={worker}-{i}")[i % 3]
        out.append(fetch_outcome(server, path))
        i += 1
        time.sleep(0.01)


def test_redis_restart_mid_traffic_causes_no_5xx(cluster: Cluster, redis_server: Any) -> None:
    first = cluster.a.fetch("/page/steady")
    assert (first.status, first.cache) == (200, "MISS")
    assert cluster.b.fetch("/page/steady").cache == "HIT"

    outcomes: list[Outcome] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_stream, args=(cluster, stop, outcomes, n)) for n in range(4)
    ]
    down = False
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        redis_server.stop()
        down, down_at = True, time.monotonic()
        time.sleep(0.3)
        refused = [s.revalidate({"tag": "page-steady"}, AUTH) for s in (cluster.a, cluster.b)]
        time.sleep(max(0.0, down_at + 2.0 - time.monotonic()))
        restart_at = time.monotonic()  # Redis may answer before start() returns
        redis_server.start()
        down, up_at = False, time.monotonic()
        time.sleep(2.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        if down:  # the session's other tests need their Redis back
            redis_server.start()

    assert not [o for o in outcomes if o.error], [o for o in outcomes if o.error][:5]
    assert not [o for o in outcomes if o.status is None or o.status >= 500]
    assert all(o.status == 200 for o in outcomes), {o.status for o in outcomes}
    during = [o for o in outcomes if down_at + 0.1 < o.started < restart_at]
    assert {o.server for o in during} == {"A", "B"} and len(during) >= 20, len(during)
    # while Redis was away, even the cached page came from the application
    assert {o.cache for o in during if o.path == "/page/steady"} == {"BYPASS"}

    for r in refused:
        assert r.status == 503, r.body
        assert r.headers["content-type"] == "application/json"
        assert "error" in json.loads(r.body), r.body

    # Redis came back empty: the cached page was rendered and stored again by itself,
    # then served from Redis
    steady = sorted(
        (o for o in outcomes if o.path == "/page/steady" and o.started > down_at),
        key=lambda o: o.started,
    )
    refills = [o for o in steady if o.cache == "MISS"]
    assert refills, [o.cache for o in steady]
    hits = [o for o in steady if o.cache == "HIT" and o.started > refills[0].started]
    assert hits and hits[0].started - up_at < 3.0, [o.cache for o in steady]

    # and a page never seen before is cached as usual
    path = f"/page/after-{uuid.uuid4().hex[:6]}"
    assert cluster.a.fetch(path).cache == "MISS"
    assert wait_for(lambda: cluster.b.fetch(path).cache == "HIT", timeout=3.0)
