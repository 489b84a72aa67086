"""Storage Commitment Push Model SCP (PS3.4 Annex J): a node asks the archive to take
responsibility for instances it sent, before it deletes its own copy.

The N-ACTION (Action Type 1: a Transaction UID and a Referenced SOP Sequence) is
checked, recorded as a :class:`~archive.models.StorageCommitment` row in the
same transaction as its audit event, and only then acknowledged: a request
acknowledged is one the archive will answer, after a restart of the listener
or of the workers too. The answer is an N-EVENT-REPORT (Event Type 1: every
instance committed; 2: failures exist), with the Referenced SOP Sequence of
the committed instances and the Failed SOP Sequence of the others, each with
its Failure Reason:

* ``0x0122`` the referenced SOP class is not a storage class the archive keeps;
* ``0x0112`` no such instance: not archived, or not visible to the node under
  the access policy (another authority's or facility's study, a concealed
  one): a node never learns of an instance it may not see;
* ``0x0119`` the instance is archived with another SOP class;
* ``0x0110`` the instance is not durable: no verified copy in a facility or
  long-term tier, the object this node sent was held aside as a conflict, or
  (with ``PACS_STORAGE_COMMITMENT_REQUIRE_LONG_TERM``) no verified long-term
  copy was made within ``PACS_STORAGE_COMMITMENT_MAX_WAIT_SECONDS``.

An instance is committed when it is archived (its file fsynced and linked in
its facility tier and its ``Copy`` row written: what ingestion does before a
C-STORE is acknowledged) and a verified copy exists in a facility or
long-term tier (an instance already evicted from its facility stays
committed). With ``PACS_STORAGE_COMMITMENT_REQUIRE_LONG_TERM`` it also needs a
verified copy in the long-term tier: the request waits for the lifecycle
(``archive.storage.lifecycle``) to make it, re-checked every
``PACS_STORAGE_COMMITMENT_RECHECK_SECONDS``, and what is still missing when the
wait is over fails with ``0x0110``.

Where the answer goes (PS3.4 J.3.3.1.2: an SCP must be able to answer on
another association and may try the same one):

* when ``PACS_STORAGE_COMMITMENT_SAME_ASSOCIATION`` is on and the answer is
  decided at once (always, unless ``PACS_STORAGE_COMMITMENT_REQUIRE_LONG_TERM``
  is on: then the task answers, when the copies exist or the wait is over),
  the listener sends it on the N-ACTION's association right after the
  N-ACTION response, if the node is still connected; the association keeps
  being served meanwhile (``fence.send_request``), so a node that releases at
  once is released at once and answered by the task;
* otherwise, or when that fails (the node released, aborted, answered with an
  error or not at all), a Celery task opens a new association from the called
  facility's AE title to the node's registered host and port
  (``RemoteNode.host``/``port``), proposing the SCP role for the SOP class
  with SCP/SCU Role Selection (J.3.3.1.3: the node accepts it as SCU) and
  sends the N-EVENT-REPORT there; it tries again with a backoff, up to
  ``PACS_STORAGE_COMMITMENT_DELIVERY_ATTEMPTS`` times, then records the request
  as undelivered. A sweep queues again the requests whose task was lost.

Whoever sends claims the row first (one conditional UPDATE checked for one
row) and records the answer after the node acknowledged it: a request is
answered once. Only nodes that may store here may ask (``can_store``); an
unknown AE let in by ``PACS_DICOM_ACCEPT_UNKNOWN_AE`` may not. Each request and
each answer is audited with the patients whose instances it names.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, close_old_connections, connections, transaction
from django.db.models import F, Q
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, UncompressedTransferSyntaxes
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_messages import N_EVENT_REPORT_RSP
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.events import Event

from archive import access
from archive.dicom import is_storage_sop_class, is_valid_uid
from archive.dicomnet import fence
from archive.models import Copy, Facility, Instance, InstanceConflict, RemoteNode, StorageCommitment
from archive.storage import tiers
from kernel import leases, tasknames
from kernel.audit import audit_record
from kernel.errors import PacsError, Unavailable
from kernel.models import AuditEvent

logger = logging.getLogger(__name__)

SOP_CLASS = UID("1.2.840.10008.1.20.1")  # Storage Commitment Push Model
WELL_KNOWN_INSTANCE = UID("1.2.840.10008.1.20.1.1")  # PS3.4 J.3.5
ACTION_REQUEST = 1  # Action Type ID: Request Storage Commitment
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2

# Failure Reason (0008,1197) values (PS3.4 J.3.3.1.1; PS3.3 C.14.1.1).
REASON_PROCESSING = 0x0110
REASON_NO_SUCH_INSTANCE = 0x0112
REASON_CLASS_INSTANCE_CONFLICT = 0x0119
REASON_CLASS_NOT_SUPPORTED = 0x0122

# More references than this in one request are refused (0x0213): the
# answer must fit one N-EVENT-REPORT a modality can read.
MAX_REFERENCES = 10000

# A sender that stopped writing its claim for this long is presumed dead
# (longer than an association's timeouts together).
CLAIM_STALE_AFTER = dt.timedelta(minutes=10)

# N-ACTION statuses (PS3.7 10.1.4.1.10, Annex C), by the code of the refusal.
N_ACTION_STATUS = {
    "commitment_forbidden": 0x0124,  # Refused: not authorised
    "commitment_invalid": 0x0115,  # Invalid argument value
    "commitment_no_such_action": 0x0123,
    "commitment_no_such_instance": 0x0112,  # not the well-known SOP instance
    "commitment_no_such_class": 0x0118,
    "commitment_duplicate": 0x0210,  # Duplicate invocation
    "commitment_too_many": 0x0213,  # Resource limitation
    "processing": 0x0110,
}

VIA_ASSOCIATION = "association"
VIA_NEW_ASSOCIATION = "new"


class CommitmentRefused(PacsError):
    """An N-ACTION the archive does not take on; ``code`` names its status (:data:`N_ACTION_STATUS`)."""

    code = "commitment_invalid"


class CommitmentUndelivered(Unavailable):
    """The answer could not be delivered now: the node is unreachable or refused it."""

    code = "commitment_undelivered"


# --- the request ---------------------------------------------------------------------------


def contexts_add(ae: AE) -> None:
    """The listener's presentation context for the SOP class (default roles: the node is SCU)."""
    ae.add_supported_context(SOP_CLASS, UncompressedTransferSyntaxes)


def references_parse(information: Dataset | None) -> tuple[str, list[tuple[str, str]]]:
    """The Transaction UID and the (SOP Class UID, SOP Instance UID) pairs of an N-ACTION's
    Action Information (PS3.4 Table J.3-1).

    Raises
    ------
    CommitmentRefused
        A missing or invalid Transaction UID, an empty Referenced SOP Sequence, an item
        without valid UIDs, the same instance twice, or more than :data:`MAX_REFERENCES`.
    """
    if information is None:
        raise CommitmentRefused("no Action Information")
    transaction_uid = str(information.get("TransactionUID", "") or "").strip()
    if not is_valid_uid(transaction_uid):
        raise CommitmentRefused("missing or invalid Transaction UID")
    items = information.get("ReferencedSOPSequence") or []
    if not items:
        raise CommitmentRefused("empty Referenced SOP Sequence")
    if len(items) > MAX_REFERENCES:
        raise CommitmentRefused(f"more than {MAX_REFERENCES} instances", code="commitment_too_many")
    references: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, item in enumerate(items, 1):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not is_valid_uid(sop_class) or not is_valid_uid(sop_instance):
            raise CommitmentRefused(f"item {n} of the Referenced SOP Sequence has no valid UIDs")
        if sop_instance in seen:
            raise CommitmentRefused(f"instance {sop_instance} referenced twice")
        seen.add(sop_instance)
        references.append((sop_class, sop_instance))
    return transaction_uid, references


def commitment_request(
    *,
    facility: Facility,
    node: RemoteNode | None,
    calling_ae: str,
    called_ae: str,
    source: str,
    action_type: int | None,
    requested_instance: str,
    information: Dataset | None,
    decode_error: str = "",
) -> tuple[StorageCommitment, bool]:
    """Check an N-ACTION and record it (with its audit event, in one transaction).

    Returns the request's row and whether it is new (False: the same request sent
    again while it waits for its answer, acknowledged again and answered once).

    Raises
    ------
    CommitmentRefused
        The request is not taken on; it is audited as denied or failed, nothing is recorded.
    """
    base: dict[str, Any] = {"action": "dicom.commitment.request", "ae_title": calling_ae, "source": source}
    detail: dict[str, Any] = {"facility": facility.code}
    try:
        if node is None or not node.can_store:
            raise CommitmentRefused(
                f"{calling_ae} may not ask for storage commitment here", code="commitment_forbidden"
            )
        if action_type != ACTION_REQUEST:
            raise CommitmentRefused(f"no such action type {action_type}", code="commitment_no_such_action")
        if requested_instance != WELL_KNOWN_INSTANCE:
            raise CommitmentRefused(
                f"not the well-known instance {WELL_KNOWN_INSTANCE}", code="commitment_no_such_instance"
            )
        if decode_error:
            raise CommitmentRefused(decode_error)
        transaction_uid, references = references_parse(information)
        detail.update(transaction_uid=transaction_uid, instances=len(references))
        now = timezone.now()
        long_term = bool(settings.PACS_STORAGE_COMMITMENT_REQUIRE_LONG_TERM)
        wait = dt.timedelta(seconds=settings.PACS_STORAGE_COMMITMENT_MAX_WAIT_SECONDS if long_term else 0)
        found = _found(references, node=node, facility=facility)
        with transaction.atomic():
            existing = (
                StorageCommitment.objects.select_for_update()
                .filter(facility=facility, calling_ae=calling_ae, transaction_uid=transaction_uid)
                .first()
            )
            if existing is not None:
                if existing.state != StorageCommitment.State.PENDING or [tuple(r) for r in existing.references] != [
                    tuple(r) for r in references
                ]:
                    raise CommitmentRefused(
                        f"Transaction UID {transaction_uid} was used already", code="commitment_duplicate"
                    )
                audit_record(**base, detail={**detail, "repeated": True}, patients=found.patients)
                return existing, False
            try:
                with transaction.atomic():
                    row = StorageCommitment.objects.create(
                        transaction_uid=transaction_uid,
                        facility=facility,
                        node=node,
                        calling_ae=calling_ae,
                        called_ae=called_ae,
                        source=source[:255],
                        references=[list(r) for r in references],
                        require_long_term=long_term,
                        received_at=now,
                        answer_by=now + wait,
                        next_attempt_at=now,
                    )
            except IntegrityError:
                # The same request on two associations at once: the other one recorded it.
                raise CommitmentRefused(
                    f"Transaction UID {transaction_uid} was used already", code="commitment_duplicate"
                ) from None
            audit_record(**base, detail={**detail, "commitment": row.pk}, patients=found.patients)
        return row, True
    except CommitmentRefused as exc:
        outcome = AuditEvent.Outcome.DENIED if exc.code == "commitment_forbidden" else AuditEvent.Outcome.FAILURE
        audit_record(**base, outcome=outcome, detail={**detail, "error": exc.message})
        raise


# --- what the archive commits to -------------------------------------------------------------


@dataclass
class Outcome:
    """One evaluation of a request: what is committed, what failed and why, what still waits."""

    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    waiting: list[tuple[str, str]] = field(default_factory=list)  # durable, no long-term copy yet
    patients: set[int] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)

    @property
    def event_type(self) -> int:
        return EVENT_FAILURES_EXIST if self.failed else EVENT_ALL_COMMITTED


@dataclass
class _Found:
    rows: dict[str, dict[str, Any]]
    patients: set[int]


def _chunks(values: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _found(references: list[tuple[str, str]], *, node: RemoteNode | None, facility: Facility) -> _Found:
    """The referenced instances the node may see (the others do not exist for it)."""
    principal = access.principal_for_node(node, facility=facility)
    visible = access.visible_q(principal, "series__study__")
    rows: dict[str, dict[str, Any]] = {}
    for chunk in _chunks([uid for _cls, uid in references]):
        for row in (
            Instance.objects.filter(sop_instance_uid__in=chunk)
            .filter(visible)
            .values(
                "pk",
                "sop_instance_uid",
                "sop_class_uid",
                "series__study__patient_id",
                "series__study__study_instance_uid",
            )
        ):
            rows[row["sop_instance_uid"]] = dict(row)
    return _Found(rows=rows, patients={r["series__study__patient_id"] for r in rows.values()})


def commitment_evaluate(commitment: StorageCommitment, *, now: dt.datetime | None = None) -> Outcome:
    """What the archive commits to for ``commitment`` now (see the module's docstring)."""
    now = now or timezone.now()
    references = [(str(c), str(i)) for c, i in commitment.references]
    found = _found(references, node=commitment.node, facility=commitment.facility)
    pks = [r["pk"] for r in found.rows.values()]
    durable: set[int] = set()
    long_term: set[int] = set()
    for instance_pk, tier in Copy.objects.filter(instance_id__in=pks, verified_at__isnull=False).values_list(
        "instance_id", "tier"
    ):
        kind = tier.split(":", 1)[0]
        if kind in (tiers.FACILITY, tiers.LONGTERM):
            durable.add(instance_pk)
        if kind == tiers.LONGTERM:
            long_term.add(instance_pk)
    held_aside = set(
        InstanceConflict.objects.filter(
            sop_instance_uid__in=list(found.rows),
            facility=commitment.facility,
            calling_ae=commitment.calling_ae,
            resolved_at__isnull=True,
        ).values_list("sop_instance_uid", flat=True)
    )
    waiting_allowed = commitment.require_long_term and now < commitment.answer_by
    outcome = Outcome()
    for sop_class, uid in references:
        row = found.rows.get(uid)
        if row is not None:
            outcome.patients.add(row["series__study__patient_id"])
            outcome.studies.add(row["series__study__study_instance_uid"])
        if not is_storage_sop_class(sop_class):
            outcome.failed.append((sop_class, uid, REASON_CLASS_NOT_SUPPORTED))
        elif row is None:
            outcome.failed.append((sop_class, uid, REASON_NO_SUCH_INSTANCE))
        elif row["sop_class_uid"] != sop_class:
            outcome.failed.append((sop_class, uid, REASON_CLASS_INSTANCE_CONFLICT))
        elif uid in held_aside or row["pk"] not in durable:
            outcome.failed.append((sop_class, uid, REASON_PROCESSING))
        elif commitment.require_long_term and row["pk"] not in long_term:
            if waiting_allowed:
                outcome.waiting.append((sop_class, uid))
            else:
                outcome.failed.append((sop_class, uid, REASON_PROCESSING))
        else:
            outcome.committed.append((sop_class, uid))
    return outcome


def event_information(commitment: StorageCommitment, outcome: Outcome) -> Dataset:
    """The N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = commitment.transaction_uid
    if outcome.committed:
        # Where the committed instances can be retrieved from: the facility the node called.
        ds.RetrieveAETitle = commitment.called_ae
        ds.ReferencedSOPSequence = [_item(c, i) for c, i in outcome.committed]
    if outcome.failed:
        failed = []
        for sop_class, uid, reason in outcome.failed:
            item = _item(sop_class, uid)
            item.FailureReason = reason
            failed.append(item)
        ds.FailedSOPSequence = failed
    return ds


def _item(sop_class: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    return item


# --- answering once ------------------------------------------------------------------------------


def _pending(pk: int) -> Any:
    return StorageCommitment.objects.filter(pk=pk, state=StorageCommitment.State.PENDING)


def _claim(pk: int) -> bool:
    return leases.lease_claim(
        _pending(pk), stale_after=CLAIM_STALE_AFTER, free=Q(claimed_at__isnull=True), field="claimed_at"
    )


def _unclaim(pk: int, *, next_attempt_at: dt.datetime, error: str = "", attempt: bool = False) -> None:
    values: dict[str, Any] = {"claimed_at": None, "next_attempt_at": next_attempt_at}
    if error:
        values["last_error"] = error[:2000]
    if attempt:
        values["attempts"] = F("attempts") + 1
    _pending(pk).update(**values)


def _answered(commitment: StorageCommitment, outcome: Outcome, *, via: str) -> None:
    """Record the answer the node acknowledged, with its audit event."""
    now = timezone.now()
    result = {
        "committed": len(outcome.committed),
        "failed": {uid: reason for _c, uid, reason in outcome.failed},
    }
    with transaction.atomic():
        done = _pending(commitment.pk).update(
            state=StorageCommitment.State.ANSWERED,
            answered_at=now,
            answered_via=via,
            event_type=outcome.event_type,
            result=result,
            claimed_at=None,
            last_error="",
        )
        if done != 1:  # pragma: no cover - only the claimer gets here
            logger.warning("storage commitment %s was answered by someone else meanwhile", commitment.pk)
            return
        audit_record(
            action="dicom.commitment.answer",
            outcome=AuditEvent.Outcome.SUCCESS if not outcome.failed else AuditEvent.Outcome.WARNING,
            ae_title=commitment.calling_ae,
            detail={
                "facility": commitment.facility.code,
                "transaction_uid": commitment.transaction_uid,
                "commitment": commitment.pk,
                "event_type": outcome.event_type,
                "committed": len(outcome.committed),
                "failed": _reasons(outcome),
                "via": via,
                "studies": sorted(outcome.studies)[:20],
            },
            patients=sorted(outcome.patients),
        )
    logger.info(
        "storage commitment %s of %s answered (%s): %d committed, %d failed",
        commitment.transaction_uid,
        commitment.calling_ae,
        "same association" if via == VIA_ASSOCIATION else "new association",
        len(outcome.committed),
        len(outcome.failed),
    )


def _reasons(outcome: Outcome) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _c, _uid, reason in outcome.failed:
        counts[f"0x{reason:04X}"] = counts.get(f"0x{reason:04X}", 0) + 1
    return counts


def _enqueue(pk: int, *, countdown: float | None = None) -> None:
    try:
        # By name: the listener sits below the task that answers.
        current_app.send_task(tasknames.STORAGE_COMMITMENT_ANSWER, args=[pk], countdown=countdown)
    except Exception:
        # Recorded and acknowledged: the sweep queues it again.
        logger.exception("could not queue the answer of storage commitment %s", pk)


# --- on the N-ACTION's association (the listener) ---------------------------------------------------


def handle_n_action(event: Event) -> tuple[int, Dataset | None]:
    """EVT_N_ACTION: record a Storage Commitment request and acknowledge it; the answer
    follows on this association when it is ready at once, or from a task."""
    assoc: Any = event.assoc
    peer = getattr(assoc, "pacs_peer", None)
    if peer is None:  # pragma: no cover - the listener sets it on every association it accepts
        return N_ACTION_STATUS["processing"], None
    close_old_connections()
    req = cast(N_ACTION, event.request)
    if str(req.RequestedSOPClassUID) != SOP_CLASS:
        return N_ACTION_STATUS["commitment_no_such_class"], None
    try:
        information, decode_error = event.action_information, ""
    except Exception as exc:
        information, decode_error = None, f"cannot decode the Action Information: {exc}"[:64]
    try:
        row, new = commitment_request(
            facility=peer.facility,
            node=peer.node,
            calling_ae=peer.calling_ae,
            called_ae=peer.called_ae or peer.facility.ae_title,
            source=peer.address,
            action_type=req.ActionTypeID,
            requested_instance=str(req.RequestedSOPInstanceUID),
            information=information,
            decode_error=decode_error,
        )
    except CommitmentRefused as exc:
        logger.warning("storage commitment request from %s refused: %s", peer.calling_ae, exc.message)
        return _status(N_ACTION_STATUS[exc.code], exc.message), None
    except Exception:
        logger.exception("storage commitment request from %s failed", peer.calling_ae)
        return _status(N_ACTION_STATUS["processing"], "internal error"), None
    if new:
        if settings.PACS_STORAGE_COMMITMENT_SAME_ASSOCIATION and not row.require_long_term:
            thread = threading.Thread(
                target=answer_on_association,
                kwargs={"assoc": assoc, "pk": row.pk, "context": event.context},
                name=f"commitment-{row.pk}",
                daemon=True,
            )
            thread.start()
        else:
            _enqueue(row.pk)
    return _status(0x0000), None


def _status(code: int, comment: str = "") -> Any:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def answer_on_association(*, assoc: Any, pk: int, context: Any) -> bool:
    """Answer request ``pk`` on the association its N-ACTION came on (a thread of the
    listener, started by the handler); when it cannot, leave it to the task. True when
    answered here."""
    try:
        # The N-ACTION response is queued once the reactor has finished serving it.
        deadline = time.monotonic() + 10.0
        while assoc.pacs_serving and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.0005)
        if not assoc.is_established or assoc.pacs_serving or not _claim(pk):
            _enqueue(pk)
            return False
        commitment = StorageCommitment.objects.select_related("facility", "node").get(pk=pk)
        outcome = commitment_evaluate(commitment)
        if outcome.waiting:
            _unclaim(pk, next_attempt_at=timezone.now())
            _enqueue(pk)
            return False
        status = _send_on_association(
            assoc,
            event_information(commitment, outcome),
            outcome.event_type,
            context.context_id,
            UID(context.transfer_syntax),
        )
        if status != 0x0000:
            why = "no answer on the N-ACTION's association" if status is None else f"status 0x{status:04X}"
            logger.info("storage commitment %s: %s; a new association follows", commitment.transaction_uid, why)
            _unclaim(pk, next_attempt_at=timezone.now(), error=f"same association: {why}")
            _enqueue(pk)
            return False
        _answered(commitment, outcome, via=VIA_ASSOCIATION)
        return True
    except Exception:
        logger.exception("storage commitment %s: answering on the association failed", pk)
        try:
            _unclaim(pk, next_attempt_at=timezone.now())
        finally:
            _enqueue(pk)
        return False
    finally:
        connections.close_all()


_message_ids = iter(range(1, 1 << 62))
_message_ids_lock = threading.Lock()


def _message_id() -> int:
    with _message_ids_lock:
        return next(_message_ids) % 65535 + 1


def _send_on_association(assoc: Any, ds: Dataset, event_type: int, context_id: int, ts: UID) -> int | None:
    """Send the N-EVENT-REPORT on an acceptor's association without holding its reactor
    (``fence.send_request``); the response's status, None when none came (the node
    released or aborted, or the DIMSE timeout passed)."""
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    if data is None:
        raise ValueError("cannot encode the Event Information")
    msg_id = _message_id()
    req = N_EVENT_REPORT()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = SOP_CLASS
    req.AffectedSOPInstanceUID = WELL_KNOWN_INSTANCE
    req.EventTypeID = event_type
    req.EventInformation = BytesIO(data)
    answered = threading.Event()
    status: list[int] = []

    def response(event: Event) -> None:
        message = event.message  # EVT_DIMSE_RECV carries it
        command = getattr(message, "command_set", None)
        if isinstance(message, N_EVENT_REPORT_RSP) and command is not None:
            if command.get("MessageIDBeingRespondedTo") == msg_id:
                status.append(int(command.get("Status", 0xFFFF)))
                answered.set()

    assoc.bind(evt.EVT_DIMSE_RECV, response)
    try:
        if not fence.send_request(assoc, req, context_id):
            return None
        deadline = time.monotonic() + float(settings.PACS_DICOM_DIMSE_TIMEOUT)
        while not answered.wait(0.02):
            if not assoc.is_established or time.monotonic() > deadline:
                return status[0] if status else None
        return status[0]
    finally:
        assoc.unbind(evt.EVT_DIMSE_RECV, response)


# --- on a new association (the task) -------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What :func:`commitment_answer` did: ``done`` (answered, undelivered, or nothing to do),
    else the seconds after which to look again."""

    state: str
    again_in: float | None = None


def commitment_answer(*, commitment_pk: int) -> Step:
    """Answer request ``commitment_pk`` on a new association to its node, when its answer is
    ready; otherwise say when to look again.

    Idempotent: a request answered already, or claimed by someone else now, is left alone.
    A delivery that fails counts an attempt and is tried again after a backoff, up to
    ``PACS_STORAGE_COMMITMENT_DELIVERY_ATTEMPTS`` attempts; then the request is undelivered.
    """
    if not _claim(commitment_pk):
        return Step("busy" if _pending(commitment_pk).exists() else "done")
    commitment = StorageCommitment.objects.select_related("facility", "node").get(pk=commitment_pk)
    now = timezone.now()
    try:
        outcome = commitment_evaluate(commitment, now=now)
    except Exception:
        _unclaim(commitment_pk, next_attempt_at=now)
        raise
    if outcome.waiting:
        recheck = float(settings.PACS_STORAGE_COMMITMENT_RECHECK_SECONDS)
        until_deadline = max((commitment.answer_by - now).total_seconds(), 0.0)
        again_in = min(recheck, until_deadline) + 0.5
        _unclaim(commitment_pk, next_attempt_at=now + dt.timedelta(seconds=again_in))
        return Step("waiting", again_in)
    error = ""
    try:
        status = _send_new_association(commitment, event_information(commitment, outcome), outcome.event_type)
        if status == 0x0000:
            _answered(commitment, outcome, via=VIA_NEW_ASSOCIATION)
            return Step("answered")
        error = "no association or no answer" if status is None else f"the node answered 0x{status:04X}"
    except Exception as exc:
        logger.exception("storage commitment %s: sending the answer failed", commitment.transaction_uid)
        error = f"{type(exc).__name__}: {exc}"
    return _undelivered(commitment, error)


def _undelivered(commitment: StorageCommitment, error: str) -> Step:
    attempts = commitment.attempts + 1
    now = timezone.now()
    if attempts >= settings.PACS_STORAGE_COMMITMENT_DELIVERY_ATTEMPTS:
        with transaction.atomic():
            done = _pending(commitment.pk).update(
                state=StorageCommitment.State.UNDELIVERED, attempts=attempts, last_error=error[:2000], claimed_at=None
            )
            if done == 1:
                audit_record(
                    action="dicom.commitment.answer",
                    outcome=AuditEvent.Outcome.FAILURE,
                    ae_title=commitment.calling_ae,
                    detail={
                        "facility": commitment.facility.code,
                        "transaction_uid": commitment.transaction_uid,
                        "commitment": commitment.pk,
                        "attempts": attempts,
                        "error": error[:500],
                    },
                )
        logger.error(
            "storage commitment %s of %s undelivered after %d attempts: %s",
            commitment.transaction_uid,
            commitment.calling_ae,
            attempts,
            error,
        )
        return Step("undelivered")
    base = float(settings.PACS_STORAGE_COMMITMENT_RETRY_SECONDS)
    again_in = min(base * 2 ** (attempts - 1), 3600.0)
    logger.warning(
        "storage commitment %s of %s not delivered (attempt %d): %s; again in %.0f s",
        commitment.transaction_uid,
        commitment.calling_ae,
        attempts,
        error,
        again_in,
    )
    _unclaim(commitment.pk, next_attempt_at=now + dt.timedelta(seconds=again_in), error=error, attempt=True)
    return Step("retry", again_in)


def _send_new_association(commitment: StorageCommitment, ds: Dataset, event_type: int) -> int | None:
    """Open an association from the called facility's AE title to the node and send the
    N-EVENT-REPORT, proposing the SCP role (PS3.4 J.3.3.1.3); the node's status, None
    when there was no association or no answer."""
    node = commitment.node
    if node is None:
        raise CommitmentUndelivered("the node was removed", code="commitment_undelivered")
    ae = fence.CheckedAE(ae_title=commitment.called_ae or commitment.facility.ae_title)
    ae.acse_timeout = settings.PACS_DICOM_ACSE_TIMEOUT
    ae.dimse_timeout = settings.PACS_DICOM_DIMSE_TIMEOUT
    ae.network_timeout = settings.PACS_DICOM_NETWORK_TIMEOUT
    ae.add_requested_context(SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, ext_neg=[build_role(SOP_CLASS, scp_role=True)])
    if not assoc.is_established:
        return None
    try:
        status, _reply = assoc.send_n_event_report(ds, event_type, SOP_CLASS, WELL_KNOWN_INSTANCE, msg_id=1)
        return int(status.Status) if "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()


def commitments_overdue(*, grace_seconds: float) -> list[int]:
    """Requests still pending well past their next attempt and held by nobody: their task was lost."""
    now = timezone.now()
    return list(
        StorageCommitment.objects.filter(
            state=StorageCommitment.State.PENDING,
            next_attempt_at__lt=now - dt.timedelta(seconds=grace_seconds),
        )
        .filter(leases.stale_q(stale_after=CLAIM_STALE_AFTER, now=now, field="claimed_at"))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:1000]
    )
