"""WSGI entry point: Django's own application behind the ISR middleware."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from wsgi_isr.django import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
