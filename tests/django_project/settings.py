"""Settings of the small Django project the in-process tests run behind the middleware
(``tests/test_django_adapter.py``)."""

import os
import tempfile

SECRET_KEY = "test-only-" + "k" * 40
DEBUG = False
ALLOWED_HOSTS = ["localhost", "testserver", "example.com"]
ROOT_URLCONF = "django_project.urls"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "wsgi_isr.django",
    "django_project",
]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.http.ConditionalGetMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [os.path.join(os.path.dirname(__file__), "templates")],
        "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
    }
]
_DB_DIR = tempfile.mkdtemp(prefix="wsgi-isr-django-")
_SQLITE = "django.db.backends.sqlite3"
DATABASES = {
    "default": {"ENGINE": _SQLITE, "NAME": os.path.join(_DB_DIR, "db.sqlite3")},
    # a second alias, as a project with a router has: its transactions defer the helpers too
    "other": {"ENGINE": _SQLITE, "NAME": os.path.join(_DB_DIR, "other.sqlite3")},
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
LOGIN_URL = "/login/"
ISR = {"STORE": "memory://", "SECRET": "s" * 40, "BYPASS_COOKIES": ["sessionid"]}
if os.environ.get("ISR_TEST_PURGE"):  # a manage.py process of the tests purging a CDN
    ISR["PURGE"] = os.environ["ISR_TEST_PURGE"]
