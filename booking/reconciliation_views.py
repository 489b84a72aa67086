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

import logging
from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_POST

from archive import access
from archive.models import Patient
from archive.patients import patient_dicom_name
from kernel.audit import audit_record
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale
from kernel.models import AuditEvent
from kernel.web import AuthenticatedHttpRequest, client_ip, perms_required

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
def reconciliation_list(request: AuthenticatedHttpRequest) -> HttpResponse:
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
            user=request.user,
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
    comparison = matching.reconciliation_compare(reconciliation=item)
    header, instance, header_error = comparison.header, comparison.instance, comparison.header_error
    audit_record(
        action="booking.reconciliation.view",
        outcome=AuditEvent.Outcome.SUCCESS if header is not None else AuditEvent.Outcome.WARNING,
        user=request.user,
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
        "rows": comparison.rows,
        "differences": comparison.differences,
        "header": header,
        "header_error": header_error,
        "instance": instance,
        "pending": item.state == Reconciliation.State.PENDING,
        "can_link_proposed": matching.booking_linkable(proposed),
        "proposed_form": given.get("proposed")
        or _form("proposed", initial={"booking": proposed.pk if proposed else None}),
        "link_form": given.get("link") or _form("link"),
        "reassign_form": given.get("reassign") or _form("reassign"),
        "reject_form": given.get("reject") or _form("reject"),
    }
    return render(request, "booking/reconciliation/detail.html", context, status=status)


@require_GET
@staff_only
def reconciliation_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _render_item(request, _item(request, pk))


def _done(request: AuthenticatedHttpRequest, message: str) -> HttpResponse:
    messages.success(request, message)
    return HttpResponseRedirect(reverse("booking:reconciliation_list"))


def _refused(
    request: AuthenticatedHttpRequest, item: Reconciliation, name: str, form: forms.Form, error: str = ""
) -> HttpResponse:
    """The item page again, with the form that failed and why (the action changed nothing)."""
    if error:
        form.add_error(None, error)
        messages.error(request, _("Azione non eseguita: %(error)s") % {"error": error})
    else:
        messages.error(request, _("Azione non eseguita: correggere i campi segnalati."))
    return _render_item(request, item, forms_by_name={name: form}, status=400)


@require_POST
@staff_only
def reconciliation_link_view(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
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
            user=request.user,
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
def reconciliation_reassign_view(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
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
            user=request.user,
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
def reconciliation_reject_view(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    item = _item(request, pk)
    form = _form("reject", request.POST)
    if not form.is_valid():
        return _refused(request, item, "reject", form)
    try:
        matching.reconciliation_reject(
            reconciliation=item,
            user=request.user,
            source=_source(request),
            note=form.cleaned_data["note"],
        )
    except BookingError as exc:
        return _refused(request, item, "reject", form, exc.message)
    return _done(request, _("Studio respinto: resta fuori dalla coda."))
