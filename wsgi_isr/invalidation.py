"""On-demand invalidation: turning tags and paths into the tags the store records.

Invalidating never touches cached pages: the store records, per tag, when it
was invalidated, and a page is stale if any of its tags (explicit, or the
implicit page/layout tags of its path) was invalidated after its render
started. The cost is one write per tag, whatever the number of cached pages.

    wsgi_isr.revalidate_tag("post-hello-world")
    wsgi_isr.revalidate_path("/docs", "layout", mode="hard")
"""

from __future__ import annotations

import contextvars
import gc
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from .keys import layout_tag, page_tag
from .policy import api_tags, valid_tags

if TYPE_CHECKING:
    from .middleware import ISRMiddleware

Mode = Literal["soft", "hard"]
PathType = Literal["page", "layout"]
MAX_PATH = 2048
INVALID_TAG = (
    "invalid tag: printable characters without spaces or commas, at most 256 characters "
    "once those beyond ASCII are percent-encoded, not starting with '_isr_'"
)

#: The middleware handling the current request; module-level helpers act on it.
current_middleware: contextvars.ContextVar[ISRMiddleware | None] = contextvars.ContextVar(
    "wsgi_isr.current", default=None
)
#: Every middleware alive in this process (graceful shutdown joins them all).
instances: weakref.WeakSet[ISRMiddleware] = weakref.WeakSet()


def check_mode(mode: object) -> Mode:
    if mode not in ("soft", "hard"):
        raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
    return mode


def checked_tags(tags: Iterable[str]) -> list[str]:
    """The tags, deduplicated; ``ValueError`` if any is invalid."""
    tags = list(tags)
    for t in tags:
        if not isinstance(t, str):
            raise ValueError(
                f"tags are strings, got {type(t).__name__} {t!r}; "
                "pass several as separate arguments: revalidate_tag(*tags)"
            )
    tags = api_tags(tags)
    good = valid_tags(tags, source="revalidate_tag", limit=None)
    if len(good) != len(set(tags)):
        raise ValueError(INVALID_TAG)
    return good


def path_tag(path: object, type: object = "page") -> str:
    """The implicit tag that invalidates ``path`` as a page or as a layout."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) > MAX_PATH:
        raise ValueError(f"path must start with '/' (at most {MAX_PATH} characters), got {path!r}")
    if "?" in path or "#" in path:
        raise ValueError(
            f"a path carries no query or fragment, got {path!r}: "
            "revalidate_path invalidates every query variant of the path"
        )
    if type == "page":
        return page_tag(path)
    if type == "layout":
        return layout_tag(path)
    raise ValueError(f"type must be 'page' or 'layout', got {type!r}")


def revalidate_many(
    mw: ISRMiddleware, tags: Iterable[str], paths: Iterable[str], *, layout: bool, hard: bool
) -> Mode:
    """Tags and paths (pages, or layouts) invalidated in one store call, as the CLI
    commands take them; a ``ValueError`` names the first bad one. Returns the mode."""
    mode: Mode = "hard" if hard else "soft"
    kind = "layout" if layout else "page"
    tags = list(tags)
    targets = (checked_tags(tags) if tags else []) + [path_tag(p, kind) for p in paths]
    mw.invalidate(targets, mode)
    return mode


def live_instances() -> list[ISRMiddleware]:
    """Every middleware alive in this process. One that was dropped can live on in a
    reference cycle until the next collection: when there seem to be several, collect
    first (holding no strong reference meanwhile)."""
    if len(instances) > 1:
        gc.collect()
    return list(instances)


def only_middleware(
    what: str = "wsgi_isr.revalidate_tag()",
    instead: str = "call mw.revalidate_tag() / mw.revalidate_path() on the right one "
    "(Flask: isr.revalidate_tag())",
) -> ISRMiddleware:
    """The middleware handling the current request or render, else the only one in
    the process. With none, or several and no request to tell them apart (two sites
    in one process), a ``RuntimeError`` naming ``what`` and saying what to do ``instead``."""
    mw = current_middleware.get()
    if mw is not None:
        return mw
    alive = live_instances()
    if len(alive) == 1:
        return alive[0]
    found = f"{len(alive)} ISRMiddleware instances exist" if alive else "no ISRMiddleware exists"
    raise RuntimeError(
        f"{what}: {found} in this process and none is handling the current request; {instead}"
    )


def current() -> ISRMiddleware:
    """The middleware module-level helpers act on (see :func:`only_middleware`)."""
    return only_middleware()


def revalidate_tag(*tags: str, mode: Mode = "soft") -> float:
    """Invalidate tags through the :func:`current` middleware.

    See :meth:`ISRMiddleware.revalidate_tag`; usable from any view, e.g. a CMS webhook.
    """
    return current().revalidate_tag(*tags, mode=mode)


def revalidate_path(path: str, type: PathType = "page", *, mode: Mode = "soft") -> float:
    """Invalidate a path through the :func:`current` middleware.

    See :meth:`ISRMiddleware.revalidate_path`.
    """
    return current().revalidate_path(path, type, mode=mode)
