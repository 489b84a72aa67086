"""Celery tasks of the FSE publication: thin adapters over :mod:`fse_gateway.outbox`.

The receivers only queue, on commit, and only when the gateway is configured
(``PACS_FSE_GATEWAY_URL``). A message the broker loses is found again by
:func:`outbox_sweep` (beat): unplanned signed versions, lost revocations and
every operation due.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError, transaction

from kernel import sweeps, tasknames

from . import outbox
from .models import Operation

logger = logging.getLogger(__name__)

# Transient database errors only: every task is idempotent (the outbox rows are claimed).
_RETRY_ON = (OperationalError, InterfaceError)


def _enqueue(task: Any, *args: Any, **options: Any) -> None:
    try:
        task.apply_async(args=args, **options)
    except Exception:
        # The decision is in the database (or will be found by the sweep): nothing is lost.
        logger.exception("FSE: %s%r not queued; the outbox sweep will", task.name, args)


def _send_first(pks: list[int]) -> None:
    for pk in pks[:1]:  # the next ones follow, in order, as each is accepted
        _enqueue(operation_send, pk)


@shared_task(name=tasknames.FSE_REPORT_PLAN, acks_late=True, autoretry_for=_RETRY_ON, retry_backoff=True, max_retries=8)
def report_plan(report_pk: int, study_pk: int) -> str:
    """Write the outbox rows of a signed version (if the consent allows) and send the first."""
    result, pks = outbox.report_plan(report_pk=report_pk, study_pk=study_pk)
    due = [pk for pk in pks if Operation.objects.filter(pk=pk, status=Operation.Status.PENDING).exists()]
    _send_first(sorted(due))
    return result


def publish_on_report_signed(sender: Any, report_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.report_signed`` receiver: queue :func:`report_plan` once the signing commits."""
    if outbox.enabled():
        transaction.on_commit(lambda: _enqueue(report_plan, report_pk, study_pk))


@shared_task(
    name=tasknames.FSE_OPERATION_SEND, acks_late=True, autoretry_for=_RETRY_ON, retry_backoff=True, max_retries=8
)
def operation_send(op_pk: int) -> str:
    """Send one outbox operation; then the next of its booking, or this one again after the backoff."""
    status = outbox.operation_send(op_pk=op_pk)
    op = Operation.objects.filter(pk=op_pk).first()
    if op is None:
        return status
    if status == Operation.Status.PENDING:
        delay = max(1, int((op.next_attempt_at - op.updated_at).total_seconds()))
        _enqueue(operation_send, op_pk, countdown=delay)
    elif status in (Operation.Status.DONE, Operation.Status.CANCELLED):
        following = (
            Operation.objects.filter(booking_id=op.booking_id, pk__gt=op_pk, status=Operation.Status.PENDING)
            .order_by("pk")
            .values_list("pk", flat=True)
            .first()
        )
        if following is not None:
            _enqueue(operation_send, following)
    return status


@shared_task(
    name=tasknames.FSE_CONSENT_CHECK, acks_late=True, autoretry_for=_RETRY_ON, retry_backoff=True, max_retries=8
)
def consent_check(booking_pk: int) -> int:
    """After a choice that is not online: cancel what was not sent, delete what is published."""
    pks = outbox.consent_check(booking_pk=booking_pk)
    _send_first(sorted(pks))
    return len(pks)


def distribution_choice_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """``post_save`` of ``booking.DistributionChoice``: a revocation withdraws the booking's documents."""
    if not created or not outbox.enabled() or instance.delivery == instance.Delivery.ONLINE:
        return
    if Operation.objects.filter(booking_id=instance.booking_id).exists():
        booking_pk = instance.booking_id
        transaction.on_commit(lambda: _enqueue(consent_check, booking_pk))


@shared_task(
    name=tasknames.FSE_CONCEALMENT_CHECK, acks_late=True, autoretry_for=_RETRY_ON, retry_backoff=True, max_retries=8
)
def concealment_check(study_pk: int) -> int:
    """The oscuramento changed: update the published documents' metadata."""
    pks = outbox.concealment_check(study_pk=study_pk)
    _send_first(sorted(pks))
    return len(pks)


def concealment_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_save`` of ``portal.Concealment`` (hidden or revealed): queue :func:`concealment_check`."""
    if not outbox.enabled():
        return
    if Operation.objects.filter(study_id=instance.study_id).exists():
        study_pk = instance.study_id
        transaction.on_commit(lambda: _enqueue(concealment_check, study_pk))


@shared_task(name=tasknames.FSE_OUTBOX_SWEEP)
def outbox_sweep() -> int:
    """Beat: plan what a lost message left unplanned, withdraw what a lost revocation left, send what is due."""
    sweeps.requeue(
        report_plan, outbox.reports_unplanned(), logger=logger, message="FSE: planned %d overdue signed reports"
    )
    sweeps.requeue(
        consent_check,
        [(pk,) for pk in outbox.bookings_revoked_published()],
        logger=logger,
        message="FSE: %d revoked bookings still published",
    )
    due = outbox.operations_due()
    return sweeps.requeue(operation_send, [(pk,) for pk in due], logger=logger)
