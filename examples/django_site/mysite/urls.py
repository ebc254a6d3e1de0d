from blog import views
from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.urls import path, re_path

urlpatterns = [
    path("", views.article_list, name="article-list"),
    path("articles/<slug:slug>/", views.article_detail, name="article-detail"),
    path("clock/", views.clock, name="clock"),
    path("contact/", views.contact, name="contact"),
    path("admin/", admin.site.urls),
    # the admin's CSS for this demo (use whitenoise or your web server in production)
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
]
