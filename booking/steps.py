"""The modality's procedure steps (MPPS) as the booking sees them.

The archive records each Modality Performed Procedure Step a modality reports
(``archive.procedure_steps``) and sends ``procedure_step_changed`` on commit;
``booking.tasks`` queues :func:`booking_procedure_step`, which moves the
booking the step names (by accession number and Scheduled Procedure Step ID,
both handed out by the worklist: ``booking/worklist.py``):

* IN PROGRESS: a booked or accepted exam is *in esecuzione*;
* COMPLETED: it is *eseguito* (the images may have done so already);
* DISCONTINUED: an exam in progress goes back to *accettato*, and the reason
  (the Discontinuation Reason Code Sequence) is written in its history, where
  the CUP reads it beside the step itself (:func:`procedure_steps_for`).

The task reads the step as it is now, so it may run again, or late, or after
the task of a later change, and the booking ends where the step is.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from archive.models import PerformedProcedureStep
from kernel.audit import audit_record

from .models import Booking, BookingStatusChange
from .services import _audit_detail, booking_status_set

logger = logging.getLogger(__name__)

MPPS_SYSTEM = "archive.mpps"

_STARTABLE = (Booking.Status.BOOKED, Booking.Status.ARRIVED)
_PERFORMABLE = (Booking.Status.BOOKED, Booking.Status.ARRIVED, Booking.Status.IN_PROGRESS)


def procedure_steps_for(booking: Booking) -> QuerySet[PerformedProcedureStep]:
    """The steps the facility's modalities reported for the booking, newest first."""
    return PerformedProcedureStep.objects.filter(
        facility_id=booking.facility_id, accession_number=booking.accession_number
    ).order_by("-created_at", "-id")


def _step_note(step: PerformedProcedureStep) -> str:
    station = step.station_ae_title or step.calling_ae
    if step.status == PerformedProcedureStep.Status.IN_PROGRESS:
        return _("esame iniziato su %(station)s (MPPS %(id)s)") % {"station": station, "id": step.step_id}
    if step.status == PerformedProcedureStep.Status.COMPLETED:
        return _("esame completato su %(station)s (MPPS %(id)s)") % {"station": station, "id": step.step_id}
    return _("esame interrotto su %(station)s (MPPS %(id)s): %(reason)s") % {
        "station": station,
        "id": step.step_id,
        "reason": step.discontinuation_reason or _("motivo non indicato"),
    }


def _apply(booking: Booking, step: PerformedProcedureStep) -> str:
    """Move one booking to where its step is; what happened."""
    note = _step_note(step)
    with transaction.atomic():
        booking = (
            Booking.objects.select_for_update(of=("self",))
            .select_related("facility", "procedure", "station", "patient")
            .get(pk=booking.pk)
        )
        status = step.status
        if booking.status == Booking.Status.CANCELLED:
            logger.warning("MPPS %s names the cancelled booking %s", step.sop_instance_uid, booking.accession_number)
            return "cancelled"
        if status == PerformedProcedureStep.Status.IN_PROGRESS:
            if booking.status not in _STARTABLE:
                return "unchanged"
            booking_status_set(booking=booking, status=Booking.Status.IN_PROGRESS, system=MPPS_SYSTEM, note=note)
            return "in_progress"
        if status == PerformedProcedureStep.Status.COMPLETED:
            if booking.status not in _PERFORMABLE:
                return "unchanged"
            booking_status_set(booking=booking, status=Booking.Status.PERFORMED, system=MPPS_SYSTEM, note=note)
            return "performed"
        # DISCONTINUED: the reason reaches the booking's history once, whatever its status.
        if booking.status_changes.filter(system=MPPS_SYSTEM, note=note[:500]).exists():
            return "unchanged"
        if booking.status in (Booking.Status.IN_PROGRESS, Booking.Status.BOOKED):
            booking_status_set(booking=booking, status=Booking.Status.ARRIVED, system=MPPS_SYSTEM, note=note)
        else:
            # Accepted still, or performed by images that arrived: the status stays, the reason is told.
            BookingStatusChange.objects.create(
                booking=booking, status=booking.status, system=MPPS_SYSTEM, note=note[:500]
            )
            audit_record(
                action="cup.booking.status",
                system=MPPS_SYSTEM,
                patient=booking.patient,
                study=booking.study,
                detail=_audit_detail(booking, previous_status=booking.status, note=note[:500]),
            )
        return "discontinued"


def booking_procedure_step(*, step_pk: int) -> list[str]:
    """Move the bookings a procedure step performs to where the step is; what happened to each.

    ``no_step``, ``no_accession``, ``no_booking`` (of the step's facility),
    ``other_step`` (the Scheduled Procedure Step ID is not the one the worklist
    gave), ``cancelled``, ``unchanged``, ``in_progress``, ``performed``, ``discontinued``.
    """
    step = PerformedProcedureStep.objects.filter(pk=step_pk).first()
    if step is None:
        return ["no_step"]
    results: list[str] = []
    for scheduled in step.scheduled_steps or [{}]:
        accession = str(scheduled.get("accession_number", "") or "")
        if not accession:
            results.append("no_accession")  # an unscheduled exam: the step stays the archive's
            continue
        booking = Booking.objects.filter(facility_id=step.facility_id, accession_number=accession).first()
        if booking is None:
            results.append("no_booking")
            continue
        # The worklist gives the accession number as the Scheduled Procedure Step ID (booking/worklist.py).
        sps = str(scheduled.get("scheduled_step_id", "") or "")
        if sps and sps != booking.accession_number:
            results.append("other_step")
            continue
        results.append(_apply(booking, step))
    logger.info("MPPS %s (%s): bookings %s", step.sop_instance_uid, step.status, results)
    return results


def latest_steps_for(bookings: list[Booking]) -> dict[int, PerformedProcedureStep]:
    """{booking pk: the latest step reported for it} for the bookings that have one (one query)."""
    if not bookings:
        return {}
    keys = {(b.facility_id, b.accession_number): b.pk for b in bookings}
    answer: dict[int, PerformedProcedureStep] = {}
    rows = PerformedProcedureStep.objects.filter(accession_number__in=[acc for _f, acc in keys]).order_by(
        "-created_at", "-id"
    )
    for step in rows:
        pk = keys.get((step.facility_id, step.accession_number))
        if pk is not None:
            answer.setdefault(pk, step)
    return answer


def procedure_steps_overdue(*, now: dt.datetime | None = None, limit: int = 500) -> list[int]:
    """The steps whose booking is still behind them past the grace period: the
    latest step of its booking, changed between ``PACS_REPORT_FOLLOWUP_GRACE_SECONDS``
    and ``PACS_REPORT_FOLLOWUP_HORIZON_DAYS`` ago (the follow-ups' window), whose
    booking is not where :func:`booking_procedure_step` would have put it."""
    now = now or timezone.now()
    bookings = Booking.objects.filter(
        facility_id=OuterRef("facility_id"), accession_number=OuterRef("accession_number")
    )
    later = PerformedProcedureStep.objects.filter(
        facility_id=OuterRef("facility_id"), accession_number=OuterRef("accession_number"), pk__gt=OuterRef("pk")
    )
    behind = (
        Q(status=PerformedProcedureStep.Status.IN_PROGRESS, lag=True)
        | Q(status=PerformedProcedureStep.Status.COMPLETED, lag_performed=True)
        | Q(status=PerformedProcedureStep.Status.DISCONTINUED, lag_discontinued=True)
    )
    rows = (
        PerformedProcedureStep.objects.exclude(accession_number="")
        .filter(
            updated_at__lt=now - dt.timedelta(seconds=settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS),
            updated_at__gte=now - dt.timedelta(days=settings.PACS_REPORT_FOLLOWUP_HORIZON_DAYS),
        )
        .annotate(
            lag=Exists(bookings.filter(status__in=_STARTABLE)),
            lag_performed=Exists(bookings.filter(status__in=_PERFORMABLE)),
            lag_discontinued=Exists(bookings.filter(status__in=(Booking.Status.IN_PROGRESS, Booking.Status.BOOKED))),
            superseded=Exists(later),
        )
        .filter(behind, superseded=False)
        .order_by("updated_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    return list(rows)
