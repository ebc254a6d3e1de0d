from django.contrib.auth import views as auth_views
from django.urls import path

from wsgi_isr.django import isr_page

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("articles/<slug:slug>/", views.article, name="article"),
    path("docs/<int:n>/", views.doc, name="doc"),
    path("listing/", views.Listing.as_view(), name="listing"),
    path("notes/<slug:slug>/", views.note, name="note"),
    path("async/<slug:slug>/", views.async_article, name="async-article"),
    # decorating as_view() of an async class-based view, in the URLconf
    path("async-listing/<int:page>/", isr_page(revalidate=30)(views.AsyncListing.as_view())),
    path("async-dispatch/<int:page>/", views.AsyncDispatch.as_view()),
    # SlugField(allow_unicode=True) slugs: "café", "日本語"
    path("u/articles/<str:slug>/", views.unicode_article, name="unicode-article"),
    path("u/notes/<str:slug>/", views.note, name="unicode-note"),
    path("contact/", views.contact, name="contact"),
    path("account/", views.account, name="account"),
    path("login/", auth_views.LoginView.as_view(template_name="login.html"), name="login"),
    path("cdn/", views.cdn, name="cdn"),
    path("plain/", views.plain, name="plain"),
    path("hook/", views.hook, name="hook"),
]
