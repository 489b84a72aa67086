"""Celery tasks of the booking app: thin adapters over the services."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError, transaction

from . import matching

logger = logging.getLogger(__name__)


@shared_task(
    name="booking.tasks.study_match",
    acks_late=True,
    # Transient only: the database busy or gone. A study that does not match
    # is not an error, it is a reconciliation row; the service is idempotent,
    # so a retry or a redelivery after a lost worker does no harm.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def study_match(study_pk: int) -> dict[str, Any]:
    """Link the study to its booking by accession number, or queue it for reconciliation."""
    return matching.study_match(study_pk=study_pk).as_dict()


def study_match_enqueue(sender: Any, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.study_instances_received`` receiver: match once the instances are committed."""
    transaction.on_commit(lambda: study_match.delay(study_pk))
