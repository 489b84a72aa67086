from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from archive.storage.admin import storage_dashboard
from archive.urls import api_urlpatterns, dicomweb_urlpatterns
from booking.api import urlpatterns as booking_api_urlpatterns

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/archive/storage-dashboard/", storage_dashboard, name="storage_dashboard"),
    path("admin/", admin.site.urls),
    path("cup/", include("booking.urls")),
    path("fse/", include("portal.urls")),
    path("refertazione/", include("archive.reporting.views")),
    path("dicomweb/", include(dicomweb_urlpatterns)),
    path("api/", include(api_urlpatterns)),
    path("api/cup/", include(booking_api_urlpatterns)),
]
