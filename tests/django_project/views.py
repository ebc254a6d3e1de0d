from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import cache_control
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.gzip import gzip_page

import wsgi_isr
from wsgi_isr.django import isr_page, revalidate_path, revalidate_tag

from .models import Note

renders = itertools.count(1)
calls: list[str] = []  # every view call, in order


def body(label: str, request: HttpRequest) -> HttpResponse:
    calls.append(label)
    return HttpResponse(f"{label} render {next(renders)} user={request.user}")


@isr_page(
    revalidate=60,
    tags=lambda slug: [f"article-{slug}", "articles"],
    static_params=lambda: [{"slug": "a"}, {"slug": "b"}],
)
def article(request: HttpRequest, slug: str) -> HttpResponse:
    return body(f"article {slug}", request)


@isr_page(revalidate=60, tags=lambda slug: [f"article-{slug}", "articles"])
def unicode_article(request: HttpRequest, slug: str) -> HttpResponse:
    return body(f"article {slug}", request)


@isr_page(revalidate=60, tags=lambda slug: [f"article-{slug}"])
async def async_article(request: HttpRequest, slug: str) -> HttpResponse:
    calls.append(f"async article {slug}")
    return HttpResponse(f"async article {slug} render {next(renders)}")


class AsyncListing(View):
    async def get(self, request: HttpRequest, page: int) -> HttpResponse:
        calls.append("async listing")
        return HttpResponse(f"async listing render {next(renders)}")


@method_decorator(isr_page(revalidate=30, tags=["async-dispatch"]), name="dispatch")
class AsyncDispatch(View):
    """Decorated on ``dispatch``, as ``login_required`` often is: sync in View, it hands
    back the coroutine of the async handler."""

    async def get(self, request: HttpRequest, page: int) -> HttpResponse:
        return HttpResponse(f"async dispatch render {next(renders)}")


@isr_page(static_params=lambda: [{"n": 1}, {"n": 2}], dynamic_params=False, expire=300)
def doc(request: HttpRequest, n: int) -> HttpResponse:
    return body(f"doc {n}", request)


@method_decorator(isr_page(revalidate=30, tags=["listing"]), name="get")
class Listing(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return body("listing", request)


@isr_page(revalidate=60, tags=["notes"])
def note(request: HttpRequest, slug: str) -> HttpResponse:
    found = get_object_or_404(Note, slug=slug)
    wsgi_isr.tag(f"note-{found.slug}")  # data-layer tagging: the post_save receiver's tag
    return body(f"note {found.text}", request)


@cache_control(public=True, s_maxage=60)  # opted in, yet its CSRF cookie keeps it unshared
def contact(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return HttpResponse(f"thanks {request.POST.get('name', '')}")
    return render(request, "contact.html")


@login_required
def account(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"account of {request.user}")


@isr_page(revalidate=60)
def home(request: HttpRequest) -> HttpResponse:
    return body("home", request)


@cache_control(public=True, s_maxage=30, stale_while_revalidate=60)
def cdn(request: HttpRequest) -> HttpResponse:
    return body("cdn", request)


def plain(request: HttpRequest) -> HttpResponse:
    return body("plain", request)


@isr_page(revalidate=60)
@cache_control(private=True)
def mine(request: HttpRequest) -> HttpResponse:
    """Opted in, but the view knows the page is the visitor's own: refused, unshared
    (the same bytes every time, so ConditionalGetMiddleware answers 304 to its ETag)."""
    return HttpResponse("mine")


@isr_page(revalidate=60)
@gzip_page
def big(request: HttpRequest) -> HttpResponse:
    """``Vary: Accept-Encoding``, and larger than the tests' ``max_entry_bytes``."""
    return HttpResponse(f"big for {request.get_host()} " + "z" * 5000)


@csrf_exempt
def hook(request: HttpRequest) -> HttpResponse:
    revalidate_tag("article-a")
    revalidate_path("/listing/")
    return HttpResponse("ok")


def boom(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    raise RuntimeError("boom")
