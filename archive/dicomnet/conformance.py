"""What the listener conforms to, read from the listener itself: the facts of the
DICOM Conformance Statement's networking part (``docs/DICOM_CONFORMANCE.md``,
written by :mod:`archive.conformance`).

Nothing here is a list written by hand of what the listener does:

* the presentation contexts (abstract syntax, transfer syntaxes, roles) are
  those of the AE the listener builds (:func:`archive.dicomnet.listener.build_ae`,
  its ``supported_contexts``), grouped by pynetdicom's service class of each SOP class;
* the events the listener answers are the ``(evt.EVT_..., handler)`` pairs
  :func:`~archive.dicomnet.listener.start_listener` binds (read from its source:
  the list is built inside the function);
* the statuses are :data:`archive.dicomnet.statuses.STATUSES`, which the handlers use;
* the Query/Retrieve keys are :data:`archive.query.ATTRIBUTES` (and its unique
  keys, levels and constants); the Modality Worklist keys are the registered
  worklist source's (booking registers them: :func:`worklist_keys_register`);
* the implementation class UID and version name are the AE's.

What only words can say (what a service class means, what each way of
matching does) is in the small tables below, keyed by what the code has; an
entry the code has and the tables lack raises ``KeyError`` when the
statement is written, so a new service class or matching kind cannot be
left out silently.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom.sop_class import uid_to_service_class

from archive import query
from archive.dicomnet import statuses
from archive.dicomnet.statuses import StatusUse

# pynetdicom's service class of a SOP class -> (the standard's name, PS3.4 annex,
# the DIMSE services the SCP answers). Storage Commitment's SCP also sends N-EVENT-REPORT.
SERVICE_CLASSES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "VerificationServiceClass": ("Verification", "A", ("C-ECHO",)),
    "StorageServiceClass": ("Storage", "B", ("C-STORE",)),
    "NonPatientObjectStorageServiceClass": ("Non-Patient Object Storage", "GG", ("C-STORE",)),
    "QueryRetrieveServiceClass": ("Query/Retrieve", "C", ("C-FIND", "C-MOVE", "C-GET")),
    "BasicWorklistManagementServiceClass": ("Basic Worklist Management", "K", ("C-FIND",)),
    "ProcedureStepServiceClass": ("Modality Performed Procedure Step", "F", ("N-CREATE", "N-SET")),
    "StorageCommitmentServiceClass": ("Storage Commitment Push Model", "J", ("N-ACTION", "N-EVENT-REPORT")),
    "ServiceClass": ("Other", "", ()),
}

# How each kind of key of archive.query matches (PS3.4 C.2.2.2).
MATCHING: dict[str, str] = {
    query.TEXT: "single value, wildcard (`*`, `?`), list of values, universal",
    query.PN: "single value (case-insensitive), wildcard (`*`, `?`), universal",
    query.UID: "single value, list of UIDs, universal",
    query.DATE: "single value, range (`A-B`, `A-`, `-B`), universal",
    query.TIME: "single value, range (`A-B`, `A-`, `-B`), universal",
    query.INT: "single value, universal",
    query.MULTI: "single value or wildcard: any of the values held, universal",
    query.COUNT: "none (return key only)",
}

# The listener's name for each kind of request, as the statuses table names the services.
_SERVICE_OF_SUFFIX = {"FIND": statuses.FIND, "MOVE": statuses.MOVE, "GET": statuses.GET}


@dataclass(frozen=True)
class Context:
    """One abstract syntax the listener accepts, with what it accepts with it."""

    abstract_syntax: str
    name: str
    service_class: str  # pynetdicom's class name (a key of SERVICE_CLASSES)
    transfer_syntaxes: tuple[str, ...]
    scu_role: bool | None  # SCP/SCU Role Selection: None when not negotiated
    scp_role: bool | None

    @property
    def role(self) -> str:
        """The archive's role, as the presentation context table says it."""
        if self.scu_role and self.scp_role:
            if SERVICE_CLASSES[self.service_class][2] == ("C-STORE",):
                return "SCP; SCU with SCP/SCU role selection (C-GET)"
            return "SCP; SCU with SCP/SCU role selection"
        if self.scu_role:
            return "SCU (role selection)"
        return "SCP"

    @property
    def services(self) -> tuple[str, ...]:
        """The DIMSE services the statuses table names for this SOP class."""
        if self.service_class == "BasicWorklistManagementServiceClass":
            return (statuses.WORKLIST,)
        if self.service_class == "QueryRetrieveServiceClass":
            return (_SERVICE_OF_SUFFIX[self.name.rsplit(" ", 1)[-1].upper()],)
        return SERVICE_CLASSES[self.service_class][2]


def presentation_contexts() -> list[Context]:
    """The presentation contexts the listener accepts, in the order it adds them."""
    from archive.dicomnet.listener import build_ae

    ae = build_ae("CONFORMANCE")
    rows = []
    for cx in ae.supported_contexts:
        uid = str(cx.abstract_syntax)
        service_class = uid_to_service_class(uid).__name__
        SERVICE_CLASSES[service_class]  # noqa: B018  (a service class the statement cannot name: KeyError)
        rows.append(
            Context(
                abstract_syntax=uid,
                name=UID(uid).name,
                service_class=service_class,
                transfer_syntaxes=tuple(str(ts) for ts in cx.transfer_syntax),
                scu_role=cx.scu_role,
                scp_role=cx.scp_role,
            )
        )
    return rows


@dataclass(frozen=True)
class Implementation:
    class_uid: str
    version_name: str
    ae_title_default: str
    maximum_associations_setting: str = "PACS_DICOM_MAX_ASSOCIATIONS"


def implementation() -> Implementation:
    """The Implementation Class UID and Version Name the listener sends (pynetdicom's)."""
    from archive.dicomnet.listener import build_ae

    ae = build_ae("CONFORMANCE")
    return Implementation(
        class_uid=str(ae.implementation_class_uid),
        version_name=str(ae.implementation_version_name or ""),
        ae_title_default="PACS",
    )


def handled_events() -> list[tuple[str, str, str]]:
    """(event, handler, the first line of its docstring) the listener binds, as
    ``start_listener`` lists them."""
    from archive.dicomnet import listener

    source = inspect.getsource(listener.start_listener)
    found = []
    for event, name in re.findall(r"\(evt\.(EVT_\w+),\s*([\w.]+)\)", source):
        handler: object = listener
        for part in name.split("."):
            handler = getattr(handler, part, None)
        doc = " ".join((inspect.getdoc(handler) or "").split("\n\n")[0].split()) if handler is not None else ""
        doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "")
        doc = re.sub(r"^(EVT_\w+,?\s*)+:\s*", "", doc)  # the events, which the table names already
        found.append((event, name, re.split(r"(?<=\.)\s", doc, maxsplit=1)[0]))
    return found


# PS3.8 9.3.4: the A-ASSOCIATE-RJ fields' meanings, for the rejections the listener sends.
_RJ_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_RJ_SOURCE = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE)",
    3: "DICOM UL service-provider (presentation)",
}
_RJ_REASON = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-AE-title-not-recognized",
    (1, 7): "called-AE-title-not-recognized",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}


def rejections() -> list[tuple[str, str, str, str]]:
    """(result, source, reason, when) of each A-ASSOCIATE-RJ the listener's policy sends."""
    from archive.dicomnet import listener

    rows = [
        (listener.REJECT_CALLED_AE, "the called AE title is no facility's"),
        (
            listener.REJECT_CALLING_AE,
            "the calling AE title is not a RemoteNode of the called facility, calls from another address, "
            "without its TLS certificate, or has no rights",
        ),
    ]
    return [
        (_RJ_RESULT[result], _RJ_SOURCE[source], _RJ_REASON[(source, reason)], when)
        for (result, source, reason), when in rows
    ]


def status_table(service: str) -> list[StatusUse]:
    return statuses.statuses_for(service)


@dataclass(frozen=True)
class QueryKey:
    level: str
    keyword: str
    tag: str  # (gggg,eeee)
    kind: str
    unique: bool

    @property
    def matching(self) -> str:
        return MATCHING[self.kind]


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def query_keys() -> list[QueryKey]:
    """The keys the matching engine knows (C-FIND and QIDO-RS), level by level."""
    keys = [
        QueryKey(a.level, a.keyword, _tag(a.keyword), a.kind, query.UNIQUE_KEYS.get(a.level) == a.keyword)
        for a in query.ATTRIBUTES.values()
    ]
    return sorted(keys, key=lambda k: query.LEVELS.index(k.level))


def query_constants() -> dict[str, str]:
    """Keys answered with a fixed value (every archived object is on line)."""
    return dict(query._CONSTANTS)


def query_models() -> dict[str, tuple[str, ...]]:
    """The levels of each information model."""
    return dict(query.ROOT_LEVELS)


# --- the Modality Worklist keys: booking answers the worklist and registers its keys ---


@dataclass(frozen=True)
class WorklistKey:
    """One key of a Modality Worklist query, as the worklist source treats it."""

    keyword: str
    sequence: str  # "" at the top level, else the sequence it lies in
    kind: str | None  # how it matches (a kind of archive.query); None: return key only


WorklistKeysSource = Callable[[], list[WorklistKey]]
_worklist_keys: WorklistKeysSource | None = None


def worklist_keys_register(source: WorklistKeysSource | None) -> None:
    """Booking (``BookingConfig.ready``) registers the keys its worklist source knows,
    as it registers the source itself (the archive does not import booking)."""
    global _worklist_keys
    _worklist_keys = source


def worklist_keys() -> list[WorklistKey]:
    """The registered worklist keys; none when no worklist source is registered."""
    return _worklist_keys() if _worklist_keys is not None else []


def worklist_key_tag(key: WorklistKey) -> str:
    return _tag(key.keyword)
