"""Saving or deleting an article (in the admin, a shell, a script) revalidates every
page that shows it: its own page and the list (both carry ``article-<slug>``)."""

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from wsgi_isr.django import revalidate_tag

from .models import Article


@receiver(post_save, sender=Article)
@receiver(post_delete, sender=Article)
def article_changed(sender: type[Article], instance: Article, **kwargs: Any) -> None:
    tags = [f"article-{instance.slug}"]
    if kwargs.get("created", True):  # a new or deleted article changes the list too
        tags.append("articles")
    revalidate_tag(*tags)
