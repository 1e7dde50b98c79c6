from __future__ import annotations

from django.urls import path

from django_project import views

urlpatterns = [
    path("", views.hello),
    path("async", views.ahello),
    path("health", views.health),
    path("seen", views.seen),
    path("decorated", views.decorated),
    path("decorated-async", views.adecorated),
    path("stream", views.stream),
    path("astream", views.astream),
    path("flood", views.flood),
    path("naive", views.naive),
]
