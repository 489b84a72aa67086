"""Celery tasks of the research exports: thin adapters over :mod:`research.services`."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from kernel import sweeps, tasknames

from . import services

logger = logging.getLogger(__name__)


@shared_task(
    name=tasknames.RESEARCH_EXPORT_BUILD,
    # Transient only. A redelivered message finds the export claimed or finished
    # (services._claim's conditional update) and does nothing.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=5,
)
def export_build(export_pk: int) -> str:
    """Build the zip of one anonymised export."""
    export = services.export_build(export_pk=export_pk)
    return export.status if export is not None else "skipped"


@shared_task(name=tasknames.RESEARCH_EXPORT_BUILD_SWEEP)
def export_build_sweep() -> int:
    """Queue again the exports a lost message or a killed worker left unbuilt."""
    return sweeps.requeue(
        export_build,
        services.exports_overdue(),
        logger=logger,
        message="queued again the build of %d anonymised exports",
    )
