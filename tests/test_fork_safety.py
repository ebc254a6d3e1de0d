"""Fork- and patch-safety on real gunicorn servers.

Under ``gunicorn --preload`` the middleware and its store are made in the master,
before the fork and before the gevent worker monkey-patches ``threading``: any lock,
thread, pool or runner made then and used later must be remade per process, and no
lock may be held across I/O (a real lock held by a greenlet waiting for Redis blocks
every other greenlet of the worker: the whole worker deadlocks). Readers plus an
invalidation every 20 ms, bounded in time: every request answers, no worker is
restarted. Also ``-k gthread``, ``-k sync`` and ``max_requests`` worker recycling.
"""

from __future__ import annotations

import dataclasses
import http.client
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers import Instance, free_port, start_gunicorn

pytestmark = [pytest.mark.server]

SECRET = "fork-secret-0123456789abcdef0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
PAGES = 6


@dataclasses.dataclass
class Load:
    ok: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    pids: set[str] = dataclasses.field(default_factory=set)
    caches: dict[str, int] = dataclasses.field(default_factory=dict)
    invalidations: int = 0


def _reader(server: Instance, stop: threading.Event, load: Load, n: int) -> None:
    i = 0
    while not stop.is_set():
        path = (f"/page/soak-{(n + i) % PAGES}?delay=0.05", "/plain/soak")[i % 4 == 3]
        i += 1
        try:
            r = server.fetch(path, timeout=5.0)  # a deadlocked worker never answers
        except (OSError, http.client.HTTPException) as exc:
            load.failures.append(f"{path}: {exc!r}")
            continue
        if r.status != 200:
            load.failures.append(f"{path}: {r.status} {r.body[:80]}")
            continue
        load.ok += 1
        load.caches[str(r.cache)] = load.caches.get(str(r.cache), 0) + 1
        if r.pid:
            load.pids.add(r.pid)


def _invalidator(server: Instance, stop: threading.Event, load: Load) -> None:
    rng = random.Random(11)
    while not stop.wait(0.02):
        payload: dict[str, object] = {"tag": f"page-soak-{rng.randrange(PAGES)}"}
        if rng.random() < 0.2:
            payload["mode"] = "hard"
        try:
            r = server.revalidate(payload, AUTH)
        except (OSError, http.client.HTTPException) as exc:
            load.failures.append(f"revalidate: {exc!r}")
            continue
        if r.status != 200:
            load.failures.append(f"revalidate: {r.status} {r.body[:80]}")
        else:
            load.invalidations += 1


def soak(
    server: Instance,
    seconds: float,
    readers: int = 6,
    enough: Callable[[Load], bool] = lambda load: True,
) -> Load:
    """Readers plus an invalidation every 20 ms for ``seconds``, and on until
    ``enough(load)`` (a loaded machine does less in the time), at most 4 × ``seconds``;
    stops by itself."""
    load = Load()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_reader, args=(server, stop, load, n)) for n in range(readers)
    ]
    threads.append(threading.Thread(target=_invalidator, args=(server, stop, load)))
    for t in threads:
        t.start()
    try:
        time.sleep(seconds)
        deadline = time.monotonic() + 3 * seconds
        while not enough(load) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    return load


def _booted(instance: Instance) -> int:
    return len(re.findall(r"Booting worker with pid", instance.log()))


def _store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "file":
        return f"file://{tmp_path / 'store'}"
    server: Any = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix=fork-{uuid.uuid4().hex[:8]}:"


def _run(
    tmp_path: Path,
    store: str,
    check: Callable[[Instance, Load], None],
    *,
    seconds: float,
    worker_class: str = "gevent",
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    enough: Callable[[Instance, Load], bool] | None = None,
) -> None:
    counter_dir = tmp_path / "renders"
    counter_dir.mkdir()
    instance = Instance(free_port(), counter_dir, tmp_path / "gunicorn.log")
    full_env = {
        "ISR_STORE": store,
        "ISR_SECRET": SECRET,
        "ISR_COUNTER_DIR": str(counter_dir),
        "ISR_LOCK_TIMEOUT": "5",
        **(env or {}),
    }
    with start_gunicorn(instance, env=full_env, worker_class=worker_class, args=args):
        until = enough or (lambda instance, load: load.ok > 100 and load.invalidations > 50)
        load = soak(instance, seconds, enough=lambda load: until(instance, load))
        try:
            check(instance, load)
        except AssertionError:
            print(f"--- gunicorn log ---\n{instance.log()[-6000:]}")
            raise


def _no_failures_no_restarts(instance: Instance, load: Load) -> None:
    assert not load.failures, (len(load.failures), load.failures[:5])
    assert load.ok > 100 and load.invalidations > 50, load
    assert _booted(instance) == 2, "a worker was restarted (a deadlock, a crash)"
    assert "WORKER TIMEOUT" not in instance.log()
    assert len(load.pids) == 2, load.pids  # both workers served throughout
    assert load.caches.get("HIT", 0) + load.caches.get("STALE", 0) > 0, load.caches


@pytest.mark.parametrize(
    "kind", [pytest.param("redis", marks=pytest.mark.redis), pytest.param("file")]
)
def test_preload_gevent_under_invalidation_traffic(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {"ISR_LOCAL_TTL": "1"} if kind == "redis" else {}  # the pub/sub thread too
    _run(
        tmp_path,
        _store_url(kind, tmp_path, request),
        _no_failures_no_restarts,
        seconds=7.0,
        args=("--preload",),
        env=env,
    )


@pytest.mark.redis
@pytest.mark.parametrize(
    ("worker_class", "threads"),
    [("gthread", ("--threads", "8")), ("sync", ())],
)
def test_preload_threaded_workers_under_invalidation_traffic(
    worker_class: str, threads: tuple[str, ...], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """gunicorn's thread-based workers: ``gthread`` (a thread per connection) and the
    default ``sync`` (one request at a time, the regenerations on background threads)."""
    _run(
        tmp_path,
        _store_url("redis", tmp_path, request),
        _no_failures_no_restarts,
        seconds=3.0,
        worker_class=worker_class,
        args=("--preload", *threads),
        env={"ISR_LOCAL_TTL": "1"},
    )


@pytest.mark.redis
def test_max_requests_recycling_under_invalidation_traffic(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    def recycled_without_failures(instance: Instance, load: Load) -> None:
        assert not load.failures, (len(load.failures), load.failures[:5])
        assert load.ok > 100 and load.invalidations > 30, load
        assert _booted(instance) > 4, "max_requests recycled the workers"
        assert "WORKER TIMEOUT" not in instance.log()
        assert len(load.pids) > 2, load.pids  # the new workers served too
        assert load.caches.get("HIT", 0) > 0, load.caches

    _run(
        tmp_path,
        _store_url("redis", tmp_path, request),
        recycled_without_failures,
        seconds=4.0,
        args=("--preload", "--max-requests", "60", "--max-requests-jitter", "20"),
        env={"ISR_LOCAL_TTL": "1"},
        enough=lambda instance, load: _booted(instance) > 4 and load.invalidations > 30,
    )
