"""The data cache: cached functions that share tags and invalidation with pages.

Like Next.js ``unstable_cache`` / ``"use cache"``, but synchronous and better on
freshness: inside a page render stale data is refreshed in the foreground, so one
regeneration is enough to show new data::

    from wsgi_isr import cached

    @cached(revalidate=300, tags=lambda slug: [f"post-{slug}"])
    def get_post(slug: str) -> dict: ...

    wsgi_isr.revalidate_tag("post-hello")   # the data and every page that used it

A call is keyed by the function's module and qualified name plus its arguments as
canonical JSON (``key=`` to override, e.g. for methods). Values must be JSON: they
are stored as JSON text in the page store, under the same safe record format.

- FRESH: the function is not called.
- STALE outside a page render: the stale value is returned at once and ONE
  background refresh runs (a lock shared by every process using the store),
  backed off after a failure.
- STALE inside a page render, MISS, EXPIRED: called in the foreground, concurrent
  callers of the same key waiting for one call. Its lock is a short lease, renewed
  while the call runs (as a page render's): a caller whose process dies frees it
  within seconds. A call that raised, or whose value is too big to store, marks the
  key failed in its process for :data:`FAILED_FOR`: the callers there that waited for
  it call the function themselves at once instead of queueing one behind another
  (a waiting process takes the lock once, not each of its callers).

Inside a page render every cached call, hit or not, adds its tags (and those its
body added with :func:`wsgi_isr.tag`) to the page, and caps the page's freshness
at the data's remaining freshness.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from .datascope import Scope, current_scope, report
from .entry import DataEntry, State
from .errors import StoreError
from .invalidation import only_middleware
from .policy import _render_tags, given_tags, valid_tags
from .profiles import Revalidate, lifetime
from .stores import LocalLayer
from .stores.breaker import one_wait

if TYPE_CHECKING:
    from .middleware import ISRMiddleware

log = logging.getLogger("wsgi_isr")

P = ParamSpec("P")
R = TypeVar("R")

MAX_BACKOFF = 300.0
#: How long a failed call (raised, or too big to store) sends its waiters straight to
#: the function, as a failed first render does for pages.
FAILED_FOR = 1.0
#: Keys remembered as failed, per cached function (then forgotten all at once).
MAX_FAILED = 10_000
#: Argument parts of keys longer than this are hashed.
MAX_ARGS_KEY = 200


def the_middleware() -> ISRMiddleware:
    """The middleware handling the current request or render, else the only one in the
    process; ``RuntimeError`` when there is none, or several."""
    return only_middleware(
        "wsgi_isr.cached", "bind the function to one with mw.cached(...) (Flask: isr.cached(...))"
    )


# -- keys and values -------------------------------------------------------------------------

#: Which function each cached name (module + qualified name) keys, by its code.
_claimed: dict[str, Any] = {}


def _claim_name(name: str, fn: Callable[..., Any]) -> None:
    """Two different functions under one name (two lambdas of a module, two defs of
    one name in a class body) would share their stored values: a ``TypeError``, saying
    to give one ``key=``. The same function decorated again (an app factory called
    twice) is fine."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return
    claimed = _claimed.setdefault(name, code)
    if claimed is not code:
        raise TypeError(
            f"another cached function is already named {name}: their values would be "
            "shared; give one of them key=..."
        )


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_JSON = (str, int, float, bool, type(None))


def _check_json(value: Any, name: str, path: str = "value") -> None:
    """``TypeError`` naming the function unless ``value`` is plain JSON (tuples, sets,
    objects and non-string keys included: they would not come back as they went in)."""
    kind = type(value)
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(
                    f"cached function {name} returned a dict with a non-string key {k!r}"
                    f" in {path}: values must be JSON"
                )
            _check_json(v, name, f"{path}[{k!r}]")
    elif kind is list:
        for i, v in enumerate(value):
            _check_json(v, name, f"{path}[{i}]")
    elif kind is float:
        if not math.isfinite(value):
            raise TypeError(f"cached function {name} returned {value!r} in {path}: not JSON")
    elif kind is int and value.bit_length() > 14_000:  # near sys.get_int_max_str_digits()
        try:
            str(value)
        except ValueError:
            raise TypeError(
                f"cached function {name} returned an int too long for JSON in {path}"
            ) from None
    elif kind not in _JSON:
        raise TypeError(
            f"cached function {name} returned a {kind.__name__} in {path}: values must be"
            " JSON (dict, list, str, int, float, bool, None)"
        )


def _dumps(value: Any, *, key: bool = False) -> str:
    """JSON text of a value (its dicts in their own order: a hit gives back what the
    function returned), or of an argument (``key``: sorted, one key however it was
    built)."""
    return json.dumps(value, sort_keys=key, separators=(",", ":"), ensure_ascii=False)


def _keyable(value: Any, name: str, arg: str) -> str:
    try:
        _check_json(value, name)
    except TypeError:
        raise TypeError(
            f"cached function {name}: argument {arg!r} ({type(value).__name__}) cannot be"
            " part of the cache key: pass JSON-compatible arguments, or key=..."
        ) from None
    return _dumps(value, key=True)


# -- the cached function ---------------------------------------------------------------------


class CachedFunction(Generic[P, R]):
    """A function whose results live in the ISR store. Made by :func:`cached`,
    :meth:`ISRMiddleware.cached` or Flask's ``isr.cached``."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        revalidate: Revalidate,
        tags: Iterable[str] | Callable[..., Iterable[str]],
        expire: float | None,
        key: Callable[..., Any] | None,
        middleware: Callable[[], ISRMiddleware],
        background: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.fn = fn
        self.revalidate, self.expire = lifetime(revalidate, expire)
        self.tags = tags if callable(tags) else tuple(tags)
        self.key_fn = key
        self._middleware = middleware
        self._background = background
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        if key is None:
            _claim_name(self.name, fn)
        self._signature = inspect.signature(fn) if key is None else None
        self._failures: dict[str, int] = {}
        self._failed_until: dict[str, float] = {}  # key -> monotonic time it stops counting
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<cached {self.name}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        # a method: bind the instance like a plain function would (keys need key=)
        return self if obj is None else functools.partial(self, obj)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The store key of one call."""
        if self.key_fn is not None:
            part = _keyable(self.key_fn(*args, **kwargs), self.name, "key=")
        else:
            assert self._signature is not None
            try:
                bound = self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.name}(): {exc}") from None
            bound.apply_defaults()  # f(1) and f(1, b=2) with b=2 by default: one key
            for n, p in self._signature.parameters.items():
                if p.kind is inspect.Parameter.VAR_POSITIONAL and n in bound.arguments:
                    bound.arguments[n] = list(bound.arguments[n])  # *ids: a JSON list
            part = (
                "{"
                + ",".join(
                    f"{json.dumps(n)}:{_keyable(v, self.name, n)}"
                    for n, v in bound.arguments.items()
                )
                + "}"
            )
        if len(part) > MAX_ARGS_KEY or not _encodes(part):
            # long, or a lone surrogate (valid JSON, not UTF-8, which a store may need)
            part = "#" + hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()
        return f"data:{self.name}:{part}"

    def _tags(self, *args: P.args, **kwargs: P.kwargs) -> list[str]:
        raw = self.tags(*args, **kwargs) if callable(self.tags) else self.tags
        return given_tags(raw, f"cached function {self.name}")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self._get(args, kwargs))

    def _get(self, args: Any, kwargs: Any) -> Any:
        mw = self._middleware()
        key = self.key(*args, **kwargs)
        scope = current_scope.get()
        extra = scope.path_tags if scope is not None else ()
        store = mw.store
        try:
            record, tag_states = store.lookup(key)
            now = store.now()
            entry = record if isinstance(record, DataEntry) else None
            state = entry.state(now, tag_states, extra) if entry is not None else None
            if state is not State.FRESH and isinstance(store, LocalLayer):
                record, tag_states = store.lookup_through(key)
                entry = record if isinstance(record, DataEntry) else None
                state = entry.state(now, tag_states, extra) if entry is not None else None
        except StoreError as exc:
            mw._store_failed(exc)
            return self._call_uncached(args, kwargs)
        if entry is not None and state is State.FRESH:
            mw.stats.incr("data_hits")
            return self._use(entry, now)
        if entry is not None and state is State.STALE and scope is None:
            # outside any render: serve the stale value, refresh once in the background
            mw.stats.incr("data_stale")
            self._schedule(mw, key, entry, args, kwargs)
            return self._use(entry, now)
        mw.stats.incr("data_misses")
        return self._foreground(mw, key, entry, args, kwargs)

    # -- what a call reports to its render ------------------------------------------------

    def _use(self, entry: DataEntry, now: float) -> Any:
        # (a stored value that is not JSON never gets here: the codec reads it as a miss)
        report(entry.tags, entry.remaining(now))
        return json.loads(entry.value)

    def _call_uncached(self, args: Any, kwargs: Any) -> Any:
        """The store is down: call the function, still reporting its tags."""
        value, tags, cap = self._run(args, kwargs, ())
        report(tags, cap)
        return value

    def _run(
        self, args: Any, kwargs: Any, path_tags: tuple[str, ...]
    ) -> tuple[Any, tuple[str, ...], float]:
        """Call the function, collecting the tags and the freshness of what it used."""
        body_tags: list[str] = []
        inner = Scope(path_tags)
        tags_token = _render_tags.set(body_tags)
        scope_token = current_scope.set(inner)
        try:
            value = self.fn(*args, **kwargs)
        finally:
            current_scope.reset(scope_token)
            _render_tags.reset(tags_token)
        _check_json(value, self.name)
        tags = tuple(valid_tags([*self._tags(*args, **kwargs), *body_tags], source=self.name))
        own = math.inf if self.revalidate is None else self.revalidate
        return value, tags, min(own, inner.cap)

    def _compute(
        self, mw: ISRMiddleware, key: str, args: Any, kwargs: Any, path_tags: Any, started: float
    ) -> Any:
        """Call the function and store its value; returns the value and reports it.
        ``started``: the store-clock time its lock was taken, when the call counts as
        started (compared with invalidation times)."""
        store = mw.store
        try:
            value, tags, cap = self._run(args, kwargs, path_tags)
            text = _dumps(value)
        except Exception:
            self._mark_failed(key)
            raise
        revalidate = None if math.isinf(cap) else cap
        if len(text.encode("utf-8", "surrogatepass")) > mw.max_entry_bytes:
            self._mark_failed(key)
            log.warning(
                "wsgi_isr: not caching %s: %d characters of JSON, over max_entry_bytes",
                self.name,
                len(text),
            )
        else:
            entry = DataEntry(text, float(started), revalidate, self.expire, tags)
            ttl = None if self.expire is None else self.expire + 60
            try:
                store.put(key, entry, ttl)
            except StoreError as exc:
                mw._store_failed(exc)
        report(tags, math.inf if revalidate is None else revalidate)
        return value

    def _landed(self, mw: ISRMiddleware, key: str, seen: DataEntry | None) -> DataEntry | None:
        """A fresh value stored by someone else since we looked (``seen``)."""
        record, tag_states = mw.store.lookup_through(key)
        if not isinstance(record, DataEntry):
            return None
        if seen is not None and record.created <= seen.created:
            return None
        scope = current_scope.get()
        extra = scope.path_tags if scope is not None else ()
        return record if record.state(mw.store.now(), tag_states, extra) is State.FRESH else None

    def _mark_failed(self, key: str) -> None:
        """Tell the callers of this process waiting on ``key`` that its call failed (in
        memory: nothing left in the store for a key that may never come again)."""
        if len(self._failed_until) >= MAX_FAILED:
            self._failed_until.clear()
        self._failed_until[key] = time.monotonic() + FAILED_FOR

    def _failed(self, key: str) -> bool:
        """Whether a call of ``key`` failed here within the last :data:`FAILED_FOR` s."""
        return self._failed_until.get(key, 0.0) > time.monotonic()

    @one_wait()
    def _foreground(
        self, mw: ISRMiddleware, key: str, seen: DataEntry | None, args: Any, kwargs: Any
    ) -> Any:
        """Call in the foreground, one caller per key at a time (across processes): the
        others wait for its value, bounded by the middleware's ``coalesce_timeout``; a
        waiter whose leader failed calls the function itself, without storing."""
        scope = current_scope.get()
        path_tags = scope.path_tags if scope is not None else ()
        lock = "data:" + key
        deadline = time.monotonic() + mw.coalesce_timeout
        delay = 0.002
        waited = False
        while True:
            held = None
            try:
                held = mw.regen.lock(lock)  # one lease, renewed while the call runs
                landed = self._landed(mw, key, seen)
                failed = waited and landed is None and held is not None and self._failed(key)
            except StoreError as exc:
                mw._store_failed(exc)
                if held is not None:  # taken, then the store failed: not for a lease
                    _release(mw, lock, held[0])
                return self._call_uncached(args, kwargs)
            if landed is not None or failed:
                if held is not None:
                    _release(mw, lock, held[0])
                if failed:  # the leader raised or could not store: no queue behind it
                    return self._call_uncached(args, kwargs)
                assert landed is not None
                return self._use(landed, mw.store.now())
            if held is not None:
                break
            if time.monotonic() >= deadline:
                return self._call_uncached(args, kwargs)  # the holder is too slow
            waited = True
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        token, started = held
        try:
            with mw.regen.leases.hold(lock, token):
                return self._compute(mw, key, args, kwargs, path_tags, started)
        finally:  # an exception propagates, never cached: the next caller tries again
            _release(mw, lock, token)

    # -- background refresh -----------------------------------------------------------------

    def _schedule(
        self, mw: ISRMiddleware, key: str, seen: DataEntry, args: Any, kwargs: Any
    ) -> None:
        """Start one background refresh of ``key`` unless one runs (or backs off) somewhere."""
        lock = "data-refresh:" + key
        try:  # a lease, renewed while the refresh runs: a killed process frees it soon
            token = mw.store.acquire(lock, mw.regen.lease)
        except StoreError as exc:
            mw._store_failed(exc)
            return
        if token is None:
            return
        # what the body needs around it (Flask: the app context), taken in the caller,
        # and the caller's context variables (which middleware is current)
        context = self._background() if self._background is not None else nullcontext()
        variables = contextvars.copy_context()

        def refresh() -> None:
            with context:
                self._refresh(mw, key, seen, args, kwargs, lock, token)

        if not mw.runner.submit(lambda: variables.run(refresh)):
            _release(mw, lock, token)

    @one_wait(fresh=True)
    def _refresh(
        self,
        mw: ISRMiddleware,
        key: str,
        seen: DataEntry,
        args: Any,
        kwargs: Any,
        lock: str,
        token: str,
    ) -> None:
        hold: float | None = None
        try:
            with mw.regen.leases.hold(lock, token):
                hold = self._refresh_held(mw, key, seen, args, kwargs)
        finally:
            _release(mw, lock, token, hold)

    def _refresh_held(
        self, mw: ISRMiddleware, key: str, seen: DataEntry, args: Any, kwargs: Any
    ) -> float | None:
        """The refresh, under its lease; returns how long to back off, if it failed."""
        hold: float | None = None
        call_lock = "data:" + key
        call_token: str | None = None
        try:
            held = mw.regen.lock(call_lock)
            call_token = None if held is None else held[0]
            if held is None or self._landed(mw, key, seen) is not None:
                return None  # a foreground call is on it, or has just stored a newer value
            outer = current_scope.set(None)
            try:
                with mw.regen.leases.hold(call_lock, held[0]):
                    self._compute(mw, key, args, kwargs, (), held[1])
            finally:
                current_scope.reset(outer)
            self._failures.pop(key, None)
        except StoreError as exc:
            mw._store_failed(exc)
        except Exception:
            log.exception("wsgi_isr: refreshing %s raised; keeping the stale value", self.name)
            mw.stats.incr("data_refreshes_failed")
            n = self._failures.get(key, 0) + 1
            if len(self._failures) > 10_000:
                self._failures.clear()
            self._failures[key] = n
            hold = float(min(mw.regeneration_backoff * 2.0 ** (n - 1), MAX_BACKOFF))
        finally:
            if call_token is not None:
                _release(mw, call_lock, call_token)
        return hold


def _release(mw: ISRMiddleware, lock: str, token: str, hold: float | None = None) -> None:
    try:
        if hold is None:
            mw.store.release(lock, token)
        else:
            mw.store.extend(lock, token, hold)  # the back-off: no refresh until it lapses
    except StoreError as exc:  # the lock's TTL frees it anyway
        mw._store_failed(exc)


def make_cached(
    middleware: Callable[[], ISRMiddleware],
    revalidate: Revalidate,
    tags: Iterable[str] | Callable[..., Iterable[str]],
    expire: float | None,
    key: Callable[..., Any] | None,
    background: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
    """The decorator behind every ``cached``: ``middleware()`` gives the store at call
    time; ``background()``, called in the caller, the context a background refresh runs in."""
    lifetime(revalidate, expire)  # a bad argument fails at decoration time

    def decorator(fn: Callable[P, R]) -> CachedFunction[P, R]:
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"cached: {fn.__qualname__} is async; only sync functions are cached")
        return CachedFunction(
            fn,
            revalidate=revalidate,
            tags=tags,
            expire=expire,
            key=key,
            middleware=middleware,
            background=background,
        )

    return decorator


def cached(
    revalidate: Revalidate = False,
    *,
    tags: Iterable[str] | Callable[..., Iterable[str]] = (),
    expire: float | None = None,
    key: Callable[..., Any] | None = None,
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
    """Cache a function's JSON results in the store of the middleware handling the
    current request (else the only one in the process).

    :param revalidate: seconds the value stays fresh, ``False`` until invalidated, or a
        profile: ``"seconds"``, ``"minutes"``, ``"hours"``, ``"days"``, ``"weeks"``, ``"max"``.
    :param tags: tags, or a callable taking the function's arguments.
    :param expire: past this age a stale value is not used (the call waits for a new one).
    :param key: a callable taking the function's arguments and returning the JSON value
        that keys the call instead of them (methods: ``key=lambda self, slug: slug``).
    """
    return make_cached(the_middleware, revalidate, tags, expire, key)


__all__ = ["CachedFunction", "cached", "make_cached", "the_middleware"]
