"""``python manage.py demo_setup``: create the database, a few articles and a demo
admin (``admin`` / ``$DJANGO_ADMIN_PASSWORD``, default ``admin``) if they are missing.
The shipped gunicorn.conf.py runs it once before starting the workers."""

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand

from blog.models import Article

ARTICLES = [
    ("hello-isr", "Hello, ISR", "Every page here is rendered once and served from the cache."),
    ("stale-while-revalidate", "Stale while revalidate", "Past its time, a page is served "
     "at once while one background render refreshes it."),
    ("tags", "Tags", "Saving an article in the admin revalidates every page that shows it."),
    ("signed-in", "Signed-in visitors", "With BYPASS_COOKIES = ['sessionid'] the admin sees "
     "live pages; everyone else gets the cached copy."),
    ("forms", "Forms and CSRF", "A page with a CSRF token sets a cookie, so it is never shared."),
]  # fmt: skip


class Command(BaseCommand):
    help = "Create the example's database, articles and demo admin if missing."

    def handle(self, *args: Any, **options: Any) -> None:
        database = Path(settings.DATABASES["default"]["NAME"])
        database.parent.mkdir(parents=True, exist_ok=True)
        call_command("migrate", verbosity=0, interactive=False)
        if not Article.objects.exists():
            Article.objects.bulk_create(
                Article(slug=slug, title=title, body=body) for slug, title, body in ARTICLES
            )
            self.stdout.write(f"created {len(ARTICLES)} articles")
        if not User.objects.filter(username="admin").exists():
            password = os.environ.get("DJANGO_ADMIN_PASSWORD", "admin")
            User.objects.create_superuser("admin", "admin@example.com", password)
            self.stdout.write("created the demo admin: admin / " + ("*" * len(password)))
