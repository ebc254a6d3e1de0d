"""Caches in front (Varnish, Fastly, Cloudflare): tags out, purges on invalidation.

::

    ISRMiddleware(app, purge=["varnish://127.0.0.1:6081",
                              "fastly://SERVICE_ID",          # $FASTLY_API_TOKEN
                              "cloudflare://ZONE_ID"],        # $CLOUDFLARE_API_TOKEN
                  cdn_max_age=3600)

Every cached answer carries the page's tags as edge keys (:func:`edge_key`) in each
target's header, and every invalidation recorded through this process is purged
on every target in the background (:class:`PurgeQueue`). A :class:`Purger` object
may stand in for a URL.
"""

from __future__ import annotations

from .base import PurgeError, Purger, Response, edge_key
from .cloudflare import CloudflarePurger
from .config import configure, open_purger
from .edge import EdgeHeaders
from .fastly import FastlyPurger
from .queue import PurgeQueue
from .varnish import VarnishPurger

__all__ = [
    "CloudflarePurger",
    "EdgeHeaders",
    "FastlyPurger",
    "PurgeError",
    "PurgeQueue",
    "Purger",
    "Response",
    "VarnishPurger",
    "configure",
    "edge_key",
    "open_purger",
]
