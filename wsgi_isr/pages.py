"""What a page decorator records about a view, for every framework adapter.

``@isr.page`` (Flask) and ``@isr_page`` (Django) both build a :class:`PageSpec`:
the opt-in headers a response of the view gets, the ``static_params`` to
pre-render (Next.js ``generateStaticParams``) and whether other parameters are a 404
(``dynamic_params=False``). The adapters only attach it to their framework's view
and response types.

    spec = PageSpec.make("hours", tags=lambda slug: [f"post-{slug}"])
    spec.headers({"slug": "a"})  # [("X-ISR-Revalidate", "3600"), ("X-ISR-Tags", "post-a"), ...]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, cast

from .policy import given_tags
from .profiles import Revalidate, lifetime

Params = Iterable[dict[str, Any]]
ParamKey = tuple[tuple[str, str], ...]


def param_key(params: dict[str, Any]) -> ParamKey:
    """View arguments as a hashable key (values compared as the URL spells them)."""
    return tuple(sorted((k, str(v)) for k, v in params.items()))


@dataclasses.dataclass(frozen=True)
class PageSpec:
    """What a page decorator recorded about a view."""

    revalidate: int | float | bool
    tags: Iterable[str] | Callable[..., Iterable[str]]
    expire: int | float | None
    static_params: Callable[[], Params] | None
    dynamic_params: bool
    _known: list[set[ParamKey]] = dataclasses.field(default_factory=list, compare=False, repr=False)

    @classmethod
    def make(
        cls,
        revalidate: Revalidate = False,
        *,
        tags: Iterable[str] | Callable[..., Iterable[str]] = (),
        expire: int | float | None = None,
        static_params: Callable[[], Params] | None = None,
        dynamic_params: bool = True,
    ) -> PageSpec:
        """Check the decorator's arguments (a ``ValueError`` when the view is decorated,
        not at its first request); a profile name (``"hours"``) sets ``expire`` too
        unless it is given."""
        if isinstance(revalidate, str):
            seconds, expire = lifetime(revalidate, expire)
            revalidate = cast(float, seconds)
        if revalidate is True or (not isinstance(revalidate, bool) and revalidate < 0):
            raise ValueError("revalidate must be a number of seconds >= 0, or False")
        if expire is not None and expire <= 0:
            raise ValueError("expire must be positive")
        if not dynamic_params and static_params is None:
            raise ValueError("dynamic_params=False needs static_params")
        return cls(revalidate, tags, expire, static_params, dynamic_params)

    def allows(self, kwargs: dict[str, Any]) -> bool:
        """Whether a request with these view arguments may run the view."""
        if self.dynamic_params:
            return True
        if not self._known:  # static_params is called once, at the first request
            assert self.static_params is not None
            self._known.append({param_key(p) for p in self.static_params()})
        return param_key(kwargs) in self._known[0]

    def headers(self, kwargs: dict[str, Any]) -> list[tuple[str, str]]:
        """The opt-in headers of a response of the view called with ``kwargs``."""
        revalidate = "false" if self.revalidate is False else f"{self.revalidate:g}"
        out = [("X-ISR-Revalidate", revalidate)]
        # beyond ASCII percent-encoded here: a framework would MIME-encode the header;
        # each checked before they are joined, so a URL argument cannot add tags
        tags = given_tags(self.tags(**kwargs) if callable(self.tags) else self.tags, "page")
        if tags:
            out.append(("X-ISR-Tags", ", ".join(tags)))
        if self.expire is not None:
            out.append(("X-ISR-Expire", f"{self.expire:g}"))
        return out
