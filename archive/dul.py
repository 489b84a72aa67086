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
"""

from __future__ import annotations

import logging
import queue
import select
import socket
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


def prepare(assoc: Association) -> None:
    """Give a new acceptor association (threads not started) the guarded, event-driven DUL."""
    dul = assoc.dul
    nodelay(getattr(dul.socket, "socket", None))
    dul.__class__ = GuardedDUL  # adds methods only; the state is pynetdicom's own
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
        try:
            pdu, event = self._decode_pdu(head + body)
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
