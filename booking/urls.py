"""The CUP's staff pages, under /cup/: patients and bookings (``views``), the
reconciliation of studies that arrived without a booking (``reconciliation_views``)."""

from __future__ import annotations

from django.urls import path

from . import reconciliation_views, views

app_name = "booking"
urlpatterns = [
    path("", views.home, name="home"),
    path("pazienti/", views.patient_search, name="patient_search"),
    path("pazienti/nuovo/", views.patient_create, name="patient_create"),
    path("pazienti/codice-fiscale/", views.codice_fiscale_decode, name="codice_fiscale_decode"),
    path("pazienti/<int:pk>/", views.patient_detail, name="patient_detail"),
    path("pazienti/<int:pk>/prenota/", views.booking_new, name="booking_new"),
    path("pazienti/<int:pk>/prima-disponibilita/", views.booking_first, name="booking_first"),
    path("prenotazioni/<str:accession>/", views.booking_detail, name="booking_detail"),
    path("prenotazioni/<str:accession>/consegna/", views.booking_choice, name="booking_choice"),
    path("prenotazioni/<str:accession>/annulla/", views.booking_cancel, name="booking_cancel"),
    path("prenotazioni/<str:accession>/arrivo/", views.booking_arrive, name="booking_arrive"),
    path("prenotazioni/<str:accession>/ricevuta.pdf", views.booking_receipt, name="booking_receipt"),
    path("riconciliazione/", reconciliation_views.reconciliation_list, name="reconciliation_list"),
    path("riconciliazione/<int:pk>/", reconciliation_views.reconciliation_detail, name="reconciliation_detail"),
    path(
        "riconciliazione/<int:pk>/collega/", reconciliation_views.reconciliation_link_view, name="reconciliation_link"
    ),
    path(
        "riconciliazione/<int:pk>/riassegna/",
        reconciliation_views.reconciliation_reassign_view,
        name="reconciliation_reassign",
    ),
    path(
        "riconciliazione/<int:pk>/respingi/",
        reconciliation_views.reconciliation_reject_view,
        name="reconciliation_reject",
    ),
]
