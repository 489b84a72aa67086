"""CUP operator pages: find or register a patient, book an exam on a free slot
with the distribution choice and its consent, change the choice, cancel, print
the receipt.

The views only translate: form input into service calls, ``BookingError`` into
a message on the form field at fault, and every page that shows a patient's
data into an ``AuditEvent``.

These pages show the CUP's own records (the patient registry, bookings,
distribution choices, their history), never a study's: no description,
header, report or image of the archive, so nothing of a study the patient
concealed or of another health authority. What the archive holds is the
access policy's (:mod:`archive.access`), as on the reconciliation queue.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.db.models import QuerySet
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from archive.models import Facility, HealthAuthority, Patient
from kernel.audit import audit_record
from kernel.codice_fiscale import codice_fiscale_facts, normalize_codice_fiscale
from kernel.web import AuthenticatedHttpRequest, client_ip, content_disposition, perms_required

from . import services
from .forms import (
    BookingForm,
    CancelForm,
    ChoiceForm,
    DayForm,
    FirstAvailableForm,
    PatientCreateForm,
    PatientSearchForm,
    SlotSearchForm,
)
from .models import Booking, ConsentText, DistributionChoice, Procedure, Station
from .receipt import booking_receipt_pdf, cup_phone_line, facility_contact, where_to_go
from .steps import latest_steps_for, procedure_steps_for

logger = logging.getLogger(__name__)

VIEW_PERMS = ("booking.view_booking", "archive.view_patient")


def _perms(*extra: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    return perms_required(*VIEW_PERMS, *extra)


_source = client_ip


# The services name their inputs; where a page collects one under another name,
# this says which form field the message belongs to.
_FIELD_ALIASES = {"scheduled_at": "slot", "station": "slot"}


def _add_service_error(form: forms.Form, err: services.BookingError) -> None:
    field = _FIELD_ALIASES.get(err.field or "", err.field)
    form.add_error(field if field in form.fields else None, err.message)


def _consent_shown(version: str) -> ConsentText | None:
    """The information text the page showed the patient, else the one in force."""
    return ConsentText.objects.filter(version=version).first() if version else services.consent_text_current()


def _audit_patient_view(request: AuthenticatedHttpRequest, patient: Patient, action: str, **detail: Any) -> None:
    audit_record(action=action, user=request.user, patient=patient, source=_source(request), detail=detail or None)


# --- home and patients ------------------------------------------------------------


@_perms()
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    day_form = DayForm(request.GET or None, initial={"day": timezone.localdate()})
    facility: Facility | None = None
    day = timezone.localdate()
    if day_form.is_bound and day_form.is_valid():
        facility = day_form.cleaned_data["facility"]
        day = day_form.cleaned_data["day"] or day
    bookings = services.bookings_for_day(facility=facility, day=day) if facility is not None else []
    latest = latest_steps_for(bookings)
    for b in bookings:
        b.procedure_step = latest.get(b.pk)  # type: ignore[attr-defined]  # for the template
    for patient in {b.patient_id: b.patient for b in bookings}.values():
        _audit_patient_view(
            request, patient, "cup.booking.list", facility=facility.code if facility else "", day=day.isoformat()
        )
    return render(
        request,
        "booking/home.html",
        {
            "search_form": PatientSearchForm(),
            "day_form": day_form,
            "facility": facility,
            "day": day,
            "bookings": bookings,
        },
    )


@_perms()
def patient_search(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = PatientSearchForm(request.GET or None)
    patients: list[Patient] = []
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        found: QuerySet[Patient] = Patient.objects.filter(provisional=False)
        if data["codice_fiscale"]:
            found = found.filter(codice_fiscale=data["codice_fiscale"])
        else:
            found = found.filter(family_name__istartswith=data["family_name"].strip(), birth_date=data["birth_date"])
        patients = list(found.order_by("family_name", "given_name")[:50])
        for patient in patients:
            _audit_patient_view(request, patient, "cup.patient.search")
    create_query = urlencode(
        {k: str(v) for k, v in request.GET.items() if k in ("codice_fiscale", "family_name", "birth_date") and v}
    )
    return render(
        request,
        "booking/patient_search.html",
        {"form": form, "patients": patients, "create_url": f"{reverse('booking:patient_create')}?{create_query}"},
    )


@_perms("archive.add_patient")
@require_http_methods(["GET", "POST"])
def patient_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = PatientCreateForm(request.POST)
        if form.is_valid():
            try:
                data = form.cleaned_data
                patient = services.patient_create(
                    codice_fiscale=data["codice_fiscale"],
                    family_name=data["family_name"],
                    given_name=data["given_name"],
                    birth_date=data["birth_date"],
                    sex=data["sex"],
                    user=request.user,
                    source=_source(request),
                )
            except services.BookingError as err:
                _add_service_error(form, err)
            else:
                messages.success(request, _("Paziente %(name)s registrato.") % {"name": patient})
                return redirect("booking:patient_detail", pk=patient.pk)
    else:
        initial = {k: request.GET.get(k, "") for k in ("codice_fiscale", "family_name", "birth_date")}
        form = PatientCreateForm(initial={k: v for k, v in initial.items() if v})
    return render(request, "booking/patient_create.html", {"form": form})


@_perms("archive.add_patient")
@require_POST
def codice_fiscale_decode(request: AuthenticatedHttpRequest) -> JsonResponse:
    """Birth date, sex and place of birth a codice fiscale carries, for the
    patient form's script to fill in; the form checks them again on submit.

    Reads no record: the answer is the code's own arithmetic, so nothing is
    audited. POST, so that the code stays out of URLs and access logs.
    """
    code = normalize_codice_fiscale(request.POST.get("codice_fiscale", ""))
    try:
        facts = codice_fiscale_facts(code)
    except ValueError as exc:
        return JsonResponse({"valid": False, "error": str(exc)}, status=400)
    return JsonResponse(
        {
            "valid": True,
            "codice_fiscale": facts.code,
            "birth_date": facts.birth_date.isoformat(),
            "sex": facts.sex,
            "birth_place": facts.place_label,
            "summary": _("Dal codice fiscale: %(sex)s, nato/a il %(date)s a %(place)s.")
            % {
                "sex": _("femmina") if facts.sex == "F" else _("maschio"),
                "date": facts.birth_date.strftime("%d/%m/%Y"),
                "place": facts.place_label,
            },
        }
    )


def _birth_place(patient: Patient) -> str:
    """The place of birth the patient's codice fiscale carries (it is not stored apart)."""
    if not patient.codice_fiscale:
        return ""
    try:
        return codice_fiscale_facts(patient.codice_fiscale).place_label
    except ValueError:
        return ""


@_perms()
def patient_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    patient = get_object_or_404(Patient, pk=pk)
    bookings = (
        patient.bookings.select_related("facility", "procedure", "station")
        .prefetch_related("choices")
        .order_by("-scheduled_at")
    )
    rows = [(b, max(b.choices.all(), key=lambda c: c.version, default=None)) for b in bookings]
    _audit_patient_view(request, patient, "cup.patient.view")
    return render(
        request,
        "booking/patient_detail.html",
        {"patient": patient, "rows": rows, "birth_place": _birth_place(patient)},
    )


# --- booking -----------------------------------------------------------------------


def _stations_with_slots(*, procedure: Procedure, facility: Facility, day: dt.date) -> list[tuple[Station, list[Any]]]:
    stations = Station.objects.filter(facility=facility, modality=procedure.modality, active=True).order_by("name")
    return [(s, services.station_free_slots(station=s, day=day)) for s in stations]


@_perms("booking.add_booking")
@require_http_methods(["GET", "POST"])
def booking_new(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Step 1 (GET with the search, "Cerca disponibilità") then step 2 (POST, "Prenota")."""
    patient = get_object_or_404(Patient, pk=pk)
    params = request.POST if request.method == "POST" else request.GET
    search = SlotSearchForm(params if "procedure" in params else None, autofocus=request.method == "GET")
    context: dict[str, Any] = {"patient": patient, "search": search, "consent": services.consent_text_current()}
    # "Cambia" on step 2 comes back here with the choices made, to edit them.
    if not (search.is_bound and search.is_valid()) or "modifica" in request.GET:
        _audit_patient_view(request, patient, "cup.patient.view", page="booking_new")
        return render(request, "booking/booking_new.html", context)

    procedure: Procedure = search.cleaned_data["procedure"]
    facility: Facility = search.cleaned_data["facility"]
    day: dt.date = search.cleaned_data["day"]
    station_slots = _stations_with_slots(procedure=procedure, facility=facility, day=day)
    stations = [s for s, _slots in station_slots]
    if request.method == "POST":
        form = BookingForm(request.POST, stations=stations)
        if form.is_valid():
            station, scheduled_at = form.cleaned_data["slot"]
            data = form.cleaned_data
            try:
                booking = services.booking_create(
                    patient=patient,
                    procedure=procedure,
                    station=station,
                    scheduled_at=scheduled_at,
                    delivery=data["delivery"],
                    consent_given=data["consent_given"],
                    consent_text=_consent_shown(data["consent_version"])
                    if data["delivery"] == DistributionChoice.Delivery.ONLINE
                    else None,
                    channel=data["channel"],
                    nre=data["nre"],
                    contact_phone=data["contact_phone"],
                    contact_email=data["contact_email"],
                    clinical_question=data["clinical_question"],
                    priority=data["priority"],
                    referring_physician=data["referring_physician"],
                    user=request.user,
                    source=_source(request),
                )
            except services.BookingError as err:
                _add_service_error(form, err)
                if isinstance(err, services.SlotTaken):
                    # Someone else got there first: offer what is free now.
                    station_slots = _stations_with_slots(procedure=procedure, facility=facility, day=day)
            else:
                messages.success(
                    request,
                    _("Prenotazione registrata: numero di prenotazione %(acc)s.") % {"acc": booking.accession_number},
                )
                return redirect("booking:booking_detail", accession=booking.accession_number)
    else:
        form = BookingForm(stations=stations, initial={"delivery": ""})
    _audit_patient_view(request, patient, "cup.patient.view", page="booking_new")
    # A time picked in the first-available list arrives chosen.
    selected = form.data.get("slot", "") if form.is_bound else request.GET.get("slot", "")
    offered = {_slot_value(s, t) for s, slots in station_slots for t in slots}
    step1: dict[str, int | str] = {
        "procedure": procedure.pk,
        "facility": facility.pk,
        "day": day.isoformat(),
        "modifica": 1,
    }
    context.update(
        {
            "procedure": procedure,
            "facility": facility,
            "day": day,
            "station_slots": [
                (s, [(_slot_value(s, t), timezone.localtime(t)) for t in slots]) for s, slots in station_slots
            ],
            "selected_slot": selected if selected in offered else "",
            "selected_gone": bool(selected) and selected not in offered and not form.is_bound,
            "form": form,
            "step1_url": request.path + "?" + urlencode(step1),
        }
    )
    return render(request, "booking/booking_slots.html", context)


# How many times of a day the first-available list offers; the day's page has them all.
FIRST_AVAILABLE_TIMES_SHOWN = 8


def _slot_value(station: Station, when: dt.datetime) -> str:
    """A slot as the booking form's radio buttons carry it."""
    return f"{station.pk}|{timezone.localtime(when).isoformat()}"


@_perms("booking.add_booking")
@require_http_methods(["GET"])
def booking_first(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The first free slots for a procedure across facilities ("prima
    disponibilità"), nearest first; a time leads to step 2 of the booking
    with that slot chosen."""
    patient = get_object_or_404(Patient, pk=pk)
    form = FirstAvailableForm(request.GET if "procedure" in request.GET else None)
    results: list[dict[str, Any]] | None = None
    detail: dict[str, Any] = {"page": "booking_first"}
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        procedure: Procedure = data["procedure"]
        authority: HealthAuthority | None = data["authority"]
        facilities = Facility.objects.filter(authority=authority) if authority else Facility.objects.all()
        detail.update(procedure=procedure.code, authority=authority.code if authority else "")
        try:
            found = services.first_available(
                procedure=procedure, facilities=facilities, start=data["start"], days=data["days"]
            )
        except services.BookingError as err:
            _add_service_error(form, err)
        else:
            booking_url = reverse("booking:booking_new", args=[patient.pk])
            # The nearest time has the focus, not the form: Enter books it.
            form.fields["procedure"].widget.attrs.pop("autofocus", None)
            results = []
            for free in found:
                step2: dict[str, str | int] = {
                    "procedure": procedure.pk,
                    "facility": free.facility.pk,
                    "day": free.day.isoformat(),
                }
                results.append(
                    {
                        "free": free,
                        "times": [
                            (when, f"{booking_url}?{urlencode({**step2, 'slot': _slot_value(free.station, when)})}")
                            for when in free.slots[:FIRST_AVAILABLE_TIMES_SHOWN]
                        ],
                        "more": max(0, len(free.slots) - FIRST_AVAILABLE_TIMES_SHOWN),
                        "day_url": f"{booking_url}?{urlencode(step2)}",
                    }
                )
    _audit_patient_view(request, patient, "cup.patient.view", **detail)
    return render(request, "booking/booking_first.html", {"patient": patient, "form": form, "results": results})


def _booking(accession: str) -> Booking:
    return get_object_or_404(
        Booking.objects.select_related("patient", "facility", "procedure", "station", "operator"),
        accession_number=accession,
    )


def _render_booking(
    request: AuthenticatedHttpRequest, booking: Booking, *, choice_form: ChoiceForm | None = None, status: int = 200
) -> HttpResponse:
    current = booking.current_choice()
    contact = facility_contact(booking)
    if choice_form is None:
        choice_form = ChoiceForm(
            initial={"delivery": current.delivery if current else "", "channel": Booking.Channel.AUTHORITY_CUP}
        )
    _audit_patient_view(request, booking.patient, "cup.booking.view", accession_number=booking.accession_number)
    return render(
        request,
        "booking/booking_detail.html",
        {
            "booking": booking,
            "patient": booking.patient,
            "current": current,
            "choices": booking.choices.select_related("consent_text", "recorded_by").order_by("-version"),
            "history": booking.status_changes.select_related("user").order_by("at", "id"),
            "procedure_steps": list(procedure_steps_for(booking)),
            "choice_form": choice_form,
            "consent": services.consent_text_current(),
            "locked": booking.is_choice_locked(),
            "can_cancel": booking.status in (Booking.Status.BOOKED, Booking.Status.ARRIVED),
            "where_to_go": where_to_go(booking, contact),
            "cup_phone_line": cup_phone_line(contact),
        },
        status=status,
    )


@_perms()
def booking_detail(request: AuthenticatedHttpRequest, accession: str) -> HttpResponse:
    return _render_booking(request, _booking(accession))


@_perms("booking.change_booking")
@require_POST
def booking_choice(request: AuthenticatedHttpRequest, accession: str) -> HttpResponse:
    booking = _booking(accession)
    form = ChoiceForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        consent = (
            _consent_shown(data["consent_version"]) if data["delivery"] == DistributionChoice.Delivery.ONLINE else None
        )
        try:
            choice = services.distribution_choose(
                booking=booking,
                delivery=data["delivery"],
                consent_given=data["consent_given"],
                consent_text=consent,
                channel=data["channel"],
                note=data["note"],
                user=request.user,
                source=_source(request),
            )
        except services.BookingError as err:
            _add_service_error(form, err)
        else:
            messages.success(
                request,
                _("Scelta di consegna registrata (versione %(v)d): %(d)s.")
                % {"v": choice.version, "d": choice.get_delivery_display()},
            )
            return redirect("booking:booking_detail", accession=booking.accession_number)
    return _render_booking(request, booking, choice_form=form, status=400)


@_perms("booking.change_booking")
@require_http_methods(["GET", "POST"])
def booking_cancel(request: AuthenticatedHttpRequest, accession: str) -> HttpResponse:
    booking = _booking(accession)
    form = CancelForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.booking_cancel(
                booking=booking, user=request.user, reason=form.cleaned_data["reason"], source=_source(request)
            )
        except services.BookingError as err:
            _add_service_error(form, err)
        else:
            messages.success(request, _("Prenotazione %(acc)s annullata.") % {"acc": booking.accession_number})
            return redirect("booking:booking_detail", accession=booking.accession_number)
    _audit_patient_view(request, booking.patient, "cup.booking.view", accession_number=booking.accession_number)
    return render(
        request, "booking/booking_cancel.html", {"booking": booking, "patient": booking.patient, "form": form}
    )


@_perms("booking.change_booking")
@require_POST
def booking_arrive(request: AuthenticatedHttpRequest, accession: str) -> HttpResponse:
    """The patient has arrived at the facility's desk (accettazione)."""
    booking = _booking(accession)
    try:
        services.booking_status_set(
            booking=booking, status=Booking.Status.ARRIVED, user=request.user, source=_source(request)
        )
    except services.BookingError as err:
        messages.error(request, err.message)
    else:
        messages.success(request, _("Arrivo del paziente registrato per %(acc)s.") % {"acc": booking.accession_number})
    return redirect("booking:booking_detail", accession=booking.accession_number)


@_perms()
def booking_receipt(request: AuthenticatedHttpRequest, accession: str) -> HttpResponse:
    booking = _booking(accession)
    pdf = booking_receipt_pdf(booking)
    audit_record(
        action="cup.booking.receipt",
        user=request.user,
        patient=booking.patient,
        source=_source(request),
        detail={"accession_number": booking.accession_number},
    )
    response = HttpResponse(pdf, content_type="application/pdf")
    response["Content-Disposition"] = content_disposition(f"ricevuta-{booking.accession_number}.pdf")
    return response
