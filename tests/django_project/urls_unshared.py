"""Pages the store refuses (tests/test_django_adapter.py), apart from the pre-built site."""

from django.urls import path

from . import views
from .urls import urlpatterns as base

urlpatterns = [
    *base,
    path("mine/", views.mine, name="mine"),
    path("big/", views.big, name="big"),
]
