"""The archive's Django admin: staff browse the index and read DICOM headers.

What ingestion writes (studies, series, instances, copies, the audit log) is
read-only here: the index must keep saying what the stored files say, so only
ingestion changes it. Staff edit the region (authorities, facilities, DICOM
peers), reconcile patients and resolve storage conflicts.

Every page that shows patient data writes one audit event (``admin.<model>.list``,
with the patients the page listed, ``admin.<model>.view``, ``admin.<model>.history``,
``admin.instance.header``), before the page is sent: when the audit log cannot be
written the page fails rather than showing data nobody would know was seen.

Every admin of rows about a study or a patient goes through the access policy
(:mod:`archive.access`, :class:`VisibleRowsMixin`): a study the patient hid
(*oscuramento*) or one of another health authority, and everything below it,
does not exist here for the user: no row, no count, no filter choice, no search
hit, and its pages answer as for an object that is not there. The
concealments, emergency accesses and delegations themselves are not in the
admin at all (the citizen reads them in the portal, the audit trail keeps them).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, Exists, IntegerField, Model, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import smart_split, unescape_string_literal
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from pydicom.uid import UID

from archive import ingest, rejection
from archive.dicomnet.forms import RemoteNodeForm
from archive.storage import tiers as storage
from kernel.audit import audit_record
from kernel.codice_fiscale import normalize_codice_fiscale
from kernel.models import AuditEvent
from kernel.web import client_ip

from . import access
from .dicom import ACCEPTED_TRANSFER_SYNTAXES
from .dicom_header import MAX_VALUE_CHARS, Header, read_header
from .models import (
    Copy,
    Facility,
    HealthAuthority,
    Instance,
    InstanceConflict,
    Patient,
    PatientIdentifier,
    PerformedProcedureStep,
    Rejection,
    RejectionNote,
    RejectionNotice,
    RemoteNode,
    Report,
    ReportTemplate,
    Series,
    StaffProfile,
    Study,
)

logger = logging.getLogger(__name__)

admin.site.site_header = _("PACS regionale — amministrazione")
admin.site.site_title = _("PACS regionale")
admin.site.index_title = _("Amministrazione")

# Filter choices come from DISTINCT over tables that grow with every image:
# computed at most this often, not on every list page.
LOOKUP_CACHE_SECONDS = 600
# GET parameters of a list page that are not filters.
_NON_FILTER_PARAMS = frozenset({"q", "p", "o", "e", "_popup", "_to_field", "all"})


def _distinct_values(
    request: HttpRequest, key: str, queryset: QuerySet[Any], field: str, limit: int = 200
) -> list[str]:
    """The distinct values of ``field`` among ``queryset`` (rows the user may see),
    cached per :func:`archive.access.visibility_key`: a value found only in a study
    the user may not see is never offered, and one of a study hidden since the
    cache was filled does not linger."""

    def compute() -> list[str]:
        values = queryset.order_by(field).values_list(field, flat=True).distinct()[:limit]
        return [v for v in values if v]

    # One key per request: several filters of one page ask for it.
    visibility = getattr(request, "_pacs_visibility_key", None)
    if visibility is None:
        visibility = access.visibility_key(access.principal_for_request(request))
        request._pacs_visibility_key = visibility  # type: ignore[attr-defined]  # a memo that lives as long as the request
    cache_key = f"archive.admin.lookups.{key}.{visibility}"
    try:
        # get_or_set answers what compute() returned or cached: never None.
        return list(cast(list[str], cache.get_or_set(cache_key, compute, LOOKUP_CACHE_SECONDS)))
    except Exception:
        # A cache outage must not take the admin down with it.
        logger.warning("cache unavailable for admin lookups %s", key, exc_info=True)
        return compute()


if TYPE_CHECKING:
    # The mixins below go before a ModelAdmin in an admin's bases: to the type
    # checker they are ModelAdmins, so that their super() calls and overrides are
    # checked against Django's; at run time they stay plain mixins.
    AdminMixinBase = admin.ModelAdmin[Any]
else:
    AdminMixinBase = object


def _uid_label(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid


# --- Audit ------------------------------------------------------------------


class AuditedAdminMixin(AdminMixinBase):
    """One audit event per page that shows this model's patient data; a list's
    event names the patients of the rows it showed (bounded, ``PACS_AUDIT_MAX_PATIENTS``)."""

    # How a row names its patient ("patient_id", "study__patient_id"), for the list's event.
    patient_path: str | None = None

    def audit_subject(self, obj: Any) -> dict[str, Any]:
        """The ``patient``/``study`` arguments of :func:`audit_record` for ``obj``."""
        return {}

    def audit(
        self,
        request: HttpRequest,
        verb: str,
        *,
        obj: Any = None,
        outcome: str = AuditEvent.Outcome.SUCCESS,
        detail: dict[str, Any] | None = None,
        patients: list[int] | None = None,
    ) -> AuditEvent:
        return audit_record(
            action=f"admin.{self.opts.model_name}.{verb}",
            outcome=outcome,
            user=request.user,
            source=client_ip(request),
            detail=detail or {},
            patients=patients,
            **(self.audit_subject(obj) if obj is not None else {}),
        )

    def listed_patients(self, rows: Any) -> list[int] | None:
        """The patients of ``rows`` (a list page), in page order; None when the model names none."""
        if not self.patient_path:
            return None
        pks = [row.pk for row in rows]
        owner = dict(self.model._default_manager.filter(pk__in=pks).values_list("pk", self.patient_path).order_by())
        return [owner[pk] for pk in pks if owner.get(pk) is not None]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        # POSTs are actions (they answer with a redirect or their own page).
        if request.method == "GET" and response.status_code == 200:
            cl = (getattr(response, "context_data", None) or {}).get("cl")
            if cl is not None:
                filters = {k: v for k, v in request.GET.items() if k not in _NON_FILTER_PARAMS}
                self.audit(
                    request,
                    "list",
                    detail={"q": cl.query, "filters": filters, "results": cl.result_count},
                    patients=self.listed_patients(cl.result_list),
                )
        return response

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        # Here rather than in change_view: this is where an existing object is
        # about to be shown (GET, or a POST whose form came back with errors).
        if obj is not None and not add:
            self.audit(request, "view", obj=obj, detail={"object_id": obj.pk, "method": request.method})
        return super().render_change_form(request, context, add, change, form_url, obj)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().change_view(request, object_id, form_url, extra_context)
        except PermissionDenied:
            obj = self.get_object(request, unquote(object_id))
            verb = "view" if request.method in {"GET", "HEAD"} else "change"
            self.audit(request, verb, obj=obj, outcome=AuditEvent.Outcome.DENIED, detail={"object_id": object_id})
            raise

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().history_view(request, object_id, extra_context)
        if response.status_code == 200:
            obj = (getattr(response, "context_data", None) or {}).get("object")
            if obj is not None:
                self.audit(request, "history", obj=obj, detail={"object_id": obj.pk})
        return response


# --- The access policy -----------------------------------------------------------


class VisibleRowsMixin(AdminMixinBase):
    """Only the rows whose study (or patient) the user may see (:mod:`archive.access`).

    ``study_path`` says how the model reaches ``Study`` (``""``, ``"study__"``,
    ``"series__study__"``...); models that need more override :meth:`visible_q`.
    Everything the admin derives from :meth:`get_queryset` follows: the list, its
    count, date drill-down, search and actions, the change, history, delete and
    header pages (a hidden row answers as a missing one), autocomplete.
    """

    study_path: str | None = None

    def visible_q(self, principal: access.Principal) -> Q:
        if self.study_path is None:
            raise NotImplementedError(f"{type(self).__name__} says neither study_path nor visible_q")
        return access.visible_q(principal, self.study_path)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)
        return qs.filter(self.visible_q(access.principal_for_request(request)))

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            self._audit_not_visible(request, object_id, from_field)
        return obj

    def _audit_not_visible(self, request: HttpRequest, object_id: str, from_field: str | None) -> None:
        """Record an attempt at a row that exists but is not visible (the page says "not there")."""
        audit = getattr(self, "audit", None)
        if audit is None:
            return
        field = self.model._meta.pk if from_field is None else self.model._meta.get_field(from_field)
        try:
            row = self.model._default_manager.filter(**{field.attname: field.to_python(object_id)}).first()
        except (ValidationError, ValueError, TypeError):
            return
        if row is None:
            return
        subject = self.audit_subject(row)  # type: ignore[attr-defined]  # AuditedAdminMixin's, present since audit is
        study = subject.get("study")
        principal = access.principal_for_request(request)
        verdict = access.study_verdict(principal, study) if study is not None else None
        # The study may be visible while the row is not (an audit event that tells a hiding).
        reason = verdict.value if verdict is not None and verdict is not access.Verdict.VISIBLE else "not_visible"
        audit(
            request,
            "view" if request.method in {"GET", "HEAD"} else "change",
            obj=row,
            outcome=AuditEvent.Outcome.DENIED,
            detail={"object_id": str(object_id)[:64], "path": request.path[:300], "reason": reason},
        )


class DependentsUnlistedMixin(AdminMixinBase):
    """The delete page of a row others depend on (a patient, a facility, an authority, a
    user) does not list what stops its deletion: Django would name every study,
    concealment or emergency access that refers to it (or their kinds), hidden or out
    of scope ones included. The delete is refused all the same; the page says only
    that linked data exist."""

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, Any, Any, Any]:
        to_delete, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        if protected or perms_needed:
            # Refused either way; neither the rows nor their kinds are named.
            linked = gettext("dati collegati (esami, prenotazioni, registrazioni)")
            return [], {}, {linked} if perms_needed else set(), [linked] if protected else []
        return to_delete, model_count, perms_needed, protected


# --- Read-only rows ---------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the system writes: browsable, never added, changed or deleted here
    (the storage and preservation records too)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class IngestedRowAdmin(ReadOnlyAdmin):
    """Rows only ingestion writes: browsable, never added, changed or deleted here."""

    show_full_result_count = False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _changelist_link(model: type[Model], label: str, **params: Any) -> str:
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(params), label)


def _change_link(obj: Model | None, label: str | None = None) -> str:
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[quote(obj.pk)])
    return format_html('<a href="{}">{}</a>', url, label if label is not None else str(obj))


# --- List filters -----------------------------------------------------------


def _visible_series(request: HttpRequest) -> QuerySet[Series]:
    return Series.objects.filter(access.visible_q(access.principal_for_request(request), "study__"))


class StudyModalityFilter(admin.SimpleListFilter):
    title = _("modalità")
    parameter_name = "modality"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(m, m) for m in _distinct_values(request, "series.modality", _visible_series(request), "modality")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Study]) -> QuerySet[Study]:
        m = self.value()
        if not m:
            return queryset
        # ModalitiesInStudy is backslash-separated: match whole codes, so that
        # "CT" does not find a study of "CTX".
        return queryset.filter(
            Q(modalities_in_study=m)
            | Q(modalities_in_study__startswith=m + "\\")
            | Q(modalities_in_study__endswith="\\" + m)
            | Q(modalities_in_study__contains="\\" + m + "\\")
        )


class InstanceModalityFilter(admin.SimpleListFilter):
    title = _("modalità")
    parameter_name = "modality"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(m, m) for m in _distinct_values(request, "series.modality", _visible_series(request), "modality")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        m = self.value()
        return queryset.filter(series__modality=m) if m else queryset


class SeriesModalityFilter(InstanceModalityFilter):
    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        m = self.value()
        return queryset.filter(modality=m) if m else queryset


class SopClassFilter(admin.SimpleListFilter):
    title = _("classe SOP")
    parameter_name = "sop_class"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        visible = Instance.objects.filter(access.visible_q(access.principal_for_request(request), "series__study__"))
        uids = _distinct_values(request, "instance.sop_class_uid", visible, "sop_class_uid")
        return sorted(((u, _uid_label(u)) for u in uids), key=lambda pair: pair[1])

    def queryset(self, request: HttpRequest, queryset: QuerySet[Instance]) -> QuerySet[Instance]:
        value = self.value()
        return queryset.filter(sop_class_uid=value) if value else queryset


class TransferSyntaxFilter(admin.SimpleListFilter):
    title = _("transfer syntax")
    parameter_name = "transfer_syntax"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # The syntaxes the listener accepts, not a DISTINCT: transfer_syntax_uid
        # has no index and the instance table is the largest of all.
        return [(str(u), _uid_label(str(u))) for u in ACCEPTED_TRANSFER_SYNTAXES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Instance]) -> QuerySet[Instance]:
        value = self.value()
        return queryset.filter(transfer_syntax_uid=value) if value else queryset


class ResolvedFilter(admin.SimpleListFilter):
    title = _("stato")
    parameter_name = "resolved"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", gettext("da risolvere")), ("yes", gettext("risolti"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[InstanceConflict]) -> QuerySet[InstanceConflict]:
        if self.value() == "no":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


class AuditActionFilter(admin.SimpleListFilter):
    title = _("azione")
    parameter_name = "action"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (a, a) for a in _distinct_values(request, "auditevent.action", model_admin.get_queryset(request), "action")
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        value = self.value()
        return queryset.filter(action=value) if value else queryset


# --- Region -----------------------------------------------------------------


@admin.register(HealthAuthority)
class HealthAuthorityAdmin(DependentsUnlistedMixin, admin.ModelAdmin):
    list_display = ("code", "name")
    search_fields = ("code", "name")


class RemoteNodeInline(admin.TabularInline):
    model = RemoteNode
    extra = 0
    fields = (
        "ae_title",
        "host",
        "port",
        "description",
        "can_store",
        "can_query",
        "can_retrieve",
        "is_retrieve_destination",
        "can_worklist",
    )


@admin.register(Facility)
class FacilityAdmin(DependentsUnlistedMixin, admin.ModelAdmin):
    list_display = ("code", "name", "authority", "ae_title", "dicom_port")
    list_filter = ("authority",)
    search_fields = ("code", "name", "ae_title")
    list_select_related = ("authority",)
    inlines = [RemoteNodeInline]


@admin.register(RemoteNode)
class RemoteNodeAdmin(admin.ModelAdmin):
    form = RemoteNodeForm
    list_display = (
        "ae_title",
        "host",
        "port",
        "facility",
        "can_store",
        "can_query",
        "can_retrieve",
        "is_retrieve_destination",
        "can_worklist",
    )
    list_filter = ("facility", "can_store", "can_query", "can_retrieve", "is_retrieve_destination", "can_worklist")
    search_fields = ("ae_title", "host", "description")
    list_select_related = ("facility",)


# --- Patients ---------------------------------------------------------------


def identifiers_visible(principal: access.Principal, qs: QuerySet[PatientIdentifier]) -> QuerySet[PatientIdentifier]:
    """The PatientIDs a user may read: at facilities of their scope, and not where the
    patient's only studies are ones they may not see (the PatientID would say where
    the patient was examined)."""
    here = Study.objects.filter(patient_id=OuterRef("patient_id"), facility_id=OuterRef("facility_id"))
    return qs.filter(access.facility_visible_q(principal, "facility__")).filter(
        Q(Exists(here.filter(access.visible_q(principal)))) | ~Q(Exists(here))
    )


class PatientIdentifierInline(ReadOnlyInline):
    # Written by ingestion: a changed mapping would silently re-attribute
    # the studies that arrive later under that PatientID.
    model = PatientIdentifier
    fields = readonly_fields = ("facility", "dicom_patient_id", "issuer")
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[PatientIdentifier]:
        return identifiers_visible(access.principal_for_request(request), super().get_queryset(request))


class PatientForm(forms.ModelForm):
    class Meta:
        model = Patient
        fields = "__all__"

    def clean_codice_fiscale(self) -> str | None:
        # Stored as ingestion stores it, or the same person would be two rows.
        return normalize_codice_fiscale(self.cleaned_data.get("codice_fiscale") or "") or None


_BIRTH_DATE_FORMATS = ("%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y", "%Y-%m-%d", "%Y%m%d")


def parse_search_date(term: str) -> dt.date | None:
    """A search term that is a date as staff type it (``31/12/1970``, ``1970-12-31``, ``19701231``)."""
    for fmt in _BIRTH_DATE_FORMATS:
        try:
            return dt.datetime.strptime(term, fmt).date()
        except ValueError:
            continue
    return None


@admin.register(Patient)
class PatientAdmin(AuditedAdminMixin, VisibleRowsMixin, DependentsUnlistedMixin, admin.ModelAdmin):
    """The region's patients: a user restricted to a health authority sees those with a
    study there they may see; counts and identifiers are of what the user may see."""

    form = PatientForm
    patient_path = "pk"
    list_display = ("family_name", "given_name", "codice_fiscale", "birth_date", "sex", "provisional", "studies_link")
    list_display_links = ("family_name", "given_name")
    list_filter = ("provisional", "sex")
    # The search itself is get_search_results (dates); these only turn the box on.
    search_fields = ("codice_fiscale", "family_name", "given_name", "birth_date", "identifiers__dicom_patient_id")
    search_help_text = _("Codice fiscale, cognome, nome, data di nascita (gg/mm/aaaa) o PatientID.")
    ordering = ("family_name", "given_name", "id")
    inlines = [PatientIdentifierInline]
    readonly_fields = ("created_at", "studies_link")
    fieldsets = (
        (None, {"fields": ("codice_fiscale", "family_name", "given_name", "birth_date", "sex")}),
        (_("Riconciliazione"), {"fields": ("provisional", "created_at", "studies_link")}),
    )

    def visible_q(self, principal: access.Principal) -> Q:
        return access.patient_visible_q(principal)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Patient]:
        # Counted among the studies the user may see: a hidden study is not "one more".
        visible = (
            access.studies_visible(access.principal_for_request(request))
            .filter(patient_id=OuterRef("pk"))
            .order_by()
            .values("patient_id")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(study_count=Coalesce(Subquery(visible, output_field=IntegerField()), 0))
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Patient], search_term: str
    ) -> tuple[QuerySet[Patient], bool]:
        identifiers = identifiers_visible(access.principal_for_request(request), PatientIdentifier.objects.all())
        terms = []
        for bit in smart_split(search_term):
            if bit[:1] in {'"', "'"} and bit[-1:] == bit[0]:
                bit = unescape_string_literal(bit)
            if bit:
                terms.append(bit)
        # Every term must match some field, as in the stock admin search; a
        # term that reads as a date may also match the birth date (a numeric
        # PatientID like 19700101 still finds its patient).
        for term in terms:
            q = (
                Q(codice_fiscale__istartswith=normalize_codice_fiscale(term))
                | Q(family_name__icontains=term)
                | Q(given_name__icontains=term)
                | Q(pk__in=identifiers.filter(dicom_patient_id=term).values("patient_id"))
            )
            day = parse_search_date(term)
            if day is not None:
                q |= Q(birth_date=day)
            queryset = queryset.filter(q)
        return queryset, bool(terms)

    def audit_subject(self, obj: Patient) -> dict[str, Any]:
        return {"patient": obj}

    @admin.display(description=_("studi"), ordering="study_count")
    def studies_link(self, obj: Patient) -> str:
        # Annotated by get_queryset: the studies this user may see, never all of them.
        count = getattr(obj, "study_count", None)
        if count is None:
            return "-"
        if not count:
            return "0"
        return _changelist_link(Study, str(count), patient__id__exact=obj.pk)

    def save_model(self, request: HttpRequest, obj: Patient, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        self.audit(request, "change" if change else "add", obj=obj, detail={"fields": list(form.changed_data)})

    def delete_model(self, request: HttpRequest, obj: Patient) -> None:
        self.audit(request, "delete", obj=obj, detail={"object_id": obj.pk, "patient": str(obj)})
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Patient]) -> None:
        for obj in queryset:
            self.audit(request, "delete", obj=obj, detail={"object_id": obj.pk, "patient": str(obj)})
        super().delete_queryset(request, queryset)


# --- Studies, series, instances, copies ----------------------------------------


def _person_name(value: str) -> str:
    # The alphabetic group only, components spaced: "Rossi^Mario" reads "Rossi Mario".
    return " ".join(part for part in value.split("=")[0].split("^") if part)


class SeriesInline(ReadOnlyInline):
    model = Series
    fields = readonly_fields = (
        "series_number",
        "modality",
        "series_description",
        "body_part_examined",
        "number_of_instances",
        "created_at",
        "instances_link",
    )
    ordering = ("series_number", "id")

    @admin.display(description=_("istanze"))
    def instances_link(self, obj: Series) -> str:
        return _changelist_link(
            Instance, gettext("%(n)d istanze") % {"n": obj.number_of_instances}, series__id__exact=obj.pk
        )


@admin.register(Study)
class StudyAdmin(AuditedAdminMixin, VisibleRowsMixin, IngestedRowAdmin):
    study_path = ""
    patient_path = "patient_id"
    list_display = (
        "study_date",
        "patient_display",
        "dicom_patient_id",
        "accession_number",
        "modalities_display",
        "study_description",
        "facility",
        "series_count",
        "instance_count",
    )
    list_display_links = ("study_date", "patient_display")
    list_filter = ("facility", StudyModalityFilter, "post_ingest_pending")
    date_hierarchy = "study_date"
    search_fields = (
        "patient_name",
        "^dicom_patient_id",
        "^accession_number",
        "=study_instance_uid",
        "^patient__codice_fiscale",
    )
    search_help_text = _("PatientName, PatientID, AccessionNumber, StudyInstanceUID o codice fiscale.")
    list_select_related = ("facility",)
    ordering = ("-study_date", "-id")
    inlines = [SeriesInline]
    readonly_fields = ("patient_codice_fiscale",)
    fieldsets = (
        (
            _("Paziente"),
            {
                "fields": (
                    "patient",
                    "patient_codice_fiscale",
                    "patient_name",
                    "dicom_patient_id",
                    "issuer_of_patient_id",
                    "patient_birth_date",
                    "patient_sex",
                )
            },
        ),
        (
            _("Studio"),
            {
                "fields": (
                    "study_instance_uid",
                    "study_date",
                    "study_time",
                    "accession_number",
                    "study_id",
                    "study_description",
                    "referring_physician_name",
                    "modalities_in_study",
                    "number_of_series",
                    "number_of_instances",
                    "facility",
                )
            },
        ),
        (
            _("Archiviazione"),
            {"fields": ("created_at", "last_received_at", "post_ingest_pending", "post_ingest_at")},
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Study]:
        return super().get_queryset(request).select_related("patient", "facility")

    def audit_subject(self, obj: Study) -> dict[str, Any]:
        return {"study": obj, "patient": obj.patient}

    @admin.display(description=_("paziente"), ordering="patient_name")
    def patient_display(self, obj: Study) -> str:
        return _person_name(obj.patient_name) or "-"

    @admin.display(description=_("codice fiscale"))
    def patient_codice_fiscale(self, obj: Study) -> str:
        return obj.patient.codice_fiscale or gettext("provvisorio")

    @admin.display(description=_("modalità"), ordering="modalities_in_study")
    def modalities_display(self, obj: Study) -> str:
        return ", ".join(obj.modality_list())

    @admin.display(description=_("serie"), ordering="number_of_series")
    def series_count(self, obj: Study) -> int:
        return obj.number_of_series

    @admin.display(description=_("istanze"), ordering="number_of_instances")
    def instance_count(self, obj: Study) -> int:
        return obj.number_of_instances


@admin.register(Series)
class SeriesAdmin(AuditedAdminMixin, VisibleRowsMixin, IngestedRowAdmin):
    study_path = "study__"
    patient_path = "study__patient_id"
    list_display = (
        "series_instance_uid",
        "study_link",
        "modality",
        "series_number",
        "series_description",
        "body_part_examined",
        "number_of_instances",
        "created_at",
    )
    list_filter = (SeriesModalityFilter, "study__facility")
    search_fields = ("=series_instance_uid", "=study__study_instance_uid")
    search_help_text = _("SeriesInstanceUID o StudyInstanceUID.")
    list_select_related = ("study",)
    ordering = ("-id",)
    readonly_fields = ("instances_link",)
    fields = (
        "series_instance_uid",
        "study",
        "modality",
        "series_number",
        "series_description",
        "body_part_examined",
        "number_of_instances",
        "instances_link",
        "created_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Series]:
        return super().get_queryset(request).select_related("study__patient")

    def audit_subject(self, obj: Series) -> dict[str, Any]:
        return {"study": obj.study, "patient": obj.study.patient}

    @admin.display(description=_("studio"), ordering="study__study_date")
    def study_link(self, obj: Series) -> str:
        return _change_link(obj.study)

    @admin.display(description=_("istanze"))
    def instances_link(self, obj: Series) -> str:
        return _changelist_link(
            Instance, gettext("%(n)d istanze") % {"n": obj.number_of_instances}, series__id__exact=obj.pk
        )


class CopyInline(ReadOnlyInline):
    model = Copy
    fields = readonly_fields = ("tier", "path", "sha256", "size", "created_at", "verified_at")


@dataclass(frozen=True)
class _Attempt:
    tier: str
    path: str
    error: str
    missing: bool


def load_header(sources: Sequence[tuple[str, str]]) -> tuple[Header | None, tuple[str, str] | None, list[_Attempt]]:
    """The header of the first of ``sources`` (tier, path) that can be read, and what went wrong before it."""
    attempts: list[_Attempt] = []
    for tier, relpath in sources:
        try:
            fh = storage.open_copy(tier, relpath)
        except storage.StorageError as exc:
            logger.error("stored copy %s:%s cannot be opened: %s", tier, relpath, exc)
            attempts.append(_Attempt(tier, relpath, str(exc), missing=False))
            continue
        if fh is None:
            # The index says the bytes are there: a missing file is lost data.
            logger.error("stored copy %s:%s is missing", tier, relpath)
            attempts.append(_Attempt(tier, relpath, gettext("il file non esiste"), missing=True))
            continue
        try:
            with fh:
                header = read_header(fh)
        except Exception as exc:  # pydicom raises many types on a damaged file
            logger.exception("stored copy %s:%s is not readable as DICOM", tier, relpath)
            attempts.append(_Attempt(tier, relpath, f"{type(exc).__name__}: {exc}", missing=False))
            continue
        return header, (tier, relpath), attempts
    return None, None, attempts


class DicomHeaderViewMixin(AuditedAdminMixin):
    """A ``<pk>/header/`` page under the model's admin showing a stored file's DICOM header."""

    admin_site: Any
    # The change form with a link to that page, shared by every model that has one.
    change_form_template = "admin/archive/change_form_with_header.html"

    def header_sources(self, obj: Any) -> list[tuple[str, str]]:
        raise NotImplementedError

    def header_summary(self, obj: Any) -> list[tuple[str, str]]:
        raise NotImplementedError

    def header_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/header/",
                self.admin_site.admin_view(self.header_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_header",
            )
        ]

    def header_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        codename = f"{self.opts.app_label}.view_{self.opts.model_name}"
        obj = self.get_object(request, unquote(object_id))
        if not request.user.has_perm(codename):
            self.audit(request, "header", obj=obj, outcome=AuditEvent.Outcome.DENIED, detail={"object_id": object_id})
            raise PermissionDenied
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": obj,
            "title": gettext("Intestazione DICOM"),
            "subtitle": str(obj) if obj is not None else "",
        }
        request.current_app = self.admin_site.name
        if obj is None:
            context["message"] = gettext("%(name)s con ID «%(key)s» non esiste.") % {
                "name": str(self.opts.verbose_name).capitalize(),
                "key": object_id,
            }
            return TemplateResponse(request, "admin/archive/dicom_header_error.html", context, status=404)

        sources = self.header_sources(obj)
        header, source, attempts = load_header(sources)
        if header is None or source is None:
            self.audit(
                request,
                "header",
                obj=obj,
                outcome=AuditEvent.Outcome.FAILURE,
                detail={"object_id": obj.pk, "errors": [f"{a.tier}:{a.path}: {a.error}" for a in attempts]},
            )
            context["attempts"] = attempts
            context["message"] = (
                gettext("Nessuna copia leggibile: il file archiviato non è disponibile.")
                if sources
                else gettext("Nessuna copia registrata per questo oggetto.")
            )
            # Missing files are "not found"; a file that is there but cannot be
            # read is the server's failure and must show in its error rates.
            status = 404 if all(a.missing for a in attempts) else 500
            return TemplateResponse(request, "admin/archive/dicom_header_error.html", context, status=status)

        self.audit(request, "header", obj=obj, detail={"object_id": obj.pk, "copy": f"{source[0]}:{source[1]}"})
        context.update(
            {
                "header": header,
                "source_tier": source[0],
                "source_path": source[1],
                "attempts": attempts,
                "summary": self.header_summary(obj),
                "max_value_chars": MAX_VALUE_CHARS,
            }
        )
        return TemplateResponse(request, "admin/archive/dicom_header.html", context)

    @admin.display(description=_("intestazione DICOM"))
    def header_link(self, obj: Any) -> str:
        if obj is None or obj.pk is None:
            return "-"
        url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_header", args=[quote(obj.pk)])
        return format_html('<a href="{}">{}</a>', url, gettext("mostra"))


@admin.register(Instance)
class InstanceAdmin(DicomHeaderViewMixin, VisibleRowsMixin, IngestedRowAdmin):
    study_path = "series__study__"
    patient_path = "series__study__patient_id"
    list_display = (
        "sop_instance_uid",
        "instance_number",
        "modality",
        "sop_class",
        "transfer_syntax",
        "dimensions",
        "number_of_frames",
        "size",
        "facility",
        "received_at",
        "header_link",
    )
    list_filter = (InstanceModalityFilter, SopClassFilter, TransferSyntaxFilter, "facility", "received_at")
    search_fields = ("=sop_instance_uid", "=series__series_instance_uid", "=series__study__study_instance_uid")
    search_help_text = _("SOPInstanceUID, SeriesInstanceUID o StudyInstanceUID.")
    list_select_related = ("series", "facility")
    ordering = ("-received_at",)
    inlines = [CopyInline]
    readonly_fields = ("sop_class", "transfer_syntax", "study_link", "header_link")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "sop_instance_uid",
                    "sop_class_uid",
                    "sop_class",
                    "series",
                    "study_link",
                    "instance_number",
                    "rows",
                    "columns",
                    "number_of_frames",
                    "header_link",
                )
            },
        ),
        (
            _("File"),
            {
                "fields": (
                    "transfer_syntax_uid",
                    "transfer_syntax",
                    "size",
                    "sha256",
                    "facility",
                    "calling_ae",
                    "received_at",
                )
            },
        ),
    )

    def get_urls(self) -> list[URLPattern]:
        return [*self.header_urls(), *super().get_urls()]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Instance]:
        return super().get_queryset(request).select_related("series__study__patient", "facility")

    def audit_subject(self, obj: Instance) -> dict[str, Any]:
        study = obj.series.study
        return {"study": study, "patient": study.patient}

    def header_sources(self, obj: Instance) -> list[tuple[str, str]]:
        return [(c.tier, c.path) for c in obj.copies.order_by("pk")]

    def header_summary(self, obj: Instance) -> list[tuple[str, str]]:
        study = obj.series.study
        return [
            ("SOPInstanceUID", obj.sop_instance_uid),
            (gettext("Classe SOP"), _uid_label(obj.sop_class_uid)),
            (gettext("Transfer syntax"), _uid_label(obj.transfer_syntax_uid)),
            (gettext("Paziente"), str(study.patient)),
            (gettext("Studio"), str(study)),
            ("StudyInstanceUID", study.study_instance_uid),
            ("SeriesInstanceUID", obj.series.series_instance_uid),
        ]

    @admin.display(description=_("modalità"), ordering="series__modality")
    def modality(self, obj: Instance) -> str:
        return obj.series.modality

    @admin.display(description=_("classe SOP"), ordering="sop_class_uid")
    def sop_class(self, obj: Instance) -> str:
        return _uid_label(obj.sop_class_uid)

    @admin.display(description=_("transfer syntax"), ordering="transfer_syntax_uid")
    def transfer_syntax(self, obj: Instance) -> str:
        return _uid_label(obj.transfer_syntax_uid)

    @admin.display(description=_("dimensioni"))
    def dimensions(self, obj: Instance) -> str:
        return f"{obj.columns}×{obj.rows}" if obj.rows and obj.columns else "-"

    @admin.display(description=_("studio"))
    def study_link(self, obj: Instance) -> str:
        return _change_link(obj.series.study)


@admin.register(Copy)
class CopyAdmin(VisibleRowsMixin, IngestedRowAdmin):
    study_path = "instance__series__study__"
    list_display = ("instance", "tier", "path", "size", "created_at", "verified_at")
    list_filter = ("tier", "verified_at")
    search_fields = ("=instance__sop_instance_uid", "path")
    list_select_related = ("instance",)
    ordering = ("-id",)
    fields = ("instance", "tier", "path", "sha256", "size", "created_at", "verified_at")


# --- Conflicts ----------------------------------------------------------------


class ConflictForm(forms.ModelForm):
    resolve = forms.BooleanField(
        label=_("segna come risolto"),
        required=False,
        help_text=_("Registra data, ora e utente della risoluzione; serve una nota."),
    )

    class Meta:
        model = InstanceConflict
        fields = ("resolution_note",)

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("resolve") and not (data.get("resolution_note") or "").strip():
            self.add_error("resolution_note", _("Scrivere come è stato risolto il conflitto."))
        return data


class ResolveForm(forms.Form):
    note = forms.CharField(
        label=_("nota"),
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        help_text=_("Come sono stati risolti: resta con ciascun conflitto."),
    )


@admin.register(InstanceConflict)
class InstanceConflictAdmin(DicomHeaderViewMixin, VisibleRowsMixin, admin.ModelAdmin):
    form = ConflictForm
    patient_path = "study__patient_id"
    list_display = (
        "received_at",
        "reason",
        "facility",
        "calling_ae",
        "sop_instance_uid",
        "study_link",
        "is_resolved",
        "resolved_by",
    )
    list_filter = (ResolvedFilter, "reason", "facility", "received_at")
    search_fields = ("=sop_instance_uid", "=study_instance_uid")
    search_help_text = _("SOPInstanceUID o StudyInstanceUID.")
    list_select_related = ("facility", "study", "resolved_by")
    ordering = ("-received_at",)
    actions = ["mark_resolved"]
    readonly_fields = (
        "reason",
        "detail",
        "sop_instance_uid",
        "study_instance_uid",
        "instance",
        "study",
        "facility",
        "calling_ae",
        "received_at",
        "tier",
        "path",
        "sha256",
        "size",
        "header_link",
        "resolved_at",
        "resolved_by",
    )

    def get_urls(self) -> list[URLPattern]:
        return [*self.header_urls(), *super().get_urls()]

    def visible_q(self, principal: access.Principal) -> Q:
        # The study it was received for (or, not indexed, the receiving facility and
        # the UID it names), and the archived instance it clashes with, which may be
        # another study's.
        study = (Q(study__isnull=False) & access.visible_q(principal, "study__")) | (
            Q(study__isnull=True) & access.facility_visible_q(principal) & access.uid_visible_q(principal)
        )
        return study & access.any_q(Q(instance__isnull=True), access.visible_q(principal, "instance__series__study__"))

    def get_queryset(self, request: HttpRequest) -> QuerySet[InstanceConflict]:
        return super().get_queryset(request).select_related("study__patient", "facility", "resolved_by")

    def get_fieldsets(self, request: HttpRequest, obj: InstanceConflict | None = None) -> list[Any]:
        resolution = ["resolved_at", "resolved_by", "resolution_note"]
        if obj is not None and self.has_change_permission(request, obj):
            resolution.append("resolve")
        return [
            (None, {"fields": ["reason", "detail", "sop_instance_uid", "study_instance_uid", "instance", "study"]}),
            (
                _("Oggetto ricevuto"),
                {"fields": ["facility", "calling_ae", "received_at", "tier", "path", "sha256", "size", "header_link"]},
            ),
            (_("Risoluzione"), {"fields": resolution}),
        ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The row is the only record of bytes kept in the tier.
        return False

    def has_change_permission(self, request: HttpRequest, obj: InstanceConflict | None = None) -> bool:
        # A resolution is a record: once made it is not edited.
        return super().has_change_permission(request, obj) and (obj is None or obj.resolved_at is None)

    def audit_subject(self, obj: InstanceConflict) -> dict[str, Any]:
        if obj.study is not None:
            return {"study": obj.study, "patient": obj.study.patient}
        return {"study_instance_uid": obj.study_instance_uid}

    def header_sources(self, obj: InstanceConflict) -> list[tuple[str, str]]:
        return [(obj.tier, obj.path)]

    def header_summary(self, obj: InstanceConflict) -> list[tuple[str, str]]:
        return [
            (gettext("Motivo"), obj.get_reason_display()),
            ("SOPInstanceUID", obj.sop_instance_uid),
            ("StudyInstanceUID", obj.study_instance_uid),
            (gettext("Dettaglio"), obj.detail),
        ]

    @admin.display(description=_("studio"))
    def study_link(self, obj: InstanceConflict) -> str:
        return _change_link(obj.study) if obj.study is not None else obj.study_instance_uid

    @admin.display(description=_("risolto"), boolean=True, ordering="resolved_at")
    def is_resolved(self, obj: InstanceConflict) -> bool:
        return obj.resolved_at is not None

    def resolve(self, request: HttpRequest, pk: int, note: str) -> bool:
        """Mark one conflict resolved by this user; False when someone else already had."""
        resolved = ingest.conflict_resolve(conflict_pk=pk, user=request.user, note=note, source=client_ip(request))
        return resolved is not None

    def save_model(self, request: HttpRequest, obj: InstanceConflict, form: forms.ModelForm, change: bool) -> None:
        note = form.cleaned_data.get("resolution_note", "")
        if form.cleaned_data.get("resolve"):
            if not self.resolve(request, obj.pk, note):
                self.message_user(
                    request, gettext("Il conflitto era già stato risolto da un altro utente."), messages.WARNING
                )
        else:
            InstanceConflict.objects.filter(pk=obj.pk, resolved_at__isnull=True).update(resolution_note=note)
        obj.refresh_from_db()

    @admin.action(description=_("Segna come risolti i conflitti selezionati"), permissions=["change"])
    def mark_resolved(self, request: HttpRequest, queryset: QuerySet[InstanceConflict]) -> HttpResponse | None:
        pending = list(queryset.filter(resolved_at__isnull=True).select_related("facility"))
        if not pending:
            self.message_user(request, gettext("Nessuno dei conflitti selezionati è da risolvere."), messages.WARNING)
            return None
        form = ResolveForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            note = form.cleaned_data["note"]
            resolved = [c for c in pending if self.resolve(request, c.pk, note)]
            for conflict in resolved:
                self.log_change(request, conflict, gettext("Segnato come risolto."))
            self.message_user(
                request,
                ngettext(
                    "%(n)d conflitto segnato come risolto.", "%(n)d conflitti segnati come risolti.", len(resolved)
                )
                % {"n": len(resolved)},
                messages.SUCCESS,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Risolvere i conflitti di archiviazione"),
            "conflicts": pending,
            "form": form,
            "action_name": "mark_resolved",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/archive/instanceconflict/resolve.html", context)


# --- Audit log --------------------------------------------------------------------


# Events that say a study is or was hidden: not shown to anyone here (the
# citizen reads them in the portal; the chain keeps them for verification).
CONCEALMENT_ACTIONS = ("portal.conceal", "portal.reveal")


@admin.register(AuditEvent)
class AuditEventAdmin(AuditedAdminMixin, VisibleRowsMixin, IngestedRowAdmin):
    """The audit log, as far as the user may see: events about a study or a patient the
    user may not see are absent, and so is every event that would tell that a study
    is or was hidden (a concealment, a refusal because of one)."""

    patient_path = "patient_id"
    list_display = ("at", "who", "action", "outcome", "patient", "study_instance_uid", "source")
    list_filter = (AuditActionFilter, "outcome", "at")
    search_fields = ("^username", "^ae_title", "=study_instance_uid")
    search_help_text = _("Utente, AE title o StudyInstanceUID.")
    # Chain order: ids are assigned under the chain lock, so -id is newest first
    # even where two events share a timestamp.
    ordering = ("-id",)
    list_select_related = ("patient",)
    readonly_fields = ("detail_pretty",)
    fields = (
        "at",
        "user",
        "username",
        "ae_title",
        "system",
        "action",
        "outcome",
        "patient",
        "study",
        "study_instance_uid",
        "source",
        "detail_pretty",
        "prev_hash",
        "hash",
    )

    def visible_q(self, principal: access.Principal) -> Q:
        q = access.any_q(Q(study__isnull=True), access.visible_q(principal, "study__")) & access.uid_visible_q(
            principal
        )
        q &= access.any_q(Q(patient__isnull=True), access.patient_visible_q(principal, "patient__"))
        # has_key first: a missing key is NULL, and NOT NULL would drop the row.
        return q & ~(
            Q(action__in=CONCEALMENT_ACTIONS)
            | (Q(detail__has_key="reason") & Q(detail__reason=access.Verdict.CONCEALED.value))
            | (Q(detail__has_key="concealed") & Q(detail__concealed=True))
        )

    def audit_subject(self, obj: AuditEvent) -> dict[str, Any]:
        # The ids are not constrained (an event outlives its rows): look them up.
        study = Study.objects.filter(pk=obj.study_id).first() if obj.study_id else None
        patient = Patient.objects.filter(pk=obj.patient_id).first() if obj.patient_id else None
        return {"study": study, "patient": patient or (study.patient if study is not None else None)}

    @admin.display(description=_("chi"))
    def who(self, obj: AuditEvent) -> str:
        return obj.username or obj.ae_title or obj.system or "-"

    @admin.display(description=_("dettaglio"))
    def detail_pretty(self, obj: AuditEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.detail, indent=2, ensure_ascii=False, sort_keys=True))


# --- Reports and staff profiles ------------------------------------------------------


@admin.register(Report)
class ReportAdmin(AuditedAdminMixin, VisibleRowsMixin, admin.ModelAdmin):
    """Reports are read here, never written: a radiologist writes and signs on the
    report pages, and a signed version never changes or goes (the model and the
    database refuse it too). The only change allowed is removing an abandoned
    draft, which frees the study it claims; it is audited."""

    list_display = ("study_link", "version", "kind", "status", "author", "signer_name", "signed_at", "updated_at")
    list_filter = ("status", "kind", "study__facility", "signed_at")
    date_hierarchy = "created_at"
    search_fields = ("=study__study_instance_uid", "^study__accession_number", "^author__username", "signer_name")
    search_help_text = _("StudyInstanceUID, AccessionNumber, nome utente dell'autore o firmatario.")
    list_select_related = ("study", "study__facility", "author")
    ordering = ("-created_at", "-id")
    show_full_result_count = False
    fieldsets = (
        (None, {"fields": ("study", "version", "kind", "previous", "status", "author", "revision")}),
        (_("Testo"), {"fields": ("clinical_question", "technique", "findings", "conclusion")}),
        (
            _("Firma"),
            {
                "fields": (
                    "signed_at",
                    "signer_name",
                    "signer_certificate",
                    "tier",
                    "pdf_path",
                    "pdf_sha256",
                    "pdf_size",
                    "signature_path",
                    "signature_sha256",
                    "encapsulated_sop_instance_uid",
                )
            },
        ),
        (_("Date"), {"fields": ("created_at", "updated_at")}),
    )

    study_path = "study__"
    patient_path = "study__patient_id"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Report]:
        return super().get_queryset(request).select_related("study", "study__patient", "author", "previous")

    def audit_subject(self, obj: Report) -> dict[str, Any]:
        return {"study": obj.study, "patient": obj.study.patient}

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Report | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Report | None = None) -> bool:
        if obj is not None and obj.status == Report.Status.SIGNED:
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description=_("studio"), ordering="study__study_date")
    def study_link(self, obj: Report) -> str:
        return _change_link(obj.study)

    def delete_model(self, request: HttpRequest, obj: Report) -> None:
        with transaction.atomic():
            deleted, _counts = Report.objects.filter(pk=obj.pk, status=Report.Status.DRAFT).delete()
            if deleted != 1:
                raise PermissionDenied(gettext("Un referto firmato non si può cancellare."))
            self.audit(request, "delete", obj=obj, detail={"object_id": obj.pk, "version": obj.version})

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        # The action asked has_delete_permission for each row already; signed ones are kept regardless.
        for report in queryset.filter(status=Report.Status.DRAFT).select_related("study", "study__patient"):
            self.delete_model(request, report)


def _own_authority_id(request: HttpRequest) -> int | None:
    """The health authority whose rows ``request.user`` keeps (None: the region's staff, all of them).

    A cross-authority radiologist reads other authorities' studies but keeps
    only their own authority's templates."""
    if request.user.is_superuser:
        return None
    return (
        StaffProfile.objects.filter(user_id=cast(int, request.user.pk)).values_list("authority_id", flat=True).first()
    )


@admin.register(ReportTemplate)
class ReportTemplateAdmin(admin.ModelAdmin):
    """The report templates, kept by a department's head (``archive.change_reporttemplate``):
    staff of a health authority see and edit only their authority's."""

    list_display = ("procedure_code", "name", "authority", "updated_at")
    list_display_links = ("procedure_code", "name")
    list_filter = ("authority",)
    list_select_related = ("authority",)
    search_fields = ("procedure_code", "name")
    fields = ("authority", "procedure_code", "name", "clinical_question", "technique", "findings", "conclusion")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ReportTemplate]:
        qs = super().get_queryset(request)
        own = _own_authority_id(request)
        return qs if own is None else qs.filter(authority_id=own)

    def get_list_filter(self, request: HttpRequest) -> Any:
        # Staff of one authority have nothing to filter by.
        return self.list_filter if _own_authority_id(request) is None else ()

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "authority":
            own = _own_authority_id(request)
            if own is not None:
                kwargs["queryset"] = HealthAuthority.objects.filter(pk=own)
                kwargs["initial"] = own
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: ReportTemplate, form: Any, change: bool) -> None:
        own = _own_authority_id(request)
        # The form offers only the user's authority; a forged POST is refused here too.
        if own is not None and obj.authority_id != own:
            raise PermissionDenied(gettext("Puoi modificare solo i modelli della tua azienda sanitaria."))
        super().save_model(request, obj, form, change)


class StaffProfileForm(forms.ModelForm):
    """The TOTP secret is written, never shown: left empty it stays as it is."""

    totp_secret = forms.CharField(
        label=_("segreto TOTP"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_(
            "Base32 (RFC 6238), come lo mostra l'app di autenticazione. Lasciare vuoto per non cambiarlo; "
            "il segreto salvato non viene mai mostrato."
        ),
    )
    totp_remove = forms.BooleanField(label=_("togli il secondo fattore"), required=False)

    class Meta:
        model = StaffProfile
        fields = ("user", "title", "role", "codice_fiscale", "authority", "cross_authority", "totp_secret")

    def clean_totp_secret(self) -> str:
        secret = "".join(self.cleaned_data.get("totp_secret", "").split()).upper().rstrip("=")
        if secret and (len(secret) < 16 or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for c in secret)):
            raise forms.ValidationError(
                _("Il segreto TOTP è in base32 (lettere A-Z e cifre 2-7), di almeno 16 caratteri.")
            )
        return secret

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("totp_remove"):
            data["totp_secret"] = ""
        elif not data.get("totp_secret"):
            data["totp_secret"] = self.instance.totp_secret if self.instance.pk else ""
        return data


class StaffProfileAdminMixin:
    @admin.display(description=_("secondo fattore"), boolean=True)
    def totp_configured(self, obj: StaffProfile | None) -> bool:
        return bool(obj and obj.totp_secret)


@admin.register(StaffProfile)
class StaffProfileAdmin(StaffProfileAdminMixin, admin.ModelAdmin):
    form = StaffProfileForm
    list_display = ("user", "title", "role", "authority", "cross_authority", "totp_configured")
    list_filter = ("authority", "cross_authority")
    search_fields = ("^user__username", "user__last_name")
    list_select_related = ("user", "authority")
    autocomplete_fields = ("user",)
    readonly_fields = ("totp_configured",)
    fields = (
        "user",
        "title",
        "role",
        "codice_fiscale",
        "authority",
        "cross_authority",
        "totp_configured",
        "totp_secret",
        "totp_remove",
    )


class StaffProfileInline(StaffProfileAdminMixin, admin.StackedInline):
    model = StaffProfile
    form = StaffProfileForm
    can_delete = False
    max_num = 1
    extra = 0
    readonly_fields = ("totp_configured",)
    fields = (
        "title",
        "role",
        "codice_fiscale",
        "authority",
        "cross_authority",
        "totp_configured",
        "totp_secret",
        "totp_remove",
    )
    verbose_name_plural = _("profilo del personale (azienda sanitaria, secondo fattore per la firma)")


_user_model = get_user_model()
_user_admin = admin.site._registry.get(_user_model)
if _user_admin is not None and StaffProfileInline not in _user_admin.inlines:
    # The user page gets the profile inline: a radiologist is set up in one place.
    _UserAdminBase = type(_user_admin)

    class UserAdmin(DependentsUnlistedMixin, _UserAdminBase):  # type: ignore[valid-type,misc]  # a base known at run time
        inlines = (*_UserAdminBase.inlines, StaffProfileInline)

    admin.site.unregister(_user_model)
    admin.site.register(_user_model, UserAdmin)

# The storage pages (archive.storage.admin) and the API tokens' page (archive.tokens_admin)
# register themselves; ArchiveConfig.ready imports them, after this module.


# --- IOCM: rejection notes and what they leave to do (archive.rejection) ---------------


class RejectionInline(ReadOnlyInline):
    model = Rejection
    fields = ("sop_instance_uid", "series_instance_uid", "state_label", "rejected_at", "purged_at")
    readonly_fields = fields
    show_change_link = False

    @admin.display(description=_("stato"))
    def state_label(self, obj: Rejection) -> str:
        return obj.state


class _WithdrawnStudiesToo(VisibleRowsMixin):
    """The notes' pages show studies a rejection emptied (hidden everywhere else), still
    only within the user's scope and never a concealed one."""

    def visible_q(self, principal: access.Principal) -> Q:
        return access.visible_q(principal, "study__", include_withdrawn=True)


@admin.register(RejectionNote)
class RejectionNoteAdmin(AuditedAdminMixin, _WithdrawnStudiesToo, ReadOnlyAdmin):
    """The rejection notes received (IOCM): reason, sender, what they withdrew and what waits to arrive."""

    patient_path = "study__patient_id"
    list_display = ("received_at", "meaning", "code", "facility", "calling_ae", "withdrawn", "pending", "study")
    list_filter = ("code", "facility", "received_at")
    search_fields = ("=sop_instance_uid", "=study__study_instance_uid", "=rejections__sop_instance_uid")
    search_help_text = _("SOPInstanceUID della nota o di un'istanza rifiutata, o StudyInstanceUID.")
    list_select_related = ("facility", "study")
    inlines = [RejectionInline]

    def audit_subject(self, obj: RejectionNote) -> dict[str, Any]:
        return {"study": obj.study, "patient": obj.study.patient}


@admin.register(RejectionNotice)
class RejectionNoticeAdmin(AuditedAdminMixin, _WithdrawnStudiesToo, ReadOnlyAdmin):
    """What a rejection note leaves to the CUP and the archivist: a study already
    preserved or published. "Da gestire" until someone marks it handled."""

    patient_path = "study__patient_id"
    list_display = ("created_at", "state", "kind", "study", "note", "detail", "handled_by", "handled_at")
    list_filter = ("state", "kind")
    list_select_related = ("study", "note", "handled_by")
    actions = ["mark_handled"]

    def audit_subject(self, obj: RejectionNotice) -> dict[str, Any]:
        return {"study": obj.study, "patient": obj.study.patient}

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Only through the action (audited); the row's page stays read-only.
        return obj is None and request.user.has_perm("archive.change_rejectionnotice")

    @admin.action(description=_("Segna come gestiti"))
    def mark_handled(self, request: HttpRequest, queryset: QuerySet[RejectionNotice]) -> None:
        done = sum(
            1
            for pk in queryset.values_list("pk", flat=True)
            if rejection.notice_handle(notice_pk=pk, user=request.user, source=client_ip(request))
        )
        self.message_user(request, ngettext("%(n)d avviso gestito.", "%(n)d avvisi gestiti.", done) % {"n": done})


# --- Modality Performed Procedure Steps ----------------------------------------------


@admin.register(PerformedProcedureStep)
class PerformedProcedureStepAdmin(AuditedAdminMixin, VisibleRowsMixin, ReadOnlyAdmin):
    """The steps the modalities reported (MPPS): only the listener writes them. A step
    is seen by who may see its facility, unless its study is one the user may not see."""

    patient_path = "patient_id"
    list_display = ("accession_number", "status", "station_ae_title", "started_at", "ended_at", "facility", "patient")
    list_filter = ("status", "facility")
    search_fields = ("=accession_number", "=sop_instance_uid", "=study_instance_uid", "=dicom_patient_id")
    list_select_related = ("facility", "patient")
    ordering = ("-created_at", "-id")
    fields = (
        "sop_instance_uid",
        "status",
        "facility",
        "calling_ae",
        "patient",
        "patient_name",
        "dicom_patient_id",
        "accession_number",
        "scheduled_step_id",
        "scheduled_steps",
        "study_instance_uid",
        "step_id",
        "station_ae_title",
        "station_name",
        "modality",
        "description",
        "started_at",
        "ended_at",
        "discontinuation_reason",
        "comments",
        "performed_series",
        "dose",
        "attributes",
        "created_at",
        "updated_at",
    )

    def visible_q(self, principal: access.Principal) -> Q:
        return access.facility_visible_q(principal) & access.uid_visible_q(principal)

    def audit_subject(self, obj: Any) -> dict[str, Any]:
        return {"patient": obj.patient, "study_instance_uid": obj.study_instance_uid}
