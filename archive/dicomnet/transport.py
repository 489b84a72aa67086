"""The gate in front of pynetdicom: from an accepted connection to an association request.

pynetdicom 3.0.4 makes an association of every TCP connection as soon as it
is accepted. In front of it, the gate a connection passes first
(:func:`admit`, :class:`AddressSlots`):

* pynetdicom creates an association (two threads, one of the
  ``maximum_associations`` slots) for every TCP connection, and waits 30 s
  (the ACSE timeout) for its A-ASSOCIATE-RQ; 32 idle sockets filled every
  slot. Here a connection has ``PACS_DICOM_REQUEST_TIMEOUT`` seconds to
  complete its TLS handshake and send the whole A-ASSOCIATE-RQ, read by the
  gate's own thread; only then is the association created, with the request
  handed to its DUL (``archive/dicomnet/fence.py``, row 2). Idle connections
  hold no association slot.
* pynetdicom does the TLS handshake in the accepting thread, so one silent
  peer on the TLS port stops the port for everyone. Here it is done in the
  gate, under the same deadline.
* Each peer address holds at most ``PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS``
  connections, associated or not; beyond, a new one is closed when accepted.

What the listener changes inside pynetdicom's DUL once the association
exists (the ceiling on a PDU's length, the loops that wake on events) is in
the fence, ``archive/dicomnet/fence.py``.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time

from kernel.errors import PacsError

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


class NotAdmitted(PacsError):
    """The connection did not send a usable A-ASSOCIATE-RQ in time; the message says why.

    ``quiet``: the peer just closed (a port probe, a load balancer's health
    check), not worth a warning."""

    code = "not_admitted"

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
                _handshake(sock, deadline)
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
