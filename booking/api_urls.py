"""The CUP's REST API (:mod:`booking.api`), under /api/cup/."""

from __future__ import annotations

from django.urls import path

from . import api

urlpatterns = [
    path("procedures/", api.ProcedureListView.as_view(), name="cup-api-procedures"),
    path("stations/", api.StationListView.as_view(), name="cup-api-stations"),
    path("slots/", api.SlotListView.as_view(), name="cup-api-slots"),
    path("bookings/", api.BookingCollectionView.as_view(), name="cup-api-bookings"),
    path("bookings/<str:accession_number>/", api.BookingDetailView.as_view(), name="cup-api-booking"),
    path("bookings/<str:accession_number>/cancel/", api.BookingCancelView.as_view(), name="cup-api-booking-cancel"),
    path("bookings/<str:accession_number>/choice/", api.BookingChoiceView.as_view(), name="cup-api-booking-choice"),
]
