"""The citizen's zips: requested, built once per content (at once or by a
Celery task), served while kept, then purged.

:func:`package_request` finds or creates the :class:`~portal.models.DownloadPackage`
for the study's current content (its :func:`study_fingerprint`): two
requests share one package. :func:`media_build` writes it with
:mod:`portal.media` under ``PACS_PORTAL_PACKAGE_DIR``, reporting progress on
the row. A builder that died (a killed worker) stops renewing
``heartbeat_at``; after :data:`STALE` another may take the package over
(:mod:`kernel.leases`), and the zip is written under a temporary name, so
nothing half-written is served.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from archive import access
from archive.models import Instance, Study
from archive.storage import tiers as storage
from booking.models import Booking
from kernel import leases

from . import media
from .models import DownloadPackage, Notification

logger = logging.getLogger(__name__)

STALE = dt.timedelta(minutes=5)
PROGRESS_EVERY = 1.0  # seconds between progress writes
LIVE = (DownloadPackage.Status.QUEUED, DownloadPackage.Status.RUNNING, DownloadPackage.Status.READY)
_WRITERS: dict[str, Callable[..., media.PackageInfo]] = {
    DownloadPackage.Kind.DICOM: media.dicom_media_zip_write,
    DownloadPackage.Kind.JPEG: media.jpeg_zip_write,
}


def package_dir() -> Path:
    path = Path(settings.PACS_PORTAL_PACKAGE_DIR)
    storage.makedirs_durable(path)  # 0700: the zips are patient data
    return path


def study_fingerprint(study: Study) -> tuple[str, int, int]:
    """(hash of the study's instances and their SHA-256, their bytes, their count)."""
    rows = (
        Instance.objects.filter(series__study=study)
        .order_by("sop_instance_uid")
        .values_list("sop_instance_uid", "sha256", "size")
    )
    digest = hashlib.sha256()
    count = size = 0
    for uid, sha, nbytes in rows:
        digest.update(f"{uid}:{sha}\n".encode())
        count += 1
        size += nbytes
    return digest.hexdigest(), size, count


def package_file_present(package: DownloadPackage) -> bool:
    return bool(package.path) and Path(package.path).is_file() and Path(package.path).stat().st_size == package.size


def package_request(
    *, study: Study, kind: str, user: Any, principal: access.Principal | None = None
) -> tuple[DownloadPackage, bool]:
    """The package of ``study``'s current content as ``kind``; (package, created).

    ``principal``: the requester's, as the access policy sees them (computed
    from ``user`` when not given).

    Raises
    ------
    archive.access.StudyNotVisible
        The requester may not see the study (the pages check first; this is
        the service's own guard).
    """
    if kind not in _WRITERS:
        raise ValueError(f"unknown package kind {kind!r}")
    principal = principal or access.principal_for_user(user)
    verdict = access.study_verdict(principal, study)
    if verdict is not access.Verdict.VISIBLE:
        raise access.StudyNotVisible(verdict)
    fingerprint, size, count = study_fingerprint(study)
    for _attempt in range(3):
        existing = DownloadPackage.objects.filter(
            study=study, kind=kind, fingerprint=fingerprint, status__in=LIVE
        ).first()
        if existing is not None:
            if existing.status == DownloadPackage.Status.READY and not package_file_present(existing):
                DownloadPackage.objects.filter(pk=existing.pk).update(status=DownloadPackage.Status.PURGED)
                continue
            return existing, False
        try:
            with transaction.atomic():
                package = DownloadPackage.objects.create(
                    study=study,
                    kind=kind,
                    fingerprint=fingerprint,
                    total_bytes=size,
                    instance_count=count,
                    requested_by=user if getattr(user, "is_authenticated", False) else None,
                )
            return package, True
        except IntegrityError:  # requested at the same moment by someone else
            continue
    raise RuntimeError(f"no package could be registered for study {study.pk}")


def builds_inline(package: DownloadPackage) -> bool:
    """Whether the request should wait for the zip (a small study) rather than queue it."""
    return package.total_bytes <= settings.PACS_PORTAL_INLINE_BYTES


def _claim(package_pk: int) -> DownloadPackage | None:
    """Mark the package running for this builder; None when someone else builds it or it is done."""
    now = timezone.now()
    claimed = leases.lease_claim(
        DownloadPackage.objects.filter(
            pk=package_pk, status__in=(DownloadPackage.Status.QUEUED, DownloadPackage.Status.RUNNING)
        ),
        stale_after=STALE,
        free=Q(status=DownloadPackage.Status.QUEUED),  # a running one only once its builder is stale
        now=now,
        status=DownloadPackage.Status.RUNNING,
        started_at=now,
        done_bytes=0,
    )
    return DownloadPackage.objects.filter(pk=package_pk).first() if claimed else None


def media_build(*, package_pk: int) -> DownloadPackage | None:
    """Write the package's zip and mark it ready (or failed); None when another builder has it."""
    package = _claim(package_pk)
    if package is None:
        return DownloadPackage.objects.filter(pk=package_pk).first()
    path = package_dir() / f"{package.pk:08d}-{package.kind}-{package.fingerprint[:12]}.zip"
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            leases.lease_renew(DownloadPackage.objects.filter(pk=package.pk), done_bytes=done, total_bytes=total)

    try:
        info = _WRITERS[package.kind](study=package.study, path=path, progress=progress)
    except media.MediaError as exc:
        logger.error("package %s of study %s failed: %s", package.pk, package.study_id, exc)
        DownloadPackage.objects.filter(pk=package.pk).update(
            status=DownloadPackage.Status.FAILED, error=str(exc)[:2000]
        )
        package.refresh_from_db()
        return package
    DownloadPackage.objects.filter(pk=package.pk).update(
        status=DownloadPackage.Status.READY,
        path=str(info.path),
        size=info.size,
        done_bytes=package.total_bytes,
        ready_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    package.refresh_from_db()
    return package


def package_notify(*, package: DownloadPackage, user: Any, booking: Booking) -> Notification | None:
    """Tell ``user`` the package is ready (or failed): a portal notification, and an e-mail when they have one.

    Nobody is told about an exam they no longer see (a delegation that ended
    while the zip was being made): None.
    """
    if user is None:
        return None
    if booking.patient_id not in access.principal_for_user(user).patient_ids:
        logger.info("package %s ready, but user %s no longer sees booking %s", package.pk, user.pk, booking.pk)
        return None
    what = package.get_kind_display()
    if package.status == DownloadPackage.Status.READY:
        message = _("Il pacchetto «%(what)s» dell'esame %(exam)s del %(date)s è pronto da scaricare.")
    else:
        message = _("Non è stato possibile preparare il pacchetto «%(what)s» dell'esame %(exam)s del %(date)s.")
    message = message % {
        "what": what,
        "exam": booking.procedure.description,
        "date": timezone.localtime(booking.scheduled_at).strftime("%d/%m/%Y"),
    }
    notification = Notification.objects.create(user=user, booking=booking, message=message)
    if user.email:
        try:
            send_mail(_("Fascicolo Sanitario Elettronico: pacchetto pronto"), message, None, [user.email])
        except Exception:  # noqa: BLE001 - the portal notification stands; the mail is a courtesy
            logger.exception("notification mail to user %s not sent", user.pk)
    return notification


def package_build_notify(
    *, package_pk: int, user_pk: int | None = None, booking_pk: int | None = None
) -> DownloadPackage | None:
    """Build the package (:func:`media_build`), then, once it is finished (ready or
    failed), tell the user who asked for it from that booking (:func:`package_notify`).

    None when there is no such package. A package another builder holds comes
    back queued or running and nobody is told: the caller looks again later.
    """
    from django.contrib.auth import get_user_model

    package = media_build(package_pk=package_pk)
    finished = (DownloadPackage.Status.READY, DownloadPackage.Status.FAILED)
    if package is None or package.status not in finished or not (user_pk and booking_pk):
        return package
    user = get_user_model().objects.filter(pk=user_pk).first()
    booking = Booking.objects.filter(pk=booking_pk).select_related("procedure").first()
    if user is not None and booking is not None:
        package_notify(package=package, user=user, booking=booking)
    return package


def packages_purge(*, now: dt.datetime | None = None) -> int:
    """Delete the files of packages older than ``PACS_PORTAL_PACKAGE_HOURS`` and leftover temporary files; how many."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(hours=settings.PACS_PORTAL_PACKAGE_HOURS)
    purged = 0
    for package in DownloadPackage.objects.filter(status=DownloadPackage.Status.READY, ready_at__lt=cutoff):
        Path(package.path).unlink(missing_ok=True)
        DownloadPackage.objects.filter(pk=package.pk).update(status=DownloadPackage.Status.PURGED)
        purged += 1
    limit = time.time() - STALE.total_seconds() * 4
    for leftover in package_dir().glob(".*.part"):
        if leftover.stat().st_mtime < limit:
            leftover.unlink(missing_ok=True)
    return purged
