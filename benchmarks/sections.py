"""The measurements of a benchmark run, one function per section of ``run.py``.

Each section starts the servers it needs, measures, stops them, and returns a
JSON-able dict that ``report.py`` turns into tables.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks import probes, spy
from benchmarks.harness import (
    BY_NAME,
    CONTENDERS,
    SECRET,
    Contender,
    Run,
    local_ttl_supported,
)
from benchmarks.load import (
    LoadResult,
    Numbered,
    Paths,
    burst,
    fetch,
    latency_probe,
    median,
    percentile,
    visit_all,
)
from benchmarks.servers import HOST, REPO, Server, Servers, reserve_port


def _line(label: str, r: LoadResult) -> str:
    err = f"  errors {r.errors}" if r.errors else ""
    cpu = f"  cpu {r.cpu_us:6.0f} µs/req" if r.cpu_us else ""
    return (
        f"{label:<20} {r.rps:>9,.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
        f"{cpu}{err}"
    )


def _tally(replies: list[Any]) -> dict[str, int]:
    return dict(collections.Counter(f"{r.status} {r.cache or '-'}" for r in replies))


@dataclasses.dataclass(frozen=True)
class Job:
    """One thing to measure: where, which paths, and the processes whose CPU it costs."""

    port: int
    paths: Paths
    processes: tuple[Server, ...]


def _alternate(
    run: Run, jobs: dict[str, Job], rounds: int, title: str
) -> dict[str, list[LoadResult]]:
    """Measure every job once per round, the order rotated each round; all results kept,
    with the server-side CPU per request."""
    results: dict[str, list[LoadResult]] = {name: [] for name in jobs}
    for r in range(rounds):
        for name in _rotated(list(jobs), r):
            job = jobs[name]
            before = _cpu_parts(job.processes)
            res = run.load(job.port, job.paths)
            parts = {k: v - before.get(k, 0.0) for k, v in _cpu_parts(job.processes).items()}
            cpu = sum(parts.values())
            if res.requests and cpu > 0:
                per = {k: v / res.requests * 1e6 for k, v in parts.items()}
                res = dataclasses.replace(res, cpu_us=cpu / res.requests * 1e6, cpu_parts_us=per)
            results[name].append(res)
            run.say(f"  {title} round {r + 1}/{rounds}  " + _line(name, res))
    return results


def _cpu_parts(processes: tuple[Server, ...]) -> dict[str, float]:
    """CPU seconds so far of every process of a job, by role (summed over servers)."""
    out: dict[str, float] = {}
    for p in processes:
        for role, seconds in p.cpu_parts().items():
            out[role] = out.get(role, 0.0) + seconds
    return out


def _summary(results: list[LoadResult]) -> dict[str, Any]:
    cpu = [r.cpu_us for r in results if r.cpu_us]
    roles = sorted({k for r in results for k in (r.cpu_parts_us or {})})
    return {
        "rps": median([r.rps for r in results]),
        "cpu_us": median(cpu) if cpu else None,
        # per role, the median over rounds (so the parts need not add up to cpu_us exactly)
        "cpu_parts_us": {
            k: median([(r.cpu_parts_us or {})[k] for r in results if k in (r.cpu_parts_us or {})])
            for k in roles
        },
        "p50_ms": median([r.p50_ms for r in results]),
        "p99_ms": median([r.p99_ms for r in results]),
        "rps_min": min(r.rps for r in results),
        "rps_max": max(r.rps for r in results),
        "errors": sum(r.errors for r in results),
        "rounds": [dataclasses.asdict(r) for r in results],
    }


# -- sections ---------------------------------------------------------------------------------


def throughput(run: Run) -> dict[str, Any]:
    """Hit throughput of every contender on ``/page``, rounds alternated, medians."""
    s = run.settings
    names = [c.name for c in CONTENDERS if s.only is None or c.name in s.only]
    if "bare" not in names:
        names.insert(0, "bare")  # every ratio is to the bare app
    if "bare-headers" not in names and any(n.startswith("isr-") for n in names):
        names.insert(1, "bare-headers")  # what the hit's headers cost the server alone
    skipped = {}
    with Servers(run.workdir) as servers:
        live: dict[str, Server] = {}
        for name in names:
            c = BY_NAME[name]
            reason = run.unavailable(c)
            if reason:
                skipped[name] = reason
                run.say(f"  skipping {name}: {reason}")
                continue
            live[name] = run.start(servers, c, "tp")
        servers.wait_ready()
        checks = {}
        for name, server in live.items():
            run.load(server.port, ["/page"], s.warm)  # every worker renders and caches
            checks[name] = _tally([fetch(HOST, server.port, "/page") for _ in range(10)])
            run.say(f"  warmed {name}: {checks[name]}")
        jobs = {
            name: Job(srv.port, ["/page"], (srv, *_backing(run, BY_NAME[name])))
            for name, srv in live.items()
        }
        results = _alternate(run, jobs, s.rounds, "throughput")
        sampled = _where_time_goes(run, live, ("isr-redis", "flask-caching-redis"))
    out: dict[str, Any] = {"skipped": skipped, "contenders": {}, "worker_shares": sampled}
    for name, res in results.items():
        summary = _summary(res)
        for key, reference in (("", "bare"), ("headers_", "bare-headers")):
            if reference not in results:
                continue
            ref = results[reference]
            summary[key + "ratio"] = median([r.rps / b.rps for r, b in zip(res, ref, strict=True)])
            pairs = [(r.cpu_us, b.cpu_us) for r, b in zip(res, ref, strict=True)]
            cpu_ratios = [b / c for c, b in pairs if c and b]
            # the throughput a CPU-bound server would reach against the reference, from
            # CPU per request
            summary[key + "cpu_ratio"] = median(cpu_ratios) if cpu_ratios else None
        summary["check"] = checks[name]
        summary["what"] = BY_NAME[name].what
        out["contenders"][name] = summary
    return out


def _where_time_goes(
    run: Run, live: dict[str, Server], names: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """py-spy samples of one worker of each of ``names`` under the same load, after the
    measured rounds (the sampling slows the worker a little: never during them)."""
    out: dict[str, dict[str, float]] = {}
    if not spy.available():
        return out
    seconds = max(2.0, run.settings.duration)
    for name in names:
        if name not in live:
            continue
        server = live[name]
        load = threading.Thread(target=run.load, args=(server.port, ["/page"], seconds + 1.5))
        load.start()
        time.sleep(0.5)
        got = spy.worker_shares(server.proc.pid, seconds)
        load.join()
        if got:
            out[name] = got
            run.say(f"  py-spy {name}: " + ", ".join(f"{k} {v:.0%}" for k, v in got.items()))
    return out


def _backing(run: Run, c: Contender) -> tuple[Server, ...]:
    """Processes besides the contender's own that each request costs CPU in."""
    return (run.redis(),) if c.store == "redis" else ()


STALE_STORES = (
    Contender("stale-memory", "", "isr", "memory"),
    Contender("stale-file", "", "isr", "file"),
    Contender("stale-redis", "", "isr", "redis"),
    Contender("stale-redis-local", "", "isr", "redis", True),
)


def stale(run: Run) -> dict[str, Any]:
    """STALE against HIT latency on one server while a render takes 2 s (``/slow`` is fresh
    for 1 s, so it is always stale with a regeneration in flight), per store and number
    of load connections."""
    s = run.settings
    contenders = {c.name[len("stale-") :]: c for c in STALE_STORES if not run.unavailable(c)}
    out: dict[str, Any] = {}
    with Servers(run.workdir) as servers:
        live = {st: run.start(servers, c, f"stale-{st}") for st, c in contenders.items()}
        servers.wait_ready()
        with ThreadPoolExecutor(len(live)) as pool:  # the first /slow render takes 2 s each
            list(pool.map(lambda srv: fetch(HOST, srv.port, "/slow"), live.values()))
        time.sleep(1.2)
        for srv in live.values():
            run.load(srv.port, ["/page", "/slow"], s.warm)
        # one job per store and connection count, every job once per round, rotated
        jobs = [f"{st}@{c}" for c in s.stale_connections for st in live]
        samples: dict[str, dict[str, list[float]]] = {j: {"HIT": [], "STALE": []} for j in jobs}
        tallies: dict[str, collections.Counter[str]] = {j: collections.Counter() for j in jobs}
        background: dict[str, list[LoadResult]] = {j: [] for j in jobs}
        # Redis commands per request served (load and probe): what noise on the machine
        # does not move, and what a STALE visitor costs over a HIT (half the load each)
        commands: dict[str, list[float]] = {j: [] for j in jobs}
        for r in range(s.aux_rounds):
            for job in _rotated(jobs, r):
                st, conns = job.split("@")
                port = live[st].port
                on_redis = contenders[st].store == "redis"
                before = _redis_commands(run) if on_redis else 0
                # the load (wrk, half /page, half /slow) and, inside it, the interleaved probe
                with ThreadPoolExecutor(1) as pool:
                    probe = pool.submit(
                        latency_probe, HOST, port, ["/page", "/slow"], max(0.5, s.duration - 1)
                    )
                    load = run.load(port, ["/page", "/slow"], connections=int(conns))
                    got = probe.result()
                background[job].append(load)
                served = load.requests + sum(len(v) for v in got.latencies.values())
                if on_redis and served:
                    commands[job].append((_redis_commands(run) - before) / served)
                for path, kind in (("/page", "HIT"), ("/slow", "STALE")):
                    samples[job][kind] += got.latencies[path]
                    tallies[job].update({f"{path} {k}": v for k, v in got.tally[path].items()})
                hit, stl = _pcts(got.latencies["/page"]), _pcts(got.latencies["/slow"])
                run.say(
                    f"  stale round {r + 1}/{s.aux_rounds}  {st:<11} c{conns:<4} under "
                    f"{load.rps:,.0f} req/s: HIT p50 {hit[0]:.2f} p99 {hit[1]:.2f} ms, "
                    f"STALE p50 {stl[0]:.2f} p99 {stl[1]:.2f} ms"
                )
        for job in jobs:
            st, conns = job.split("@")
            hit, stl = _pcts(samples[job]["HIT"]), _pcts(samples[job]["STALE"])
            out[job] = {
                "store": st,
                "connections": int(conns),
                "hit": {"p50_ms": hit[0], "p99_ms": hit[1], "samples": len(samples[job]["HIT"])},
                "stale": {
                    "p50_ms": stl[0],
                    "p99_ms": stl[1],
                    "samples": len(samples[job]["STALE"]),
                },
                "p99_ratio": stl[1] / hit[1],
                "redis_commands_per_request": median(commands[job]) if commands[job] else None,
                "load": _summary(background[job]),
                "tally": dict(tallies[job]),
            }
    return out


def _redis_commands(run: Run) -> int:
    """Commands the run's redis-server has processed so far."""
    import redis

    client = redis.Redis(host=HOST, port=run.redis().port)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


def _rotated(items: list[str], r: int) -> list[str]:
    k = r % len(items)
    return items[k:] + items[:k]


def _pcts(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms."""
    ordered = sorted(latencies)
    if not ordered:
        return (float("nan"), float("nan"))
    return (percentile(ordered, 50) * 1e3, percentile(ordered, 99) * 1e3)


def _renders(counter_dir: str, name: str) -> collections.Counter[str]:
    try:
        with open(os.path.join(counter_dir, name + ".log")) as f:
            return collections.Counter(line.strip() for line in f if line.strip())
    except FileNotFoundError:
        return collections.Counter()


def _settled(counter_dir: str, name: str, quiet: float) -> collections.Counter[str]:
    """The render counts once they stopped changing for ``quiet`` seconds."""
    last = _renders(counter_dir, name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = _renders(counter_dir, name)
        if now == last:
            return now
        last = now
    return last


def coalescing(run: Run) -> dict[str, Any]:
    """200 concurrent first requests (renders per process) and 500 concurrent requests on a
    key made stale by a soft ``revalidate_tag`` (regenerations), per store."""
    s = run.settings
    counter_dir = os.path.join(run.workdir, "renders")
    os.makedirs(counter_dir, exist_ok=True)
    kinds = [BY_NAME[n] for n in ("isr-memory", "isr-file", "isr-redis", "isr-redis-local")]
    out: dict[str, Any] = {"first": {}, "stampede": {}, "skipped": {}}
    counted = 0.5
    with Servers(run.workdir) as servers:
        live = {}
        for c in kinds:
            reason = run.unavailable(c)
            if reason:
                out["skipped"][c.name] = reason
                continue
            live[c.name] = run.start(
                servers, c, "co", BENCH_COUNTER_DIR=counter_dir, BENCH_COUNTED_SECONDS=str(counted)
            )
        servers.wait_ready()
        for name, srv in live.items():
            page = f"first-{name}"
            replies = burst(HOST, srv.port, f"/counted/{page}", s.first)
            renders = _settled(counter_dir, page, counted + 0.5)
            out["first"][name] = {
                "requests": s.first,
                "replies": _tally(replies),
                "renders": sum(renders.values()),
                "renders_per_process": sorted(renders.values(), reverse=True),
                "max_seconds": max(r.elapsed for r in replies),
            }
            run.say(f"  first requests {name}: {out['first'][name]}")
        for name, srv in live.items():
            if name == "isr-memory":
                out["skipped"][name + " (stampede)"] = (
                    "per-process store: an invalidation reaches only the worker that took it"
                )
                continue
            page = f"stale-{name}"
            path = f"/counted/{page}"
            warm = [fetch(HOST, srv.port, path).cache for _ in range(3)]
            post = fetch(
                HOST,
                srv.port,
                "/_isr/revalidate",
                method="POST",
                body=json.dumps({"tag": f"c-{page}"}).encode(),
                headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
            )
            replies = burst(HOST, srv.port, path, s.stampede)
            renders = _settled(counter_dir, page, counted + 0.5)
            after = fetch(HOST, srv.port, path).cache
            out["stampede"][name] = {
                "requests": s.stampede,
                "warm": warm,
                "revalidate_status": post.status,
                "replies": _tally(replies),
                "regenerations": sum(renders.values()) - 1,
                "p99_seconds": sorted(r.elapsed for r in replies)[int(0.99 * (len(replies) - 1))],
                "after": after,
            }
            run.say(f"  stampede {name}: {out['stampede'][name]}")
    return out


#: The scaling section's stores: (name, store kind, in-process copies). ``memory`` and the
#: local layer are per process, so each worker fills its own (``BENCH_PREFILL``). Every
#: bound holds every page, the file store's memo of decoded records included (``file``: a
#: hit costs what a memo hit costs, as on the local layer); ``file-default-memo`` keeps
#: the default 64 MB memo, ~15,600 such pages per worker: most hits on 100,000 pages read
#: and decode their file.
_SCALING_STORES = (
    ("memory", "memory", False),
    ("file", "file", True),
    ("file-default-memo", "file", False),
    ("redis", "redis", False),
    ("redis+local", "redis", True),
)
#: What ``bound`` holds for the in-process copies: every page of the largest size.
_EVERY_PAGE_BYTES = "8GB"


def _scaling_contender(st: str, kind: str, local: bool) -> str:
    """The throughput contender a scaling row stands for (what ``--only`` names)."""
    return "isr-redis-local" if kind == "redis" and local else f"isr-{kind}"


def _scaling_env(run: Run, st: str, kind: str, local: bool, size: int, port: int) -> dict[str, str]:
    tag = f"scale-{st.replace('+', '-')}-{size}"
    bound = str(2 * max(run.settings.sizes))  # room for every page, and the markers
    env = {"BENCH_APP": "isr", "BENCH_STORE": run.store_url(kind, tag)}
    if kind == "memory":  # the default bound (10,000) would evict most of 100,000 pages
        env["BENCH_STORE"] = f"memory://?max_entries={bound}"
    elif kind == "file" and local:  # the memo of decoded records holds every page
        env["BENCH_STORE"] += f"?max_entries={bound}&memo_bytes={_EVERY_PAGE_BYTES}"
    elif local:
        # a TTL longer than the run and room for every page: what is measured is a hit on
        # the local copy; a page visited less often than local_ttl costs the redis row's
        # round trip instead
        env.update(
            BENCH_LOCAL_TTL="3600",
            BENCH_LOCAL_MAX_ENTRIES=bound,
            BENCH_LOCAL_MAX_BYTES=_EVERY_PAGE_BYTES,
        )
    if kind == "memory" or local:
        env.update(BENCH_PREFILL=str(size), BENCH_PREFILL_HOST=f"{HOST}:{port}")
    return env


def scaling(run: Run) -> dict[str, Any]:
    """Hit throughput on random pages out of 100 / 10,000 / 100,000 cached ones (memory, file,
    redis, redis + local layer), then the cost of ``revalidate_tag`` for a tag on 10 pages
    against one on every page."""
    s = run.settings
    has_redis = shutil.which("redis-server") is not None
    stores = [x for x in _SCALING_STORES if has_redis or x[1] != "redis"]
    if not local_ttl_supported():  # an older wsgi_isr: no local layer in front of Redis
        stores = [x for x in stores if not (x[1] == "redis" and x[2])]
    if s.only is not None:  # ``--only isr-file,...`` narrows this section too
        stores = [x for x in stores if _scaling_contender(*x) in s.only]
    out: dict[str, Any] = {"sizes": list(s.sizes), "stores": {}}
    with Servers(run.workdir) as servers:
        # the ports are in the keys the stores are filled with: held until each server
        # binds its own (the filling takes a minute; nothing else may take one meanwhile)
        envs: dict[tuple[str, int], tuple[socket.socket, dict[str, str]]] = {}
        for st, kind, local in stores:
            for size in s.sizes:
                held = reserve_port()
                port = held.getsockname()[1]
                envs[(st, size)] = (held, _scaling_env(run, st, kind, local, size, port))
        # the shared stores first: a file store's workers read every page into their memo
        # as they start (BENCH_PREFILL)
        began = time.perf_counter()
        try:
            _prefill_all(
                {
                    k: (env["BENCH_STORE"], f"{HOST}:{held.getsockname()[1]}")
                    for k, (held, env) in envs.items()
                    if not env["BENCH_STORE"].startswith("memory:")
                }
            )
        except BaseException:
            for held, _ in envs.values():
                held.close()
            raise
        # the kernel writes a file store's new pages back some 30 s later: not while the
        # hits are measured (the writeback competes for the same two cores)
        os.sync()
        out["prefill_seconds"] = time.perf_counter() - began
        run.say(f"  pre-filled the shared stores in {out['prefill_seconds']:.0f} s")
        live: dict[tuple[str, int], tuple[Server, str]] = {}
        for (st, size), (held, env) in envs.items():
            port = held.getsockname()[1]
            held.close()
            srv = servers.gunicorn(f"scale-{st}-{size}", env, port=port)
            live[(st, size)] = (srv, env["BENCH_STORE"])
        servers.wait_ready(timeout=180)  # the workers of per-process stores fill them first
        jobs: dict[str, Job] = {}
        for (st, size), (srv, _) in live.items():
            paths = Numbered("/p/", size)
            run.load(srv.port, paths, s.warm)
            # every page once, as on a site that has served since its pages were written:
            # the first read of a file after its write costs the kernel more, once per write
            # (benchmarks/README.md); and a check that the store holds every page
            seen = visit_all(HOST, srv.port, paths)
            run.say(f"  warmed {st} {size:,}, every page once: {seen}")
            out.setdefault("visited", {})[f"{st} {size}"] = seen
            backing = (run.redis(),) if st.startswith("redis") else ()
            jobs[f"{st} {size}"] = Job(srv.port, paths, (srv, *backing))
        results = _alternate(run, jobs, s.aux_rounds, "scaling")
        for st, _kind, _local in stores:
            per = {size: _summary(results[f"{st} {size}"]) for size in s.sizes}
            largest_srv, largest_url = live[(st, s.sizes[-1])]
            timing = None
            if not largest_url.startswith("memory:"):  # another process cannot see it
                timing = probes.revalidate_timing(
                    largest_url, f"{HOST}:{largest_srv.port}", reps=15
                )
                run.say(f"  revalidate_tag {st}: {timing}")
            first, last = per[s.sizes[0]], per[s.sizes[-1]]
            out["stores"][st] = {
                "sizes": {str(k): v for k, v in per.items()},
                "last_first": last["rps"] / first["rps"],
                "last_first_cpu": (
                    first["cpu_us"] / last["cpu_us"] if first["cpu_us"] and last["cpu_us"] else None
                ),
                "revalidate": timing,
            }
    return out


def _prefill_all(targets: dict[tuple[str, int], tuple[str, str]]) -> None:
    """Fill every store through ``Store.put`` in child processes, two chunks per store."""
    jobs = []
    for (_, size), (url, host) in targets.items():
        chunks = 2 if size >= 1000 else 1
        bounds = [size * i // chunks for i in range(chunks + 1)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            jobs.append(
                [sys.executable, "-m", "benchmarks.probes", "prefill", url, host, str(a), str(b)]
            )
    run_one = functools.partial(subprocess.run, cwd=REPO, check=True, capture_output=True)
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        list(pool.map(run_one, jobs))


def memory(run: Run) -> dict[str, Any]:
    """RSS of one process after N distinct URLs through a bounded memory store."""
    s = run.settings
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.probes",
            "memory",
            str(s.memory_urls),
            str(s.memory_max_entries),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(proc.stdout))


def stores(run: Run) -> dict[str, Any]:
    """Record decode cost (codec against the old pickle) and full-vs-empty write cost
    (``benchmarks/store_costs.py``), in a child process of its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.store_costs", str(run.settings.store_entries)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(proc.stdout))


def profile(run: Run) -> dict[str, Any]:
    """In-process cost of one hit per store, and where a hit's time goes."""
    s = run.settings
    redis_base = run.redis().redis_url("") if shutil.which("redis-server") else None
    pages = probes.many_pages(s.profile_pages)
    apps = probes.hit_apps(run.workdir, redis_base, local_ttl_supported(), pages)
    n = max(500, s.profile_hits // 4)
    costs = {}
    for name, app in apps.items():
        one, many = probes.hit_cost_us(app, n), probes.hit_cost_us(app, n, pages)
        costs[name] = {"one": one, "many": many}
        run.say(f"  {name:<32} {one:8.1f} µs per call, {many:8.1f} over {len(pages):,} pages")
    profiles = {}
    for name in ("isr-memory", "isr-file", "isr-redis", "isr-redis-local"):
        if name in apps:
            rows = probes.profile_hits(apps[name], s.profile_hits)
            profiles[name] = [dataclasses.asdict(r) for r in rows]
            rows = probes.profile_hits(apps[name], s.profile_hits, pages)
            profiles[f"{name}, {len(pages):,} pages"] = [dataclasses.asdict(r) for r in rows]
    tree = probes.pyinstrument_text(apps["isr-memory"], 2.0 if s.profile_hits >= 10_000 else 0.5)
    return {"pages": len(pages), "cost_us": costs, "profiles": profiles, "pyinstrument": tree}


def seed(run: Run) -> dict[str, Any]:
    """The seed's scenarios (``benchmarks/seed_scenarios.py``), output kept as is."""
    cmd = [sys.executable, "benchmarks/seed_scenarios.py", *run.settings.seed_args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"command": cmd[1:], "error": proc.stderr[-2000:]}
    return {"command": cmd[1:], "output": proc.stdout}


SECTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "throughput": throughput,
    "stale": stale,
    "coalescing": coalescing,
    "scaling": scaling,
    "memory": memory,
    "stores": stores,
    "profile": profile,
    "seed": seed,
}
