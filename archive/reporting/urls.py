"""The radiologist's pages (:mod:`archive.reporting.views`), under /refertazione/."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "reporting"
urlpatterns = [
    path("", views.worklist, name="worklist"),
    path("studi/<int:pk>/", views.study, name="study"),
    path("studi/<int:pk>/viewer/", views.viewer, name="viewer"),
    path("pazienti/<int:pk>/", views.patient, name="patient"),
    path("studi/<int:pk>/inizia/", views.report_start, name="report_start"),
    path("referti/<int:pk>/", views.report_detail, name="report_detail"),
    path("referti/<int:pk>/salva/", views.report_save, name="report_save"),
    path("referti/<int:pk>/abbandona/", views.report_discard, name="report_discard"),
    path("referti/<int:pk>/firma/", views.report_sign, name="report_sign"),
    path("referti/<int:pk>/nuova-versione/", views.report_amend, name="report_amend"),
    path("frasi/", views.phrases, name="phrases"),
    path("frasi/<int:pk>/elimina/", views.phrase_delete, name="phrase_delete"),
    path("referti/<int:pk>/referto.pdf", views.report_file, {"which": "pdf"}, name="report_pdf"),
    path("referti/<int:pk>/referto.p7m", views.report_file, {"which": "p7m"}, name="report_p7m"),
]
