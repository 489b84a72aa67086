"""The citizen's pages of the FSE portal: log in, my exams, an exam, its
downloads, the image viewer, who saw my data, my delegations.

Thin adapters: the rules are in :mod:`portal.exams`, :mod:`portal.publication`,
:mod:`portal.delegations` and :mod:`portal.oscuramento`, the zips in
:mod:`portal.downloads`, the links in :mod:`portal.links`. Whose exam it is
comes from the access policy's citizen principal
(:func:`archive.access.principal_for_request`: the citizen and the people
whose delegation in force she holds), on top of the portal's publication
rules; what a delegate may do besides seeing and downloading (oscuramento,
consent) from :func:`portal.citizen_rights`. Every page a
citizen opens and every download writes an :class:`~kernel.models.AuditEvent`
naming the user and, for a delegate, the person they acted for. An exam that
is not the citizen's (or of someone they act for) answers 404, audited as
denied, so that a guessed number reveals nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, login
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from archive import access
from archive.models import Instance, Patient, Report
from archive.rendering import pipeline as rendering
from archive.rendering import previews
from archive.rendering.isolated import RenderBusy
from archive.reporting import services as reports
from archive.series_numbers import NumberedSeries, series_label, study_series_numbered
from archive.storage import retrieve
from booking import services as booking_services
from booking.models import Booking
from kernel.audit import audit_record
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale
from kernel.models import AuditEvent
from kernel.problems import http_status
from kernel.web import AuthenticatedHttpRequest, client_ip, content_disposition

from . import downloads, links, oscuramento, publication
from .access_log import Cursor, access_log_page, exam_choices
from .accounts import citizen_account, citizen_patient
from .delegations import citizen_rights, delegations_in_force, people_ordered
from .errors import PortalError
from .exams import (
    ExamStatus,
    citizen_exams,
    consent_revocable,
    exam_date,
    exam_status,
    live_publications,
    person_name,
)
from .middleware import LOGIN_AT, SEEN_AT
from .models import Concealment, Delegation, DownloadPackage, Notification
from .ranges import file_response_with_ranges

VIEWER_PARAMS = previews.PREVIEW
THUMBNAIL_PARAMS = previews.THUMBNAIL
# The query parameter of a report's link that shows the PDF in the page (PDF.js) instead of saving it.
INLINE = "mostra"


# --- who is asking ----------------------------------------------------------------


class CitizenRequest(AuthenticatedHttpRequest):
    """A request past :func:`citizen_required`. Only an annotation."""

    citizen_patient: Patient | None  # the citizen's own patient row, None until an exam of theirs is known


def citizen_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Only a logged-in citizen: the anonymous go to the portal's login, staff get 403."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return redirect(f"{reverse('portal:login')}?{urlencode({'next': request.get_full_path()})}")
        account = citizen_account(request.user)
        if account is None:
            return render(request, "portal/citizens_only.html", status=403)
        citizen = cast(CitizenRequest, request)  # what this gate has just established
        citizen.citizen_patient = citizen_patient(request.user)
        return view(citizen, *args, **kwargs)

    return wrapper


def _audit(
    request: CitizenRequest,
    action: str,
    *,
    booking: Booking | None = None,
    patient: Patient | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    **detail: Any,
) -> None:
    me = getattr(request, "citizen_patient", None)
    if booking is not None:
        patient = booking.patient
        detail.setdefault("accession_number", booking.accession_number)
    if patient is not None and me is not None and patient.pk != me.pk:
        detail["acting_for"] = patient.codice_fiscale  # a delegate
    audit_record(
        action=action,
        outcome=outcome,
        user=request.user,
        patient=patient,
        study=booking.study if booking is not None and booking.study_id else None,
        source=client_ip(request),
        detail=detail,
    )


def _booking_for(request: CitizenRequest, pk: int) -> Booking:
    """The citizen's (or a delegator's) booking ``pk``; 404, audited, for any other.

    The policy decides: the booking's patient must be among the principal's,
    and so must its study's (a study re-assigned to someone else is theirs).
    """
    booking = Booking.objects.select_related("patient", "facility", "procedure", "study").filter(pk=pk).first()
    principal = access.principal_for_request(request)
    if (
        booking is None
        or not principal.is_citizen
        or booking.patient_id not in principal.patient_ids
        or (booking.study is not None and not access.study_visible(principal, booking.study))
    ):
        audit_record(
            action="portal.exam.denied",
            outcome=AuditEvent.Outcome.DENIED,
            user=request.user,
            source=client_ip(request),
            detail={"booking": pk, "path": request.path},
        )
        raise Http404(_("Esame non trovato."))
    return booking


def _me(request: CitizenRequest) -> Patient:
    """The citizen's own patient row, once :func:`_booking_for` let an exam through: a
    citizen without one has no exam, neither hers nor a delegator's (a delegation joins
    two patient rows), so the 404 below is never reached."""
    if request.citizen_patient is None:
        raise Http404(_("Esame non trovato."))
    return request.citizen_patient


def _online_or_refuse(request: CitizenRequest, booking: Booking, action: str) -> ExamStatus | None:
    """The exam's status when it is available online; None (and an audited refusal) when not."""
    status = exam_status(booking=booking)
    if status.code != "available_online":
        _audit(request, action, booking=booking, outcome=AuditEvent.Outcome.DENIED, reason=status.code)
        return None
    return status


def _not_online(request: CitizenRequest, booking: Booking) -> HttpResponse:
    status = exam_status(booking=booking)
    return render(request, "portal/not_online.html", {"booking": booking, "status": status}, status=403)


# --- log in -------------------------------------------------------------------------


class LoginForm(forms.Form):
    codice_fiscale = forms.CharField(
        label=gettext_lazy("Codice fiscale"),
        max_length=16,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "username",
                "autocapitalize": "characters",
                "spellcheck": "false",
                "class": "form-control",
            }
        ),
    )
    password = forms.CharField(
        label=gettext_lazy("Password"),
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "class": "form-control"}),
    )

    def clean_codice_fiscale(self) -> str:
        value = normalize_codice_fiscale(self.cleaned_data["codice_fiscale"])
        error = codice_fiscale_error(value)
        if error:
            raise forms.ValidationError(error)
        return value


def login_view(request: HttpRequest) -> HttpResponse:
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        next_url = ""
    form = LoginForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        cf = form.cleaned_data["codice_fiscale"]
        user = authenticate(request, username=cf, password=form.cleaned_data["password"])
        if user is not None and citizen_account(user) is not None:
            login(request, user)
            return redirect(next_url or "portal:exams")
        if getattr(request, "axes_locked_out", False):
            # django-axes' middleware answers with the lockout page.
            return HttpResponse(status=429)
        audit_record(
            action="portal.login",
            outcome=AuditEvent.Outcome.FAILURE,
            source=client_ip(request),
            detail={"codice_fiscale": cf},
        )
        error = _("Codice fiscale o password non corretti.")
    return render(
        request,
        "portal/login.html",
        {"form": form, "error": error, "next": next_url, "oidc": settings.PACS_OIDC_ENABLED},
        status=401 if error else 200,
    )


def on_citizen_login(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    """``user_logged_in`` receiver: a citizen's session gets the portal's short lifetime, and is audited."""
    account = citizen_account(user)
    if account is None or request is None:
        return
    now = timezone.now().timestamp()
    request.session[LOGIN_AT] = now
    request.session[SEEN_AT] = now
    request.session.set_expiry(settings.PACS_PORTAL_SESSION_IDLE_SECONDS)
    audit_record(
        action="portal.login",
        user=user,
        patient=citizen_patient(user),
        source=client_ip(request),
        detail={"origin": account.origin},
    )


# --- my exams -------------------------------------------------------------------------


@citizen_required
def exams(request: CitizenRequest) -> HttpResponse:
    me = request.citizen_patient
    now = timezone.now()
    principal = access.principal_for_request(request)
    rows = [
        {
            "booking": booking,
            "status": exam_status(booking=booking, now=now),
            "date": exam_date(booking=booking),
            "person": person_name(booking.patient),
            "mine": me is not None and booking.patient_id == me.pk,
        }
        for booking in citizen_exams(patient_ids=principal.patient_ids)
    ]
    notifications = list(Notification.objects.filter(user=request.user, read_at__isnull=True)[:10])
    if notifications:
        Notification.objects.filter(pk__in=[n.pk for n in notifications]).update(read_at=now)
    _audit(request, "portal.exams.view", patient=me, count=len(rows))
    return render(
        request,
        "portal/exams.html",
        {"rows": rows, "me": me, "notifications": notifications, "days": publication.availability_days()},
    )


def _package_rows(request: CitizenRequest, booking: Booking) -> list[dict[str, Any]]:
    rows = []
    for kind, label in DownloadPackage.Kind.choices:
        latest = (
            DownloadPackage.objects.filter(study_id=booking.study_id, kind=kind)
            .exclude(status=DownloadPackage.Status.PURGED)
            .first()
            if booking.study_id
            else None
        )
        rows.append({"kind": kind, "label": label, "package": latest, "url": _package_link(request, latest)})
    return rows


def _package_link(request: CitizenRequest, package: DownloadPackage | None) -> str:
    if package is None or package.status != DownloadPackage.Status.READY:
        return ""
    token = links.link_token(user=request.user, kind="package", object_id=package.pk)
    return reverse("portal:download", args=[token])


@citizen_required
def exam(request: CitizenRequest, pk: int) -> HttpResponse:
    booking = _booking_for(request, pk)
    now = timezone.now()
    status = exam_status(booking=booking, now=now)
    publications = live_publications(booking=booking, now=now, status=status)
    report_links = [
        {
            "publication": p,
            "pdf": reverse(
                "portal:download", args=[links.link_token(user=request.user, kind="pdf", object_id=p.report_id)]
            ),
            "p7m": reverse(
                "portal:download", args=[links.link_token(user=request.user, kind="p7m", object_id=p.report_id)]
            ),
        }
        for p in publications
    ]
    for row in report_links:
        row["inline"] = f"{row['pdf']}?{urlencode({INLINE: 1})}"  # the same link, shown in the page
    online = status.code == "available_online"
    me = _me(request)
    rights = citizen_rights(citizen=me, patient=booking.patient, now=now)
    concealment = (
        Concealment.objects.filter(study_id=booking.study_id, revealed_at__isnull=True).first()
        if booking.study_id
        else None
    )
    may_conceal = Delegation.Right.CONCEALMENT in rights
    revocable = consent_revocable(booking=booking)
    _audit(request, "portal.exam.view", booking=booking, status=status.code)
    return render(
        request,
        "portal/exam.html",
        {
            "booking": booking,
            "status": status,
            "online": online,
            "report_links": report_links,
            "packages": _package_rows(request, booking) if online else [],
            "concealed": concealment is not None,
            "may_conceal": may_conceal,
            "may_reveal": may_conceal
            and concealment is not None
            and oscuramento.concealment_revealable_by(concealment=concealment, requested_by=me),
            "can_revoke": revocable and Delegation.Right.CONSENT in rights,
            "revocable": revocable,
            "delegate": me is not None and booking.patient_id != me.pk,
            "date": exam_date(booking=booking),
            "person": person_name(booking.patient),
            "consent_choice": booking.current_choice(),
            "notifications": Notification.objects.filter(user=request.user, booking=booking, read_at__isnull=True),
        },
    )


# --- downloads ------------------------------------------------------------------------


@citizen_required
@require_POST
def package_request(request: CitizenRequest, pk: int, kind: str) -> HttpResponse:
    booking = _booking_for(request, pk)
    if kind not in DownloadPackage.Kind.values:
        raise Http404(_("Tipo di pacchetto sconosciuto."))
    if _online_or_refuse(request, booking, "portal.package.request") is None or booking.study is None:
        return _not_online(request, booking)
    package, created = downloads.package_request(
        study=booking.study, kind=kind, user=request.user, principal=access.principal_for_request(request)
    )
    _audit(request, "portal.package.request", booking=booking, kind=kind, package=package.pk, created=created)
    if package.status == DownloadPackage.Status.QUEUED:
        if downloads.builds_inline(package):
            downloads.media_build(package_pk=package.pk)
        else:
            from .tasks import package_build

            transaction.on_commit(lambda: package_build.delay(package.pk, request.user.pk, booking.pk))
    return redirect("portal:package", pk=package.pk)


def _package_for(request: CitizenRequest, pk: int) -> tuple[DownloadPackage, Booking]:
    package = get_object_or_404(DownloadPackage.objects.select_related("study"), pk=pk)
    booking = Booking.objects.filter(study_id=package.study_id).exclude(status=Booking.Status.CANCELLED).first()
    if booking is None:
        raise Http404(_("Esame non trovato."))
    return package, _booking_for(request, booking.pk)


@citizen_required
def package(request: CitizenRequest, pk: int) -> HttpResponse:
    package, booking = _package_for(request, pk)
    if exam_status(booking=booking).code != "available_online":
        return _not_online(request, booking)
    url = _package_link(request, package)
    if request.GET.get("format") == "json":
        return JsonResponse(
            {"status": package.status, "percent": package.percent, "download_url": url, "error": bool(package.error)}
        )
    _audit(
        request, "portal.package.view", booking=booking, kind=package.kind, package=package.pk, status=package.status
    )
    return render(request, "portal/package.html", {"package": package, "booking": booking, "download_url": url})


_REFUSED = {
    "forged": gettext_lazy("Il link non è valido: è stato alterato o non è stato emesso da questo portale."),
    "expired": gettext_lazy("Il link è scaduto. Torni alla pagina dell'esame per ottenerne uno nuovo."),
    "other_user": gettext_lazy("Il link è stato emesso per un altro utente: acceda con il suo account."),
}


@citizen_required
def download(request: CitizenRequest, token: str) -> HttpResponseBase:
    try:
        link = links.link_read(token, user=request.user)
    except links.LinkRefused as refused:
        audit_record(
            action="portal.download",
            outcome=AuditEvent.Outcome.DENIED,
            user=request.user,
            source=client_ip(request),
            detail={"reason": refused.code},
        )
        return render(
            request, "portal/link_refused.html", {"message": _REFUSED[refused.code]}, status=http_status(refused)
        )
    if link.kind == "package":
        package, booking = _package_for(request, link.object_id)
        if _online_or_refuse(request, booking, "portal.download") is None:
            return _not_online(request, booking)
        if package.status != DownloadPackage.Status.READY or not downloads.package_file_present(package):
            raise Http404(_("Il file non è più disponibile: lo richieda di nuovo dalla pagina dell'esame."))
        _audit(
            request,
            "portal.download",
            booking=booking,
            file=package.kind,
            package=package.pk,
            range=request.headers.get("Range", ""),
        )
        name = f"esame-{booking.accession_number}-{'dicom' if package.kind == 'dicom' else 'jpeg'}.zip"
        return file_response_with_ranges(request, Path(package.path), filename=name, content_type="application/zip")
    report = get_object_or_404(Report.objects.select_related("study"), pk=link.object_id, status=Report.Status.SIGNED)
    found = Booking.objects.filter(study_id=report.study_id).exclude(status=Booking.Status.CANCELLED).first()
    if found is None:
        raise Http404(_("Esame non trovato."))
    booking = _booking_for(request, found.pk)
    status = _online_or_refuse(request, booking, "portal.download")
    if status is None:
        return _not_online(request, booking)
    if report.pk not in {p.report_id for p in live_publications(booking=booking, status=status)}:
        raise Http404(_("Questa versione del referto non è pubblicata."))
    try:
        data = reports.report_file(report=report, which=link.kind)
    except reports.ReportError as err:
        _audit(
            request,
            "portal.download",
            booking=booking,
            outcome=AuditEvent.Outcome.FAILURE,
            file=link.kind,
            error=err.message,
        )
        return render(request, "portal/link_refused.html", {"message": err.message}, status=503)
    inline = link.kind == "pdf" and request.GET.get(INLINE) == "1"
    shown: dict[str, Any] = {"inline": True} if inline else {}  # shown in the page (PDF.js), not saved
    _audit(
        request, "portal.download", booking=booking, file=link.kind, report=report.pk, version=report.version, **shown
    )
    if link.kind == "pdf":
        response = HttpResponse(data, content_type="application/pdf")
        name = f"referto-{booking.accession_number}-v{report.version}.pdf"
    else:
        response = HttpResponse(data, content_type="application/pkcs7-mime")
        name = f"referto-{booking.accession_number}-v{report.version}.pdf.p7m"
    response["Content-Disposition"] = content_disposition(name, as_attachment=not inline)
    response["Cache-Control"] = "private, no-store"
    return response


# --- the image viewer -------------------------------------------------------------------


def _viewer_series(booking: Booking) -> list[NumberedSeries]:
    """The exam's series with images, numbered as the staff viewer and the JPEG zip number them."""
    if booking.study_id is None:  # an exam online has its study: not reached
        return []
    return study_series_numbered(study_id=booking.study_id, instances=Instance.objects.filter(rows__isnull=False))


def _bounded_int(value: str | None, low: int, high: int) -> int:
    try:
        return min(max(int(value or low), low), high)
    except ValueError:
        return low


@citizen_required
def viewer(request: CitizenRequest, pk: int) -> HttpResponse:
    """The exam's images, one at a time: ``?serie=5&immagine=12`` is series 5 (its number,
    as in the report and the zip) and the 12th image in it. Works without JavaScript
    (links and a form); ``viewer.js`` adds swipe, the slider, pinch to zoom."""
    booking = _booking_for(request, pk)
    if _online_or_refuse(request, booking, "portal.viewer") is None:
        return _not_online(request, booking)
    groups = _viewer_series(booking)
    if not groups:
        raise Http404(_("L'esame non ha immagini da mostrare."))
    wanted = request.GET.get("serie", "")
    s_pos = next((n for n, g in enumerate(groups) if str(g.number) == wanted), 0)
    current = groups[s_pos]
    i_index = _bounded_int(request.GET.get("immagine"), 1, len(current.instances))
    base = reverse("portal:viewer", args=[booking.pk])

    def at(number: int, i: int) -> str:
        return f"{base}?{urlencode({'serie': number, 'immagine': i})}"

    def image(instance: Instance) -> str:
        return reverse("portal:preview", args=[booking.pk, instance.pk])

    series_list = [
        {
            "number": g.number,
            "label": series_label(g.number, g.series, plain=True),
            "count": len(g.instances),
            "url": at(g.number, 1),
            "thumbnail": f"{image(g.instances[len(g.instances) // 2])}?{urlencode({'formato': 'miniatura'})}",
            "current": n == s_pos,
            "position": n,
        }
        for n, g in enumerate(groups)
    ]
    _audit(request, "portal.viewer", booking=booking, series=current.series.series_instance_uid, image=i_index)
    return render(
        request,
        "portal/viewer.html",
        {
            "booking": booking,
            "series_list": series_list,
            "current": series_list[s_pos],
            "i_index": i_index,
            "count": len(current.instances),
            "image_url": image(current.instances[i_index - 1]),
            "previous_url": at(current.number, i_index - 1) if i_index > 1 else "",
            "next_url": at(current.number, i_index + 1) if i_index < len(current.instances) else "",
            "viewer_data": {
                "series": [
                    {"id": g.number, "label": row["label"], "images": [image(i) for i in g.instances], "presets": []}
                    for g, row in zip(groups, series_list, strict=True)
                ],
                "state": {"series": s_pos, "image": i_index - 1, "preset": 0},
                "texts": {"image": _("immagine %(n)s di %(total)s")},
            },
        },
    )


@citizen_required
def preview(request: CitizenRequest, pk: int, instance_pk: int) -> HttpResponse:
    """One image of the viewer, as JPEG (part of the audited viewer page);
    ``?formato=miniatura``: its thumbnail, for the list of series."""
    booking = _booking_for(request, pk)
    if exam_status(booking=booking).code != "available_online":
        raise Http404(_("Immagine non disponibile."))
    instance = get_object_or_404(
        Instance.objects.select_related("facility"), pk=instance_pk, series__study_id=booking.study_id
    )
    params = THUMBNAIL_PARAMS if request.GET.get("formato") == "miniatura" else VIEWER_PARAMS
    try:
        data = previews.stored_or_rendered(instance=instance, frame=1, params=params)
    except (retrieve.NotAvailable, RenderBusy):
        return HttpResponse(status=503, headers={"Retry-After": "10"})
    except (rendering.NoImage, ValueError):
        raise Http404(_("Questa immagine non si può mostrare come JPEG.")) from None
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=3600"
    return response


# --- oscuramento and consent --------------------------------------------------------------


@citizen_required
@require_POST
def concealment(request: CitizenRequest, pk: int) -> HttpResponse:
    booking = _booking_for(request, pk)
    if booking.study is None:
        raise Http404(_("L'esame non ha ancora immagini da oscurare."))
    me = request.citizen_patient
    action = request.POST.get("action")
    if action not in ("conceal", "reveal"):
        return redirect("portal:exam", pk=booking.pk)
    service = oscuramento.conceal if action == "conceal" else oscuramento.reveal
    try:
        service(patient=booking.patient, study=booking.study, requested_by=me, source=client_ip(request))
    except PortalError as err:
        _audit(request, f"portal.{action}", booking=booking, outcome=AuditEvent.Outcome.DENIED, reason=err.code)
        messages.error(request, err.message)
    else:
        if action == "conceal":
            messages.success(request, _("L'esame è ora oscurato: i professionisti sanitari non possono consultarlo."))
        else:
            messages.success(request, _("L'esame è di nuovo visibile ai professionisti sanitari."))
    return redirect("portal:exam", pk=booking.pk)


@citizen_required
@require_POST
def consent_revoke(request: CitizenRequest, pk: int) -> HttpResponse:
    booking = _booking_for(request, pk)
    if request.POST.get("confirm") != "yes":
        messages.error(request, _("Confermi la revoca spuntando la casella."))
        return redirect("portal:exam", pk=booking.pk)
    try:
        publication.consent_revoke_online(
            booking=booking,
            requested_by=_me(request),
            user=request.user,
            source=client_ip(request),
        )
    except PortalError as err:
        _audit(
            request,
            "portal.consent_revoke",
            booking=booking,
            outcome=AuditEvent.Outcome.DENIED,
            reason=err.code,
        )
        messages.error(request, err.message)
        return redirect("portal:exam", pk=booking.pk)
    except booking_services.BookingError as err:
        messages.error(request, err.message)
        return redirect("portal:exam", pk=booking.pk)
    messages.success(request, _("Consenso revocato: riceverà referto e immagini su CD."))
    return redirect("portal:exam", pk=booking.pk)


# --- who saw my data, my delegations ----------------------------------------------------------


class AccessLogFilter(forms.Form):
    """The log's filters (an exam, a period) and where the page starts; every field optional."""

    DATE_FORMATS = ["%Y-%m-%d", "%d/%m/%Y"]  # what a date input sends, and what a person types
    BAD_DATE = gettext_lazy("Scriva la data come giorno/mese/anno, per esempio 04/12/2026.")

    esame = forms.TypedChoiceField(
        label=gettext_lazy("Esame"),
        required=False,
        coerce=int,
        empty_value=None,
        error_messages={"invalid_choice": gettext_lazy("Scelga uno degli esami dell'elenco.")},
    )
    dal = forms.DateField(
        label=gettext_lazy("Dal giorno"),
        required=False,
        input_formats=DATE_FORMATS,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        error_messages={"invalid": BAD_DATE},
    )
    al = forms.DateField(
        label=gettext_lazy("Al giorno"),
        required=False,
        input_formats=DATE_FORMATS,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        error_messages={"invalid": BAD_DATE},
    )
    dopo = forms.CharField(required=False, widget=forms.HiddenInput)
    prima = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, data: QueryDict | None, *, exams: list[tuple[Booking, str]]) -> None:
        # A copy: a typed date is shown back as the date input reads it (_day).
        super().__init__(data.copy() if data is not None else None)
        self.bookings = {b.pk: b for b, _label in exams}
        field = cast(forms.TypedChoiceField, self.fields["esame"])
        field.choices = [("", _("Tutti gli esami")), *((b.pk, label) for b, label in exams)]

    def _day(self, name: str) -> dt.date | None:
        day: dt.date | None = self.cleaned_data.get(name)
        if day is not None:
            cast(QueryDict, self.data)[name] = day.isoformat()
        return day

    def clean_dal(self) -> dt.date | None:
        return self._day("dal")

    def clean_al(self) -> dt.date | None:
        return self._day("al")

    def _cursor(self, name: str, *, older: bool) -> Cursor | None:
        token = self.cleaned_data.get(name) or ""
        if not token:
            return None
        try:
            return Cursor.parse(token, older=older)
        except ValueError:
            raise forms.ValidationError(
                _("Questa pagina del registro non esiste: riparta dagli accessi più recenti.")
            ) from None

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("dal"), data.get("al")
        if since is not None and until is not None and since > until:
            self.add_error(
                "al",
                _("Il giorno finale (%(until)s) viene prima di quello iniziale (%(since)s): li inverta o li corregga.")
                % {
                    "until": until.strftime("%d/%m/%Y"),
                    "since": since.strftime("%d/%m/%Y"),
                },
            )
        data["cursor"] = self._cursor("dopo", older=True) or self._cursor("prima", older=False)
        data["booking"] = self.bookings.get(data["esame"]) if data.get("esame") is not None else None
        return data


@citizen_required
def access_log(request: CitizenRequest) -> HttpResponse:
    """Who saw my data: grouped, emergency accesses first, filtered by exam and period.

    The people are the principal's (the citizen and whoever delegated them,
    :mod:`portal.delegations`); each person whose log is shown gets the
    reading in their own log (a delegate's, as acting for them).
    """
    me = request.citizen_patient
    people = people_ordered(me=me, patient_ids=access.principal_for_request(request).patient_ids)
    form = AccessLogFilter(request.GET or None, exams=exam_choices(patient_ids=[p.pk for p in people], me=me))
    if request.GET and not form.is_valid():
        return render(request, "portal/access_log.html", {"form": form, "people": people, "page": None}, status=400)
    data = form.cleaned_data if request.GET else {}
    booking: Booking | None = data.get("booking")
    since, until = data.get("dal"), data.get("al")
    page = access_log_page(
        patients=people, viewer=request.user, exam=booking, since=since, until=until, cursor=data.get("cursor")
    )
    filters: dict[str, Any] = {
        k: v
        for k, v in (
            ("esame", booking.pk if booking else None),
            ("dal", since.isoformat() if since else None),
            ("al", until.isoformat() if until else None),
        )
        if v
    }
    if booking is not None:
        _audit(request, "portal.access_log.view", booking=booking, **filters)
    else:
        for person in people:
            _audit(request, "portal.access_log.view", patient=person, **filters)
    return render(
        request,
        "portal/access_log.html",
        {"form": form, "page": page, "people": people, "query": urlencode(filters), "filtered": bool(filters)},
    )


@citizen_required
def delegations(request: CitizenRequest) -> HttpResponse:
    me = request.citizen_patient
    now = timezone.now()
    active = Delegation.objects.filter(delegations_in_force(now)).select_related("delegator", "delegate")
    acting_for = list(active.filter(delegate=me)) if me is not None else []
    acted_by = list(active.filter(delegator=me)) if me is not None else []
    _audit(request, "portal.delegations.view", patient=me)
    return render(request, "portal/delegations.html", {"acting_for": acting_for, "acted_by": acted_by})
