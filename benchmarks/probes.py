"""In-process measurements: store pre-fill, ``revalidate_tag`` timing, the memory store's
RSS, the cost of one hit and where it goes (cProfile / pyinstrument).

The harness calls these; the ones that need a process of their own run as

    python -m benchmarks.probes prefill STORE_URL HOST:PORT COUNT START STOP
    python -m benchmarks.probes memory URLS MAX_ENTRIES

and print JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import json
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from benchmarks.apps import BODY, bare_app, isr_app, page_app

# -- building requests and entries without HTTP ---------------------------------------------


def environ(path: str, host: str) -> dict[str, Any]:
    """A GET environ as gunicorn would pass it (the fields the middleware reads)."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": host.split(":")[0],
        "SERVER_PORT": host.split(":")[1] if ":" in host else "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": host,
        "HTTP_USER_AGENT": "bench",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def call(app: Callable[..., Iterable[bytes]], env: dict[str, Any]) -> bytes:
    body = app(dict(env), _start_response)
    try:
        return b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def scaling_template(host: str) -> Any:
    """A real entry for ``/p/0``, rendered and stored by the middleware itself (memory
    store), to be copied for every pre-filled page."""
    from wsgi_isr import MemoryStore

    store = MemoryStore()
    app = isr_app(store, render_seconds=0)
    call(app, environ("/p/0", host))
    record = store.lookup(_key("/p/0", host))[0]
    if record is None or not hasattr(record, "tags"):
        raise RuntimeError("the middleware did not store /p/0: cannot build the pre-fill entry")
    return record


def _key(path: str, host: str) -> str:
    from wsgi_isr.keys import request_key

    rk = request_key(environ(path, host))
    assert rk is not None
    return rk.key


def _prefill_store(url: str) -> Any:
    from wsgi_isr import FileStore, open_store

    store = open_store(url)
    if isinstance(store, FileStore):
        # unbounded: the prefill must not evict its own pages; the server's own store
        # only reads during the measurement
        store = FileStore(store.path, max_entries=0)
    return store


def prefill(url: str, host: str, start: int, stop: int) -> float:
    """Put pages ``/p/start`` .. ``/p/stop-1`` into the store through ``Store.put``, each
    with its own path tags plus ``all`` (and ``few`` for the first ten). Returns seconds."""
    from wsgi_isr.keys import path_tags, request_key

    template = scaling_template(host)
    store = _prefill_store(url)
    began = time.perf_counter()
    for i in range(start, stop):
        rk = request_key(environ(f"/p/{i}", host))
        assert rk is not None
        tags = ("all", "few") if i < 10 else ("all",)
        entry = dataclasses.replace(template, tags=tags + path_tags(rk.path))
        store.put(rk.key, entry, None)
    store.close()
    return time.perf_counter() - began


def prefill_process(store: Any, host: str, count: int) -> None:
    """Pages ``/p/0`` .. ``/p/<count-1>`` in this process' own store (a worker at start-up,
    ``BENCH_PREFILL``): put into a memory store; kept as the local copies of a local layer,
    whose backend the harness fills with the same pages (nothing is written twice); read
    once from a file store the harness filled, into this process' memo."""
    from wsgi_isr.keys import path_tags, request_key
    from wsgi_isr.stores import LocalLayer
    from wsgi_isr.stores.file import FileStore

    if isinstance(store, FileStore):
        for i in range(count):
            if store.lookup(_key(f"/p/{i}", host))[0] is None:
                raise RuntimeError(f"/p/{i} is not in {store.description}")
        return

    template = scaling_template(host)
    for i in range(count):
        rk = request_key(environ(f"/p/{i}", host))
        assert rk is not None
        tags = ("all", "few") if i < 10 else ("all",)
        entry = dataclasses.replace(template, tags=tags + path_tags(rk.path))
        if isinstance(store, LocalLayer):
            store._remember(rk.key, entry)  # what a first lookup would keep
        else:
            store.put(rk.key, entry, None)


# -- revalidate_tag cost --------------------------------------------------------------------


def revalidate_timing(url: str, host: str, reps: int) -> dict[str, float]:
    """Median ms of ``revalidate_tag("few")`` (10 pages) and ``revalidate_tag("all")`` (every
    pre-filled page), alternated; plus a second process's first lookup after each one."""
    from wsgi_isr import ISRMiddleware, open_store

    mw = ISRMiddleware(bare_app(), store=url)
    reader = open_store(url)  # another worker that has to notice the invalidation
    key = _key("/p/0", host)
    reader.lookup(key)
    times: dict[str, list[float]] = {"few": [], "all": [], "few_lookup": [], "all_lookup": []}
    for _ in range(reps):
        for tag in ("few", "all"):
            t0 = time.perf_counter()
            mw.revalidate_tag(tag)
            t1 = time.perf_counter()
            reader.lookup(key)
            t2 = time.perf_counter()
            times[tag].append((t1 - t0) * 1e3)
            times[f"{tag}_lookup"].append((t2 - t1) * 1e3)
    mw.store.close()
    reader.close()
    return {name: statistics.median(values) for name, values in times.items()}


# -- memory store bound ---------------------------------------------------------------------


def rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tiny_isr_app(store: Any) -> Any:
    """A WSGI callable opting every page in, behind the middleware: the memory probe
    measures the store, not Flask."""
    from wsgi_isr import ISRMiddleware

    headers = [("Content-Type", "text/html; charset=utf-8"), ("X-ISR-Revalidate", "false")]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", headers)
        # a body of its own per page, as a real render makes (not one shared object)
        return [(environ["PATH_INFO"].encode() + BODY)[: len(BODY)]]

    return ISRMiddleware(app, store=store)


def memory_rss(urls: int, max_entries: int) -> dict[str, Any]:
    """RSS of one process after ``urls`` distinct pages went through a memory store
    bounded to ``max_entries``, against that bound."""
    from wsgi_isr import MemoryStore

    store = MemoryStore(max_entries=max_entries)
    app = _tiny_isr_app(store)
    host = "bench.local"
    for i in range(200):  # warm the code paths and allocator pools before the baseline
        call(app, environ(f"/warm/{i}", host))
    gc.collect()
    baseline = rss_bytes()
    began = time.perf_counter()
    checkpoints = {max(1, urls // 10), urls // 2}
    curve = {}
    for i in range(urls):
        call(app, environ(f"/p/{i}", host))
        if i + 1 in checkpoints:
            curve[str(i + 1)] = rss_bytes() - baseline
    elapsed = time.perf_counter() - began
    gc.collect()
    after = rss_bytes()
    held = list(store.pages)  # key -> (expires, record), least recently used first
    sample = [(k, store.pages.get(k)) for k in held[-200:]]
    seen: set[int] = set()  # what entries share (header names, tag prefixes) counts once
    per_entry = sum(deep_size(item, seen) + 40 for item in sample) / len(sample)  # 40: dict slot
    return {
        "urls": urls,
        "max_entries": max_entries,
        "entries_held": len(held),
        "entry_bytes": per_entry,
        "bound_bytes": per_entry * max_entries,
        "unbounded_bytes": per_entry * urls,
        "baseline_rss": baseline,
        "rss": after,
        "growth": after - baseline,
        "growth_curve": {**curve, str(urls): after - baseline},
        "seconds": elapsed,
        "full_put_ms": {str(n): full_store_put_ms(n) for n in (1_000, 10_000)},
    }


def deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes held by ``obj`` and what it references (containers, dataclasses with slots),
    each object counted once per ``seen``."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, tuple | list | set | frozenset):
        size += sum(deep_size(x, seen) for x in obj)
    elif isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        size += sum(deep_size(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return size


def full_store_put_ms(max_entries: int, n: int = 100) -> float:
    """Median ms of one ``put`` of a new page into a memory store that is already full
    (what every miss pays once the bound is reached)."""
    from wsgi_isr import MemoryStore

    template = scaling_template("bench.local")
    store = MemoryStore(max_entries=max_entries)
    for i in range(max_entries + 1):
        store.put(f"fill-{i}", template, None)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        store.put(f"new-{i}", template, None)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# -- one hit: cost and profile --------------------------------------------------------------


HIT_HOST = "127.0.0.1:8000"


def many_pages(count: int) -> list[dict[str, Any]]:
    """Environs for ``/p/0`` .. ``/p/<count-1>``: hits spread over many keys, as a site
    gets them (per-key memos stop helping once the pages outnumber them)."""
    return [environ(f"/p/{i}", HIT_HOST) for i in range(count)]


def hit_apps(
    workdir: str,
    redis_url: str | None,
    local_ttl_supported: bool,
    pages: list[dict[str, Any]],
) -> dict[str, Any]:
    """The in-process contenders, each holding ``/page`` and ``pages`` in its cache (the
    file store under ``workdir``)."""
    apps: dict[str, Any] = {
        "bare": bare_app(),
        "flask, no cache (0 ms render)": page_app(render_seconds=0),
        "isr-memory": isr_app("memory://", render_seconds=0),
        "isr-file": isr_app("file://" + os.path.join(workdir, "store-hit-file"), render_seconds=0),
    }
    if redis_url:
        apps["isr-redis"] = isr_app(redis_url + "hit:", render_seconds=0)
        if local_ttl_supported:
            apps["isr-redis-local"] = isr_app(
                redis_url + "hitlocal:", local_ttl=60.0, render_seconds=0
            )
    env = environ("/page", HIT_HOST)
    for app in apps.values():
        call(app, env)
        call(app, env)
        for page in pages:
            call(app, page)
    return apps


def _visits(n: int, envs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """``n`` requests: ``/page`` every time, or pages of ``envs`` in random order (at least
    two visits per page, so a per-key memo smaller than the site is really exercised)."""
    if not envs:
        return [environ("/page", HIT_HOST)] * n
    rng = random.Random(5)
    return [rng.choice(envs) for _ in range(max(n, 2 * len(envs)))]


def hit_cost_us(app: Any, n: int, envs: list[dict[str, Any]] | None = None) -> float:
    """Median over 5 repetitions of the µs one call takes (environ copy and body join
    included), on ``/page`` or on random pages of ``envs``."""
    visits = _visits(n, envs)
    results = []
    for _ in range(5):
        t0 = time.perf_counter()
        for env in visits:
            call(app, env)
        results.append((time.perf_counter() - t0) / len(visits) * 1e6)
    return statistics.median(results)


@dataclasses.dataclass(frozen=True)
class ProfileRow:
    function: str
    calls: int
    tottime_pct: float
    cumtime_pct: float


def profile_hits(
    app: Any, n: int, envs: list[dict[str, Any]] | None = None, top: int = 14
) -> list[ProfileRow]:
    """cProfile ``n`` hits (on ``/page``, or on random pages of ``envs``); the functions
    with the most own time."""
    visits = _visits(n, envs)
    prof = cProfile.Profile()
    prof.enable()
    for env in visits:
        call(app, env)
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(row[2] for row in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = _short(filename)
        rows.append(ProfileRow(f"{where}:{line}({func})", nc, 100 * tt / total, 100 * ct / total))
    rows.sort(key=lambda r: r.tottime_pct, reverse=True)
    return rows[:top]


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _short(filename: str) -> str:
    """``wsgi_isr/entry.py``, ``werkzeug/http.py``, ``threading.py``, ``~`` (builtins)."""
    if filename.startswith(_REPO):
        return filename[len(_REPO) :]
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    return os.path.basename(filename) or filename


def pyinstrument_text(app: Any, seconds: float) -> str | None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    env = environ("/page", HIT_HOST)
    profiler = Profiler(interval=0.0001)
    profiler.start()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            call(app, env)
    profiler.stop()
    return str(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark probes that need their own process")
    sub = parser.add_subparsers(dest="probe", required=True)
    p = sub.add_parser("prefill")
    p.add_argument("url")
    p.add_argument("host")
    p.add_argument("start", type=int)
    p.add_argument("stop", type=int)
    m = sub.add_parser("memory")
    m.add_argument("urls", type=int)
    m.add_argument("max_entries", type=int)
    args = parser.parse_args()
    if args.probe == "prefill":
        out: Any = {"seconds": prefill(args.url, args.host, args.start, args.stop)}
    else:
        import logging

        logging.disable(logging.WARNING)
        out = memory_rss(args.urls, args.max_entries)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
