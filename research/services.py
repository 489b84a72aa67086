"""Anonymised exports for teaching and research: projects, pseudonyms, the zip.

The order of work of one export:

1. :func:`export_request` (the researcher's page): the studies are chosen
   through the access policy with the requester's principal (a concealed
   study, or one of another health authority, does not exist for them: the
   answer is the same as for a study that is not in the archive), the row is
   written with the studies, the request is audited with the patients it
   touches, and :func:`export_build` is queued after commit.
2. :func:`export_build` (a Celery task): the row is claimed with one
   conditional update; the studies are checked again with the requester's
   principal (a study concealed meanwhile is left out); each instance is
   read from its nearest copy, flagged if its pixels may carry burned-in
   text (:func:`research.profile.burned_in_reason`: left out and listed in
   the summary), de-identified with the project's pseudonym and date shift
   (:func:`research.profile.dataset_deidentify`) and written into a zip
   under a temporary name, renamed at the end. The export is audited with
   every patient it touched.

The same patient gets the same pseudonym and date shift in every export of a
project (:func:`key_for`), and the same original UID the same new UID
(:func:`research.profile.uid_for` with the project's secret).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import secrets
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from archive import access
from archive.models import Instance, Patient, Study
from archive.storage import retrieve
from archive.storage import tiers as storage
from kernel import tasknames
from kernel.audit import audit_record
from kernel.errors import Invalid, NotFound
from kernel.models import AuditEvent

from . import profile
from .models import Export, ExportProject, ProjectSecret, PseudonymKey

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 1.0  # seconds between progress writes
# A queued export no worker took, or a build that stopped renewing its heartbeat, after this long.
STALE = dt.timedelta(minutes=10)
# A patient's dates move back by 30 days to about two years; never by zero.
SHIFT_MIN_DAYS, SHIFT_MAX_DAYS = 30, 730
SUMMARY = "LEGGIMI.txt"
BURNED_IN_REASONS = {
    "stated": "Burned In Annotation = YES",
    "document": "documento incapsulato (es. PDF): il testo è il contenuto",
    "secondary_capture": "cattura secondaria: testo probabile nell'immagine",
    "ultrasound": "ecografia: testo probabile nell'immagine",
    "video": "video: testo probabile nei fotogrammi",
    "screen_capture": "XA/RF derivata o cattura dello schermo: testo probabile nell'immagine",
}


class ExportError(Invalid):
    """The export cannot be made as asked (no study, a bad criterion)."""


def export_dir() -> Path:
    path = Path(settings.PACS_RESEARCH_EXPORT_DIR)
    storage.makedirs_durable(path)  # 0700: even anonymised, the zips stay private to the archive
    return path


# --- projects and keys -------------------------------------------------------------


def project_create(
    *,
    user: Any,
    code: str,
    title: str,
    purpose: str,
    retain_dates_modified: bool = True,
    retain_device_identity: bool = False,
    retain_patient_characteristics: bool = False,
    clean_descriptors: bool = False,
    pixel_regions: list[dict[str, Any]] | None = None,
) -> ExportProject:
    """A new project with its own secret (the key of its UIDs); audited."""
    with transaction.atomic():
        project = ExportProject.objects.create(
            code=code.upper(),
            title=title,
            purpose=purpose,
            retain_dates_modified=retain_dates_modified,
            retain_device_identity=retain_device_identity,
            retain_patient_characteristics=retain_patient_characteristics,
            clean_descriptors=clean_descriptors,
            pixel_regions=pixel_regions or [],
            created_by=user,
        )
        ProjectSecret.objects.create(project=project, secret=secrets.token_hex(32))
        audit_record(
            action="research.project.create",
            user=user,
            detail={"project": project.code, "options": project_options(project)},
        )
    return project


def project_options(project: ExportProject) -> list[str]:
    chosen = [name for name in profile.METHOD_CODES if getattr(project, name, False)]
    return chosen + (["clean_pixel_data"] if project.pixel_regions else [])


def project_regions(project: ExportProject) -> list[profile.PixelRegion]:
    return [
        profile.PixelRegion(
            modality=str(r["modality"]),
            columns=int(r["columns"]),
            rows=int(r["rows"]),
            boxes=tuple((int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in r["boxes"]),
        )
        for r in project.pixel_regions
    ]


def key_for(*, project: ExportProject, patient: Patient, study: Study) -> PseudonymKey:
    """The project's pseudonym of ``patient``: the one it already has, or a new one (with its date shift).

    Two exports building at once may both find none: the unique constraints
    make one of them lose, and it reads the winner's row.
    """
    found = PseudonymKey.objects.filter(project=project, patient=patient).first()
    if found is not None:
        return found
    for _attempt in range(5):
        number = PseudonymKey.objects.filter(project=project).count() + 1
        shift = -(SHIFT_MIN_DAYS + secrets.randbelow(SHIFT_MAX_DAYS - SHIFT_MIN_DAYS + 1))
        try:
            with transaction.atomic():
                return PseudonymKey.objects.create(
                    project=project,
                    patient=patient,
                    pseudonym=f"{project.code}-{number:05d}",
                    codice_fiscale=patient.codice_fiscale or "",
                    original_patient_id=study.dicom_patient_id,
                    original_issuer=study.issuer_of_patient_id,
                    date_shift_days=shift,
                )
        except IntegrityError:
            found = PseudonymKey.objects.filter(project=project, patient=patient).first()
            if found is not None:
                return found
    raise ExportError(f"no pseudonym could be assigned in project {project.code}")


# --- choosing the studies ---------------------------------------------------------


def studies_select(*, principal: access.Principal, criteria: dict[str, Any]) -> QuerySet[Study]:
    """The studies ``criteria`` name that ``principal`` may see (the access policy's condition).

    ``criteria``: ``study_uid`` (one study), or any of ``patient`` (codice
    fiscale or PatientID), ``date_from``/``date_to`` (ISO dates), ``modality``,
    ``facility`` (its code). At least one is needed: an export of "everything"
    is not a query.
    """
    q = Q()
    if criteria.get("study_uid"):
        q &= Q(study_instance_uid=str(criteria["study_uid"]).strip())
    if criteria.get("patient"):
        who = str(criteria["patient"]).strip().upper()
        q &= Q(patient__codice_fiscale=who) | Q(dicom_patient_id=who)
    for key, lookup in (("date_from", "study_date__gte"), ("date_to", "study_date__lte")):
        if criteria.get(key):
            try:
                q &= Q(**{lookup: dt.date.fromisoformat(str(criteria[key]))})
            except ValueError as exc:
                raise ExportError(f"{key}: not a date ({criteria[key]!r})", code="bad_date") from exc
    if criteria.get("modality"):
        q &= Q(modalities_in_study__contains=str(criteria["modality"]).strip().upper())
    if criteria.get("facility"):
        q &= Q(facility__code=str(criteria["facility"]).strip().upper())
    if not q:
        raise ExportError("no criterion", code="no_criteria")
    base = Study.objects.filter(q).select_related("patient")
    return access.studies_visible(principal, base).order_by("study_date", "pk")


def export_request(*, project: ExportProject, user: Any, criteria: dict[str, Any], source: str = "") -> Export:
    """Record an export of the studies ``criteria`` name that ``user`` may see, and queue its build.

    Raises
    ------
    NotFound
        No study matches that the user may see: a concealed study or one of
        another authority answers exactly as a study that is not there.
    ExportError
        No criterion, or a malformed one.
    """
    principal = access.principal_for_user(user)
    studies = list(studies_select(principal=principal, criteria=criteria))
    if not studies:
        audit_record(
            action="research.export.request",
            outcome=AuditEvent.Outcome.DENIED,
            user=user,
            source=source,
            detail={"project": project.code, "criteria": criteria, "reason": "no_study"},
        )
        raise NotFound("no study", code="no_study")
    with transaction.atomic():
        export = Export.objects.create(project=project, requested_by=user, criteria=criteria)
        export.studies.set(studies)
        audit_record(
            action="research.export.request",
            user=user,
            source=source,
            detail={"project": project.code, "export": export.pk, "studies": len(studies)},
            patients=[s.patient_id for s in studies],
        )
        transaction.on_commit(lambda: _build_enqueue(export.pk))
    return export


def _build_enqueue(export_pk: int) -> None:
    # By name (kernel.tasknames), as booking queues its tasks: the tasks import this module.
    from celery import current_app

    try:
        current_app.send_task(tasknames.RESEARCH_EXPORT_BUILD, args=[export_pk])
    except Exception:
        # The row stays queued; exports_overdue finds it and the sweep queues it again.
        logger.exception("build of research export %s not queued", export_pk)


# --- the build ----------------------------------------------------------------------


def _claim(export_pk: int) -> Export | None:
    claimed = Export.objects.filter(pk=export_pk, status=Export.Status.QUEUED).update(
        status=Export.Status.RUNNING, heartbeat_at=timezone.now()
    )
    if claimed != 1:
        return None  # another worker got there first, or it is finished
    return Export.objects.select_related("project", "project__secret", "requested_by").get(pk=export_pk)


def _identifying_words(study: Study, patient: Patient) -> tuple[str, ...]:
    words = [
        patient.family_name,
        patient.given_name,
        patient.codice_fiscale or "",
        study.dicom_patient_id,
        study.accession_number,
        study.study_id,
        *str(study.patient_name).replace("^", " ").split(),
    ]
    return tuple(w for w in words if w)


def export_build(*, export_pk: int) -> Export | None:
    """Build the zip of one export (idempotent: a finished or taken export is left alone)."""
    export = _claim(export_pk)
    if export is None:
        return None
    try:
        _build(export)
    except Exception as exc:
        logger.exception("research export %s failed", export.pk)
        Export.objects.filter(pk=export.pk).update(
            status=Export.Status.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        raise
    export.refresh_from_db()
    return export


def _build(export: Export) -> None:
    project = export.project
    user = export.requested_by
    principal = access.principal_for_user(user)
    asked = list(export.studies.select_related("patient").order_by("pk"))
    # Checked again: a study concealed (or moved out of reach) since the request is left out.
    visible_ids = set(access.studies_visible(principal, export.studies.all()).values_list("pk", flat=True))
    studies = [s for s in asked if s.pk in visible_ids]
    instances = list(
        retrieve.instances_with_copies(
            Instance.objects.filter(series__study__in=studies).select_related("series__study__patient", "facility")
        ).order_by("series__study_id", "series__series_number", "instance_number", "pk")
    )
    Export.objects.filter(pk=export.pk).update(total=len(instances))
    secret = project.secret.secret.encode()
    keys: dict[int, PseudonymKey] = {}
    excluded: list[dict[str, str]] = []
    written = 0
    last = time.monotonic()
    path = export_dir() / f"export-{project.code}-{export.pk}.zip"
    storage.makedirs_durable(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "w+b") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                for done, instance in enumerate(instances, start=1):
                    study = instance.series.study
                    patient = study.patient
                    key = keys.get(patient.pk)
                    if key is None:
                        key = keys[patient.pk] = key_for(project=project, patient=patient, study=study)
                    member = _instance_member(
                        instance=instance, project=project, key=key, secret=secret, study=study, patient=patient
                    )
                    if isinstance(member, str):
                        excluded.append(
                            {
                                "pseudonym": key.pseudonym,
                                "uid": profile.uid_for(instance.sop_instance_uid, secret=secret),
                                "modality": instance.series.modality,
                                "reason": member,
                            }
                        )
                    else:
                        zf.writestr(member[0], member[1])
                        written += 1
                    if time.monotonic() - last >= PROGRESS_EVERY:
                        Export.objects.filter(pk=export.pk).update(done=done, heartbeat_at=timezone.now())
                        last = time.monotonic()
                summary = {
                    "project": project.code,
                    "options": project_options(project),
                    "table": profile.TABLE_EDITION,
                    "studies": len(studies),
                    "left_out_studies": len(asked) - len(studies),
                    "patients": len(keys),
                    "instances": written,
                    "excluded": excluded,
                }
                zf.writestr(SUMMARY, _summary_text(summary))
            fh.flush()
            os.fsync(fh.fileno())
            fh.seek(0)
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    storage.fsync_dir(path.parent)
    with transaction.atomic():
        Export.objects.filter(pk=export.pk).update(
            status=Export.Status.READY,
            done=len(instances),
            path=str(path),
            size=path.stat().st_size,
            sha256=digest.hexdigest(),
            summary=summary,
            finished_at=timezone.now(),
        )
        audit_record(
            action="research.export",
            user=user,
            system="research.export_build",
            detail={
                "project": project.code,
                "export": export.pk,
                "instances": written,
                "excluded": len(excluded),
                "sha256": digest.hexdigest(),
            },
            patients=[s.patient_id for s in studies],
        )


def _instance_member(
    *, instance: Instance, project: ExportProject, key: PseudonymKey, secret: bytes, study: Study, patient: Patient
) -> tuple[str, bytes] | str:
    """The zip member (name, bytes) of one de-identified instance, or the reason it is left out."""
    with retrieve.instance_open(instance) as fh:
        try:
            ds = dcmread(fh)
        except InvalidDicomError as exc:
            raise ExportError(f"{instance.sop_instance_uid}: {exc}") from exc
    reason = profile.burned_in_reason(ds)
    cleaned = False
    if reason is not None:
        region = next((r for r in project_regions(project) if r.matches(ds)), None)
        if reason not in profile.CLEANABLE or region is None:
            return BURNED_IN_REASONS[reason]
        try:
            profile.pixels_clean(ds, region)
        except profile.PixelCleanError as exc:
            logger.warning("instance %s not cleaned: %s", instance.sop_instance_uid, exc)
            return f"{BURNED_IN_REASONS[reason]}; zone non oscurabili ({exc})"
        cleaned = True
    choices = profile.Choices(
        secret=secret,
        pseudonym=key.pseudonym,
        date_shift_days=key.date_shift_days,
        retain_dates_modified=project.retain_dates_modified,
        retain_device_identity=project.retain_device_identity,
        retain_patient_characteristics=project.retain_patient_characteristics,
        clean_descriptors=project.clean_descriptors,
        clean_pixel_data=cleaned,
        identifying_words=_identifying_words(study, patient),
    )
    profile.dataset_deidentify(ds, choices)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    new_study = profile.uid_for(study.study_instance_uid, secret=secret)
    new_series = profile.uid_for(instance.series.series_instance_uid, secret=secret)
    name = f"{key.pseudonym}/{new_study}/{new_series}/{ds.SOPInstanceUID}.dcm"
    return name, out.getvalue()


def _summary_text(summary: dict[str, Any]) -> str:
    lines = [
        "Esportazione anonimizzata per didattica e ricerca",
        "",
        f"Progetto: {summary['project']}",
        f"Profilo: DICOM PS3.15 Basic Application Level Confidentiality Profile (tabella E.1-1, {summary['table']})",
        "Opzioni: " + (", ".join(summary["options"]) or "nessuna"),
        f"Studi: {summary['studies']}; pazienti: {summary['patients']}; istanze: {summary['instances']}",
    ]
    if summary["left_out_studies"]:
        lines.append(f"Studi non più disponibili al richiedente, esclusi: {summary['left_out_studies']}")
    if summary["excluded"]:
        lines += ["", "Istanze escluse (possibile testo impresso nell'immagine):"]
        lines += [f"- {e['pseudonym']} {e['modality']} {e['uid']}: {e['reason']}" for e in summary["excluded"]]
    lines += ["", "Dettaglio (JSON):", json.dumps(summary, ensure_ascii=False, indent=2), ""]
    return "\n".join(lines)


def exports_overdue(*, now: dt.datetime | None = None) -> list[tuple[int]]:
    """The exports to queue again: queued for longer than :data:`STALE` (a message the broker
    lost), or running with a heartbeat older than that (a worker killed mid-zip: put back in
    the queue here with a conditional update, so that a build still alive is never taken).

    The killed build's temporary file (``.<name>.part``) is removed: the new build writes its own.
    """
    cutoff = (now or timezone.now()) - STALE
    taken_over: list[int] = []
    for export in Export.objects.filter(status=Export.Status.RUNNING, heartbeat_at__lt=cutoff):
        taken = Export.objects.filter(
            pk=export.pk, status=Export.Status.RUNNING, heartbeat_at=export.heartbeat_at
        ).update(status=Export.Status.QUEUED, done=0)
        if taken == 1:
            taken_over.append(export.pk)
            logger.warning("research export %s: its build stopped at %s, queued again", export.pk, export.heartbeat_at)
            folder = Path(settings.PACS_RESEARCH_EXPORT_DIR)
            for part in folder.glob(f".export-{export.project.code}-{export.pk}.zip.*.part"):
                part.unlink(missing_ok=True)
    due = Export.objects.filter(status=Export.Status.QUEUED, requested_at__lt=cutoff).exclude(pk__in=taken_over)
    return [(pk,) for pk in [*taken_over, *due.values_list("pk", flat=True)]]


def export_for_download(*, export_pk: int, user: Any, source: str = "") -> Export:
    """The ready export ``user`` asked for, audited as a download.

    Raises
    ------
    NotFound
        Not theirs, not ready, or its file is gone: the same answer.
    """
    export = Export.objects.filter(pk=export_pk, requested_by_id=user.pk, status=Export.Status.READY).first()
    if export is None or not export.path or not Path(export.path).is_file():
        raise NotFound("no such export")
    audit_record(
        action="research.export.download",
        user=user,
        source=source,
        detail={"project": export.project.code, "export": export.pk, "sha256": export.sha256},
        patients=export.studies.values_list("patient_id", flat=True),
    )
    return export
