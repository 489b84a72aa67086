"""The DIMSE statuses the listener answers, in one table: the handlers use the
constants, the conformance statement (``docs/DICOM_CONFORMANCE.md``, written by
``manage.py conformance_statement``) prints :data:`STATUSES` service by service.

A status the listener starts answering is added here, with the service that
sends it and when, or the statement does not list it. Rows whose ``source``
is ``"pynetdicom"`` are sent by pynetdicom's service classes on the listener's
behalf (a handler's answer that pynetdicom turns into a status, the final
response after C-GET/C-MOVE sub-operations); they are listed so that a peer
knows every status it can meet.

No import of the project: a leaf (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import dataclass

# PS3.7 C.4 and PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4, K.4.1.1.4.
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
WARNING_CONFLICT = 0xB000
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_MISMATCH = 0xA900
IDENTIFIER_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
UNABLE_TO_PROCESS = 0xC000
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
# Sent by pynetdicom for the listener (see the module's docstring).
MOVE_DESTINATION_UNKNOWN = 0xA801
SUB_OPERATIONS_FAILED = 0xA702
SUB_OPERATIONS_WARNING = 0xB000

# The services, as the statement names them.
ECHO = "C-ECHO"
STORE = "C-STORE"
FIND = "C-FIND"
MOVE = "C-MOVE"
GET = "C-GET"
WORKLIST = "C-FIND (Modality Worklist)"
N_CREATE = "N-CREATE"  # Modality Performed Procedure Step (archive.dicomnet.mpps)
N_SET = "N-SET"
N_ACTION = "N-ACTION"  # Storage Commitment Push Model (archive.dicomnet.commitment)
N_EVENT_REPORT = "N-EVENT-REPORT"


@dataclass(frozen=True)
class StatusUse:
    """One status as one service answers it."""

    code: int
    kind: str  # Success, Pending, Cancel, Warning, Failure (PS3.7 C.1)
    meaning: str  # the standard's name for it
    services: tuple[str, ...]
    when: str  # when this archive answers it
    source: str = "listener"  # or "pynetdicom"

    @property
    def hex(self) -> str:
        return f"0x{self.code:04X}"


STATUSES: tuple[StatusUse, ...] = (
    StatusUse(SUCCESS, "Success", "Success", (ECHO,), "always (an association the node policy accepted)"),
    StatusUse(
        SUCCESS,
        "Success",
        "Success",
        (STORE,),
        "the object is written, fsynced and indexed; also for a duplicate with identical bytes",
    ),
    StatusUse(
        WARNING_CONFLICT,
        "Warning",
        "Coercion of data elements",
        (STORE,),
        "an object with the SOP Instance UID of an archived one and other bytes: kept aside for review, "
        "the archived object unchanged (ErrorComment says so)",
    ),
    StatusUse(
        OUT_OF_RESOURCES,
        "Failure",
        "Refused: Out of resources",
        (STORE,),
        "the disk is full or the index database is unavailable",
    ),
    StatusUse(
        SOP_CLASS_MISMATCH,
        "Failure",
        "Error: Data Set does not match SOP Class",
        (STORE,),
        "the data set's SOP Class or Instance UID differs from its file meta or from the C-STORE request",
    ),
    StatusUse(
        CANNOT_UNDERSTAND,
        "Failure",
        "Error: Cannot understand",
        (STORE,),
        "a truncated data set, an identifying UID missing or not a valid UID, native pixel data shorter than "
        "its geometry or encapsulated pixel data with fewer fragments than frames; a rejection note (IOCM) "
        "naming another patient's or study's instances",
    ),
    StatusUse(
        SOP_CLASS_NOT_SUPPORTED, "Failure", "Refused: SOP Class not supported", (STORE,), "not a storage SOP class"
    ),
    StatusUse(
        PROCESSING_FAILURE,
        "Failure",
        "Processing failure",
        (STORE,),
        "the received data set could not be written or indexed (ErrorComment names the error)",
    ),
    StatusUse(
        NOT_AUTHORIZED,
        "Failure",
        "Refused: Not authorized",
        (STORE, FIND, MOVE, GET, WORKLIST),
        "the calling node lacks the right (RemoteNode: can_store, can_query, can_retrieve, can_worklist); "
        "an unregistered AE admitted by PACS_DICOM_ACCEPT_UNKNOWN_AE may only echo and store; a rejection "
        "note (IOCM) from such an AE or naming another facility's instances",
    ),
    StatusUse(PENDING, "Pending", "Matches are continuing", (FIND, WORKLIST), "one response per match"),
    StatusUse(SUCCESS, "Success", "Matching is complete", (FIND, WORKLIST), "after the last match"),
    StatusUse(CANCEL, "Cancel", "Matching terminated due to Cancel request", (FIND, WORKLIST), "after a C-CANCEL"),
    StatusUse(
        OUT_OF_RESOURCES,
        "Failure",
        "Refused: Out of resources",
        (FIND, WORKLIST),
        "more matches than PACS_QUERY_MAX_MATCHES: the first ones were sent, the query must be narrowed",
    ),
    StatusUse(
        IDENTIFIER_MISMATCH,
        "Failure",
        "Error: Identifier does not match SOP Class",
        (FIND, MOVE, GET, WORKLIST),
        "a malformed identifier: an unknown level, a missing unique key, a bad date or range, a value over "
        "its VR's length, too many wildcards (ErrorComment says which key)",
    ),
    StatusUse(
        UNABLE_TO_PROCESS,
        "Failure",
        "Error: Unable to process",
        (FIND, WORKLIST),
        "an internal error, or no worklist source (the booking app) registered",
    ),
    StatusUse(PENDING, "Pending", "Sub-operations are continuing", (MOVE, GET), "one response per sub-operation"),
    StatusUse(
        SUCCESS,
        "Success",
        "Sub-operations complete, no failures",
        (MOVE, GET),
        "every instance was sent",
        "pynetdicom",
    ),
    StatusUse(
        SUB_OPERATIONS_WARNING,
        "Warning",
        "Sub-operations complete, one or more failures or warnings",
        (MOVE, GET),
        "some instances could not be sent or the peer answered a warning",
        "pynetdicom",
    ),
    StatusUse(
        SUB_OPERATIONS_FAILED,
        "Failure",
        "Refused: Out of resources, unable to perform sub-operations",
        (MOVE, GET),
        "every sub-operation failed",
        "pynetdicom",
    ),
    StatusUse(
        CANCEL,
        "Cancel",
        "Sub-operations terminated due to Cancel indication",
        (MOVE, GET),
        "after a C-CANCEL, between two sub-operations",
    ),
    StatusUse(
        MOVE_DESTINATION_UNKNOWN,
        "Failure",
        "Refused: Move Destination unknown",
        (MOVE,),
        "the destination is not a RemoteNode of the called facility marked as retrieve destination",
        "pynetdicom",
    ),
    StatusUse(
        PROCESSING_FAILURE,
        "Failure",
        "Processing failure",
        (MOVE, GET),
        "one sub-operation: the object could not be converted to a transfer syntax the peer accepted "
        "(listed in Failed SOP Instance UID List)",
    ),
    # Modality Performed Procedure Step (PS3.4 F.7; archive.dicomnet.mpps, archive.procedure_steps).
    StatusUse(SUCCESS, "Success", "Success", (N_CREATE, N_SET), "the step is recorded and the booking follows it"),
    StatusUse(
        0x0120,
        "Failure",
        "Missing attribute",
        (N_CREATE, N_SET),
        "a Type 1 or 2 attribute of PS3.4 Table F.7.2-1 is absent (Attribute Identifier List names it)",
    ),
    StatusUse(0x0121, "Failure", "Missing attribute value", (N_CREATE, N_SET), "a Type 1 attribute is empty"),
    StatusUse(
        0x0106,
        "Failure",
        "Invalid attribute value",
        (N_CREATE, N_SET),
        "a malformed date, time or UID, a status other than IN PROGRESS at creation, a final state without "
        "its end date and time (or, COMPLETED, without a performed series), an attribute N-SET may not change",
    ),
    StatusUse(0x0117, "Failure", "Invalid object instance", (N_CREATE,), "the SOP Instance UID is not a valid UID"),
    StatusUse(0x0111, "Failure", "Duplicate SOP instance", (N_CREATE,), "a step with this SOP Instance UID exists"),
    StatusUse(0x0112, "Failure", "No such SOP instance", (N_SET,), "an unknown step, or another facility's"),
    StatusUse(
        PROCESSING_FAILURE,
        "Failure",
        "Processing failure (Error ID 0xA710)",
        (N_SET,),
        "the step is COMPLETED or DISCONTINUED and may no longer be updated",
    ),
    StatusUse(
        NOT_AUTHORIZED,
        "Failure",
        "Refused: Not authorized",
        (N_CREATE, N_SET),
        "the calling node is not a RemoteNode of the called facility with can_worklist",
    ),
    # Storage Commitment Push Model (PS3.4 J; archive.dicomnet.commitment).
    StatusUse(
        SUCCESS,
        "Success",
        "Success",
        (N_ACTION,),
        "the request is recorded; the N-EVENT-REPORT follows on this association or on a new one",
    ),
    StatusUse(NOT_AUTHORIZED, "Failure", "Refused: Not authorized", (N_ACTION,), "the node may not store"),
    StatusUse(0x0115, "Failure", "Invalid argument value", (N_ACTION,), "a malformed Transaction UID or reference"),
    StatusUse(0x0123, "Failure", "No such action", (N_ACTION,), "an Action Type ID other than 1"),
    StatusUse(
        0x0112, "Failure", "No such SOP instance", (N_ACTION,), "not the well-known instance 1.2.840.10008.1.20.1.1"
    ),
    StatusUse(0x0118, "Failure", "No such SOP Class", (N_ACTION,), "not the Storage Commitment Push Model SOP Class"),
    StatusUse(
        0x0210,
        "Failure",
        "Duplicate invocation",
        (N_ACTION,),
        "a Transaction UID already answered, or repeated with other references",
    ),
    StatusUse(0x0213, "Failure", "Resource limitation", (N_ACTION,), "more references than one request may hold"),
    StatusUse(PROCESSING_FAILURE, "Failure", "Processing failure", (N_ACTION,), "an internal error"),
    StatusUse(
        SUCCESS,
        "Success",
        "Event Type 1: all committed; Event Type 2: some failed",
        (N_EVENT_REPORT,),
        "sent by the archive; committed means archived with a verified copy (and, with "
        "PACS_STORAGE_COMMITMENT_REQUIRE_LONG_TERM, a long-term copy) and visible to the node; Failure "
        "Reason 0x0112 no such instance (or not visible), 0x0119 another SOP class, 0x0122 not a storage "
        "class, 0x0110 no verified copy, a conflict held aside, or the long-term wait ran out",
        "archive (as SCU)",
    ),
)


def statuses_for(service: str) -> list[StatusUse]:
    """The statuses one service answers: success, pending, cancel, warning, failure."""
    order = ("Success", "Pending", "Cancel", "Warning", "Failure")
    return sorted((s for s in STATUSES if service in s.services), key=lambda s: order.index(s.kind))
