"""Where the microseconds of one ISR hit go, step by step, per store (in process).

    python benchmarks/hit_split.py [PAGES] [--redis redis://127.0.0.1:6379/0] [--wsgi-isr DIR]
        [--only isr-memory,isr-file,isr-file-no-memo,isr-redis,isr-redis-local]

Each step of the middleware's hit path is timed on its own, on random pages out of
``PAGES`` (5,000) cached ones (every store bounded to hold them all), with the objects a
real hit would use: the request key,
the store lookup, the store clock, the freshness check, the header list, the 304 check,
the counter; then the whole call through the middleware (Flask's ``wsgi_app`` hop
included) and the bare app, for reference. ``isr-file-no-memo`` is the file store on
the same directory with ``memo_bytes=0``: every hit reads and decodes its file. Steps
are timed apart, so their sum is a little more than the whole (a loop and a call each).
``--wsgi-isr DIR``: the package from another checkout (``git worktree add ../before
main``), for a before/after comparison with the same harness. ``PROFILE.md`` reads these figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import probes  # noqa: E402


def _per_call_us(fn: Callable[[Any], object], args: list[Any], repeat: int = 5) -> float:
    """Median over ``repeat`` passes of the µs ``fn(arg)`` takes, over ``args``."""
    results = []
    for _ in range(repeat):
        # this thread's CPU time: on a shared machine, the time others' processes take
        # the core from it does not count (their cache traffic still does)
        t0 = time.thread_time()
        for a in args:
            fn(a)
        results.append((time.thread_time() - t0) / len(args) * 1e6)
    return sorted(results)[len(results) // 2]


def split(app: Any, visits: list[dict[str, Any]]) -> dict[str, float]:
    """µs per step of a hit through ``app`` (an ``isr_app``), over ``visits``."""
    from wsgi_isr import responses as R
    from wsgi_isr.keys import request_key

    mw = app.wsgi_app
    store = mw.store
    rks = [request_key(env, query_params=mw.query_params) for env in visits]
    keys = [rk.key for rk in rks if rk is not None]
    found = [store.lookup(k) for k in keys]
    now = store.now()
    pairs = [(record, tags) for record, tags in found]

    def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        return None

    steps = {
        "request_key": _per_call_us(
            lambda env: request_key(env, query_params=mw.query_params), visits
        ),
        "store.lookup": _per_call_us(store.lookup, keys),
        "store.now": _per_call_us(lambda _: store.now(), keys),
        "Entry.state": _per_call_us(lambda p: p[0].state(now, p[1]), pairs),
        "entry_headers": _per_call_us(lambda p: R.entry_headers(p[0], now, R.HIT), pairs),
        "not_modified": _per_call_us(
            lambda i: R.not_modified(pairs[i][0], visits[i]), list(range(len(pairs)))
        ),
        "stats.incr": _per_call_us(lambda _: mw.stats.incr("hits"), keys),
        "whole call": _per_call_us(lambda env: probes.call(app, env), visits),
        "bare app call": _per_call_us(lambda env: probes.call(probes.bare_app(), env), visits),
    }
    steps["whole call, less bare"] = steps["whole call"] - steps["bare app call"]
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("pages", nargs="?", type=int, default=5_000)
    parser.add_argument("--redis", help="redis URL base (no prefix), for the redis rows")
    parser.add_argument("--wsgi-isr", help="a checkout whose wsgi_isr package to measure")
    parser.add_argument("--only", help="comma-separated stores (isr-memory,isr-file,...)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    if args.wsgi_isr:
        sys.path.insert(0, os.path.abspath(args.wsgi_isr))
    import wsgi_isr
    from benchmarks.apps import isr_app

    logging.disable(logging.WARNING)
    pages = probes.many_pages(args.pages)
    bound = 2 * args.pages + 1000
    work = tempfile.mkdtemp(prefix="hit-split-")
    stores: dict[str, tuple[str, dict[str, Any]]] = {
        "isr-memory": (f"memory://?max_entries={bound}", {}),
        "isr-file": (f"file://{work}/file?max_entries={bound}", {}),
        # the same directory without the per-process memo: every hit reads and decodes its
        # file, so this row shows what a hit outside the memo costs, at any number of pages
        "isr-file-no-memo": (f"file://{work}/file?max_entries={bound}&memo_bytes=0", {}),
    }
    if args.redis:
        sep = "&" if "?" in args.redis else "?"
        tag = os.getpid()
        local = {"local_ttl": 3600.0, "local_max_entries": bound, "local_max_bytes": "8GB"}
        stores["isr-redis"] = (f"{args.redis}{sep}prefix=split{tag}:", {})
        stores["isr-redis-local"] = (f"{args.redis}{sep}prefix=splitlocal{tag}:", local)
    if args.only:
        stores = {k: v for k, v in stores.items() if k in args.only.split(",")}
    apps = {}
    for name, (url, options) in stores.items():
        app = isr_app(url, render_seconds=0, **options)
        for page in pages:  # a miss renders and stores, then a hit
            probes.call(app, page)
            probes.call(app, page)
        apps[name] = app
    print(f"wsgi_isr from {os.path.dirname(wsgi_isr.__file__)}", file=sys.stderr)
    rng = random.Random(5)
    visits = [rng.choice(pages) for _ in range(max(20_000, 2 * len(pages)))]
    out = {name: split(app, visits) for name, app in apps.items()}
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        return
    names = list(out)
    print(
        f"{'µs per hit, random pages of ' + format(args.pages, ','):<34}"
        + "".join(f"{n:>17}" for n in names)
    )
    for step in next(iter(out.values())):
        print(f"{step:<34}" + "".join(f"{out[n][step]:>17.2f}" for n in names))


if __name__ == "__main__":
    main()
