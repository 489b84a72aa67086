"""Celery tasks of the archive: thin adapters over the services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import OperationalError

from . import ingest

logger = logging.getLogger(__name__)


@shared_task(
    name=ingest.POST_INGEST_TASK, acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=8
)
def study_post_ingest(study_pk: int) -> bool:
    return ingest.study_post_ingest(study_pk=study_pk)


@shared_task
def post_ingest_sweep(older_than_seconds: float = 120.0) -> int:
    """Queue the post-ingest work of studies whose task was never queued."""
    pks = ingest.studies_post_ingest_overdue(older_than_seconds=older_than_seconds)
    for pk in pks:
        study_post_ingest.delay(pk)
    if pks:
        logger.warning("queued post-ingest work for %d overdue studies", len(pks))
    return len(pks)
