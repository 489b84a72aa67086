from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from archive.urls import api_urlpatterns, dicomweb_urlpatterns

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("dicomweb/", include(dicomweb_urlpatterns)),
    path("api/", include(api_urlpatterns)),
]
