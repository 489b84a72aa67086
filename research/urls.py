"""The research exports' pages, mounted at ``/ricerca/``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "research"

urlpatterns = [
    path("", views.projects, name="projects"),
    path("progetti/<int:pk>/", views.project, name="project"),
    path("progetti/<int:pk>/chiavi/", views.keys, name="keys"),
    path("esportazioni/<int:pk>/", views.export, name="export"),
    path("esportazioni/<int:pk>/scarica/", views.download, name="download"),
]
