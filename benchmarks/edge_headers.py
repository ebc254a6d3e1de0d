"""What the tag headers and the ``cdn_max_age`` cap cost a cached hit, in process.

    python benchmarks/edge_headers.py [--requests 50000] [--rounds 5]

Calls one middleware (memory store, a page with 20 tags) directly as WSGI, without
and with ``purge=`` (Varnish + Fastly targets) and ``cdn_max_age``, alternating the
variants round by round; prints the best microseconds per hit of each. No server,
no network: this is the hook's own cost, not a throughput figure.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from typing import Any

from wsgi_isr import ISRMiddleware
from wsgi_isr.purge import FastlyPurger, VarnishPurger

TAGS = ", ".join(f"tag-{i}" for i in range(20))
ENVIRON = {
    "REQUEST_METHOD": "GET",
    "PATH_INFO": "/blog/post/hello",
    "QUERY_STRING": "",
    "HTTP_HOST": "example.com",
    "SERVER_NAME": "example.com",
    "SERVER_PORT": "80",
    "wsgi.url_scheme": "http",
}


def page(environ: Any, start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("X-ISR-Revalidate", "false"), ("X-ISR-Tags", TAGS)])
    return [b"hello " * 100]


def variants() -> dict[str, ISRMiddleware]:
    targets = [VarnishPurger("varnish://127.0.0.1:6081"), FastlyPurger("SVC", token="t")]
    return {
        "no purge": ISRMiddleware(page, store="memory://"),
        "tags (2 targets)": ISRMiddleware(page, store="memory://", purge=targets),
        "cdn_max_age": ISRMiddleware(page, store="memory://", cdn_max_age=600),
        "tags + cdn_max_age": ISRMiddleware(
            page, store="memory://", purge=targets, cdn_max_age=600
        ),
    }


def per_hit(mw: ISRMiddleware, n: int) -> float:
    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    started = time.perf_counter()
    for _ in range(n):
        b"".join(mw(dict(ENVIRON), start_response))
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    mws = variants()
    for mw in mws.values():
        per_hit(mw, 10)  # the miss, then warm
    best = dict.fromkeys(mws, float("inf"))
    for _ in range(args.rounds):
        for name, mw in mws.items():
            best[name] = min(best[name], per_hit(mw, args.requests))
    base = best["no purge"]
    for name, us in best.items():
        print(f"{name:20} {us:6.2f} us/hit  (+{us - base:.2f})")


if __name__ == "__main__":
    main()
