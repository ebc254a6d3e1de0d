"""``@isr_page``: opt a Django view in, and list the pages to pre-render.

from wsgi_isr.django import isr_page

@isr_page(revalidate=60, tags=lambda slug: [f"article-{slug}", "articles"],
          static_params=lambda: [{"slug": s} for s in popular_slugs()])
def article(request, slug): ...

@method_decorator(isr_page(revalidate=300, tags=["articles"]), name="get")  # or "dispatch"
class ArticleList(ListView): ...
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction
from django.http import Http404, HttpRequest, HttpResponseBase

from ..pages import PageSpec, Params
from ..profiles import Revalidate

F = TypeVar("F", bound=Callable[..., Any])


def isr_page(
    revalidate: Revalidate = False,
    *,
    tags: Iterable[str] | Callable[..., Iterable[str]] = (),
    expire: int | float | None = None,
    static_params: Callable[[], Params] | None = None,
    dynamic_params: bool = True,
) -> Callable[[F], F]:
    """Cache the view's responses (it sets the ``X-ISR-*`` headers).

    :param revalidate: seconds the page stays fresh; ``False`` until invalidated; or a
        profile (``"minutes"``, ``"hours"``, ... as for :func:`wsgi_isr.cached`), which
        sets ``expire`` too unless it is given.
    :param tags: tags, or a callable taking the view's keyword arguments (the URL
        pattern's named groups).
    :param expire: past this age a stale copy is not served.
    :param static_params: returns the view keyword arguments to pre-render with
        ``manage.py isr build`` (like Next.js ``generateStaticParams``).
    :param dynamic_params: ``False`` raises ``Http404`` for arguments outside
        ``static_params`` without running the view.
    """
    spec = PageSpec.make(
        revalidate,
        tags=tags,
        expire=expire,
        static_params=static_params,
        dynamic_params=dynamic_params,
    )

    def opted_in(response: Any, kwargs: dict[str, Any]) -> Any:
        if isinstance(response, HttpResponseBase):
            for name, value in spec.headers(kwargs):
                response[name] = value
        return response

    async def _awaited(response: Awaitable[Any], kwargs: dict[str, Any]) -> Any:
        return opted_in(await response, kwargs)

    def decorator(view: F) -> F:
        # an async view stays one for Django; asgiref's test, as Django's own: it also
        # knows the async as_view() of a class-based view (markcoroutinefunction)
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if not spec.allows(kwargs):
                    raise Http404("not one of this page's static_params")
                return opted_in(await view(request, *args, **kwargs), kwargs)

        else:

            @functools.wraps(view)
            def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if not spec.allows(kwargs):
                    raise Http404("not one of this page's static_params")
                response = view(request, *args, **kwargs)
                if inspect.isawaitable(response):
                    # View.dispatch is sync and hands back the coroutine of an async
                    # handler (method_decorator(..., name="dispatch")): Django awaits it
                    return _awaited(response, kwargs)
                return opted_in(response, kwargs)

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
    the ``@isr_page`` views whose pattern takes no arguments: each URL pattern reversed
    on its own (a view at several URLs, an unnamed one inside a namespaced include),
    and under ``i18n_patterns`` once per language of ``settings.LANGUAGES``."""
    from django.urls import URLPattern, URLResolver, get_resolver

    # each view's spec, with every (resolvers above, pattern) it is reached through
    views: dict[int, tuple[PageSpec, list[tuple[list[Any], URLPattern]]]] = {}

    def walk(patterns: Iterable[Any], chain: list[Any]) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, [*chain, pattern])
            elif isinstance(pattern, URLPattern):
                spec = page_spec(pattern.callback)
                if spec is not None:
                    views.setdefault(id(spec), (spec, []))[1].append((chain, pattern))

    walk(get_resolver(urlconf).url_patterns, [])
    paths: list[str] = []
    for spec, reached in views.values():
        if spec.static_params is None:  # those that take no arguments
            paths += [url for chain, pattern in reached for url in _reverse(chain, pattern, {})]
            continue
        for params in spec.static_params():
            urls = [url for chain, pattern in reached for url in _reverse(chain, pattern, params)]
            if not urls:
                pattern = reached[0][1]
                raise ValueError(
                    f"static_params of {pattern.name or pattern.callback!r} gave "
                    f"{params!r}, which none of its URL patterns takes"
                )
            paths += urls
    return list(dict.fromkeys(paths))


def _reverse(chain: list[Any], pattern: Any, kwargs: dict[str, Any]) -> list[str]:
    """``pattern`` (below the resolvers of ``chain``) reversed with ``kwargs``, in every
    language when a resolver is ``i18n_patterns``' (empty if it does not take them).
    A resolver of this one pattern alone: ``reverse()`` by name or view finds only one
    URL per name and cannot reach an unnamed pattern under a namespace."""
    from django.conf import settings
    from django.urls import NoReverseMatch, URLResolver, get_script_prefix
    from django.urls.resolvers import LocalePrefixPattern, RegexPattern
    from django.utils import translation
    from django.utils.encoding import iri_to_uri

    inner: list[Any] = [pattern]
    for parent in reversed(chain):
        inner = [URLResolver(parent.pattern, inner, parent.default_kwargs)]
    resolver = URLResolver(RegexPattern(r"^/"), inner)
    localised = any(isinstance(p.pattern, LocalePrefixPattern) for p in chain)
    languages = [code for code, _ in settings.LANGUAGES] if localised else [None]
    out = []
    for language in languages:
        scope = translation.override(language) if language else contextlib.nullcontext()
        with scope, contextlib.suppress(NoReverseMatch):
            url = resolver._reverse_with_prefix(pattern.callback, get_script_prefix(), **kwargs)
            out.append(iri_to_uri(url))
    return out
