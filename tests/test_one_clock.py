"""One clock (DESIGN 7): render starts and invalidations are stamped by the store.

Two processes that disagree about the time must never lose an invalidation: a
render counts as started when the store took its lock (for Redis: ``TIME`` inside
the script that takes the lock), an invalidation when the store recorded it (``TIME``
inside the invalidation script), so the store's own order decides which render is
stale. The contract on every store, then two real gunicorn instances on one real
Redis, one of them with its wall clock stepped by ±2 s while it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import REPO, Instance, Reply, free_port, logs_on_failure, start_gunicorn, summary

from wsgi_isr.entry import Entry, State
from wsgi_isr.stores import Store, open_store

SECRET = "one-clock-secret-0123456789abcdef0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
HOST = "isr.test"
SKEW_DIR = Path(__file__).resolve().parent / "clock_skew"


def _entry(created: float) -> Entry:
    return Entry("200 OK", (), b"", created, None, None, ("t",), '"e"', "")


@pytest.fixture(params=["memory", "file", pytest.param("redis", marks=pytest.mark.redis)])
def real_clock_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on its default clock (for Redis: the server's)."""
    if request.param == "memory":
        url = "memory://"
    elif request.param == "file":
        url = f"file://{tmp_path / 'store'}"
    else:
        url = request.getfixturevalue("redis_url")
    store = open_store(url)
    yield store
    store.close()


def test_the_store_orders_lock_stamps_and_invalidations(real_clock_store: Store) -> None:
    store = real_clock_store
    before = store.acquire_stamped("render:a", 5.0)
    assert before is not None
    at = store.invalidate(["t"], hard=False)
    after = store.acquire_stamped("render:b", 5.0)
    assert after is not None
    assert store.acquire_stamped("render:a", 5.0) is None  # still a lock
    states = store.tag_states(["t"])
    assert states["t"][0] == at  # what invalidate() returns is what it recorded
    # a render under the first lock started before the invalidation: stale; one under
    # the second after it: fresh
    assert _entry(before[1]).state(at, states) is State.STALE
    assert _entry(after[1]).state(after[1], states) is State.FRESH
    assert store.release("render:a", before[0]) and store.release("render:b", after[0])


def test_revalidate_tag_returns_the_time_the_store_recorded(redis_url: str) -> None:
    from wsgi_isr import ISRMiddleware

    mw = ISRMiddleware(lambda e, s: [], store=redis_url)
    try:
        at = mw.revalidate_tag("x")
        assert mw.store.tag_states(["x"]) == {"x": (at, 0.0)}
        assert abs(at - mw.store.stamp()) < 60  # the server's clock, in unix seconds
    finally:
        mw.store.close()


# -- two instances on one Redis, one with its clock stepped ------------------------------


@dataclasses.dataclass
class Pair:
    a: Instance  # its time.time is skewed by what the skew file says
    b: Instance
    skew_file: Path
    counter_dir: Path

    def content(self, name: str, text: str) -> None:
        path = self.counter_dir / f"content-{name}.txt"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def skew(self, seconds: float) -> None:
        self.skew_file.write_text(f"{seconds}\n")
        time.sleep(0.3)  # the hook re-reads it every 0.2 s


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("isr-one-clock")
    counter_dir = root / "renders"
    counter_dir.mkdir()
    skew_file = root / "skew"
    env = {
        "ISR_STORE": f"{redis_server.url}?prefix=clock-{uuid.uuid4().hex[:8]}:",
        "ISR_SECRET": SECRET,
        "ISR_COUNTER_DIR": str(counter_dir),
        "ISR_LOCK_TIMEOUT": "5",
    }
    skewed = {
        **env,
        "ISR_CLOCK_SKEW_FILE": str(skew_file),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(SKEW_DIR), os.environ.get("PYTHONPATH", ""), str(REPO)) if p
        ),
    }
    a = Instance(free_port(), counter_dir, root / "gunicorn-a.log", name="A", host=HOST)
    b = Instance(free_port(), counter_dir, root / "gunicorn-b.log", name="B", host=HOST)
    with start_gunicorn(a, env=skewed, workers=1), start_gunicorn(b, env=env, workers=1):
        yield Pair(a, b, skew_file, counter_dir)


@pytest.fixture(autouse=True)
def _log_on_failure(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> Iterator[None]:
    if "pair" not in request.fixturenames:
        yield
        return
    pair = request.getfixturevalue("pair")
    with logs_on_failure(request, capsys, pair.a, pair.b):
        yield


def _until(fetch: Any, wanted: str, timeout: float) -> list[Reply]:
    """Fetch until a HIT shows ``wanted``; every reply seen (bounded by ``timeout``)."""
    seen: list[Reply] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = fetch()
        seen += batch
        if any(r.cache == "HIT" and r.body.endswith(" " + wanted) for r in batch):
            break
        time.sleep(0.05)
    return seen


@pytest.mark.server
@pytest.mark.redis
def test_invalidations_during_regenerations_are_never_lost_to_a_skewed_clock(
    pair: Pair,
) -> None:
    """20 times: a regeneration runs on one instance, the page's data changes and the
    other instance revalidates its tag mid-render. The render in flight read the old
    data, so it must land STALE and be regenerated: the page ends FRESH with the newest
    content. A's wall clock is stepped while it runs (after its first requests), +2 s
    when it renders, -2 s when it invalidates: per-process clocks, or estimates of
    the server's made before the step, would keep the old content FRESH forever."""
    render = 0.2
    path = f"/content/news?delay={render}"
    pair.content("news", "v0")
    first = pair.a.fetch(path)
    assert (first.status, first.cache, first.body) == (200, "MISS", "news v0"), first
    assert pair.b.fetch(path).cache == "HIT"
    for i in range(20):
        renderer, invalidator = (pair.a, pair.b) if i % 2 == 0 else (pair.b, pair.a)
        pair.skew(2.0 if i % 2 == 0 else -2.0)  # A ahead when it renders, behind when not
        pair.content("news", f"v{i}a")
        assert invalidator.revalidate({"tag": "content-news"}, AUTH).status == 200
        before = len(renderer.render_log("content-news"))
        trigger = renderer.fetch(path)
        assert (trigger.status, trigger.cache) == (200, "STALE"), trigger
        # the regeneration (of v{i}a) is under way on the renderer: change the data
        deadline = time.monotonic() + 5.0
        while len(renderer.render_log("content-news")) == before:
            assert time.monotonic() < deadline, "the regeneration never started"
            time.sleep(0.01)
        pair.content("news", f"v{i}b")
        done = invalidator.revalidate({"tag": "content-news"}, AUTH)
        assert done.status == 200, done.body

        seen = _until(lambda: [pair.a.fetch(path), pair.b.fetch(path)], f"v{i}b", 5.0)
        assert all(r.status == 200 for r in seen), summary(seen)
        assert any(r.cache == "HIT" and r.body == f"news v{i}b" for r in seen), (
            f"round {i}: the invalidation was lost: {summary(seen[-4:])}"
        )
        # and from then on both instances serve the newest content as fresh
        after = [pair.a.fetch(path), pair.b.fetch(path)]
        assert {(r.cache, r.body) for r in after} == {("HIT", f"news v{i}b")}, summary(after)
    with contextlib.suppress(OSError):
        pair.skew_file.unlink()
