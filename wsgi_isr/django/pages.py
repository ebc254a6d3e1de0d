"""``@isr_page``: opt a Django view in, and list the pages to pre-render.

from wsgi_isr.django import isr_page

@isr_page(revalidate=60, tags=lambda slug: [f"article-{slug}", "articles"],
          static_params=lambda: [{"slug": s} for s in popular_slugs()])
def article(request, slug): ...

@method_decorator(isr_page(revalidate=300, tags=["articles"]), name="get")
class ArticleList(ListView): ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from django.http import Http404, HttpRequest, HttpResponseBase

F = TypeVar("F", bound=Callable[..., Any])
Params = Iterable[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class PageSpec:
    """What ``@isr_page`` recorded about a view."""

    revalidate: int | float | bool
    tags: Iterable[str] | Callable[..., Iterable[str]]
    expire: int | float | None
    static_params: Callable[[], Params] | None
    dynamic_params: bool


def _param_key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in params.items()))


def isr_page(
    revalidate: int | float | bool = False,
    *,
    tags: Iterable[str] | Callable[..., Iterable[str]] = (),
    expire: int | float | None = None,
    static_params: Callable[[], Params] | None = None,
    dynamic_params: bool = True,
) -> Callable[[F], F]:
    """Cache the view's responses (it sets the ``X-ISR-*`` headers).

    :param revalidate: seconds the page stays fresh; ``False`` until invalidated.
    :param tags: tags, or a callable taking the view's keyword arguments (the URL
        pattern's named groups).
    :param expire: past this age a stale copy is not served.
    :param static_params: returns the view keyword arguments to pre-render with
        ``manage.py isr build`` (like Next.js ``generateStaticParams``).
    :param dynamic_params: ``False`` raises ``Http404`` for arguments outside
        ``static_params`` without running the view.
    """
    if revalidate is True or (not isinstance(revalidate, bool) and revalidate < 0):
        raise ValueError("revalidate must be a number of seconds >= 0, or False")
    if expire is not None and expire <= 0:
        raise ValueError("expire must be positive")
    if not dynamic_params and static_params is None:
        raise ValueError("dynamic_params=False needs static_params")
    spec = PageSpec(revalidate, tags, expire, static_params, dynamic_params)
    header = "false" if revalidate is False else f"{revalidate:g}"
    known: list[set[tuple[tuple[str, str], ...]]] = []  # filled on first use

    def allowed() -> set[tuple[tuple[str, str], ...]]:
        if not known:
            assert spec.static_params is not None
            known.append({_param_key(p) for p in spec.static_params()})
        return known[0]

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if not spec.dynamic_params and _param_key(kwargs) not in allowed():
                raise Http404("not one of this page's static_params")
            response = view(request, *args, **kwargs)
            if isinstance(response, HttpResponseBase):
                response["X-ISR-Revalidate"] = header
                page_tags = list(spec.tags(**kwargs) if callable(spec.tags) else spec.tags)
                if page_tags:
                    response["X-ISR-Tags"] = ", ".join(page_tags)
                if spec.expire is not None:
                    response["X-ISR-Expire"] = f"{spec.expire:g}"
            return response

        wrapper._isr_page = spec  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorator


def page_spec(callback: Any) -> PageSpec | None:
    """The ``@isr_page`` of a URL pattern's callback: a function view, or a class-based
    view whose ``dispatch`` or ``get`` was decorated through ``method_decorator``."""
    spec = getattr(callback, "_isr_page", None)
    view_class = getattr(callback, "view_class", None)
    if spec is None and view_class is not None:
        for method in ("get", "dispatch"):
            spec = getattr(getattr(view_class, method, None), "_isr_page", None)
            if spec is not None:
                break
    return cast(PageSpec | None, spec)


def static_paths(urlconf: str | None = None) -> list[str]:
    """Every URL that the ``static_params`` of every ``@isr_page`` view asks for, plus
    the ``@isr_page`` views whose pattern takes no arguments."""
    from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse

    paths: list[str] = []

    def walk(patterns: Iterable[Any], namespace: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, inner)
                continue
            if not isinstance(pattern, URLPattern):
                continue
            spec = page_spec(pattern.callback)
            if spec is None:
                continue
            target = f"{namespace}{pattern.name}" if pattern.name else pattern.callback
            if spec.static_params is None:
                with contextlib.suppress(NoReverseMatch):  # it takes arguments, none listed
                    paths.append(reverse(target, urlconf=urlconf))
                continue
            for params in spec.static_params():
                try:
                    paths.append(reverse(target, kwargs=params, urlconf=urlconf))
                except NoReverseMatch:
                    raise ValueError(
                        f"static_params of {pattern.name or pattern.callback!r} gave "
                        f"{params!r}, which its URL pattern does not take"
                    ) from None

    walk(get_resolver(urlconf).url_patterns, "")
    return list(dict.fromkeys(paths))
