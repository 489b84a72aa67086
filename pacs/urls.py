"""The site's addresses: the front door, then each app's pages (``urls``) and APIs
(``api_urls``, DICOMweb), included where they are mounted. Patterns are built in the
apps; this module only includes them."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    # Liveness, readiness and /metrics (pacs.ops): outside the i18n and login machinery.
    path("", include("pacs.ops.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("accounts/", include("django.contrib.auth.urls")),
    # Before admin/: the archive's storage dashboard lives under admin/archive/.
    path("", include("archive.urls")),
    path("admin/", admin.site.urls),
    # The CDs to burn for patients who chose CD: the portal's, in the CUP's area.
    path("cup/cd/", include("portal.cd_urls")),
    path("cup/", include("booking.urls")),
    path("fse/", include("portal.urls")),
    path("ricerca/", include("research.urls")),
    path("dicomweb/", include("archive.dicomweb.urls")),
    path("api/", include("archive.api_urls")),
    path("api/cup/", include("booking.api_urls")),
]
