"""Celery tasks of the booking app and its receivers of the archive's signals:
thin adapters over the services."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from archive.storage import lifecycle
from kernel import sweeps, tasknames
from kernel.errors import Unavailable

from . import matching, services, steps
from .models import Booking

logger = logging.getLogger(__name__)


@shared_task(
    name=tasknames.STUDY_MATCH,
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


@shared_task(
    name=tasknames.BOOKING_REPORTED,
    acks_late=True,
    # Transient only; the service is idempotent (a booking already reported
    # is left alone), so a redelivery after a lost worker does no harm.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def booking_reported(report_pk: int, study_pk: int) -> str:
    """The study's booking becomes *refertato* because ``report_pk`` was signed."""
    return services.booking_reported(report_pk=report_pk, study_pk=study_pk)


def report_signed_booking(sender: Any, report_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.report_signed`` receiver: queue :func:`booking_reported` once the signing commits.

    The signing request does no work of this app: the choice of delivery is
    closed by the signed report itself (``Booking.is_choice_locked``), not by
    when a worker gets to the booking.
    """
    transaction.on_commit(lambda: _booking_reported_enqueue(report_pk, study_pk))


def _booking_reported_enqueue(report_pk: int, study_pk: int) -> None:
    try:
        booking_reported.delay(report_pk, study_pk)
    except Exception:
        # The report is signed and stays so; booking_reported_sweep queues this again.
        logger.exception("booking of study %s not queued to become reported (report %s)", study_pk, report_pk)


@shared_task(name=tasknames.BOOKING_REPORTED_SWEEP)
def booking_reported_sweep() -> int:
    """Queue again :func:`booking_reported` for the bookings a lost task left unreported (a broker outage)."""
    due = services.bookings_reported_overdue()
    return sweeps.requeue(booking_reported, due, logger=logger, message="queued %d overdue bookings to become reported")


@shared_task(
    name=tasknames.BOOKING_PROCEDURE_STEP,
    acks_late=True,
    # Transient only; the service reads the step as it is now and moves the
    # booking there, so a redelivery, or a task run after a later change's, does no harm.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def booking_procedure_step(step_pk: int) -> list[str]:
    """The bookings a modality's procedure step (MPPS) performs show its state."""
    return steps.booking_procedure_step(step_pk=step_pk)


def procedure_step_booking_enqueue(sender: Any, step_pk: int, **kwargs: Any) -> None:
    """``archive.signals.procedure_step_changed`` receiver (sent on commit already)."""
    transaction.on_commit(lambda: _procedure_step_enqueue(step_pk))


def _procedure_step_enqueue(step_pk: int) -> None:
    try:
        booking_procedure_step.delay(step_pk)
    except Exception:
        # The step is recorded and answered; the booking catches up with the step's next change.
        logger.exception("booking of procedure step %s not queued", step_pk)


@shared_task(name=tasknames.BOOKING_PROCEDURE_STEP_SWEEP)
def booking_procedure_step_sweep() -> int:
    """Queue again :func:`booking_procedure_step` for the bookings a lost task left behind their step."""
    due = [(pk,) for pk in steps.procedure_steps_overdue()]
    return sweeps.requeue(
        booking_procedure_step, due, logger=logger, message="queued %d bookings behind their procedure step"
    )


@shared_task(
    name=tasknames.BOOKING_PREFETCH,
    acks_late=True,
    # Transient only: the database or a tier (the long-term store down: a StorageError,
    # Unavailable). The recall is idempotent: what is already in the facility tier is kept longer.
    autoretry_for=(OperationalError, InterfaceError, Unavailable),
    retry_backoff=60,
    retry_backoff_max=3600,
    max_retries=8,
)
def booking_prefetch(booking_pk: int) -> dict[str, int]:
    """Recall the patient's relevant priors into the booking facility's tier before the appointment."""
    booking = Booking.objects.select_related("procedure", "facility").filter(pk=booking_pk).first()
    if booking is None or booking.status == Booking.Status.CANCELLED:
        return {}
    result = lifecycle.priors_prefetch(
        patient_pk=booking.patient_id,
        facility=booking.facility,
        modality=booking.procedure.modality,
        body_part=booking.procedure.body_part,
        appointment=booking.scheduled_at,
    )
    return vars(result)


@shared_task(name=tasknames.BOOKINGS_PREFETCH)
def bookings_prefetch() -> int:
    """Daily: queue the prefetch of every booking due in the next ``PACS_PREFETCH_DAYS_AHEAD`` days."""
    now = timezone.now()
    pks = list(
        Booking.objects.filter(
            scheduled_at__gte=now - dt.timedelta(hours=12),
            scheduled_at__lte=now + dt.timedelta(days=settings.PACS_PREFETCH_DAYS_AHEAD),
            status__in=[Booking.Status.BOOKED, Booking.Status.ARRIVED],
        ).values_list("pk", flat=True)
    )
    for pk in pks:
        booking_prefetch.delay(pk)
    return len(pks)
