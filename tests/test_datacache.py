"""The data cache (``wsgi_isr.cached``): its state machine on every store with a fake
clock, propagation of tags and freshness into the page being rendered, invalidation
shared with pages, profiles, bad input, and how the module-level decorator finds its
middleware.

Background refreshes run on a :class:`ManualRunner`, so a test sees exactly how many
were started and runs them when it chooses.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from helpers import FakeClock
from werkzeug.test import Client

import wsgi_isr
from wsgi_isr import ISRMiddleware, cached, codec
from wsgi_isr.entry import DataEntry
from wsgi_isr.flask import ISR


class ManualRunner:
    """Keeps submitted tasks until the test runs them."""

    def __init__(self) -> None:
        self.tasks: list[Any] = []

    def submit(self, task: Any) -> bool:
        self.tasks.append(task)
        return True

    def run(self) -> int:
        n = 0
        while self.tasks:
            self.tasks.pop(0)()
            n += 1
        return n

    def join(self, timeout: float | None = None) -> bool:
        self.run()
        return True


STORES = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("redis+local", id="redis+local", marks=pytest.mark.redis),
]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Middleware options for one store (``redis+local``: with the in-process layer)."""
    if request.param == "memory":
        return {"store": "memory://"}
    if request.param == "file":
        return {"store": f"file://{tmp_path / 'store'}"}
    url: str = request.getfixturevalue("redis_url")
    return {"store": url, "local_ttl": 30.0} if request.param == "redis+local" else {"store": url}


class Calls:
    """A data source that counts its calls and can be made to fail."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}
        self.fail = False

    def __call__(self, name: str) -> int:
        if self.fail:
            raise RuntimeError(f"{name} is down")
        self.n[name] = self.n.get(name, 0) + 1
        return self.n[name]


def middleware(app: Any = None, **options: Any) -> tuple[ISRMiddleware, FakeClock, ManualRunner]:
    clock = options.pop("clock", None) or FakeClock()
    runner = ManualRunner()
    options.setdefault("store", "memory://")
    mw = ISRMiddleware(app or page_app(), clock=clock, runner=runner, **options)
    return mw, clock, runner


def page_app(**pages: Any) -> Any:
    """A WSGI app whose pages are ``path -> (body callable, headers)``."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body, headers = pages[environ["PATH_INFO"]]
        start_response("200 OK", [("Content-Type", "application/json"), *headers])
        return [json.dumps(body()).encode()]

    return app


def stored(mw: ISRMiddleware, fn: Any, *args: Any) -> DataEntry:
    record, _ = mw.store.lookup(fn.key(*args))
    assert isinstance(record, DataEntry), record
    return record


# -- the state machine, on every store ------------------------------------------------------


def test_states_on_every_store(store: dict[str, Any]) -> None:
    mw, clock, runner = middleware(**store, regeneration_backoff=30)
    source = Calls()

    @mw.cached(revalidate=60, tags=lambda slug: [f"post-{slug}"])
    def get_post(slug: str) -> dict[str, Any]:
        return {"slug": slug, "version": source(slug)}

    # MISS: called; FRESH: not called
    assert get_post("a") == {"slug": "a", "version": 1}
    clock.advance(59)
    assert get_post("a") == {"slug": "a", "version": 1}
    assert source.n == {"a": 1} and runner.tasks == []

    # STALE outside a render: the old value at once, ONE background refresh
    clock.advance(2)
    assert [get_post("a") for _ in range(5)] == [{"slug": "a", "version": 1}] * 5
    assert len(runner.tasks) == 1 and source.n == {"a": 1}
    runner.run()
    assert source.n == {"a": 2}
    assert get_post("a") == {"slug": "a", "version": 2}  # fresh again

    # soft tag invalidation: stale (served, refreshed in the background)
    clock.advance(1)
    mw.revalidate_tag("post-a")
    assert get_post("a")["version"] == 2
    assert runner.run() == 1
    assert get_post("a")["version"] == 3

    # hard invalidation: expired, the caller waits for a new value
    clock.advance(1)
    mw.revalidate_tag("post-a", mode="hard")
    assert get_post("a")["version"] == 4 and runner.tasks == []

    # other arguments, other entries; an unrelated tag changes nothing
    assert get_post("b") == {"slug": "b", "version": 1}
    clock.advance(1)
    mw.revalidate_tag("post-b")
    clock.advance(1)
    assert get_post("a")["version"] == 4 and runner.tasks == []

    # an exception is never cached; outside a render the stale value is kept
    # (stale-if-error) and the next refresh is backed off
    clock.advance(61)
    source.fail = True
    assert get_post("a")["version"] == 4
    assert runner.run() == 1
    assert get_post("a")["version"] == 4
    assert runner.tasks == [], "a failed refresh is backed off, not retried at once"
    counters = mw.stats.snapshot()
    assert counters["data_refreshes_failed"] == 1 and counters["data_stale"] >= 3
    source.fail = False
    # on a miss there is nothing to fall back on: the error reaches the caller
    source.fail = True
    with pytest.raises(RuntimeError, match="c is down"):
        get_post("c")
    source.fail = False
    assert get_post("c")["version"] == 1
    mw.store.close()


def test_expire_turns_an_old_value_into_a_miss(store: dict[str, Any]) -> None:
    mw, clock, runner = middleware(**store)
    source = Calls()

    @mw.cached(revalidate=10, expire=100)
    def load() -> int:
        return source("x")

    assert load() == 1
    clock.advance(50)
    assert load() == 1 and len(runner.tasks) == 1  # stale
    runner.tasks.clear()  # the refresh never ran
    clock.advance(60)
    assert load() == 2 and source.n == {"x": 2}  # expired: called in the foreground
    mw.store.close()


def test_one_refresh_across_processes_sharing_a_store(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'shared'}"
    clock = FakeClock()
    a, _, runner_a = middleware(store=url, clock=clock)
    b, _, runner_b = middleware(store=url, clock=clock)
    source = Calls()

    def sidebar() -> int:
        return source("sidebar")

    in_a, in_b = a.cached(revalidate=60)(sidebar), b.cached(revalidate=60)(sidebar)
    assert in_a() == 1 and in_b() == 1, "the second process reads the first one's value"
    clock.advance(61)
    assert in_a() == 1 and in_b() == 1
    assert len(runner_a.tasks) + len(runner_b.tasks) == 1
    runner_a.run()
    runner_b.run()
    assert in_b() == 2 and source.n == {"sidebar": 2}


def test_concurrent_misses_call_the_function_once() -> None:
    mw, clock, runner = middleware()
    source = Calls()
    gate = threading.Event()

    @mw.cached()
    def slow() -> int:
        gate.wait(10)
        return source("slow")

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(slow) for _ in range(8)]
        gate.set()
        results = [f.result() for f in futures]
    assert results == [1] * 8 and source.n == {"slow": 1}


def kill_while_it_runs(code: str, url: str, flag: str) -> None:
    """Run ``code`` in a child process (``sys``, ``time``, ``data_holder`` and
    ``ISRMiddleware`` imported) whose ``data_holder.report`` hangs once started, then
    SIGKILL it, once its lease keeper has renewed the lease."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, data_holder; from wsgi_isr import ISRMiddleware;" + code,
            url,
            flag,
        ],
        env={**os.environ, "DATA_HOLDER_HANG": "1", "PYTHONPATH": str(Path(__file__).parent)},
    )
    try:
        deadline = time.monotonic() + 30
        while not Path(flag).exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Path(flag).exists(), "the child never started the call"
        time.sleep(2.0)  # its keeper has renewed the lease by now
    finally:
        child.kill()
        child.wait(10)


def test_a_caller_killed_mid_call_frees_its_key_within_a_lease(tmp_path: Path) -> None:
    """A process killed (``kill -9``, gunicorn's timeout) while its call runs holds the
    key's lock only for one lease, not ``lock_timeout``: a waiter takes over and stores
    the value, instead of every caller waiting ``coalesce_timeout`` and storing nothing."""
    import data_holder

    url = f"file://{tmp_path / 'shared'}"
    flag = str(tmp_path / "started")
    kill_while_it_runs(
        "mw = ISRMiddleware(lambda e, s: [], store=sys.argv[1]);"
        "mw.cached()(data_holder.report)(sys.argv[2])",
        url,
        flag,
    )
    mw = ISRMiddleware(page_app(), store=url, coalesce_timeout=30.0, lock_timeout=60.0)
    report = mw.cached()(data_holder.report)
    assert report(flag) == {"pid": os.getpid()}
    assert json.loads(stored(mw, report, flag).value) == {"pid": os.getpid()}, "not stored"
    mw.store.close()


def test_a_process_killed_mid_refresh_frees_the_refresh_within_a_lease(tmp_path: Path) -> None:
    """The background refresh of a stale value, outside a page render, in a process
    killed while it runs: the refresh lock is a lease too, so another process refreshes
    within seconds (it held it for ``lock_timeout``, a minute, with the value stale)."""
    import data_holder

    url = f"file://{tmp_path / 'shared'}"
    flag = str(tmp_path / "started")
    mw = ISRMiddleware(page_app(), store=url, lock_timeout=60.0)
    report = mw.cached(revalidate=1)(data_holder.report)
    assert report(flag) == {"pid": os.getpid()}
    time.sleep(1.2)  # stale now, on the store's (real) clock
    kill_while_it_runs(  # the call returns the stale value; its refresh then hangs
        "mw = ISRMiddleware(lambda e, s: [], store=sys.argv[1], lock_timeout=60.0);"
        "mw.cached(revalidate=1)(data_holder.report)(sys.argv[2]); time.sleep(120)",
        url,
        flag,
    )
    killed, first = time.monotonic(), stored(mw, report, flag).created
    while stored(mw, report, flag).created == first:  # the stale value meanwhile
        assert time.monotonic() - killed < 20, "no refresh within 20 s of the kill"
        assert report(flag) == {"pid": os.getpid()}  # stale: starts a refresh if it can
        assert mw.join(1)
        time.sleep(0.1)
    assert mw.join(10)
    mw.store.close()


@pytest.mark.redis
def test_a_store_failing_after_the_call_lock_was_taken_frees_it(redis_url: str) -> None:
    """The call's lock is taken, then the store fails to read (planted garbage in the
    tag state): the caller calls the function uncached and gives the lock back, instead
    of leaving every other caller of the key waiting a lease for nothing."""
    from wsgi_isr.stores.redis import RedisStore

    class PlantedWhileLocking(RedisStore):
        """Garbage lands in the tag state just as the call's lock is taken."""

        def acquire_stamped(self, name: str, ttl: float) -> Any:
            held = super().acquire_stamped(name, ttl)
            self.client.set(self.prefix + "tagseq", b"garbage")
            return held

    store = PlantedWhileLocking(redis_url)
    mw = ISRMiddleware(page_app(), store=store)
    calls: list[int] = []

    @mw.cached(revalidate=60)
    def value(n: int) -> int:
        calls.append(n)
        return n

    try:
        assert value(7) == 7 and calls == [7]
        token = store.acquire("data:" + value.key(7), 1.0)
        assert token is not None, "the call's lock was left held"
    finally:
        store.close()


class Overlap:
    """Calls of a slow function that fails: how many ran at once, at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = self.most = self.calls = 0

    def __call__(self) -> None:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        time.sleep(0.3)
        with self.lock:
            self.active -= 1


@pytest.mark.parametrize("failure", ["raises", "too-big"])
def test_the_waiters_of_a_failed_call_do_not_queue_one_behind_another(failure: str) -> None:
    """A call that raised, or whose value cannot be stored, leaves its waiters nothing to
    read: they call the function at once, together, as visitors of a page whose first
    render failed go to the app (not one after another, each a call's time later)."""
    mw, clock, runner = middleware(max_entry_bytes=1000)
    overlap = Overlap()

    @mw.cached()
    def report() -> str:
        overlap()
        if failure == "raises":
            raise ValueError("the database is struggling")
        return "x" * 2000

    def call() -> str:
        try:
            return report()
        except ValueError as exc:
            return str(exc)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: call(), range(6)))
    expected = "the database is struggling" if failure == "raises" else "x" * 2000
    assert results == [expected] * 6
    assert overlap.calls == 6 and overlap.most >= 2, vars(overlap)


def test_a_tag_beyond_ascii_reaches_the_cached_value() -> None:
    mw, clock, runner = middleware()
    source = Calls()

    @mw.cached(revalidate=False, tags=lambda slug: [f"post-{slug}"])
    def get_post(slug: str) -> int:
        return source(slug)

    assert get_post("café") == 1 and get_post("café") == 1
    assert stored(mw, get_post, "café").tags == ("post-caf%C3%A9",)
    clock.advance(1)
    mw.revalidate_tag("post-café", mode="hard")
    assert get_post("café") == 2


def test_failed_calls_leave_nothing_in_the_store(tmp_path: Path) -> None:
    """A slug from the URL that the function refuses (``get_object_or_404``) must not
    leave a file per slug behind: an attacker chooses the slugs."""
    mw, clock, runner = middleware(store=f"file://{tmp_path / 'store'}")

    @mw.cached()
    def get_post(slug: str) -> dict[str, str]:
        raise LookupError(slug)

    for n in range(50):
        with pytest.raises(LookupError):
            get_post(f"missing-{n}")
    left = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and "lock" in str(p)]
    assert left == [], left[:5]
    mw.store.close()


def test_records_round_trip_in_the_safe_format() -> None:
    entry = DataEntry('{"a":[1,2.5,null]}', 1000.5, 60.0, None, ("post-a", "posts"))
    data = codec.dumps(entry)
    assert codec.loads(data) == entry
    assert codec.loads(data[:-1]) is None  # truncated
    assert codec.loads(data + b"\x00") is None  # padded


# -- inside a page render ---------------------------------------------------------------------


def test_page_without_tags_is_invalidated_by_its_data_tag() -> None:
    """Propagation: the page declares nothing, its data's tag reaches it, and ONE
    regeneration shows the new data (the stale data is refreshed in the foreground)."""
    db = {"title": "Hello"}
    source = Calls()
    mw, clock, runner = middleware()

    @mw.cached(revalidate=False, tags=lambda slug: [f"post-{slug}"])
    def get_post(slug: str) -> dict[str, Any]:
        source(slug)
        return {"title": db["title"]}

    mw.app = mw.regen.app = page_app(
        **{"/p": (lambda: get_post("a"), [("X-ISR-Revalidate", "false")])}
    )
    client = Client(mw)
    first = client.get("/p")
    assert (first.headers["X-ISR-Cache"], first.json) == ("MISS", {"title": "Hello"})
    assert client.get("/p").headers["X-ISR-Cache"] == "HIT"

    db["title"] = "Typo fixed"
    clock.advance(1)
    mw.revalidate_tag("post-a")
    stale = client.get("/p")
    assert (stale.headers["X-ISR-Cache"], stale.json) == ("STALE", {"title": "Hello"})
    assert runner.run() == 1  # the page's regeneration; no separate data refresh
    fresh = client.get("/p")
    assert (fresh.headers["X-ISR-Cache"], fresh.json) == ("HIT", {"title": "Typo fixed"})
    assert source.n == {"a": 2}


def test_hits_nested_calls_and_body_tags_all_reach_the_page() -> None:
    mw, clock, runner = middleware()
    source = Calls()

    @mw.cached(tags=["authors"])
    def author(name: str) -> str:
        wsgi_isr.tag(f"author-{name}")  # set by the body
        return name.upper()

    @mw.cached(tags=lambda slug: [f"post-{slug}"])
    def get_post(slug: str) -> dict[str, Any]:
        source(slug)
        return {"slug": slug, "by": author("ann")}  # nested

    mw.app = mw.regen.app = page_app(
        **{
            "/one": (lambda: get_post("a"), [("X-ISR-Revalidate", "false")]),
            "/two": (lambda: get_post("a"), [("X-ISR-Revalidate", "false")]),
        }
    )
    client = Client(mw)
    assert client.get("/one").json == {"slug": "a", "by": "ANN"}
    assert client.get("/two").json == {"slug": "a", "by": "ANN"}  # a data HIT
    assert source.n == {"a": 1}
    assert set(stored(mw, get_post, "a").tags) == {"post-a", "authors", "author-ann"}

    for tag in ("author-ann", "authors", "post-a"):
        for path in ("/one", "/two"):
            assert client.get(path).headers["X-ISR-Cache"] == "HIT"
        clock.advance(1)
        mw.revalidate_tag(tag)
        for path in ("/one", "/two"):
            assert client.get(path).headers["X-ISR-Cache"] == "STALE", (tag, path)
        runner.run()


def test_page_freshness_is_capped_by_the_data_it_used() -> None:
    mw, clock, runner = middleware()

    @mw.cached(revalidate=300)
    def prices() -> list[int]:
        return [1, 2, 3]

    @mw.cached("hours")
    def slow_data() -> str:
        return "x"

    mw.app = mw.regen.app = page_app(
        **{
            "/shop": (lambda: [prices(), slow_data()], [("X-ISR-Revalidate", "3600")]),
            "/forever": (prices, [("X-ISR-Revalidate", "false")]),
            "/cdn": (prices, [("Cache-Control", "s-maxage=1000, stale-while-revalidate=50")]),
            "/short": (prices, [("X-ISR-Revalidate", "10")]),
            "/none": (prices, []),
        }
    )
    client = Client(mw)
    prices()  # stored outside a render, fresh for 300 s
    clock.advance(100)  # 200 s of freshness left when the pages render
    for path in ("/shop", "/forever", "/cdn", "/short", "/none"):
        assert client.get(path).headers["X-ISR-Cache"] in ("MISS", "BYPASS")
    cc = client.get("/forever").headers["Cache-Control"]
    assert cc.startswith(("public, s-maxage=200,", "public, s-maxage=199,")), cc
    clock.advance(11)
    assert client.get("/short").headers["X-ISR-Cache"] == "STALE"  # its own 10 s won
    assert client.get("/none").headers["X-ISR-Cache"] == "BYPASS"  # never opted in
    clock.advance(188)
    for path in ("/shop", "/forever", "/cdn"):
        assert client.get(path).headers["X-ISR-Cache"] == "HIT", path
    clock.advance(2)
    for path in ("/shop", "/forever", "/cdn"):
        assert client.get(path).headers["X-ISR-Cache"] == "STALE", path


def test_revalidate_path_reaches_the_data_its_page_used() -> None:
    mw, clock, runner = middleware()
    source = Calls()

    @mw.cached()
    def menu() -> int:
        return source("menu")

    mw.app = mw.regen.app = page_app(
        **{
            "/docs/a": (menu, [("X-ISR-Revalidate", "false")]),
            "/other": (menu, [("X-ISR-Revalidate", "false")]),
        }
    )
    client = Client(mw)
    assert client.get("/docs/a").json == 1
    assert client.get("/other").json == 1
    clock.advance(1)
    mw.revalidate_path("/docs", "layout")
    assert client.get("/docs/a").headers["X-ISR-Cache"] == "STALE"
    assert client.get("/other").headers["X-ISR-Cache"] == "HIT"
    runner.run()
    assert client.get("/docs/a").json == 2, "one regeneration re-read the data"
    assert menu() == 2, "and outside a render the refreshed value is what everyone gets"


def test_an_exception_inside_a_render_fails_the_regeneration_and_keeps_the_page() -> None:
    mw, clock, runner = middleware()
    source = Calls()

    @mw.cached(tags=["feed"])
    def feed() -> int:
        return source("feed")

    mw.app = mw.regen.app = page_app(**{"/": (feed, [("X-ISR-Revalidate", "false")])})
    client = Client(mw)
    assert client.get("/").json == 1
    clock.advance(1)
    mw.revalidate_tag("feed")
    source.fail = True
    assert client.get("/").headers["X-ISR-Cache"] == "STALE"
    runner.run()
    again = client.get("/")
    assert (again.headers["X-ISR-Cache"], again.json) == ("STALE", 1)
    assert mw.stats.snapshot()["regenerations_failed"] == 1


# -- profiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "revalidate", "expire"),
    [
        pytest.param("seconds", 1, 60, id="seconds"),
        pytest.param("minutes", 60, 3600, id="minutes"),
        pytest.param("hours", 3600, 86400, id="hours"),
        pytest.param("days", 86400, 604800, id="days"),
        pytest.param("weeks", 604800, 2592000, id="weeks"),
        pytest.param("max", 2592000, 31536000, id="max"),
    ],
)
def test_profiles(profile: str, revalidate: float, expire: float) -> None:
    mw, clock, runner = middleware()

    @mw.cached(profile)
    def value() -> int:
        return 1

    value()
    entry = stored(mw, value)
    assert (entry.revalidate, entry.expire) == (revalidate, expire)

    app = Flask(__name__)
    isr = ISR(app, store="memory://")

    @app.get("/")
    @isr.page(profile)
    def index() -> str:
        return "hi"

    headers = app.test_client().get("/").headers
    assert headers["X-ISR-Cache"] == "MISS"
    entry_record, _ = app.wsgi_app.store.lookup("http://localhost/?")  # type: ignore[attr-defined]
    assert (entry_record.revalidate, entry_record.expire) == (revalidate, expire)


def test_bad_revalidate_values_fail_at_decoration() -> None:
    mw, clock, runner = middleware()
    for bad in ("hourly", 0, -5, True, float("nan")):
        with pytest.raises(ValueError):
            mw.cached(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown cache profile"):
        ISR().page("fortnight")


# -- bad input ---------------------------------------------------------------------------------


def test_values_must_be_json() -> None:
    mw, clock, runner = middleware()

    @mw.cached()
    def returns(value: str) -> Any:
        huge = 10**5000  # more digits than int() and str() take (sys.get_int_max_str_digits)
        return {"set": {1}, "tuple": (1,), "nan": float("nan"), "obj": object(), "int": huge}[value]

    for name in ("set", "tuple", "nan", "obj", "int"):
        with pytest.raises(TypeError, match=r"test_datacache\..*returns"):
            returns(name)
    assert mw.store.count() == 0

    @mw.cached()
    def long_but_fine() -> int:
        return 10**4299

    assert long_but_fine() == 10**4299 and long_but_fine() == 10**4299


def test_async_functions_are_refused() -> None:
    mw, clock, runner = middleware()

    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match="fetch is async"):
        mw.cached()(fetch)


def test_unkeyable_arguments_name_the_function_and_the_argument() -> None:
    mw, clock, runner = middleware()

    @mw.cached()
    def lookup(slug: str, *, options: Any = None) -> str:
        return slug

    with pytest.raises(TypeError, match=r"lookup: argument 'options' \(object\)"):
        lookup("a", options=object())
    assert lookup("a") == "a"
    assert lookup("a", options=None) == "a"
    assert lookup(slug="a") == "a"
    assert len({lookup.key("a"), lookup.key(slug="a"), lookup.key("a", options=None)}) == 1
    assert lookup.key("a") != lookup.key("b")
    assert len(lookup.key("x" * 10_000)) < 400  # long arguments are hashed


def test_methods_with_an_explicit_key() -> None:
    mw, clock, runner = middleware()
    source = Calls()

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name

        @mw.cached(key=lambda self, slug: [self.name, slug])
        def get(self, slug: str) -> str:
            source(slug)
            return f"{self.name}/{slug}"

        @mw.cached()
        def unkeyed(self, slug: str) -> str:
            return slug

    assert Repo("a").get("x") == "a/x" and Repo("a").get("x") == "a/x"
    assert Repo("b").get("x") == "b/x"
    assert source.n == {"x": 2}
    with pytest.raises(TypeError, match=r"Repo\.unkeyed: argument 'self'"):
        Repo("a").unkeyed("x")


def test_values_over_max_entry_bytes_are_returned_not_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mw, clock, runner = middleware(max_entry_bytes=1000)
    source = Calls()

    @mw.cached()
    def big() -> str:
        source("big")
        return "x" * 2000

    with caplog.at_level(logging.WARNING, logger="wsgi_isr"):
        assert big() == "x" * 2000
    assert "not caching" in caplog.text and "big" in caplog.text
    assert big() == "x" * 2000
    assert source.n == {"big": 2} and mw.store.count() == 0


# -- which middleware ----------------------------------------------------------------------------


@pytest.fixture
def no_instances(monkeypatch: pytest.MonkeyPatch) -> Iterator[weakref.WeakSet[Any]]:
    alive: weakref.WeakSet[Any] = weakref.WeakSet()
    monkeypatch.setattr("wsgi_isr.invalidation.instances", alive)
    yield alive


def test_module_level_cached_finds_its_middleware(no_instances: weakref.WeakSet[Any]) -> None:
    source = Calls()

    @cached(tags=["t"])
    def value() -> int:
        return source("v")

    with pytest.raises(RuntimeError, match=r"no ISRMiddleware.*mw\.cached"):
        value()
    one, _, _ = middleware()
    no_instances.add(one)
    assert value() == 1 and value() == 1  # the only one in the process
    two, clock, _ = middleware(app=page_app(**{"/": (value, [("X-ISR-Revalidate", "60")])}))
    no_instances.add(two)
    with pytest.raises(RuntimeError, match=r"2 ISRMiddleware instances.*mw\.cached"):
        value()
    # while a middleware handles a request, that one: its own store, its page's tags
    assert Client(two).get("/").json == 2
    clock.advance(1)
    two.revalidate_tag("t")
    assert Client(two).get("/").headers["X-ISR-Cache"] == "STALE"
    # a background regeneration (another thread, in production) still knows its middleware
    assert two.join()
    page = Client(two).get("/")
    assert (page.headers["X-ISR-Cache"], page.json) == ("HIT", 3)


def test_flask_isr_cached_uses_the_apps_middleware() -> None:
    app = Flask(__name__)
    isr = ISR(store="memory://")
    source = Calls()

    @isr.cached(tags=["menu"])
    def menu() -> list[str]:
        source("menu")
        return ["home", "blog"]

    @app.get("/")
    @isr.page(revalidate=False)
    def index() -> Any:
        return {"menu": menu()}

    isr.init_app(app)
    client = app.test_client()
    assert client.get("/").json == {"menu": ["home", "blog"]}
    assert menu() == ["home", "blog"] and source.n == {"menu": 1}
    isr.revalidate_tag("menu")
    assert client.get("/").headers["X-ISR-Cache"] == "STALE"


def test_cli_and_endpoint_invalidate_data_and_pages_in_one_call() -> None:
    app = Flask(__name__)
    runner = ManualRunner()
    isr = ISR(store="memory://", runner=runner, secret="s" * 32)
    source = Calls()

    @isr.cached(tags=["menu"])
    def menu() -> int:
        return source("menu")

    @app.get("/")
    @isr.page(revalidate=False)
    def index() -> Any:
        return {"menu": menu()}

    isr.init_app(app)
    client = app.test_client()
    assert client.get("/").json == {"menu": 1}
    cli = app.test_cli_runner()
    assert cli.invoke(args=["isr", "revalidate", "--tag", "menu"]).exit_code == 0
    assert menu() == 1 and len(runner.tasks) == 1, "soft: stale data, one refresh"
    assert client.get("/").headers["X-ISR-Cache"] == "STALE"
    runner.run()  # the data refresh and the page's regeneration
    assert (menu(), client.get("/").json) == (2, {"menu": 2})
    assert source.n == {"menu": 2}, "the regeneration read the refreshed value"

    assert cli.invoke(args=["isr", "revalidate", "--tag", "menu", "--hard"]).exit_code == 0
    assert menu() == 3 and runner.tasks == [], "hard: expired, called in the foreground"
    reply = client.post(
        "/_isr/revalidate",
        json={"tag": "menu", "mode": "hard"},
        headers={"Authorization": "Bearer " + "s" * 32},
    )
    assert reply.status_code == 200
    page = client.get("/")
    assert (page.headers["X-ISR-Cache"], page.json) == ("MISS", {"menu": 4})


def test_prebuild_renders_with_its_own_middleware(no_instances: weakref.WeakSet[Any]) -> None:
    """Two middlewares in one process (no request): ``mw.prebuild`` still tells
    ``wsgi_isr.cached`` which store to use."""

    @cached(tags=["t"])
    def value() -> str:
        return "v"

    one, _, _ = middleware(app=page_app(**{"/": (value, [("X-ISR-Revalidate", "60")])}))
    two, _, _ = middleware()
    no_instances.add(one)
    no_instances.add(two)
    report = one.prebuild(["/"])
    assert report.ok and report.built == ["/"], report.summary()
    assert isinstance(one.store.lookup(value.key())[0], DataEntry)
    assert two.store.lookup(value.key())[0] is None


def test_flask_background_refresh_runs_in_an_app_context() -> None:
    """A view served to a visitor with cookies reads stale data outside a cached render;
    its background refresh (another thread, no request) still has the app context."""
    from flask import current_app, g

    app = Flask(__name__)
    app.config["SITE"] = "blog"
    runner = ManualRunner()
    isr = ISR(store="memory://", runner=runner, bypass_cookies=["session"])
    source = Calls()

    @isr.cached(tags=["site"])
    def site() -> str:
        g.used = True  # needs an app context
        return f"{current_app.config['SITE']} {source('site')}"

    @app.get("/")
    @isr.page(revalidate=False)
    def index() -> Any:
        return {"site": site()}

    isr.init_app(app)
    client = app.test_client()
    assert client.get("/").json == {"site": "blog 1"}
    isr.revalidate_tag("site")
    visitor = app.test_client()
    visitor.set_cookie("session", "me")
    personal = visitor.get("/")
    assert personal.headers["X-ISR-Cache"] == "BYPASS"  # the view ran for this visitor
    assert personal.json == {"site": "blog 1"}  # with the stale value, at once
    assert runner.run() == 1  # the data refresh, in the runner
    assert source.n == {"site": 2}
    with app.app_context():
        assert site() == "blog 2"


def test_a_cached_dict_comes_back_in_its_own_order() -> None:
    """Stored with sorted keys, a hit gave ``{"apple", "zebra"}`` where the function (and
    the miss) gave ``{"zebra", "apple"}``: a page regenerated from a hit listed things in
    another order. Arguments are still one key however their dicts were built."""
    mw = ISRMiddleware(lambda e, s: [], store="memory://")
    calls = []

    @mw.cached(tags=["cats"])
    def categories(options: dict[str, int]) -> dict[str, Any]:
        calls.append(options)
        return {"zebra": 9, "apple": 1, "nested": {"b": 2, "a": 1}}

    miss = categories({"x": 1, "y": 2})
    hit = categories({"y": 2, "x": 1})
    assert len(calls) == 1
    assert list(miss) == list(hit) == ["zebra", "apple", "nested"]
    assert list(hit["nested"]) == ["b", "a"]
