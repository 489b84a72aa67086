"""The fence around pynetdicom: every use of its internals by the listener, here and listed.

pynetdicom 3.0.4 (pinned in requirements.txt) leaves things to its user that
the listener needs, and polls where the listener wakes on events. What it
offers publicly is used as such (below the table). What it does not offer is
done in this module, once, and listed in the table; :func:`problems` checks
each name against the installed pynetdicom, and the system check
``archive.E030`` and :func:`verify` (called by ``start_listener``) refuse to
run the listener on another version or when a name is missing.

No pynetdicom module is patched. Each adaptation is a subclass whose
instances the listener makes for its own associations, so that code in the
same process that did not start a listener (a test's SCU or SCP, a command)
sees pynetdicom as released. Two exceptions, both listed: one ``__class__``
switch, where pynetdicom makes the object (row 12), and pynetdicom's
identifier logging, switched off by ``manage.py dicom_listener`` in its own
process only (row 15).

DUL is ``pynetdicom.dul.DULServiceProvider``, DIMSE
``pynetdicom.dimse.DIMSEServiceProvider``. F: a fast path.
``PACS_DICOM_FAST_PATHS`` (default on) chooses, per server; off, that part
is pynetdicom's own. The other rows are on in both modes: they bound what a
peer can make the listener hold, carry the access policy, or send the
archived files as archived.

====  ======================================  ============================================  ============================
Row   pynetdicom name                         Why                                           What upstream would need
====  ======================================  ============================================  ============================
1     ``DUL._read_pdu_data`` (overridden)     pynetdicom buffers whatever PDU length a      A maximum PDU length to
                                              peer declares (up to 4 GiB). Here a PDU       receive, checked on the
                                              longer than ``PACS_DICOM_PDU_READ_LIMIT``     header.
                                              cuts the connection before its body is read.
                                              F: the body is read into one buffer, 1 MiB a
                                              call (pynetdicom: 4 KiB).

2     ``DUL._is_transport_event``             The gate (``transport.py``) reads the TLS     An acceptor taking an
      (overridden)                            handshake and the A-ASSOCIATE-RQ in the       already-read first PDU; or a
                                              connection's own thread, under a deadline,    request timeout and the TLS
                                              before an association exists; its PDU goes    handshake outside the
                                              to the DUL first, as if read from the         accepting thread.
                                              socket.

3     ``DUL._decode_pdu``, ``DUL._recv_pdu``  To queue a PDU read by rows 1 and 2 as        Comes with rows 1 and 2.
      (used)                                  pynetdicom's own reader does.

4 F   ``DUL.run_reactor`` (copied; uses       The DUL thread sleeps 1 ms whenever a loop    An event-driven DUL (its own
      ``_idle_timer``, ``_kill_thread``,      found nothing to do. The copy waits on the    TODO in ``dul.py``), or a
      ``_run_loop_delay``,                    peer's socket and on a wake-up socket poked   hook for the wait.
      ``Association._dul_ready``,             when a primitive is queued for sending
      ``Association._kill``)                  (``to_provider_queue``), up to pynetdicom's
                                              own delay, so every timer is checked as
                                              often as before.

5 F   ``DUL._process_recv_primitive``         While it has something to send it does not    Incoming PDUs read before
      (overridden)                            read: a C-CANCEL or A-ABORT waits behind      queued ones are sent.
                                              every queued C-FIND response. Here the
                                              peer's socket is read first when it has
                                              data.

6     ``Association._run_reactor`` (copied;   pynetdicom's loop may read the DIMSE queue    The re-check in
      uses ``_kill``, ``_is_paused``,         after a thread sending a request saw it       pynetdicom's loop (its issue
      ``_reactor_checkpoint``)                paused, and take that request's response      875); as row 4 for F.
                                              (pynetdicom issue 875: "Received unexpected
                                              ... service message", then the sender's
                                              DIMSE timeout). The copy
                                              (:class:`CheckedReactor`) reads it only if
                                              the checkpoint is still set after it marked
                                              itself running; on in both modes, for the
                                              listener's associations and the archive's
                                              requestors (row 12). F: it sleeps on an
                                              event set whenever the DUL or the DIMSE
                                              provider queues something for it
                                              (``to_user_queue``, ``msg_queue``) where
                                              pynetdicom sleeps 1 ms a turn.

7     ``Association.__init__`` (its ``dul``   It makes its DUL and DIMSE providers with no  Provider classes as class
      and ``dimse`` replaced)                 way to choose their class: the subclass       attributes of Association.
                                              replaces both before any thread starts, and
                                              hands the ACSE and network timeouts to the
                                              new DUL's timers (through the timeouts'
                                              setters).

8     ``RequestHandler._create_association``  pynetdicom makes a plain Association for      An association class (or
      (copied; sets ``Association._server``)  each connection; the copy makes the           factory) for
                                              listener's, set up the same way (the          ``make_server``.
                                              server's handlers bound through its public
                                              ``get_events`` and ``get_handlers``).

9     ``Association._serve_request``          A C-MOVE or C-GET the access policy refuses   A C-MOVE handler that may
      (wrapped)                               is answered with its own status before        answer with a final status
                                              pynetdicom's service class runs: its C-MOVE   before naming a destination.
                                              asks the handler for a destination first,
                                              and then can only say "destination unknown".
                                              (Was: ``association.uid_to_service_class``
                                              patched for the whole process, ``_move_scp``
                                              and ``_get_scp`` overridden.)

10    ``Association.send_c_store``'s file     C-GET and C-MOVE sub-operations send the      A per-call (or
      branch (copied:                         archived file byte for byte, read from disk   per-association) choice of
      ``_get_valid_context``,                 as it is sent; pynetdicom does so only with   ``send_c_store``'s file
      ``_reactor_checkpoint``,                ``_config.STORE_SEND_CHUNKED_DATASET`` on     mode.
      ``_is_paused``,                         for the whole process.
      ``_handle_no_response``,
      ``_check_received_status``,
      ``C_STORE._dataset_path``)

11    ``DIMSE.message``,                      Each received message is decoded into a       A per-association factory
      ``DIMSEMessage.data_set`` (set; relies  buffer the listener gives                     for the received data set's
      on ``DIMSEMessage.decode_msg``)         (``listener._SpoolFile``: memory up to         file.
                                              ``PACS_DICOM_SPOOL_MEMORY``, then the
                                              incoming folder). pynetdicom spools to a
                                              file only with
                                              ``_config.STORE_RECV_CHUNKED_DATASET`` on
                                              for the whole process, into
                                              ``tempfile.NamedTemporaryFile``. (Was:
                                              ``dimse_messages.NamedTemporaryFile``
                                              patched for the process.)

12    ``Association.__class__`` of a          ``AE.associate`` makes a plain Association:   As row 8, for requestors.
      requestor association (switched;        :class:`CheckedAE` switches it, as it makes
      ``AE._create_socket`` overridden)       its socket and before any thread starts, to
                                              :class:`CheckedReactor` (row 6), the
                                              listener's C-MOVE sub-associations to a
                                              subclass that sends archived files (row
                                              10). The class adds methods, no state
                                              (checked when switched).

13 F  ``DIMSE.send_msg`` (overridden;         A C-FIND's pending responses share one        An encoded-command cache, or
      ``C_FIND_RSP.primitive_to_message``)    command set: it is encoded once per request   the PDVs of a message in one
                                              and sent with each identifier in one P-DATA   PDU.
                                              PDU (pynetdicom: encoded twice a response,
                                              two PDUs).

14    ``AE.ae_title`` (property overridden)   A C-MOVE sub-association calls out under the  A calling AE title argument
                                              called facility's AE title, per thread;       to ``AE.associate``.
                                              pynetdicom reads ``ae_title`` when it builds
                                              the request.

15 F  ``_config.LOG_REQUEST_IDENTIFIERS``,    pynetdicom formats every identifier for its   Formatting only when the log
      ``_config.LOG_RESPONSE_IDENTIFIERS``    log, logged or not. Set by ``manage.py        level logs it.
      (set to False)                          dicom_listener`` in its own process
                                              (:func:`listener_process_configure`), never
                                              by ``start_listener``.

16    ``Association._reactor_checkpoint``,    The Storage Commitment N-EVENT-REPORT on the  A send that does not wait
      ``_is_paused`` (used, as row 10)        N-ACTION's association is sent from another   for its response, or a
                                              thread between two turns of the reactor       response handler.
                                              (:func:`send_request`), which goes on
                                              serving: a release crossing it is answered.
                                              pynetdicom's ``send_n_event_report`` holds
                                              the reactor until the response, so a peer
                                              releasing meanwhile waits for the DIMSE
                                              timeout. The response is read through the
                                              public ``EVT_DIMSE_RECV``.

17 F  ``DUL._process_recv_primitive``         A C-FIND's pending responses come             A way to queue encoded PDUs
      (overridden, as row 5; uses             pre-encoded from the index rows as whole      (or a DIMSE message's bytes)
      ``state_machine.current_state``,        P-DATA-TF PDUs, many in one                   for sending.
      ``AssociationSocket.send``)             :class:`PreEncodedPData`; the DUL writes
                                              them in one socket write where pynetdicom's
                                              DT-1 and AR-7 would send a P-DATA-TF (Sta6,
                                              Sta8) and drops them in any other state.
                                              ``EVT_PDU_SENT`` and ``EVT_DIMSE_SENT`` are
                                              not triggered for them (``EVT_DATA_SENT``
                                              is).
====  ======================================  ============================================  ============================

Public hooks used instead of internals: ``EVT_REQUESTED`` decides who may
associate (was an override of ``ACSE._negotiate_as_acceptor``);
``EVT_RELEASED`` and ``EVT_ABORTED`` write the association's store audit
(in the association's own thread); ``EVT_CONN_CLOSE`` gives the peer
address's slot back; ``EVT_CONN_OPEN`` sets TCP_NODELAY (F; was an override
of ``AE._create_socket``); ``make_server(server_class=, request_handler=)``
takes the gate. The association thread's end (``Thread.run`` of the
listener's subclass) closes its database connection and does what no event
did: an exception in a state-machine action (a malformed command set) stops
the DUL, and pynetdicom reports nothing; an abort from another thread
(``stop_listener``) leaves the audit to the association's thread.
``require_calling_aet``/``require_called_aet`` do not fit: who may associate
is read from ``RemoteNode`` rows at each request, per facility, with its
addresses and certificate, an unbound listener answers to every facility's
AE title, and each refusal is audited.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pynetdicom
from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_FIND_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler

from kernel.errors import PacsError

logger = logging.getLogger(__name__)
# The copied loops log as pynetdicom's own did.
_association_log = logging.getLogger("pynetdicom.association")
_dul_log = logging.getLogger("pynetdicom.dul")

PYNETDICOM_VERSION = "3.0.4"

PENDING_STATUSES = (0xFF00, 0xFF01)

# A factory for the buffer a received message's data set is decoded into (row 11):
# called with the message being decoded and its association.
DataSetBuffer = Callable[[DIMSEMessage, Association], BytesIO]


# --- the check -----------------------------------------------------------------------


@dataclass(frozen=True)
class Touched:
    """One pynetdicom name the fence relies on.

    ``kind``: "method" (callable on the class; ``params``, when given, are its
    parameter names, which the fence calls or overrides it with), "attribute"
    (set on a specimen instance by pynetdicom's constructor), "config" (a
    ``pynetdicom._config`` option). ``source_sha256``: the fence copied the
    method's body, and this is the hash of the source copied.
    """

    row: str
    owner: str  # "Association", "DULServiceProvider", ...: a key of _owners()
    name: str
    kind: str
    params: tuple[str, ...] | None = None
    source_sha256: str | None = None


TOUCHED: tuple[Touched, ...] = (
    Touched("1", "DULServiceProvider", "_read_pdu_data", "method", ("self",)),
    Touched("2", "DULServiceProvider", "_is_transport_event", "method", ("self",)),
    Touched("3", "DULServiceProvider", "_decode_pdu", "method", ("self", "bytestream")),
    Touched("3", "DULServiceProvider", "_recv_pdu", "attribute"),
    Touched("3", "DULServiceProvider", "event_queue", "attribute"),
    Touched(
        "4",
        "DULServiceProvider",
        "run_reactor",
        "method",
        ("self",),
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    ),
    Touched("4", "DULServiceProvider", "_idle_timer", "attribute"),
    Touched("4", "DULServiceProvider", "_kill_thread", "attribute"),
    Touched("4", "DULServiceProvider", "_run_loop_delay", "attribute"),
    Touched("4", "DULServiceProvider", "to_provider_queue", "attribute"),
    Touched("4", "DULServiceProvider", "to_user_queue", "attribute"),
    Touched("4", "Association", "_dul_ready", "attribute"),
    Touched("5", "DULServiceProvider", "_process_recv_primitive", "method", ("self",)),
    Touched(
        "6",
        "Association",
        "_run_reactor",
        "method",
        ("self",),
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
    ),
    Touched("6", "Association", "_kill", "attribute"),
    Touched("6", "Association", "_is_paused", "attribute"),
    Touched("6", "Association", "_reactor_checkpoint", "attribute"),
    Touched("6", "DIMSEServiceProvider", "msg_queue", "attribute"),
    Touched("7", "Association", "__init__", "method", ("self", "ae", "mode")),
    Touched("7", "Association", "dul", "attribute"),
    Touched("7", "Association", "dimse", "attribute"),
    Touched(
        "8",
        "RequestHandler",
        "_create_association",
        "method",
        ("self",),
        "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
    ),
    Touched("8", "Association", "_server", "attribute"),
    Touched("9", "Association", "_serve_request", "method", ("self", "msg", "context_id")),
    Touched(
        "10",
        "Association",
        "send_c_store",
        "method",
        ("self", "dataset", "msg_id", "priority", "originator_aet", "originator_id"),
        "fa5a8127f349f8e75698f4cdf2b4dbe3f38e3e9e320a8cf45c15bf8333f9c283",
    ),
    Touched(
        "10",
        "Association",
        "_get_valid_context",
        "method",
        ("self", "ab_syntax", "tr_syntax", "role", "context_id", "allow_conversion"),
    ),
    Touched("10", "Association", "_handle_no_response", "method", ("self",)),
    Touched("10", "Association", "_check_received_status", "method", ("self", "rsp")),
    Touched("10", "C_STORE", "_dataset_path", "attribute"),
    Touched("11", "DIMSEServiceProvider", "message", "attribute"),
    Touched("11", "DIMSEServiceProvider", "receive_primitive", "method", ("self", "primitive")),
    Touched("11", "DIMSEMessage", "data_set", "attribute"),
    Touched(
        "11",
        "DIMSEMessage",
        "decode_msg",
        "method",
        ("self", "primitive", "assoc"),
        "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
    ),
    Touched("12", "ApplicationEntity", "_create_socket", "method", ("self", "assoc", "address", "tls_args")),
    Touched("13", "DIMSEServiceProvider", "send_msg", "method", ("self", "primitive", "context_id")),
    Touched("13", "DIMSEMessage", "primitive_to_message", "method", ("self", "primitive")),
    Touched("14", "ApplicationEntity", "ae_title", "property"),
    Touched("15", "_config", "LOG_REQUEST_IDENTIFIERS", "config"),
    Touched("15", "_config", "LOG_RESPONSE_IDENTIFIERS", "config"),
    Touched("16", "Association", "_reactor_checkpoint", "attribute"),
    Touched("16", "Association", "_is_paused", "attribute"),
    Touched("17", "DULServiceProvider", "_process_recv_primitive", "method", ("self",)),
    Touched("17", "DULServiceProvider", "state_machine", "attribute"),
    Touched("17", "AssociationSocket", "send", "method", ("self", "bytestream")),
)


def _owners() -> dict[str, Any]:
    return {
        "Association": Association,
        "DULServiceProvider": DULServiceProvider,
        "DIMSEServiceProvider": DIMSEServiceProvider,
        "DIMSEMessage": DIMSEMessage,
        "C_STORE": C_STORE,
        "RequestHandler": RequestHandler,
        "AssociationSocket": AssociationSocket,
        "ApplicationEntity": ApplicationEntity,
        "_config": _config,
    }


def _specimens(owners: dict[str, Any]) -> dict[str, Any]:
    """Instances made by pynetdicom's own constructors, to look for the attributes they set
    (no socket, no thread started)."""
    assoc = owners["Association"](owners["ApplicationEntity"](), "acceptor")
    return {
        "Association": assoc,
        "DULServiceProvider": assoc.dul,
        "DIMSEServiceProvider": assoc.dimse,
        "DIMSEMessage": owners["DIMSEMessage"](),
        "C_STORE": owners["C_STORE"](),
    }


def _source_sha256(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def problems() -> list[str]:
    """What stops the fence from holding on the installed pynetdicom: empty when nothing."""
    version = getattr(pynetdicom, "__version__", "?")
    if version != PYNETDICOM_VERSION:
        return [
            f"pynetdicom {version} is installed; archive/dicomnet/fence.py adapts pynetdicom "
            f"{PYNETDICOM_VERSION} (requirements.txt) and has not been checked against another version"
        ]
    found: list[str] = []
    owners = _owners()
    attributes = []
    for touched in TOUCHED:
        where = f"pynetdicom's {touched.owner}.{touched.name} (fence row {touched.row})"
        owner = owners[touched.owner]
        if touched.kind == "attribute":
            attributes.append((touched, where))
            continue
        if touched.kind == "config":
            if not isinstance(getattr(owner, touched.name, None), bool):
                found.append(f"{where} is missing or not a bool")
            continue
        value = inspect.getattr_static(owner, touched.name, None)
        if value is None:
            found.append(f"{where} is missing")
            continue
        if touched.kind == "property":
            if not isinstance(value, property) or value.fget is None or value.fset is None:
                found.append(f"{where} is no longer a property with a setter")
            continue
        if not callable(value):
            found.append(f"{where} is no longer a method")
            continue
        if touched.params is not None:
            params = tuple(inspect.signature(value).parameters)
            if params != touched.params:
                found.append(f"{where} takes {params}, the fence expects {touched.params}")
                continue
        if touched.source_sha256 is not None and _source_sha256(value) != touched.source_sha256:
            found.append(f"{where} is not the code the fence copied (its source differs)")
    if found:
        return found  # the constructors below may well fail for the same reason
    # Attributes pynetdicom's constructors set: looked for on instances they make.
    try:
        specimens = _specimens(owners)
    except Exception as exc:
        return [f"pynetdicom's Association cannot be made as the fence expects: {exc!r}"]
    for touched, where in attributes:
        if not hasattr(specimens[touched.owner], touched.name):
            found.append(f"{where} is missing")
    return found


class FenceBroken(PacsError):
    """pynetdicom is not what the fence was written for; the message lists why."""

    code = "fence_broken"


def verify() -> None:
    """Raise :class:`FenceBroken` when :func:`problems` finds any."""
    found = problems()
    if found:
        raise FenceBroken("; ".join(found))


def listener_process_configure(*, fast_paths: bool) -> None:
    """Process-wide pynetdicom options for a process that only serves DICOM (row 15):
    called by ``manage.py dicom_listener``, never on import nor by ``start_listener``."""
    if fast_paths:
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False


# --- transport helpers ---------------------------------------------------------------


def nodelay(sock: socket.socket | None) -> None:
    """Send small PDUs at once. With Nagle's algorithm a C-FIND or C-STORE response
    that follows another write waits for the peer's delayed ACK: 40 ms on Linux."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket (a test's socketpair)
        pass


def handle_conn_open_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN: TCP_NODELAY on the association's socket (F)."""
    nodelay(getattr(event.assoc.dul.socket, "socket", None))


def _recv_exact(assoc_sock: AssociationSocket, n: int) -> bytearray:
    """Read ``n`` bytes (fewer only if the peer closed), into one preallocated buffer."""
    raw = assoc_sock.socket
    if raw is None:
        raise OSError("socket closed")
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = raw.recv_into(view[got:], min(n - got, 1 << 20))
        if k == 0:
            return buf[:got]
        got += k
    return buf


def _recv_plain(assoc_sock: AssociationSocket, n: int) -> bytearray:
    """pynetdicom's own read (4 KiB a call)."""
    return assoc_sock.recv(n)


class _NotifyingQueue(queue.Queue):
    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


class PreEncodedPData(P_DATA):
    """Whole P-DATA-TF PDUs, encoded by the caller, for the DUL to write in one socket
    write (row 17). ``sent`` is set once they are written, or dropped because the
    association is ending. Only for :class:`FencedDUL` with fast paths on."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data
        self.sent = threading.Event()


# --- the DUL (rows 1-5, 17) ---------------------------------------------------------------


class FencedDUL(DULServiceProvider):
    """pynetdicom's DUL with a ceiling on the PDU length it reads and the gate's
    A-ASSOCIATE-RQ first; with ``fast``, large reads, the peer read before
    queued PDUs are sent, and waits that end when there is something to do."""

    def __init__(
        self,
        assoc: Association,
        *,
        fast: bool,
        first_pdu: bytes,
        read_limit: int,
        wake_user: Callable[[], None],
    ) -> None:
        super().__init__(assoc)
        self._pacs_fast = fast
        self._pacs_prefix = first_pdu
        self._pacs_read_limit = read_limit
        self._pacs_recv = _recv_exact if fast else _recv_plain
        self._pacs_wake: tuple[socket.socket, socket.socket] | None = None
        if fast:
            wake_r, wake_w = socket.socketpair()
            wake_r.setblocking(False)
            wake_w.setblocking(False)
            self._pacs_wake = (wake_r, wake_w)
            # Nothing is queued yet: the threads start later.
            self.to_provider_queue = _NotifyingQueue(self._poke)
            self.to_user_queue = _NotifyingQueue(wake_user)

    def _poke(self) -> None:
        assert self._pacs_wake is not None
        try:
            self._pacs_wake[1].send(b"\0")
        except OSError:  # closed (the DUL ended) or full (a wake-up is pending anyway)
            pass

    def _wait(self, seconds: float) -> None:
        """Until the peer sent something, a primitive was queued for sending, or ``seconds``."""
        assert self._pacs_wake is not None
        wake_r = self._pacs_wake[0]
        peer = getattr(self.socket, "socket", None)
        if isinstance(peer, ssl.SSLSocket) and peer.pending():
            return  # decrypted bytes select() cannot see
        try:
            readable, _, _ = select.select([peer, wake_r] if peer is not None else [wake_r], [], [], seconds)
        except (OSError, ValueError):
            time.sleep(seconds)
            return
        if wake_r in readable:
            try:
                while wake_r.recv(4096):
                    pass
            except OSError:
                pass

    def run_reactor(self) -> None:
        if not self._pacs_fast:
            super().run_reactor()
            return
        try:
            self._run_reactor_waking()
        finally:
            assert self._pacs_wake is not None
            for s in self._pacs_wake:
                s.close()

    def _run_reactor_waking(self) -> None:
        # pynetdicom 3.0.4's DULServiceProvider.run_reactor (row 4), comments
        # shortened, with time.sleep(self._run_loop_delay) replaced by self._wait().
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        sleep = False

        while True:
            # Let the assoc reactor off the leash
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                self._wait(self._run_loop_delay)

            if self._kill_thread:
                break

            # Check the ARTIM timer first so its event is placed on the queue
            #   ahead of any other events this loop
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                # We can either encode and send a primitive **OR**
                #   receive and decode a PDU per loop of the reactor
                if self._process_recv_primitive():  # encode (sent by state machine)
                    pass
                elif self._is_transport_event():  # receive and decode PDU
                    self._idle_timer.restart()
            except Exception as exc:
                _dul_log.error("Exception in DUL.run(), aborting association")
                _dul_log.exception(exc)
                # Bypass the state machine and send an A-ABORT
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                # Hard shutdown of the Association and DUL reactors
                self.assoc._kill = True
                self._kill_thread = True
                return

            # Check the event queue to see if there is anything to do
            try:
                event = self.event_queue.get(block=False)
            # If the queue is empty, return to the start of the loop
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False

    def _process_recv_primitive(self) -> bool:
        if self._pacs_fast:
            # pynetdicom reads the socket only when nothing is queued for sending,
            # so a peer's C-CANCEL (or A-ABORT) would wait behind every response a
            # C-FIND has queued. Read first when the peer has sent something.
            peer = getattr(self.socket, "socket", None)
            if peer is not None:
                try:
                    readable, _, _ = select.select([peer], [], [], 0)
                except (OSError, ValueError):
                    readable = []
                if readable:
                    return False
            try:
                first = self.to_provider_queue.queue[0]
            except IndexError:
                first = None
            if isinstance(first, PreEncodedPData):
                self._send_pre_encoded(first)
                return True
        return bool(super()._process_recv_primitive())

    def _send_pre_encoded(self, primitive: PreEncodedPData) -> None:
        """Row 17: what DT-1 (Sta6) and AR-7 (Sta8) do with a P-DATA request, for PDUs
        already encoded; in any other state the association is ending and they are dropped."""
        self.to_provider_queue.get(False)
        try:
            if self.socket is not None and self.state_machine.current_state in ("Sta6", "Sta8"):
                self.socket.send(primitive.data)  # on failure it queues Evt17, as for any PDU
        finally:
            primitive.sent.set()
        if self.to_provider_queue.qsize():
            # The reactor sleeps when no event came of this turn: wake it for what is queued.
            self._poke()

    def _read_pdu_data(self) -> None:
        sock = self.socket
        assert sock is not None
        try:
            head = self._pacs_recv(sock, 6)
        except OSError:
            self.event_queue.put("Evt17")
            return
        if len(head) < 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, length = struct.unpack(">BBL", head)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            logger.error("unknown PDU type 0x%02X received", pdu_type)
            self.event_queue.put("Evt19")
            return
        limit = self._pacs_read_limit
        if length + 6 > limit:
            logger.error(
                "peer %s declared a PDU of %d bytes (limit %d): connection cut",
                getattr(self.assoc.requestor, "address", "?"),
                length,
                limit,
            )
            sock.close()  # emits Evt17: the association ends with an A-P-ABORT
            return
        try:
            body = self._pacs_recv(sock, length)
        except OSError:
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            logger.error("connection closed after %d of %d PDU bytes", len(body), length)
            self.event_queue.put("Evt17")
            return
        self._queue_pdu(head + body)

    def _is_transport_event(self) -> bool:
        # The A-ASSOCIATE-RQ the gate read comes first, as if read from the socket
        # (after Evt5, which the acceptor's socket queued when it was created).
        if self._pacs_prefix:
            pdu, self._pacs_prefix = self._pacs_prefix, b""
            self._queue_pdu(pdu)
            return True
        return bool(super()._is_transport_event())

    def _queue_pdu(self, data: bytes | bytearray) -> None:
        try:
            pdu, event = self._decode_pdu(bytearray(data))
        except Exception:
            logger.exception("unable to decode the received PDU")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)


# --- the DIMSE provider (rows 11, 13) -----------------------------------------------------


class FencedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider decoding into the listener's buffers; with ``fast``,
    a short path for C-FIND pending responses and a wake-up for the reactor.

    A C-FIND answering hundreds of matches sends hundreds of responses whose
    command sets are all the same; pynetdicom builds and encodes each one
    (twice) and sends command and identifier as two P-DATA PDUs. Here the
    command set is encoded once per request and each response is one P-DATA
    PDU holding both PDVs (PS3.8 9.3.5 allows several), when it fits the
    peer's maximum PDU length; anything else takes pynetdicom's path.
    """

    def __init__(
        self,
        assoc: Association,
        *,
        fast: bool,
        wake_user: Callable[[], None],
        data_set_buffer: DataSetBuffer | None,
    ) -> None:
        super().__init__(assoc)
        self._pacs_fast = fast
        self._pacs_buffer = data_set_buffer
        self._pacs_find_commands: dict[Any, bytes] = {}
        if fast:
            self.msg_queue = _NotifyingQueue(wake_user)

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self.message is None and self._pacs_buffer is not None:
            # pynetdicom writes a data set to the message's data_set when it does not
            # spool to a file itself (_config.STORE_RECV_CHUNKED_DATASET off).
            message = DIMSEMessage()
            message.data_set = self._pacs_buffer(message, self.assoc)
            self.message = message
        super().receive_primitive(primitive)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (
            self._pacs_fast
            and isinstance(primitive, C_FIND)
            and primitive.Status in PENDING_STATUSES
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Identifier is not None
        ):
            key = (context_id, primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID, primitive.Status)
            command = self._pacs_find_commands.get(key)
            if command is None:
                message = C_FIND_RSP()
                message.primitive_to_message(primitive)
                command = self._pacs_find_commands[key] = encode(message.command_set, True, True) or b""
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


# --- the association (rows 6, 7, 9, 10, 12) ---------------------------------------------


class CheckedReactor(Association):
    """pynetdicom's association loop without its race with a sending thread (row 6;
    pynetdicom issue 875). Methods only, so that a requestor association
    ``AE.associate`` makes may be switched to it (row 12, :class:`CheckedAE`).

    pynetdicom's loop marks itself paused, waits on ``_reactor_checkpoint``,
    marks itself running and reads the DIMSE queue. A thread sending a
    request (``send_c_store``, ``send_c_find``...) clears the checkpoint, waits
    until the loop is marked paused, sends and reads the response off the
    same queue. When it clears the checkpoint after the loop's wait returned
    but before the loop marked itself running, it sees it paused, sends, and
    the loop takes the response ("Received unexpected ... service message");
    the sender waits for the DIMSE timeout. Here the loop reads the queue
    only when the checkpoint is still set after it marked itself running:
    either the sender sees it running and waits, or the loop sees the
    checkpoint cleared and pauses again. In both modes: it is a correction,
    not a fast path.
    """

    def _reactor_idle(self) -> None:
        time.sleep(0.001)

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4's Association._run_reactor (row 6), comments shortened,
        # with time.sleep(0.001) replaced by self._reactor_idle() and the re-check.
        self._is_paused = False
        while not self._kill:
            self._reactor_idle()

            # Will block until `_reactor_checkpoint` is set()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                # A sender cleared it after the wait returned, and may have seen
                # _is_paused still True: the queue is its own until it sets it.
                continue

            # Check with the DIMSE provider to see if a completely decoded
            #   message is available
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            # Check for release request from the peer
            if self.is_established and self.acse.is_release_requested():
                # Send A-RELEASE response
                self.acse.send_release(is_response=True)
                _association_log.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            # Check for abort from either locally or the peer
            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                _association_log.info(log_msg)
                # Ensure that EVT_ASCE_RECV fires for subscribers
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            # Check if the DULServiceProvider thread is still running
            if not self.dul.is_alive():
                self.kill()
                return

            # Check if network_timeout has expired
            if self.dul.idle_timer_expired():
                _association_log.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


class CheckedAE(ApplicationEntity):
    """An AE whose requestor associations are ``requestor_class`` (a subclass of
    :class:`CheckedReactor`), switched when ``AE.associate`` makes their socket,
    before any of their threads starts (row 12).

    Their two threads (the association's and its DUL's) also run in a copy of the
    caller's :mod:`contextvars`. So what the caller's thread has bound there, such as
    the log ids of ``kernel.logs`` (the association that asked for a C-MOVE, the task
    or the request), goes with the lines they write."""

    requestor_class: type[Association] = CheckedReactor

    def _create_socket(
        self, assoc: Association, address: Any, tls_args: tuple[ssl.SSLContext, str] | None
    ) -> AssociationSocket:
        requestor_becomes(assoc, self.requestor_class)
        for thread in (assoc, assoc.dul):
            # A copy each: one Context cannot be entered by two threads at once.
            thread.run = functools.partial(contextvars.copy_context().run, thread.run)  # type: ignore[method-assign]
        return super()._create_socket(assoc, address, tls_args)


class FencedAssociation(CheckedReactor):
    """An acceptor association with the fenced providers.

    ``service_answered(msg, context_id)`` (for subclasses) may answer a request
    itself before pynetdicom's service class runs; ``pacs_serving`` is true
    while a request is being served.
    """

    pacs_serving = False

    def __init__(
        self,
        ae: ApplicationEntity,
        mode: str,
        *,
        fast: bool,
        first_pdu: bytes = b"",
        read_limit: int,
        data_set_buffer: DataSetBuffer | None = None,
    ) -> None:
        super().__init__(ae, mode)
        self.pacs_fast = fast
        self._pacs_wakeup = threading.Event()
        # Row 7: pynetdicom made plain providers; none has started or been handed out.
        self.dimse = FencedDIMSE(self, fast=fast, wake_user=self._pacs_wakeup.set, data_set_buffer=data_set_buffer)
        self.dul = FencedDUL(
            self, fast=fast, first_pdu=first_pdu, read_limit=read_limit, wake_user=self._pacs_wakeup.set
        )
        # The setters hand the timeouts to the DUL's timers: to the new DUL's.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def service_answered(self, msg: Any, context_id: int) -> bool:
        return False

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if self.is_established and msg.is_valid_request and self.service_answered(msg, context_id):
            return
        self.pacs_serving = True
        try:
            super()._serve_request(msg, context_id)
        finally:
            self.pacs_serving = False

    def _pacs_wait(self, seconds: float) -> None:
        # Cleared after waking and before the reactor looks at its queues, so
        # a message that arrives meanwhile is either seen now or wakes the next wait.
        self._pacs_wakeup.wait(seconds)
        self._pacs_wakeup.clear()

    def _reactor_idle(self) -> None:
        if self.pacs_fast:
            self._pacs_wait(0.001)
        else:
            time.sleep(0.001)


def send_file(
    assoc: Association,
    path: Path,
    context: PresentationContext,
    *,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """C-STORE the data set of the Part 10 file at ``path`` as its bytes are on disk,
    read as they are sent, on ``context`` (which the caller chose with
    ``_get_valid_context(..., allow_conversion=False)``): pynetdicom 3.0.4's
    ``send_c_store`` with ``STORE_SEND_CHUNKED_DATASET`` on, for this call only (row 10)."""
    if not assoc.is_established:
        raise RuntimeError("The association with a peer SCP must be established before sending a C-STORE request")
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    file_meta, offset = split_dataset(path)
    req._dataset_path = (path, offset)
    req.AffectedSOPClassUID = file_meta.MediaStorageSOPClassUID
    req.AffectedSOPInstanceUID = file_meta.MediaStorageSOPInstanceUID

    # Pause the reactor to prevent a race condition
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)

    assoc.dimse.send_msg(req, cast(int, context.context_id))
    _cx_id, rsp = assoc.dimse.get_msg(block=True)

    assoc._reactor_checkpoint.set()

    # If `rsp` is None then the DIMSE timeout expired so abort
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(rsp)


def send_request(assoc: Association, primitive: Any, context_id: int, *, timeout: float = 5.0) -> bool:
    """Send a request ``primitive`` on an acceptor's association from a thread other than its
    reactor, between two of the reactor's turns, and return at once (row 16): the reactor
    goes on serving, and takes the peer's response off the queue (pynetdicom logs it as
    unexpected); the caller reads it through ``EVT_DIMSE_RECV``. False when the association
    ended, or the reactor did not pause within ``timeout`` seconds, before anything was sent."""
    deadline = time.monotonic() + timeout
    assoc._reactor_checkpoint.clear()
    try:
        # pynetdicom also marks the reactor paused while a service class runs (so that a
        # handler may send); a request of the peer being served must finish first, or
        # its response's PDUs could fall between this message's.
        while not assoc._is_paused or getattr(assoc, "pacs_serving", False):
            if not assoc.is_established or time.monotonic() > deadline:
                return False
            time.sleep(0.0001)
        if not assoc.is_established:
            return False
        assoc.dimse.send_msg(primitive, context_id)
        return True
    finally:
        assoc._reactor_checkpoint.set()


def exact_context(assoc: Association, sop_class_uid: str, transfer_syntax_uid: str) -> PresentationContext | None:
    """The accepted context for ``sop_class_uid`` in exactly ``transfer_syntax_uid``, as SCU; None if none."""
    try:
        return assoc._get_valid_context(sop_class_uid, transfer_syntax_uid, "scu", allow_conversion=False)
    except ValueError:
        return None


def requestor_becomes(assoc: Association, cls: type[Association]) -> None:
    """Row 12: give an association ``AE.associate`` is making the class ``cls``, a
    subclass of Association that adds methods and no state, before its thread starts."""
    if assoc.is_alive():
        raise RuntimeError("an association's class is switched before its thread starts")
    for klass in cls.__mro__[: cls.__mro__.index(Association)]:
        for name, value in vars(klass).items():
            if not name.startswith("__") and not callable(value):
                raise TypeError(f"{klass.__name__}.{name}: a class switched onto a live association adds no state")
    assoc.__class__ = cls


# --- the request handler (row 8) ------------------------------------------------------------


class FencedRequestHandler(RequestHandler):
    """pynetdicom's request handler making the association ``make_association`` returns."""

    def make_association(self) -> FencedAssociation:
        raise NotImplementedError

    def _create_association(self) -> Association:
        # pynetdicom 3.0.4's RequestHandler._create_association (row 8), making
        # make_association()'s instead of a plain Association.
        assoc = self.make_association()
        assoc._server = self.server

        # Set the thread name (pynetdicom's active_associations looks for it)
        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"

        sock = AssociationSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)

        # Association Acceptor object -> local AE
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)

        # Association Requestor object -> remote AE
        assoc.requestor.address_info = self.remote

        # Bind events to handlers, through the server's public accessors
        for event in self.server.get_events():
            handlers = self.server.get_handlers(event)
            if event.is_intervention:
                if handlers and handlers[0] is not None:
                    assoc.bind(event, *handlers)
            else:
                # A notification event's handlers: a list of (handler, args).
                for handler, args in cast(list[tuple[Callable[..., Any], list[Any] | None]], handlers):
                    assoc.bind(event, handler, args)

        return assoc
