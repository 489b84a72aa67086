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
from django.utils.translation import gettext as _

from archive.models import Report
from archive.storage import lifecycle
from kernel.errors import Unavailable

from . import matching
from .models import Booking
from .services import booking_status_set

logger = logging.getLogger(__name__)

REPORTED_SYSTEM = "archive.report_signed"


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


def booking_reported(*, report_pk: int, study_pk: int) -> str:
    """Mark the study's booking reported because ``report_pk`` was signed; what happened.

    Idempotent: a booking already reported (a correction or an addendum
    signed later) is left alone, and so is a study with no booking (an
    emergency exam, one reassigned by reconciliation). A booking the images
    did not yet mark performed goes through ``performed`` first, so that its
    history tells the whole story.
    """
    report = Report.objects.filter(pk=report_pk, study_id=study_pk, status=Report.Status.SIGNED).first()
    if report is None:
        logger.warning(
            "report_signed for report %s of study %s, which is not a signed report of it", report_pk, study_pk
        )
        return "not_signed"
    with transaction.atomic():
        # Locked: two versions signed at once must not both walk the booking.
        booking = Booking.objects.select_for_update(of=("self",)).filter(study_id=study_pk).first()
        if booking is None:
            return "no_booking"
        if booking.status == Booking.Status.REPORTED:
            return "already_reported"
        if booking.status == Booking.Status.CANCELLED:
            logger.warning("booking %s is cancelled but its study %s was reported", booking.accession_number, study_pk)
            return "cancelled"
        note = _("referto v%(version)s firmato") % {"version": report.version}
        if booking.status != Booking.Status.PERFORMED:
            booking = booking_status_set(
                booking=booking, status=Booking.Status.PERFORMED, system=REPORTED_SYSTEM, note=note
            )
        booking_status_set(booking=booking, status=Booking.Status.REPORTED, system=REPORTED_SYSTEM, note=note)
    logger.info("booking %s reported (report %s)", booking.accession_number, report_pk)
    return "reported"


@shared_task(
    name="booking.tasks.booking_reported_retry",
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def booking_reported_retry(report_pk: int, study_pk: int) -> str:
    """The receiver's work again, for when the database failed it in the signing process."""
    return booking_reported(report_pk=report_pk, study_pk=study_pk)


def report_signed_booking(sender: Any, report_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.report_signed`` receiver: the study's booking becomes *refertato*.

    Done at once (a few rows, after the signing committed) so that the
    distribution choice is closed when the radiologist's page answers; a
    transient database failure hands it to a worker that retries.
    """
    try:
        booking_reported(report_pk=report_pk, study_pk=study_pk)
    except (OperationalError, InterfaceError):
        logger.exception("booking of study %s not marked reported now: retrying in a worker", study_pk)
        booking_reported_retry.delay(report_pk, study_pk)


@shared_task(
    name="booking.tasks.booking_prefetch",
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


@shared_task(name="booking.tasks.bookings_prefetch")
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
