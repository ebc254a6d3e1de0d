"""Flask integration: configuration from ``app.config``, a page decorator, and a CLI.

from flask import Flask
from wsgi_isr.flask import ISR

app = Flask(__name__)
isr = ISR(app)                       # or isr = ISR(); isr.init_app(app)

@app.get("/posts/<slug>")
@isr.page(revalidate=60, tags=lambda slug: [f"post-{slug}", "posts"],
          static_params=lambda: [{"slug": s} for s in top_slugs()])
def post(slug): ...

$ flask isr build                    # pre-render every static_params page
$ flask isr revalidate --tag posts   # invalidate from a shell
$ flask isr status
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ParamSpec, TypeVar, cast

import click
from flask import Flask, abort, current_app, make_response
from flask.cli import AppGroup

from .datacache import CachedFunction, make_cached
from .errors import StoreError
from .invalidation import Mode, PathType, revalidate_many
from .middleware import ISRMiddleware
from .pages import PageSpec, Params
from .profiles import Revalidate
from .status import status_lines

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
T = TypeVar("T")


def _names(key: str, kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A converter for a setting that takes a list of names: a lone string would become
    its characters (``"session"`` -> ``s``, ``e``, ...), and silently turn the setting
    into something else."""

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(f"{key} takes a list of names, e.g. [{value!r}], not a string")
        return kind(value)

    return convert


#: app.config key -> (ISRMiddleware keyword, converter)
CONFIG: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "ISR_STORE": ("store", lambda v: v),
    "ISR_SECRET": ("secret", lambda v: v or None),
    "ISR_ENDPOINT": ("endpoint", str),
    "ISR_TRUSTED_HOSTS": ("trusted_hosts", _names("ISR_TRUSTED_HOSTS", list)),
    "ISR_BYPASS_COOKIES": ("bypass_cookies", _names("ISR_BYPASS_COOKIES", tuple)),
    "ISR_BYPASS_TOKEN": ("bypass_token", lambda v: v or None),
    "ISR_QUERY_PARAMS": ("query_params", _names("ISR_QUERY_PARAMS", list)),
    "ISR_MAX_ENTRY_BYTES": ("max_entry_bytes", int),
    "ISR_LOCK_TIMEOUT": ("lock_timeout", float),
    "ISR_COALESCE_TIMEOUT": ("coalesce_timeout", float),
    "ISR_REGENERATION_BACKOFF": ("regeneration_backoff", float),
    "ISR_PASS_TTL": ("pass_ttl", float),
    "ISR_MAX_PENDING": ("max_pending", int),
    "ISR_LOCAL_TTL": ("local_ttl", float),
    "ISR_LOCAL_MAX_ENTRIES": ("local_max_entries", int),
    "ISR_LOCAL_MAX_BYTES": ("local_max_bytes", str),
    # caches in front (wsgi_isr.purge): a list of targets, or one string of them
    "ISR_PURGE": (
        "purge",
        lambda v: [t.strip(",") for t in v.split()] if isinstance(v, str) else v,
    ),
    "ISR_CDN_MAX_AGE": ("cdn_max_age", int),
}


class ISR:
    """The Flask extension. Reads ``ISR_*`` keys from ``app.config`` (see :data:`CONFIG`)
    and installs :class:`~wsgi_isr.ISRMiddleware` on ``app.wsgi_app``.

    Without ``ISR_STORE`` the store is a filesystem store in the app's instance folder,
    shared by every worker of the deployment.
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        self.options = options
        self._app: Flask | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        kwargs: dict[str, Any] = {}
        for key, (name, convert) in CONFIG.items():
            if app.config.get(key) is not None:
                kwargs[name] = convert(app.config[key])
        if "store" not in kwargs:
            kwargs["store"] = "file://" + os.path.join(app.instance_path, "isr-cache")
        kwargs.update(self.options)
        middleware = ISRMiddleware(app.wsgi_app, **kwargs)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions["isr"] = self
        app.extensions["isr.middleware"] = middleware
        app.cli.add_command(cli)
        self._app = app

    # -- the middleware of the app in use --------------------------------------------------

    @property
    def middleware(self) -> ISRMiddleware:
        """The middleware of the current app (or of the app passed to the constructor)."""
        try:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        except RuntimeError:
            if self._app is None:
                raise RuntimeError("ISR is not initialised on any app") from None
            app = self._app
        return cast(ISRMiddleware, app.extensions["isr.middleware"])

    def revalidate_tag(self, *tags: str, mode: Mode = "soft") -> float:
        """Invalidate tags (see :meth:`ISRMiddleware.revalidate_tag`); works in any view
        (a CMS webhook) and outside requests."""
        return self.middleware.revalidate_tag(*tags, mode=mode)

    def revalidate_path(self, path: str, type: PathType = "page", *, mode: Mode = "soft") -> float:
        """Invalidate a path (see :meth:`ISRMiddleware.revalidate_path`)."""
        return self.middleware.revalidate_path(path, type, mode=mode)

    def cached(
        self,
        revalidate: Revalidate = False,
        *,
        tags: Iterable[str] | Callable[..., Iterable[str]] = (),
        expire: float | None = None,
        key: Callable[..., Any] | None = None,
    ) -> Callable[[Callable[P, T]], CachedFunction[P, T]]:
        """:func:`wsgi_isr.cached` bound to this app's middleware (the current app's, when
        one extension serves several apps)."""
        return make_cached(
            lambda: self.middleware, revalidate, tags, expire, key, self._app_context
        )

    def _app_context(self) -> AbstractContextManager[Any]:
        """An app context for a background data refresh (its body may use ``g``,
        ``current_app``, extensions), of the app the stale value was read in."""
        try:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        except RuntimeError:
            app = self._app
        return app.app_context() if app is not None else nullcontext()

    # -- the decorator -----------------------------------------------------------------------

    def page(
        self,
        revalidate: Revalidate = False,
        *,
        tags: Iterable[str] | Callable[..., Iterable[str]] = (),
        expire: int | float | None = None,
        static_params: Callable[[], Params] | None = None,
        dynamic_params: bool = True,
    ) -> Callable[[F], F]:
        """Cache the view's responses.

        :param revalidate: seconds the page stays fresh; ``False`` until invalidated; or a
            profile (``"minutes"``, ``"hours"``, ... as for :func:`wsgi_isr.cached`), which
            sets ``expire`` too unless it is given.
        :param tags: tags, or a callable taking the view's keyword arguments.
        :param expire: past this age a stale copy is not served.
        :param static_params: returns the view arguments to pre-render with
            ``flask isr build`` (like Next.js ``generateStaticParams``).
        :param dynamic_params: ``False`` turns arguments outside ``static_params`` into a
            404 without running the view.
        """
        spec = PageSpec.make(
            revalidate,
            tags=tags,
            expire=expire,
            static_params=static_params,
            dynamic_params=dynamic_params,
        )

        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if not spec.allows(kwargs):
                    abort(404)
                # an async view is awaited as Flask would (flask[async])
                response = make_response(current_app.ensure_sync(view)(*args, **kwargs))
                for name, value in spec.headers(kwargs):
                    if name == "X-ISR-Tags":  # added to any the view set itself
                        response.headers.add(name, value)
                    else:
                        response.headers[name] = value
                return response

            wrapper._isr_page = spec  # type: ignore[attr-defined]
            return cast(F, wrapper)

        return decorator

    # -- pre-building ------------------------------------------------------------------------

    def static_paths(self, app: Flask | None = None) -> list[str]:
        """Every URL the ``static_params`` of every ``@isr.page`` route asks for."""
        app = app or current_app._get_current_object()  # type: ignore[attr-defined]
        adapter = app.url_map.bind("localhost")
        paths: list[str] = []
        for rule in app.url_map.iter_rules():
            view = app.view_functions.get(rule.endpoint)
            spec: PageSpec | None = getattr(view, "_isr_page", None)
            if spec is None or "GET" not in (rule.methods or ()):
                continue
            if spec.static_params is None:
                if not rule.arguments:
                    paths.append(adapter.build(rule.endpoint, {}))
                continue
            for params in spec.static_params():
                paths.append(adapter.build(rule.endpoint, params, append_unknown=False))
        return list(dict.fromkeys(paths))


def _state() -> tuple[ISR, ISRMiddleware]:
    ext = current_app.extensions.get("isr")
    if ext is None:
        raise click.ClickException("this app does not use wsgi_isr.flask.ISR")
    return ext, current_app.extensions["isr.middleware"]


cli = AppGroup("isr", help="Incremental Static Regeneration: build, revalidate, status.")


@cli.command("build")
@click.option("--concurrency", default=4, show_default=True, help="Pages rendered at once.")
@click.option("--host", default=None, help="Host the pages are served as (default: SERVER_NAME).")
@click.option("--scheme", default=None, type=click.Choice(["http", "https"]))
@click.option(
    "--script-name",
    default=None,
    help="Where the app is mounted, e.g. /blog (default: APPLICATION_ROOT).",
)
def build_command(
    concurrency: int, host: str | None, scheme: str | None, script_name: str | None
) -> None:
    """Pre-render the static_params of every @isr.page route into the store."""
    ext, mw = _state()
    host = host or current_app.config.get("SERVER_NAME") or "localhost"
    scheme = scheme or current_app.config.get("PREFERRED_URL_SCHEME") or "http"
    if script_name is None:
        script_name = current_app.config.get("APPLICATION_ROOT") or ""
    script_name = script_name.rstrip("/")
    paths = ext.static_paths()
    where = f"{scheme}://{host}{script_name}"
    click.echo(f"Pre-rendering {len(paths)} pages as {where} into {mw.store.description}")
    with click.progressbar(length=len(paths), label="building", file=sys.stderr) as bar:
        report = mw.prebuild(
            paths,
            host=host,
            scheme=scheme,
            concurrency=concurrency,
            progress=lambda path, outcome: bar.update(1),
            script_name=script_name,
        )
    for path, reason in report.failed:
        click.echo(f"FAILED {path}: {reason}", err=True)
    for path, reason in report.skipped[:20]:
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(1)


@cli.command("revalidate")
@click.option("--tag", "tags", multiple=True, help="A tag to invalidate (repeatable).")
@click.option("--path", "paths", multiple=True, help="A path to invalidate (repeatable).")
@click.option("--layout", is_flag=True, help="Invalidate the paths and everything below them.")
@click.option("--hard", is_flag=True, help="Expire instead of marking stale.")
def revalidate_command(
    tags: tuple[str, ...], paths: tuple[str, ...], layout: bool, hard: bool
) -> None:
    """Invalidate tags and paths in the store the running servers use."""
    ext, mw = _state()
    if not tags and not paths:
        raise click.UsageError("give at least one --tag or --path")
    try:
        mode = revalidate_many(mw, tags, paths, layout=layout, hard=hard)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except StoreError as exc:  # nothing was invalidated: say so, exit 1, run it again
        raise click.ClickException(f"not revalidated, the store failed: {exc}") from None
    click.echo(f"revalidated ({mode}): tags={list(tags)} paths={list(paths)}")
    # the purges of the caches in front are sent before this process exits (purge.queue)


@cli.command("status")
@click.option("--url", default=None, help="Base URL of a running server to read its counters.")
def status_command(url: str | None) -> None:
    """Show the store, how many pages it holds, and (with --url) a server's counters."""
    ext, mw = _state()
    try:
        lines = status_lines(mw, url)
    except ValueError as exc:
        raise click.ClickException(f"{exc} (ISR_SECRET, --url)") from None
    for line in lines:
        click.echo(line)


__all__ = ["ISR", "PageSpec", "cli"]
