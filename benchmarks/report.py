"""Turning a run's results into tables: the console summary and ``benchmarks/RESULTS.md``."""

from __future__ import annotations

from typing import Any

MB = 1024 * 1024


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _ms(x: float) -> str:
    return f"{x:.2f}"


# -- targets ----------------------------------------------------------------------------------

#: issue 16: hits nearly free; one round trip per hit is the floor for Redis alone
THROUGHPUT_TARGETS = {
    "isr-memory": 0.90,
    "isr-file": 0.90,
    "isr-redis": 0.55,
    "isr-redis-local": 0.90,
}
#: Hit throughput on the most pages against the fewest (issue 16, target 2): 0.8 for the
#: file store as configured by default (most hits on 100,000 pages read their file), 0.9
#: for every row whose in-process copies hold every page (the file row's memo included).
SCALING_TARGETS = {"file-default-memo": 0.8}

#: (ISR contender, Flask-Caching contender) compared: every store with SimpleCache, and
#: with Flask-Caching on the same backend
FLASK_CACHING_PEERS = (
    ("isr-memory", "flask-caching"),
    ("isr-file", "flask-caching"),
    ("isr-file", "flask-caching-file"),
    ("isr-redis", "flask-caching"),
    ("isr-redis", "flask-caching-redis"),
    ("isr-redis-local", "flask-caching"),
    ("isr-redis-local", "flask-caching-redis"),
)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every issue target this run measured; met is None
    when it could not be judged."""
    rows: list[tuple[str, str, bool | None]] = []
    tp = results.get("throughput", {}).get("contenders", {})
    for name, want in THROUGHPUT_TARGETS.items():
        if name in tp:
            got = tp[name]["ratio"]
            by_cpu = tp[name].get("cpu_ratio")
            cpu = f" (from server CPU per request: {by_cpu:.2f})" if by_cpu else ""
            own = tp[name].get("headers_cpu_ratio")
            if own is not None:  # the middleware's own cost, the headers aside
                cpu += f"; by CPU {own:.2f} × bare-headers"
            rows.append((f"{name} hit ≥ {want:.2f} × bare", f"{got:.2f} × bare{cpu}", got >= want))
    for name, fc_name in FLASK_CACHING_PEERS:
        if name in tp and fc_name in tp:
            isr, fc = tp[name], tp[fc_name]
            got = isr["rps"] / fc["rps"]
            both = fc.get("cpu_us") and isr.get("cpu_us")
            by_cpu = fc["cpu_us"] / isr["cpu_us"] if both else None
            cpu = f" (by server CPU per request: {by_cpu:.2f})" if by_cpu else ""
            rows.append((f"{name} hit ≥ 1.7 × {fc_name}", f"{got:.2f} ×{cpu}", got >= 1.7))
    for job, r in results.get("stale", {}).items():
        where = f"{r['store']}, {r['connections']} connections" if "store" in r else job
        rows.append(
            (
                f"STALE p99 ≤ 1.2 × HIT p99 while a render takes 2 s ({where})",
                f"{r['stale']['p99_ms']:.2f} / {r['hit']['p99_ms']:.2f} ms"
                f" = {r['p99_ratio']:.2f} ×",
                r["p99_ratio"] <= 1.2,
            )
        )
    co = results.get("coalescing", {})
    for name, r in co.get("stampede", {}).items():
        rows.append(
            (
                f"{r['requests']} concurrent requests on a stale key → 1 regeneration ({name})",
                f"{r['regenerations']} regeneration(s)",
                r["regenerations"] == 1,
            )
        )
    for name, r in co.get("first", {}).items():
        per = r["renders_per_process"]
        rows.append(
            (
                f"{r['requests']} concurrent first requests → ≤ 1 render per process ({name})",
                f"{r['renders']} render(s), per process {per}",
                bool(per) and max(per) <= 1,
            )
        )
    for st, r in results.get("scaling", {}).get("stores", {}).items():
        sizes = results["scaling"]["sizes"]
        by_cpu = r.get("last_first_cpu")
        target = SCALING_TARGETS.get(st, 0.9)
        rows.append(
            (
                f"hit throughput flat from {sizes[0]:,} to {sizes[-1]:,} pages,"
                f" last/first ≥ {target} ({st})",
                f"{r['last_first']:.2f}"
                + (f" (from server CPU per request: {by_cpu:.2f})" if by_cpu else ""),
                r["last_first"] >= target,
            )
        )
        rv = r["revalidate"]
        if rv is None:  # a per-process store: no other process to invalidate from
            continue
        ratio = rv["all"] / rv["few"]
        rows.append(
            (
                f"revalidate_tag: tag on {sizes[-1]:,} pages ≤ 2 × tag on 10 pages ({st})",
                f"{rv['all']:.3f} / {rv['few']:.3f} ms = {ratio:.2f} ×",
                ratio <= 2,
            )
        )
    mem = results.get("memory")
    if mem:
        allowed = mem["bound_bytes"] + 32 * MB
        rows.append(
            (
                f"memory store RSS after {mem['urls']:,} URLs within its bound "
                f"({mem['max_entries']:,} entries) + interpreter overhead (32 MB allowed)",
                f"+{mem['growth'] / MB:.1f} MB vs bound {mem['bound_bytes'] / MB:.1f} MB",
                mem["growth"] <= allowed,
            )
        )
    return rows


# -- rendering --------------------------------------------------------------------------------


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """The whole report as Markdown (also what the console shows)."""
    out = ["# wsgi_isr benchmark results", ""]
    out.append(
        "Produced by [`benchmarks/run.py`](run.py) (what each section measures: "
        "[README](README.md)); the seed's scenarios come from "
        "[`seed_scenarios.py`](seed_scenarios.py).\n"
    )
    out.append(f"Command: `{meta['command']}`  ")
    out.append(
        f"Load: {meta['load']}; {meta['settings']}  \n"
        f"Servers: every Python contender under `gunicorn -k gevent -w 2` on its own loopback "
        f"port; nginx with `worker_processes 2`. Rounds alternate between contenders (order "
        f"rotated each round); figures are medians over rounds, ratios are medians of the "
        f"per-round ratios.  \nRun took {meta['elapsed']:.0f} s; load average "
        f"{meta['load_before']} before, {meta['load_after']} after."
    )
    out += ["", "Machine:", ""]
    out.append(_table(["", ""], [[k, v] for k, v in meta["machine"].items()]))
    rows = targets(results)
    if rows:
        out += ["", "## Targets (issues 5 and 16)", ""]
        verdict = {True: "met", False: "**missed**", None: "n/a"}
        out.append(_table(["target", "measured", ""], [[t, m, verdict[ok]] for t, m, ok in rows]))
    for name, section in results.items():
        out += ["", *_SECTION_RENDERERS[name](section)]
    return "\n".join(out) + "\n"


def _throughput(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Hit throughput, side by side",
        "",
        "`server CPU` is the user + system CPU of the contender's processes (gunicorn master "
        "and workers, nginx, and redis-server for the Redis stores) per request served; "
        "`× bare by CPU` is bare's CPU per request over the contender's (median of the "
        "per-round ratios): the throughput ratio a CPU-bound server reaches, much less moved "
        "by other load on the machine than req/s. `× bare-headers` is the same ratio by CPU "
        "to `bare-headers`, which sends the headers a wsgi_isr hit sends: the cost of the "
        "middleware itself, the server's cost of sending more headers aside. `errors` are "
        "socket errors (wrk's 2 s timeout included) and non-2xx/3xx answers.",
        "",
    ]
    rows = []
    for name, c in r["contenders"].items():
        rows.append(
            [
                name,
                c["what"],
                _n(c["rps"]),
                f"{_n(c['rps_min'])}–{_n(c['rps_max'])}",
                _ms(c["p50_ms"]),
                _ms(c["p99_ms"]),
                f"{c['ratio']:.2f}",
                _n(c["cpu_us"]) if c.get("cpu_us") else "",
                f"{c['cpu_ratio']:.2f}" if c.get("cpu_ratio") else "",
                f"{c['headers_cpu_ratio']:.2f}"
                if c.get("headers_cpu_ratio") and name.startswith("isr-")
                else "",
                str(c["errors"]),
                ", ".join(f"{k}×{v}" for k, v in c["check"].items()),
            ]
        )
    lines.append(
        _table(
            [
                "contender",
                "what",
                "req/s",
                "range",
                "p50 ms",
                "p99 ms",
                "× bare",
                "server CPU µs/req",
                "× bare by CPU",
                "× bare-headers by CPU",
                "errors",
                "check (10 fetches)",
            ],
            rows,
        )
    )
    for name, why in r["skipped"].items():
        lines.append(f"\n- skipped {name}: {why}")
    lines += _cpu_split(r)
    return lines


_ROLES = (("workers", "gunicorn workers (app + middleware)"), ("master", "gunicorn master"))


def _cpu_split(r: dict[str, Any]) -> list[str]:
    """Server CPU per request by process: where a request's CPU is spent."""
    rows = []
    for name, c in r["contenders"].items():
        parts = c.get("cpu_parts_us") or {}
        if not parts or name == "nginx":
            continue
        total = sum(parts.values())
        cells = [_n(parts[k]) if k in parts else "" for k, _ in _ROLES]
        redis = parts.get("redis-server")
        cells.append(f"{_n(redis)} ({redis / total:.0%})" if redis is not None else "")
        rows.append([name, *cells, _n(total)])
    if not rows:
        return []
    header = ["contender", *(label for _, label in _ROLES), "redis-server", "sum"]
    return [
        "",
        "Server CPU per request by process (µs, median over rounds of each part, so the "
        "sum can differ a little from the column above): the gunicorn workers run the app, "
        "the middleware and the Redis client; redis-server is the store's own share.",
        "",
        _table(header, rows),
        *_worker_shares(r),
    ]


def _worker_shares(r: dict[str, Any]) -> list[str]:
    """Inside a worker: py-spy's shares of its busy time, and the µs per request they
    make of the workers' CPU above."""
    sampled = r.get("worker_shares") or {}
    groups = sorted({g for s in sampled.values() for g in s})
    rows = []
    for name, shares in sampled.items():
        workers = (r["contenders"].get(name, {}).get("cpu_parts_us") or {}).get("workers")
        cells = []
        for g in groups:
            share = shares.get(g, 0.0)
            us = f"{_n(share * workers)} µs, " if workers else ""
            cells.append(f"{us}{share:.0%}")
        rows.append([name, *cells])
    if not rows:
        return []
    return [
        "",
        "Inside one gunicorn worker (py-spy samples of its busy time under the same load, "
        "after the measured rounds; µs per request = share × the workers' CPU above). "
        "A sample counts for the first found on its stack: the store client (wsgi_isr's "
        "Redis store, redis-py, hiredis: the round trip and its socket calls), the cache "
        "layer (the rest of wsgi_isr; Flask-Caching and cachelib), the app (Flask, "
        "werkzeug), else the server (gunicorn's HTTP parsing and writing, gevent's hub).",
        "",
        _table(["contender", *groups], rows),
    ]


def _per(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _stale(r: dict[str, Any]) -> list[str]:
    lines = [
        "## STALE against HIT latency while a render takes 2 s",
        "",
        "`/slow` is fresh for 1 s and takes 2 s to render, so it is always stale with one "
        "regeneration in flight; `/page` is a plain hit on the same server. The server is "
        "loaded by the load generator (half `/page`, half `/slow`) while 4 probe connections "
        "alternate `/page` and `/slow` and time every request, so both see the same load; "
        "percentiles are over every probe sample of every round. Redis commands per request "
        "(load and probe, half `/page`, half `/slow`; median of the rounds) count what a STALE "
        "visitor costs over a HIT whatever the noise on the machine: a HIT costs one "
        "(none with the local layer).",
        "",
    ]
    rows = []
    for job, x in r.items():
        hit, stl = x["hit"], x["stale"]
        rows.append(
            [
                x.get("store", job),
                str(x.get("connections", "")),
                _n(x["load"]["rps"]),
                f"{_ms(hit['p50_ms'])} / {_ms(hit['p99_ms'])}",
                f"{_ms(stl['p50_ms'])} / {_ms(stl['p99_ms'])}",
                f"{x['p99_ratio']:.2f}",
                _per(x.get("redis_commands_per_request")),
                f"{hit['samples']:,} / {stl['samples']:,}",
                _fmt_tally(x["tally"]),
            ]
        )
    lines.append(
        _table(
            [
                "store",
                "load connections",
                "load req/s",
                "HIT p50 / p99 ms",
                "STALE p50 / p99 ms",
                "STALE/HIT p99",
                "Redis commands / request",
                "samples",
                "probe replies",
            ],
            rows,
        )
    )
    return lines


def _coalescing(r: dict[str, Any]) -> list[str]:
    lines = ["## Coalescing", ""]
    rows = [
        [
            name,
            str(x["requests"]),
            str(x["renders"]),
            str(x["renders_per_process"]),
            f"{x['max_seconds']:.2f}",
            _fmt_tally(x["replies"]),
        ]
        for name, x in r["first"].items()
    ]
    lines.append("Concurrent first requests on a page never rendered (render takes 0.5 s):\n")
    lines.append(
        _table(["store", "requests", "renders", "per process", "slowest s", "replies"], rows)
    )
    rows = [
        [
            name,
            str(x["requests"]),
            str(x["regenerations"]),
            f"{x['p99_seconds'] * 1e3:.1f}",
            _fmt_tally(x["replies"]),
        ]
        for name, x in r["stampede"].items()
    ]
    lines.append(
        "\nConcurrent requests right after a soft `revalidate_tag` of a cached page "
        "(through `POST /_isr/revalidate`):\n"
    )
    lines.append(_table(["store", "requests", "regenerations", "p99 ms", "replies"], rows))
    for name, why in r["skipped"].items():
        lines.append(f"\n- skipped {name}: {why}")
    return lines


def _fmt_tally(t: dict[str, int]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(t.items()))


def _visited(visited: dict[str, dict[str, int]]) -> str:
    """``every answer a HIT`` when so; otherwise the rows whose answers were not all HITs."""
    odd = {row: seen for row, seen in visited.items() if set(seen) != {"200 HIT"}}
    if not odd:
        return "every answer a HIT"
    return "; ".join(f"{row}: {_fmt_tally(seen)}" for row, seen in odd.items())


def _scaling(r: dict[str, Any]) -> list[str]:
    sizes = r["sizes"]
    lines = [
        "## Scaling with the number of cached pages",
        "",
        f"Random pages out of N pre-filled ones (through `Store.put`; "
        f"{r['prefill_seconds']:.0f} s for the shared stores; memory:// and the local "
        "layer's copies are filled by each worker at start-up, `BENCH_PREFILL`, with bounds "
        "that hold every page and, for the local layer, `local_ttl=3600`; the `file` row's "
        "workers read every page into a memo that holds them all, `file-default-memo` keeps "
        "the default 64 MB memo, ~15,600 such pages: past that most of its hits read their "
        "file). Every page of "
        "every row was requested once before the rounds"
        + (f" ({_visited(r['visited'])})" if r.get("visited") else "")
        + ": a file's first read after its write costs the kernel more, once per write.",
        "",
    ]
    rows = []
    for st, x in r["stores"].items():
        cells = []
        for n in sizes:
            size = x["sizes"][str(n)]
            cpu = f", {_n(size['cpu_us'])} µs CPU" if size.get("cpu_us") else ""
            cells.append(f"{_n(size['rps'])} (p99 {_ms(size['p99_ms'])} ms{cpu})")
        by_cpu = x.get("last_first_cpu")
        rows.append([st, *cells, f"{x['last_first']:.2f}", f"{by_cpu:.2f}" if by_cpu else ""])
    lines.append(
        _table(
            [
                "store",
                *[f"{n:,} pages: req/s" for n in sizes],
                "last/first",
                "last/first by CPU",
            ],
            rows,
        )
    )
    lines += ["", "`revalidate_tag` (median ms; then the first lookup by another process):", ""]
    rows = []
    for st, x in r["stores"].items():
        rv = x["revalidate"]
        if rv is None:
            continue
        rows.append(
            [
                st,
                f"{rv['few']:.3f}",
                f"{rv['all']:.3f}",
                f"{rv['all'] / rv['few']:.2f}",
                f"{rv['few_lookup']:.3f}",
                f"{rv['all_lookup']:.3f}",
            ]
        )
    lines.append(
        _table(
            [
                "store",
                "tag on 10 pages",
                f"tag on {sizes[-1]:,} pages",
                "ratio",
                "next lookup (10)",
                f"next lookup ({sizes[-1]:,})",
            ],
            rows,
        )
    )
    return lines


def _memory(r: dict[str, Any]) -> list[str]:
    return [
        "## Memory store bound",
        "",
        _table(
            ["", ""],
            [
                ["distinct URLs served", _n(r["urls"])],
                ["max_entries", _n(r["max_entries"])],
                ["entries held at the end", _n(r["entries_held"])],
                ["one entry (2 KB page, key, bookkeeping)", f"{r['entry_bytes']:,.0f} B"],
                ["bound: max_entries × entry", f"{r['bound_bytes'] / MB:.1f} MB"],
                ["unbounded would hold", f"{r['unbounded_bytes'] / MB:.1f} MB"],
                ["RSS before (interpreter, Flask, wsgi_isr)", f"{r['baseline_rss'] / MB:.1f} MB"],
                ["RSS after", f"{r['rss'] / MB:.1f} MB"],
                ["RSS growth", f"{r['growth'] / MB:.1f} MB"],
                [
                    "RSS growth after N URLs",
                    ", ".join(
                        f"{int(n):,}: {b / MB:.1f} MB" for n, b in r.get("growth_curve", {}).items()
                    ),
                ],
                ["time (in-process misses)", f"{r['seconds']:.1f} s"],
                *[
                    [f"one write into a full store of {int(n):,} entries", f"{ms:.3f} ms"]
                    for n, ms in r.get("full_put_ms", {}).items()
                ],
            ],
        ),
    ]


def _stores(r: dict[str, Any]) -> list[str]:
    dec, w = r["decode"], r["writes"]
    lines = [
        "## Store records and bounds (issue 10)",
        "",
        "Decoding one page record (best of 7 runs, µs): the versioned non-executable format "
        "against the pickle it replaced.",
        "",
        _table(
            ["page", "codec decode", "pickle decode", "codec encode", "pickle encode", "bytes"],
            [
                [
                    size,
                    f"{d['codec_decode_us']:.2f}",
                    f"{d['pickle_decode_us']:.2f}",
                    f"{d['codec_encode_us']:.2f}",
                    f"{d['pickle_encode_us']:.2f}",
                    f"{d['codec_bytes']:,} / {d['pickle_bytes']:,}",
                ]
                for size, d in dec.items()
            ],
        ),
        "",
        f"One write of a new 2 KiB page, into an empty store and into one holding "
        f"max_entries = {w['entries']:,} records (every write evicts one); "
        f"{w['samples']:,} writes each, µs (target: full / empty ≤ 2).",
        "",
        _table(
            ["store", "empty median", "full median", "empty mean", "full mean", "full / empty"],
            [
                [
                    name,
                    f"{x['empty']['median_us']:.1f}",
                    f"{x['full']['median_us']:.1f}",
                    f"{x['empty']['mean_us']:.1f}",
                    f"{x['full']['mean_us']:.1f}",
                    f"{x['ratio_median']:.2f} (mean {x['ratio_mean']:.2f})",
                ]
                for name, x in w["stores"].items()
            ],
        ),
    ]
    f = w["stores"].get("file", {})
    if "compaction_seconds" in f:
        lines += [
            "",
            f"The full file store also compacts its eviction journal once per "
            f"{w['entries']:,} + 65,536 writes: {f['compaction_seconds'] * 1e3:.0f} ms each "
            f"time, {f['compaction_us_per_write']:.1f} µs per write spread out.",
        ]
    return lines


def _profile(r: dict[str, Any]) -> list[str]:
    pages = r.get("pages", 0)
    lines = [
        "## Cost of one hit, in process (no server, no network)",
        "",
        f"One call of the WSGI app, on one page again and again, and on random pages out of "
        f"{pages:,} cached ones (per-key memos stop helping once the pages outnumber them).",
        "",
    ]
    rows = [[name, f"{c['one']:.1f}", f"{c['many']:.1f}"] for name, c in r["cost_us"].items()]
    lines.append(_table(["app", "µs per call, one page", f"µs per call, {pages:,} pages"], rows))
    for name, prof in r["profiles"].items():
        lines += ["", f"cProfile of {name} hits, top functions by own time:", ""]
        lines.append(
            _table(
                ["function", "calls", "own %", "cumulative %"],
                [
                    [
                        f"`{p['function']}`",
                        _n(p["calls"]),
                        f"{p['tottime_pct']:.1f}",
                        f"{p['cumtime_pct']:.1f}",
                    ]
                    for p in prof
                ],
            )
        )
    if r.get("pyinstrument"):
        lines += [
            "",
            "<details><summary>pyinstrument, isr-memory hits</summary>",
            "",
            "```",
            r["pyinstrument"].strip(),
            "```",
            "</details>",
        ]
    return lines


def _seed(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Seed scenarios",
        "",
        "Full rebuild against ISR on the example blog, from "
        "[`benchmarks/seed_scenarios.py`](seed_scenarios.py): "
        f"`python {' '.join(r['command'])}`",
        "",
        "```",
    ]
    lines.append((r.get("output") or r.get("error", "")).rstrip())
    lines.append("```")
    return lines


_SECTION_RENDERERS = {
    "throughput": _throughput,
    "stale": _stale,
    "coalescing": _coalescing,
    "scaling": _scaling,
    "memory": _memory,
    "stores": _stores,
    "profile": _profile,
    "seed": _seed,
}
