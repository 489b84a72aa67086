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

import json
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, cast

from kernel.errors import PacsError

# --- the gate: from accepted connection to association request ------------------

# Connections held at once, all addresses together: a flood from many
# addresses costs threads waiting at most PACS_DICOM_REQUEST_TIMEOUT each,
# and this bounds how many.
CONNECTION_CEILING = 1024

A_ASSOCIATE_RQ = 0x01


class AddressSlots:
    """How many connections each peer address holds (from accept to close), capped
    per address and in all, and how many associations are accepted (capped by
    ``max_associations``, 0: no cap here); shared by the plain and the TLS port.

    In a listener of several processes the parent holds the one instance
    (:class:`SlotBroker`) and each process asks it through a
    :class:`SharedSlots`, which answers the same methods."""

    def __init__(self, *, per_address: int, ceiling: int = CONNECTION_CEILING, max_associations: int = 0) -> None:
        self.per_address = per_address
        self.ceiling = ceiling
        self.max_associations = max_associations
        self._held: dict[str, int] = {}
        self._total = 0
        self._associations = 0
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

    def association_acquire(self) -> bool:
        """An accepted association's place under ``max_associations``; False: the listener is full."""
        with self._lock:
            if self.max_associations and self._associations >= self.max_associations:
                return False
            self._associations += 1
            return True

    def association_release(self) -> None:
        with self._lock:
            self._associations = max(self._associations - 1, 0)

    def snapshot(self) -> dict[str, int]:
        """The counts now, all processes together: connections held, associations accepted, peer addresses."""
        with self._lock:
            return {"connections": self._total, "associations": self._associations, "addresses": len(self._held)}


# --- the slots of a listener of several processes --------------------------------
#
# The parent holds the AddressSlots; each child process asks it over its own end of
# a socket pair, one line a request: "a ADDRESS" (acquire a connection slot) and "A"
# (an association's) answer "1" or "0"; "r ADDRESS" and "R" give them back and
# answer nothing; "l" answers "1" when the child holds no more connections than
# any sibling (who accepts first, below); "c [ADDRESS]" answers the connections held (by the address, or
# all); "s" answers the snapshot as JSON; "h" (hello) says the child serves. Per child the parent keeps what it holds, so a child that dies (even by
# SIGKILL) gives every slot back with it.


class SlotBroker:
    """The parent's side: one :class:`AddressSlots` for every child, and what each holds."""

    def __init__(self, slots: AddressSlots) -> None:
        self.slots = slots
        self._ledger: dict[int, tuple[dict[str, int], list[int]]] = {}
        self._buffers: dict[int, bytes] = {}

    def child_add(self, key: int) -> None:
        self._ledger[key] = ({}, [0])
        self._buffers[key] = b""

    def child_gone(self, key: int) -> int:
        """Give back everything child ``key`` held; return how many slots that was."""
        addresses, associations = self._ledger.pop(key, ({}, [0]))
        self._buffers.pop(key, None)
        given = 0
        for address, count in addresses.items():
            for _ in range(count):
                self.slots.release(address)
                given += 1
        for _ in range(associations[0]):
            self.slots.association_release()
            given += 1
        return given

    def held_by(self, key: int) -> dict[str, int]:
        addresses, associations = self._ledger.get(key, ({}, [0]))
        return {"connections": sum(addresses.values()), "associations": associations[0]}

    def serve(self, key: int, sock: socket.socket) -> tuple[bool, list[str]]:
        """Answer what child ``key`` sent on ``sock`` (readable). Returns whether the
        child's end is still open, and the lines that were not slot requests ("h")."""
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True, []
        except OSError:
            data = b""
        if not data:
            return False, []
        buffer = self._buffers.get(key, b"") + data
        *lines, rest = buffer.split(b"\n")
        self._buffers[key] = rest
        addresses, associations = self._ledger.setdefault(key, ({}, [0]))
        replies: list[bytes] = []
        other: list[str] = []
        for raw in lines:
            line = raw.decode("ascii", "replace")
            verb, _, address = line.partition(" ")
            if verb == "a":
                ok = self.slots.acquire(address)
                if ok:
                    addresses[address] = addresses.get(address, 0) + 1
                replies.append(b"1\n" if ok else b"0\n")
            elif verb == "r":
                if addresses.get(address, 0) > 0:
                    addresses[address] -= 1
                    if not addresses[address]:
                        del addresses[address]
                    self.slots.release(address)
            elif verb == "A":
                ok = self.slots.association_acquire()
                if ok:
                    associations[0] += 1
                replies.append(b"1\n" if ok else b"0\n")
            elif verb == "R":
                if associations[0] > 0:
                    associations[0] -= 1
                    self.slots.association_release()
            elif verb == "l":
                mine = sum(addresses.values())
                least = min(sum(held.values()) for held, _n in self._ledger.values())
                replies.append(b"1\n" if mine <= least else b"0\n")
            elif verb == "c":
                replies.append(b"%d\n" % self.slots.held(address or None))
            elif verb == "s":
                replies.append(json.dumps(self.snapshot()).encode() + b"\n")
            else:
                other.append(line)
        if replies:
            try:
                sock.sendall(b"".join(replies))
            except OSError:
                return False, other
        return True, other

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.slots.snapshot(),
            "processes": {str(key): self.held_by(key) for key in sorted(self._ledger)},
        }


class SharedSlots:
    """A child's side of the :class:`SlotBroker`: the methods of :class:`AddressSlots`,
    each a request to the parent (tens of microseconds, once a connection or an
    association, never once a C-STORE). Without an answer (the parent is gone) it
    admits nothing: the process is about to be stopped."""

    def __init__(self, sock: socket.socket, *, per_address: int, max_associations: int) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._lock = threading.Lock()
        self.per_address = per_address  # for the refusal's log line
        self.max_associations = max_associations

    def _ask(self, line: str) -> bytes:
        with self._lock:
            try:
                self._sock.sendall(line.encode("ascii") + b"\n")
                return self._file.readline()
            except OSError:
                return b""

    def _tell(self, line: str) -> None:
        with self._lock:
            try:
                self._sock.sendall(line.encode("ascii") + b"\n")
            except OSError:
                pass

    def hello(self) -> None:
        self._tell("h")

    def acquire(self, address: str) -> bool:
        return self._ask(f"a {address}") == b"1\n"

    def release(self, address: str) -> None:
        self._tell(f"r {address}")

    def association_acquire(self) -> bool:
        return self._ask("A") == b"1\n"

    def association_release(self) -> None:
        self._tell("R")

    def least_loaded(self) -> bool:
        """Whether this process holds no more connections than any of its siblings."""
        return self._ask("l") != b"0\n"

    def snapshot(self) -> dict[str, Any]:
        answer = self._ask("s")
        return cast(dict[str, Any], json.loads(answer)) if answer else {}

    def held(self, address: str | None = None) -> int:
        answer = self._ask(f"c {address or ''}")
        return int(answer) if answer.strip().isdigit() else 0


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
