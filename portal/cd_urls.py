"""The CUP's CD page (:mod:`portal.cd_views`), mounted under ``/cup/cd/`` by ``pacs/urls.py``."""

from __future__ import annotations

from django.urls import path

from . import cd_views

app_name = "cd_media"

urlpatterns = [
    path("", cd_views.cd_media, name="list"),
    path("<int:pk>/immagine.iso", cd_views.cd_medium_download, name="download"),
    path("<int:pk>/consegnato/", cd_views.cd_medium_deliver, name="deliver"),
]
