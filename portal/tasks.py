"""Celery tasks of the portal: thin adapters over :mod:`portal.availability`."""

from __future__ import annotations

import logging

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
