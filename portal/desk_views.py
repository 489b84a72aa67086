"""The portal's staff desk (``/fse/sportello/``): the emergency access to a
patient's concealed studies, and the delegations desk where CUP operators
register and revoke a *delega* on the documents the citizen shows.

The views only translate: form input into :mod:`portal.delegations` and
:mod:`portal.emergency` calls, their ``PortalError`` into a message beside the
field, and what each page shows or does into an ``AuditEvent``.

The emergency access is asked for a patient, found by codice fiscale (or
named by the radiologist's study page), never for a study: to a professional
a concealed study does not exist, so nothing on the page says whether the
patient has hidden anything. The page and its answers are the same either way.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from archive import access
from archive.models import Patient
from booking.forms import CupForm
from kernel.audit import audit_record
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale
from kernel.models import AuditEvent
from kernel.web import AuthenticatedHttpRequest, client_ip, perms_required

from .delegations import delegation_register, delegation_revoke, delegations_in_force
from .emergency import (
    EMERGENCY_PERMISSION,
    emergency_access_grant,
    emergency_access_minutes,
    emergency_access_until,
    emergency_reason_clean,
)
from .errors import PortalError
from .models import EMERGENCY_REASON_MIN_LENGTH, Delegation
from .policy import emergency_access_live

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

logger = logging.getLogger(__name__)

PAGE_SIZE = 50


# --- Emergency access (break-glass) -----------------------------------------------------


def _cf_field(label: StrOrPromise) -> forms.CharField:
    return forms.CharField(
        label=label,
        max_length=32,
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "characters", "size": 20}
        ),
    )


class EmergencyAccessForm(forms.Form):
    codice_fiscale = _cf_field(gettext_lazy("Codice fiscale del paziente"))
    reason = forms.CharField(
        label=gettext_lazy("Motivo dell'accesso in emergenza"),
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        max_length=2000,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].help_text = _(
            "Perché devi consultare ora tutti gli esami del paziente (almeno %(n)d caratteri). "
            "Il motivo viene registrato e il paziente lo legge nel suo Fascicolo."
        ) % {"n": EMERGENCY_REASON_MIN_LENGTH}

    def clean_codice_fiscale(self) -> Patient:
        code = normalize_codice_fiscale(self.cleaned_data["codice_fiscale"])
        error = codice_fiscale_error(code)
        if error:
            raise forms.ValidationError(error, code="invalid_codice_fiscale")
        patient = Patient.objects.filter(codice_fiscale=code, provisional=False).first()
        if patient is None:
            raise forms.ValidationError(
                _("Nessun paziente con codice fiscale %(code)s nell'anagrafe.") % {"code": code},
                code="unknown_patient",
            )
        return patient

    def clean_reason(self) -> str:
        try:
            return emergency_reason_clean(self.cleaned_data["reason"])
        except PortalError as err:
            raise forms.ValidationError(err.message, code=err.code) from None


def _hhmm(moment: dt.datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M")


def _named_patient(request: AuthenticatedHttpRequest) -> Patient | None:
    """The patient of ``?paziente=<pk>`` (the study page's link), if the user may see that patient now.

    Any other number is ignored, so that the page tells nothing about it.
    """
    try:
        pk = int(request.GET.get("paziente", ""))
    except ValueError:
        return None
    principal = access.principal_for_request(request)
    return access.patients_visible(principal).filter(pk=pk, codice_fiscale__isnull=False).first()


def _after_grant(request: AuthenticatedHttpRequest, patient: Patient) -> str:
    """Where to go once the access is recorded: the patient's studies, all of them now; else back."""
    if request.user.has_perms(("archive.view_report", "archive.view_study")):
        return reverse("reporting:patient", args=[patient.pk])
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        return back
    return reverse("portal:staff_emergency_access")


@perms_required(EMERGENCY_PERMISSION, access.VIEW_STUDY_PERM)
@require_http_methods(["GET", "POST"])
def emergency(request: AuthenticatedHttpRequest) -> HttpResponse:
    source = client_ip(request)
    status = 200
    if request.method == "POST":
        form = EmergencyAccessForm(request.POST)
        if form.is_valid():
            patient = form.cleaned_data["codice_fiscale"]
            try:
                row = emergency_access_grant(
                    user=request.user, patient=patient, reason=form.cleaned_data["reason"], source=source
                )
            except PortalError as err:
                form.add_error(err.field if err.field in form.fields else None, err.message)
            else:
                # The request's principal was computed without this access.
                access.principal_forget(request)
                messages.warning(
                    request,
                    _(
                        "Accesso in emergenza registrato per %(patient)s: fino alle %(t)s vedi tutti i suoi esami. "
                        "Il paziente vedrà il tuo nome e il motivo."
                    )
                    % {"patient": _person(patient), "t": _hhmm(emergency_access_until(row))},
                )
                return redirect(_after_grant(request, patient))
        status = 400
        # Recorded against the patient when the code named one: the citizen reads the attempt too.
        asked_for = form.cleaned_data.get("codice_fiscale")
        audit_record(
            action="portal.emergency_access",
            outcome=AuditEvent.Outcome.DENIED,
            user=request.user,
            patient=asked_for if isinstance(asked_for, Patient) else None,
            source=source,
            detail={
                "errors": sorted(form.errors),
                "length": len(" ".join(request.POST.get("reason", "").split())),
            },
        )
        # The page does not name the patient of a code typed in: it is no look-up by codice fiscale.
        named = None
        back = request.POST.get("next", "")
    else:
        named = _named_patient(request)
        back = request.GET.get("next", "")
        form = EmergencyAccessForm(initial={"codice_fiscale": named.codice_fiscale} if named is not None else None)
    if back and not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = ""
    live = emergency_access_live(user=request.user, patient=named) if named is not None else None
    return render(
        request,
        "portal/staff/emergency_access.html",
        {
            "form": form,
            "patient": named,
            "next": back,
            "live_until": emergency_access_until(live) if live is not None else None,
            "minutes": emergency_access_minutes(),
        },
        status=status,
    )


# --- The delegations desk ----------------------------------------------------------------


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        # The native date picker reads and writes ISO dates whatever the locale.
        super().__init__(attrs=attrs, format="%Y-%m-%d")


class DelegationForm(CupForm):
    delegator_cf = _cf_field(gettext_lazy("Codice fiscale del delegante (l'interessato)"))
    delegate_cf = _cf_field(gettext_lazy("Codice fiscale del delegato"))
    kind = forms.ChoiceField(
        label=gettext_lazy("Tipo di delega"),
        choices=[("", "—"), *Delegation.Kind.choices],
        help_text=gettext_lazy(
            "Ogni delega permette di vedere e scaricare gli esami. Genitore (solo per un figlio minorenne: "
            "termina ai 18 anni) e tutore gestiscono anche l'oscuramento e il consenso alla consegna online; "
            "l'amministratore di sostegno l'oscuramento soltanto. Nessun delegato rende visibile un esame "
            "che l'interessato ha oscurato da sé."
        ),
    )
    evidence = forms.CharField(
        label=gettext_lazy("Documentazione presentata"),
        help_text=gettext_lazy(
            "Il documento verificato: atto di nomina, certificato, delega firmata, con gli estremi."
        ),
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
    )
    valid_until = forms.DateField(
        label=gettext_lazy("Valida fino al (facoltativo)"),
        help_text=gettext_lazy("Compreso. Vuoto: fino a revoca."),
        required=False,
        widget=DateInput(),
    )

    def _patient(self, field: str) -> Patient | None:
        code = normalize_codice_fiscale(self.cleaned_data.get(field, ""))
        error = codice_fiscale_error(code)
        if error:
            raise forms.ValidationError(error, code="invalid_codice_fiscale")
        patient = Patient.objects.filter(codice_fiscale=code).first()
        if patient is None:
            raise forms.ValidationError(
                _("Nessun paziente con codice fiscale %(code)s nell'anagrafe: registrarlo prima al CUP.")
                % {"code": code},
                code="unknown_patient",
            )
        return patient

    def clean_delegator_cf(self) -> Patient | None:
        return self._patient("delegator_cf")

    def clean_delegate_cf(self) -> Patient | None:
        return self._patient("delegate_cf")

    def clean_valid_until(self) -> dt.date | None:
        day = self.cleaned_data.get("valid_until")
        if day is not None and day < timezone.localdate():
            raise forms.ValidationError(_("La data è già passata."), code="past")
        return day

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        delegator, delegate = data.get("delegator_cf"), data.get("delegate_cf")
        if delegator is not None and delegate is not None and delegator.pk == delegate.pk:
            self.add_error("delegate_cf", _("Un cittadino non può delegare sé stesso."))
        return data

    def valid_until_moment(self) -> dt.datetime | None:
        """The end of the chosen day (local time): the delegation holds for the whole day."""
        day = self.cleaned_data.get("valid_until")
        if day is None:
            return None
        return timezone.make_aware(dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min))


class DelegationSearchForm(CupForm):
    q = forms.CharField(
        label=gettext_lazy("Cerca per codice fiscale (delegante o delegato)"),
        required=False,
        max_length=32,
        widget=forms.TextInput(attrs={"type": "search", "autocomplete": "off", "spellcheck": "false"}),
    )


def _desk(request: AuthenticatedHttpRequest, form: DelegationForm, *, status: int = 200) -> HttpResponse:
    search = DelegationSearchForm(request.GET or None)
    query = ""
    if search.is_valid():
        query = normalize_codice_fiscale(search.cleaned_data["q"])
    delegations = (
        Delegation.objects.filter(delegations_in_force(timezone.now()))
        .select_related("delegator", "delegate", "registered_by")
        .order_by("delegator__family_name", "delegator__given_name", "delegator_id", "-valid_from")
    )
    if query:
        delegations = delegations.filter(
            Q(delegator__codice_fiscale__icontains=query) | Q(delegate__codice_fiscale__icontains=query)
        )
    page = Paginator(delegations, PAGE_SIZE).get_page(request.GET.get("pagina"))
    audit_record(
        action="portal.delegation.list",
        user=request.user,
        source=client_ip(request),
        detail={"query": query, "page": page.number, "delegations": [d.pk for d in page.object_list]},
    )
    return render(
        request,
        "portal/staff/delegations.html",
        {
            "form": form,
            "search": search,
            "page": page,
            "query": query,
            "page_query": urlencode({"q": query}) if query else "",
            "total": page.paginator.count,
        },
        status=status,
    )


@perms_required("portal.add_delegation")
@require_http_methods(["GET", "POST"])
def delegations(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _desk(request, DelegationForm())
    form = DelegationForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            delegation = delegation_register(
                delegator=data["delegator_cf"],
                delegate=data["delegate_cf"],
                kind=data["kind"],
                evidence=data["evidence"],
                user=request.user,
                valid_until=form.valid_until_moment(),
                source=client_ip(request),
            )
        except PortalError as err:
            form.add_error(err.field if err.field in form.fields else None, err.message)
        else:
            messages.success(
                request,
                _("Delega registrata: %(delegate)s può agire per %(delegator)s.")
                % {"delegate": _person(delegation.delegate), "delegator": _person(delegation.delegator)},
            )
            return redirect("portal:staff_delegations")
    audit_record(
        action="portal.delegation.register",
        outcome=AuditEvent.Outcome.FAILURE,
        user=request.user,
        source=client_ip(request),
        detail={"errors": sorted(form.errors)},
    )
    return _desk(request, form, status=400)


def _person(patient: Patient) -> str:
    name = f"{patient.family_name} {patient.given_name}".strip()
    return f"{name} ({patient.codice_fiscale})" if name else patient.codice_fiscale or ""


@perms_required("portal.change_delegation")
@require_POST
def delegation_revoke_view(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    delegation = get_object_or_404(Delegation.objects.select_related("delegator", "delegate"), pk=pk)
    if delegation.revoked_at is not None:
        audit_record(
            action="portal.delegation.revoke",
            outcome=AuditEvent.Outcome.FAILURE,
            user=request.user,
            patient=delegation.delegator,
            source=client_ip(request),
            detail={"delegation": delegation.pk, "reason": "already_revoked"},
        )
        messages.info(request, _("La delega era già stata revocata."))
        return redirect("portal:staff_delegations")
    delegation_revoke(delegation=delegation, user=request.user, source=client_ip(request))
    messages.success(
        request,
        _("Delega revocata: %(delegate)s non agisce più per %(delegator)s.")
        % {"delegate": _person(delegation.delegate), "delegator": _person(delegation.delegator)},
    )
    return redirect("portal:staff_delegations")
