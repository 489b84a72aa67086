"""DICOMweb's URLs (:mod:`archive.dicomweb.views`), mounted at ``/dicomweb/``: every
resource at the region's service root, and again under each facility's root
(``/dicomweb/<facility code>/``)."""

from __future__ import annotations

from django.urls import include, path

from archive import converters  # noqa: F401  (registers "facility")

from . import views

# UIDs are matched loosely ([^/]+) so that a malformed one gets a 400 from the view, not a 404.
_INSTANCE = "studies/<str:study>/series/<str:series>/instances/<str:instance>"
_resources = [
    path("", views.ServiceRootView.as_view()),  # OPTIONS: the capabilities (PS3.18 8.9)
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

urlpatterns = [
    path("", include(_resources), {"facility": None}),
    path("<facility:facility>/", include(_resources)),
]
