"""pynetdicom's transport for the listener: bounded, and woken by events instead of polls.

pynetdicom 3.0.4 leaves three things to its user:

* It buffers whatever PDU length a peer declares (up to 4 GiB). Here a PDU
  longer than ``PACS_DICOM_PDU_READ_LIMIT`` cuts the connection before a byte
  of it is read.
* It polls. The DUL thread sleeps 1 ms whenever a loop found nothing to do,
  and each association's reactor sleeps 1 ms per loop; a C-STORE waits on
  both several times (about 2-3 ms an image, most of the cost of a bare
  pynetdicom SCP). Here the reactor's sleep ends as soon as the DUL hands it a
  message, and the DUL's sleep is a ``select()`` on the peer's socket and on
  a wake-up socket poked whenever a primitive is queued for sending.

* While it has something to send it does not read: a C-CANCEL waits behind
  every response a C-FIND has queued. Here the peer's socket is read first
  whenever it has data.

Both sleeps still time out after pynetdicom's own delay, so every timer and
flag its loops check is checked as often as before. Only the listener's own
associations are affected: the sleep stand-in falls back to ``time.sleep``
in every other thread.

And in front of pynetdicom, the gate a connection passes before it becomes an
association (:func:`admit`, :class:`AddressSlots`):

* pynetdicom creates an association (two threads, one of the
  ``maximum_associations`` slots) for every TCP connection, and waits 30 s
  (the ACSE timeout) for its A-ASSOCIATE-RQ; 32 idle sockets filled every
  slot. Here a connection has ``PACS_DICOM_REQUEST_TIMEOUT`` seconds to
  complete its TLS handshake and send the whole A-ASSOCIATE-RQ, read by the
  gate's own thread; only then is the association created, with the request
  handed to its DUL (``GuardedDUL._pacs_prefix``). Idle connections hold no
  association slot.
* pynetdicom does the TLS handshake in the accepting thread, so one silent
  peer on the TLS port stops the port for everyone. Here it is done in the
  gate, under the same deadline.
* Each peer address holds at most ``PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS``
  connections, associated or not; beyond, a new one is closed when accepted.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pynetdicom.association
import pynetdicom.dul
from django.conf import settings
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

logger = logging.getLogger(__name__)

_local = threading.local()


class _TimeForPynetdicom:
    """Stands in for the ``time`` module inside pynetdicom's association and DUL
    modules: a thread that registered a waiter sleeps on it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        waiter = getattr(_local, "waiter", None)
        if waiter is None:
            time.sleep(seconds)
        else:
            waiter(seconds)


class _NotifyingQueue(queue.Queue):  # type: ignore[type-arg]
    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


def install() -> None:
    """Point pynetdicom's sleeps at the stand-in (idempotent)."""
    shim = _TimeForPynetdicom()
    pynetdicom.association.time = shim  # type: ignore[attr-defined]
    pynetdicom.dul.time = shim  # type: ignore[attr-defined]


def nodelay(sock: socket.socket | None) -> None:
    """Send small PDUs at once. With Nagle's algorithm a C-FIND or C-STORE response
    that follows another write waits for the peer's delayed ACK: 40 ms on Linux."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket (a test's socketpair)
        pass


def prepare(assoc: Association, *, first_pdu: bytes = b"") -> None:
    """Give a new acceptor association (threads not started) the guarded, event-driven DUL.

    ``first_pdu``: the A-ASSOCIATE-RQ the gate has read already (:func:`admit`)."""
    dul = assoc.dul
    nodelay(getattr(dul.socket, "socket", None))
    dul.__class__ = GuardedDUL  # adds methods only; the state is pynetdicom's own
    dul._pacs_prefix = first_pdu  # type: ignore[attr-defined]
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    dul._pacs_wake = (wake_r, wake_w)  # type: ignore[attr-defined]

    def poke_dul() -> None:
        try:
            wake_w.send(b"\0")
        except OSError:  # closed (the DUL ended) or full (a wake-up is pending anyway)
            pass

    reactor_event = threading.Event()
    assoc._pacs_wakeup = reactor_event  # type: ignore[attr-defined]
    # Nothing is queued yet: the threads start after this.
    dul.to_provider_queue = _NotifyingQueue(poke_dul)
    dul.to_user_queue = _NotifyingQueue(reactor_event.set)
    assoc.dimse.msg_queue = _NotifyingQueue(reactor_event.set)


def reactor_waits_on_events(assoc: Association) -> None:
    """Called in the association's own thread, before its reactor runs."""
    event: threading.Event | None = getattr(assoc, "_pacs_wakeup", None)
    if event is None:
        return

    def wait(seconds: float) -> None:
        # Cleared after waking and before the reactor looks at its queues, so
        # a message that arrives meanwhile is either seen now or wakes the next wait.
        event.wait(seconds)
        event.clear()

    _local.waiter = wait


class GuardedDUL(DULServiceProvider):
    """pynetdicom's DUL with a ceiling on the PDU length it will read, large reads,
    and sleeps that end when there is something to do."""

    _pacs_wake: tuple[socket.socket, socket.socket]
    _pacs_prefix: bytes = b""

    def run(self) -> None:
        # run(), not run_reactor(): the thread's target was bound before the class swap.
        _local.waiter = self._wait
        try:
            super().run()
        finally:
            _local.waiter = None
            for s in self._pacs_wake:
                s.close()

    def _wait(self, seconds: float) -> None:
        wake_r = self._pacs_wake[0]
        peer = getattr(self.socket, "socket", None)
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

    def _process_recv_primitive(self) -> bool:
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
        return bool(super()._process_recv_primitive())

    def _read_pdu_data(self) -> None:
        sock = self.socket
        assert sock is not None
        try:
            head = _recv_exact(sock, 6)
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
        limit = settings.PACS_DICOM_PDU_READ_LIMIT
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
            body = _recv_exact(sock, length)
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


def _recv_exact(assoc_sock: Any, n: int) -> bytearray:
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


# --- the gate: from accepted connection to association request ------------------

# Connections held at once, all addresses together: a flood from many
# addresses costs threads waiting at most PACS_DICOM_REQUEST_TIMEOUT each,
# and this bounds how many.
CONNECTION_CEILING = 1024

A_ASSOCIATE_RQ = 0x01


class AddressSlots:
    """How many connections each peer address holds (from accept to close), capped
    per address and in all; shared by the plain and the TLS port."""

    def __init__(self, *, per_address: int, ceiling: int = CONNECTION_CEILING) -> None:
        self.per_address = per_address
        self.ceiling = ceiling
        self._held: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def acquire(self, address: str) -> bool:
        with self._lock:
            held = self._held.get(address, 0)
            if held >= self.per_address or self._total >= self.ceiling:
                return False
            self._held[address] = held + 1
            self._total += 1
            return True

    def release(self, address: str) -> None:
        with self._lock:
            held = self._held.get(address, 0)
            if held <= 1:
                self._held.pop(address, None)
            else:
                self._held[address] = held - 1
            self._total = max(self._total - 1, 0)

    def held(self, address: str | None = None) -> int:
        with self._lock:
            return self._total if address is None else self._held.get(address, 0)


class NotAdmitted(Exception):
    """The connection did not send a usable A-ASSOCIATE-RQ in time; the message says why.

    ``quiet``: the peer just closed (a port probe, a load balancer's health
    check), not worth a warning."""

    def __init__(self, message: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet
        self.sock: socket.socket | None = None  # the connection, for the caller to close (after logging)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise NotAdmitted("no A-ASSOCIATE-RQ within the request timeout")
    return left


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """The TLS handshake, non-blocking, so that the deadline bounds it whole (a blocking
    handshake's timeout applies to each read, and a peer sending a byte at a time
    could stretch it without end)."""
    sock.setblocking(False)
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            readable, _, _ = select.select([sock], [], [], _remaining(deadline))
            if not readable:
                _remaining(deadline)
        except ssl.SSLWantWriteError:
            _, writable, _ = select.select([], [sock], [], _remaining(deadline))
            if not writable:
                _remaining(deadline)


def _recv_by(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        sock.settimeout(_remaining(deadline))
        try:
            chunk = sock.recv(min(n - len(data), 65536))
        except TimeoutError:
            raise NotAdmitted("no A-ASSOCIATE-RQ within the request timeout") from None
        if not chunk:
            raise NotAdmitted("connection closed before its A-ASSOCIATE-RQ", quiet=not data)
        data += chunk
    return bytes(data)


def admit(
    sock: socket.socket, *, timeout: float, ssl_context: ssl.SSLContext | None, read_limit: int
) -> tuple[socket.socket, bytes]:
    """Within ``timeout`` seconds: the TLS handshake (with ``ssl_context``, the client's
    certificate verified) and the whole A-ASSOCIATE-RQ PDU.

    Returns the socket to go on with (the TLS one, with TLS) in blocking mode,
    and the PDU. Raises :class:`NotAdmitted` (too slow, not an association
    request, longer than ``read_limit``, or a TLS handshake that failed) with
    the socket to close as its ``sock``: with TLS, ``sock`` no longer owns
    the connection.
    """
    deadline = time.monotonic() + timeout
    try:
        try:
            if ssl_context is not None:
                # wrap_socket() takes the descriptor over: from here on only the
                # TLS socket can close the connection.
                sock = ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                _handshake(sock, deadline)  # type: ignore[arg-type]
            head = _recv_by(sock, 6, deadline)
            pdu_type, _, length = struct.unpack(">BBL", head)
            if pdu_type != A_ASSOCIATE_RQ:
                raise NotAdmitted(f"PDU type 0x{pdu_type:02X} where an A-ASSOCIATE-RQ was expected")
            if length + 6 > read_limit:
                raise NotAdmitted(f"declared a PDU of {length} bytes (limit {read_limit}): connection cut")
            body = _recv_by(sock, length, deadline)
        except ssl.SSLError as exc:
            raise NotAdmitted(f"TLS handshake failed: {exc.reason or exc}") from None
        except (OSError, ValueError) as exc:
            raise NotAdmitted(f"connection failed before its A-ASSOCIATE-RQ: {exc}") from None
    except NotAdmitted as exc:
        exc.sock = sock
        raise
    sock.settimeout(None)
    return sock, head + body


def close(sock: socket.socket) -> None:
    """Shut the connection down both ways and close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
