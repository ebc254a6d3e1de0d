"""The applications the harness serves, one per contender, all returning the same 2 KB page.

gunicorn builds them from the environment (``benchmarks/run.py`` sets it)::

    BENCH_APP=isr BENCH_STORE=memory:// \\
        gunicorn -k gevent -w 2 --chdir /path/to/repo 'benchmarks.apps:from_env()'

``BENCH_APP``
    ``bare`` (a WSGI callable returning a constant body: the limit for a Python server),
    ``bare-headers`` (the same, sending the headers a wsgi_isr hit of ``/page`` sends: what
    the server alone costs to send them, without the middleware),
    ``isr`` (the Flask page app behind :class:`wsgi_isr.ISRMiddleware`),
    ``flask-caching`` (the same view under Flask-Caching's ``@cached``: SimpleCache, or
    FileSystemCache / RedisCache when ``BENCH_STORE`` names a file or redis store),
    ``uncached`` (the same view rendering every time; also nginx's origin).
``BENCH_STORE``, ``BENCH_LOCAL_TTL``, ``BENCH_SECRET``
    the ISR store URL (also Flask-Caching's backend), the local layer's TTL (redis + local
    layer), the endpoint secret.
``BENCH_LOCAL_MAX_ENTRIES``, ``BENCH_LOCAL_MAX_BYTES``
    the local layer's bounds (the scaling section makes them hold 100,000 pages).
``BENCH_PREFILL``, ``BENCH_PREFILL_HOST``
    each worker puts ``/p/0`` .. ``/p/<N-1>`` (as requested from ``host:port``) into its own
    store at start-up: a ``memory://`` store, or the in-process copies of a local layer
    (whose backend the harness fills), are per process, out of the harness' reach.
``BENCH_RENDER_SECONDS`` (0.05), ``BENCH_SLOW_SECONDS`` (2), ``BENCH_COUNTED_SECONDS`` (0.5)
    how long ``/page`` (and ``/p/<n>``), ``/slow`` and ``/counted/<name>`` take to render.
``BENCH_COUNTER_DIR``
    every render of ``/counted/<name>`` appends ``<pid>`` to ``<dir>/<name>.log`` (renders
    happen in several processes, so they are counted in files).

Routes of the page app: ``/page`` (cached until invalidated), ``/p/<n>`` (the scaling
pages, tags ``all`` and, for n < 10, ``few``), ``/slow`` (fresh for 1 s), ``/counted/<name>``
(cached until its tag ``c-<name>`` is revalidated), ``/health`` (not cached).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

BODY_BYTES = 2048
_HEAD = b"<!doctype html><html><head><title>benchmark page</title></head><body><p>"
_TAIL = b"</p></body></html>\n"
#: The page every contender serves: 2 KB of HTML.
BODY = _HEAD + b"x" * (BODY_BYTES - len(_HEAD) - len(_TAIL)) + _TAIL
_NAME = re.compile(r"[a-z0-9-]{1,64}")


def bare_app(headers: list[tuple[str, str]] | None = None) -> WSGIApplication:
    """A constant response, the least work a WSGI server can be asked to do (with
    ``headers`` instead of a content type and length, when given)."""
    if headers is None:
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(BODY))),
        ]
    body = [BODY]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", headers)
        return body

    return app


def isr_hit_headers() -> list[tuple[str, str]]:
    """The headers a wsgi_isr hit of ``/page`` sends, taken from a real hit in process (a
    memory store; the page rendered without its 50 ms wait): whatever the middleware's
    header set becomes, ``bare-headers`` sends the same names and values (``Age`` stays
    ``0``, where a real hit's grows a digit or two over a run)."""
    from benchmarks.probes import environ

    app = isr_app("memory://", render_seconds=0)
    env = environ("/page", "127.0.0.1")
    sent: list[list[tuple[str, str]]] = []
    for _ in range(2):  # a miss, then the hit
        sent.clear()
        body = app(dict(env), lambda status, headers, exc_info=None: sent.append(headers))
        b"".join(body)
    (headers,) = sent
    assert dict(headers).get("X-ISR-Cache") == "HIT", headers
    return list(headers)


def _record_render(counter_dir: str, name: str) -> None:
    fd = os.open(os.path.join(counter_dir, name + ".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def page_app(
    *,
    render_seconds: float = 0.05,
    slow_seconds: float = 2.0,
    counted_seconds: float = 0.5,
    counter_dir: str | None = None,
    decorate: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
) -> Any:
    """The Flask application behind every contender but ``bare``.

    ``decorate`` wraps the ``/page`` view (Flask-Caching's ``@cached``).
    """
    from flask import Flask, abort

    app = Flask("benchmark")
    isr_forever = {"Content-Type": "text/html; charset=utf-8", "X-ISR-Revalidate": "false"}

    def page() -> tuple[bytes, dict[str, str]]:
        if render_seconds:
            time.sleep(render_seconds)  # stands for templates and queries; gevent yields
        return BODY, {**isr_forever, "X-ISR-Tags": "page"}

    app.add_url_rule("/page", "page", decorate(page) if decorate else page)

    @app.get("/p/<int:n>")
    def scaling_page(n: int) -> tuple[bytes, dict[str, str]]:
        if render_seconds:
            time.sleep(render_seconds)
        return BODY, {**isr_forever, "X-ISR-Tags": "all, few" if n < 10 else "all"}

    @app.get("/slow")
    def slow() -> tuple[bytes, dict[str, str]]:
        time.sleep(slow_seconds)
        return BODY, {"Content-Type": "text/html; charset=utf-8", "X-ISR-Revalidate": "1"}

    @app.get("/counted/<name>")
    def counted(name: str) -> tuple[bytes, dict[str, str]]:
        if not _NAME.fullmatch(name) or counter_dir is None:
            abort(404)
        _record_render(counter_dir, name)
        time.sleep(counted_seconds)
        return BODY, {**isr_forever, "X-ISR-Tags": f"c-{name}"}

    @app.get("/health")
    def health() -> tuple[str, dict[str, str]]:
        return "ok", {"Content-Type": "text/plain"}

    return app


def isr_app(
    store: Any,
    *,
    secret: str | None = None,
    local_ttl: float | None = None,
    local_max_entries: int | None = None,
    local_max_bytes: str | None = None,
    **page_options: Any,
) -> Any:
    """The page app with ISR installed the documented way (``app.wsgi_app = ...``)."""
    from wsgi_isr import ISRMiddleware

    app = page_app(**page_options)
    options: dict[str, Any] = {"store": store, "secret": secret}
    if local_ttl is not None:
        options["local_ttl"] = local_ttl
    if local_max_entries is not None:
        options["local_max_entries"] = local_max_entries
    if local_max_bytes is not None:
        options["local_max_bytes"] = local_max_bytes
    app.wsgi_app = ISRMiddleware(app.wsgi_app, **options)
    return app


def flask_caching_config(store: str | None) -> dict[str, Any]:
    """Flask-Caching's configuration on the backend of ISR store URL ``store``: none,
    SimpleCache (one cache per process, like the memory store); ``file://DIR``,
    FileSystemCache in DIR; ``redis://host:port/db?prefix=P``, RedisCache, keys
    prefixed with P.

    >>> flask_caching_config("redis://127.0.0.1:6379/0?prefix=fc:")["CACHE_KEY_PREFIX"]
    'fc:'
    """
    config: dict[str, Any] = {"CACHE_DEFAULT_TIMEOUT": 3600}
    if not store:
        return {**config, "CACHE_TYPE": "SimpleCache"}
    if store.startswith("file://"):
        return {**config, "CACHE_TYPE": "FileSystemCache", "CACHE_DIR": store[len("file://") :]}
    if store.startswith("redis://"):
        url, _, query = store.partition("?")
        prefix = dict(parse_qsl(query)).get("prefix", "flask_cache_")
        return {
            **config,
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": url,
            "CACHE_KEY_PREFIX": prefix,
        }
    raise SystemExit(f"no Flask-Caching backend for {store!r}")


def flask_caching_app(store: str | None = None, **page_options: Any) -> Any:
    """The page app with the view under Flask-Caching's ``@cache.cached``, on the backend
    of ISR store URL ``store`` (see :func:`flask_caching_config`)."""
    try:
        from flask_caching import Cache
    except ImportError as exc:
        raise SystemExit("Flask-Caching is missing: pip install -e '.[bench]'") from exc
    cache = Cache(config=flask_caching_config(store))
    app = page_app(decorate=cache.cached(timeout=3600), **page_options)
    cache.init_app(app)
    return app


def from_env() -> WSGIApplication:
    """Build the application ``BENCH_APP`` names (gunicorn: ``'benchmarks.apps:from_env()'``)."""
    env = os.environ
    kind = env.get("BENCH_APP", "bare")
    page_options: dict[str, Any] = {
        "render_seconds": float(env.get("BENCH_RENDER_SECONDS", "0.05")),
        "slow_seconds": float(env.get("BENCH_SLOW_SECONDS", "2")),
        "counted_seconds": float(env.get("BENCH_COUNTED_SECONDS", "0.5")),
        "counter_dir": env.get("BENCH_COUNTER_DIR") or None,
    }
    app: WSGIApplication
    if kind == "bare":
        app = bare_app()
    elif kind == "bare-headers":
        app = bare_app(isr_hit_headers())
    elif kind == "isr":
        local = env.get("BENCH_LOCAL_TTL")
        local_entries = env.get("BENCH_LOCAL_MAX_ENTRIES")
        flask_app = isr_app(
            env["BENCH_STORE"],
            secret=env.get("BENCH_SECRET") or None,
            local_ttl=float(local) if local else None,
            local_max_entries=int(local_entries) if local_entries else None,
            local_max_bytes=env.get("BENCH_LOCAL_MAX_BYTES") or None,
            **page_options,
        )
        if env.get("BENCH_PREFILL"):
            from benchmarks.probes import prefill_process

            prefill_process(
                flask_app.wsgi_app.store, env["BENCH_PREFILL_HOST"], int(env["BENCH_PREFILL"])
            )
        app = flask_app
    elif kind == "flask-caching":
        app = flask_caching_app(env.get("BENCH_STORE") or None, **page_options)
    elif kind == "uncached":
        app = page_app(**page_options)
    else:
        raise SystemExit(f"unknown BENCH_APP {kind!r}")
    return app
