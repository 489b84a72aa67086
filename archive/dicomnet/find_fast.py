"""The C-FIND fast road: pending responses written as whole PDUs, many per socket write.

pynetdicom answers a C-FIND one pending response at a time: the handler yields
a data set, the service class encodes it and builds a response primitive, the
DIMSE provider builds and encodes its command set, the DUL thread is woken to
build, encode and write one P-DATA-TF PDU. At a thousand matches that was
about 0.25 ms a response in the listener (README, Benchmarks).

Here the listener's C-FIND handler (``archive.dicomnet.listener.handle_find``)
takes each match's identifier already encoded from the index rows
(``archive.query.query_encoded``), and :class:`PendingWriter` frames it: the
response's command set is encoded once per request (the same bytes
pynetdicom's ``C_FIND_RSP`` encodes), each response is one P-DATA-TF PDU
(command and identifier PDVs, PS3.8 9.3.5) when it fits the peer's maximum PDU
length and several PDUs otherwise, and the PDUs of many responses are handed
to the DUL thread at once (``fence.PreEncodedPData``, fence row 17), which
writes them in one ``send``. Only the final status takes pynetdicom's path.

What stays as before: the matches, their order and bytes; the access policy
(the same SQL); the limit (``PACS_QUERY_MAX_MATCHES``, then 0xA700); a C-CANCEL,
looked for before each response is framed, so that at most the responses
already handed to the DUL (``_AHEAD`` writes of about ``_BATCH`` bytes) go
out after it; the audit. Used on little-endian transfer syntaxes when
``PACS_DICOM_FAST_PATHS`` is on; otherwise, and for a key of a VR the encoder
does not write, the handler yields data sets to pynetdicom as before.
"""

from __future__ import annotations

import io
import logging
import struct
from collections import deque
from typing import Any

from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode

from .fence import PreEncodedPData

logger = logging.getLogger(__name__)

# Bytes of PDUs handed to the DUL thread in one write: a few dozen responses, well
# under a loopback or LAN socket's send buffer, so that a write seldom blocks.
_BATCH = 32 * 1024
# Writes handed over and not yet sent before the handler waits: the DUL writes
# one while the handler encodes the next; memory does not grow with the matches.
_AHEAD = 2
# How long a wait for the DUL lasts before the association's state is looked at again.
_WAIT = 0.05

_PDU_HEAD = struct.Struct(">BBL").pack  # P-DATA-TF: type 0x04, reserved, length
_PDV_HEAD = struct.Struct(">LBB").pack  # PDV item: length, context ID, message control header

# Message control headers (PS3.8 E.2): bit 0 command, bit 1 last fragment.
_COMMAND_LAST, _DATA, _DATA_LAST = 0x03, 0x00, 0x02
_COMMAND = 0x01


def pending_command(request: Any, status: int = 0xFF00) -> bytes:
    """The command set of every pending response to ``request`` (a C-FIND-RQ
    primitive), encoded as pynetdicom encodes it (implicit VR little endian)."""
    rsp = C_FIND()
    rsp.MessageID = request.MessageID
    rsp.MessageIDBeingRespondedTo = request.MessageID
    rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
    rsp.Status = status
    rsp.Identifier = io.BytesIO(b"\0\0")  # present: the command's Command Data Set Type says so
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    return bytes(encode(message.command_set, True, True) or b"")


def response_pdus(context_id: int, command: bytes, identifier: bytes, max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs of one response: one PDU with both PDVs when it fits
    ``max_pdu`` (the peer's maximum length of a PDU's variable field; 0: no
    limit), otherwise the command and the identifier in fragments of at most
    ``max_pdu`` each."""
    size = 12 + len(command) + len(identifier)
    if not max_pdu or size <= max_pdu:
        return b"".join(
            (
                _PDU_HEAD(0x04, 0, size),
                _PDV_HEAD(len(command) + 2, context_id, _COMMAND_LAST),
                command,
                _PDV_HEAD(len(identifier) + 2, context_id, _DATA_LAST),
                identifier,
            )
        )
    if max_pdu <= 6:
        raise ValueError(f"a maximum PDU length of {max_pdu} leaves no room for data")
    step = max_pdu - 6
    out: list[bytes] = []
    for data, more, last in ((command, _COMMAND, _COMMAND_LAST), (identifier, _DATA, _DATA_LAST)):
        for start in range(0, max(len(data), 1), step):
            fragment = data[start : start + step]
            control = last if start + step >= len(data) else more
            out += (_PDU_HEAD(0x04, 0, len(fragment) + 6), _PDV_HEAD(len(fragment) + 2, context_id, control), fragment)
    return b"".join(out)


class PendingWriter:
    """Frames pending C-FIND responses and hands them to the association's DUL
    thread in writes of about ``_BATCH`` bytes, at most ``_AHEAD`` waiting.

    ``add`` returns False once the association is no longer established or the
    peer aborted it (the caller stops); ``flush`` hands over what is left, before
    the final status.
    """

    def __init__(self, assoc: Any, *, context_id: int, command: bytes) -> None:
        self._assoc = assoc
        self._dul = assoc.dul
        self._context_id = context_id
        self._command = command
        self._max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
        self._buffer: list[bytes] = []
        self._size = 0
        self._queued: deque[PreEncodedPData] = deque()
        # The fixed part of a response that fits one PDU: everything but the
        # PDU's length and the identifier's PDV header.
        self._command_pdv = _PDV_HEAD(len(command) + 2, context_id, _COMMAND_LAST) + command
        self._fixed = 12 + len(command)

    def add(self, identifier: bytes) -> bool:
        size = self._fixed + len(identifier)
        if not self._max_pdu or size <= self._max_pdu:
            self._buffer += (
                _PDU_HEAD(0x04, 0, size),
                self._command_pdv,
                _PDV_HEAD(len(identifier) + 2, self._context_id, _DATA_LAST),
                identifier,
            )
        else:
            self._buffer.append(response_pdus(self._context_id, self._command, identifier, self._max_pdu))
        self._size += size + 6
        if self._size >= _BATCH:
            return self._hand_over()
        return True

    def flush(self) -> bool:
        """Hand over what is framed; True while the association is established."""
        if self._buffer:
            return self._hand_over()
        return self._going_on()

    def _hand_over(self) -> bool:
        while len(self._queued) >= _AHEAD:
            if not self._wait(self._queued[0]):
                return False
            self._queued.popleft()
        primitive = PreEncodedPData(b"".join(self._buffer))
        self._buffer, self._size = [], 0
        self._queued.append(primitive)
        self._dul.send_pdu(primitive)
        return self._going_on()

    def _going_on(self) -> bool:
        # The reactor that would mark the association ended is serving this C-FIND:
        # an A-ABORT is seen on the ACSE's queue, as pynetdicom's service class looks
        # for it between two responses (its _wrap_handler); the state of the DUL
        # drops what comes after it anyway (fence row 17).
        return bool(self._assoc.is_established and not self._assoc.acse.is_aborted())

    def _wait(self, primitive: PreEncodedPData) -> bool:
        while not primitive.sent.wait(_WAIT):
            if not self._going_on() or not self._dul.is_alive():
                return False
        return True
