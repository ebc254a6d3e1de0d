"""``python -m wsgi_isr prebuild module:app --paths-file paths.txt`` — pre-render any WSGI app.

The object named may be an :class:`~wsgi_isr.ISRMiddleware`, or an app whose
``wsgi_app`` is one (a Flask app wrapped by hand or by ``wsgi_isr.flask.ISR``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from werkzeug.utils import import_string

from .middleware import ISRMiddleware


def find_middleware(obj: Any) -> ISRMiddleware:
    for candidate in (obj, getattr(obj, "wsgi_app", None), getattr(obj, "application", None)):
        if isinstance(candidate, ISRMiddleware):
            return candidate
    extensions = getattr(obj, "extensions", None)
    found = extensions.get("isr.middleware") if isinstance(extensions, dict) else None
    if isinstance(found, ISRMiddleware):
        return found
    raise SystemExit(f"error: {obj!r} is not an ISRMiddleware and does not wrap one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsgi_isr")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("prebuild", help="render paths into the store")
    build.add_argument("app", help="import path of the app, e.g. mysite.wsgi:application")
    build.add_argument("--paths-file", required=True, help="one path per line ('-' for stdin)")
    build.add_argument("--host", default="localhost")
    build.add_argument("--scheme", default="http", choices=["http", "https"])
    build.add_argument("--concurrency", type=int, default=4)
    build.add_argument(
        "--script-name", default="", help="where the app is mounted, e.g. /blog (paths below it)"
    )
    args = parser.parse_args(argv)

    try:
        obj = import_string(args.app.replace(":", ".", 1) if ":" in args.app else args.app)
    except ImportError as exc:
        parser.error(f"cannot import {args.app!r}: {exc}")
    mw = find_middleware(obj)
    with sys.stdin if args.paths_file == "-" else open(args.paths_file) as f:
        paths = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    report = mw.prebuild(
        paths,
        host=args.host,
        scheme=args.scheme,
        concurrency=args.concurrency,
        script_name=args.script_name,
    )
    for path, reason in report.failed:
        print(f"FAILED {path}: {reason}", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
