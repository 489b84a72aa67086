"""WADO-RS in the transfer syntax and media type the client asked for (PS3.18 8.7.3).

Instances (``application/dicom``):

* no ``transfer-syntax`` parameter, ``*``, or the stored one: the stored file,
  byte for byte;
* another one: the object transcoded (``archive.dicom_transcode``, in a
  render worker for compressed data: ``archive.rendering.transcoding``),
  lossy ones included since the client named them. One the archive cannot
  produce is not acceptable (406).

Frames (Tables 8.7.3-2 to -5):

* ``application/octet-stream`` without ``transfer-syntax``, or with Explicit
  VR Little Endian: uncompressed frames (compressed ones decoded);
* ``application/octet-stream; transfer-syntax=*``: each frame as stored (a
  compressed frame's bitstream too), still an octet-stream part, its
  ``transfer-syntax`` parameter naming the stored syntax (the decoder a viewer
  such as Cornerstone picks);
* a compressed media type (``image/jpeg``, ``image/jls``, ``image/jp2``,
  ``image/jpx``, ``image/dicom-rle``, ``image/jphc``) only when the client
  names it: as stored when the stored syntax has that media type, otherwise
  transcoded to the ``transfer-syntax`` asked or the media type's default;
* a wildcard (``*/*``, ``multipart/related`` without ``type``): as stored,
  with the stored syntax's own media type.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian

from archive.dicom_transcode import (
    Transcoded,
    TranscodeError,
    encapsulated_frames,
    file_transcode,
    native_frames,
    producible,
)
from archive.rendering.transcoding import transcode_isolated
from archive.storage import tiers as storage

from .media import DICOM, MULTIPART, OCTET_STREAM, DicomwebError, MediaRange

logger = logging.getLogger(__name__)

# PS3.18 Table 8.7.3-5: the media type of a compressed frame by transfer syntax (with octet-stream
# for the uncompressed ones), and each media type's default transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
MEDIA_DEFAULT_SYNTAX = {
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}
_WILDCARDS = ("*/*", "*", "", "image/*", "application/*")


def _inner(r: MediaRange) -> str | None:
    """The part media type a range asks for (a multipart's ``type``, or the range's own); None:
    a range that names something else."""
    if r.type in ("*/*", "*", "multipart/*", MULTIPART):
        return r.params.get("type", "*/*").lower()
    return r.type


# --- instances ---------------------------------------------------------------------------------


def instance_wanted(ranges: list[MediaRange]) -> list[str | None] | None:
    """The transfer syntaxes asked for application/dicom, best first; None in the list: the
    stored one. None: no range accepts application/dicom."""
    wanted: list[str | None] = []
    for r in ranges:
        inner = _inner(r)
        if inner is None or inner not in (DICOM, "*/*", "*", "application/*"):
            continue
        ts = r.params.get("transfer-syntax")
        wanted.append(None if ts in (None, "*") else ts)
    return wanted or None


def instance_targets(wanted: list[str | None], stored: str) -> list[str]:
    """``wanted`` for an instance stored in ``stored``: what can be produced, in order."""
    possible = set(producible(stored, lossy=True))
    out: list[str] = []
    for ts in wanted:
        target = stored if ts is None else ts
        if target in possible and target not in out:
            out.append(target)
    return out


def instance_transcode(fh: BinaryIO, targets: list[str], *, stored: str) -> Transcoded:
    """The stored file (open) in the first of ``targets``; the stored bytes when that is the stored
    syntax. Raises :class:`TranscodeError`. Closes ``fh``."""
    with fh:
        if targets and targets[0] == stored:
            fh.seek(0)
            return Transcoded(fh.read(), stored, changed=False)
        if not UID(stored).is_compressed:
            return file_transcode(fh, targets, lossy=True)  # nothing to decode: in this process
        return _isolated(fh, targets)


def _isolated(fh: BinaryIO, targets: list[str]) -> Transcoded:
    """Decoding can crash the process (a damaged stream): in a render worker, from a file."""
    name = getattr(fh, "name", None)
    if isinstance(name, str) and os.path.isfile(name):
        return transcode_isolated(Path(f"/proc/self/fd/{fh.fileno()}"), targets, lossy=True)
    fh.seek(0)
    path = storage.copy_to_incoming(fh)
    try:
        return transcode_isolated(path, targets, lossy=True)
    finally:
        path.unlink(missing_ok=True)


# --- frames ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FramePlan:
    """How frames are answered: the part media type and transfer syntax, and ``mode``:
    "stored" (the stored frames as they are; native ones little endian), "native" (decoded),
    "transcode" (the object transcoded to ``transfer_syntax``, its frames)."""

    media_type: str
    transfer_syntax: str
    mode: str


def frame_plan(ranges: list[MediaRange], stored: str, *, encapsulated: bool) -> FramePlan | None:
    """The first range (best first) the archive can answer for frames stored in ``stored``."""
    stored_media = FRAME_MEDIA_TYPES.get(stored) if encapsulated else OCTET_STREAM
    # Native frames are always sent little endian (PS3.18 8.7.3.3.2).
    stored_label = stored if encapsulated else ExplicitVRLittleEndian
    for r in ranges:
        inner = _inner(r)
        ts = r.params.get("transfer-syntax")
        if inner is None:
            continue
        if inner in _WILDCARDS:
            if stored_media is not None and ts in (None, "*", stored_label):
                return FramePlan(stored_media, stored_label, "stored")
            if ts == ExplicitVRLittleEndian:
                return FramePlan(OCTET_STREAM, ExplicitVRLittleEndian, "native")
            continue
        if inner == OCTET_STREAM:
            if ts == "*" or (ts is not None and ts == stored_label):
                return FramePlan(OCTET_STREAM, stored_label, "stored")
            if ts in (None, ExplicitVRLittleEndian):
                return FramePlan(OCTET_STREAM, ExplicitVRLittleEndian, "stored" if not encapsulated else "native")
            continue
        if inner in MEDIA_DEFAULT_SYNTAX:
            if encapsulated and stored_media == inner and ts in (None, "*", stored):
                return FramePlan(inner, stored, "stored")
            target = MEDIA_DEFAULT_SYNTAX[inner] if ts is None or ts == "*" else ts
            if FRAME_MEDIA_TYPES.get(target) == inner and target in producible(stored, lossy=True):
                return FramePlan(inner, target, "transcode")
    return None


def frames_converted(fh: BinaryIO, plan: FramePlan, *, stored: str) -> list[bytes]:
    """Every frame of the stored file (open; closed here) as ``plan`` says ("native" or
    "transcode"). Raises :class:`TranscodeError`."""
    target = ExplicitVRLittleEndian if plan.mode == "native" else plan.transfer_syntax
    result = instance_transcode(fh, [target], stored=stored)
    import io

    ds = dcmread(io.BytesIO(result.data))
    return native_frames(ds) if plan.mode == "native" else encapsulated_frames(ds)


def conversion_refused(exc: TranscodeError) -> DicomwebError:
    return DicomwebError(406, f"the object cannot be converted as asked: {exc.message}")


def not_producible(stored: Iterable[str]) -> DicomwebError:
    return DicomwebError(
        406,
        "the archive cannot give these instances (stored in "
        f"{', '.join(sorted(set(stored)))}) in the transfer syntax asked; ask with transfer-syntax=*",
    )
