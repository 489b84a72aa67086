"""The outbox: what is sent to the FSE gateway, when, and what became of it.

What is published (the booking's consent decides)
    A signed version is published when the study's booking is not cancelled
    and its *current* distribution choice is online, which exists only with
    the information text the citizen accepted (``booking.models.DistributionChoice``).
    Nothing goes out for a study without a booking (no consent was asked),
    for a CD-only choice, or after a revocation: the national FSE is the
    same online channel the citizen agreed to or refused.

    - an original report or an addendum (*integrazione*) is a new document
      (validation, then publication); an addendum leaves the versions before
      it published, as the portal does;
    - a correction (*rettifica*) replaces the document of the version it
      corrects (``PUT /documents/{id}``), or of the latest one still published;
    - a revocation (a newer choice that is not online) deletes every document
      of the booking still published, and cancels what was not yet sent;
    - an oscuramento set or lifted after publication updates the metadata
      (``attiCliniciRegoleAccesso`` P99);
    - the study's KOS manifest goes beside the report (``PACS_FSE_MANIFEST_URL``).

How it is sent
    :func:`report_plan` and :func:`consent_check` write :class:`Operation`
    rows; :func:`operation_send` sends one when it is due and every earlier
    operation of its booking is done, writes an :class:`Attempt` per HTTP
    exchange, and on a network error, a timeout, 408/425/429 or 5xx plans the
    next attempt with exponential backoff (``PACS_FSE_RETRY_BASE_SECONDS``
    doubling up to ``PACS_FSE_RETRY_MAX_SECONDS``), for ever: a gateway that
    is down delays publication and loses nothing. Any other refusal (400 with
    the gateway's problem, 401/403, 404...) stops the operation as *failed*
    with the gateway's text, for an operator (the admin's "Riprova"); the
    operations after it wait. :func:`operations_due` is what the beat sweep
    queues again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from archive.models import Report
from archive.reporting import services as reports
from booking.models import Booking, DistributionChoice
from kernel.audit import audit_record

from . import gateway, metadata
from .models import Attempt, Operation

logger = logging.getLogger(__name__)

SYSTEM = "fse_gateway"
DOCUMENT_KINDS = (Operation.Kind.PUBLISH, Operation.Kind.REPLACE)
OPEN = (Operation.Status.PENDING, Operation.Status.SENDING, Operation.Status.FAILED)


def enabled() -> bool:
    return bool(settings.PACS_FSE_GATEWAY_URL)


def consent_online(booking: Booking) -> bool:
    """The booking's consent lets its documents be on the FSE now."""
    if booking.status == Booking.Status.CANCELLED:
        return False
    choice = booking.current_choice()
    return choice is not None and choice.delivery == DistributionChoice.Delivery.ONLINE


# --- Reading what is sent ------------------------------------------------------------------


def report_pdf(report: Report) -> bytes:
    """The signed PDF/A-3, the CDA attached (``archive.reporting.services.report_file``)."""
    return reports.report_file(report=report, which="pdf")


def report_cda(pdf: bytes) -> bytes | None:
    """The CDA attached to the PDF/A-3 (``None`` when it carries none)."""
    try:
        from archive.reporting.pdfa import pdf_attachment
    except ImportError:  # the PDF/A-3 with its CDA is not built on this branch
        return None
    return pdf_attachment(pdf)


def report_document_id(report: Report, pdf: bytes | None = None) -> str:
    if pdf is None:
        pdf = report_pdf(report)
    return metadata.cda_document_id(report_cda(pdf)) or metadata.fallback_document_id(report)


def study_manifest_instance(report: Report) -> Any:
    """The study's KOS manifest (made or found by ``archive.manifest.study_manifest``); ``None`` without it."""
    try:
        from archive.manifest import ManifestError, study_manifest
    except ImportError:  # the KOS manifest is not built on this branch
        return None
    try:
        return study_manifest(study=report.study)
    except ManifestError as exc:
        # The report goes out all the same; the images stay reachable through the archive.
        logger.error("FSE: no KOS manifest for study %s: %s", report.study.study_instance_uid, exc)
        return None


def instance_bytes(instance: Any) -> bytes:
    from archive.storage.retrieve import instance_open

    with instance_open(instance) as fh:
        return fh.read()


# --- Planning ------------------------------------------------------------------------------


def live_documents(booking: Booking, *, done_only: bool) -> dict[str, Operation]:
    """The documents of the booking on the gateway (or about to be): id -> the operation that put it there.

    Read from the operations in the order they are sent: a publication adds
    its document, a replace swaps its target for its own, a delete takes its
    target away. ``done_only`` reads only what the gateway accepted.
    """
    live: dict[str, Operation] = {}
    statuses = [Operation.Status.DONE] if done_only else [*OPEN, Operation.Status.DONE]
    for op in Operation.objects.filter(booking=booking, status__in=statuses).order_by("pk"):
        if op.kind in (Operation.Kind.PUBLISH, Operation.Kind.MANIFEST):
            live[op.document_id] = op
        elif op.kind == Operation.Kind.REPLACE:
            live.pop(op.target_document_id, None)
            live[op.document_id] = op
        elif op.kind in (Operation.Kind.DELETE, Operation.Kind.MANIFEST_DELETE):
            live.pop(op.target_document_id, None)
    return live


def _operation_add(**fields: Any) -> tuple[Operation, bool]:
    keys = {k: fields.pop(k) for k in ("booking", "kind", "document_id", "target_document_id")}
    try:
        with transaction.atomic():
            return Operation.objects.get_or_create(**keys, defaults=fields)
    except IntegrityError:  # written meanwhile by a racing task
        return Operation.objects.get(**keys), False


def report_plan(*, report_pk: int, study_pk: int, now: dt.datetime | None = None) -> tuple[str, list[int]]:
    """Write the operations that put the signed version ``report_pk`` on the FSE; (what happened, their pks).

    Idempotent: a second call finds the rows the first one wrote. One of
    ``planned``, ``already_planned``, ``disabled``, ``not_signed``,
    ``no_booking``, ``no_consent``, ``no_codice_fiscale`` (a provisional patient).
    """
    if not enabled():
        return "disabled", []
    report = Report.objects.select_related("study").filter(pk=report_pk, study_id=study_pk).first()
    if report is None or report.status != Report.Status.SIGNED:
        logger.warning("FSE: report %s of study %s is not a signed report of it", report_pk, study_pk)
        return "not_signed", []
    booking = Booking.objects.select_related("patient").filter(study_id=study_pk).first()
    if booking is None:
        return "no_booking", []
    if not consent_online(booking):
        return "no_consent", []
    if not booking.patient.codice_fiscale:
        # A provisional patient: the FSE is reached by codice fiscale; published once the registry knows it.
        return "no_codice_fiscale", []
    now = now or timezone.now()
    document_id = report_document_id(report)
    manifest = study_manifest_instance(report) if settings.PACS_FSE_MANIFEST_URL else None
    planned: list[int] = []
    created_any = False
    with transaction.atomic():
        # Locked: two versions signed at once must agree on what the correction replaces.
        booking = Booking.objects.select_for_update().get(pk=booking.pk)
        existing = Operation.objects.filter(booking=booking, report=report, kind__in=DOCUMENT_KINDS).first()
        if existing is not None:
            planned.append(existing.pk)
        else:
            target = ""
            if report.kind == Report.Kind.CORRECTION:
                live = {
                    doc: op for doc, op in live_documents(booking, done_only=False).items() if op.kind in DOCUMENT_KINDS
                }
                by_previous = [doc for doc, op in live.items() if op.report_id == report.previous_id]
                target = by_previous[0] if by_previous else (list(live)[-1] if live else "")
            op, created = _operation_add(
                booking=booking,
                kind=Operation.Kind.REPLACE if target else Operation.Kind.PUBLISH,
                document_id=document_id,
                target_document_id=target,
                study=report.study,
                report=report,
                next_attempt_at=now,
            )
            created_any |= created
            planned.append(op.pk)
        if manifest is not None:
            op, created = _operation_add(
                booking=booking,
                kind=Operation.Kind.MANIFEST,
                document_id=manifest.sop_instance_uid,
                target_document_id="",
                study=report.study,
                report=report,
                next_attempt_at=now,
            )
            created_any |= created
            planned.append(op.pk)
        if created_any:
            audit_record(
                action="fse.plan",
                system=SYSTEM,
                patient=booking.patient,
                study=report.study,
                detail={"accession_number": booking.accession_number, "report": report.pk, "operations": planned},
            )
    return ("planned" if created_any else "already_planned"), planned


def consent_check(*, booking_pk: int, now: dt.datetime | None = None) -> list[int]:
    """After a revocation: cancel what was not sent, delete what is published; the delete operations' pks.

    Nothing while the booking's current choice is online. Idempotent.
    """
    now = now or timezone.now()
    with transaction.atomic():
        booking = Booking.objects.select_for_update().select_related("patient").filter(pk=booking_pk).first()
        if booking is None or consent_online(booking):
            return []
        cancelled = Operation.objects.filter(
            booking=booking,
            status__in=[Operation.Status.PENDING, Operation.Status.FAILED],
            kind__in=[*DOCUMENT_KINDS, Operation.Kind.MANIFEST, Operation.Kind.METADATA],
        ).update(status=Operation.Status.CANCELLED, note="consenso revocato prima dell'invio", updated_at=now)
        deletes: list[int] = []
        for doc, source in live_documents(booking, done_only=True).items():
            kind = Operation.Kind.MANIFEST_DELETE if source.kind == Operation.Kind.MANIFEST else Operation.Kind.DELETE
            op, _created = _operation_add(
                booking=booking,
                kind=kind,
                document_id="",
                target_document_id=doc,
                study=source.study,
                report=source.report,
                next_attempt_at=now,
            )
            if op.status != Operation.Status.DONE:
                deletes.append(op.pk)
        if deletes or cancelled:
            audit_record(
                action="fse.withdraw",
                system=SYSTEM,
                patient=booking.patient,
                study=booking.study,
                detail={"accession_number": booking.accession_number, "deletes": deletes, "cancelled": cancelled},
            )
    return deletes


def concealment_check(*, study_pk: int, now: dt.datetime | None = None) -> list[int]:
    """The oscuramento of the study changed: a metadata update for each of its published documents."""
    now = now or timezone.now()
    booking = Booking.objects.filter(study_id=study_pk).first()
    if booking is None or not enabled():
        return []
    from portal.models import Concealment

    latest = Concealment.objects.filter(study_id=study_pk).order_by("-pk").first()
    if latest is None:
        return []
    state = f"oscuramento-{latest.pk}-{'off' if latest.revealed_at else 'on'}"
    planned: list[int] = []
    with transaction.atomic():
        booking = Booking.objects.select_for_update().get(pk=booking.pk)
        if not consent_online(booking):
            return []
        for doc, source in live_documents(booking, done_only=False).items():
            if source.kind not in DOCUMENT_KINDS:
                continue
            op, created = _operation_add(
                booking=booking,
                kind=Operation.Kind.METADATA,
                document_id=state,
                target_document_id=doc,
                study=source.study,
                report=source.report,
                next_attempt_at=now,
            )
            if created:
                planned.append(op.pk)
    return planned


# --- Sending -------------------------------------------------------------------------------


def backoff(attempts: int) -> dt.timedelta:
    """The wait before attempt ``attempts + 1``: the base, doubled per attempt, capped."""
    base = float(settings.PACS_FSE_RETRY_BASE_SECONDS)
    cap = float(settings.PACS_FSE_RETRY_MAX_SECONDS)
    return dt.timedelta(seconds=min(cap, base * (2 ** max(0, attempts - 1))))


def _claim(op_pk: int, now: dt.datetime) -> tuple[Operation | None, str]:
    stale = now - dt.timedelta(seconds=float(settings.PACS_FSE_SENDING_STALE_SECONDS))
    with transaction.atomic():
        op = Operation.objects.select_for_update().filter(pk=op_pk).first()
        if op is None:
            return None, "missing"
        if op.status == Operation.Status.SENDING and op.updated_at > stale:
            return None, "sending"
        if op.status not in (Operation.Status.PENDING, Operation.Status.SENDING):
            return None, op.status
        if op.next_attempt_at > now:
            return None, "not_due"
        earlier = Operation.objects.filter(booking_id=op.booking_id, pk__lt=op.pk, status__in=OPEN)
        if earlier.exists():
            return None, "waiting"
        op.status = Operation.Status.SENDING
        op.attempts += 1
        op.save(update_fields=["status", "attempts", "updated_at"])
    return op, "claimed"


def _log(op: Operation, exchange: gateway.Exchange) -> None:
    Attempt.objects.create(
        operation=op,
        step=exchange.step,
        method=exchange.method,
        url=exchange.url[:500],
        duration_ms=exchange.duration_ms,
        status_code=exchange.status_code,
        response_body=exchange.body,
        error=exchange.error,
        trace_id=exchange.trace_id[:100],
    )


def _finish(op: Operation, *, status: str, now: dt.datetime, error: str = "", note: str = "", **fields: Any) -> str:
    op.status = status
    op.last_error = error
    if note:
        op.note = note[:300]
    if status == Operation.Status.DONE:
        op.done_at = now
    for name, value in fields.items():
        setattr(op, name, value)
    op.save()
    return status


def _outcome(op: Operation, exchange: gateway.Exchange, *, now: dt.datetime, accept: set[int]) -> str:
    """Record the answer that decides the operation: done, retried later, or failed for a person."""
    op.last_status_code = exchange.status_code
    if exchange.ok or exchange.status_code in accept:
        note = "" if exchange.ok else f"HTTP {exchange.status_code}: {exchange.data.get('title') or 'già fatto'}"
        return _finish(
            op,
            status=Operation.Status.DONE,
            now=now,
            note=note,
            trace_id=exchange.trace_id[:100] or op.trace_id,
            workflow_instance_id=exchange.workflow_instance_id[:256] or op.workflow_instance_id,
        )
    text = exchange.problem_text()
    if exchange.transient:
        op.next_attempt_at = now + backoff(op.attempts)
        logger.warning("FSE %s %s: %s; next attempt at %s", op.kind, op.pk, text.splitlines()[0], op.next_attempt_at)
        return _finish(op, status=Operation.Status.PENDING, now=now, error=text)
    logger.error("FSE %s %s refused: %s", op.kind, op.pk, text)
    return _finish(op, status=Operation.Status.FAILED, now=now, error=text)


def _send_document(op: Operation, *, now: dt.datetime) -> str:
    report, booking = op.report, op.booking
    cf = booking.patient.codice_fiscale or ""
    try:
        pdf = report_pdf(report)
    except reports.ReportError as exc:
        return _finish(op, status=Operation.Status.FAILED, now=now, error=f"{exc.code}: {exc}")
    validation = gateway.validate(pdf=pdf, patient_cf=cf)
    _log(op, validation)
    if not validation.ok:
        return _outcome(op, validation, now=now, accept=set())
    body = metadata.document_body(report=report, booking=booking, document_id=op.document_id, operation_pk=op.pk)
    body["workflowInstanceId"] = validation.workflow_instance_id
    op.metadata = body
    op.workflow_instance_id = validation.workflow_instance_id[:256]
    if op.kind == Operation.Kind.REPLACE:
        exchange = gateway.replace(target=op.target_document_id, pdf=pdf, body=body, patient_cf=cf)
        accept: set[int] = set()
    else:
        body["priorita"] = False
        exchange = gateway.publish(pdf=pdf, body=body, patient_cf=cf)
        # 409: the document is there already (an earlier attempt whose answer was lost).
        accept = {409}
    _log(op, exchange)
    return _outcome(op, exchange, now=now, accept=accept)


def _send_manifest(op: Operation, *, now: dt.datetime) -> str:
    from archive.models import Instance

    instance = Instance.objects.filter(sop_instance_uid=op.document_id).first()
    if instance is None:
        return _finish(op, status=Operation.Status.FAILED, now=now, error="manifest KOS non trovato nell'archivio")
    kos = instance_bytes(instance)
    report_doc = next(
        (
            o.document_id
            for o in Operation.objects.filter(booking=op.booking, kind__in=DOCUMENT_KINDS).order_by("-pk")
            if o.status != Operation.Status.CANCELLED
        ),
        "",
    )
    entry = metadata.manifest_entry(
        study=op.study,
        booking=op.booking,
        sop_instance_uid=op.document_id,
        size=len(kos),
        sha1=hashlib.sha1(kos, usedforsecurity=False).hexdigest(),
        report_document_id=report_doc,
    )
    op.metadata = entry
    exchange = gateway.manifest_publish(kos=kos, entry=entry, patient_cf=op.booking.patient.codice_fiscale or "")
    _log(op, exchange)
    return _outcome(op, exchange, now=now, accept={409})


def operation_send(*, op_pk: int, now: dt.datetime | None = None) -> str:
    """Send the operation ``op_pk`` if it is due and its turn; its status afterwards, or why not.

    Safe to call twice at once (the row is claimed) and after a worker died
    mid-way (a claim older than ``PACS_FSE_SENDING_STALE_SECONDS`` is taken over).
    """
    now = now or timezone.now()
    op, why = _claim(op_pk, now)
    if op is None:
        return why
    op = Operation.objects.select_related("booking__patient", "report__study", "study").get(pk=op.pk)
    booking = op.booking
    if op.kind in (*DOCUMENT_KINDS, Operation.Kind.MANIFEST, Operation.Kind.METADATA) and not consent_online(booking):
        _finish(op, status=Operation.Status.CANCELLED, now=now, note="consenso revocato prima dell'invio")
        consent_check(booking_pk=booking.pk, now=now)
        return Operation.Status.CANCELLED
    cf = booking.patient.codice_fiscale or ""
    try:
        if op.kind in DOCUMENT_KINDS:
            status = _send_document(op, now=now)
        elif op.kind == Operation.Kind.MANIFEST:
            status = _send_manifest(op, now=now)
        elif op.kind == Operation.Kind.DELETE:
            exchange = gateway.delete(target=op.target_document_id, patient_cf=cf)
            _log(op, exchange)
            status = _outcome(op, exchange, now=now, accept={404})  # 404: not there any more
        elif op.kind == Operation.Kind.MANIFEST_DELETE:
            exchange = gateway.manifest_delete(unique_id=op.target_document_id, patient_cf=cf)
            _log(op, exchange)
            status = _outcome(op, exchange, now=now, accept={404})
        else:
            body = metadata.metadata_body(report=op.report, booking=booking, operation_pk=op.pk)
            op.metadata = body
            exchange = gateway.metadata_update(target=op.target_document_id, body=body, patient_cf=cf)
            _log(op, exchange)
            status = _outcome(op, exchange, now=now, accept=set())
    except Exception as exc:
        # A bug or a broken configuration: kept in the outbox like a gateway's error, and retried.
        logger.exception("FSE operation %s", op.pk)
        op.next_attempt_at = now + backoff(op.attempts)
        return _finish(op, status=Operation.Status.PENDING, now=now, error=f"{type(exc).__name__}: {exc}"[:2000])
    if status == Operation.Status.DONE:
        audit_record(
            action=f"fse.{op.kind}",
            system=SYSTEM,
            patient=booking.patient,
            study=op.study,
            detail={
                "accession_number": booking.accession_number,
                "operation": op.pk,
                "document": op.document_id or op.target_document_id,
                "traceID": op.trace_id,
                "workflowInstanceId": op.workflow_instance_id,
            },
        )
        if op.kind in (*DOCUMENT_KINDS, Operation.Kind.MANIFEST) and not consent_online(booking):
            consent_check(booking_pk=booking.pk, now=now)  # revoked while this one was on its way
    return status


def operations_due(*, now: dt.datetime | None = None, limit: int = 500) -> list[int]:
    """The operations to send now: pending and due, or claimed by a worker that died; the first of each booking."""
    now = now or timezone.now()
    stale = now - dt.timedelta(seconds=float(settings.PACS_FSE_SENDING_STALE_SECONDS))
    rows = (
        Operation.objects.filter(
            Q(status=Operation.Status.PENDING, next_attempt_at__lte=now)
            | Q(status=Operation.Status.SENDING, updated_at__lt=stale)
        )
        .order_by("pk")
        .values_list("pk", "booking_id")[: limit * 4]
    )
    blocked = set(
        Operation.objects.filter(status=Operation.Status.FAILED).values_list("booking_id", flat=True).distinct()
    )
    due: list[int] = []
    seen: set[int] = set()
    for pk, booking_id in rows:
        if booking_id in seen or booking_id in blocked:
            continue
        seen.add(booking_id)
        due.append(pk)
        if len(due) >= limit:
            break
    return due


def reports_unplanned(
    *, now: dt.datetime | None = None, limit: int = reports.FOLLOWUP_SWEEP_LIMIT
) -> list[tuple[int, int]]:
    """Signed versions past the grace period with online consent and no operation: a lost task's work."""
    if not enabled():
        return []
    out: list[tuple[int, int]] = []
    overdue = reports.reports_signed_overdue(now=now).exclude(fse_operations__isnull=False)
    for report_pk, study_pk in overdue.values_list("pk", "study_id")[: limit * 4]:
        booking = Booking.objects.filter(study_id=study_pk).first()
        if booking is not None and consent_online(booking):
            out.append((report_pk, study_pk))
            if len(out) >= limit:
                break
    return out


def bookings_revoked_published(*, limit: int = 500) -> list[int]:
    """Bookings with documents on the gateway whose consent is no longer online (a lost revocation task)."""
    out: list[int] = []
    ids = (
        Operation.objects.filter(status=Operation.Status.DONE, kind__in=[*DOCUMENT_KINDS, Operation.Kind.MANIFEST])
        .values_list("booking_id", flat=True)
        .distinct()
    )
    for booking in Booking.objects.filter(pk__in=ids):
        if not consent_online(booking) and live_documents(booking, done_only=True):
            if (
                not Operation.objects.filter(
                    booking=booking, kind__in=[Operation.Kind.DELETE, Operation.Kind.MANIFEST_DELETE]
                )
                .exclude(status=Operation.Status.CANCELLED)
                .filter(status__in=OPEN)
                .exists()
            ):
                out.append(booking.pk)
        if len(out) >= limit:
            break
    return out


def operation_retry(*, op: Operation, user: Any, now: dt.datetime | None = None) -> bool:
    """An operator sends a failed operation again (after fixing what the gateway said); whether it was failed."""
    now = now or timezone.now()
    count = Operation.objects.filter(pk=op.pk, status=Operation.Status.FAILED).update(
        status=Operation.Status.PENDING, next_attempt_at=now, updated_at=now
    )
    if count:
        audit_record(
            action="fse.retry",
            user=user,
            patient=op.booking.patient,
            study=op.study,
            detail={"operation": op.pk, "kind": op.kind},
        )
    return bool(count)
