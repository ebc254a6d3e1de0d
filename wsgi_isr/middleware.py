"""Incremental Static Regeneration for any WSGI application.

Wrap the application; views opt pages in with response headers::

    from wsgi_isr import ISRMiddleware

    app.wsgi_app = ISRMiddleware(
        app.wsgi_app, store="redis://127.0.0.1:6379/0", secret=os.environ["ISR_SECRET"]
    )

    @app.get("/blog/<slug>")
    def post(slug):
        return render_template(...), {"X-ISR-Revalidate": "60", "X-ISR-Tags": f"post-{slug}"}

A fresh page is served from the store without calling the application; a stale
one is served at once while one background regeneration runs; a miss renders
in the foreground, concurrent misses for the same key waiting for one render.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from werkzeug.sansio.utils import host_is_trusted

from . import responses as R
from .datacache import CachedFunction, make_cached
from .entry import Entry, PassMarker, Record, State, TagState, VaryMarker
from .errors import StoreError
from .invalidation import (
    Mode,
    PathType,
    check_mode,
    checked_tags,
    current_middleware,
    instances,
    path_tag,
)
from .keys import (
    RequestKey,
    request_key,
    variant_key,
)
from .misses import Landings, coalesced_miss, personal_miss
from .policy import (
    NOT_OPTED_IN,
    client_headers,
    cookie_names_and_values,
    private_headers,
    same_secret,
    unshared_headers,
    varies_on_credentials,
)
from .prebuild import PrebuildReport, prebuild
from .profiles import Revalidate
from .purge import configure as configure_purge
from .regeneration import Regenerator
from .runner import AutoRunner, Runner
from .stats import Stats
from .stores import LocalLayer, Store, open_store
from .stores.breaker import new_block

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("wsgi_isr")
P = ParamSpec("P")
T = TypeVar("T")
_NO_VARY: tuple[str, ...] = ()


def _has_credentials(environ: WSGIEnvironment) -> bool:
    return bool(environ.get("HTTP_COOKIE") or environ.get("HTTP_AUTHORIZATION"))


def _without_internal(start_response: StartResponse) -> StartResponse:
    """``start_response`` for answers passed through untouched: still no ``X-ISR-*``."""

    def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, client_headers(headers), exc_info)

    return cast("StartResponse", sr)


class ISRMiddleware:
    """The ISR cache in front of ``app``.

    :param store: ``"memory://"``, ``"file:///path"``, ``"redis://host:port/db"``, a
        :class:`~wsgi_isr.stores.Store` or a cachelib cache. Default: a filesystem
        store in ``$WSGI_ISR_CACHE_DIR`` or ``./.isr-cache``.
    :param secret: enables ``{endpoint}/revalidate`` and ``{endpoint}/status``.
    :param endpoint: path prefix of those endpoints.
    :param trusted_hosts: when set, requests for other hosts bypass the cache
        (``".example.com"`` matches subdomains too).
    :param bypass_cookies: requests carrying one of these cookies go straight to the app.
    :param bypass_token: an ``X-ISR-Bypass`` header or ``__isr_bypass`` cookie with this
        value goes straight to the app (drafts, previews).
    :param query_params: when set, only these query parameters are part of the key
        (and reach the render); others are ignored.
    :param max_entry_bytes: larger responses are not stored.
    :param lock_timeout: how long a render lock lives if its holder dies.
    :param coalesce_timeout: how long concurrent misses wait for the first render
        before rendering for themselves (without storing).
    :param regeneration_backoff: first wait after a failed regeneration; doubles on
        each further failure, up to five minutes.
    :param pass_ttl: how long a URL that did not opt in skips the cache machinery.
    :param local_ttl: keep records in process for this many seconds in front of a
        shared store (hits then cost no round trip); invalidations reach every process
        through Redis pub/sub, and this TTL bounds what a lost message can cost.
    :param local_max_entries: how many records the local layer keeps at most.
    :param local_max_bytes: how many bytes of records it keeps at most (``"64MB"``).
    :param max_pending: background regenerations at most in flight per process.
    :param runner: where regenerations run (default: greenlets under gevent, else threads).
    :param clock: time source for a store built from a URL (tests pass a fake one).
    :param purge: caches in front to tag answers for and purge on every invalidation:
        ``"varnish://host:port"``, ``"fastly://SERVICE_ID"``, ``"cloudflare://ZONE_ID"``
        or :class:`~wsgi_isr.purge.Purger` objects (see :mod:`wsgi_isr.purge`).
    :param cdn_max_age: cap of the ``s-maxage`` announced to caches in front.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        store: Any = None,
        secret: str | None = None,
        endpoint: str = "/_isr",
        trusted_hosts: Collection[str] | None = None,
        bypass_cookies: Collection[str] = (),
        bypass_token: str | None = None,
        query_params: Collection[str] | None = None,
        max_entry_bytes: int = 5 * 1024 * 1024,
        lock_timeout: float = 60.0,
        coalesce_timeout: float = 10.0,
        regeneration_backoff: float = 5.0,
        pass_ttl: float = 60.0,
        max_pending: int = 32,
        max_request_bytes: int = 64 * 1024,
        local_ttl: float | None = None,
        local_max_entries: int = 10_000,
        local_max_bytes: int | str = "64MiB",
        runner: Runner | None = None,
        clock: Callable[[], float] = time.time,
        purge: Any = None,
        cdn_max_age: int | None = None,
    ) -> None:
        for name, value in (
            ("lock_timeout", lock_timeout),
            ("coalesce_timeout", coalesce_timeout),
            ("regeneration_backoff", regeneration_backoff),
            ("pass_ttl", pass_ttl),
            ("max_entry_bytes", max_entry_bytes),
            ("max_pending", max_pending),
            ("max_request_bytes", max_request_bytes),
        ):
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not endpoint.startswith("/") or endpoint.endswith("/") or len(endpoint) < 2:
            raise ValueError(f"endpoint must look like '/_isr', got {endpoint!r}")
        if secret is not None:
            if not isinstance(secret, str) or not secret:
                raise ValueError("secret must be a non-empty string (or None to disable)")
            if len(secret) < 32:
                log.warning("wsgi_isr: the revalidation secret is shorter than 32 characters")
        for name, names in (
            ("trusted_hosts", trusted_hosts),
            ("bypass_cookies", bypass_cookies),
            ("query_params", query_params),
        ):
            if isinstance(names, str):  # its characters would become the names
                raise ValueError(f"{name} takes a list of names, e.g. [{names!r}], not a string")
        if bypass_token is not None and (not isinstance(bypass_token, str) or not bypass_token):
            raise ValueError("bypass_token must be a non-empty string (or None to disable)")
        self.app = app
        # caches in front (wsgi_isr.purge): the purge queue, and the tag/cap header hook
        self.purges, self.edge = configure_purge(purge, cdn_max_age)
        if local_ttl is not None and (not isinstance(local_ttl, int | float) or local_ttl <= 0):
            raise ValueError(f"local_ttl must be a positive number or None, got {local_ttl!r}")
        self.local_ttl = local_ttl
        self.store: Store = open_store(store, clock=clock)
        if local_ttl is not None:
            self.store = LocalLayer(
                self.store, ttl=local_ttl, max_entries=local_max_entries, max_bytes=local_max_bytes
            )
        self.secret = secret
        self.endpoint = endpoint
        self.trusted_hosts = list(trusted_hosts) if trusted_hosts is not None else None
        self.bypass_cookies = frozenset(bypass_cookies)
        self.bypass_token = bypass_token
        self.query_params = frozenset(query_params) if query_params is not None else None
        self.max_entry_bytes = int(max_entry_bytes)
        self.lock_timeout = float(lock_timeout)
        self.coalesce_timeout = float(coalesce_timeout)
        self.regeneration_backoff = float(regeneration_backoff)
        self.pass_ttl = float(pass_ttl)
        self.max_request_bytes = int(max_request_bytes)
        self.runner: Runner = (
            runner if runner is not None else AutoRunner(max_pending, self.lock_timeout)
        )
        self.stats = Stats()
        self._count_hit = self.stats.counter("hits")
        if self.purges is not None:
            self.purges.on_count = lambda target, result: self.stats.count(
                "purges", target=target, result=result
            )
        self.landings = Landings(self.store)
        self._last_store_error = 0.0
        self.regen = Regenerator(
            app,
            self.store,
            self.runner,
            self.stats,
            max_entry_bytes=self.max_entry_bytes,
            lock_timeout=self.lock_timeout,
            pass_ttl=self.pass_ttl,
            backoff=self.regeneration_backoff,
            on_store_error=self._store_failed,
            fill_limit=self.coalesce_timeout,
            landings=self.landings,
        )
        instances.add(self)

    # -- invalidation ----------------------------------------------------------------------

    def revalidate_tag(self, *tags: str, mode: Mode = "soft") -> float:
        """Mark every page carrying one of ``tags`` stale (``"soft"``: served while it
        regenerates) or expired (``"hard"``: the next visitor waits for a fresh render).

        Returns the store-clock time of the invalidation. Raises ``ValueError`` for an
        invalid tag or mode, :class:`~wsgi_isr.errors.StoreError` if the store fails.
        """
        if not tags:
            raise ValueError("revalidate_tag needs at least one tag")
        return self.invalidate(checked_tags(tags), mode)

    def revalidate_path(self, path: str, type: PathType = "page", *, mode: Mode = "soft") -> float:
        """Invalidate one path with all its query variants (``type="page"``), or the
        path and everything below it (``type="layout"``; ``"/"`` is the whole site)."""
        return self.invalidate([path_tag(path, type)], mode)

    def invalidate(self, tags: list[str], mode: Mode) -> float:
        """Record the invalidation of already-checked tags (explicit or implicit)."""
        hard = check_mode(mode) == "hard"
        # stamped by the store, on the clock that stamps render starts (DESIGN 7)
        at = self.store.invalidate(tags, hard=hard)
        self.stats.incr("invalidations", len(tags))
        if self.purges is not None:  # recorded: now tell the caches in front (background)
            self.purges.submit(tags, hard=hard)
        return at

    def cached(
        self,
        revalidate: Revalidate = False,
        *,
        tags: Iterable[str] | Callable[..., Iterable[str]] = (),
        expire: float | None = None,
        key: Callable[..., Any] | None = None,
    ) -> Callable[[Callable[P, T]], CachedFunction[P, T]]:
        """:func:`wsgi_isr.cached` bound to this middleware's store (see
        :mod:`wsgi_isr.datacache`)."""
        return make_cached(lambda: self, revalidate, tags, expire, key)

    def prebuild(
        self,
        paths: Iterable[str],
        *,
        host: str = "localhost",
        scheme: str = "http",
        concurrency: int = 4,
        progress: Callable[[str, str], None] | None = None,
        script_name: str = "",
    ) -> PrebuildReport:
        """Render ``paths`` into the store now, as ``scheme://host`` will request them
        (``script_name``: where the application is mounted, e.g. ``"/blog"``; the
        paths are then the application's own, below it).

        Returns a :class:`~wsgi_isr.prebuild.PrebuildReport` of built / skipped (the
        page did not opt in) / failed paths; ``progress(path, outcome)`` is called
        after each one.
        """
        return prebuild(
            self,
            paths,
            host=host,
            scheme=scheme,
            concurrency=concurrency,
            progress=progress,
            script_name=script_name,
        )

    def join(self, timeout: float | None = None) -> bool:
        """Wait for pending background regenerations (and purges); True if none are left."""
        if self.purges is None:
            return self.runner.join(timeout)
        deadline = time.monotonic() + (3600.0 if timeout is None else timeout)
        done = self.runner.join(timeout)
        return self.purges.join(max(0.0, deadline - time.monotonic())) and done

    # -- request path ----------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        new_block()  # a hung store costs this request one socket timeout (stores.breaker)
        path_info = environ.get("PATH_INFO", "")
        if (
            self.secret is not None
            and path_info.startswith(self.endpoint)
            and (path_info == self.endpoint or path_info.startswith(self.endpoint + "/"))
        ):
            from .endpoint import handle

            return self._as_current(handle, self, environ, start_response)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return self._as_current(self.app, environ, _without_internal(start_response))
        rk = request_key(environ, query_params=self.query_params)
        if rk is None:
            return self._as_current(self._bypass, environ, start_response, False)
        if self.trusted_hosts is not None or self.bypass_token is not None or self.bypass_cookies:
            bypass = self._bypassed(environ, rk)
            if bypass is not None:
                return self._as_current(self._bypass, environ, start_response, bypass == "token")
        return self._serve(environ, start_response, rk)

    def _as_current(self, call: Callable[..., Iterable[bytes]], *args: Any) -> Iterable[bytes]:
        """``call(*args)`` with this middleware current: whatever the application (or a
        render) does meanwhile, a module-level ``wsgi_isr.revalidate_tag()`` in a webhook
        view say, acts on this site and not another's. A fresh hit runs no application
        code, and goes without."""
        token = current_middleware.set(self)
        try:
            return call(*args)
        finally:
            current_middleware.reset(token)

    def _bypassed(self, environ: WSGIEnvironment, rk: RequestKey) -> str | None:
        """Why this request skips the cache (``"host"``, ``"token"``, ``"cookie"``), if it does."""
        if self.trusted_hosts is not None and not host_is_trusted(rk.host, self.trusted_hosts):
            return "host"
        if self.bypass_token is not None:
            given = environ.get("HTTP_X_ISR_BYPASS")
            if given is not None and same_secret(given, self.bypass_token):
                return "token"
        if (self.bypass_cookies or self.bypass_token is not None) and environ.get("HTTP_COOKIE"):
            cookies = cookie_names_and_values(environ["HTTP_COOKIE"])
            if self.bypass_cookies.intersection(cookies):
                return "cookie"
            given = cookies.get("__isr_bypass")
            if self.bypass_token is not None and given is not None:
                return "token" if same_secret(given, self.bypass_token) else None
        return None

    def _bypass(
        self, environ: WSGIEnvironment, start_response: StartResponse, preview: bool
    ) -> Iterable[bytes]:
        self.stats.incr("bypasses")
        return self._pass(environ, start_response, R.BYPASS, R.CS_BYPASS, preview=preview)

    def _pass(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        label: str,
        status_value: str,
        *,
        preview: bool = False,
        unshared: bool = False,
        asked: bool = False,
    ) -> Iterable[bytes]:
        """Call the app with the visitor's own environ; nothing is stored. An answer
        rendered with the visitor's cookies or credentials, or a preview, leaves
        ``private``: no cache in front may keep it for others. ``unshared``: an
        answer that would have been rendered from the key (the store is down, the page
        may have been refused) leaves private too if the page asks to be cached, or
        is a ``304`` for a page that ``asked`` (:func:`~wsgi_isr.policy.unshared_headers`)."""
        personal = preview or _has_credentials(environ)

        def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if personal:
                headers = private_headers(client_headers(headers))
            elif unshared:
                # a 304 stands for the page's 200, which asked (Django's
                # ConditionalGetMiddleware leaves X-ISR-* out of it)
                headers = unshared_headers(headers, asked=asked and status[:3] == "304")
            else:
                headers = client_headers(headers)
            headers += [("X-ISR-Cache", label), ("Cache-Status", status_value)]
            return start_response(status, headers, exc_info)

        return self.app(environ, sr)

    def _store_failed(self, exc: StoreError) -> None:
        self.stats.incr("store_errors")
        now = time.monotonic()
        if now - self._last_store_error > 10.0:  # once per interval, not per request
            self._last_store_error = now
            log.error("wsgi_isr: store error, serving from the application: %s", exc)

    def _find(
        self, environ: WSGIEnvironment, rk: RequestKey, through: bool = False
    ) -> tuple[Record | None, Mapping[str, TagState], str, tuple[str, ...]]:
        """The record for this request (following a Vary marker to the variant),
        the tag states, and the key and vary names it was found under."""
        lookup = self.store.lookup_through if through else self.store.lookup
        record, tag_states = lookup(rk.key)
        if isinstance(record, VaryMarker):
            return self._variant(environ, rk, record, lookup)
        return record, tag_states, rk.key, _NO_VARY

    def _variant(
        self,
        environ: WSGIEnvironment,
        rk: RequestKey,
        marker: VaryMarker,
        lookup: Callable[[str], tuple[Record | None, Mapping[str, TagState]]],
    ) -> tuple[Record | None, Mapping[str, TagState], str, tuple[str, ...]]:
        """The variant a Vary marker points this request to, as :meth:`_find` gives it."""
        vary = marker.headers
        key = variant_key(rk.key, vary, environ)
        record, tag_states = lookup(key)
        return record, tag_states, key, vary

    def _serve(
        self, environ: WSGIEnvironment, start_response: StartResponse, rk: RequestKey
    ) -> Iterable[bytes]:
        # a miss of this process waits on the key (or renders it): join it, no round trip
        landings = self.landings
        if not landings.idle and landings.joinable(rk.key) and not _has_credentials(environ):
            self.stats.incr("misses")
            return self._as_current(coalesced_miss, self, environ, start_response, rk, rk.key, ())
        store = self.store
        key, vary = rk.key, _NO_VARY
        try:
            # _find inline: the hit path's one lookup, no tuple built and taken apart
            record, tag_states = store.lookup(key)
            if isinstance(record, VaryMarker):
                record, tag_states, key, vary = self._variant(environ, rk, record, store.lookup)
            now = store.now()
        except StoreError as exc:
            return self._as_current(self._store_down, environ, start_response, exc)
        if isinstance(record, Entry):
            state = record.state(now, tag_states)
            # the hit path: nothing more to decide (and no application code to run)
            if state is State.FRESH and not (
                (record.prepared or R.prepared(record)).personal and _has_credentials(environ)
            ):
                self._count_hit()
                return self._respond(environ, start_response, record, now, R.HIT)
        else:
            state = None
        return self._as_current(
            self._decide, environ, start_response, rk, record, tag_states, key, vary, now, state
        )

    def _decide(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        rk: RequestKey,
        record: Record | None,
        tag_states: Mapping[str, TagState],
        key: str,
        vary: tuple[str, ...],
        now: float,
        state: State | None,
    ) -> Iterable[bytes]:
        """Everything but a plain fresh hit: a local copy to check in the backend,
        stale pages, misses, markers, visitors with credentials."""
        ticket = None
        if state is not State.FRESH and isinstance(self.store, LocalLayer):
            # only a FRESH local copy is trusted, or a STALE one being regenerated with
            # no landing heard since: anything else may be out of date
            ticket = self.regen.ask(key, record, state)
            if ticket is not None:
                local_key = key
                try:
                    record, tag_states, key, vary = self._find(environ, rk, through=True)
                except StoreError as exc:
                    return self._store_down(environ, start_response, exc)
                finally:
                    self.regen.asked(local_key, ticket)
                state = record.state(now, tag_states) if isinstance(record, Entry) else None
        if isinstance(record, PassMarker):
            return self._hit_for_pass(environ, start_response, record)
        if (
            isinstance(record, Entry)
            and _has_credentials(environ)
            and varies_on_credentials(record.headers)
        ):  # the copy is the one for visitors without them; refreshed if it is not fresh
            self.stats.incr("misses")
            seen = None if state is State.FRESH else record.created
            return personal_miss(self, environ, start_response, rk, key, vary, seen)
        if isinstance(record, Entry):
            if state is State.FRESH:
                self.stats.incr("hits")
                return self._respond(environ, start_response, record, now, R.HIT)
            if state is State.STALE:
                self.stats.incr("stale")
                self.regen.schedule(environ, rk, key, vary, record.created, ticket=ticket)
                return self._respond(environ, start_response, record, now, R.STALE)
        self.stats.incr("misses")
        if _has_credentials(environ):
            seen = record.created if isinstance(record, Entry) else None
            return personal_miss(self, environ, start_response, rk, key, vary, seen)
        return coalesced_miss(self, environ, start_response, rk, key, vary)

    def _store_down(
        self, environ: WSGIEnvironment, start_response: StartResponse, exc: StoreError
    ) -> Iterable[bytes]:
        """Fail open: the app answers the visitor's own request, logged once per interval;
        the answer was not rendered from the key, so it promises no shared caching."""
        self._store_failed(exc)
        return self._pass(environ, start_response, R.BYPASS, R.CS_STORE_ERROR, unshared=True)

    def _hit_for_pass(
        self, environ: WSGIEnvironment, start_response: StartResponse, marker: PassMarker
    ) -> Iterable[bytes]:
        """A page known not to be storable right now: straight to the app. One that
        opted in but was refused leaves private (its answer is the visitor's own)."""
        self.stats.incr("passes")
        asked = marker.reason != NOT_OPTED_IN
        return self._pass(
            environ, start_response, R.BYPASS, R.CS_UNCACHEABLE, unshared=True, asked=asked
        )

    def _respond(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        entry: Entry,
        now: float,
        label: str,
        detail: str | None = None,
    ) -> Iterable[bytes]:
        headers = R.entry_headers(entry, now, label, detail)
        if self.edge is not None:  # tags for the caches in front, cdn_max_age
            headers = self.edge.apply(entry, headers)
        if R.not_modified(entry, environ):
            start_response(R.STATUS_304, R.headers_304(headers))
            return []
        start_response(entry.status, headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            return []
        return [entry.body]


__all__ = ["ISRMiddleware"]
