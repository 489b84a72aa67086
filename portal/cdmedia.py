"""The CD of an exam for the patient who chose CD delivery (IHE PDI, issue 20).

When a report version is signed and the booking's current choice is CD
(:class:`booking.models.DistributionChoice`), :func:`medium_make` writes the ISO
9660 image of an IHE PDI medium (RAD TF-3 4.47) with :func:`portal.media.dicom_media_iso_write`,
the same file-set as the citizen's zip::

    DICOMDIR            the Media Storage Directory (PS3.10), in the root
    README.TXT          in Italian: what is on the disc, how to open it, the facility
    INDEX.HTM           the same, for a browser (IHE PDI's entry page)
    DICOM/S0001/I0001   the instances, byte for byte as stored
    REFERTO/V001.PDF    each signed version in force: the PDF and its detached
    REFERTO/V001.P7M    CAdES signature (.p7m), byte for byte as signed

Every name is ISO 9660 level 1 (8.3, upper case; DICOM file IDs at most 8
characters per component, no extension). The report is "other content", kept
out of ``DICOM/`` as IHE PDI asks. No viewer is put on the disc (IHE PDI makes
it optional): the README names free viewers instead.

The image goes to ``PACS_CD_MEDIA_DIR`` under a temporary name, renamed when
complete; the CUP's page (:mod:`portal.cd_views`) lists the media to burn, serves
the image and records the hand-over. A newer signed version supersedes the
media not yet handed over; a rejection note (IOCM) makes ready media stale
and :func:`media_stale_on_rejection` has them made again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone
from django.utils.translation import gettext as _

from archive import access
from archive.models import Report, Study
from archive.reporting import services as reports
from archive.storage import tiers as storage
from booking.models import Booking, DistributionChoice, FacilityContact
from kernel.audit import audit_record

from .downloads import study_fingerprint
from .errors import PortalError
from .media import MediaError, dicom_media_iso_write
from .models import CdMedium, CdPickup

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

SYSTEM = "portal.cdmedia"
LIVE = (CdMedium.Status.PREPARING, CdMedium.Status.READY, CdMedium.Status.FAILED, CdMedium.Status.DELIVERED)
REPLACEABLE = (CdMedium.Status.PREPARING, CdMedium.Status.READY, CdMedium.Status.FAILED)
PROGRESS_EVERY = 1.0  # seconds between two writes of the progress to the database
# A medium "preparing" without news for this long lost its worker: the sweep queues it again.
STALE = dt.timedelta(minutes=10)
# A temporary file older than this is what a killed worker left: the sweep removes it.
LEFTOVER = dt.timedelta(days=1)
REPORT_FOLDER = "REFERTO"


def media_dir() -> Path:
    path = Path(settings.PACS_CD_MEDIA_DIR)
    storage.makedirs_durable(path)  # 0700: the images are patient data
    return path


def _latest_signed(study_pk: int) -> Report | None:
    return Report.objects.filter(study_id=study_pk, status=Report.Status.SIGNED).order_by("-version").first()


def versions_in_force(report: Report) -> list[Report]:
    """The signed versions a reader needs with ``report``: from the latest original or
    correction up to ``report``, with the addenda in between (a correction replaces
    what came before it; an addendum adds to it)."""
    signed = list(
        Report.objects.filter(study_id=report.study_id, status=Report.Status.SIGNED, version__lte=report.version)
        .select_related("author")
        .order_by("version")
    )
    start = 0
    for n, version in enumerate(signed):
        if version.kind in (Report.Kind.ORIGINAL, Report.Kind.CORRECTION):
            start = n
    return signed[start:]


# -- what the disc says -----------------------------------------------------------


def _name(study: Study, booking: Booking) -> str:
    return f"{booking.patient.family_name} {booking.patient.given_name}".strip() or study.patient_name.replace("^", " ")


def _facility_lines(booking: Booking) -> list[str]:
    lines = [f"{booking.facility.name}"]
    contact = FacilityContact.objects.filter(facility=booking.facility).first()
    if contact is not None:
        lines.append(contact.address)
        if contact.cup_phone:
            lines.append(
                f"Telefono del CUP: {contact.cup_phone}" + (f" ({contact.cup_hours})" if contact.cup_hours else "")
            )
    pickup = CdPickup.objects.filter(facility=booking.facility).first()
    if pickup is not None:
        lines.append(f"Ritiro dei CD: {pickup.place}" + (f", {pickup.hours}" if pickup.hours else ""))
    return lines


def _summary(booking: Booking, study: Study, versions: list[Report]) -> list[tuple[str, str]]:
    performed = study.performed_on()
    birth = booking.patient.birth_date
    return [
        ("Paziente", _name(study, booking) + (f", nato/a il {birth:%d/%m/%Y}" if birth else "")),
        ("Esame", booking.procedure.description),
        ("Data dell'esame", performed.strftime("%d/%m/%Y") if performed else "-"),
        ("Numero di prenotazione", booking.accession_number),
        (
            "Referto",
            "; ".join(
                f"versione {v.version} ({v.get_kind_display()}), firmato da {v.signer_name} "
                f"il {timezone.localtime(v.signed_at):%d/%m/%Y}"
                for v in versions
                if v.signed_at
            ),
        ),
    ]


def _report_files(versions: list[Report]) -> list[tuple[str, str]]:
    return [(f"V{v.version:03d}.PDF", f"V{v.version:03d}.P7M") for v in versions]


def readme_text(booking: Booking, study: Study, versions: list[Report], *, series: int, instances: int) -> bytes:
    """README.TXT: plain Italian for whoever holds the disc (IHE PDI asks for one in the root)."""
    lines = [
        "CD DELL'ESAME RADIOLOGICO",
        "=========================",
        "",
        *(f"{label}: {value}" for label, value in _summary(booking, study, versions)),
        f"Immagini: {instances} in {series} serie",
        "",
        "COSA CONTIENE IL DISCO",
        "- DICOMDIR e la cartella DICOM: le immagini originali dell'esame, in qualità",
        "  diagnostica, nel formato DICOM (profilo IHE PDI, contenuto «solo DICOM»).",
        f"- La cartella {REPORT_FOLDER}: il referto firmato digitalmente, in PDF, e la sua",
        "  firma digitale (file .P7M, CAdES) che ne prova l'autenticità.",
        "- INDEX.HTM: questa stessa guida, da aprire con il browser.",
        "",
        "COME APRIRLO",
        "- Il referto: aprire il file PDF nella cartella REFERTO con qualsiasi lettore PDF.",
        "  La firma (.P7M) si verifica con i programmi di verifica della firma digitale.",
        "- Le immagini: aprire il file DICOMDIR con un visualizzatore DICOM (per esempio",
        "  Weasis, RadiAnt, MicroDicom, Horos, OsiriX). Sul disco non c'è un visualizzatore:",
        "  nessun programma parte da solo inserendo il disco.",
        "- Il disco si può consegnare al medico curante o a uno specialista.",
        "",
        "STRUTTURA",
        *_facility_lines(booking),
        "",
        "Prodotto dal PACS regionale.",
    ]
    return ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")


def index_html(booking: Booking, study: Study, versions: list[Report], *, series: int, instances: int) -> bytes:
    """INDEX.HTM: the README as a page, with links to the report's files."""
    e = html.escape
    rows = "".join(
        f'<tr><th scope="row">{e(k)}</th><td>{e(v)}</td></tr>' for k, v in _summary(booking, study, versions)
    )
    links = "".join(
        f'<li><a href="{REPORT_FOLDER}/{pdf}">Referto, versione {v.version} (PDF)</a> – '
        f'<a href="{REPORT_FOLDER}/{p7m}">firma digitale (P7M)</a></li>'
        for v, (pdf, p7m) in zip(versions, _report_files(versions), strict=True)
    )
    facility = "<br>".join(e(line) for line in _facility_lines(booking))
    page = f"""<!DOCTYPE html>
<html lang="it">
<head><meta charset="utf-8"><title>CD dell'esame {e(booking.accession_number)}</title></head>
<body>
<h1>CD dell'esame radiologico</h1>
<table>{rows}<tr><th scope="row">Immagini</th><td>{instances} in {series} serie</td></tr></table>
<h2>Il referto</h2>
<ul>{links}</ul>
<h2>Le immagini</h2>
<p>Le immagini originali sono nel file <code>DICOMDIR</code> e nella cartella <code>DICOM</code>, nel formato
DICOM (profilo IHE PDI, contenuto «solo DICOM»). Si aprono con un visualizzatore DICOM (per esempio Weasis,
RadiAnt, MicroDicom, Horos, OsiriX) scegliendo il file DICOMDIR. Sul disco non c'è un visualizzatore.</p>
<p>Leggere anche <a href="README.TXT">README.TXT</a>.</p>
<h2>Struttura</h2>
<p>{facility}</p>
</body>
</html>
"""
    return page.encode("utf-8")


# -- making the medium -------------------------------------------------------------


def _booking_on_cd(study_pk: int) -> tuple[Booking | None, str]:
    booking = Booking.objects.select_related("patient", "facility", "procedure").filter(study_id=study_pk).first()
    if booking is None:
        return None, "no_booking"
    if booking.status == Booking.Status.CANCELLED:
        return None, "cancelled"
    choice = booking.current_choice()
    if choice is None or choice.delivery != DistributionChoice.Delivery.CD:
        return None, "not_cd"
    return booking, ""


def medium_make(*, report_pk: int, study_pk: int) -> str:
    """Make the CD of the signed version ``report_pk`` if the booking's choice is CD; what happened.

    Idempotent: a medium ready or handed over for this version is kept; one
    that failed, or was left half-made by a lost worker, is made again. Returns
    ``ready``, ``already``, ``not_signed``, ``no_booking``, ``cancelled``,
    ``not_cd``, ``outdated`` (a newer version is signed) or ``failed``.
    """
    report = Report.objects.filter(pk=report_pk, study_id=study_pk, status=Report.Status.SIGNED).first()
    if report is None:
        return "not_signed"
    booking, reason = _booking_on_cd(study_pk)
    if booking is None:
        return reason
    latest = _latest_signed(study_pk)
    if latest is not None and latest.version > report.version:
        return "outdated"
    study = Study.objects.get(pk=study_pk)
    with transaction.atomic():
        medium = CdMedium.objects.select_for_update().filter(booking=booking, report=report, status__in=LIVE).first()
        if medium is not None and medium.status in (CdMedium.Status.READY, CdMedium.Status.DELIVERED):
            return "already"
        if medium is None:
            medium = CdMedium.objects.create(booking=booking, report=report)
        fingerprint, size, _count = study_fingerprint(study)
        CdMedium.objects.filter(pk=medium.pk).update(
            status=CdMedium.Status.PREPARING,
            fingerprint=fingerprint,
            error="",
            progress_done=0,
            progress_total=size,
            heartbeat_at=timezone.now(),
        )
    return _medium_write(medium_pk=medium.pk, booking=booking, study=study, report=report, fingerprint=fingerprint)


def _medium_write(*, medium_pk: int, booking: Booking, study: Study, report: Report, fingerprint: str) -> str:
    versions = versions_in_force(report)
    path = media_dir() / f"{booking.accession_number}-v{report.version}-{medium_pk}.iso"
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY or done >= total:
            last[0] = now
            CdMedium.objects.filter(pk=medium_pk).update(
                progress_done=done, progress_total=total, heartbeat_at=timezone.now()
            )

    try:
        files: list[tuple[tuple[str, ...], bytes]] = []
        for version, (pdf, p7m) in zip(versions, _report_files(versions), strict=True):
            files.append(((REPORT_FOLDER, pdf), reports.report_file(report=version, which="pdf")))
            files.append(((REPORT_FOLDER, p7m), reports.report_file(report=version, which="p7m")))
        series = study.series.count()
        instances = study.number_of_instances
        files.insert(0, (("README.TXT",), readme_text(booking, study, versions, series=series, instances=instances)))
        files.insert(1, (("INDEX.HTM",), index_html(booking, study, versions, series=series, instances=instances)))
        info = dicom_media_iso_write(
            study=study, path=path, volume_id=f"PDI_{booking.accession_number}", files=files, progress=progress
        )
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except (MediaError, reports.ReportError, OSError) as exc:
        logger.exception("CD of booking %s, report v%s not made", booking.accession_number, report.version)
        path.unlink(missing_ok=True)
        CdMedium.objects.filter(pk=medium_pk).update(status=CdMedium.Status.FAILED, error=str(exc)[:2000])
        return "failed"
    now = timezone.now()
    with transaction.atomic():
        CdMedium.objects.filter(pk=medium_pk).update(
            status=CdMedium.Status.READY,
            path=str(path),
            size=info.size,
            sha256=digest.hexdigest(),
            instance_count=info.instance_count,
            progress_done=info.size,
            progress_total=info.size,
            ready_at=now,
            fingerprint=fingerprint,
        )
        superseded = _supersede(booking=booking, by_pk=medium_pk, version=report.version)
        audit_record(
            action="portal.cd.make",
            system=SYSTEM,
            patient=booking.patient,
            study=study,
            detail={
                "accession_number": booking.accession_number,
                "report": report.pk,
                "version": report.version,
                "size": info.size,
                "instances": info.instance_count,
                "superseded": superseded,
            },
        )
    logger.info("CD of booking %s (report v%s) ready: %s", booking.accession_number, report.version, path)
    return "ready"


def _supersede(*, booking: Booking, by_pk: int, version: int) -> int:
    """The booking's media of earlier versions not handed over give way to ``by_pk``; their files go."""
    older = list(
        CdMedium.objects.select_for_update()
        .filter(booking=booking, report__version__lt=version, status__in=REPLACEABLE)
        .exclude(pk=by_pk)
    )
    for medium in older:
        if medium.path:
            Path(medium.path).unlink(missing_ok=True)
    CdMedium.objects.filter(pk__in=[m.pk for m in older]).update(
        status=CdMedium.Status.SUPERSEDED, superseded_by_id=by_pk
    )
    # A disc already handed over stays so; the row says which one replaces it.
    CdMedium.objects.filter(
        booking=booking, report__version__lt=version, status=CdMedium.Status.DELIVERED, superseded_by__isnull=True
    ).update(superseded_by_id=by_pk)
    return len(older)


def media_stale_on_rejection(*, study_pk: int) -> list[tuple[int, int]]:
    """A rejection note withdrew images of the study: its media of other content are stale.

    Those not handed over lose their file and become ``stale``; the
    ``(report, study)`` of each to make again is returned (the task queues
    them). Idempotent: a second run finds the media already stale.
    """
    study = Study.objects.filter(pk=study_pk).first()
    if study is None:
        return []
    fingerprint, _size, _count = study_fingerprint(study)
    with transaction.atomic():
        stale = list(
            CdMedium.objects.select_for_update()
            .filter(booking__study_id=study_pk, status__in=REPLACEABLE)
            .exclude(fingerprint=fingerprint)
        )
        for medium in stale:
            if medium.path:
                Path(medium.path).unlink(missing_ok=True)
        CdMedium.objects.filter(pk__in=[m.pk for m in stale]).update(status=CdMedium.Status.STALE)
    return sorted({(m.report_id, study_pk) for m in stale})


def media_overdue(
    *, now: dt.datetime | None = None, limit: int = reports.FOLLOWUP_SWEEP_LIMIT
) -> list[tuple[int, int]]:
    """``(report, study)`` of the latest signed versions past the grace period whose booking's
    choice is CD and that have no live medium: what a lost task (or a stale medium) left undone."""
    current = DistributionChoice.objects.filter(booking_id=OuterRef("pk")).order_by("-version").values("delivery")[:1]
    on_cd = (
        Booking.objects.filter(study_id=OuterRef("study_id"))
        .exclude(status=Booking.Status.CANCELLED)
        .annotate(delivery=Subquery(current))
        .filter(delivery=DistributionChoice.Delivery.CD)
    )
    newer = Report.objects.filter(
        study_id=OuterRef("study_id"), status=Report.Status.SIGNED, version__gt=OuterRef("version")
    )
    now = now or timezone.now()
    # Made, or being made by a worker that still gives news; a failed one is tried again.
    made = CdMedium.objects.filter(report_id=OuterRef("pk")).filter(
        Q(status__in=(CdMedium.Status.READY, CdMedium.Status.DELIVERED))
        | Q(status=CdMedium.Status.PREPARING, heartbeat_at__gte=now - STALE)
    )
    return list(
        reports.reports_signed_overdue(now=now)
        .filter(Exists(on_cd))
        .exclude(Exists(newer))
        .exclude(Exists(made))
        .values_list("pk", "study_id")[:limit]
    )


def leftovers_remove(*, now: dt.datetime | None = None) -> int:
    """Remove the temporary images (``.name.iso.*.part``) a killed worker left; how many."""
    folder = Path(settings.PACS_CD_MEDIA_DIR)
    if not folder.is_dir():
        return 0
    limit = (now or timezone.now()).timestamp() - LEFTOVER.total_seconds()
    removed = 0
    for part in folder.glob(".*.part"):
        try:
            if part.stat().st_mtime < limit:
                part.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        logger.warning("removed %d half-written CD images left by killed workers", removed)
    return removed


# -- the CUP's side ----------------------------------------------------------------


def media_principal(user: User) -> access.Principal:
    """Who asks, for the CD page: the staff rule of :mod:`archive.access`, where the CD
    permission stands in for ``archive.view_study`` (a CUP operator holds the one, not the
    other): the studies of their health authority, never one the patient hid, unless
    they hold a live emergency access for the patient. Anyone else sees nothing."""
    from .policy import policy

    principal = access.principal_for_user(user)
    if principal.kind is not access.Kind.STAFF:
        return access.NOBODY
    if principal.sees_nothing:
        principal = access.Principal(
            access.Kind.STAFF,
            name=principal.name,
            user_id=user.pk,
            authority_id=access.authority_restriction(user),
            patient_ids=frozenset(policy.emergency_patient_ids(user)),
        )
    return principal


def media_visible_q(user: User) -> Q:
    """The media a member of the CUP may see (:func:`media_principal`)."""
    return access.visible_q(media_principal(user), "booking__study__")


def media_to_burn(*, user: User) -> QuerySet[CdMedium]:
    """The media the CUP has to burn or hand over (preparing, ready, failed), newest first."""
    return (
        CdMedium.objects.filter(media_visible_q(user), status__in=REPLACEABLE)
        .select_related("booking__patient", "booking__facility", "booking__procedure", "report")
        .order_by("-created_at", "-id")
    )


def media_delivered(*, user: User, limit: int = 20) -> list[CdMedium]:
    return list(
        CdMedium.objects.filter(media_visible_q(user), status=CdMedium.Status.DELIVERED)
        .select_related("booking__patient", "booking__facility", "booking__procedure", "report", "delivered_by")
        .order_by("-delivered_at")[:limit]
    )


def medium_for(*, user: User, pk: int) -> CdMedium:
    """The medium ``pk`` if ``user`` may see it; otherwise as if it did not exist."""
    medium = (
        CdMedium.objects.filter(media_visible_q(user), pk=pk)
        .select_related("booking__patient", "booking__facility", "booking__study", "report")
        .first()
    )
    if medium is None:
        raise PortalError(_("CD non trovato."), code="not_found")
    return medium


def medium_download_audit(*, medium: CdMedium, user: User, source: str = "") -> None:
    audit_record(
        action="portal.cd.download",
        user=user,
        patient=medium.booking.patient,
        study=medium.booking.study,
        source=source,
        detail={"accession_number": medium.booking.accession_number, "medium": medium.pk, "size": medium.size},
    )


def medium_file_ok(medium: CdMedium) -> bool:
    return bool(medium.path) and Path(medium.path).is_file() and Path(medium.path).stat().st_size == medium.size


def medium_deliver(*, medium: CdMedium, user: User, source: str = "", now: dt.datetime | None = None) -> CdMedium:
    """Record that the CUP handed the burned disc of ``medium`` to the patient.

    Raises
    ------
    PortalError
        ``state``: the medium is not ready (still in preparation, failed,
        replaced by a newer version, or already handed over).
    """
    now = now or timezone.now()
    with transaction.atomic():
        locked = CdMedium.objects.select_for_update().get(pk=medium.pk)
        if locked.status != CdMedium.Status.READY:
            raise PortalError(
                _("Questo CD non si può segnare come consegnato: è «%(status)s».")
                % {"status": locked.get_status_display()},
                code="state",
            )
        locked.status = CdMedium.Status.DELIVERED
        locked.delivered_at = now
        locked.delivered_by = user
        locked.save(update_fields=["status", "delivered_at", "delivered_by"])
        audit_record(
            action="portal.cd.deliver",
            user=user,
            patient=medium.booking.patient,
            study=medium.booking.study,
            source=source,
            detail={
                "accession_number": medium.booking.accession_number,
                "medium": medium.pk,
                "version": medium.report.version,
                "sha256": locked.sha256,
            },
        )
    return locked
