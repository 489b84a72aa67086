"""The portal's staff desk (``/fse/sportello/``): the emergency access to a
study the patient concealed, and the delegations desk where CUP operators
register and revoke a *delega* on the documents the citizen shows.

The views only translate: form input into :mod:`portal.availability` calls,
its ``ValueError`` into a message beside the field, and what each page shows
or does into an ``AuditEvent``. Who may open a study is
:func:`archive.reports.study_access_check`'s answer (authority rule), asked
here without the concealment test, which is what this page lifts.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from archive import reports
from archive.audit import audit_record
from archive.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale
from archive.models import AuditEvent, Patient, Study
from archive.web import client_ip, perms_required

from .availability import delegation_register, delegation_revoke, delegations_in_force, emergency_access, is_concealed
from .concealment import emergency_access_live, emergency_access_minutes, emergency_access_until
from .models import EMERGENCY_REASON_MIN_LENGTH, Delegation

logger = logging.getLogger(__name__)

PAGE_SIZE = 50


# --- Emergency access (break-glass) -----------------------------------------------------


class EmergencyAccessForm(forms.Form):
    reason = forms.CharField(
        label=gettext_lazy("Motivo dell'accesso in emergenza"),
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        max_length=2000,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].help_text = _(
            "Perché devi consultare ora lo studio oscurato (almeno %(n)d caratteri). Il motivo viene registrato."
        ) % {"n": EMERGENCY_REASON_MIN_LENGTH}

    def clean_reason(self) -> str:
        reason = " ".join(self.cleaned_data["reason"].split())
        if len(reason) < EMERGENCY_REASON_MIN_LENGTH:
            raise forms.ValidationError(
                _("Indicare il motivo dell'accesso in emergenza (almeno %(n)d caratteri).")
                % {"n": EMERGENCY_REASON_MIN_LENGTH},
                code="too_short",
            )
        return reason


def _hhmm(moment: dt.datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M")


@perms_required("archive.view_study")
@require_http_methods(["GET", "POST"])
def emergency(request: HttpRequest, study_pk: int) -> HttpResponse:
    study = get_object_or_404(Study.objects.select_related("patient", "facility", "facility__authority"), pk=study_pk)
    source = client_ip(request)
    # The authority rule (403, audited); the concealment is what this page lifts.
    reports.study_access_check(user=request.user, study=study, source=source, concealment=False)
    concealed = is_concealed(study=study)
    live = emergency_access_live(user=request.user, study=study)
    status = 200
    form = EmergencyAccessForm(request.POST or None)
    if request.method == "POST":
        if not concealed:
            messages.info(request, _("Lo studio non è oscurato: puoi aprirlo senza accesso in emergenza."))
            audit_record(
                action="portal.emergency_access",
                outcome=AuditEvent.Outcome.FAILURE,
                user=request.user,
                study=study,
                source=source,
                detail={"reason": "not_concealed"},
            )
            return redirect("reporting:study", pk=study.pk)
        if form.is_valid():
            try:
                access = emergency_access(
                    user=request.user, study=study, reason=form.cleaned_data["reason"], source=source
                )
            except ValueError as err:
                form.add_error("reason", str(err))
            else:
                messages.warning(
                    request,
                    _("Accesso in emergenza registrato: lo studio resta aperto per te fino alle %(t)s.")
                    % {"t": _hhmm(emergency_access_until(access))},
                )
                return redirect("reporting:study", pk=study.pk)
        status = 400
        audit_record(
            action="portal.emergency_access",
            outcome=AuditEvent.Outcome.DENIED,
            user=request.user,
            study=study,
            source=source,
            detail={"reason": "no_reason_given", "length": len(" ".join(request.POST.get("reason", "").split()))},
        )
    else:
        audit_record(
            action="portal.emergency_access.page",
            user=request.user,
            study=study,
            source=source,
            detail={"concealed": concealed, "live_access": live.pk if live is not None else None},
        )
    return render(
        request,
        "portal/staff/emergency_access.html",
        {
            "study": study,
            "form": form,
            "concealed": concealed,
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


def _cf_field(label: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        max_length=32,
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "characters", "size": 20}
        ),
    )


class DelegationForm(forms.Form):
    delegator_cf = _cf_field(gettext_lazy("Codice fiscale del delegante (l'interessato)"))
    delegate_cf = _cf_field(gettext_lazy("Codice fiscale del delegato"))
    kind = forms.ChoiceField(label=gettext_lazy("Tipo di delega"), choices=[("", "—"), *Delegation.Kind.choices])
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
        data = super().clean()
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


class DelegationSearchForm(forms.Form):
    q = forms.CharField(
        label=gettext_lazy("Cerca per codice fiscale (delegante o delegato)"),
        required=False,
        max_length=32,
        widget=forms.TextInput(attrs={"type": "search", "autocomplete": "off", "spellcheck": "false"}),
    )


def _desk(request: HttpRequest, form: DelegationForm, *, status: int = 200) -> HttpResponse:
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
def delegations(request: HttpRequest) -> HttpResponse:
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
        except ValueError as err:
            form.add_error(None, str(err))
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
    return f"{name} ({patient.codice_fiscale})" if name else patient.codice_fiscale


@perms_required("portal.change_delegation")
@require_POST
def delegation_revoke_view(request: HttpRequest, pk: int) -> HttpResponse:
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


urlpatterns = [
    path("emergenza/<int:study_pk>/", emergency, name="staff_emergency_access"),
    path("deleghe/", delegations, name="staff_delegations"),
    path("deleghe/<int:pk>/revoca/", delegation_revoke_view, name="staff_delegation_revoke"),
]
