"""URLs of the archive's web services: DICOMweb (``dicomweb_urlpatterns``, mounted at
``/dicomweb/``) and the REST API (``api_urlpatterns``, mounted at ``/api/``: facilities, studies, reports)."""

from __future__ import annotations

from csp.constants import SELF, UNSAFE_INLINE
from csp.decorators import csp_update
from django.urls import include, path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from . import api
from .dicomweb import views


class FacilityCodeConverter:
    """A facility code (``Facility.code``): upper-case letters, digits, ``-`` and ``_``.

    Distinct from every DICOMweb resource name (lower case) and from UIDs (dots).
    """

    regex = r"[A-Z0-9_-]{1,16}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(FacilityCodeConverter, "facility")

# Swagger UI and Redoc style their pages with inline styles (Redoc inserts <style>
# elements as it renders) and Redoc searches in a worker made from a blob: URL:
# allowed on these two pages only. Their scripts stay files from this server.
_docs_csp = csp_update({"style-src": [UNSAFE_INLINE], "worker-src": [SELF, "blob:"]})

# UIDs are matched loosely ([^/]+) so that a malformed one gets a 400 from the view, not a 404.
_INSTANCE = "studies/<str:study>/series/<str:series>/instances/<str:instance>"
_resources = [
    path("studies", views.StudiesView.as_view()),
    path("studies/<str:study>", views.StudyView.as_view()),
    path("series", views.SeriesSearchView.as_view()),
    path("instances", views.InstancesSearchView.as_view()),
    path("studies/<str:study>/series", views.SeriesSearchView.as_view()),
    path("studies/<str:study>/instances", views.InstancesSearchView.as_view()),
    path("studies/<str:study>/series/<str:series>/instances", views.InstancesSearchView.as_view()),
    path("studies/<str:study>/metadata", views.MetadataView.as_view()),
    path("studies/<str:study>/rendered", views.RenderedView.as_view()),
    path("studies/<str:study>/thumbnail", views.ThumbnailView.as_view()),
    path("studies/<str:study>/series/<str:series>", views.SeriesView.as_view()),
    path("studies/<str:study>/series/<str:series>/metadata", views.MetadataView.as_view()),
    path("studies/<str:study>/series/<str:series>/rendered", views.RenderedView.as_view()),
    path("studies/<str:study>/series/<str:series>/thumbnail", views.ThumbnailView.as_view()),
    path(_INSTANCE, views.InstanceView.as_view()),
    path(f"{_INSTANCE}/metadata", views.MetadataView.as_view()),
    path(f"{_INSTANCE}/rendered", views.RenderedView.as_view()),
    path(f"{_INSTANCE}/thumbnail", views.ThumbnailView.as_view()),
    path(f"{_INSTANCE}/frames/<str:frames>", views.FramesView.as_view()),
    path(f"{_INSTANCE}/frames/<str:frames>/rendered", views.RenderedView.as_view()),
    path(f"{_INSTANCE}/frames/<str:frames>/thumbnail", views.ThumbnailView.as_view()),
    path(f"{_INSTANCE}/bulkdata/<path:tags>", views.BulkdataView.as_view()),
    path("wado", views.WadoUriView.as_view()),
]

dicomweb_urlpatterns = [
    path("", include(_resources), {"facility": None}),
    path("<facility:facility>/", include(_resources)),
]

api_urlpatterns = [
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
