"""The CUP's Django admin: the catalogue, the rooms, the numbering and the
information texts are edited here; bookings, their history, the consent
versions and the reconciliation queue are read here and changed only through
the CUP pages and the API, whose services keep the rules and the audit log.

Bookings and reconciliations go through the access policy (``archive.access``):
one whose study the user may not see (hidden by the patient, another health
authority's) is not there."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from archive import access
from archive.admin import AuditedAdminMixin, IngestedRowAdmin, ReadOnlyInline, VisibleRowsMixin

from .models import (
    AccessionSequence,
    Booking,
    BookingStatusChange,
    ConsentText,
    DistributionChoice,
    FacilityContact,
    Procedure,
    Reconciliation,
    Station,
)


@admin.register(Procedure)
class ProcedureAdmin(admin.ModelAdmin):
    list_display = ("code", "description", "modality", "body_part", "active")
    list_filter = ("modality", "active")
    search_fields = ("code", "description")


@admin.register(Station)
class StationAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "ae_title",
        "facility",
        "modality",
        "slot_minutes",
        "opens_at",
        "closes_at",
        "open_weekdays",
        "active",
    )
    list_filter = ("facility", "modality", "active")
    search_fields = ("name", "ae_title", "location")


@admin.register(FacilityContact)
class FacilityContactAdmin(admin.ModelAdmin):
    list_display = ("facility", "address", "cup_phone", "cup_hours")
    search_fields = ("facility__code", "facility__name", "address")


@admin.register(AccessionSequence)
class AccessionSequenceAdmin(admin.ModelAdmin):
    list_display = ("facility", "prefix", "year", "last_number")
    # The counter moves only by booking: editing it could hand out a number twice.
    readonly_fields = ("year", "last_number")


@admin.register(ConsentText)
class ConsentTextAdmin(admin.ModelAdmin):
    list_display = ("version", "title", "published_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # A published text is what patients agreed to: a new wording is a new version.
        return ("version", "title", "body", "published_at") if obj is not None else ()


class StatusChangeInline(ReadOnlyInline):
    model = BookingStatusChange
    fields = ("at", "status", "user", "system", "note")
    readonly_fields = fields
    show_change_link = False


class ChoiceInline(ReadOnlyInline):
    model = DistributionChoice
    fields = (
        "version",
        "delivery",
        "consent_text",
        "revokes_consent",
        "channel",
        "recorded_by",
        "recorded_by_name",
        "recorded_at",
        "note",
    )
    readonly_fields = fields
    show_change_link = False


@admin.register(Booking)
class BookingAdmin(AuditedAdminMixin, VisibleRowsMixin, IngestedRowAdmin):
    patient_path = "patient_id"
    list_display = ("accession_number", "scheduled_at", "patient", "procedure", "facility", "station", "status")
    list_filter = ("status", "facility", "channel", "procedure__modality")
    search_fields = ("=accession_number", "=patient__codice_fiscale", "patient__family_name", "=nre", "=external_id")
    date_hierarchy = "scheduled_at"
    list_select_related = ("patient", "procedure", "facility", "station")
    inlines = [ChoiceInline, StatusChangeInline]
    readonly_fields = ("cup_page",)

    def visible_q(self, principal: access.Principal) -> Q:
        # Not yet performed: the booking's facility decides; performed: its study.
        return (Q(study__isnull=True) & access.facility_visible_q(principal)) | (
            Q(study__isnull=False) & access.visible_q(principal, "study__")
        )

    def audit_subject(self, obj: Any) -> dict[str, Any]:
        return {"patient": obj.patient, "study": obj.study}

    @admin.display(description=_("pagina CUP"))
    def cup_page(self, obj: Booking) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("booking:booking_detail", args=[obj.accession_number]), _("Apri nel CUP")
        )


@admin.register(Reconciliation)
class ReconciliationAdmin(AuditedAdminMixin, VisibleRowsMixin, IngestedRowAdmin):
    study_path = "study__"
    patient_path = "study__patient_id"
    list_display = ("created_at", "study", "reason", "state", "booking", "resolved_by", "resolved_at")
    list_filter = ("state", "reason")
    list_select_related = ("study", "booking", "resolved_by")
    readonly_fields = ("work_page",)

    def audit_subject(self, obj: Any) -> dict[str, Any]:
        return {"study": obj.study}

    @admin.display(description=_("riconciliazione"))
    def work_page(self, obj: Reconciliation) -> str:
        url = reverse("booking:reconciliation_detail", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, _("Apri la pagina di riconciliazione"))
