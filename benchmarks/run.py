"""The side-by-side benchmark of wsgi_isr (issue 5).

    pip install -e '.[bench]'          # Flask-Caching, pyinstrument
    apt-get install wrk nginx          # optional: without wrk a Python load generator
                                       # is used, without nginx its contender is skipped
    python benchmarks/run.py           # every section, ~10 minutes, writes RESULTS.md

    python benchmarks/run.py throughput --only bare,isr-memory,flask-caching
    python benchmarks/run.py --quick   # smoke mode: short, few contenders, no RESULTS.md

Sections (default: all): throughput, stale, coalescing, scaling, memory, stores, profile,
seed.
See ``benchmarks/README.md`` for what each one measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine, report  # noqa: E402
from benchmarks.harness import BY_NAME, Run, Settings  # noqa: E402
from benchmarks.load import wrk_path  # noqa: E402
from benchmarks.sections import SECTIONS  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK_CONTENDERS = frozenset({"bare", "isr-memory", "isr-file", "isr-redis"})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="wsgi_isr side-by-side benchmark",
        epilog="sections: " + ", ".join(SECTIONS) + "; contenders: " + ", ".join(BY_NAME),
    )
    parser.add_argument("sections", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: short, few contenders")
    parser.add_argument("--only", help="comma-separated contenders for the throughput section")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 5; quick 1)")
    parser.add_argument("--aux-rounds", type=int, help="stale/scaling rounds (default 3; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 5)")
    parser.add_argument("--connections", type=int, default=50, help="concurrent connections")
    parser.add_argument(
        "--stale-connections",
        default="50,500",
        help="comma-separated load connections of the stale section (default 50,500)",
    )
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--results",
        help="write the Markdown report here (default: benchmarks/RESULTS.md for "
        "a full default run, nowhere otherwise)",
    )
    parser.add_argument("--json", help="write all figures as JSON here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (server logs, stores)"
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        if bad := names - set(BY_NAME):
            parser.error(f"unknown contender(s) {sorted(bad)}; choose from {list(BY_NAME)}")
        args.only = frozenset(names)
    try:
        args.stale_connections = tuple(
            int(c) for c in args.stale_connections.split(",") if c.strip()
        )
    except ValueError:
        parser.error("--stale-connections: comma-separated integers, e.g. 50,500")
    if not args.stale_connections or min(args.stale_connections) <= 0:
        parser.error("--stale-connections: at least one positive number")
    if args.load == "wrk" and not wrk_path():
        parser.error("wrk is not installed (apt-get install wrk), or use --load python")
    return args


def settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(
            rounds=args.rounds or 1,
            aux_rounds=args.aux_rounds or 1,
            duration=args.duration or 1.0,
            connections=args.connections,
            stale_connections=args.stale_connections,
            tool=args.load,
            only=args.only or QUICK_CONTENDERS,
            sizes=(100, 1_000, 5_000),
            first=50,
            stampede=100,
            memory_urls=20_000,
            memory_max_entries=500,
            store_entries=5_000,
            profile_hits=2_000,
            profile_pages=300,
            seed_args=(
                "--posts",
                "500",
                "--docs",
                "200",
                "--prebuilt",
                "10",
                "--data-posts",
                "100",
            ),
            warm=0.5,
        )
    return Settings(
        rounds=args.rounds or 5,
        aux_rounds=args.aux_rounds or 3,
        duration=args.duration or 5.0,
        connections=args.connections,
        stale_connections=args.stale_connections,
        tool=args.load,
        only=args.only,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.sections or list(SECTIONS)
    full = not (args.sections or args.quick or args.only or args.rounds or args.duration)
    results_path = args.results or (os.path.join(HERE, "RESULTS.md") if full else None)
    s = settings(args)
    tool = s.tool if s.tool != "auto" else ("wrk" if wrk_path() else "python")
    load = (
        f"`wrk -t1 -c{s.connections} -d{s.duration:g}s --latency`"
        if tool == "wrk"
        else f"Python generator, {s.connections} keep-alive connections, {s.duration:g} s "
        "(bounded by the generator itself: install wrk for real figures)"
    )
    if tool == "python":
        print("wrk not found: using the Python load generator (apt-get install wrk)")
    meta: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
        if argv is None
        else shlex.join(["python", "benchmarks/run.py", *argv]),
        "load": load,
        "settings": f"{s.rounds} rounds (throughput), {s.aux_rounds} (stale, scaling)",
        "machine": machine.machine(),
        "load_before": machine.loadavg(),
    }
    began = time.monotonic()
    results: dict[str, Any] = {}
    workdir = tempfile.mkdtemp(prefix="wsgi-isr-bench-")
    if args.keep:
        print(f"work directory (kept): {workdir}")
    run = Run(s, workdir, say=lambda line: print(line, flush=True))
    try:
        for name in chosen:
            print(f"== {name}: {(SECTIONS[name].__doc__ or '').strip().splitlines()[0]}")
            t0 = time.monotonic()
            results[name] = SECTIONS[name](run)
            print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        run.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["elapsed"] = time.monotonic() - began
    meta["load_after"] = machine.loadavg()
    text = report.render(results, meta)
    print()
    print(text)
    if results_path:
        with open(results_path, "w") as f:
            f.write(text)
        print(f"written: {results_path}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
