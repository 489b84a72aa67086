"""Celery tasks of the portal: thin adapters over :mod:`portal.availability`."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import availability

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
    return availability.report_publish(report_pk=report_pk, study_pk=study_pk)


def publish_on_report_signed(sender: Any, report_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.report_signed`` receiver: publish to the citizen if they chose online.

    Done at once (a few rows, after the signing committed); a transient
    database failure hands it to a worker that retries.
    """
    try:
        availability.report_publish(report_pk=report_pk, study_pk=study_pk)
    except (OperationalError, InterfaceError):
        logger.exception("report %s not published now: retrying in a worker", report_pk)
        report_publish_retry.delay(report_pk, study_pk)
