"""What cached data tells the page render it is used in (see :mod:`wsgi_isr.datacache`).

A :class:`Scope` is current while a page renders (:func:`page_scope`, entered by
:func:`wsgi_isr.render.capture`) and while a cached function's body runs: cached calls
report to it the lowest remaining freshness of what they returned, and their tags go to
the render's tag list (the one :func:`wsgi_isr.tag` fills). After the render,
:func:`cap_headers` lowers the page's freshness to that of its data.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .invalidation import current_middleware
from .policy import _render_tags, header_values, parse_cache_control, parse_seconds


@dataclasses.dataclass(slots=True)
class Scope:
    """What cached calls report to the render (or the cached body) they run in."""

    #: implicit path tags of the page being rendered: their invalidation reaches its data
    path_tags: tuple[str, ...] = ()
    #: the lowest remaining freshness of the data used (seconds)
    cap: float = math.inf

    def used(self, remaining: float) -> None:
        self.cap = min(self.cap, remaining)


current_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "wsgi_isr.data_scope", default=None
)


@contextmanager
def page_scope(path_tags: tuple[str, ...]) -> Iterator[Scope]:
    """Entered around a page render (:func:`wsgi_isr.render.capture`)."""
    scope = Scope(path_tags)
    token = current_scope.set(scope)
    try:
        yield scope
    finally:
        current_scope.reset(token)


def cap_headers(headers: list[tuple[str, str]], cap: float) -> list[tuple[str, str]]:
    """The page's opt-in headers with its freshness lowered to ``cap`` seconds (the
    remaining freshness of the data it used); a page that did not opt in is left alone."""
    if math.isinf(cap):
        return headers
    cap = max(cap, 0.001)  # 0 would mean "do not cache"
    isr = header_values(headers, "x-isr-revalidate")
    expire: float | None = None
    if isr:
        raw = isr[-1].strip().lower()
        current = math.inf if raw == "false" else parse_seconds(raw)
        if current is None or current == 0 or current <= cap:
            return headers
    else:
        cc = parse_cache_control(", ".join(header_values(headers, "cache-control")))
        current = parse_seconds(cc.get("s-maxage") or "") if "s-maxage" in cc else None
        if not current or current <= cap:
            return headers
        swr = parse_seconds(cc.get("stale-while-revalidate") or "")
        expire = current if swr is None else current + swr
    out = [(k, v) for k, v in headers if k.lower() != "x-isr-revalidate"]
    out.append(("X-ISR-Revalidate", repr(cap)))
    if expire is not None and not header_values(headers, "x-isr-expire"):
        out.append(("X-ISR-Expire", repr(expire)))
    return out


def carry_middleware(task: Callable[[], None]) -> Callable[[], None]:
    """``task`` run with the current middleware still current (a background render runs
    in another thread or greenlet, whose context starts empty)."""
    mw = current_middleware.get()
    if mw is None:
        return task

    def run() -> None:
        token = current_middleware.set(mw)
        try:
            task()
        finally:
            current_middleware.reset(token)

    return run


def report(tags: tuple[str, ...], remaining: float) -> None:
    """Tell the enclosing render (or cached body) which tags and freshness it used."""
    collected = _render_tags.get()
    if collected is not None:
        collected.extend(tags)
    scope = current_scope.get()
    if scope is not None:
        scope.used(remaining)


__all__ = ["Scope", "cap_headers", "carry_middleware", "page_scope", "report"]
