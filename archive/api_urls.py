"""The archive's REST API (:mod:`archive.api`), mounted at ``/api/``: the schema and
its pages, API tokens, facilities, studies, reports."""

from __future__ import annotations

from csp.constants import SELF, UNSAFE_INLINE
from csp.decorators import csp_update
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from . import api, converters  # noqa: F401  (converters registers "facility")

# Swagger UI and Redoc style their pages with inline styles (Redoc inserts <style>
# elements as it renders) and Redoc searches in a worker made from a blob: URL:
# allowed on these two pages only. Their scripts stay files from this server.
_docs_csp = csp_update({"style-src": [UNSAFE_INLINE], "worker-src": [SELF, "blob:"]})

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file, not inline.
    path("schema/swagger/", _docs_csp(SpectacularSwaggerSplitView.as_view(url_name="api-schema")), name="api-swagger"),
    path("schema/redoc/", _docs_csp(SpectacularRedocView.as_view(url_name="api-schema")), name="api-redoc"),
    path("token/", api.TokenView.as_view(), name="api-token"),
    path("facilities/", api.FacilityListView.as_view(), name="api-facility-list"),
    path("facilities/<facility:code>/", api.FacilityDetailView.as_view(), name="api-facility-detail"),
    path("studies/", api.StudyListView.as_view(), name="api-study-list"),
    path("studies/<str:study_instance_uid>/", api.StudyDetailView.as_view(), name="api-study-detail"),
    path("reports/", api.ReportListView.as_view(), name="api-report-list"),
    path("reports/<int:pk>/", api.ReportDetailView.as_view(), name="api-report-detail"),
    path("reports/<int:pk>/pdf", api.ReportPdfView.as_view(), name="api-report-pdf"),
    path("reports/<int:pk>/p7m", api.ReportSignatureView.as_view(), name="api-report-p7m"),
]
