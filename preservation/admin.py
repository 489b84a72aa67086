"""Admin pages of the preservation: packages, volumes and the giornale (read-only),
the retention table, legal holds, discards (approved only by holders of
``preservation.approve_discard``), fixity audits and their alerts.

Rows naming a study or a patient go through the access policy (``archive.access``):
a package, alert, hold or log entry of a study the user may not see is not there,
and a DIP exported here never holds such a study's packages (they are absent, as
everywhere else). ``manage.py preservation export`` remains the way for whoever
must export whole volumes (it runs as the system)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from archive import access
from archive.admin import AuditedAdminMixin, ReadOnlyAdmin, ReadOnlyInline, VisibleRowsMixin
from kernel.admin import AlertAdminMixin
from kernel.web import download_filename

from . import export, retention
from .models import (
    Discard,
    DiscardItem,
    FixityAudit,
    JournalEntry,
    LegalHold,
    Package,
    PackageFile,
    PreservationAlert,
    RetentionClass,
    Volume,
)

logger = logging.getLogger(__name__)


class PackageFileInline(ReadOnlyInline):
    model = PackageFile
    fields = ("name", "role", "mime_type", "size", "sha256", "retention_class", "keep_until", "discarded_at")
    readonly_fields = fields


def _export_response(request: HttpRequest, packages: list[Package], label: str) -> HttpResponseBase | None:
    try:
        path = export.dip_export(packages=packages, label=label, user=request.user)
    except export.ExportError as exc:
        messages.error(request, exc.message)
        return None
    # FileResponse builds the header with content_disposition_header itself.
    return FileResponse(open(path, "rb"), as_attachment=True, filename=download_filename(path.name))


def packages_visible(request: HttpRequest, packages: list[Package]) -> list[Package]:
    """``packages`` less those of studies the user may not see (order kept)."""
    principal = access.principal_for_request(request)
    ids = set(
        Package.objects.filter(pk__in=[p.pk for p in packages])
        .filter(access.visible_q(principal, "study__"))
        .values_list("pk", flat=True)
    )
    return [p for p in packages if p.pk in ids]


@admin.register(Package)
class PackageAdmin(AuditedAdminMixin, VisibleRowsMixin, ReadOnlyAdmin):
    study_path = "study__"
    patient_path = "study__patient_id"
    list_display = ("identifier", "study", "status", "volume", "archived_at", "fixity_checked_at")
    list_filter = ("status",)
    search_fields = (
        "identifier",
        "study__study_instance_uid",
        "study__accession_number",
        "study__patient__codice_fiscale",
    )
    readonly_fields = [f.name for f in Package._meta.fields]
    inlines = [PackageFileInline]
    actions = ["export_dip"]

    def audit_subject(self, obj: Package) -> dict[str, Any]:
        return {"study": obj.study}

    @admin.action(description=_("Esporta un pacchetto di distribuzione (PdD)"), permissions=["view"])
    def export_dip(self, request: HttpRequest, queryset: QuerySet[Package]) -> HttpResponseBase | None:
        # The queryset is the list's, so already the user's; asked again, as the volume's is.
        found = packages_visible(
            request, list(queryset.filter(status=Package.Status.ARCHIVED).select_related("volume", "study"))
        )
        return _export_response(request, found, ", ".join(p.identifier for p in found[:3]))


@admin.register(Volume)
class VolumeAdmin(ReadOnlyAdmin):
    list_display = ("identifier", "status", "created_at", "closed_at", "timestamp_time", "signer_name")
    list_filter = ("status",)
    readonly_fields = [f.name for f in Volume._meta.fields]
    actions = ["export_dip"]

    @admin.action(description=_("Esporta il volume come pacchetto di distribuzione (PdD)"), permissions=["view"])
    def export_dip(self, request: HttpRequest, queryset: QuerySet[Volume]) -> HttpResponseBase | None:
        # A volume holds many studies: those the user may not see are absent from its DIP.
        found = packages_visible(request, [p for v in queryset for p in export.packages_for(volume=v)])
        return _export_response(request, found, "volume " + ", ".join(v.identifier for v in queryset[:3]))


@admin.register(JournalEntry)
class JournalEntryAdmin(VisibleRowsMixin, ReadOnlyAdmin):
    list_display = ("at", "event", "action", "outcome", "object_id", "username", "system")
    list_filter = ("event", "outcome")
    search_fields = ("object_id", "action", "username")
    readonly_fields = [f.name for f in JournalEntry._meta.fields]

    def visible_q(self, principal: access.Principal) -> Q:
        # A package's and a hold's entries name their study: absent with it.
        if principal.kind is access.Kind.SYSTEM:
            return Q()
        packages = Package.objects.exclude(access.visible_q(principal, "study__")).values("identifier")
        holds = [str(pk) for pk in LegalHold.objects.exclude(hold_visible_q(principal)).values_list("pk", flat=True)]
        return ~(
            Q(event=JournalEntry.Event.PACKAGE, object_id__in=packages)
            | Q(event=JournalEntry.Event.HOLD, object_id__in=holds)
        )


@admin.register(RetentionClass)
class RetentionClassAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "document_type", "modality", "years", "legal_basis")


def hold_visible_q(principal: access.Principal) -> Q:
    return access.any_q(Q(study__isnull=True), access.visible_q(principal, "study__")) & access.any_q(
        Q(patient__isnull=True), access.patient_visible_q(principal, "patient__")
    )


@admin.register(LegalHold)
class LegalHoldAdmin(VisibleRowsMixin, admin.ModelAdmin):
    list_display = ("placed_at", "study", "patient", "reason", "placed_by", "released_at")
    list_filter = (("released_at", admin.EmptyFieldListFilter),)
    # Not raw ids: that widget labels a typed id from the whole table, hidden studies included;
    # the autocomplete asks the Study and Patient admins, which show only what the user may see.
    autocomplete_fields = ("study", "patient")
    readonly_fields = ("placed_at", "placed_by", "released_at", "released_by")
    actions = ["release"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a hold is released, never deleted: its history stays

    def visible_q(self, principal: access.Principal) -> Q:
        return hold_visible_q(principal)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # A typed id of a study or patient the user may not see is "not a valid choice",
        # as for one that does not exist.
        principal = access.principal_for_request(request)
        if db_field.name == "study":
            kwargs["queryset"] = access.studies_visible(principal)
        elif db_field.name == "patient":
            kwargs["queryset"] = access.patients_visible(principal)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None:
            return ("study", "patient", "reason", *self.readonly_fields)
        return self.readonly_fields

    def save_model(self, request: HttpRequest, obj: LegalHold, form: Any, change: bool) -> None:
        if change:
            return
        hold = retention.hold_place(user=request.user, reason=obj.reason, study=obj.study, patient=obj.patient)
        obj.pk = hold.pk

    @admin.action(description=_("Revoca i blocchi legali selezionati"), permissions=["change"])
    def release(self, request: HttpRequest, queryset: QuerySet[LegalHold]) -> None:
        n = 0
        for hold in queryset.filter(released_at__isnull=True):
            retention.hold_release(hold=hold, user=request.user)
            n += 1
        self.message_user(request, ngettext("%d blocco revocato.", "%d blocchi revocati.", n) % n, messages.SUCCESS)


class DiscardItemInline(ReadOnlyInline):
    model = DiscardItem
    fields = ("path", "size", "sha256", "removed_at")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[DiscardItem]:
        principal = access.principal_for_request(request)
        return super().get_queryset(request).filter(access.visible_q(principal, "package_file__package__study__"))


@admin.register(Discard)
class DiscardAdmin(admin.ModelAdmin):
    list_display = ("pk", "status", "proposed_at", "approved_by", "approved_at", "executed_at", "record_sha256")
    list_filter = ("status",)
    readonly_fields = [f.name for f in Discard._meta.fields]
    inlines = [DiscardItemInline]
    actions = ["approve_and_execute", "reject"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # proposed by the task only

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("preservation.approve_discard"))

    @admin.action(description=_("Approva ed esegui gli scarti selezionati"), permissions=["approve"])
    def approve_and_execute(self, request: HttpRequest, queryset: QuerySet[Discard]) -> None:
        for discard in queryset:
            try:
                if discard.status == Discard.Status.PROPOSED:
                    retention.discard_approve(discard=discard, user=request.user)
                retention.discard_execute(discard=discard, user=request.user)
            except PermissionDenied as exc:
                messages.error(request, str(exc))
            except retention.RetentionError as exc:
                messages.error(request, f"{discard}: {exc.message}")
            else:
                messages.success(request, _("%(d)s eseguito: verbale registrato.") % {"d": discard})

    @admin.action(description=_("Respingi gli scarti selezionati"), permissions=["approve"])
    def reject(self, request: HttpRequest, queryset: QuerySet[Discard]) -> None:
        for discard in queryset.filter(status=Discard.Status.PROPOSED):
            retention.discard_reject(discard=discard, user=request.user)


@admin.register(FixityAudit)
class FixityAuditAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "finished_at", "packages_checked", "files_checked", "volumes_checked", "failures")


@admin.register(PreservationAlert)
class PreservationAlertAdmin(AlertAdminMixin, VisibleRowsMixin, admin.ModelAdmin):
    list_display = (
        "created_at",
        "last_seen_at",
        "count",
        "kind",
        "package",
        "volume",
        "path",
        "acknowledged_at",
        "acknowledged_by",
    )
    list_filter = ("kind", ("acknowledged_at", admin.EmptyFieldListFilter))
    # Every field, in the order they had before the common ones moved to kernel.alerts.Alert (which puts them first).
    readonly_fields = (
        "id",
        "created_at",
        "last_seen_at",
        "count",
        "kind",
        "audit",
        "package",
        "volume",
        "path",
        "detail",
        "acknowledged_at",
        "acknowledged_by",
    )

    def visible_q(self, principal: access.Principal) -> Q:
        return access.any_q(Q(package__isnull=True), access.visible_q(principal, "package__study__"))
