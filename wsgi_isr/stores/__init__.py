"""Stores: where cached pages, tag state and locks live.

``open_store`` turns what a user passes as ``store=`` into a :class:`Store`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..bounded import parse_size
from .base import Store
from .file import FileStore
from .local import LocalLayer
from .memory import MemoryStore
from .redis import RedisStore

__all__ = [
    "FileStore",
    "LocalLayer",
    "MemoryStore",
    "RedisStore",
    "Store",
    "default_cache_dir",
    "open_store",
]


def default_cache_dir() -> str:
    """Where the default filesystem store lives: ``$WSGI_ISR_CACHE_DIR``, else
    ``.isr-cache`` in the current working directory (the same for every worker
    a process manager starts from one deployment directory)."""
    return os.path.abspath(os.environ.get("WSGI_ISR_CACHE_DIR") or ".isr-cache")


def open_store(spec: Any, *, clock: Callable[[], float] = time.time) -> Store:
    """Build a store from a URL, a :class:`Store`, or a cachelib cache.

    >>> open_store("memory://").description
    'memory (max_entries=10000)'
    """
    if spec is None:
        return FileStore(default_cache_dir(), clock=clock)
    if isinstance(spec, Store):
        return spec
    if isinstance(spec, str):
        return _from_url(spec, clock)
    from cachelib import BaseCache, FileSystemCache, RedisCache, SimpleCache

    if isinstance(spec, SimpleCache):
        return MemoryStore(cache=spec, clock=clock)
    if isinstance(spec, FileSystemCache):
        # its directory and bound, not the cache itself: cachelib pickles entries and
        # its counter file, and a store must never unpickle what it reads back
        return FileStore(spec._path, max_entries=spec._threshold, clock=clock)
    if isinstance(spec, RedisCache):
        return RedisStore(client=spec._write_client, prefix=spec._get_prefix(), clock=clock)
    if isinstance(spec, BaseCache):
        raise ValueError(
            f"{type(spec).__name__} cannot hold locks atomically; use memory://, "
            "file:///path or redis://host:port/db"
        )
    raise ValueError(f"store must be a URL, a Store or a cachelib cache, not {spec!r}")


_INT_OPTIONS = ("max_entries", "max_markers")
_TRUE = ("1", "true", "yes", "on")


def _bound_options(url: str, query: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """``?max_entries=100000&max_bytes=2GB`` as keyword arguments, checked."""
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            raise ValueError(f"unknown option {name!r} in store URL {url!r}: expected {allowed}")
        try:
            if name in _INT_OPTIONS:
                options[name] = int(value)
            elif name in ("max_bytes", "memo_bytes"):
                options[name] = parse_size(value)
            else:
                options[name] = value.lower() in _TRUE
        except ValueError as exc:
            raise ValueError(f"bad {name} in store URL {url!r}: {exc}") from exc
    return options


#: Query options of any store URL that put an in-process layer in front of it.
_LOCAL_OPTIONS = ("local_ttl", "local_max_entries", "local_max_bytes", "local_max_markers")


def _from_url(url: str, clock: Callable[[], float]) -> Store:
    """``...?local_ttl=1&local_max_bytes=64MB`` on any URL: the store behind a
    :class:`LocalLayer` so bounded."""
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    local = {k[len("local_") :]: v for k, v in pairs if k in _LOCAL_OPTIONS}
    if not local:
        return _backend(url, clock)
    rest = urlencode([(k, v) for k, v in pairs if k not in _LOCAL_OPTIONS])
    backend = _backend(base + ("?" + rest if rest else ""), clock)
    if "ttl" not in local:
        raise ValueError(f"local_max_* options need local_ttl in store URL {url!r}")
    try:
        return LocalLayer(
            backend,
            ttl=float(local["ttl"]),
            max_entries=int(local.get("max_entries", 10_000)),
            max_bytes=parse_size(local.get("max_bytes", "64MiB")),
            max_markers=int(local.get("max_markers", 1_000)),
        )
    except ValueError as exc:
        raise ValueError(f"bad local layer option in store URL {url!r}: {exc}") from exc


def _backend(url: str, clock: Callable[[], float]) -> Store:
    parts = urlsplit(url)
    if parts.scheme == "memory":
        options = _bound_options(url, parts.query, ("max_entries", "max_bytes", "max_markers"))
        return MemoryStore(clock=clock, **options)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file store URL must be file:///absolute/path, got {url!r}")
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise ValueError(f"file store URL needs a directory: {url!r}")
        options = _bound_options(
            url,
            parts.query,
            ("max_entries", "max_bytes", "max_markers", "memo_bytes", "allow_shared_dir"),
        )
        return FileStore(path, clock=clock, **options)
    if parts.scheme in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"):
        return RedisStore(url, clock=clock)
    raise ValueError(
        f"unknown store URL {url!r}: expected memory://, file:///path, redis://host:port/db, "
        "redis+sentinel://host:port/service or redis+cluster://host:port"
    )
