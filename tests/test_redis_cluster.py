"""Two ``gunicorn -k gevent -w 2`` instances on one ``redis+cluster://`` store: a real
three-primary Redis Cluster (``tests/redis_topologies.py``) behaves as one cache — a
page rendered on A is a hit on B, an invalidation sent to A regenerates the page once
for both, and concurrent misses over both instances render once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis_topologies import Cluster
from servers import Instance, free_port, logs_on_failure, poll, start_gunicorn, summary

pytestmark = [pytest.mark.server, pytest.mark.redis]

SECRET = "cluster-store-secret-0123456789abcdef01234567"
AUTH = {"Authorization": f"Bearer {SECRET}"}
HOST = "isr.test"


@pytest.fixture(scope="module")
def instances(
    tmp_path_factory: pytest.TempPathFactory, redis_cluster: Cluster
) -> Iterator[tuple[Instance, Instance]]:
    root = tmp_path_factory.mktemp("isr-redis-cluster")
    counter_dir = root / "renders"
    counter_dir.mkdir()
    env = {
        "ISR_STORE": redis_cluster.url(f"rc-{uuid.uuid4().hex[:6]}:"),
        "ISR_SECRET": SECRET,
        "ISR_COUNTER_DIR": str(counter_dir),
        "ISR_LOCK_TIMEOUT": "3",
    }
    a = Instance(free_port(), counter_dir, root / "gunicorn-a.log", name="A", host=HOST)
    b = Instance(free_port(), counter_dir, root / "gunicorn-b.log", name="B", host=HOST)
    with start_gunicorn(a, b, env=env):
        yield a, b


@pytest.fixture(autouse=True)
def _log_on_failure(
    request: pytest.FixtureRequest,
    instances: tuple[Instance, Instance],
    capsys: pytest.CaptureFixture[str],
) -> Iterator[None]:
    with logs_on_failure(request, capsys, *instances):
        yield


def test_pages_and_invalidations_are_shared_over_the_cluster(
    instances: tuple[Instance, Instance],
) -> None:
    a, b = instances
    pages = [f"/page/c{i}" for i in range(12)]  # keys over all three primaries
    firsts = [a.fetch(p) for p in pages]
    assert {(r.status, r.cache) for r in firsts} == {(200, "MISS")}, summary(firsts)
    on_b = [b.fetch(p) for p in pages]
    assert [(r.cache, r.body) for r in on_b] == [("HIT", r.body) for r in firsts]

    done = a.revalidate({"tags": [f"page-c{i}" for i in range(0, 12, 2)]}, AUTH)
    assert done.status == 200, done.body
    assert json.loads(done.body)["revalidated"] is True
    for i, path in enumerate(pages):
        if i % 2:  # not invalidated: still the same hit
            assert (b.fetch(path).cache, b.fetch(path).body) == ("HIT", firsts[i].body)
            continue
        seen = poll(lambda p=path: [b.fetch(p)], lambda r, i=i: r.body != firsts[i].body)
        assert {r.cache for r in seen[:-1]} <= {"STALE"}, summary(seen)
        assert " render 2 " in seen[-1].body, summary(seen)
        assert a.renders(f"page-c{i}") == 2


def test_concurrent_misses_over_both_instances_render_once(
    instances: tuple[Instance, Instance],
) -> None:
    a, b = instances
    path = "/page/herd?delay=0.5"
    with ThreadPoolExecutor(max_workers=40) as pool:
        replies = list(pool.map(lambda s: s.fetch(path), [a, b] * 20))
    assert {r.status for r in replies} == {200}, summary(replies)
    assert len({r.body for r in replies}) == 1, summary(replies)
    assert a.renders("page-herd") == 1, a.render_log("page-herd")
