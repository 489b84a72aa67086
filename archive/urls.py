"""The archive's pages, mounted at the site's root: the radiologist's pages under
``refertazione/`` (:mod:`archive.reporting.urls`) and the storage dashboard, an
admin page that is not a model's (so it is matched before ``admin/``).

The archive's web services have their own: DICOMweb :mod:`archive.dicomweb.urls`,
the REST API :mod:`archive.api_urls`."""

from __future__ import annotations

from django.urls import include, path

from archive.storage.admin import storage_dashboard

urlpatterns = [
    path("refertazione/", include("archive.reporting.urls")),
    path("admin/archive/storage-dashboard/", storage_dashboard, name="storage_dashboard"),
]
