"""The Django app config: ``INSTALLED_APPS += ["wsgi_isr.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class ISRConfig(AppConfig):  # type: ignore[misc]  # django ships no types
    name = "wsgi_isr.django"
    label = "wsgi_isr"
    verbose_name = "Incremental Static Regeneration"

    def ready(self) -> None:
        from .conf import middleware_options

        middleware_options()  # a wrong ISR setting fails here, at start-up
