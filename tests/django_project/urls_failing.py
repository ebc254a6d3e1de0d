from django.urls import path

from . import views
from .urls import urlpatterns as base

urlpatterns = [
    *base,
    path("broken/", views.isr_page(static_params=lambda: [{}])(views.boom), name="broken"),
]
