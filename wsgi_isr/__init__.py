"""wsgi_isr — Incremental Static Regeneration as WSGI middleware."""

from .datacache import cached
from .entry import Entry, State
from .errors import ISRError, StoreError
from .invalidation import current, revalidate_path, revalidate_tag
from .middleware import ISRMiddleware
from .policy import tag
from .stores import FileStore, MemoryStore, RedisStore, Store, open_store

__all__ = [
    "Entry",
    "FileStore",
    "ISRError",
    "ISRMiddleware",
    "MemoryStore",
    "RedisStore",
    "State",
    "Store",
    "StoreError",
    "cached",
    "current",
    "open_store",
    "revalidate_path",
    "revalidate_tag",
    "tag",
]
