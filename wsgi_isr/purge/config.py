"""Building the purge setup from the middleware's ``purge=`` and ``cdn_max_age=``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .base import Purger
from .cloudflare import CloudflarePurger
from .edge import EdgeHeaders
from .fastly import FastlyPurger
from .queue import PurgeQueue
from .varnish import VarnishPurger


def open_purger(target: str | Purger) -> Purger:
    """A :class:`Purger` from ``varnish://host:port``, ``fastly://SERVICE_ID[?token=]``,
    ``cloudflare://ZONE_ID[?token=]``, or the object itself. ``ValueError`` otherwise."""
    if isinstance(target, Purger):
        return target
    if not isinstance(target, str):
        raise ValueError(f"a purge target is a URL or a Purger, got {target!r}")
    scheme = target.partition("://")[0].lower()
    if scheme == "varnish":
        return VarnishPurger(target)
    if scheme == "fastly":
        return FastlyPurger.from_url(target)
    if scheme == "cloudflare":
        return CloudflarePurger.from_url(target)
    raise ValueError(
        f"unknown purge target {target.split('?')[0]!r}: use varnish://, fastly:// or "
        "cloudflare://, or pass a Purger"
    )


def configure(purge: Any, cdn_max_age: Any) -> tuple[PurgeQueue | None, EdgeHeaders | None]:
    """The queue and the header hook for the middleware's ``purge=`` and
    ``cdn_max_age=`` options (validated here, at start-up)."""
    if cdn_max_age is not None and (
        not isinstance(cdn_max_age, int) or isinstance(cdn_max_age, bool) or cdn_max_age < 0
    ):
        raise ValueError(f"cdn_max_age must be a whole number of seconds >= 0, got {cdn_max_age!r}")
    queue: PurgeQueue | None
    if purge is None:
        queue = None
    elif isinstance(purge, PurgeQueue):
        queue = purge
    else:
        if isinstance(purge, str | Purger):
            purge = [purge]
        if not isinstance(purge, Iterable):
            raise ValueError(f"purge takes a list of targets, got {purge!r}")
        queue = PurgeQueue([open_purger(t) for t in purge])
        if not queue.targets:
            queue = None
    targets = queue.targets if queue is not None else []
    if not targets and cdn_max_age is None:
        return queue, None
    return queue, EdgeHeaders(targets, cdn_max_age)
