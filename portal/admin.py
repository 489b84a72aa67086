"""The portal's rows in the admin: citizens' accounts and the download packages
prepared for them. Read-mostly: the system writes them; staff look, and may
switch a citizen's login off (and on again).

Both name a patient, so they go through the access policy (``archive.access``)
and are audited as every admin of patient data is (``archive.admin``): a
package of a study the patient hid is absent for a professional without an
emergency access for that patient, as its study is; an account is listed to
a user restricted to a health authority only when its person has a study
there the user may see (the region's registry otherwise, as for patients).

Concealments, emergency accesses and delegations stay out of the admin (the
citizen reads them in the portal, the desk has its own pages).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from archive import access
from archive.admin import AuditedAdminMixin, ReadOnlyAdmin, VisibleRowsMixin
from archive.models import Patient

from .models import CdMedium, CitizenAccount, DownloadPackage


def _patient_of(codice_fiscale: str) -> Patient | None:
    return Patient.objects.filter(codice_fiscale=codice_fiscale).first()


@admin.register(CitizenAccount)
class CitizenAccountAdmin(AuditedAdminMixin, VisibleRowsMixin, admin.ModelAdmin):
    """A citizen's login: who (the codice fiscale and, when the registry knows the
    person, their name), how it was made, whether it may log in and when it last did."""

    list_display = ("codice_fiscale", "patient_name", "origin", "created_at", "last_login", "active")
    list_filter = ("origin", "user__is_active")
    search_fields = ("=codice_fiscale", "user__last_name")
    search_help_text = _("Codice fiscale (intero) o cognome.")
    ordering = ("-created_at",)
    fields = ("codice_fiscale", "patient_name", "origin", "created_at", "last_login", "active")
    readonly_fields = fields
    actions = ["login_disable", "login_enable"]

    def visible_q(self, principal: access.Principal) -> Q:
        patients = access.patient_visible_q(principal)
        if not patients:  # the region's registry: every account, known to it or not yet
            return Q()
        known = Patient.objects.filter(patients).exclude(codice_fiscale=None).values("codice_fiscale")
        return Q(codice_fiscale__in=known)

    def get_queryset(self, request: HttpRequest) -> QuerySet[CitizenAccount]:
        person = Patient.objects.filter(codice_fiscale=OuterRef("codice_fiscale"))
        return (
            super()
            .get_queryset(request)
            .select_related("user")
            .annotate(
                family_name=Subquery(person.values("family_name")[:1]),
                given_name=Subquery(person.values("given_name")[:1]),
            )
        )

    # The accounts name a person by codice fiscale only: the list's audit event names
    # the registry's patients of those codici fiscali.
    def listed_patients(self, rows: Any) -> list[int] | None:
        codes = [row.codice_fiscale for row in rows]
        owner = dict(Patient.objects.filter(codice_fiscale__in=codes).values_list("codice_fiscale", "pk"))
        return [owner[code] for code in codes if code in owner]

    def audit_subject(self, obj: CitizenAccount) -> dict[str, Any]:
        return {"patient": _patient_of(obj.codice_fiscale)}

    # Nothing is added or deleted here: an account is made by the desk or at the
    # first SPID/CIE login, and its row is the record of who logged in. The change
    # permission is only the list's switch (the actions); the page is read-only.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request)

    @admin.display(description=_("nome"), ordering="family_name")
    def patient_name(self, obj: CitizenAccount) -> str:
        name = " ".join(filter(None, [getattr(obj, "family_name", None), getattr(obj, "given_name", None)]))
        return name or str(_("non ancora nell'anagrafe"))

    @admin.display(description=_("ultimo accesso"), ordering="user__last_login")
    def last_login(self, obj: CitizenAccount) -> Any:
        return obj.user.last_login or "—"

    @admin.display(description=_("può accedere"), boolean=True, ordering="user__is_active")
    def active(self, obj: CitizenAccount) -> bool:
        return bool(obj.user.is_active)

    def _login_set(self, request: HttpRequest, queryset: QuerySet[CitizenAccount], *, active: bool) -> None:
        changed = 0
        for account in queryset.select_related("user"):
            if account.user.is_active == active:
                continue
            account.user.is_active = active
            account.user.save(update_fields=["is_active"])
            changed += 1
            self.audit(
                request,
                "enable" if active else "disable",
                obj=account,
                detail={"object_id": account.pk, "codice_fiscale": account.codice_fiscale},
            )
        message = (
            ngettext("%(n)d account riattivato.", "%(n)d account riattivati.", changed)
            if active
            else ngettext("%(n)d account disattivato.", "%(n)d account disattivati.", changed)
        )
        messages.success(request, message % {"n": changed})

    @admin.action(description=_("Disattiva l'accesso al portale"), permissions=["change"])
    def login_disable(self, request: HttpRequest, queryset: QuerySet[CitizenAccount]) -> None:
        # An inactive user's password is refused and their session no longer loads
        # (ModelBackend); the access policy treats them as nobody.
        self._login_set(request, queryset, active=False)

    @admin.action(description=_("Riattiva l'accesso al portale"), permissions=["change"])
    def login_enable(self, request: HttpRequest, queryset: QuerySet[CitizenAccount]) -> None:
        self._login_set(request, queryset, active=True)


@admin.register(DownloadPackage)
class DownloadPackageAdmin(AuditedAdminMixin, VisibleRowsMixin, ReadOnlyAdmin):
    """The zips prepared for citizens: what, for which study, how far, and why one failed.
    The file itself is not served here (the citizen's signed link is the only way)."""

    study_path = "study__"
    patient_path = "study__patient_id"
    list_display = (
        "requested_at",
        "study",
        "kind",
        "status",
        "percent_display",
        "instance_count",
        "size",
        "ready_at",
        "requested_by",
    )
    list_filter = ("status", "kind")
    search_fields = ("=study__accession_number", "=study__study_instance_uid", "=study__patient__codice_fiscale")
    search_help_text = _("Accession number, StudyInstanceUID o codice fiscale (interi).")
    list_select_related = ("study", "requested_by")
    date_hierarchy = "requested_at"
    readonly_fields = [f.name for f in DownloadPackage._meta.fields]

    def audit_subject(self, obj: DownloadPackage) -> dict[str, Any]:
        return {"study": obj.study, "patient": obj.study.patient}

    @admin.display(description=_("avanzamento"))
    def percent_display(self, obj: DownloadPackage) -> str:
        return f"{obj.percent}%"


@admin.register(CdMedium)
class CdMediumAdmin(AuditedAdminMixin, VisibleRowsMixin, ReadOnlyAdmin):
    """The CDs made for patients who chose CD: for which booking and report version,
    how far, why one failed, who handed it over. The image is served on the CUP's page."""

    study_path = "booking__study__"
    patient_path = "booking__patient_id"
    list_display = ("created_at", "booking", "report", "status", "instance_count", "size", "delivered_at")
    list_filter = ("status",)
    search_fields = ("=booking__accession_number", "=booking__patient__codice_fiscale")
    search_help_text = _("Numero di prenotazione o codice fiscale (interi).")
    list_select_related = ("booking", "report")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in CdMedium._meta.fields]

    def audit_subject(self, obj: CdMedium) -> dict[str, Any]:
        return {"study": obj.booking.study, "patient": obj.booking.patient}
