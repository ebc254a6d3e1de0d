"""The example's views: cached with ``@isr_page``, tagged per article."""

import time

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

import wsgi_isr
from wsgi_isr.django import isr_page

from .models import Article


def all_slugs() -> list[dict[str, str]]:
    return [{"slug": s} for s in Article.objects.values_list("slug", flat=True)]


@isr_page(revalidate=60, tags=["articles"])
def article_list(request: HttpRequest) -> HttpResponse:
    articles = list(Article.objects.all())
    wsgi_isr.tag(*(f"article-{a.slug}" for a in articles))  # any edit refreshes the list
    return render(request, "blog/list.html", {"articles": articles, "rendered": time.time()})


@isr_page(revalidate=3600, tags=lambda slug: [f"article-{slug}"], static_params=all_slugs)
def article_detail(request: HttpRequest, slug: str) -> HttpResponse:
    article = get_object_or_404(Article, slug=slug)
    return render(request, "blog/detail.html", {"article": article, "rendered": time.time()})


@isr_page(revalidate=2)
def clock(request: HttpRequest) -> HttpResponse:
    return render(request, "blog/clock.html", {"rendered": time.time()})


def contact(request: HttpRequest) -> HttpResponse:
    """A CSRF-protected form: never cached (its token cookie is per visitor)."""
    if request.method == "POST":
        name = request.POST.get("name", "")[:100]
        return render(request, "blog/contact.html", {"thanks": name or "stranger"})
    return render(request, "blog/contact.html", {"thanks": None})
