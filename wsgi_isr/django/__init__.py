"""Django integration: settings, a WSGI application, a view decorator, and commands.

# settings.py
INSTALLED_APPS = [..., "wsgi_isr.django"]
ISR = {"STORE": "file:///var/cache/mysite-isr", "SECRET": os.environ["ISR_SECRET"],
       "BYPASS_COOKIES": ["sessionid"]}

# wsgi.py
from wsgi_isr.django import get_wsgi_application
application = get_wsgi_application()

# views.py
from wsgi_isr.django import isr_page, revalidate_tag

@isr_page(revalidate=60, tags=lambda slug: [f"article-{slug}", "articles"])
def article(request, slug): ...

$ python manage.py isr build | revalidate --tag articles | status
"""

from ..pages import PageSpec
from .application import get_wsgi_application, install, middleware, revalidate_path, revalidate_tag
from .pages import isr_page, static_paths

# The data cache (wsgi_isr.cached) bound to this project's middleware belongs here:
# cached = <middleware().cached>, once the core has it.

__all__ = [
    "PageSpec",
    "get_wsgi_application",
    "install",
    "isr_page",
    "middleware",
    "revalidate_path",
    "revalidate_tag",
    "static_paths",
]
