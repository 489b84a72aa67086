"""Celery tasks of the portal: thin adapters over :mod:`portal.publication` and :mod:`portal.downloads`."""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError, transaction

from kernel import sweeps, tasknames

from . import cdmedia, downloads, publication

logger = logging.getLogger(__name__)


@shared_task(
    name=tasknames.REPORT_PUBLISH,
    acks_late=True,
    # Transient only; the publication is idempotent (get_or_create on booking
    # and report), so a redelivery after a lost worker does no harm.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def report_publish(report_pk: int, study_pk: int) -> str:
    """Publish the signed report to the citizen if they chose online delivery."""
    return publication.report_publish(report_pk=report_pk, study_pk=study_pk)


def publish_on_report_signed(sender: Any, report_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.report_signed`` receiver: queue :func:`report_publish` once the signing commits."""
    transaction.on_commit(lambda: _report_publish_enqueue(report_pk, study_pk))


def _report_publish_enqueue(report_pk: int, study_pk: int) -> None:
    try:
        report_publish.delay(report_pk, study_pk)
    except Exception:
        # The report is signed and stays so; report_publish_sweep queues this again.
        logger.exception("publication of report %s of study %s not queued", report_pk, study_pk)


@shared_task(name=tasknames.REPORT_PUBLISH_SWEEP)
def report_publish_sweep() -> int:
    """Queue again :func:`report_publish` for the signed reports a lost task left unpublished (a broker outage)."""
    due = publication.reports_unpublished_overdue()
    return sweeps.requeue(
        report_publish, due, logger=logger, message="queued the publication of %d overdue signed reports"
    )


@shared_task(
    name=tasknames.DOWNLOAD_PACKAGE_BUILD,
    acks_late=True,
    # A worker killed mid-zip: the task is delivered again and takes the
    # package over once its heartbeat is stale (portal.downloads.STALE).
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=5,
    bind=True,
)
def package_build(self: Any, package_pk: int, user_pk: int | None = None, booking_pk: int | None = None) -> str:
    """Build a citizen's zip, then notify who asked.

    When another builder holds the package (its heartbeat is fresh), look
    again later: it finishes it, or dies and lets this task take over.
    """
    package = downloads.package_build_notify(package_pk=package_pk, user_pk=user_pk, booking_pk=booking_pk)
    if package is None:
        return "missing"
    if package.status in (package.Status.QUEUED, package.Status.RUNNING):
        raise self.retry(countdown=int(downloads.STALE.total_seconds()), max_retries=50)
    return package.status


@shared_task(name=tasknames.DOWNLOAD_PACKAGES_PURGE)
def packages_purge() -> int:
    return downloads.packages_purge()


@shared_task(
    name=tasknames.REJECTION_PORTAL,
    acks_late=True,
    # Idempotent: stale zips are found again by fingerprint, the notice is one per note.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
)
def rejection_portal(note_pk: int, study_pk: int) -> str:
    from . import rejections

    result = rejections.rejection_portal(note_pk=note_pk, study_pk=study_pk)
    # The CDs not yet handed over that hold withdrawn images are made again.
    remake = cdmedia.media_stale_on_rejection(study_pk=study_pk)
    for args in remake:
        transaction.on_commit(functools.partial(_cd_medium_enqueue, *args))
    return f"{result}, CDs remade: {len(remake)}" if remake else result


def rejection_enqueue(sender: Any, note_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.instances_rejected`` receiver (sent on commit): queue :func:`rejection_portal`."""
    try:
        rejection_portal.delay(note_pk, study_pk)
    except Exception:
        logger.exception("the portal's part of rejection note %s not queued", note_pk)


@shared_task(
    name=tasknames.CD_MEDIUM_MAKE,
    acks_late=True,
    # Idempotent: a medium ready for the version is kept, a half-made one made again.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def cd_medium_make(report_pk: int, study_pk: int) -> str:
    """Make the CD image of the signed report if its booking chose CD."""
    return cdmedia.medium_make(report_pk=report_pk, study_pk=study_pk)


def cd_medium_on_report_signed(sender: Any, report_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.report_signed`` receiver: queue :func:`cd_medium_make` once the signing commits."""
    transaction.on_commit(lambda: _cd_medium_enqueue(report_pk, study_pk))


def _cd_medium_enqueue(report_pk: int, study_pk: int) -> None:
    try:
        cd_medium_make.delay(report_pk, study_pk)
    except Exception:
        # cd_media_sweep queues it again.
        logger.exception("CD of report %s of study %s not queued", report_pk, study_pk)


@shared_task(name=tasknames.CD_MEDIA_SWEEP)
def cd_media_sweep() -> int:
    """Queue again :func:`cd_medium_make` for the signed reports on CD left without a medium
    (a lost task, a medium made stale by a rejection note, one that failed, a worker killed
    mid-image), and remove the temporary files killed workers left."""
    cdmedia.leftovers_remove()
    return sweeps.requeue(cd_medium_make, cdmedia.media_overdue(), logger=logger, message="queued %d overdue CD images")
