"""The reconciliation queue: studies that did not tie to their booking by themselves.

Staff compare the booking with the header of the study's first stored
instance, side by side, and link the study (to the proposed booking or to
another by accession number), re-assign it to a patient, or reject the item.
The pages translate; ``booking.matching`` decides and records.

The queue shows study data (the index and the DICOM header), so it is the
access policy's (:mod:`archive.access`): only the items whose study the user
may see are listed, and any other answers 404 as a missing item. A study the
patient concealed, or of another health authority, is not there.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_POST

from archive import access
from archive.dicom import parse_da
from archive.dicom_header import Header, read_header
from archive.models import Instance, Patient, Study
from archive.patients import patient_dicom_name
from archive.storage import retrieve
from archive.storage import tiers as storage
from kernel.audit import audit_record
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale
from kernel.models import AuditEvent
from kernel.web import client_ip, perms_required

from . import matching
from .models import Booking, Reconciliation
from .services import BookingError

logger = logging.getLogger(__name__)

PERMISSION = "booking.reconcile_study"
PAGE_SIZE = 50


_source = client_ip
staff_only = perms_required(PERMISSION)


# --- forms ----------------------------------------------------------------------


class StateFilterForm(forms.Form):
    state = forms.ChoiceField(
        label=gettext_lazy("Stato"),
        required=False,
        choices=[("", gettext_lazy("tutti")), *Reconciliation.State.choices],
    )


class LinkForm(forms.Form):
    booking = forms.IntegerField(required=False, widget=forms.HiddenInput)
    accession_number = forms.CharField(label=gettext_lazy("Accession number"), max_length=16, required=False)
    note = forms.CharField(label=gettext_lazy("Nota"), max_length=500, required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("booking") and not (data.get("accession_number") or "").strip():
            raise forms.ValidationError(_("Indicare l'accession number della prenotazione."))
        return data


class ReassignForm(forms.Form):
    codice_fiscale = forms.CharField(label=gettext_lazy("Codice fiscale del paziente"), max_length=32)
    note = forms.CharField(label=gettext_lazy("Nota"), max_length=500, required=False)

    def clean_codice_fiscale(self) -> str:
        code = normalize_codice_fiscale(self.cleaned_data["codice_fiscale"])
        error = codice_fiscale_error(code)
        if error:
            raise forms.ValidationError(error)
        return code


class RejectForm(forms.Form):
    note = forms.CharField(
        label=gettext_lazy("Motivo"),
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": gettext_lazy("Indicare il motivo per cui lo studio viene respinto.")},
    )


_FORMS: dict[str, type[forms.Form]] = {
    "proposed": LinkForm,
    "link": LinkForm,
    "reassign": ReassignForm,
    "reject": RejectForm,
}


def _form(name: str, data: Any = None, **kwargs: Any) -> forms.Form:
    """One of the item page's forms; each has its own element ids (they share field names)."""
    return _FORMS[name](data, auto_id=f"{name}-%s", **kwargs)


# --- the list -------------------------------------------------------------------


@require_GET
@staff_only
def reconciliation_list(request: HttpRequest) -> HttpResponse:
    form = StateFilterForm(request.GET or {"state": Reconciliation.State.PENDING})
    state = form.cleaned_data["state"] if form.is_valid() else Reconciliation.State.PENDING
    items = access.filter_visible(
        Reconciliation.objects.select_related("study", "booking").order_by("-created_at", "-pk"),
        access.principal_for_request(request),
        "study__",
    )
    if state:
        items = items.filter(state=state)
    page = Paginator(items, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "booking/reconciliation/list.html",
        {"form": form, "state": state, "page": page, "items": page.object_list},
    )


# --- one item -------------------------------------------------------------------


@dataclass(frozen=True)
class CompareRow:
    label: str
    booking: str
    dicom: str
    differs: bool
    # False for attributes shown for context only (free-text descriptions).
    compared: bool = True


# The header elements shown side by side with the booking.
_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "Modality",
)


def _first_instance(study: Study) -> Instance | None:
    return (
        retrieve.instances_with_copies(Instance.objects.filter(series__study=study))
        .order_by("series__series_number", "series__pk", "instance_number", "pk")
        .first()
    )


def _study_header(study: Study) -> tuple[Header | None, Instance | None, str]:
    """The header of the study's first instance, or why it cannot be read."""
    instance = _first_instance(study)
    if instance is None:
        return None, None, _("Lo studio non ha istanze archiviate.")
    try:
        with retrieve.instance_open(instance) as fh:
            return read_header(fh), instance, ""
    except (retrieve.NotAvailable, storage.StorageError, OSError) as exc:
        logger.error("header of %s not readable for reconciliation: %s", instance.sop_instance_uid, exc)
        return None, instance, _("Il file archiviato non è leggibile.")
    except Exception:  # pydicom raises many types on a damaged file
        logger.exception("header of %s not readable for reconciliation", instance.sop_instance_uid)
        return None, instance, _("Il file archiviato non è leggibile come DICOM.")


def _header_values(header: Header | None, study: Study) -> dict[str, str]:
    """The header's values by keyword; the index's values when the file cannot be read."""
    if header is not None:
        values = {row.keyword: row.value for row in header.rows if row.depth == 0 and row.keyword in _KEYWORDS}
        return {kw: values.get(kw, "") for kw in _KEYWORDS}
    return {
        "PatientName": study.patient_name,
        "PatientID": study.dicom_patient_id,
        "IssuerOfPatientID": study.issuer_of_patient_id,
        "PatientBirthDate": study.patient_birth_date.strftime("%Y%m%d") if study.patient_birth_date else "",
        "PatientSex": study.patient_sex,
        "AccessionNumber": study.accession_number,
        "StudyDate": study.study_date.strftime("%Y%m%d") if study.study_date else "",
        "StudyTime": study.study_time,
        "StudyDescription": study.study_description,
        "Modality": study.modalities_in_study,
    }


def _day(value: dt.date | None) -> str:
    return value.strftime("%d/%m/%Y") if value else ""


def _time(value: str) -> str:
    digits = value.strip()
    return f"{digits[:2]}:{digits[2:4]}" if len(digits) >= 4 and digits[:4].isdigit() else digits


def compare_rows(booking: Booking | None, dicom: dict[str, str]) -> list[CompareRow]:
    """The booking and the header, one attribute a row, with the rows that differ flagged."""
    birth = parse_da(dicom["PatientBirthDate"])
    study_day = parse_da(dicom["StudyDate"])
    dicom_cells = {
        "name": dicom["PatientName"],
        "id": dicom["PatientID"] + (f" ({dicom['IssuerOfPatientID']})" if dicom["IssuerOfPatientID"] else ""),
        "birth": _day(birth) or dicom["PatientBirthDate"],
        "sex": dicom["PatientSex"],
        "acc": dicom["AccessionNumber"],
        "date": " ".join(filter(None, [_day(study_day) or dicom["StudyDate"], _time(dicom["StudyTime"])])),
        "description": dicom["StudyDescription"],
        "modality": dicom["Modality"],
    }
    labels = {
        "name": _("Cognome^Nome"),
        "id": _("Identificativo del paziente"),
        "birth": _("Data di nascita"),
        "sex": _("Sesso"),
        "acc": _("Accession number"),
        "date": _("Data dell'esame"),
        "description": _("Esame"),
        "modality": _("Modalità"),
    }
    if booking is None:
        return [CompareRow(labels[k], "", v, False) for k, v in dicom_cells.items()]
    patient = booking.patient
    identity = matching.DicomIdentity(
        patient_name=dicom["PatientName"], patient_id=dicom["PatientID"], birth_date=birth, sex=dicom["PatientSex"]
    )
    differ = {d["field"] for d in matching.identity_differences(patient=patient, dicom=identity)}
    scheduled = timezone.localtime(booking.scheduled_at)
    booking_cells = {
        "name": patient_dicom_name(patient),
        "id": patient.codice_fiscale or _("(provvisorio)"),
        "birth": _day(patient.birth_date),
        "sex": patient.sex,
        "acc": booking.accession_number,
        "date": scheduled.strftime("%d/%m/%Y %H:%M"),
        "description": f"{booking.procedure.code} – {booking.procedure.description}",
        "modality": f"{booking.procedure.modality} ({booking.station.ae_title})",
    }
    flags = {
        "name": "patient_name" in differ,
        # Shown as different whenever it is not the codice fiscale: a local ID is
        # legitimate but is not the booking's identifier, and staff should see that.
        "id": normalize_codice_fiscale(dicom["PatientID"]) != (patient.codice_fiscale or ""),
        "birth": "birth_date" in differ,
        "sex": "sex" in differ,
        "acc": dicom["AccessionNumber"].strip() != booking.accession_number,
        "date": study_day is not None and study_day != scheduled.date(),
        "description": False,  # free text on both sides: shown, not compared
        "modality": bool(dicom["Modality"]) and booking.procedure.modality not in dicom["Modality"].split("\\"),
    }
    return [
        CompareRow(labels[k], booking_cells[k], dicom_cells[k], flags[k], compared=k != "description") for k in labels
    ]


def _item(request: HttpRequest, pk: int) -> Reconciliation:
    """The queue's item ``pk`` if the user may see its study; else 404, as for no item (audited)."""
    item = get_object_or_404(
        Reconciliation.objects.select_related(
            "study__patient",
            "study__facility",
            "booking__patient",
            "booking__procedure",
            "booking__station",
            "booking__facility",
            "resolved_by",
        ),
        pk=pk,
    )
    verdict = access.study_verdict(access.principal_for_request(request), item.study)
    if verdict is not access.Verdict.VISIBLE:
        audit_record(
            action="booking.reconciliation.denied",
            outcome=AuditEvent.Outcome.DENIED,
            user=request.user,  # type: ignore[arg-type]
            study=item.study,
            source=_source(request),
            detail={"reconciliation": item.pk, "reason": verdict.value},
        )
        raise access.StudyNotVisible(verdict)
    return item


def _render_item(
    request: HttpRequest,
    item: Reconciliation,
    *,
    forms_by_name: dict[str, forms.Form] | None = None,
    status: int = 200,
) -> HttpResponse:
    study = item.study
    header, instance, header_error = _study_header(study)
    rows = compare_rows(item.booking, _header_values(header, study))
    audit_record(
        action="booking.reconciliation.view",
        outcome=AuditEvent.Outcome.SUCCESS if header is not None else AuditEvent.Outcome.WARNING,
        user=request.user,  # type: ignore[arg-type]
        study=study,
        source=_source(request),
        detail={
            "reconciliation": item.pk,
            "state": item.state,
            "booking": item.booking.accession_number if item.booking else None,
            "instance": instance.sop_instance_uid if instance else None,
            "header_error": header_error,
        },
    )
    given = forms_by_name or {}
    proposed = item.booking
    context = {
        "item": item,
        "study": study,
        "booking": proposed,
        "rows": rows,
        "differences": sum(1 for r in rows if r.differs),
        "header": header,
        "header_error": header_error,
        "instance": instance,
        "pending": item.state == Reconciliation.State.PENDING,
        "can_link_proposed": bool(
            proposed is not None
            and proposed.is_active()
            and proposed.study_id is None
            and proposed.status in (Booking.Status.BOOKED, Booking.Status.ARRIVED, Booking.Status.PERFORMED)
        ),
        "proposed_form": given.get("proposed")
        or _form("proposed", initial={"booking": proposed.pk if proposed else None}),
        "link_form": given.get("link") or _form("link"),
        "reassign_form": given.get("reassign") or _form("reassign"),
        "reject_form": given.get("reject") or _form("reject"),
    }
    return render(request, "booking/reconciliation/detail.html", context, status=status)


@require_GET
@staff_only
def reconciliation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _render_item(request, _item(request, pk))


def _done(request: HttpRequest, message: str) -> HttpResponse:
    messages.success(request, message)
    return HttpResponseRedirect(reverse("booking:reconciliation_list"))


def _refused(request: HttpRequest, item: Reconciliation, name: str, form: forms.Form, error: str = "") -> HttpResponse:
    """The item page again, with the form that failed and why (the action changed nothing)."""
    if error:
        form.add_error(None, error)
        messages.error(request, _("Azione non eseguita: %(error)s") % {"error": error})
    else:
        messages.error(request, _("Azione non eseguita: correggere i campi segnalati."))
    return _render_item(request, item, forms_by_name={name: form}, status=400)


@require_POST
@staff_only
def reconciliation_link_view(request: HttpRequest, pk: int) -> HttpResponse:
    item = _item(request, pk)
    # The two link forms post here: the other-booking one always sends its (maybe empty) field.
    name = "link" if "accession_number" in request.POST else "proposed"
    form = _form(name, request.POST)
    if not form.is_valid():
        return _refused(request, item, name, form)
    accession = form.cleaned_data["accession_number"].strip().upper()
    if accession:
        booking = (
            Booking.objects.select_related("patient", "procedure", "station", "facility")
            .filter(accession_number=accession)
            .first()
        )
        if booking is None:
            return _refused(
                request, item, name, form, _("Nessuna prenotazione con accession number %(acc)s.") % {"acc": accession}
            )
    elif item.booking is not None and form.cleaned_data["booking"] == item.booking_id:
        booking = item.booking
    else:
        return _refused(request, item, name, form, _("La prenotazione proposta è cambiata: ricaricare la pagina."))
    try:
        matching.reconciliation_link(
            reconciliation=item,
            booking=booking,
            user=request.user,  # type: ignore[arg-type]
            source=_source(request),
            note=form.cleaned_data["note"],
        )
    except BookingError as exc:
        return _refused(request, item, name, form, exc.message)
    return _done(
        request,
        _("Studio collegato alla prenotazione %(acc)s di %(patient)s.")
        % {"acc": booking.accession_number, "patient": patient_dicom_name(booking.patient).replace("^", " ")},
    )


@require_POST
@staff_only
def reconciliation_reassign_view(request: HttpRequest, pk: int) -> HttpResponse:
    item = _item(request, pk)
    form = _form("reassign", request.POST)
    if not form.is_valid():
        return _refused(request, item, "reassign", form)
    code = form.cleaned_data["codice_fiscale"]
    patient = Patient.objects.filter(codice_fiscale=code, provisional=False).first()
    if patient is None:
        return _refused(
            request, item, "reassign", form, _("Nessun paziente registrato con codice fiscale %(cf)s.") % {"cf": code}
        )
    try:
        matching.reconciliation_reassign(
            reconciliation=item,
            patient=patient,
            user=request.user,  # type: ignore[arg-type]
            source=_source(request),
            note=form.cleaned_data["note"],
        )
    except BookingError as exc:
        return _refused(request, item, "reassign", form, exc.message)
    return _done(
        request,
        _("Studio riassegnato a %(patient)s (%(cf)s).")
        % {"patient": patient_dicom_name(patient).replace("^", " "), "cf": code},
    )


@require_POST
@staff_only
def reconciliation_reject_view(request: HttpRequest, pk: int) -> HttpResponse:
    item = _item(request, pk)
    form = _form("reject", request.POST)
    if not form.is_valid():
        return _refused(request, item, "reject", form)
    try:
        matching.reconciliation_reject(
            reconciliation=item,
            user=request.user,  # type: ignore[arg-type]
            source=_source(request),
            note=form.cleaned_data["note"],
        )
    except BookingError as exc:
        return _refused(request, item, "reject", form, exc.message)
    return _done(request, _("Studio respinto: resta fuori dalla coda."))
