"""``python manage.py isr build | revalidate | status``.

python manage.py isr build [--concurrency 4] [--host www.example.com] [--scheme https]
python manage.py isr revalidate --tag articles --path /blog [--layout] [--hard]
python manage.py isr status [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ....errors import StoreError
from ....invalidation import revalidate_many
from ....status import status_lines
from ...application import middleware
from ...pages import static_paths


def default_host() -> str:
    """The first concrete name in ``ALLOWED_HOSTS``, else the domain of the first
    ``.example.com`` (which Django matches for ``example.com`` too), else ``localhost``."""
    hosts = [str(h) for h in getattr(settings, "ALLOWED_HOSTS", []) if h and h != "*"]
    for host in hosts:
        if not host.startswith("."):
            return host
    for host in hosts:
        if host.strip("."):
            return host.lstrip(".")
    return "localhost"


class ProgressBar:
    """``building [#########.........]  45/100`` redrawn in place on a terminal
    (``out``: the command's ``OutputWrapper``)."""

    def __init__(self, total: int, out: Any, width: int = 30) -> None:
        self.total, self.done, self.out, self.width = total, 0, out, width

    def update(self, path: str, outcome: str) -> None:
        self.done += 1
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        count = f"{self.done:>{len(str(self.total))}}/{self.total}"
        end = "\n" if self.done == self.total else ""
        self.out.write(f"\rbuilding [{bar}] {count}", ending=end)
        self.out.flush()


class Command(BaseCommand):  # type: ignore[misc]  # django ships no types
    help = "Incremental Static Regeneration: build, revalidate, status."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="build|revalidate|status")
        build = sub.add_parser("build", help="Pre-render every static_params page into the store.")
        build.add_argument("--concurrency", type=int, default=4, help="Pages rendered at once.")
        build.add_argument("--host", default=None, help="Host visitors use (keys include it).")
        build.add_argument("--scheme", default="http", choices=["http", "https"])
        build.add_argument(
            "--script-name",
            default=None,
            help="Where the site is mounted, e.g. /app (default: FORCE_SCRIPT_NAME).",
        )
        reval = sub.add_parser("revalidate", help="Invalidate tags and paths.")
        reval.add_argument("--tag", dest="tags", action="append", default=[], help="Repeatable.")
        reval.add_argument("--path", dest="paths", action="append", default=[], help="Repeatable.")
        reval.add_argument("--layout", action="store_true", help="The paths and everything below.")
        reval.add_argument("--hard", action="store_true", help="Expire instead of marking stale.")
        status = sub.add_parser("status", help="The store, its entries, a server's counters.")
        status.add_argument("--url", default=None, help="Base URL of a running server.")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "build":
            host = options["host"] or default_host()
            self.build(options["concurrency"], host, options["scheme"], options["script_name"])
        elif action == "revalidate":
            self.revalidate(options["tags"], options["paths"], options["layout"], options["hard"])
        else:
            self.status(options["url"])

    def build(self, concurrency: int, host: str, scheme: str, script_name: str | None) -> None:
        from django.urls import get_script_prefix

        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1")
        mw = middleware()
        try:
            paths = static_paths()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        # reverse() spells URLs with the mount point (FORCE_SCRIPT_NAME): a render sees
        # the path below it, SCRIPT_NAME the rest, as it will for visitors
        prefix = get_script_prefix().rstrip("/")
        script = (prefix if script_name is None else script_name).rstrip("/")
        if prefix:
            paths = [p[len(prefix) :] or "/" if p.startswith(prefix + "/") else p for p in paths]
        where = f"{scheme}://{host}{script}"
        self.stdout.write(
            f"Pre-rendering {len(paths)} pages as {where} into {mw.store.description}"
        )
        bar = ProgressBar(len(paths), self.stderr)
        report = mw.prebuild(
            paths,
            host=host,
            scheme=scheme,
            concurrency=concurrency,
            progress=bar.update,
            script_name=script,
        )
        for path, reason in report.failed:
            self.stderr.write(f"FAILED {path}: {reason}")
        for path, reason in report.skipped[:20]:
            self.stderr.write(f"skipped {path}: {reason}")
        self.stdout.write(report.summary())
        if not report.ok:
            raise CommandError(f"{len(report.failed)} pages failed", returncode=1)

    def revalidate(self, tags: list[str], paths: list[str], layout: bool, hard: bool) -> None:
        if not tags and not paths:
            raise CommandError("give at least one --tag or --path")
        mw = middleware()
        try:
            mode = revalidate_many(mw, tags, paths, layout=layout, hard=hard)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except StoreError as exc:  # nothing was invalidated: say so, exit 1, run it again
            raise CommandError(f"not revalidated, the store failed: {exc}") from None
        self.stdout.write(f"revalidated ({mode}): tags={tags} paths={paths}")

    def status(self, url: str | None) -> None:
        try:
            lines = status_lines(middleware(), url)
        except ValueError as exc:
            raise CommandError(f"{exc} (ISR['SECRET'], --url)") from None
        for line in lines:
            self.stdout.write(line)
