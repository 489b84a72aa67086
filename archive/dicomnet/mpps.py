"""Modality Performed Procedure Step SCP (PS3.4 F): the N-CREATE and N-SET handlers.

They translate only: the rules are :mod:`archive.procedure_steps`, whose
refusals (``StepError.code``) answer the statuses of :data:`MPPS_STATUS`
(PS3.4 F.7.2.1.2, F.7.2.2.2 and PS3.7 C). Who may report steps: a registered
node of the called facility that may read its worklist (``can_worklist``): in
IHE Scheduled Workflow the Acquisition Modality that takes the scheduled step
from the worklist is the one that reports it performed. An unknown AE let in
by ``PACS_DICOM_ACCEPT_UNKNOWN_AE`` may not. Every create and set, refused or
not, is audited (``dicom.mpps``) with the step's patient when it is known.

``archive/dicomnet/listener.py`` registers the handlers and the SOP class.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from django.db import close_old_connections
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import N_CREATE, N_SET

from archive.models import Patient, PerformedProcedureStep
from archive.procedure_steps import StepError, patient_for, step_create, step_set
from kernel.audit import audit_record
from kernel.models import AuditEvent

if TYPE_CHECKING:  # the listener imports this module to register its handlers
    from pynetdicom.events import Event

    from archive.dicomnet.listener import Peer

logger = logging.getLogger(__name__)

MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124
NO_SUCH_SOP_CLASS = 0x0118
# PS3.4 F.7.2.2.2: a step completed or discontinued answers Processing failure with this Error ID.
MAY_NO_LONGER_BE_UPDATED = 0xA710

# The DIMSE edge of archive.procedure_steps.StepError (PS3.7 C).
MPPS_STATUS = {
    "mpps_missing_attribute": 0x0120,  # Missing attribute
    "mpps_missing_value": 0x0121,  # Missing attribute value
    "mpps_invalid_value": 0x0106,  # Invalid attribute value
    "mpps_not_allowed": 0x0106,  # a "Not allowed" attribute of an N-SET: its value may not be given
    "mpps_invalid_instance": 0x0117,  # Invalid object instance
    "mpps_duplicate": 0x0111,  # Duplicate SOP instance
    "mpps_unknown": 0x0112,  # No such SOP instance
    "mpps_final": PROCESSING_FAILURE,  # with Error ID A710
    "mpps_processing": PROCESSING_FAILURE,
}


def _status(code: int, comment: str = "", *, error_id: int | None = None, keywords: tuple[str, ...] = ()) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    if error_id is not None:
        ds.ErrorID = error_id
    tags = [tag_for_keyword(k) for k in keywords]
    if any(tags):
        ds.AttributeIdentifierList = [t for t in tags if t is not None]
    return ds


def _peer(event: Event) -> Peer:
    peer = getattr(event.assoc, "pacs_peer", None)
    assert peer is not None  # handle_requested set it on accepting the association
    return peer


def _refusal(peer: Peer, event: Event, service: str) -> Dataset | None:
    """The status refusing a peer that may not report steps, or another SOP class; None when it may."""
    sop_class = str(
        getattr(event.request, "AffectedSOPClassUID", None) or getattr(event.request, "RequestedSOPClassUID", "")
    )
    if sop_class != MODALITY_PERFORMED_PROCEDURE_STEP:
        return _status(NO_SUCH_SOP_CLASS, f"{service} of {sop_class} is not served")
    if peer.node is None or not peer.node.can_worklist:
        return _status(NOT_AUTHORIZED, f"{peer.calling_ae} may not report procedure steps here")
    return None


def _audit(
    peer: Peer,
    *,
    service: str,
    outcome: str,
    sop_instance_uid: str,
    step: PerformedProcedureStep | None = None,
    patient: Patient | None = None,
    **detail: Any,
) -> None:
    try:
        audit_record(
            action="dicom.mpps",
            outcome=outcome,
            ae_title=peer.calling_ae,
            source=peer.address,
            patient=step.patient if step is not None else patient,
            study_instance_uid=step.study_instance_uid if step is not None else "",
            detail={
                "facility": peer.facility.code,
                "service": service,
                "sop_instance_uid": sop_instance_uid,
                **(
                    {"status": step.status, "accession_number": step.accession_number, "step_id": step.step_id}
                    if step is not None
                    else {}
                ),
                **detail,
            },
        )
    except Exception:
        logger.exception("could not write the audit event of an MPPS %s", service)


def _named_patient(peer: Peer, attributes: Dataset | str) -> Patient | None:
    """The patient a refused N-CREATE names (for its audit event), when the archive knows them."""
    if isinstance(attributes, str):
        return None
    try:
        return patient_for(peer.facility, attributes)
    except Exception:
        logger.exception("MPPS N-CREATE from %s: the patient named could not be looked up", peer.calling_ae)
        return None


def _answer_error(
    peer: Peer, exc: StepError, *, service: str, sop_instance_uid: str, step: Any, patient: Patient | None = None
) -> Dataset:
    logger.warning("MPPS %s %s from %s refused: %s", service, sop_instance_uid, peer.calling_ae, exc.message)
    _audit(
        peer,
        service=service,
        outcome=AuditEvent.Outcome.FAILURE,
        sop_instance_uid=sop_instance_uid,
        step=step,
        patient=patient,
        error=exc.message,
        code=exc.code,
    )
    return _status(
        MPPS_STATUS.get(exc.code, PROCESSING_FAILURE),
        exc.message,
        error_id=MAY_NO_LONGER_BE_UPDATED if exc.code == "mpps_final" else None,
        keywords=exc.keywords,
    )


def _attributes(event: Event, keyword: str) -> Dataset | str:
    try:
        ds = getattr(event, keyword)
        # Decoded on first access: read every element now, inside the try.
        for _elem in ds:
            pass
        return cast(Dataset, ds)
    except Exception as exc:
        return f"cannot decode the attribute list: {exc}"


def handle_n_create(event: Event) -> tuple[Dataset, Dataset | None]:
    """EVT_N_CREATE: a new step IN PROGRESS."""
    peer = _peer(event)
    close_old_connections()
    uid = str(cast(N_CREATE, event.request).AffectedSOPInstanceUID or "")
    refusal = _refusal(peer, event, "N-CREATE")
    if refusal is not None:
        named = _named_patient(peer, _attributes(event, "attribute_list"))
        _audit(peer, service="N-CREATE", outcome=AuditEvent.Outcome.DENIED, sop_instance_uid=uid, patient=named)
        return refusal, None
    answer: Dataset | None = None
    if not uid:
        # PS3.4 F.7.2.1.1: the SCU may leave it to the SCP, which answers with the one it gave.
        uid = generate_uid()
        answer = Dataset()
        answer.AffectedSOPInstanceUID = uid
    attributes = _attributes(event, "attribute_list")
    if isinstance(attributes, str):
        return _answer_error(
            peer, StepError(attributes, code="mpps_invalid_value"), service="N-CREATE", sop_instance_uid=uid, step=None
        ), None
    existing = PerformedProcedureStep.objects.filter(sop_instance_uid=uid).first()
    try:
        step = step_create(
            facility=peer.facility, calling_ae=peer.calling_ae, sop_instance_uid=uid, attributes=attributes
        )
    except StepError as exc:
        # A duplicate is audited with the step that exists, if the peer's facility holds it.
        shown = existing if existing is not None and existing.facility_id == peer.facility.pk else None
        named = None if shown is not None else _named_patient(peer, attributes)
        return _answer_error(peer, exc, service="N-CREATE", sop_instance_uid=uid, step=shown, patient=named), None
    except Exception as exc:
        logger.exception("MPPS N-CREATE from %s failed", peer.calling_ae)
        _audit(
            peer, service="N-CREATE", outcome=AuditEvent.Outcome.FAILURE, sop_instance_uid=uid, error=type(exc).__name__
        )
        return _status(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}"), None
    _audit(peer, service="N-CREATE", outcome=AuditEvent.Outcome.SUCCESS, sop_instance_uid=uid, step=step)
    return _status(SUCCESS), answer


def handle_n_set(event: Event) -> tuple[Dataset, Dataset | None]:
    """EVT_N_SET: a step IN PROGRESS changed, completed or discontinued."""
    peer = _peer(event)
    close_old_connections()
    uid = str(cast(N_SET, event.request).RequestedSOPInstanceUID or "")
    refusal = _refusal(peer, event, "N-SET")
    if refusal is not None:
        _audit(peer, service="N-SET", outcome=AuditEvent.Outcome.DENIED, sop_instance_uid=uid)
        return refusal, None
    # The step as it is, for the audit of a refusal (its patient): the peer's facility's only.
    current = PerformedProcedureStep.objects.filter(sop_instance_uid=uid, facility=peer.facility).first()
    modifications = _attributes(event, "modification_list")
    if isinstance(modifications, str):
        return _answer_error(
            peer,
            StepError(modifications, code="mpps_invalid_value"),
            service="N-SET",
            sop_instance_uid=uid,
            step=current,
        ), None
    try:
        change = step_set(facility=peer.facility, sop_instance_uid=uid, modifications=modifications)
    except StepError as exc:
        return _answer_error(peer, exc, service="N-SET", sop_instance_uid=uid, step=current), None
    except Exception as exc:
        logger.exception("MPPS N-SET from %s failed", peer.calling_ae)
        _audit(
            peer,
            service="N-SET",
            outcome=AuditEvent.Outcome.FAILURE,
            sop_instance_uid=uid,
            step=current,
            error=type(exc).__name__,
        )
        return _status(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}"), None
    _audit(
        peer,
        service="N-SET",
        outcome=AuditEvent.Outcome.SUCCESS,
        sop_instance_uid=uid,
        step=change.step,
        previous_status=change.previous_status,
        discontinuation_reason=change.step.discontinuation_reason,
    )
    return _status(SUCCESS), None
