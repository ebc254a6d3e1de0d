"""URL patterns ``isr build`` must reach one by one: a view at several URLs, unnamed
views inside a namespaced include, and ``i18n_patterns`` (one prefix per language)."""

from django.conf.urls.i18n import i18n_patterns
from django.urls import include, path

from . import views

blog = ([path("", views.home), path("a/<slug:slug>/", views.article)], "blog")

urlpatterns = [
    path("", views.home, name="home"),
    path("index.html", views.home),
    path("start/", views.home, name="welcome"),
    path("welcome/", views.home, name="welcome"),
    path("blog/", include(blog, namespace="blog")),
    path("docs/<int:n>/", views.doc),
    path("docs-again/<int:n>/", views.doc),
    *i18n_patterns(path("guide/", views.home), prefix_default_language=False),
]
