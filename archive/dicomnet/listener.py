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
* the transport (``archive/dicomnet/transport.py``) admits a connection only once it has
  sent its A-ASSOCIATE-RQ within ``PACS_DICOM_REQUEST_TIMEOUT`` (TLS
  handshake included), caps the connections of each peer address, cuts a
  peer that declares a PDU longer than ``PACS_DICOM_PDU_READ_LIMIT`` before
  buffering it, and wakes on events instead of polling;
* a received data set stays in memory up to ``PACS_DICOM_SPOOL_MEMORY`` and
  spills to this process's incoming folder beyond, so memory does not grow
  with an object's size (``_SpoolFile``).
"""

from __future__ import annotations

import copy
import errno
import logging
import ssl
import threading
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import close_old_connections, connections
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UncompressedTransferSyntaxes,
)
from pynetdicom import AE, _config, build_context, dimse_messages, evt
from pynetdicom import association as _pynetdicom_association
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from archive import access
from archive.dicom import ACCEPTED_TRANSFER_SYNTAXES
from archive.dicomnet import peers
from archive.dicomnet import transport as dul
from archive.ingest import CONFLICT, IngestError, instance_ingest
from archive.models import Facility, Instance, Patient, RemoteNode, Study
from archive.query import QueryError, query_run, retrieve_instances
from archive.storage import tiers as storage
from archive.storage.retrieve import instance_file, instances_with_copies
from kernel.audit import audit_record
from kernel.models import AuditEvent

_pynetdicom_service_class_for = _pynetdicom_association.uid_to_service_class

logger = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3, PS3.7 C.4.2).
SUCCESS = 0x0000
WARNING_CONFLICT = 0xB000
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124

# Query/retrieve statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

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
}

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)


# Modality Worklist C-FIND is answered from the bookings, which the archive does
# not import (DESIGN.md: booking depends on archive, not the reverse): the
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
) -> tuple[Peer | None, tuple[int, int, int] | None, str]:
    """Accept (a Peer) or reject (an A-ASSOCIATE-RJ reason) an association request.

    A listener bound to one facility answers to ``listener_ae`` (default: the
    facility's AE title); an unbound one serves every facility under its own.

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


class PacsACSE(ACSE):
    def _negotiate_as_acceptor(self) -> None:
        assoc = self.assoc
        rq = self.requestor.primitive
        server: PacsServer = assoc._server  # type: ignore[assignment]
        address = f"{assoc.requestor.address}:{assoc.requestor.port}"
        close_old_connections()
        try:
            peer, reject, why = decide_association(
                calling_ae=str(rq.calling_ae_title),
                called_ae=str(rq.called_ae_title),
                address=address,
                peer_ip=str(assoc.requestor.address),
                certificate_sha256=_peer_certificate(assoc),
                facility_code=server.facility_code,
                listener_ae=server.listener_ae,
                accept_unknown=server.accept_unknown,
            )
        except Exception:
            logger.exception("association policy failed; rejecting")
            peer, reject, why = None, (0x02, 0x01, 0x01), "internal error"
        if reject is None and server.draining:
            peer, reject, why = None, (0x02, 0x03, 0x02), "the listener is shutting down"
        if reject is not None:
            logger.warning("rejecting association from %s: %s", address, why)
            _audit_quietly(
                action="dicom.association",
                outcome=AuditEvent.Outcome.DENIED,
                ae_title=str(rq.calling_ae_title).strip()[:16],
                source=address,
                detail={"called_ae": str(rq.called_ae_title).strip(), "reason": why, "tls": _is_tls(assoc)},
            )
            self.send_reject(*reject)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
            return
        assoc.pacs_peer = peer  # type: ignore[attr-defined]
        super()._negotiate_as_acceptor()


# --- the association, its handlers and the server ---------------------------------


class _SendsStoredInstances(Association):
    """C-STORE sub-operations of C-GET and C-MOVE: a :class:`StoredInstance` is
    sent from its archived file, byte for byte, when the peer accepted its
    transfer syntax; otherwise decoded and sent in one the peer accepted
    (pynetdicom converts between the uncompressed ones)."""

    def send_c_store(self, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        if not isinstance(dataset, StoredInstance):
            return super().send_c_store(dataset, *args, **kwargs)
        instance = dataset.instance
        status: Dataset | None = None
        try:
            with instance_file(instance, held=True) as path:
                try:
                    self._get_valid_context(
                        instance.sop_class_uid, instance.transfer_syntax_uid, "scu", allow_conversion=False
                    )
                    payload: Any = path
                except ValueError:
                    payload = _for_peer(self, dcmread(path))
                status = super().send_c_store(payload, *args, **kwargs)
            return status
        finally:
            dataset.tally.record(instance, status)


def _for_peer(assoc: Association, ds: Dataset) -> Dataset:
    """A compressed data set decompressed when the peer accepted its SOP class only
    uncompressed (pydicom's pixel-data plugins); an uncompressed one as it is
    (pynetdicom converts between the uncompressed syntaxes)."""
    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_compressed:
        return ds
    accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == ds.SOPClassUID}
    if accepted and all(not UID(t).is_compressed for t in accepted):
        ds.decompress(generate_instance_uid=False)  # the same object in another transfer syntax
    return ds


class PacsDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, with a short path for C-FIND pending responses.

    A C-FIND answering hundreds of matches sends hundreds of responses whose
    command sets are all the same; pynetdicom builds and encodes each one
    (twice) and sends command and identifier as two P-DATA PDUs. Here the
    command set is encoded once per request and each response is one P-DATA
    PDU holding both PDVs (PS3.8 9.3.5 allows several), when it fits the
    peer's maximum PDU length; anything else takes pynetdicom's path.
    """

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (
            isinstance(primitive, C_FIND)
            and primitive.Status in (PENDING, 0xFF01)
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Identifier is not None
        ):
            key = (context_id, primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID, primitive.Status)
            cache: dict[Any, bytes] = self.__dict__.setdefault("_pacs_find_commands", {})
            command = cache.get(key)
            if command is None:
                message = C_FIND_RSP()
                message.primitive_to_message(primitive)
                command = cache[key] = encode(message.command_set, True, True) or b""
            identifier = primitive.Identifier.getvalue()
            limit = self.maximum_pdu_size
            # Each PDV item: 4 bytes of length, the context ID and the control header.
            if command and (not limit or len(command) + len(identifier) + 12 <= limit):
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
                pdata.presentation_data_value_list.append((context_id, b"\x02" + identifier))
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


class PacsAssociation(_SendsStoredInstances):
    """An acceptor association that writes its audit summary and closes its database
    connection when its thread ends, however it ends."""

    pacs_peer: Peer | None = None
    pacs_release: Callable[[], None] | None = None  # gives the peer address's slot back

    def run(self) -> None:
        dul.reactor_waits_on_events(self)
        try:
            super().run()
        finally:
            try:
                if self.pacs_peer is not None:
                    _audit_association(self.pacs_peer)
            finally:
                try:
                    connections.close_all()
                finally:
                    if self.pacs_release is not None:
                        self.pacs_release()


class PacsRequestHandler(RequestHandler):
    """Creates the association for a connection the gate admitted, with the
    A-ASSOCIATE-RQ the gate read (``first_pdu``)."""

    server: PacsServer

    def __init__(self, request: Any, client_address: Any, server: Any, *, first_pdu: bytes = b"") -> None:
        self.first_pdu = first_pdu
        self.started = False
        super().__init__(request, client_address, server)

    def handle(self) -> None:
        assoc = self._create_association()
        address = str(self.client_address[0])
        slots = self.server.slots
        assoc.pacs_release = lambda: slots.release(address)  # type: ignore[attr-defined]
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        self.started = True

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # Swapped before the threads start; the subclasses add methods, no state.
        assoc.__class__ = PacsAssociation
        assoc.acse.__class__ = PacsACSE
        assoc.dimse.__class__ = PacsDIMSE
        dul.prepare(assoc, first_pdu=self.first_pdu)
        return assoc


class PacsServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the gate of ``archive/dicomnet/transport.py`` in front:
    each connection's thread first waits (``PACS_DICOM_REQUEST_TIMEOUT``) for
    the TLS handshake and the A-ASSOCIATE-RQ, and only then becomes an
    association. ``slots`` caps the connections of each peer address; the
    plain and the TLS server share it."""

    facility_code: str | None = None
    listener_ae: str | None = None
    accept_unknown: bool = False
    draining: bool = False
    slots: dul.AddressSlots
    tls_server: PacsServer | None = None  # the DICOM TLS port, served beside this one
    # Gate threads end with the process; associations are joined by stop_listener.
    daemon_threads = True
    # socketserver's listen backlog is 5: a burst of connections beyond it has its
    # SYNs dropped and retried by the peer a second later, a stall for everyone.
    request_queue_size = 128

    def get_request(self) -> tuple[Any, Any]:
        # pynetdicom does the TLS handshake here, in the accepting thread, where
        # one silent peer stops the port: the gate does it in the connection's own.
        assert self.socket is not None
        return self.socket.accept()

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


def handle_echo(event: Any) -> int:
    return SUCCESS


def handle_store(event: Any) -> Dataset:
    assoc = event.assoc
    peer: Peer = assoc.pacs_peer
    peer.busy = True
    try:
        close_old_connections()
        if peer.node is not None and not peer.node.can_store:
            peer.failed += 1
            return _status(NOT_AUTHORIZED, f"{peer.calling_ae} may not store here")
        req = event.request
        spool = _SpoolFile.of(event.dataset_path)
        if spool is not None and spool.error is not None:
            peer.failed += 1
            Path(event.dataset_path).unlink(missing_ok=True)
            full = spool.error.errno in (errno.ENOSPC, errno.EDQUOT)
            logger.error("receiving a data set from %s failed: %s", peer.calling_ae, spool.error)
            return _status(OUT_OF_RESOURCES if full else PROCESSING_FAILURE, f"cannot write: {spool.error.strerror}")
        try:
            result = instance_ingest(
                path=event.dataset_path,
                data=spool.in_memory() if spool is not None else None,
                facility=peer.facility,
                owned=True,
                calling_ae=peer.calling_ae,
                expected_sop_class_uid=str(req.AffectedSOPClassUID),
                expected_sop_instance_uid=str(req.AffectedSOPInstanceUID),
            )
        except IngestError as exc:
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
        peer.busy = False


# --- query and retrieve -------------------------------------------------------------


def _peer_may(peer: Peer, right: str) -> bool:
    # An unknown AE is let in only by PACS_DICOM_ACCEPT_UNKNOWN_AE (the demo), to
    # echo and store: it never reads (C-FIND, C-MOVE, C-GET, the worklist).
    if peer.node is None:
        return right == "can_store"
    return bool(getattr(peer.node, right))


# Responses a C-FIND may have queued for sending before it waits for the socket:
# enough to keep the connection busy, few enough that memory does not grow with
# the number of matches and that a C-CANCEL stops the answer within this many.
_FIND_QUEUE_AHEAD = 32


def _keep_pace(assoc: Association) -> None:
    """Wait while the association's sending queue is full (or until it ends)."""
    queue = assoc.dul.to_provider_queue
    while queue.qsize() >= _FIND_QUEUE_AHEAD and assoc.is_established:
        time.sleep(0.0005)


def _identifier(event: Any) -> tuple[Dataset | None, str]:
    try:
        return event.identifier, ""
    except Exception as exc:  # a malformed identifier
        return None, f"cannot decode the identifier: {exc}"[:64]


def handle_find(event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """C-FIND SCP, Patient Root and Study Root: matches stream as pending responses.
    Modality Worklist queries go to :func:`_worklist_find`."""
    peer: Peer = event.assoc.pacs_peer
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

    def results() -> Iterator[Dataset]:
        if identifier is None:
            raise QueryError(error)
        ts = event.context.transfer_syntax
        encoding = (ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian)
        limit = settings.PACS_QUERY_MAX_MATCHES
        for result in query_run(
            identifier,
            level=level,
            root=root,
            limit=limit + 1,
            encoding=encoding,
            principal=peer.principal,
            patients=patients,
        ):
            if "StudyInstanceUID" in result and len(studies) < 20:
                studies.append(str(result.StudyInstanceUID))
            result.QueryRetrieveLevel = level.upper()
            result.RetrieveAETitle = peer.called_ae
            yield result

    detail["studies"] = studies
    yield from _answer_find(event, peer, results(), audit=audit, detail=detail, what="C-FIND", patients=patients)


def _answer_find(
    event: Any,
    peer: Peer,
    results: Iterator[Dataset],
    *,
    audit: dict[str, Any],
    detail: dict[str, Any],
    what: str,
    patients: list[Any] | None = None,
    resolve: Callable[[list[Any]], list[int]] | None = None,
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Send ``results`` as pending responses, keeping pace with the socket; end
    with the final status (cancelled, too many matches, refused, failed) and
    write one audit event, with the patients of the matches sent (``patients``:
    one per result, in order, filled as the results are produced; primary keys,
    or what ``resolve`` turns into primary keys)."""
    limit = settings.PACS_QUERY_MAX_MATCHES
    matches = 0
    outcome, final = AuditEvent.Outcome.SUCCESS, _status(SUCCESS)
    try:
        for result in results:
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
            yield PENDING, result
    except QueryError as exc:
        logger.warning("%s from %s refused: %s", what, peer.calling_ae, exc)
        outcome, final = AuditEvent.Outcome.FAILURE, _status(DIMSE_STATUS[exc.code], exc.message)
        detail["error"] = str(exc)
    except Exception as exc:
        logger.exception("%s from %s failed", what, peer.calling_ae)
        outcome, final = AuditEvent.Outcome.FAILURE, _status(UNABLE_TO_PROCESS, f"internal error: {type(exc).__name__}")
        detail["error"] = type(exc).__name__
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


def _worklist_find(event: Any, peer: Peer) -> Iterator[tuple[int | Dataset, Dataset | None]]:
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
        self.file_meta.TransferSyntaxUID = instance.transfer_syntax_uid
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


def _selection_for(event: Any, service: str) -> tuple[Any, RetrieveTally | None, Dataset | None]:
    identifier, error = _identifier(event)
    return _retrieve_selection(
        event.assoc.pacs_peer,
        sop_class_uid=str(event.request.AffectedSOPClassUID),
        identifier=identifier,
        error=error,
        service=service,
    )


class PacsQueryRetrieveService(QueryRetrieveServiceClass):
    """pynetdicom's Q/R service class, except that a C-MOVE or C-GET that is
    refused (no retrieve right, a bad identifier) is answered with its own
    status and comment before anything else: pynetdicom's C-MOVE would first
    ask the handler for a destination and can only say "destination unknown"."""

    def _refusal(self, req: Any, context: Any, service: str) -> Dataset | None:
        peer = getattr(self.assoc, "pacs_peer", None)
        if peer is None:
            return None
        ts = context.transfer_syntax[0]
        try:
            identifier: Dataset | None = decode(req.Identifier, ts.is_implicit_VR, ts.is_little_endian)
            error = ""
        except Exception as exc:
            identifier, error = None, f"cannot decode the identifier: {exc}"[:64]
        return _retrieve_selection(
            peer, sop_class_uid=str(req.AffectedSOPClassUID), identifier=identifier, error=error, service=service
        )[2]

    def _refuse(self, rsp: Any, req: Any, context: Any, refusal: Dataset) -> None:
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        rsp.Status = refusal.Status
        rsp.ErrorComment = refusal.get("ErrorComment")
        self.dimse.send_msg(rsp, context.context_id)

    def _move_scp(self, req: C_MOVE, context: Any) -> None:
        refusal = self._refusal(req, context, "C-MOVE")
        if refusal is not None:
            return self._refuse(C_MOVE(), req, context, refusal)
        return super()._move_scp(req, context)

    def _get_scp(self, req: C_GET, context: Any) -> None:
        refusal = self._refusal(req, context, "C-GET")
        if refusal is not None:
            return self._refuse(C_GET(), req, context, refusal)
        return super()._get_scp(req, context)


def _service_class_for(uid: str) -> type:
    if uid in QR_MODELS:
        return PacsQueryRetrieveService
    return _pynetdicom_service_class_for(uid)


def _sub_operations(event: Any, qs: Any, tally: RetrieveTally) -> Iterator[tuple[int | Dataset, Dataset | None]]:
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


def handle_get(event: Any) -> Iterator[Any]:
    """C-GET SCP: the instances come back over the same association.
    (Refusals were answered by :class:`PacsQueryRetrieveService`.)"""
    qs, tally, refusal = _selection_for(event, "C-GET")
    if refusal is not None:
        yield 0
        return
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


class PacsAE(AE):
    """The listener's AE: a C-MOVE's sub-association calls out under the AE title
    of the facility that was called (``calling_as``, per thread), and sends
    archived files as they are."""

    _local = threading.local()

    @property  # type: ignore[override]
    def ae_title(self) -> str:
        return getattr(self._local, "calling_as", None) or self._ae_title

    @ae_title.setter
    def ae_title(self, value: str) -> None:
        AE.ae_title.fset(self, value)  # type: ignore[attr-defined]

    def _create_socket(self, *args: Any, **kwargs: Any) -> Any:
        sock = super()._create_socket(*args, **kwargs)
        dul.nodelay(sock.socket)
        return sock

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        assoc = super().associate(*args, **kwargs)
        assoc.__class__ = _SendsStoredInstances  # adds one method, no state
        return assoc


def handle_move(event: Any) -> Iterator[Any]:
    """C-MOVE SCP to a registered retrieve destination of the called facility."""
    peer: Peer = event.assoc.pacs_peer
    qs, tally, refusal = _selection_for(event, "C-MOVE")
    if refusal is not None:  # answered already by PacsQueryRetrieveService
        yield None, None
        return
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
    # pynetdicom opens the sub-association between the next two yields.
    PacsAE._local.calling_as = peer.facility.ae_title
    try:
        yield node.host, node.port, {"contexts": _move_contexts(qs)}
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
    for uid in [*QR_MODELS, ModalityWorklistInformationFind]:
        ae.add_supported_context(uid, UncompressedTransferSyntaxes)
    # Roles as proposed: a C-GET SCU asks to act as Storage SCP on these contexts.
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


class _SpoolFile:
    """pynetdicom's temporary file for a data set being received.

    A data set up to ``PACS_DICOM_SPOOL_MEMORY`` bytes (every CT or MR image)
    stays in memory and ingestion writes it once, durably; a larger one
    spills to a file in the incoming folder as it arrives, so memory does not
    grow with an object's size or a hostile peer's stream.

    pynetdicom writes while it decodes P-DATA, where an exception would abort
    the association; a write error (a full disk) is kept instead, the rest
    of the data set discarded, and the C-STORE handler answers "out of
    resources" for that store.
    """

    # Looked up by name from the handler; weak, so a data set whose association
    # died before its handler ran leaves nothing behind in memory.
    _live: weakref.WeakValueDictionary[str, _SpoolFile] = weakref.WeakValueDictionary()
    _lock = threading.Lock()

    def __init__(self, **kwargs: Any) -> None:
        self.name = str(storage.incoming_dir() / f"{uuid.uuid4().hex}.dcm")
        self.error: OSError | None = None
        self._limit = settings.PACS_DICOM_SPOOL_MEMORY
        self._memory: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        with self._lock:
            self._live[self.name] = self

    @property
    def file(self) -> _SpoolFile:
        return self

    def write(self, data: bytes) -> int:
        if self.error is not None:
            return len(data)
        try:
            if self._memory is not None:
                if len(self._memory) + len(data) <= self._limit:
                    self._memory += data
                    return len(data)
                self._file = open(self.name, "xb")
                self._file.write(self._memory)
                self._memory = None
            assert self._file is not None
            self._file.write(data)
        except OSError as exc:
            self.error = exc
        return len(data)

    def flush(self) -> None:
        if self._file is not None and self.error is None:
            try:
                self._file.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self.error = self.error or exc

    def in_memory(self) -> bytearray | None:
        """The data set when it stayed in memory (pynetdicom has finished writing: no copy is made)."""
        return self._memory

    @classmethod
    def of(cls, path: object) -> _SpoolFile | None:
        with cls._lock:
            return cls._live.get(str(path))


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
) -> PacsServer:
    """Start serving in background threads; return the server (``.server_address`` has the port).

    With ``facility_code`` the listener serves that facility only, under
    ``ae_title`` (default: the facility's); without, it serves every facility,
    each under its own AE title, and the called AE title chooses the facility.

    When DICOM TLS is configured (``PACS_DICOM_TLS_CERT``...), the same
    associations are served with TLS on ``tls_port`` (default
    ``PACS_DICOM_TLS_PORT``; 0: any free port): the returned server's
    ``tls_server``. Both share the association limits.
    """
    # pynetdicom's "chunked" receive writes each data set to the file object
    # NamedTemporaryFile gives it; it has no setting for that object, so the
    # name is pointed at _SpoolFile (memory, then the incoming folder).
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _SpoolFile
    # C-GET/C-MOVE sub-operations send archived files from disk, undecoded.
    _config.STORE_SEND_CHUNKED_DATASET = True
    # pynetdicom formats every identifier for its debug log, logged or not.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _pynetdicom_association.uid_to_service_class = _service_class_for
    dul.install()
    storage.incoming_clean_stray()

    ae = build_ae(ae_title or "PACS")
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store),
        (evt.EVT_C_FIND, handle_find),
        (evt.EVT_C_GET, handle_get),
        (evt.EVT_C_MOVE, handle_move),
    ]
    slots = dul.AddressSlots(per_address=settings.PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS)
    context = tls_context()  # before binding: a bad certificate stops start-up
    addresses: list[tuple[tuple[str, int], ssl.SSLContext | None]] = [((host, port), None)]
    if context is not None:
        addresses.append(((host, settings.PACS_DICOM_TLS_PORT if tls_port is None else tls_port), context))
    servers: list[PacsServer] = []
    try:
        for address, ssl_context in addresses:
            server: PacsServer = ae.make_server(
                address,
                ae_title=ae_title or "PACS",
                ssl_context=ssl_context,
                evt_handlers=handlers,
                server_class=PacsServer,
                request_handler=PacsRequestHandler,
            )
            servers.append(server)
    except OSError:
        for server in servers:
            server.server_close()
        raise
    for server in servers:
        server.facility_code = facility_code
        server.listener_ae = ae_title
        server.accept_unknown = settings.PACS_DICOM_ACCEPT_UNKNOWN_AE
        server.slots = slots
        name = f"dicom-listener{'-tls' if server.ssl_context else ''}:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True)
        thread.start()
        ae._servers.append(server)
    plain = servers[0]
    plain.tls_server = servers[1] if len(servers) > 1 else None
    return plain


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
