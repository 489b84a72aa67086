"""Celery tasks of the portal: thin adapters over :mod:`portal.publication` and :mod:`portal.downloads`."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import downloads, publication

logger = logging.getLogger(__name__)


@shared_task(
    name="portal.tasks.report_publish_retry",
    acks_late=True,
    # Transient only; the publication is idempotent (get_or_create on booking
    # and report), so a redelivery after a lost worker does no harm.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def report_publish_retry(report_pk: int, study_pk: int) -> str:
    """The receiver's work again, for when the database failed it in the signing process."""
    return publication.report_publish(report_pk=report_pk, study_pk=study_pk)


def publish_on_report_signed(sender: Any, report_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.report_signed`` receiver: publish to the citizen if they chose online.

    Done at once (a few rows, after the signing committed); a transient
    database failure hands it to a worker that retries.
    """
    try:
        publication.report_publish(report_pk=report_pk, study_pk=study_pk)
    except (OperationalError, InterfaceError):
        logger.exception("report %s not published now: retrying in a worker", report_pk)
        report_publish_retry.delay(report_pk, study_pk)


@shared_task(
    name="portal.tasks.package_build",
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
    from django.contrib.auth import get_user_model

    from booking.models import Booking

    package = downloads.media_build(package_pk=package_pk)
    if package is None:
        return "missing"
    if package.status in (package.Status.QUEUED, package.Status.RUNNING):
        raise self.retry(countdown=int(downloads.STALE.total_seconds()), max_retries=50)
    if package.status in (package.Status.READY, package.Status.FAILED) and user_pk and booking_pk:
        user = get_user_model().objects.filter(pk=user_pk).first()
        booking = Booking.objects.filter(pk=booking_pk).select_related("procedure").first()
        if user is not None and booking is not None:
            downloads.package_notify(package=package, user=user, booking=booking)
    return package.status


@shared_task(name="portal.tasks.packages_purge")
def packages_purge() -> int:
    return downloads.packages_purge()
