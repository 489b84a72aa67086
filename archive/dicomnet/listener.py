"""The DICOM listener: pynetdicom handlers and the association server around them.

Handlers only translate: a C-STORE's received file goes to
:func:`archive.ingest.instance_ingest`, its outcome becomes a DIMSE status.
Around them sit guards pynetdicom 3.0.4 does not provide:

* who may associate is decided per facility, from ``RemoteNode`` rows read
  at association time (so a node added in the admin works at once): a node
  only from its registered addresses, on the TLS port only with its own
  client certificate, and a node that has a certificate only on the TLS port
  (:func:`decide_association`, ``archive/dicomnet/peers.py``);
* what a node queries and retrieves is limited by the access policy to its
  scope, never a concealed study (``Peer.principal``); an unknown AE let in
  by ``PACS_DICOM_ACCEPT_UNKNOWN_AE`` may echo and store, nothing else;
* the gate (``archive/dicomnet/transport.py``) admits a connection only once it has
  sent its A-ASSOCIATE-RQ within ``PACS_DICOM_REQUEST_TIMEOUT`` (TLS
  handshake included) and caps the connections of each peer address;
* pynetdicom's DUL cuts a peer that declares a PDU longer than
  ``PACS_DICOM_PDU_READ_LIMIT`` before buffering it, and (fast paths) wakes
  on events instead of polling;
* a received data set stays in memory up to ``PACS_DICOM_SPOOL_MEMORY`` and
  spills to this process's incoming folder beyond, so memory does not grow
  with an object's size (``_SpoolFile``).

Every use of pynetdicom's internals is in ``archive/dicomnet/fence.py``,
with its table; this module uses pynetdicom through the fence's classes and
its public API (event handlers, ``make_server``). ``PACS_DICOM_FAST_PATHS``
(off: pynetdicom's own behaviour where the fence has a fast path) is read
when the listener starts.
"""

from __future__ import annotations

import copy
import errno
import io
import logging
import re
import socket
import ssl
import struct
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UncompressedTransferSyntaxes,
)
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import create_file_meta, decode
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes these names at run time
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from archive import access
from archive.dicom import ACCEPTED_TRANSFER_SYNTAXES, DicomRejected, check_store_context
from archive.dicom_transcode import TranscodeError
from archive.dicomnet import commitment, fence, find_fast, mpps, observe, peers, retrieve_transcode
from archive.dicomnet import transport as dul
from archive.dicomnet.statuses import (
    CANCEL,
    CANNOT_UNDERSTAND,
    IDENTIFIER_MISMATCH,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PENDING,
    PROCESSING_FAILURE,
    SOP_CLASS_MISMATCH,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    UNABLE_TO_PROCESS,
    WARNING_CONFLICT,
)
from archive.ingest import CONFLICT, DUPLICATE, STORED, IngestError, instance_ingest
from archive.models import Facility, Instance, Patient, RemoteNode, Study
from archive.query import QueryError, element_bytes, query_encoded, query_run, retrieve_instances
from archive.storage import tiers as storage
from archive.storage.retrieve import instance_file, instances_with_copies
from kernel.audit import audit_record
from kernel.models import AuditEvent

logger = logging.getLogger(__name__)

# The statuses answered are imported from archive/dicomnet/statuses.py: one table,
# which the conformance statement prints; a new status goes there first.

# Information models, by the SOP class of the request.
QR_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: "patient",
    StudyRootQueryRetrieveInformationModelFind: "study",
    PatientRootQueryRetrieveInformationModelMove: "patient",
    StudyRootQueryRetrieveInformationModelMove: "study",
    PatientRootQueryRetrieveInformationModelGet: "patient",
    StudyRootQueryRetrieveInformationModelGet: "study",
}

# The DIMSE edge of the error base (kernel.errors): a refused C-STORE (IngestError) or
# query/retrieve identifier (QueryError) answers the status of its code.
DIMSE_STATUS = {
    "invalid": CANNOT_UNDERSTAND,
    "sop_class_mismatch": SOP_CLASS_MISMATCH,
    "not_storage": SOP_CLASS_NOT_SUPPORTED,
    "out_of_resources": OUT_OF_RESOURCES,
    "processing": PROCESSING_FAILURE,
    "identifier": IDENTIFIER_MISMATCH,
    "not_authorized": NOT_AUTHORIZED,  # a rejection note from a sender who may not (archive.rejection)
}

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
# Transient, service provider (presentation), local limit exceeded: as pynetdicom answers
# beyond its maximum_associations.
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)


# Modality Worklist C-FIND is answered from the bookings, which the archive does
# not import (docs/ARCHITECTURE.md: booking depends on archive, not the reverse): the
# booking app registers the function that answers when Django starts.
# It is called as ``source(identifier, facility=..., calling_ae=...)`` and
# yields the matching worklist items as data sets.
WorklistSource = Callable[..., Iterator[Dataset]]
_worklist_source: WorklistSource | None = None


def worklist_source_register(source: WorklistSource | None) -> None:
    global _worklist_source
    _worklist_source = source


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        # ErrorComment is LO: 64 characters at most.
        ds.ErrorComment = comment[:64]
    return ds


# --- who may associate -------------------------------------------------------


@dataclass
class Peer:
    """What the listener knows about the peer of one association."""

    facility: Facility
    node: RemoteNode | None  # None: an unknown AE let in by PACS_DICOM_ACCEPT_UNKNOWN_AE
    calling_ae: str
    address: str  # "ip:port", for the audit log
    called_ae: str = ""
    tls: bool = False
    studies: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    failures: list[str] = field(default_factory=list)
    failed: int = 0
    busy: bool = False
    # Requests other than C-STORE, by service ("echo", "find", "worklist", "move",
    # "get"), for the association's log line: counted as they arrive, no query.
    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def store_counts(self) -> dict[str, int]:
        """The association's C-STOREs by outcome: stored, duplicate, conflict (from
        ``studies``) and failed."""
        totals = {STORED: 0, DUPLICATE: 0, CONFLICT: 0}
        for counts in self.studies.values():
            for outcome in totals:
                totals[outcome] += counts.get(outcome, 0)
        return {**totals, "failed": self.failed}

    @property
    def principal(self) -> access.Principal:
        """Who the peer is for the access policy: its node's scope; an unknown AE sees nothing."""
        return access.principal_for_node(self.node, facility=self.facility)


def decide_association(
    *,
    calling_ae: str,
    called_ae: str,
    address: str,
    facility_code: str | None,
    listener_ae: str | None,
    accept_unknown: bool,
    peer_ip: str | None = None,
    certificate_sha256: str | None = None,
    facility_codes: frozenset[str] = frozenset(),
) -> tuple[Peer | None, tuple[int, int, int] | None, str]:
    """Accept (a Peer) or reject (an A-ASSOCIATE-RJ reason) an association request.

    A listener bound to one facility answers to ``listener_ae`` (default: the
    facility's AE title); an unbound one serves every facility under its own,
    or only those of ``facility_codes`` when given (PACS_DICOM_FACILITIES: a
    hospital's listener on its own network): another facility's AE title is
    "called AE title not recognised", as an unknown one.

    A registered node is accepted only from its registered addresses
    (``peer_ip``, default the host part of ``address``); on the TLS port
    (``certificate_sha256`` is the fingerprint of the client's certificate,
    None on the plain port) only with its own certificate; a node that has a
    certificate only on the TLS port; a node without any right not at all. A
    registered AE title that fails any of these is refused even when
    ``accept_unknown`` lets unknown AEs in: it is someone else using the
    node's name, or a node switched off. Every refusal answers "calling AE
    title not recognised"; the reason goes to the log and the audit only.
    """
    calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
    if peer_ip is None:
        peer_ip = address.rsplit(":", 1)[0]
    if facility_code:
        facility = Facility.objects.filter(code=facility_code).first()
        if facility is not None and called_ae != (listener_ae or facility.ae_title):
            facility = None
    else:
        facility = Facility.objects.filter(ae_title=called_ae).first()
        if facility is not None and facility_codes and facility.code not in facility_codes:
            return None, REJECT_CALLED_AE, f"called AE title {called_ae!r} ({facility.code}) is not served here"
    if facility is None:
        return None, REJECT_CALLED_AE, f"called AE title {called_ae!r} is not served here"
    node = RemoteNode.objects.filter(facility=facility, ae_title=calling_ae).first()
    tls = certificate_sha256 is not None
    if node is not None:
        refused = _node_refusal(node, peer_ip=peer_ip, certificate_sha256=certificate_sha256)
        if refused:
            return None, REJECT_CALLING_AE, f"calling AE title {calling_ae!r} of {facility.code} {refused}"
    elif not accept_unknown:
        return (
            None,
            REJECT_CALLING_AE,
            f"calling AE title {calling_ae!r} is not a registered DICOM node of {facility.code}",
        )
    peer = Peer(facility=facility, node=node, calling_ae=calling_ae, address=address, called_ae=called_ae, tls=tls)
    return peer, None, ""


def _node_refusal(node: RemoteNode, *, peer_ip: str, certificate_sha256: str | None) -> str:
    """Why a registered node's association is refused (empty: it is not)."""
    if not node.may_associate():
        return "has no rights (a node switched off in the admin)"
    if not peers.address_allowed(peer_ip, node.allowed_addresses()):
        return f"called from {peer_ip}, which is not among its registered addresses"
    expected = peers.fingerprint_normalize(node.tls_certificate_sha256)
    if certificate_sha256 is None:
        if expected:
            return "has a TLS certificate registered and must call the DICOM TLS port"
    elif not expected:
        return "has no TLS certificate registered (RemoteNode.tls_certificate_sha256)"
    elif certificate_sha256 != expected:
        return f"presented another TLS certificate (SHA-256 {certificate_sha256})"
    return ""


def _is_tls(assoc: Association) -> bool:
    return isinstance(getattr(assoc.dul.socket, "socket", None), ssl.SSLSocket)


def _peer_certificate(assoc: Association) -> str | None:
    """The SHA-256 of the peer's client certificate on the TLS port; None on the plain port."""
    sock = getattr(assoc.dul.socket, "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    # CERT_REQUIRED: the handshake fails without one; "" would match no node.
    return peers.certificate_sha256(der) if der else ""


def handle_requested(event: Event) -> None:
    """EVT_REQUESTED: accept the association (its :class:`Peer` on the association)
    or reject it, audited, before pynetdicom negotiates. Anything unexpected rejects."""
    assoc = cast(PacsAssociation, event.assoc)  # the server's associations are PacsAssociations
    rq = assoc.requestor.primitive
    assert rq is not None  # pynetdicom triggers EVT_REQUESTED with the A-ASSOCIATE-RQ it received
    address = f"{assoc.requestor.address}:{assoc.requestor.port}"
    reject: tuple[int, int, int] | None = (0x02, 0x01, 0x01)
    why = "internal error"
    try:
        server = assoc.pacs_server
        close_old_connections()
        peer, reject, why = decide_association(
            calling_ae=str(rq.calling_ae_title),
            called_ae=str(rq.called_ae_title),
            address=address,
            peer_ip=str(assoc.requestor.address),
            certificate_sha256=_peer_certificate(assoc),
            facility_code=server.facility_code,
            listener_ae=server.listener_ae,
            accept_unknown=server.accept_unknown,
            facility_codes=server.facility_codes,
        )
        if reject is None and server.draining:
            peer, reject, why = None, REJECT_LOCAL_LIMIT, "the listener is shutting down"
        if reject is None and not assoc.association_slot_acquire():
            peer, reject, why = (
                None,
                REJECT_LOCAL_LIMIT,
                f"{server.slots.max_associations} associations in progress (PACS_DICOM_MAX_ASSOCIATIONS)",
            )
        if reject is None:
            assoc.pacs_peer = peer
            return
    except Exception:
        logger.exception("association policy failed; rejecting")
    logger.warning(
        "rejecting association from %s, calling AE %r to %r: %s",
        address,
        str(rq.calling_ae_title).strip(),
        str(rq.called_ae_title).strip(),
        why,
    )
    _audit_quietly(
        action="dicom.association",
        outcome=AuditEvent.Outcome.DENIED,
        ae_title=str(rq.calling_ae_title).strip()[:16],
        source=address,
        detail={"called_ae": str(rq.called_ae_title).strip(), "reason": why, "tls": _is_tls(assoc)},
    )
    # As pynetdicom's own rejection does: pynetdicom then skips its negotiation.
    assert reject is not None  # only a return follows decide_association's None
    assoc.acse.send_reject(*reject)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


# --- the association, its handlers and the server ---------------------------------


class SendsStoredInstances(fence.CheckedReactor):
    """C-STORE sub-operations of C-GET and C-MOVE: a :class:`StoredInstance` is
    sent from its archived file, byte for byte, when the peer accepted its
    transfer syntax (``fence.send_file``); otherwise transcoded to one the peer
    accepted (``retrieve_transcode``, compressed data in a render worker); one
    that cannot be converted is a failed sub-operation, and the retrieve goes on.
    Methods only: a C-MOVE's sub-association is switched to this class
    (fence row 12), before its thread starts; its loop is fence row 6's."""

    def send_c_store(
        self,
        dataset: Any,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        options: dict[str, Any] = {
            "msg_id": msg_id,
            "priority": priority,
            "originator_aet": originator_aet,
            "originator_id": originator_id,
        }
        if not isinstance(dataset, StoredInstance):
            return super().send_c_store(dataset, **options)
        instance = dataset.instance
        status: Dataset | None = None
        try:
            with instance_file(instance, held=True) as path:
                context = retrieve_transcode.stored_context(self, instance)
                if context is not None:
                    status = fence.send_file(self, Path(path), context, **options)
                else:
                    try:
                        ds = retrieve_transcode.for_peer(self, Path(path), instance)
                    except TranscodeError as exc:
                        # A failed sub-operation (PS3.4 C.4.2.3.1): nothing was sent for it.
                        logger.warning("C-STORE sub-operation of %s not sent: %s", instance.sop_instance_uid, exc)
                        status = _status(PROCESSING_FAILURE, exc.message)
                        return status
                    status = super().send_c_store(ds, **options)
            return status
        finally:
            dataset.tally.record(instance, status)


class PacsAssociation(SendsStoredInstances, fence.FencedAssociation):
    """An acceptor association of the listener: its :class:`Peer`, the refusals
    the access policy answers before pynetdicom's service classes, its store
    audit and its peer address's slot.

    The audit is written when pynetdicom reports the end (EVT_RELEASED,
    EVT_ABORTED: :func:`handle_ended`) and the slot given back when the
    connection closes (EVT_CONN_CLOSE: :func:`handle_conn_closed`). The
    thread's end closes its database connection and does what no event did:
    an exception in a state-machine action (a malformed command set) stops
    pynetdicom's DUL without one.
    """

    def __init__(self, ae: AE, *, server: PacsServer, address: str, first_pdu: bytes) -> None:
        super().__init__(
            ae,
            "acceptor",
            fast=server.fast_paths,
            first_pdu=first_pdu,
            read_limit=settings.PACS_DICOM_PDU_READ_LIMIT,
            data_set_buffer=_SpoolFile,
        )
        self.pacs_server = server
        self.pacs_peer: Peer | None = None
        self._pacs_address = address  # the peer's, whose slot this association holds
        self._pacs_lock = threading.Lock()
        self._pacs_audited = False
        self._pacs_slot_held = True
        self._pacs_association_held = False
        self._pacs_started = time.monotonic()

    def audit_once(self) -> None:
        """Write the association's store audit and its log line (once, whoever asks first)."""
        with self._pacs_lock:
            if self._pacs_audited:
                return
            self._pacs_audited = True
        if self.pacs_peer is not None:
            try:
                _audit_association(self.pacs_peer)
            finally:
                logger.info("%s", association_summary(self.pacs_peer, self._pacs_ending(), self._pacs_seconds()))

    def _pacs_ending(self) -> str:
        if self.is_released:
            return "released"
        return "aborted" if self.is_aborted else "closed"

    def _pacs_seconds(self) -> float:
        return time.monotonic() - self._pacs_started

    def slot_release(self) -> None:
        """Give the peer address's slot back (once)."""
        with self._pacs_lock:
            if not self._pacs_slot_held:
                return
            self._pacs_slot_held = False
        self.pacs_server.slots.release(self._pacs_address)

    def association_slot_acquire(self) -> bool:
        """A place under PACS_DICOM_MAX_ASSOCIATIONS (every process of the listener
        together), held until the association's thread ends; False: none free."""
        if not self.pacs_server.slots.association_acquire():
            return False
        self._pacs_association_held = True
        return True

    def run(self) -> None:
        try:
            super().run()
        finally:
            try:
                self.audit_once()
            finally:
                try:
                    connections.close_all()
                finally:
                    if self._pacs_association_held:
                        self._pacs_association_held = False
                        self.pacs_server.slots.association_release()
                    self.slot_release()

    def service_answered(self, msg: Any, context_id: int) -> bool:
        """A C-MOVE or C-GET the access policy refuses (no retrieve right, a bad
        identifier) is answered here with its own status and comment (fence row 9):
        pynetdicom's C-MOVE would first ask the handler for a destination and could
        only say "destination unknown"."""
        peer = self.pacs_peer
        if peer is not None:
            _count_request(peer, msg)
        if peer is None or not isinstance(msg, C_MOVE | C_GET) or str(msg.AffectedSOPClassUID) not in QR_MODELS:
            return False
        context = next((cx for cx in self.accepted_contexts if cx.context_id == context_id), None)
        if context is None:
            return False  # pynetdicom aborts the association
        service = "C-MOVE" if isinstance(msg, C_MOVE) else "C-GET"
        refusal = _retrieve_refusal(peer, msg, context, service)
        if refusal is None:
            return False
        rsp = C_MOVE() if service == "C-MOVE" else C_GET()
        rsp.MessageIDBeingRespondedTo = msg.MessageID
        rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
        rsp.Status = refusal.Status
        rsp.ErrorComment = refusal.get("ErrorComment")
        self.dimse.send_msg(rsp, context_id)
        return True


def _count_request(peer: Peer, msg: Any) -> None:
    """Count a request other than a C-STORE (those are counted by outcome, in ``studies``)."""
    if isinstance(msg, C_STORE):
        return
    service = type(msg).__name__.removeprefix("C_").removeprefix("N_").lower()  # C_FIND -> "find"
    if service == "find" and str(getattr(msg, "AffectedSOPClassUID", "")) == ModalityWorklistInformationFind:
        service = "worklist"
    peer.requests[service] += 1


def association_summary(peer: Peer, ending: str, seconds: float) -> str:
    """The association's log line: who called whom, what was stored and asked, how long it lasted.

    Made from what the association counted as it went (no query): the node's
    description is the one read when the association was accepted."""
    who = peer.calling_ae
    if peer.node is not None and peer.node.description:
        who += f" ({peer.node.description})"
    elif peer.node is None:
        who += " (unregistered)"
    stores = peer.store_counts()
    received = stores[STORED] + stores[DUPLICATE] + stores[CONFLICT]
    stored = f"{received} instance{'s' if received != 1 else ''} stored"
    notes = [
        f"{stores[k]} {label}" for k, label in ((DUPLICATE, "already archived"), (CONFLICT, "in conflict")) if stores[k]
    ]
    if notes:
        stored += f" ({', '.join(notes)})"
    stored += f", {stores['failed']} failed"
    services = ", ".join(f"{name} {count}" for name, count in sorted(peer.requests.items()) if count)
    return (
        f"association from {peer.address} {who} to {peer.called_ae} ({peer.facility.code})"
        f"{' over TLS' if peer.tls else ''} {ending} after {seconds:.1f} s: {stored}"
        f"{'; ' + services if services else ''}"
    )


def handle_ended(event: Event) -> None:
    """EVT_RELEASED, EVT_ABORTED: the association's store audit, written in the
    association's own thread, with its database connection. The thread's end
    writes it instead when the event comes from another thread (``stop_listener``
    aborting) or in the middle of a request (an abort from inside a C-GET, on a
    sub-operation's timeout, while the C-GET still reads the database)."""
    assoc = event.assoc
    if not isinstance(assoc, PacsAssociation):
        return
    if threading.current_thread() is not assoc or assoc.pacs_serving:
        return
    assoc.audit_once()


def handle_conn_closed(event: Event) -> None:
    """EVT_CONN_CLOSE: the peer address's slot is free again."""
    if isinstance(event.assoc, PacsAssociation):
        event.assoc.slot_release()


class PacsRequestHandler(fence.FencedRequestHandler):
    """Creates the association for a connection the gate admitted, with the
    A-ASSOCIATE-RQ the gate read (``first_pdu``)."""

    server: PacsServer

    def __init__(self, request: Any, client_address: Any, server: Any, *, first_pdu: bytes = b"") -> None:
        self.first_pdu = first_pdu
        self.started = False
        super().__init__(request, client_address, server)

    def make_association(self) -> PacsAssociation:
        return PacsAssociation(
            self.ae, server=self.server, address=str(self.client_address[0]), first_pdu=self.first_pdu
        )

    def handle(self) -> None:
        super().handle()
        # Started: the association gives the slot back when its connection closes.
        self.started = True


# Seconds a process of a listener of several waits before accepting a connection
# when a sibling holds fewer (an idle process accepts in well under a millisecond).
ACCEPT_DEFERRAL = 0.005


class PacsServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the gate of ``archive/dicomnet/transport.py`` in front:
    each connection's thread first waits (``PACS_DICOM_REQUEST_TIMEOUT``) for
    the TLS handshake and the A-ASSOCIATE-RQ, and only then becomes an
    association. ``slots`` caps the connections of each peer address; the
    plain and the TLS server share it."""

    facility_code: str | None = None
    facility_codes: frozenset[str] = frozenset()  # PACS_DICOM_FACILITIES; empty: every facility
    listener_ae: str | None = None
    accept_unknown: bool = False
    draining: bool = False
    slots: dul.AddressSlots | dul.SharedSlots  # shared by the processes of a listener of several
    tls_server: PacsServer | None = None  # the DICOM TLS port, served beside this one
    fast_paths: bool = True  # PACS_DICOM_FAST_PATHS when the listener started (fence.py)
    # Gate threads end with the process; associations are joined by stop_listener.
    daemon_threads = True
    # socketserver's listen backlog is 5: a burst of connections beyond it has its
    # SYNs dropped and retried by the peer a second later, a stall for everyone.
    request_queue_size = 128

    def __init__(self, *args: Any, listening_socket: socket.socket | None = None, **kwargs: Any) -> None:
        # A process of a listener of several (archive/dicomnet/prefork.py) serves the
        # socket its parent bound and listens on, shared with its siblings.
        self.listening_socket = listening_socket
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.listening_socket is None:
            super().server_bind()
            return
        assert self.socket is not None
        self.socket.close()  # the one socketserver made, unbound
        self.socket = self.listening_socket
        # Non-blocking: every process wakes for a connection, one accepts it, the
        # others' accept() fails at once (socketserver ignores that OSError).
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.listening_socket is None:
            super().server_activate()

    def server_close(self) -> None:
        if self.listening_socket is None:
            super().server_close()
            return
        # Only this process's descriptor: shutdown() would stop the port for the
        # siblings too (the parent does that when the whole listener stops).
        assert self.socket is not None
        self.socket.close()

    def get_request(self) -> tuple[Any, Any]:
        # pynetdicom does the TLS handshake here, in the accepting thread, where
        # one silent peer stops the port: the gate does it in the connection's own.
        assert self.socket is not None
        if self.listening_socket is None:
            return self.socket.accept()
        if isinstance(self.slots, dul.SharedSlots) and not self.slots.least_loaded():
            # Every process woke for this connection: one that holds fewer lets it
            # have it first; if none takes it (all busy), this one does.
            time.sleep(ACCEPT_DEFERRAL)
        try:
            sock, address = self.socket.accept()
        except BlockingIOError:
            raise  # a sibling process took the connection
        except OSError:
            # The parent shut the socket (the listener stops): this process's loop
            # ends within moments; meanwhile the socket stays readable, do not spin.
            time.sleep(0.05)
            raise
        sock.setblocking(True)  # the gate sets its own timeouts
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        address = str(client_address[0])
        if self.draining or not self.slots.acquire(address):
            if not self.draining:
                self._log_refused(address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release(address)
            raise

    def _log_refused(self, address: str) -> None:
        # A flood is logged once per address every few seconds, with its count, not once a connection.
        now = time.monotonic()
        refused = self.__dict__.setdefault("_refused", {})
        if len(refused) > 4096:  # a flood from many addresses: forget, do not grow
            refused.clear()
        since, count = refused.get(address, (0.0, 0))
        if now - since < 10.0:
            refused[address] = (since, count + 1)
            return
        refused[address] = (now, 0)
        logger.warning(
            "connection from %s closed: it holds %d connections already (PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS)%s",
            address,
            self.slots.held(address),
            f"; {count} more closed since the last message" if count else "",
        )

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        address = str(client_address[0])
        handler: PacsRequestHandler | None = None
        sock = request
        try:
            sock, first_pdu = dul.admit(
                request,
                timeout=settings.PACS_DICOM_REQUEST_TIMEOUT,
                ssl_context=self.ssl_context,
                read_limit=settings.PACS_DICOM_PDU_READ_LIMIT,
            )
            handler = PacsRequestHandler(sock, client_address, self, first_pdu=first_pdu)
        except dul.NotAdmitted as exc:
            level = logging.INFO if exc.quiet else logging.WARNING
            logger.log(level, "connection from %s:%s not admitted: %s", address, client_address[1], exc)
            sock = exc.sock or sock
        except Exception:
            self.handle_error(request, client_address)
        finally:
            if handler is None or not handler.started:
                self.slots.release(address)
                dul.close(sock)


def _peer(event: Event) -> Peer:
    """The :class:`Peer` of a request's association: handle_requested set it on
    accepting the association."""
    peer = cast(PacsAssociation, event.assoc).pacs_peer
    assert peer is not None
    return peer


def handle_echo(event: Event) -> int:
    return SUCCESS


def handle_store(event: Event) -> Dataset:
    peer = _peer(event)
    peer.busy = True
    req = cast(C_STORE, event.request)
    spool = req.DataSet if isinstance(req.DataSet, _SpoolFile) and req.DataSet.name is not None else None
    try:
        close_old_connections()
        if peer.node is not None and not peer.node.can_store:
            peer.failed += 1
            return _status(NOT_AUTHORIZED, f"{peer.calling_ae} may not store here")
        if spool is None:
            # pynetdicom spooled the data set itself, to a file it removes after this
            # handler (_config.STORE_RECV_CHUNKED_DATASET, switched on by someone
            # else in this process): ingestion copies it.
            path, data, owned = event.dataset_path, None, False
        else:
            spool.finish()
            if spool.error is not None:
                peer.failed += 1
                spool.discard()
                full = spool.error.errno in (errno.ENOSPC, errno.EDQUOT)
                logger.error("receiving a data set from %s failed: %s", peer.calling_ae, spool.error)
                return _status(
                    OUT_OF_RESOURCES if full else PROCESSING_FAILURE, f"cannot write: {spool.error.strerror}"
                )
            assert spool.name is not None  # checked above; finish() does not clear it
            path, data, owned = spool.name, spool.in_memory(), True
        try:
            check_store_context(
                abstract_syntax=event.context.abstract_syntax, affected_sop_class_uid=str(req.AffectedSOPClassUID)
            )
            result = instance_ingest(
                path=path,
                data=data,
                facility=peer.facility,
                owned=owned,
                calling_ae=peer.calling_ae,
                expected_sop_class_uid=str(req.AffectedSOPClassUID),
                expected_sop_instance_uid=str(req.AffectedSOPInstanceUID),
            )
        except (IngestError, DicomRejected) as exc:
            peer.failed += 1
            if len(peer.failures) < 20:
                peer.failures.append(f"{req.AffectedSOPInstanceUID}: {exc.message}")
            logger.warning("C-STORE from %s refused: %s", peer.calling_ae, exc.message)
            return _status(DIMSE_STATUS[exc.code], exc.message)
        except Exception as exc:
            peer.failed += 1
            logger.exception("C-STORE from %s failed", peer.calling_ae)
            return _status(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        counts = peer.studies[result.study_instance_uid]
        counts.setdefault("study_id", result.study_id)
        counts.setdefault("patient_id", result.patient_id)
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
        if result.outcome == CONFLICT:
            return _status(WARNING_CONFLICT, "conflict kept for review; archived object unchanged")
        return _status(SUCCESS)
    finally:
        if spool is not None:
            spool.discard()  # what ingestion did not take (as pynetdicom removes its own file)
        peer.busy = False


# --- query and retrieve -------------------------------------------------------------


def _peer_may(peer: Peer, right: str) -> bool:
    # An unknown AE is let in only by PACS_DICOM_ACCEPT_UNKNOWN_AE (the demo), to
    # echo and store: it never reads (C-FIND, C-MOVE, C-GET, the worklist).
    if peer.node is None:
        return right == "can_store"
    return bool(getattr(peer.node, right))


# The transfer syntaxes of the C-FIND fast road (find_fast): query_encoded writes little endian.
_FAST_FIND_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})

# Responses a C-FIND may have queued for sending before it waits for the socket:
# enough to keep the connection busy, few enough that memory does not grow with
# the number of matches and that a C-CANCEL stops the answer within this many.
_FIND_QUEUE_AHEAD = 32


def _keep_pace(assoc: Association) -> None:
    """Wait while the association's sending queue is full (or until it ends)."""
    queue = assoc.dul.to_provider_queue
    while queue.qsize() >= _FIND_QUEUE_AHEAD and assoc.is_established:
        time.sleep(0.0005)


def _identifier(event: Event) -> tuple[Dataset | None, str]:
    try:
        return event.identifier, ""
    except Exception as exc:  # a malformed identifier
        return None, f"cannot decode the identifier: {exc}"[:64]


def handle_find(event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """C-FIND SCP, Patient Root and Study Root: matches stream as pending responses.
    Modality Worklist queries go to :func:`_worklist_find`."""
    peer = _peer(event)
    close_old_connections()
    if str(event.request.AffectedSOPClassUID) == ModalityWorklistInformationFind:
        yield from _worklist_find(event, peer)
        return
    root = QR_MODELS[str(event.request.AffectedSOPClassUID)]
    audit = {"action": "dicom.query", "ae_title": peer.calling_ae, "source": peer.address}
    if not _peer_may(peer, "can_query"):
        _audit_quietly(**audit, outcome=AuditEvent.Outcome.DENIED, detail={"facility": peer.facility.code})
        yield _status(NOT_AUTHORIZED, f"{peer.calling_ae} may not query here"), None
        return
    identifier, error = _identifier(event)
    level = str(identifier.get("QueryRetrieveLevel", "")) if identifier is not None else ""
    detail: dict[str, Any] = {"facility": peer.facility.code, "model": root, "level": level}
    if identifier is not None:
        detail["keys"] = {e.keyword: str(e.value) for e in identifier if e.keyword and e.value not in (None, "")}
    studies: list[str] = []
    patients: list[int] = []  # of each match, in the order answered
    ts = event.context.transfer_syntax
    limit = settings.PACS_QUERY_MAX_MATCHES
    options: dict[str, Any] = {"level": level, "root": root, "limit": limit + 1, "principal": peer.principal}
    writer: find_fast.PendingWriter | None = None
    if getattr(event.assoc, "pacs_fast", False) and ts in _FAST_FIND_SYNTAXES:
        # The fast road (find_fast): each match's identifier as bytes from its row,
        # framed and written by the writer.
        writer = find_fast.PendingWriter(
            event.assoc,
            context_id=int(event.context.context_id),
            command=find_fast.pending_command(event.request),
        )

    def results() -> Iterator[Dataset | bytes]:
        if identifier is None:
            raise QueryError(error)
        if writer is not None:
            encoded = query_encoded(
                identifier,
                implicit=ts == ImplicitVRLittleEndian,
                added=[("QueryRetrieveLevel", level.upper()), ("RetrieveAETitle", peer.called_ae)],
                patients=patients,
                **options,
            )
            if encoded is not None:
                column = encoded.column("StudyInstanceUID")
                for data, row in encoded.answers:
                    if column is not None and len(studies) < 20:
                        studies.append(str(row[column]))
                    yield data
                return
        encoding = (ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian)
        for result in query_run(identifier, encoding=encoding, patients=patients, **options):
            if "StudyInstanceUID" in result and len(studies) < 20:
                studies.append(str(result.StudyInstanceUID))
            result.QueryRetrieveLevel = level.upper()
            result.RetrieveAETitle = peer.called_ae
            yield result

    detail["studies"] = studies
    yield from _answer_find(
        event, peer, results(), audit=audit, detail=detail, what="C-FIND", patients=patients, writer=writer
    )


def _answer_find(
    event: Event,
    peer: Peer,
    results: Iterator[Dataset] | Iterator[Dataset | bytes],
    *,
    audit: dict[str, Any],
    detail: dict[str, Any],
    what: str,
    patients: list[Any] | None = None,
    resolve: Callable[[list[Any]], list[int]] | None = None,
    writer: find_fast.PendingWriter | None = None,
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Send ``results`` as pending responses, keeping pace with the socket; end
    with the final status (cancelled, too many matches, refused, failed) and
    write one audit event, with the patients of the matches sent (``patients``:
    one per result, in order, filled as the results are produced; primary keys,
    or what ``resolve`` turns into primary keys).

    A result that is bytes (an identifier encoded by ``query_encoded``, the fast
    road) is framed and written by ``writer``; a data set is yielded to pynetdicom."""
    limit = settings.PACS_QUERY_MAX_MATCHES
    matches = 0
    outcome, final = AuditEvent.Outcome.SUCCESS, _status(SUCCESS)
    try:
        for result in results:
            encoded = writer is not None and isinstance(result, bytes)
            if not encoded:
                _keep_pace(event.assoc)
            if event.is_cancelled:
                outcome, final = AuditEvent.Outcome.WARNING, _status(CANCEL)
                detail["cancelled"] = True
                break
            if matches == limit:
                outcome = AuditEvent.Outcome.WARNING
                final = _status(OUT_OF_RESOURCES, f"more than {limit} matches: narrow the query")
                detail["truncated"] = True
                break
            matches += 1
            if not encoded:
                yield PENDING, cast(Dataset, result)
            elif not cast(find_fast.PendingWriter, writer).add(cast(bytes, result)):
                # The association ended or the peer aborted: pynetdicom sends nothing more.
                outcome = AuditEvent.Outcome.WARNING
                detail["ended"] = True
                break
    except QueryError as exc:
        logger.warning("%s from %s refused: %s", what, peer.calling_ae, exc)
        outcome, final = AuditEvent.Outcome.FAILURE, _status(DIMSE_STATUS[exc.code], exc.message)
        detail["error"] = str(exc)
    except Exception as exc:
        logger.exception("%s from %s failed", what, peer.calling_ae)
        outcome, final = AuditEvent.Outcome.FAILURE, _status(UNABLE_TO_PROCESS, f"internal error: {type(exc).__name__}")
        detail["error"] = type(exc).__name__
    if writer is not None:
        writer.flush()  # the pending responses framed go out before the final status
    detail["matches"] = matches
    # Results produced but not sent (the one past the limit, a cancelled one) are not counted.
    returned: dict[str, Any] = {}
    if patients is not None:
        try:
            sent = patients[:matches]
            returned["patients"] = resolve(sent) if resolve is not None else sent
        except Exception:
            logger.exception("%s from %s: the patients answered could not be listed", what, peer.calling_ae)
    _audit_quietly(**audit, outcome=outcome, detail=detail, **returned)
    yield final, None


def _worklist_find(event: Event, peer: Peer) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Modality Worklist C-FIND (PS3.4 K.4.1.3): the registered source answers
    from the bookings of the called facility; each item is a pending response."""
    audit = {"action": "dicom.worklist", "ae_title": peer.calling_ae, "source": peer.address}
    identifier, error = _identifier(event)
    detail: dict[str, Any] = {"facility": peer.facility.code, "matches": 0}
    if identifier is not None:
        detail["keys"] = _worklist_keys(identifier)
    if not _peer_may(peer, "can_worklist"):
        _audit_quietly(**audit, outcome=AuditEvent.Outcome.DENIED, detail=detail)
        yield _status(NOT_AUTHORIZED, f"{peer.calling_ae} may not read the worklist here"), None
        return
    source = _worklist_source
    if source is None:
        logger.error("worklist C-FIND from %s: no worklist source is registered", peer.calling_ae)
        _audit_quietly(**audit, outcome=AuditEvent.Outcome.FAILURE, detail={**detail, "error": "no source"})
        yield _status(UNABLE_TO_PROCESS, "the worklist is not available"), None
        return

    codici: list[str] = []  # each item's PatientID (the codice fiscale), for the audit log

    def results() -> Iterator[Dataset]:
        if identifier is None:
            raise QueryError(error)
        # Whose item each answer is: PatientID asked for as a return key when the
        # modality did not, and left out of its answer.
        asked = "PatientID" in identifier
        query = identifier
        if not asked:
            query = copy.deepcopy(identifier)
            query.PatientID = ""
        for item in source(query, facility=peer.facility, calling_ae=peer.calling_ae):
            codici.append(str(item.get("PatientID", "") or ""))
            if not asked and "PatientID" in item:
                del item.PatientID
            yield item

    yield from _answer_find(
        event,
        peer,
        results(),
        audit=audit,
        detail=detail,
        what="worklist C-FIND",
        patients=codici,
        resolve=_patients_by_codice_fiscale,
    )


def _patients_by_codice_fiscale(codici: list[str]) -> list[int]:
    known = dict(
        Patient.objects.filter(codice_fiscale__in={c for c in codici if c}).values_list("codice_fiscale", "pk")
    )
    return [known[c] for c in codici if c in known]


def _worklist_keys(identifier: Dataset) -> dict[str, str]:
    """The matching keys of a worklist identifier, those of its Scheduled
    Procedure Step item included, for the audit log."""
    keys: dict[str, str] = {}
    try:
        for elem in identifier:
            if elem.VR == "SQ":
                for item in elem.value[:1]:
                    keys.update(_worklist_keys(item))
            elif elem.keyword and elem.keyword != "SpecificCharacterSet" and elem.value not in (None, ""):
                keys[elem.keyword] = str(elem.value)[:64]
    except Exception:  # an element pydicom cannot convert: the source refuses it
        keys["undecodable"] = "yes"
    return keys


class StoredInstance(Dataset):
    """What the C-GET/C-MOVE handlers yield for a sub-operation: the instance's
    identity only; :class:`_SendsStoredInstances` sends it from its file."""

    def __init__(self, instance: Instance, tally: RetrieveTally) -> None:
        super().__init__()
        self.SOPClassUID = instance.sop_class_uid
        self.SOPInstanceUID = instance.sop_instance_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(instance.transfer_syntax_uid)
        self.__dict__["instance"] = instance
        self.__dict__["tally"] = tally


@dataclass
class RetrieveTally:
    """Sub-operation outcomes of one C-MOVE/C-GET, per study, for the audit log."""

    service: str
    peer: Peer
    detail: dict[str, Any]
    studies: dict[int, dict[str, Any]] = field(default_factory=dict)

    def record(self, instance: Instance, status: Dataset | None) -> None:
        code = getattr(status, "Status", None)
        if code is None or code & 0xF000 in (0xA000, 0xC000) or code in (0x0110, 0x0122, 0x0124):
            key = "failed"
        elif code != SUCCESS:
            key = "warning"
        else:
            key = "completed"
        study = instance.series.study
        counts = self.studies.setdefault(
            study.pk, {"uid": study.study_instance_uid, "patient": study.patient_id, "completed": 0}
        )
        counts[key] = counts.get(key, 0) + 1

    def audit(self, *, cancelled: bool = False) -> None:
        close_old_connections()
        base = {"action": "dicom.retrieve", "ae_title": self.peer.calling_ae, "source": self.peer.address}
        for pk, counts in self.studies.items():
            failed = counts.get("failed", 0)
            outcome = (
                AuditEvent.Outcome.FAILURE
                if failed and not counts["completed"]
                else (
                    AuditEvent.Outcome.WARNING
                    if failed or counts.get("warning") or cancelled
                    else AuditEvent.Outcome.SUCCESS
                )
            )
            _audit_quietly(
                **base,
                outcome=outcome,
                study=Study(pk=pk),
                patient=Patient(pk=counts["patient"]) if counts["patient"] else None,
                study_instance_uid=counts["uid"],
                detail={
                    **self.detail,
                    "service": self.service,
                    "cancelled": cancelled,
                    **{k: v for k, v in counts.items() if k not in {"uid", "patient"}},
                },
            )
        if not self.studies:
            _audit_quietly(
                **base,
                outcome=AuditEvent.Outcome.SUCCESS,
                detail={**self.detail, "service": self.service, "instances": 0},
            )


def _retrieve_selection(
    peer: Peer, *, sop_class_uid: str, identifier: Dataset | None, error: str, service: str
) -> tuple[Any, RetrieveTally | None, Dataset | None]:
    """The instances a C-MOVE/C-GET asks for, or the final status that refuses it
    (and is audited)."""
    close_old_connections()
    root = QR_MODELS[sop_class_uid]
    level = str(identifier.get("QueryRetrieveLevel", "")) if identifier is not None else ""
    detail: dict[str, Any] = {"facility": peer.facility.code, "model": root, "level": level}
    audit = {"action": "dicom.retrieve", "ae_title": peer.calling_ae, "source": peer.address}
    if not _peer_may(peer, "can_retrieve"):
        _audit_quietly(**audit, outcome=AuditEvent.Outcome.DENIED, detail={**detail, "service": service})
        return None, None, _status(NOT_AUTHORIZED, f"{peer.calling_ae} may not retrieve from here")
    try:
        if identifier is None:
            raise QueryError(error)
        qs = retrieve_instances(identifier, level=level, root=root, principal=peer.principal)
    except QueryError as exc:
        logger.warning("%s from %s refused: %s", service, peer.calling_ae, exc)
        _audit_quietly(
            **audit, outcome=AuditEvent.Outcome.FAILURE, detail={**detail, "service": service, "error": str(exc)}
        )
        return None, None, _status(DIMSE_STATUS[exc.code], exc.message)
    qs = instances_with_copies(qs.select_related("series__study"))
    return qs, RetrieveTally(service=service, peer=peer, detail=detail), None


def _selection_for(event: Event, service: str) -> tuple[Any, RetrieveTally | None, Dataset | None]:
    identifier, error = _identifier(event)
    return _retrieve_selection(
        _peer(event),
        sop_class_uid=str(event.request.AffectedSOPClassUID),
        identifier=identifier,
        error=error,
        service=service,
    )


def _retrieve_refusal(peer: Peer, req: C_MOVE | C_GET, context: PresentationContext, service: str) -> Dataset | None:
    """The final status that refuses a C-MOVE/C-GET (audited), or None when it may go on."""
    ts = context.transfer_syntax[0]
    assert req.Identifier is not None  # a valid request has one (service_answered sees only those)
    try:
        identifier: Dataset | None = decode(req.Identifier, ts.is_implicit_VR, ts.is_little_endian)
        error = ""
    except Exception as exc:
        identifier, error = None, f"cannot decode the identifier: {exc}"[:64]
    return _retrieve_selection(
        peer, sop_class_uid=str(req.AffectedSOPClassUID), identifier=identifier, error=error, service=service
    )[2]


def _sub_operations(event: Event, qs: Any, tally: RetrieveTally) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    cancelled = False
    try:
        for instance in qs.iterator(chunk_size=200):
            if event.is_cancelled:
                cancelled = True
                yield CANCEL, None
                return
            yield PENDING, StoredInstance(instance, tally)
    finally:
        tally.audit(cancelled=cancelled)


def handle_get(event: Event) -> Iterator[Any]:
    """C-GET SCP: the instances come back over the same association.
    (Refusals were answered by :meth:`PacsAssociation.service_answered`.)"""
    qs, tally, refusal = _selection_for(event, "C-GET")
    if refusal is not None:
        yield 0
        return
    assert tally is not None  # a selection without a refusal has its tally
    yield qs.count()
    yield from _sub_operations(event, qs, tally)


def _move_contexts(qs: Any) -> list[Any]:
    """Storage contexts for the sub-association: each (SOP class, transfer syntax)
    as archived, and uncompressed ones to fall back on."""
    pairs = set(qs.order_by().values_list("sop_class_uid", "transfer_syntax_uid").distinct())
    contexts = [build_context(sop, ts) for sop, ts in sorted(pairs)]
    for sop in sorted({sop for sop, _ in pairs}):
        contexts.append(build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    return contexts[:128]


class PacsAE(fence.CheckedAE):
    """The listener's AE: a C-MOVE's sub-association calls out under the AE title
    of the facility that was called (``calling_as``, per thread; fence row 14),
    and sends archived files as they are (fence row 12)."""

    _local = threading.local()
    requestor_class = SendsStoredInstances

    @property
    def ae_title(self) -> str:
        return getattr(self._local, "calling_as", None) or AE.ae_title.fget(self)  # type: ignore[attr-defined]  # mypy reads a property on the class as its value

    @ae_title.setter
    def ae_title(self, value: str) -> None:
        AE.ae_title.fset(self, value)  # type: ignore[attr-defined]  # mypy reads a property on the class as its value


def handle_move(event: Event) -> Iterator[Any]:
    """C-MOVE SCP to a registered retrieve destination of the called facility."""
    peer = _peer(event)
    qs, tally, refusal = _selection_for(event, "C-MOVE")
    if refusal is not None:  # answered already by PacsAssociation.service_answered
        yield None, None
        return
    assert tally is not None  # a selection without a refusal has its tally
    destination_ae = str(event.move_destination).strip()
    tally.detail["destination"] = destination_ae
    node = RemoteNode.objects.filter(
        facility=peer.facility, ae_title=destination_ae, is_retrieve_destination=True
    ).first()
    if node is None:
        logger.warning("C-MOVE from %s to unknown destination %r", peer.calling_ae, destination_ae)
        _audit_quietly(
            action="dicom.retrieve",
            outcome=AuditEvent.Outcome.FAILURE,
            ae_title=peer.calling_ae,
            source=peer.address,
            detail={**tally.detail, "service": "C-MOVE", "error": "move destination unknown"},
        )
        yield None, None  # pynetdicom answers 0xA801, move destination unknown
        return
    options: dict[str, Any] = {"contexts": _move_contexts(qs)}
    if cast(PacsAssociation, event.assoc).pacs_fast:
        options["evt_handlers"] = [(evt.EVT_CONN_OPEN, fence.handle_conn_open_nodelay)]
    # pynetdicom opens the sub-association between the next two yields.
    PacsAE._local.calling_as = peer.facility.ae_title
    try:
        yield node.host, node.port, options
        yield qs.count()
    finally:
        PacsAE._local.calling_as = None
    yield from _sub_operations(event, qs, tally)


def _audit_quietly(**kwargs: Any) -> None:
    try:
        audit_record(**kwargs)
    except Exception:
        logger.exception("could not write the audit event %s", kwargs.get("action"))


def _audit_association(peer: Peer) -> None:
    close_old_connections()
    for study_uid, counts in peer.studies.items():
        outcome = AuditEvent.Outcome.WARNING if counts.get(CONFLICT) else AuditEvent.Outcome.SUCCESS
        _audit_quietly(
            action="dicom.store",
            outcome=outcome,
            ae_title=peer.calling_ae,
            source=peer.address,
            study=Study(pk=counts["study_id"]) if counts.get("study_id") else None,
            patient=Patient(pk=counts["patient_id"]) if counts.get("patient_id") else None,
            study_instance_uid=study_uid,
            detail={
                "facility": peer.facility.code,
                **{k: v for k, v in counts.items() if k not in {"study_id", "patient_id"}},
            },
        )
    if peer.failed:
        _audit_quietly(
            action="dicom.store",
            outcome=AuditEvent.Outcome.FAILURE,
            ae_title=peer.calling_ae,
            source=peer.address,
            detail={"facility": peer.facility.code, "failed": peer.failed, "reasons": peer.failures},
        )


def build_ae(ae_title: str) -> AE:
    ae = PacsAE(ae_title=ae_title)
    ae.maximum_associations = settings.PACS_DICOM_MAX_ASSOCIATIONS
    ae.maximum_pdu_size = settings.PACS_DICOM_MAX_PDU
    ae.acse_timeout = settings.PACS_DICOM_ACSE_TIMEOUT
    ae.dimse_timeout = settings.PACS_DICOM_DIMSE_TIMEOUT
    ae.network_timeout = settings.PACS_DICOM_NETWORK_TIMEOUT
    ae.add_supported_context(Verification)
    for uid in [*QR_MODELS, ModalityWorklistInformationFind, mpps.MODALITY_PERFORMED_PROCEDURE_STEP]:
        ae.add_supported_context(uid, UncompressedTransferSyntaxes)
    commitment.contexts_add(ae)
    # Roles as proposed: a C-GET SCU asks to act as Storage SCP on these contexts.
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None  # pynetdicom builds each with its SOP class
        ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


_UID_TEXT = re.compile(r"[0-9.]{1,64}")


def part10_header(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The preamble, ``DICM`` and the file meta group pynetdicom writes before a received data set
    (``create_file_meta`` and pydicom's ``write_file_meta_info``), byte for byte, encoded here.

    This runs for every C-STORE. pydicom's path builds a data set and costs about 8 % of the
    listener's CPU per image. UIDs that are not plain UIDs (as a careless or hostile peer may
    send) take pydicom's path, so what is written for them is what pydicom writes.
    """
    if not all(_UID_TEXT.fullmatch(uid) for uid in (sop_class_uid, sop_instance_uid, transfer_syntax)):
        header = io.BytesIO()
        header.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(
            header,  # type: ignore[arg-type]  # pydicom annotates its DicomFileLike; it writes to any binary file
            create_file_meta(
                sop_class_uid=UID(sop_class_uid),
                sop_instance_uid=UID(sop_instance_uid),
                transfer_syntax=UID(transfer_syntax),
            ),
        )
        return header.getvalue()
    meta = (
        (0x00020002, "UI", sop_class_uid),
        (0x00020003, "UI", sop_instance_uid),
        (0x00020010, "UI", transfer_syntax),
        (0x00020012, "UI", PYNETDICOM_IMPLEMENTATION_UID),
        (0x00020013, "SH", PYNETDICOM_IMPLEMENTATION_VERSION),
    )
    # (0002,0001) File Meta Information Version, OB (a 4-byte length), then the rest.
    body = struct.pack("<HH2s2xI", 0x0002, 0x0001, b"OB", 2) + b"\x00\x01"
    body += b"".join(element_bytes(tag, vr, value, implicit=False, codec="ascii") for tag, vr, value in meta)
    group_length = element_bytes(0x00020000, "UL", len(body), implicit=False, codec="ascii")
    return b"\x00" * 128 + b"DICM" + group_length + body


class _SpoolFile(io.BytesIO):
    """The buffer pynetdicom decodes a received message's data set into (fence row 11).

    A C-STORE's data set follows the Part 10 header pynetdicom would write to
    its own temporary file (preamble, file meta). Up to ``PACS_DICOM_SPOOL_MEMORY``
    bytes (every CT or MR image) it stays in memory and ingestion writes it once,
    durably, at ``name`` in this process's incoming folder; a larger one spills
    to ``name`` as it arrives, so memory does not grow with an object's size or
    a hostile peer's stream. Any other message's data set (an identifier) is
    kept in memory, as pynetdicom keeps it.

    pynetdicom writes while it decodes P-DATA, where an exception would abort
    the association; a write error (a full disk) is kept instead, the rest
    of the data set discarded, and the C-STORE handler answers "out of
    resources" for that store.
    """

    def __init__(self, message: DIMSEMessage, assoc: Association) -> None:
        super().__init__()
        self._message: DIMSEMessage | None = message
        self._assoc = assoc
        self.name: Path | None = None  # a C-STORE's, from its first write
        self.error: OSError | None = None
        self._limit = settings.PACS_DICOM_SPOOL_MEMORY
        self._file: BinaryIO | None = None

    def write(self, data: Any) -> int:
        if self._message is not None:
            # The first write of the data set: the command set before it is decoded.
            message, self._message = self._message, None
            if isinstance(message, C_STORE_RQ):
                self.name = storage.incoming_dir() / f"{uuid.uuid4().hex}.dcm"
                super().write(self._part10_header(message))
        if self.name is None:
            return super().write(data)
        size = len(data)
        if self.error is not None:
            return size
        try:
            if self._file is None:
                if self.tell() + size <= self._limit:
                    return super().write(data)
                self._file = open(self.name, "xb")
                with self.getbuffer() as held:
                    self._file.write(held)
                self.seek(0)
                self.truncate()
            self._file.write(data)
        except OSError as exc:
            self.error = exc
        return size

    def _part10_header(self, message: DIMSEMessage) -> bytes:
        context = next(cx for cx in self._assoc.accepted_contexts if cx.context_id == message.context_id)
        command = message.command_set
        return part10_header(
            sop_class_uid=str(command.AffectedSOPClassUID),
            sop_instance_uid=str(command.AffectedSOPInstanceUID),
            transfer_syntax=str(context.transfer_syntax[0]),
        )

    def finish(self) -> None:
        """pynetdicom has written the whole data set: close what spilled to disk."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self.error = self.error or exc

    def in_memory(self) -> bytes | None:
        """The whole file when it stayed in memory (``getvalue`` of a buffer that is
        not written again: no copy is made)."""
        return None if self._file is not None else self.getvalue()

    def discard(self) -> None:
        """Remove what is left at ``name`` (ingestion moves the file it keeps)."""
        self.finish()
        if self.name is not None:
            self.name.unlink(missing_ok=True)


def tls_context() -> ssl.SSLContext | None:
    """The DICOM TLS context from the settings; None when no certificate is configured."""
    if not settings.PACS_DICOM_TLS_CERT:
        return None
    return peers.tls_server_context(
        cert=settings.PACS_DICOM_TLS_CERT,
        key=settings.PACS_DICOM_TLS_KEY,
        ca=settings.PACS_DICOM_TLS_CA,
        key_passphrase=settings.PACS_DICOM_TLS_KEY_PASSPHRASE,
    )


def start_listener(
    *,
    host: str,
    port: int,
    facility_code: str | None = None,
    ae_title: str | None = None,
    tls_port: int | None = None,
    facility_codes: frozenset[str] = frozenset(),
    listening_sockets: list[socket.socket] | None = None,
    slots: dul.AddressSlots | dul.SharedSlots | None = None,
) -> PacsServer:
    """Start serving in background threads; return the server (``.server_address`` has the port).

    With ``facility_code`` the listener serves that facility only, under
    ``ae_title`` (default: the facility's); without, it serves every facility,
    each under its own AE title (only those of ``facility_codes``, when given:
    see :func:`facilities_served`), and the called AE title chooses the facility.

    When DICOM TLS is configured (``PACS_DICOM_TLS_CERT``...), the same
    associations are served with TLS on ``tls_port`` (default
    ``PACS_DICOM_TLS_PORT``; 0: any free port): the returned server's
    ``tls_server``. Both share the association limits.

    A process of a listener of several (``archive/dicomnet/prefork.py``)
    gives the sockets its parent listens on (``listening_sockets``: the plain
    one, then the TLS one when TLS is configured) instead of ``host`` and the
    ports, and the ``slots`` shared by every process.
    """
    # Nothing of pynetdicom is changed for the process: the adaptations are the
    # fence's classes, made for this server's associations only.
    fence.verify()
    storage.incoming_clean_stray()

    fast_paths = bool(settings.PACS_DICOM_FAST_PATHS)
    ae = build_ae(ae_title or "PACS")
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, handle_requested),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store),
        (evt.EVT_C_FIND, handle_find),
        (evt.EVT_C_GET, handle_get),
        (evt.EVT_C_MOVE, handle_move),
        (evt.EVT_N_ACTION, commitment.handle_n_action),
        (evt.EVT_N_CREATE, mpps.handle_n_create),
        (evt.EVT_N_SET, mpps.handle_n_set),
        (evt.EVT_RELEASED, handle_ended),
        (evt.EVT_ABORTED, handle_ended),
        (evt.EVT_CONN_CLOSE, handle_conn_closed),
    ]
    if fast_paths:
        handlers.append((evt.EVT_CONN_OPEN, fence.handle_conn_open_nodelay))
    if slots is None:
        slots = dul.AddressSlots(
            per_address=settings.PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS,
            max_associations=settings.PACS_DICOM_MAX_ASSOCIATIONS,
        )
    # The association's id on every log line, and its metrics (archive/dicomnet/observe.py).
    handlers = observe.instrument(handlers)
    context = tls_context()  # before binding: a bad certificate stops start-up
    addresses: list[tuple[tuple[str, int], ssl.SSLContext | None]] = [((host, port), None)]
    if context is not None:
        addresses.append(((host, settings.PACS_DICOM_TLS_PORT if tls_port is None else tls_port), context))
    inherited: list[socket.socket | None] = [*listening_sockets] if listening_sockets else [None] * len(addresses)
    if len(inherited) != len(addresses):
        raise ImproperlyConfigured("the listening sockets handed over do not match the TLS configuration")
    servers: list[PacsServer] = []
    try:
        for (address, ssl_context), listening_socket in zip(addresses, inherited, strict=True):
            if listening_socket is not None:
                address = listening_socket.getsockname()[:2]
            server = cast(
                PacsServer,
                ae.make_server(
                    address,
                    ae_title=ae_title or "PACS",
                    ssl_context=ssl_context,
                    evt_handlers=handlers,
                    server_class=PacsServer,
                    request_handler=PacsRequestHandler,
                    listening_socket=listening_socket,
                ),
            )  # a PacsServer: pynetdicom's annotation names its default class
            servers.append(server)
    except OSError:
        for server in servers:
            server.server_close()
        raise
    for server in servers:
        server.facility_code = facility_code
        server.facility_codes = facility_codes
        server.listener_ae = ae_title
        server.accept_unknown = settings.PACS_DICOM_ACCEPT_UNKNOWN_AE
        server.slots = slots
        server.fast_paths = fast_paths
        name = f"dicom-listener{'-tls' if server.ssl_context else ''}:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True)
        thread.start()
        ae._servers.append(server)
    plain = servers[0]
    plain.tls_server = servers[1] if len(servers) > 1 else None
    return plain


def facilities_served(codes: list[str]) -> list[Facility]:
    """The facilities of ``codes`` (PACS_DICOM_FACILITIES), every one when empty.

    A code that names no facility stops start-up (ImproperlyConfigured): a
    listener that silently served fewer hospitals than configured would turn
    their modalities away.
    """
    facilities = list(Facility.objects.order_by("code"))
    if not codes:
        return facilities
    unknown = sorted(set(codes) - {f.code for f in facilities})
    if unknown:
        raise ImproperlyConfigured(f"PACS_DICOM_FACILITIES names no facility with code {', '.join(unknown)}")
    return [f for f in facilities if f.code in codes]


def stop_listener(server: PacsServer, *, grace: float) -> None:
    """Stop accepting, let associations finish for ``grace`` seconds, then abort
    each one between two stores (never in the middle of one)."""
    servers = [server] if server.tls_server is None else [server, server.tls_server]
    for each in servers:
        each.draining = True
        each.shutdown()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _working(servers):
        time.sleep(0.05)
    hard_deadline = time.monotonic() + max(grace, 30.0)
    while _working(servers) and time.monotonic() < hard_deadline:
        for assoc in _working(servers):
            peer = getattr(assoc, "pacs_peer", None)
            if peer is None or not peer.busy:
                assoc.abort()
        time.sleep(0.02)
    for assoc in _working(servers):
        assoc.join(timeout=5)
    # Connections that never completed an association request hold no data:
    # their threads are daemons and end with the process.


def _working(servers: list[PacsServer]) -> list[Association]:
    return [a for server in servers for a in server.active_associations if a.is_alive() and a.is_established]
