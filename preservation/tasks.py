"""Celery tasks of the preservation: thin adapters over the services."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction

from kernel import sweeps, tasknames

from . import audit_seal as seals
from . import fixity, packages, retention, volumes

logger = logging.getLogger(__name__)


@shared_task(
    name=tasknames.STUDY_PACKAGE,
    acks_late=True,
    # Idempotent: a package already archived is skipped, a half-built one is
    # taken over once its builder's heartbeat is stale.
    autoretry_for=(OperationalError, InterfaceError, packages.PackageError),
    retry_backoff=True,
    retry_backoff_max=3600,
    max_retries=10,
)
def study_package(study_pk: int) -> int:
    return len(packages.package_build(study_pk=study_pk))


def package_on_report_signed(sender: Any, report_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.report_signed`` receiver: package the study once it has been stable for a while.

    The sweep (:func:`studies_package_sweep`) catches what this misses
    (instances that arrive meanwhile move the moment on).
    """
    countdown = settings.PACS_PRESERVATION_STABLE_MINUTES * 60 + 5
    visibility = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}).get("visibility_timeout", 3600)
    if countdown > visibility:
        # A task held past the broker's visibility timeout is delivered again
        # (Redis): leave a long wait to the sweep instead.
        return
    transaction.on_commit(lambda: _package_enqueue(study_pk, countdown))


def _package_enqueue(study_pk: int, countdown: float) -> None:
    try:
        study_package.apply_async(args=[study_pk], countdown=countdown)  # type: ignore[arg-type]  # celery takes a list; its stub, a tuple
    except Exception:
        logger.exception("preservation of study %s not queued: the sweep will", study_pk)


@shared_task(name=tasknames.STUDIES_PACKAGE_SWEEP)
def studies_package_sweep() -> int:
    return sweeps.requeue(study_package, [(pk,) for pk in packages.studies_due()], logger=logger)


@shared_task(name=tasknames.VOLUMES_CLOSE, acks_late=True)
def volumes_close() -> int:
    closed = 0
    while volumes.volume_close() is not None:
        closed += 1
    return closed


@shared_task(name=tasknames.PRESERVATION_FIXITY_AUDIT, acks_late=True)
def fixity_audit() -> int:
    return fixity.fixity_audit().failures


@shared_task(name=tasknames.DISCARD_PROPOSE)
def discard_propose() -> int | None:
    discard = retention.discard_propose()
    return discard.pk if discard else None


@shared_task(name=tasknames.AUDIT_SEAL)
def audit_seal() -> int:
    # Not retried: the next period's seal covers every chain this one would have.
    return seals.audit_seal().pk


@shared_task(
    name=tasknames.REJECTION_PRESERVATION,
    acks_late=True,
    # Idempotent: one notice per note and kind.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
)
def rejection_preservation(note_pk: int, study_pk: int) -> str:
    from . import rejections

    return rejections.rejection_preservation(note_pk=note_pk, study_pk=study_pk)


def rejection_enqueue(sender: Any, note_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.instances_rejected`` receiver (sent on commit): queue :func:`rejection_preservation`."""
    try:
        rejection_preservation.delay(note_pk, study_pk)
    except Exception:
        logger.exception("preservation's part of rejection note %s not queued", note_pk)
