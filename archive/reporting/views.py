"""The radiologist's pages: the work list, the study page (images, prior
studies, the report editor), signing, the signed versions and their files.

The views only translate: form input into :mod:`archive.reporting.services` calls,
``ReportError`` and ``ReportConflict`` into messages on the page, and every
page that shows a patient's data or a report into an ``AuditEvent``.

What the user sees is the access policy's (:mod:`archive.access`): the work
list, its facility and modality choices, the priors and the patient's studies
are :func:`archive.access.studies_visible` for the request's principal, and
opening a study is :func:`archive.reporting.services.study_access_check`'s answer. A
study the patient concealed (*oscuramento*) does not exist for a professional
without a live emergency access (DPCM 178/2015, art. 8): no row, no label, no
count, and its pages answer 404 like a study that is not in the archive. The
emergency access (the portal's staff page) is asked for a patient; the study
page and the patient's page offer it for their patient whether or not
anything is hidden, so that the link says nothing.

A study's draft is shown in the editor to every radiologist who may change
reports, not only to its author (with a notice saying whose draft it is and
who saved it last); two of them saving from the same revision get, the
second, a 409 page naming who saved first, with their own text kept in the
form beside the saved one. Only the author sees "Abbandona la bozza".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from csp.constants import UNSAFE_INLINE
from csp.decorators import csp_update
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import F, Prefetch, Q
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import get_script_prefix, reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop
from django.views.decorators.http import require_http_methods, require_POST

from archive import access
from archive.models import Instance, Patient, Report, ReportPhrase, ReportTemplate, Series, Study
from archive.procedure_steps import steps_for_studies
from archive.reporting import dose, texts
from archive.reporting import services as reports
from archive.reporting.booked import booked_exam, booked_exams
from archive.reporting.forms import (
    STATUS_IN_PROGRESS,
    STATUS_TODO,
    AmendForm,
    PhraseForm,
    ReportForm,
    SignForm,
    WorklistFilterForm,
)
from archive.series_numbers import series_label, study_series_numbered
from kernel.audit import audit_record
from kernel.models import AuditEvent
from kernel.problems import http_status
from kernel.web import AuthenticatedHttpRequest, client_ip, content_disposition, perms_required

logger = logging.getLogger(__name__)

VIEW_PERMS = ("archive.view_report", "archive.view_study")
# The portal's permission to ask for an emergency access (clinicians only).
EMERGENCY_PERMISSION = "portal.emergency_access"
PAGE_SIZE = 50

# The region-wide DICOMweb service root (pacs/urls.py mounts it at /dicomweb/):
# the viewer's images are its WADO-RS thumbnails and rendered frames.
_DICOMWEB = "dicomweb"

# Conventional CT windows (centre, width), offered after the data set's own
# ones: many scanners write one window only, or none.
CT_PRESETS: tuple[tuple[str, float, float], ...] = (
    (gettext_noop("Polmone"), -600, 1500),
    (gettext_noop("Mediastino"), 40, 400),
    (gettext_noop("Addome"), 50, 350),
    (gettext_noop("Osso"), 400, 1800),
    (gettext_noop("Encefalo"), 40, 80),
)


def _perms(*extra: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    gate = perms_required(*VIEW_PERMS, *extra)

    return gate


_source = client_ip


def _name(user: Any) -> str:
    if user is None:
        return ""
    return str(user.get_full_name() or user.get_username())


# --- the work list ----------------------------------------------------------------------


@_perms()
def worklist(request: AuthenticatedHttpRequest) -> HttpResponse:
    principal = access.principal_for_request(request)
    facilities, modalities = reports.worklist_choices(principal=principal)
    form = WorklistFilterForm(request.GET or None, facilities=facilities, modalities=modalities)
    filters: dict[str, Any] = {}
    if form.is_bound and form.is_valid():
        filters = form.cleaned_data
    claimed = {STATUS_TODO: False, STATUS_IN_PROGRESS: True}.get(filters.get("status") or "")
    studies = (
        reports.worklist_studies(
            principal=principal,
            facility=filters.get("facility"),
            modality=filters.get("modality") or "",
            date_from=filters.get("date_from"),
            date_to=filters.get("date_to"),
            priority=filters.get("priority") or "",
            claimed=claimed,
        )
        if not form.errors
        else Study.objects.none()
    )
    page = Paginator(studies, PAGE_SIZE).get_page(request.GET.get("pagina"))
    booked = booked_exams(study.pk for study in page.object_list)
    steps = steps_for_studies(page.object_list)
    for study in page.object_list:
        study.booked = booked.get(study.pk)
        study.procedure_step = steps.get(study.pk, [None])[0]  # the modality's latest MPPS
        study.draft_author_name = (
            f"{study.draft_author_first} {study.draft_author_last}".strip() or study.draft_author_username or ""
        )
        study.open_url = reverse("reporting:study", args=[study.pk])
        study.viewer_url = reverse("reporting:viewer", args=[study.pk])
        detail: dict[str, Any] = {"page": page.number}
        audit_record(
            action="report.worklist",
            user=request.user,
            study=study,
            source=_source(request),
            detail=detail,
        )
    kept = urlencode([(k, str(v)) for k, v in request.GET.items() if k != "pagina" and v])
    return render(
        request,
        "archive/reporting/worklist.html",
        {"form": form, "page": page, "query": kept, "total": page.paginator.count},
    )


# --- the study page ---------------------------------------------------------------------


@dataclass
class Preset:
    label: str
    window: str  # the WADO-RS ``window`` parameter, "" for the data set's own


@dataclass
class ViewerSeries:
    series: Series
    thumbnail_url: str
    image_urls: list[str]
    presets: list[Preset] = field(default_factory=list)

    number: int = 0  # archive.series_numbers: the number the citizen's viewer and zip show too

    @property
    def label(self) -> str:
        return _series_label(self.series, self.number)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.series.pk,
            "label": self.label,
            "images": self.image_urls,
            "presets": [{"label": p.label, "window": p.window} for p in self.presets],
        }


def _series_label(series: Series, number: int) -> str:
    return series_label(number, series)


def _window_param(center: float, width: float, function: str = "LINEAR") -> str:
    return f"{center:g},{width:g},{function.lower().replace('_', '-')}"


def _series_presets(series: Series, first: Instance) -> list[Preset]:
    """The data set's windows (read from the first image's header), then the usual ones for CT."""
    presets = [Preset(_("Predefinita"), "")]
    for i, (explanation, window) in enumerate(reports.instance_windows(instance=first)):
        name = explanation or _("Finestra %(n)d") % {"n": i + 1}
        presets.append(
            Preset(
                f"{name} ({window.center:g}/{window.width:g})",
                _window_param(window.center, window.width, window.function),
            )
        )
    if series.modality == "CT":
        presets += [Preset(_(label), _window_param(c, w)) for label, c, w in CT_PRESETS]
    return presets


def _viewer(request: AuthenticatedHttpRequest, study: Study) -> tuple[list[ViewerSeries], dict[str, Any]]:
    root = f"{get_script_prefix()}{_DICOMWEB}/studies/{study.study_instance_uid}"
    out = []
    for numbered in study_series_numbered(study_id=study.pk, instances=Instance.objects.filter(rows__isnull=False)):
        series, images = numbered.series, numbered.instances
        base = f"{root}/series/{series.series_instance_uid}"
        out.append(
            ViewerSeries(
                series=series,
                thumbnail_url=f"{base}/thumbnail",
                image_urls=[f"{base}/instances/{i.sop_instance_uid}/frames/1/rendered" for i in images],
                presets=_series_presets(series, images[0]),
                number=numbered.number,
            )
        )
    state: dict[str, Any] = {"series": 0, "image": 0, "preset": 0}
    wanted = request.GET.get("serie", "")
    for index, item in enumerate(out):
        if str(item.series.pk) == wanted:
            state["series"] = index
    if out:
        current = out[state["series"]]
        state["image"] = _bounded(request.GET.get("immagine"), 1, len(current.image_urls)) - 1
        state["preset"] = _bounded(request.GET.get("finestra"), 0, len(current.presets) - 1, default=0)
    return out, state


def _bounded(value: str | None, low: int, high: int, *, default: int | None = None) -> int:
    try:
        number = int(value or "")
    except ValueError:
        return low if default is None else default
    return max(low, min(high, number))


def image_url(url: str, preset: Preset) -> str:
    return f"{url}?{urlencode({'window': preset.window})}" if preset.window else url


def _study_for(request: AuthenticatedHttpRequest, pk: int) -> Study:
    study = get_object_or_404(Study.objects.select_related("patient", "facility", "facility__authority"), pk=pk)
    reports.study_access_check(user=request.user, study=study, source=_source(request))
    return study


def _report_for(request: AuthenticatedHttpRequest, pk: int) -> Report:
    report = get_object_or_404(
        Report.objects.select_related("study", "study__patient", "study__facility", "author", "updated_by"), pk=pk
    )
    reports.study_access_check(user=request.user, study=report.study, source=_source(request))
    return report


def _priors(request: AuthenticatedHttpRequest, study: Study) -> list[Study]:
    """The patient's other studies the user may see (the access policy), newest first."""
    principal = access.principal_for_request(request)
    priors = list(
        access.studies_visible(principal)
        .filter(patient=study.patient)
        .exclude(pk=study.pk)
        .select_related("facility")
        .prefetch_related(_signed_reports())
        .order_by(F("study_date").desc(nulls_last=True), "-pk")
    )
    for prior in priors:
        prior.open_url = reverse("reporting:study", args=[prior.pk])  # type: ignore[attr-defined]  # for the template
    return priors


def _render_study(
    request: AuthenticatedHttpRequest,
    study: Study,
    *,
    form: ReportForm | None = None,
    error: str = "",
    conflict: Report | None = None,
    status: int = 200,
) -> HttpResponse:
    series, state = _viewer(request, study)
    draft = reports.report_draft(study=study)
    signed = list(study.reports.filter(status=Report.Status.SIGNED).select_related("author").order_by("-version"))
    mine = draft is not None and draft.author_id == request.user.pk
    # Colleagues edit the draft too (a resident drafts, the attending signs);
    # only the author discards it.
    editable = draft is not None and request.user.has_perm("archive.change_report")
    if editable and form is None:
        assert draft is not None
        form = ReportForm.for_report(draft)
    booked = booked_exam(study.pk)
    exposure_needed = editable and dose.study_is_ionising(study=study)
    templates = list(texts.templates_for_study(study=study, booked=booked)) if editable else []
    phrases = list(texts.phrases_of(user=request.user)) if editable else []
    priors = _priors(request, study)
    detail: dict[str, Any] = {"page": "reporting.study", "priors": [p.study_instance_uid for p in priors]}
    audit_record(
        action="study.view",
        user=request.user,
        study=study,
        source=_source(request),
        detail=detail,
    )
    current_series = series[state["series"]] if series else None
    current_preset = current_series.presets[state["preset"]] if current_series else None
    steps = {}
    if current_series is not None:
        for name, index in (("prev_query", state["image"] - 1), ("next_query", state["image"] + 1)):
            if 0 <= index < len(current_series.image_urls):
                steps[name] = urlencode(
                    {"serie": current_series.series.pk, "immagine": index + 1, "finestra": state["preset"]}
                )
    context: dict[str, Any] = {
        "study": study,
        "patient": study.patient,
        "series": series,
        "current_series": current_series,
        "current_preset": current_preset,
        "current_image_url": image_url(current_series.image_urls[state["image"]], current_preset)
        if current_series and current_preset
        else "",
        "image_number": state["image"] + 1,
        "state": state,
        "viewer_data": {
            "series": [s.as_json() for s in series],
            "state": state,
            "texts": {"image": _("immagine %(n)s di %(total)s")},
        },
        "booked": booked,
        "report_templates": templates,
        "phrases": phrases,
        "editor_data": {
            "templates": [texts.template_json(t) for t in templates],
            "phrases": {str(p.pk): p.text for p in phrases},
            "texts": {
                "replace": _(
                    "Queste sezioni hanno già del testo: «%(sections)s». Le sostituisco con quelle del modello?"
                ),
                "inserted": _("Modello «%(name)s» inserito nelle sezioni vuote."),
                "nothing": _("Tutte le sezioni hanno già del testo: il modello non è stato inserito."),
                "phrase": _("Frase inserita in «%(section)s»."),
            },
        },
        "draft": draft,
        "exposure_needed": exposure_needed,
        "exposure_source": dose.SOURCE_TEXTS.get(str((draft.exposure_data or {}).get("source")), "")
        if draft is not None
        else "",
        "mine": mine,
        "editable": editable,
        "draft_author_name": _name(draft.author) if draft is not None else "",
        "draft_updated_by_name": _name(draft.updated_by or draft.author) if draft is not None else "",
        "form": form,
        "error": error,
        "conflict": conflict,
        "conflict_name": _name(conflict.updated_by or conflict.author) if conflict is not None else "",
        "signed": signed,
        "latest_signed": signed[0] if signed else None,
        "priors": priors,
        "viewer3d_url": reverse("reporting:viewer", args=[study.pk]),
        **_emergency_context(request, study.patient, back=reverse("reporting:study", args=[study.pk])),
        **steps,
    }
    return render(request, "archive/reporting/study.html", context, status=status)


def _emergency_context(request: AuthenticatedHttpRequest, patient: Patient, *, back: str) -> dict[str, Any]:
    """The emergency access link for ``patient``, offered to every holder of the permission whether
    or not the patient hid anything (its presence tells nothing), and whether the user holds a live one."""
    if not request.user.has_perm(EMERGENCY_PERMISSION):
        return {"emergency_url": "", "emergency_live": False}
    # The portal's page, named by URL: the archive does not import the portal (docs/ARCHITECTURE.md).
    query: dict[str, int | str] = {"paziente": patient.pk, "next": back}
    url = f"{reverse('portal:staff_emergency_access')}?{urlencode(query)}"
    return {
        "emergency_url": url,
        "emergency_live": patient.pk in access.principal_for_request(request).patient_ids,
    }


@_perms()
def study(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _render_study(request, _study_for(request, pk))


def _viewer3d_study(study: Study) -> dict[str, Any]:
    """What the diagnostic viewer (frontend/viewer3d) needs of one study: its facts for the
    overlays and, per series (numbered as archive.series_numbers numbers them everywhere),
    the WADO-RS frame URLs of its images in order. The pixels and headers come from DICOMweb."""
    root = f"{get_script_prefix()}{_DICOMWEB}/studies/{study.study_instance_uid}"
    series = []
    for numbered in study_series_numbered(study_id=study.pk, instances=Instance.objects.filter(rows__isnull=False)):
        item, images = numbered.series, numbered.instances
        base = f"{root}/series/{item.series_instance_uid}"
        series.append(
            {
                "uid": item.series_instance_uid,
                "label": _series_label(item, numbered.number),
                "modality": item.modality,
                "metadata": f"{base}/metadata",
                "instances": [i.sop_instance_uid for i in images],
                "frames": [f"{base}/instances/{i.sop_instance_uid}/frames/1" for i in images],
            }
        )
    return {
        "pk": study.pk,
        "uid": study.study_instance_uid,
        "date": study.study_date.strftime("%d/%m/%Y") if study.study_date else "",
        "description": study.study_description,
        "series": series,
    }


# The diagnostic viewer's page alone widens the CSP (pacs/settings.py), for what Cornerstone3D
# needs and nothing else: its image codecs (JPEG, JPEG-LS, JPEG 2000, HTJ2K) are WebAssembly,
# which a browser compiles only under 'wasm-unsafe-eval' (it allows WebAssembly compilation,
# not JavaScript's eval); the measurement tools draw their labels as SVG text with a style
# attribute (user-select, shadow), which style-src-attr 'unsafe-inline' allows (an attribute
# style runs no script; <style> elements stay nonce-only); the tools' mouse cursors are SVG
# images the page's own script makes into blob: URLs (img-src blob:, which only this
# page's script can mint). Scripts and workers stay 'self'.
VIEWER3D_CSP = {"script-src": ["'wasm-unsafe-eval'"], "style-src-attr": [UNSAFE_INLINE], "img-src": ["blob:"]}


@csp_update(VIEWER3D_CSP)
@_perms()
def viewer(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The diagnostic viewer (Cornerstone3D, frontend/viewer3d) of a study, full window, with the
    patient's previous studies to put beside it. The same checks as the study page; the images
    are read from DICOMweb, whose own access policy and audit apply to each of them."""
    study = _study_for(request, pk)
    priors = _priors(request, study)
    audit_record(
        action="study.view",
        user=request.user,
        study=study,
        source=_source(request),
        detail={"page": "reporting.viewer", "priors": [p.study_instance_uid for p in priors]},
    )
    data = {
        "study": _viewer3d_study(study),
        "patient": {
            "name": f"{study.patient.family_name} {study.patient.given_name}".strip() or study.patient_name,
            "id": study.patient.codice_fiscale or study.dicom_patient_id,
        },
        "priors": [_viewer3d_study(p) for p in priors],
        "texts": {
            "uncalibrated": _(
                "Attenzione: le misure non sono calibrate (manca Pixel Spacing o c'è solo Imager Pixel Spacing)."
            ),
            "noSpacing": _("Attenzione: manca Pixel Spacing, le misure sono in pixel."),
            "slice": _("Imm."),
            "linked": _("Scorrimento sincronizzato"),
            "cannotLink": _("Per sincronizzare servono almeno due riquadri con immagini su piani paralleli."),
            "loading": _("Caricamento…"),
            "error": _("Non è stato possibile mostrare le immagini."),
            "noImages": _("Lo studio non ha immagini da mostrare."),
        },
    }
    return render(
        request,
        "archive/reporting/viewer.html",
        {"study": study, "patient": study.patient, "priors": priors, "viewer3d_data": data},
    )


def _signed_reports() -> Prefetch:
    return Prefetch(
        "reports",
        queryset=Report.objects.filter(status=Report.Status.SIGNED).order_by("-version"),
        to_attr="signed_reports",
    )


@_perms()
def patient(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Every study of the patient the user may see, newest first (404 for a patient the user may not see).

    Where an emergency access leads: it is the only page that lists a
    patient's studies whatever their report's state.
    """
    principal = access.principal_for_request(request)
    person = (
        Patient.objects.filter(pk=pk)
        .filter(Q(pk__in=access.patients_visible(principal).values("pk")) | Q(pk__in=sorted(principal.patient_ids)))
        .first()
    )
    if person is None:
        raise Http404(_("Il paziente richiesto non esiste o non è accessibile."))
    studies = list(
        access.studies_visible(principal)
        .filter(patient=person)
        .select_related("facility")
        .prefetch_related(_signed_reports())
        .order_by(F("study_date").desc(nulls_last=True), "-pk")
    )
    for item in studies:
        item.open_url = reverse("reporting:study", args=[item.pk])  # type: ignore[attr-defined]  # for the template
    audit_record(
        action="reporting.patient.view",
        user=request.user,
        patient=person,
        source=_source(request),
        detail={"studies": [item.study_instance_uid for item in studies]},
    )
    return render(
        request,
        "archive/reporting/patient.html",
        {
            "patient": person,
            "studies": studies,
            **_emergency_context(request, person, back=reverse("reporting:patient", args=[person.pk])),
        },
    )


def _study_url(study: Study) -> str:
    return reverse("reporting:study", args=[study.pk]) + "#referto"


@_perms("archive.add_report")
@require_POST
def report_start(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    study_obj = _study_for(request, pk)
    try:
        reports.report_draft_start(study=study_obj, user=request.user, source=_source(request))
    except reports.ReportError as err:
        return _render_study(request, study_obj, error=err.message, status=http_status(err))
    messages.success(request, _("Hai preso in carico lo studio: la bozza del referto è tua."))
    return redirect(_study_url(study_obj))


def _refuse_signed(request: AuthenticatedHttpRequest, report: Report, action: str) -> HttpResponse:
    audit_record(
        action=action,
        outcome=AuditEvent.Outcome.DENIED,
        user=request.user,
        study=report.study,
        source=_source(request),
        detail={"report": report.pk, "version": report.version, "reason": "signed"},
    )
    message = _(
        "Il referto (versione %(v)d) è firmato e non si può modificare: per cambiarlo redigi una rettifica "
        "o un'integrazione."
    ) % {"v": report.version}
    return _render_study(request, report.study, error=message, status=409)


@_perms("archive.change_report")
@require_POST
def report_save(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    report = _report_for(request, pk)
    if report.is_signed:
        return _refuse_signed(request, report, "report.save")
    form = ReportForm(request.POST)
    if not form.is_valid():
        return _render_study(request, report.study, form=form, status=400)
    sections = form.sections()
    template: ReportTemplate | None = None
    if request.POST.get("azione") == "modello":
        # Without JavaScript the template's button saves the draft with the
        # template in the sections still empty (the script does it in the page).
        offered = texts.templates_for_study(study=report.study, booked=booked_exam(report.study_id))
        modello = request.POST.get("modello") or ""
        template = offered.filter(pk=int(modello)).first() if modello.isdigit() else None
        if template is None:
            return _render_study(
                request, report.study, form=form, error=_("Il modello scelto non esiste per questo esame."), status=400
            )
        sections = texts.template_fill(sections=sections, template=template)
    exposure: dict[str, Any] = {}
    if "exposure" in request.POST:
        # The section is on the page (an ionising procedure): its text and the check.
        exposure = {
            "exposure": form.cleaned_data["exposure"],
            "exposure_confirmed": bool(form.cleaned_data["exposure_confirmed"]),
        }
        if request.POST.get("azione") == "dose":
            text, data = reports.report_exposure_propose(study=report.study)
            exposure = {"exposure": text, "exposure_confirmed": False, "exposure_data": data}
    try:
        saved = reports.report_save(
            report=report,
            user=request.user,
            revision=form.cleaned_data["revision"],
            source=_source(request),
            **{**sections, **exposure},
        )
    except reports.ReportConflict as err:
        current = Report.objects.filter(pk=report.pk).select_related("author", "updated_by").first()
        if current is None:
            messages.error(request, _("La bozza non esiste più: è stata abbandonata."))
            return redirect(_study_url(report.study))
        if current.is_signed:
            return _refuse_signed(request, current, "report.save")
        # The user's text stays in the form; it now names the saved revision, so
        # saving again, after reading the version saved by the colleague (or by
        # the user's other window) below, is a choice.
        data = request.POST.copy()
        data["revision"] = str(current.revision)
        kept = ReportForm(data)
        kept.is_valid()
        return _render_study(request, report.study, form=kept, error=err.message, conflict=current, status=409)
    except reports.ReportError as err:
        return _render_study(request, report.study, form=form, error=err.message, status=http_status(err))
    if request.POST.get("azione") == "firma":
        return redirect("reporting:report_sign", pk=saved.pk)
    if template is not None:
        messages.success(
            request, _("Modello «%(name)s» inserito nelle sezioni vuote e bozza salvata.") % {"name": template.name}
        )
        return redirect(_study_url(report.study))
    messages.success(
        request, _("Bozza salvata alle %(t)s.") % {"t": timezone.localtime(saved.updated_at).strftime("%H:%M")}
    )
    return redirect(_study_url(report.study))


@_perms("archive.change_report")
@require_POST
def report_discard(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    report = _report_for(request, pk)
    if report.is_signed:
        return _refuse_signed(request, report, "report.discard")
    try:
        reports.report_discard(report=report, user=request.user, source=_source(request))
    except reports.ReportError as err:
        messages.error(request, err.message)
    else:
        messages.success(request, _("Bozza abbandonata: lo studio torna da refertare."))
    return redirect(_study_url(report.study))


@_perms("archive.sign_report")
@require_http_methods(["GET", "POST"])
def report_sign(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    report = _report_for(request, pk)
    if report.is_signed:
        if request.method == "POST":
            return _refuse_signed(request, report, "report.sign")
        messages.info(request, _("Questo referto è già firmato."))
        return redirect("reporting:report_detail", pk=report.pk)
    profile = getattr(request.user, "staff_profile", None)
    needs_otp = bool(profile is not None and profile.totp_secret)
    status = 200
    if request.method == "POST":
        form = SignForm(request.POST, needs_otp=needs_otp)
        if form.is_valid():
            data = form.cleaned_data
            try:
                signed = reports.report_sign(
                    report=report,
                    user=request.user,
                    password=data["password"],
                    otp=data.get("otp", ""),
                    revision=data["revision"],
                    source=_source(request),
                )
            except reports.ReportError as err:
                form.add_error("password" if err.code == "reauth" else None, err.message)
            else:
                messages.success(
                    request,
                    _("Referto firmato alle %(t)s da %(who)s.")
                    % {"t": timezone.localtime(signed.signed_at).strftime("%H:%M"), "who": signed.signer_name},
                )
                return redirect("reporting:report_detail", pk=signed.pk)
        status = 400
    else:
        form = SignForm(initial={"revision": report.revision}, needs_otp=needs_otp)
    _audit_report_view(request, report, page="sign")
    return render(
        request,
        "archive/reporting/sign.html",
        {
            "report": report,
            "study": report.study,
            "patient": report.study.patient,
            "booked": booked_exam(report.study_id),
            "form": form,
        },
        status=status,
    )


def _audit_report_view(request: AuthenticatedHttpRequest, report: Report, **detail: Any) -> None:
    audit_record(
        action="report.view",
        user=request.user,
        study=report.study,
        source=_source(request),
        detail={"report": report.pk, "version": report.version, **detail},
    )


@_perms()
def report_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    report = _report_for(request, pk)
    check = None
    if report.is_signed:
        try:
            check = reports.report_verify(report=report)
        except reports.ReportError as err:
            logger.error("report %s: %s", report.pk, err.message)
            messages.error(request, err.message)
    _audit_report_view(request, report)
    versions = report.study.reports.filter(status=Report.Status.SIGNED).order_by("-version")
    return render(
        request,
        "archive/reporting/report.html",
        {
            "report": report,
            "study": report.study,
            "patient": report.study.patient,
            "booked": booked_exam(report.study_id),
            "check": check,
            "versions": versions,
        },
    )


_FILES = {
    "pdf": ("application/pdf", "inline", "pdf"),
    "p7m": ("application/pkcs7-signature", "attachment", "p7m"),
}


@_perms()
def report_file(request: AuthenticatedHttpRequest, pk: int, which: str) -> HttpResponse:
    report = _report_for(request, pk)
    if which not in _FILES or not report.is_signed:
        raise Http404(_("Solo i referti firmati hanno un PDF e una firma."))
    media_type, disposition, extension = _FILES[which]
    try:
        data = reports.report_file(report=report, which=which)
    except reports.ReportError as err:
        audit_record(
            action="report.download",
            outcome=AuditEvent.Outcome.FAILURE,
            user=request.user,
            study=report.study,
            source=_source(request),
            detail={"report": report.pk, "version": report.version, "file": which, "error": err.message},
        )
        return render(
            request,
            "archive/reporting/file_error.html",
            {"report": report, "study": report.study, "message": err.message},
            status=503,
        )
    audit_record(
        action="report.download",
        user=request.user,
        study=report.study,
        source=_source(request),
        detail={"report": report.pk, "version": report.version, "file": which},
    )
    name = f"referto-{report.study.accession_number or report.study.pk}-v{report.version}.{extension}"
    response = HttpResponse(data, content_type=media_type)
    response["Content-Disposition"] = content_disposition(name, as_attachment=disposition == "attachment")
    return response


@_perms("archive.add_report")
@require_POST
def report_amend(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    report = _report_for(request, pk)
    form = AmendForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Scegli una rettifica o un'integrazione."))
        return redirect(_study_url(report.study))
    try:
        draft = reports.report_amend(
            report=report, user=request.user, kind=form.cleaned_data["kind"], source=_source(request)
        )
    except reports.ReportError as err:
        return _render_study(request, report.study, error=err.message, status=http_status(err))
    messages.success(
        request,
        _("Nuova versione %(v)d (%(kind)s) in bozza: scrivila e firmala.")
        % {"v": draft.version, "kind": draft.get_kind_display()},
    )
    return redirect(_study_url(report.study))


# --- the radiologist's own phrases ----------------------------------------------------------


@_perms("archive.change_report")
@require_http_methods(["GET", "POST"])
def phrases(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The user's standard phrases: the list, a form to add one, and to change one (``?frase=pk``)."""
    own = texts.phrases_of(user=request.user)
    editing = None
    wanted = request.POST.get("frase") or request.GET.get("frase")
    if wanted:
        editing = own.filter(pk=wanted if str(wanted).isdigit() else 0).first()
        if editing is None:
            raise Http404
    status = 200
    if request.method == "POST":
        form = PhraseForm(request.POST)
        if form.is_valid():
            try:
                texts.phrase_save(
                    user=request.user,
                    title=form.cleaned_data["title"],
                    text=form.cleaned_data["text"],
                    phrase=editing,
                )
            except ValidationError as err:
                form.add_error(None, err)
            else:
                messages.success(request, _("Frase «%(title)s» salvata.") % {"title": form.cleaned_data["title"]})
                return redirect("reporting:phrases")
        status = 400
    else:
        form = PhraseForm(initial={"title": editing.title, "text": editing.text} if editing else None)
    return render(
        request,
        "archive/reporting/phrases.html",
        {"phrases": own, "form": form, "editing": editing},
        status=status,
    )


@_perms("archive.change_report")
@require_POST
def phrase_delete(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    phrase = get_object_or_404(ReportPhrase, pk=pk, owner=request.user)
    texts.phrase_delete(user=request.user, phrase=phrase)
    messages.success(request, _("Frase «%(title)s» eliminata.") % {"title": phrase.title})
    return redirect("reporting:phrases")
