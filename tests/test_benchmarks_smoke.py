"""The benchmark harness still runs: ``benchmarks/run.py --quick`` against the bare app and
a memory-store ISR app under real gunicorn, with the Python load generator (no wrk, no
nginx, no redis needed). Figures are not judged here — only that they were produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # benchmarks/ is not an installed package

from benchmarks.load import Numbered, parse_wrk  # noqa: E402

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8000/page
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.46ms  512.33us  10.95ms   86.49%
    Req/Sec    20.33k     1.10k   22.14k    70.00%
  Latency Distribution
     50%  812.00us
     75%    2.60ms
     90%    2.93ms
     99%    1.20s
  101125 requests in 5.00s, 222.30MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  20220.48
Transfer/sec:     44.45MB
"""


def test_wrk_output_is_parsed_with_units_and_errors() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert (r.rps, r.p50_ms, r.p99_ms, r.requests, r.errors) == (
        20220.48,
        0.812,
        1200.0,
        101125,
        7,
    )


def test_numbered_paths_are_a_sequence() -> None:
    paths = Numbered("/p/", 3)
    assert list(paths) == ["/p/0", "/p/1", "/p/2"]


def test_bare_headers_sends_what_a_real_hit_sends() -> None:
    """The ``bare-headers`` reference sends the header names a wsgi_isr hit of ``/page``
    sends, in order, with values as long (a hit in its first second: ``Age: 0``), whatever
    the middleware's header set becomes."""
    from benchmarks.apps import BODY, bare_app, isr_app, isr_hit_headers
    from benchmarks.probes import environ

    app = isr_app("memory://", render_seconds=0)
    env = environ("/page", "example.org")
    sent: list[list[tuple[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: object = None) -> None:
        sent.append(headers)

    for _ in range(2):
        b"".join(app(dict(env), start_response))
    hit = sent[-1]
    assert dict(hit)["X-ISR-Cache"] == "HIT"
    sent.clear()
    assert b"".join(bare_app(isr_hit_headers())(dict(env), start_response)) == BODY
    (reference,) = sent
    assert [(k, len(v)) for k, v in reference] == [(k, len(v)) for k, v in hit]


@pytest.mark.server
def test_quick_run_produces_throughput_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/run.py",
            "throughput",
            "--quick",
            "--only",
            "bare,isr-memory",
            "--load",
            "python",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())["results"]["throughput"]["contenders"]
    # the reference with a hit's headers comes along with any ISR contender
    assert set(figures) == {"bare", "bare-headers", "isr-memory"}
    for name, f in figures.items():
        assert f["rps"] > 0 and f["p99_ms"] >= f["p50_ms"] > 0, name
        assert f["ratio"] > 0 and f["headers_ratio"] > 0, name
    # the contender really served cache hits, not renders
    assert figures["isr-memory"]["check"] == {"200 HIT": 10}
    assert "| isr-memory |" in proc.stdout
