"""DICOMweb services (DICOM PS3.18): WADO-RS, WADO-URI and STOW-RS, without views.

The views in ``archive/dicomweb_views.py`` translate HTTP to these functions
and back. Everything that can be large streams:

* a retrieve is a generator of multipart/related chunks, each file read in
  1 MiB pieces through :func:`archive.retrieve.instance_open` (the nearest
  verified copy), so memory does not grow with a study's size;
* a STOW body is read in chunks from the request stream; each part goes
  straight to a new file in this process's incoming folder, the size limit
  is enforced while reading, and every spooled file is removed on any error;
* metadata reads headers only (``stop_before_pixels`` and deferred values):
  large binary values become BulkDataURIs served by :func:`bulkdata_response`.

Choices the standard leaves open (the conformance statement, in short):

* WADO-RS returns each instance in the transfer syntax it was stored in,
  byte for byte: when no ``transfer-syntax`` is asked, or ``*``, or the
  stored one. A request naming only transfer syntaxes the archive does not
  hold the instances in gets 406 (the archive never transcodes).
* An instance whose every copy is unreadable makes a single-instance request
  answer 503; in a study or series retrieve it is skipped (logged as an
  error) unless no instance at all can be read, which is a 503.
* Frames: native pixel data as ``application/octet-stream`` (little endian),
  encapsulated pixel data as the original compressed bitstream with its
  media type (``image/jpeg``, ``image/jls``, ``image/jp2``, ...).
  A frame number outside the instance is a 400.
* Rendered study/series: multipart/related with the first frame of each
  renderable instance; rendered instance: its first frame.
* STOW: instances whose Study Instance UID differs from the URL's fail with
  0xC409 (the value dcm4chee uses for this case, within the standard's Cxxx
  "cannot understand" range); a conflict with an archived object is stored
  for review and reported with WarningReason 0xB000, as the DIMSE service does.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from django.conf import settings
from django.db.models import QuerySet
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian

from . import rendering, storage
from .dicom import is_valid_uid
from .ingest import CONFLICT, DUPLICATE, IngestError, instance_ingest
from .models import Facility, Instance, Series, Study
from .retrieve import NotAvailable, instance_open, instances_with_copies

if TYPE_CHECKING:
    from .ingest import IngestResult

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"

# PS3.18 Table 8.7.3-5 (and -4): the media type of an encapsulated frame by transfer syntax.
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
# Metadata: values of these VRs above the threshold become BulkDataURIs
# (PS3.18 10.4.1.1.2 allows it for these and a few numeric VRs).
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_BULK_ALLOWED_VRS = _BULK_VRS | {"DS", "FL", "FD", "IS", "LT", "SL", "SS", "ST", "SV", "UC", "UL", "US", "UT", "UV"}
BULK_THRESHOLD = 1024
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_SWAP_SIZE = {"OW": 2, "US": 2, "SS": 2, "OL": 4, "OF": 4, "UL": 4, "SL": 4, "FL": 4, "OD": 8, "OV": 8, "FD": 8}
_SWAP_SIZE |= {"SV": 8, "UV": 8}

# STOW-RS failure and warning reasons (PS3.18 Table I.2-1 and I.2-2).
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_SOP_CLASS_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_STUDY_MISMATCH = 0xC409
FAILURE_PROCESSING = 0x0110
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
WARNING_CONFLICT = 0xB000
_INGEST_FAILURE = {
    "invalid": FAILURE_CANNOT_UNDERSTAND,
    "sop_class_mismatch": FAILURE_SOP_CLASS_MISMATCH,
    "not_storage": FAILURE_SOP_CLASS_NOT_SUPPORTED,
    "out_of_resources": FAILURE_OUT_OF_RESOURCES,
    "processing": FAILURE_PROCESSING,
}


class DicomwebError(Exception):
    """A request the service refuses, with the HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- media types and Accept ---------------------------------------------------------


@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` as (lower-case type, parameters with lower-case names)."""
    pieces = _split_outside_quotes(text, ";")
    media = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"').strip()
    return media, params


def parse_accept(text: str | None) -> list[MediaRange]:
    """The Accept header's media ranges, best first (no header: anything)."""
    if not text or not text.strip():
        return [MediaRange("*/*")]
    ranges = []
    for item in _split_outside_quotes(text, ","):
        if not item.strip():
            continue
        media, params = parse_media_type(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append(MediaRange(media, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", "*", "", media_type):
        return True
    if pattern.endswith("/*") or pattern.endswith("/"):
        return media_type.split("/")[0] == pattern.split("/")[0]
    return False


def multipart_acceptable(ranges: list[MediaRange], media_type: str, transfer_syntax: str | None) -> bool:
    """Whether a multipart/related response of ``media_type`` parts in ``transfer_syntax`` is acceptable.

    A range without a transfer-syntax parameter accepts the stored one: the
    archive sends what it holds (PS3.18 leaves the default to the origin
    server for objects it does not transcode). An explicit one must be ``*``
    or the stored transfer syntax. ``application/octet-stream`` with
    ``transfer-syntax=*`` accepts compressed frames too (what OHIF asks).
    """
    for r in ranges:
        if r.type in ("*/*", "*", "multipart/*", MULTIPART):
            inner = r.params.get("type", "*/*").lower()
        elif r.type == media_type:
            inner = r.type  # a single-part type: the multipart of it is the closest we serve
        else:
            continue
        ts = r.params.get("transfer-syntax")
        if inner == OCTET_STREAM and media_type != OCTET_STREAM:
            if ts == "*" or (ts is not None and ts == transfer_syntax):
                return True
            continue
        if not _type_matches(inner, media_type):
            continue
        if ts is None or ts == "*" or transfer_syntax is None or ts == transfer_syntax:
            return True
        if media_type == OCTET_STREAM and ts == ExplicitVRLittleEndian:
            return True  # native frames are sent little endian whatever the file's encoding
    return False


def json_acceptable(ranges: list[MediaRange]) -> bool:
    return any(_type_matches(r.type, DICOM_JSON) or r.type == "application/json" for r in ranges)


def rendered_media_type(ranges: list[MediaRange]) -> str:
    """image/jpeg unless image/png is preferred; 406 when neither is acceptable."""
    for r in ranges:
        for candidate in (rendering.JPEG, rendering.PNG):
            if _type_matches(r.type, candidate):
                return candidate
    raise DicomwebError(406, "rendered resources are served as image/jpeg or image/png only")


# --- the multipart/related writer --------------------------------------------------------


@dataclass
class Part:
    """One body part: its headers and a lazily produced body."""

    content_type: str
    body: Callable[[], Iterable[bytes]]
    location: str = ""


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    value = f'{MULTIPART}; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def multipart_stream(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related message (RFC 2387), part by part, chunk by chunk."""
    dash = f"--{boundary}".encode("ascii")
    first = True
    for part in parts:
        head = [b"" if first else b"\r\n", dash, b"\r\nContent-Type: ", part.content_type.encode("ascii")]
        if part.location:
            head += [b"\r\nContent-Location: ", part.location.encode("ascii", "replace")]
        head.append(b"\r\n\r\n")
        yield b"".join(head)
        first = False
        yield from part.body()
    yield (b"" if first else b"\r\n") + dash + b"--\r\n"


def file_chunks(fh: BinaryIO, *, start: int = 0, length: int | None = None, swap: int = 0) -> Iterator[bytes]:
    """``length`` bytes of ``fh`` from ``start`` (to the end if None), in 1 MiB chunks; closes ``fh``.

    ``swap``: reverse the byte order of each ``swap``-byte word (big endian
    values sent little endian, PS3.18 8.7.3.3.2).
    """
    try:
        fh.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            size = _CHUNK if remaining is None else min(_CHUNK, remaining)
            data = fh.read(size)
            if not data:
                if remaining:
                    raise storage.StorageError(f"the stored file ends {remaining} bytes early")
                break
            if remaining is not None:
                remaining -= len(data)
            yield _swap(data, swap) if swap > 1 else data
    finally:
        fh.close()


def _swap(data: bytes, size: int) -> bytes:
    import numpy as np

    usable = len(data) - len(data) % size
    dtype = {2: "u2", 4: "u4", 8: "u8"}[size]
    swapped = np.frombuffer(data[:usable], dtype=f"<{dtype}").byteswap().tobytes()
    return swapped + data[usable:]


# --- what a request may see --------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """One DICOMweb service root: the whole region, or one facility's studies.

    ``base_url``: the absolute URL of the service root, without a trailing slash.
    """

    facility: Facility | None
    base_url: str

    def studies(self) -> QuerySet[Study]:
        qs = Study.objects.all()
        return qs.filter(facility=self.facility) if self.facility is not None else qs

    def study_url(self, study_uid: str) -> str:
        return f"{self.base_url}/studies/{study_uid}"

    def series_url(self, study_uid: str, series_uid: str) -> str:
        return f"{self.study_url(study_uid)}/series/{series_uid}"

    def instance_url(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return f"{self.series_url(study_uid, series_uid)}/instances/{sop_uid}"


def check_uid(value: str, what: str) -> str:
    if not is_valid_uid(value):
        raise DicomwebError(400, f"{what} {value[:80]!r} is not a valid DICOM UID")
    return value


def study_get(scope: Scope, study_uid: str) -> Study:
    check_uid(study_uid, "StudyInstanceUID")
    study = scope.studies().select_related("patient").filter(study_instance_uid=study_uid).first()
    if study is None:
        raise DicomwebError(404, f"study {study_uid} is not in this archive{_scope_note(scope)}")
    return study


def _scope_note(scope: Scope) -> str:
    return f" (facility {scope.facility.code})" if scope.facility is not None else ""


def instances_select(
    scope: Scope, *, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> tuple[Study, list[Instance]]:
    """The study and the instances a study/series/instance URL names, in series and instance order.

    Raises 400 for a malformed UID and 404 for one that does not exist in
    this scope (or belongs to another study or series than the URL says).
    """
    study = study_get(scope, study_uid)
    qs = Instance.objects.filter(series__study=study)
    if series_uid is not None:
        check_uid(series_uid, "SeriesInstanceUID")
        if not Series.objects.filter(study=study, series_instance_uid=series_uid).exists():
            raise DicomwebError(404, f"series {series_uid} is not in study {study_uid}")
        qs = qs.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        check_uid(sop_uid, "SOPInstanceUID")
        qs = qs.filter(sop_instance_uid=sop_uid)
    instances = list(
        instances_with_copies(qs.select_related("series__study")).order_by(
            "series__series_number", "series__id", "instance_number", "id"
        )
    )
    if not instances:
        if sop_uid is not None:
            raise DicomwebError(404, f"instance {sop_uid} is not in series {series_uid} of study {study_uid}")
        raise DicomwebError(404, "no instance is archived there")
    return study, instances


def instance_url(scope: Scope, instance: Instance) -> str:
    series = instance.series
    return scope.instance_url(series.study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid)


def _open_all(instances: list[Instance]) -> Iterator[tuple[Instance, BinaryIO]]:
    """Each instance with its open file; unreadable ones are skipped and logged.

    The first readable one is opened before this returns, so that a request
    none of whose instances can be read fails with 503 instead of an empty body.
    """

    def generate(rest: list[Instance]) -> Iterator[tuple[Instance, BinaryIO]]:
        for instance in rest:
            try:
                fh = instance_open(instance)
            except NotAvailable as exc:
                logger.error("DICOMweb: skipping %s: %s", instance.sop_instance_uid, exc.reason)
                continue
            yield instance, fh

    for i, instance in enumerate(instances):
        try:
            fh = instance_open(instance)
        except NotAvailable as exc:
            if len(instances) == 1:
                raise DicomwebError(
                    503, f"instance {instance.sop_instance_uid} cannot be read now: {exc.reason}"
                ) from None
            logger.error("DICOMweb: skipping %s: %s", instance.sop_instance_uid, exc.reason)
            continue
        return chain([(instance, fh)], generate(instances[i + 1 :]))
    raise DicomwebError(503, "none of the requested instances can be read now")


def _open_one(instance: Instance) -> BinaryIO:
    try:
        return instance_open(instance)
    except NotAvailable as exc:
        raise DicomwebError(503, f"instance {instance.sop_instance_uid} cannot be read now: {exc.reason}") from None


# --- WADO-RS: instances -------------------------------------------------------------------


@dataclass
class Streamed:
    """A response body to stream, with its content type."""

    content_type: str
    chunks: Iterable[bytes]
    headers: dict[str, str] = field(default_factory=dict)


def instances_response(scope: Scope, instances: list[Instance], ranges: list[MediaRange]) -> Streamed:
    """The instances as multipart/related application/dicom, each part the stored file."""
    refused = sorted(
        {i.transfer_syntax_uid for i in instances if not multipart_acceptable(ranges, DICOM, i.transfer_syntax_uid)}
    )
    if refused:
        raise DicomwebError(
            406,
            "the archive holds these instances in transfer syntax "
            f"{', '.join(refused)} only and does not transcode; ask with transfer-syntax=*",
        )
    opened = _open_all(instances)
    boundary = new_boundary()

    def parts() -> Iterator[Part]:
        for instance, fh in opened:
            yield Part(
                content_type=f"{DICOM}; transfer-syntax={instance.transfer_syntax_uid}",
                location=instance_url(scope, instance),
                body=lambda fh=fh: file_chunks(fh),  # type: ignore[misc]
            )

    return Streamed(multipart_content_type(DICOM, boundary), multipart_stream(parts(), boundary))


# --- reading stored files -------------------------------------------------------------------


@dataclass
class PixelElement:
    """Where the pixel data element of a stored file is."""

    tag: int
    vr: str
    value_offset: int  # file offset of the value (encapsulated: of the Basic Offset Table item)
    length: int | None  # None: undefined (encapsulated)


@dataclass
class StoredFile:
    """A stored file, open, with its header read and its pixel data located (not read)."""

    fh: BinaryIO
    ds: Dataset
    transfer_syntax: str
    pixel: PixelElement | None
    inflated: Dataset | None = None  # deflated files: the whole data set, read into memory

    def close(self) -> None:
        self.fh.close()


def stored_read(fh: BinaryIO, *, defer_size: int | None = BULK_THRESHOLD) -> StoredFile:
    """Read a stored file's header; pixel data and values over ``defer_size`` stay on disk."""
    try:
        ds = dcmread(fh, stop_before_pixels=True, defer_size=defer_size)
    except Exception as exc:
        fh.close()
        raise DicomwebError(500, f"the stored file cannot be read: {exc}") from None
    ts = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    if ts == DeflatedExplicitVRLittleEndian:
        # Offsets inside a deflated data set are not file offsets: read it whole (deflate is rare).
        fh.seek(0)
        full = dcmread(fh)
        pixel_tag = next((t for t in _PIXEL_TAGS if t in full), None)
        pixel = None
        if pixel_tag is not None:
            el = full[pixel_tag]
            pixel = PixelElement(pixel_tag, el.VR, -1, None if el.is_undefined_length else len(el.value))
        return StoredFile(fh, ds, ts, pixel, inflated=full)
    return StoredFile(fh, ds, ts, _pixel_element(fh, ds, ts))


def _pixel_element(fh: BinaryIO, ds: Dataset, ts: str) -> PixelElement | None:
    """The pixel data element header at the position where ``stop_before_pixels`` stopped."""
    start = fh.tell()
    header = fh.read(12)
    if len(header) < 8:
        return None
    little = ts != ExplicitVRBigEndian
    explicit = ts != "1.2.840.10008.1.2"
    group, elem = struct.unpack("<HH" if little else ">HH", header[:4])
    tag = (group << 16) | elem
    if tag not in _PIXEL_TAGS:
        return None
    if explicit:
        vr = header[4:6].decode("ascii", "replace")
        (length,) = struct.unpack("<L" if little else ">L", header[8:12])
        value_offset = start + 12
    else:
        (length,) = struct.unpack("<L", header[4:8])
        value_offset = start + 8
        bits = int(ds.get("BitsAllocated", 16) or 16)
        vr = {0x7FE00008: "OF", 0x7FE00009: "OD"}.get(tag, "OW" if bits > 8 else "OB")
    return PixelElement(tag, vr, value_offset, None if length == 0xFFFFFFFF else length)


# --- WADO-RS: metadata ----------------------------------------------------------------------------


def _element_vr(raw: RawDataElement | DataElement, tag: int) -> str:
    vr = raw.VR
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    if " or " in vr:
        vr = "OW" if "OW" in vr else vr.split(" or ")[0]
    return vr


def dataset_json(ds: Dataset, *, bulk_url: str, path: str = "") -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F.2) of ``ds``; large binary values become BulkDataURIs.

    Deferred values (over the read's ``defer_size``, still on disk) are never read.
    """
    out: dict[str, Any] = {}
    for tag in ds.keys():
        tag_int = int(tag)
        if tag_int == 0x00080005:
            continue  # DICOM JSON is always UTF-8 (PS3.18 F.2.1)
        key = f"{tag_int:08X}"
        raw = ds.get_item(tag)
        if raw is None:
            continue
        vr = _element_vr(raw, tag_int)
        uri = f"{bulk_url}/{path}{key}"
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length not in (0, None):
            if vr in _BULK_ALLOWED_VRS:
                out[key] = {"vr": vr, "BulkDataURI": uri}
                continue
        elem = ds[tag]
        if elem.VR == "SQ":
            items = [
                dataset_json(item, bulk_url=bulk_url, path=f"{path}{key}/{i}/") for i, item in enumerate(elem.value)
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if vr in _BULK_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
            out[key] = {"vr": vr, "BulkDataURI": uri}
            continue
        try:
            out[key] = elem.to_json_dict(None, 2**62)
        except Exception as exc:  # a value pydicom cannot convert: sent as bulk data rather than dropped
            logger.warning("metadata: element %s not convertible (%s); sent as BulkDataURI", key, exc)
            out[key] = {"vr": vr if vr in _BULK_ALLOWED_VRS else "UN", "BulkDataURI": uri}
    return out


def instance_metadata(stored: StoredFile, *, url: str) -> dict[str, Any]:
    data = dataset_json(stored.ds, bulk_url=f"{url}/bulkdata")
    data["00083002"] = {"vr": "UI", "Value": [stored.transfer_syntax]}  # AvailableTransferSyntaxUID
    if stored.pixel is not None:
        data[f"{stored.pixel.tag:08X}"] = {
            "vr": stored.pixel.vr,
            "BulkDataURI": f"{url}/bulkdata/{stored.pixel.tag:08X}",
        }
    return dict(sorted(data.items()))


def metadata_response(scope: Scope, instances: list[Instance]) -> Streamed:
    """A JSON array with one data set per instance, produced one instance at a time."""
    opened = _open_all(instances)

    def generate() -> Iterator[bytes]:
        yield b"["
        first = True
        for instance, fh in opened:
            try:
                stored = stored_read(fh)
                try:
                    item = instance_metadata(stored, url=instance_url(scope, instance))
                finally:
                    stored.close()
            except DicomwebError as exc:
                logger.error("DICOMweb metadata: skipping %s: %s", instance.sop_instance_uid, exc.message)
                continue
            yield (b"" if first else b",") + json.dumps(item, ensure_ascii=False).encode("utf-8")
            first = False
        yield b"]"

    return Streamed(DICOM_JSON, generate())


# --- WADO-RS: bulk data and frames -----------------------------------------------------------------


def parse_frame_list(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        raise DicomwebError(400, f"frame list {text[:80]!r} is not a comma-separated list of numbers") from None
    if not numbers or any(n < 1 for n in numbers):
        raise DicomwebError(400, "frame numbers start at 1")
    return numbers


def _frame_count(ds: Dataset) -> int:
    return rendering.number_of_frames(ds)


def _native_frame(stored: StoredFile, index: int) -> bytes:
    """One native frame, little endian (bit-packed 1-bit frames re-aligned to a byte boundary)."""
    ds, pixel = stored.ds, stored.pixel
    assert pixel is not None
    bits = int(ds.get("BitsAllocated", 8) or 8)
    frame_bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * bits
    first_bit = index * frame_bits
    start, end = first_bit // 8, -(-(first_bit + frame_bits) // 8)
    if stored.inflated is not None:
        value = stored.inflated[pixel.tag].value
        if pixel.length is not None and end > len(value):
            raise DicomwebError(500, f"the stored pixel data is too short for frame {index + 1}")
        data = bytes(value[start:end])
        swap = 0
    else:
        if pixel.length is not None and end > pixel.length:
            raise DicomwebError(500, f"the stored pixel data is too short for frame {index + 1}")
        stored.fh.seek(pixel.value_offset + start)
        data = stored.fh.read(end - start)
        swap = (bits // 8) if stored.transfer_syntax == ExplicitVRBigEndian and bits in (16, 32, 64) else 0
    if swap:
        data = _swap(data, swap)
    if first_bit % 8 or frame_bits % 8:
        import numpy as np

        unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        offset = first_bit - start * 8
        data = np.packbits(unpacked[offset : offset + frame_bits], bitorder="little").tobytes()
    return data


def _encapsulated_frame(stored: StoredFile, index: int) -> bytes:
    ds = stored.ds
    nframes = _frame_count(ds)
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        if stored.inflated is not None:
            return get_frame(stored.inflated.PixelData, index, number_of_frames=nframes, extended_offsets=extended)
        assert stored.pixel is not None
        stored.fh.seek(stored.pixel.value_offset)
        return get_frame(stored.fh, index, number_of_frames=nframes, extended_offsets=extended)
    except Exception as exc:
        raise DicomwebError(500, f"frame {index + 1} cannot be extracted from the stored file: {exc}") from None


def frames_response(instance: Instance, numbers: list[int], ranges: list[MediaRange], *, url: str) -> Streamed:
    """Frames of one instance: native ones as octet-stream, compressed ones as stored."""
    stored = stored_read(_open_one(instance))
    try:
        if stored.pixel is None:
            raise DicomwebError(404, f"instance {instance.sop_instance_uid} has no pixel data")
        nframes = _frame_count(stored.ds)
        beyond = [n for n in numbers if n > nframes]
        if beyond:
            raise DicomwebError(400, f"frame {beyond[0]} does not exist: the instance has {nframes} frame(s)")
        if stored.pixel.length is None:
            media_type = FRAME_MEDIA_TYPES.get(stored.transfer_syntax)
            if media_type is None:
                raise DicomwebError(406, f"frames in transfer syntax {stored.transfer_syntax} cannot be served")
            ts = stored.transfer_syntax
            extract = _encapsulated_frame
        else:
            media_type, ts, extract = OCTET_STREAM, ExplicitVRLittleEndian, _native_frame
        if not multipart_acceptable(ranges, media_type, ts):
            raise DicomwebError(
                406,
                f"the frames are {media_type} in transfer syntax {ts} (the archive does not transcode); "
                'accept multipart/related; type="application/octet-stream"; transfer-syntax=* or that media type',
            )
    except BaseException:
        stored.close()
        raise
    boundary = new_boundary()

    def parts() -> Iterator[Part]:
        try:
            for n in numbers:
                data = extract(stored, n - 1)
                yield Part(
                    content_type=f"{media_type}; transfer-syntax={ts}",
                    location=f"{url}/frames/{n}",
                    body=lambda data=data: [data],  # type: ignore[misc]
                )
        finally:
            stored.close()

    return Streamed(multipart_content_type(media_type, boundary), multipart_stream(parts(), boundary))


def _parse_tag_path(text: str) -> list[tuple[int, int | None]]:
    """``00540016/0/00181072`` as [(tag, item index), ..., (last tag, None)]."""
    segments = [s for s in text.strip("/").split("/") if s]
    if not segments or len(segments) % 2 == 0:
        raise DicomwebError(400, f"bulk data path {text[:80]!r} is not tag[/item/tag...]")
    steps: list[tuple[int, int | None]] = []
    for i in range(0, len(segments), 2):
        tag_text = segments[i]
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag_text):
            raise DicomwebError(400, f"{tag_text[:20]!r} is not a tag (8 hexadecimal digits)")
        index = None
        if i + 1 < len(segments):
            if not segments[i + 1].isdigit():
                raise DicomwebError(400, f"{segments[i + 1][:20]!r} is not a sequence item index")
            index = int(segments[i + 1])
        steps.append((int(tag_text, 16), index))
    return steps


def bulkdata_response(instance: Instance, tag_path: str, ranges: list[MediaRange], *, url: str) -> Streamed:
    """One bulk data value as multipart/related application/octet-stream (little endian).

    The pixel data of an encapsulated image is sent as its frames, each in
    its compressed media type.
    """
    steps = _parse_tag_path(tag_path)
    stored = stored_read(_open_one(instance))
    try:
        if len(steps) == 1 and steps[0][0] in _PIXEL_TAGS:
            if stored.pixel is None or stored.pixel.tag != steps[0][0]:
                raise DicomwebError(404, f"instance {instance.sop_instance_uid} has no such pixel data element")
            if stored.pixel.length is None:
                stored.close()
                numbers = list(range(1, _frame_count(stored.ds) + 1))
                return frames_response(instance, numbers, ranges, url=url)
            return _pixel_bulk(stored, ranges, url=f"{url}/bulkdata/{tag_path}")
        ds = stored.ds
        for tag, index in steps:
            raw = ds.get_item(tag)
            if raw is None:
                raise DicomwebError(404, f"no element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at {tag_path}")
            if index is None:
                break
            elem = ds[tag]
            if elem.VR != "SQ" or index >= len(elem.value):
                raise DicomwebError(404, f"no item {index} in ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            ds = elem.value[index]
        tag = steps[-1][0]
        vr = _element_vr(raw, tag)
        if not multipart_acceptable(ranges, OCTET_STREAM, None):
            raise DicomwebError(406, 'bulk data is served as multipart/related; type="application/octet-stream"')
        swap = _SWAP_SIZE.get(vr, 0) if stored.transfer_syntax == ExplicitVRBigEndian else 0
        if isinstance(raw, RawDataElement) and raw.value is None and stored.inflated is None:
            chunks: Callable[[], Iterable[bytes]] = lambda: file_chunks(  # noqa: E731
                stored.fh, start=raw.value_tell, length=raw.length, swap=swap
            )
        else:
            data = _element_bytes(ds, tag, vr, raw)
            stored.close()
            chunks = lambda: [data]  # noqa: E731
    except BaseException:
        stored.close()
        raise
    boundary = new_boundary()
    part = Part(content_type=OCTET_STREAM, location=f"{url}/bulkdata/{tag_path}", body=chunks)
    return Streamed(multipart_content_type(OCTET_STREAM, boundary), multipart_stream([part], boundary))


def _element_bytes(ds: Dataset, tag: int, vr: str, raw: RawDataElement | DataElement) -> bytes:
    """A value in memory as little-endian bytes."""
    value = ds[tag].value
    if isinstance(value, bytes | bytearray):
        if isinstance(raw, RawDataElement) and not raw.is_little_endian and vr in _SWAP_SIZE:
            return _swap(bytes(value), _SWAP_SIZE[vr])
        return bytes(value)
    # Numbers and text: encode as the little-endian explicit value field would hold them.
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_data_element(buf, ds[tag])
    return buf.getvalue()[8:]


def _pixel_bulk(stored: StoredFile, ranges: list[MediaRange], *, url: str) -> Streamed:
    pixel = stored.pixel
    assert pixel is not None and pixel.length is not None
    if not multipart_acceptable(ranges, OCTET_STREAM, ExplicitVRLittleEndian):
        raise DicomwebError(406, 'native pixel data is served as multipart/related; type="application/octet-stream"')
    if stored.inflated is not None:
        data = bytes(stored.inflated[pixel.tag].value)
        stored.close()
        body: Callable[[], Iterable[bytes]] = lambda: [data]  # noqa: E731
    else:
        swap = _SWAP_SIZE.get(pixel.vr, 0) if stored.transfer_syntax == ExplicitVRBigEndian else 0
        body = lambda: file_chunks(stored.fh, start=pixel.value_offset, length=pixel.length, swap=swap)  # noqa: E731
    boundary = new_boundary()
    part = Part(content_type=f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}", location=url, body=body)
    return Streamed(multipart_content_type(OCTET_STREAM, boundary), multipart_stream([part], boundary))


# --- rendered and thumbnail -------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderParams:
    media_type: str = rendering.JPEG
    quality: int = rendering.DEFAULT_QUALITY
    window: rendering.Window | None = None
    viewport: rendering.Viewport | None = None
    max_size: int | None = None


def render_params(query: Any, ranges: list[MediaRange], *, thumbnail: bool = False) -> RenderParams:
    """PS3.18 8.3.5.1: ``quality``, ``window=center,width[,function]``, ``viewport=vw,vh[,sx,sy,sw,sh]``."""
    media_type = rendered_media_type(ranges)
    quality = rendering.DEFAULT_QUALITY
    if query.get("quality"):
        try:
            quality = int(query["quality"])
        except ValueError:
            raise DicomwebError(400, "quality must be an integer from 1 to 100") from None
        if not 1 <= quality <= 100:
            raise DicomwebError(400, "quality must be an integer from 1 to 100")
    window = None
    if query.get("window"):
        parts = query["window"].split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise DicomwebError(400, "window is center,width[,function]") from None
        function = parts[2].strip().upper().replace("-", "_") if len(parts) > 2 else "LINEAR"
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise DicomwebError(400, "the window function is linear, linear-exact or sigmoid")
        if width < (1 if function == "LINEAR" else 0) or width == 0:
            raise DicomwebError(400, "the window width must be positive (at least 1 for linear)")
        window = rendering.Window(center, width, function)
    viewport = None
    if query.get("viewport"):
        viewport = _viewport(query["viewport"])
    return RenderParams(
        media_type=media_type,
        quality=quality,
        window=window,
        viewport=viewport,
        max_size=rendering.THUMBNAIL_SIZE if thumbnail and viewport is None else None,
    )


def _viewport(text: str) -> rendering.Viewport:
    values = [v.strip() for v in text.split(",")]
    try:
        numbers = [int(v) if v else None for v in values]
    except ValueError:
        raise DicomwebError(400, "viewport is vw,vh[,sx,sy,sw,sh] in whole pixels") from None
    if len(numbers) not in (2, 6) or any(n is not None and n <= 0 for n in numbers[:2]):
        raise DicomwebError(400, "viewport is vw,vh[,sx,sy,sw,sh] with positive vw and vh")
    region = None
    if len(numbers) == 6:
        if any(n is None for n in numbers[2:]):
            raise DicomwebError(400, "the viewport's source region needs sx,sy,sw,sh")
        sx, sy, sw, sh = numbers[2:]  # type: ignore[misc]
        if sw <= 0 or sh <= 0 or sx < 0 or sy < 0:  # type: ignore[operator]
            raise DicomwebError(400, "the viewport's source region must have positive width and height")
        region = (sx, sy, sw, sh)
    return rendering.Viewport(width=numbers[0], height=numbers[1], region=region)  # type: ignore[arg-type]


def render_instance(instance: Instance, frame: int, params: RenderParams) -> bytes:
    """One frame of an instance rendered; 400 for a frame it lacks, 406 for what cannot be rendered."""
    stored = stored_read(_open_one(instance), defer_size=None)
    try:
        ds = stored.inflated if stored.inflated is not None else stored.ds
        source = None if stored.inflated is not None else stored.fh
        if stored.pixel is None:
            raise DicomwebError(406, f"instance {instance.sop_instance_uid} cannot be rendered: it has no pixel data")
        return rendering.render_frame(
            ds=ds,
            source=source,
            frame=frame,
            media_type=params.media_type,
            quality=params.quality,
            window=params.window,
            viewport=params.viewport,
            max_size=params.max_size,
        )
    except rendering.NoImage as exc:
        raise DicomwebError(406, f"instance {instance.sop_instance_uid} cannot be rendered: {exc.reason}") from None
    except ValueError as exc:
        raise DicomwebError(400, str(exc)) from None
    finally:
        stored.close()


def rendered_many_response(scope: Scope, instances: list[Instance], params: RenderParams) -> Streamed:
    """The first frame of each renderable instance, as multipart/related parts (others skipped)."""
    boundary = new_boundary()
    # Render the first one now: a study nothing of which renders is a 406, not an empty body.
    rendered = None
    rest = list(instances)
    while rest and rendered is None:
        candidate = rest.pop(0)
        try:
            rendered = (candidate, render_instance(candidate, 1, params))
        except DicomwebError as exc:
            if exc.status == 400:
                raise
            logger.info("rendered: skipping %s: %s", candidate.sop_instance_uid, exc.message)
    if rendered is None:
        raise DicomwebError(406, "no instance there can be rendered as an image")

    def parts() -> Iterator[Part]:
        yield Part(params.media_type, lambda: [rendered[1]], location=instance_url(scope, rendered[0]) + "/rendered")
        for instance in rest:
            try:
                data = render_instance(instance, 1, params)
            except DicomwebError as exc:
                logger.info("rendered: skipping %s: %s", instance.sop_instance_uid, exc.message)
                continue
            yield Part(
                params.media_type, lambda data=data: [data], location=instance_url(scope, instance) + "/rendered"
            )

    return Streamed(multipart_content_type(params.media_type, boundary), multipart_stream(parts(), boundary))


def thumbnail_of(instances: list[Instance], params: RenderParams, *, frame: int = 1) -> bytes:
    """The first instance that renders (series and instance order), as a thumbnail."""
    for instance in instances:
        try:
            return render_instance(instance, frame, params)
        except DicomwebError as exc:
            if exc.status == 400 or len(instances) == 1:
                raise
            logger.info("thumbnail: skipping %s: %s", instance.sop_instance_uid, exc.message)
    raise DicomwebError(406, "nothing there can be rendered as a thumbnail")


# --- WADO-URI --------------------------------------------------------------------------------------


@dataclass
class WadoUriRequest:
    study_uid: str
    series_uid: str
    sop_uid: str
    content_types: list[MediaRange]
    frame: int
    params: RenderParams
    transfer_syntax: str | None


def wado_uri_parse(query: Any) -> WadoUriRequest:
    """Check a WADO-URI query (PS3.18 chapter 9); 400 with the reason for anything wrong."""
    request_type = query.get("requestType")
    if request_type is None:
        raise DicomwebError(400, "requestType is missing (it must be WADO)")
    if request_type != "WADO":
        raise DicomwebError(400, f"requestType {request_type[:20]!r} is not supported (only WADO)")
    uids = {}
    for name in ("studyUID", "seriesUID", "objectUID"):
        value = query.get(name, "")
        if not value:
            raise DicomwebError(400, f"{name} is missing")
        uids[name] = check_uid(value, name)
    content_types = parse_accept(query.get("contentType") or "image/jpeg")
    if query.get("anonymize"):
        raise DicomwebError(400, "anonymize is not supported")
    frame = 1
    if query.get("frameNumber"):
        try:
            frame = int(query["frameNumber"])
        except ValueError:
            raise DicomwebError(400, "frameNumber must be a whole number") from None
        if frame < 1:
            raise DicomwebError(400, "frameNumber starts at 1")
    rendered: dict[str, str] = {}
    if query.get("imageQuality"):
        rendered["quality"] = query["imageQuality"]
    center, width = query.get("windowCenter"), query.get("windowWidth")
    if bool(center) != bool(width):
        raise DicomwebError(400, "windowCenter and windowWidth go together")
    if center:
        rendered["window"] = f"{center},{width}"
    rows, columns = query.get("rows"), query.get("columns")
    if rows or columns:
        rendered["viewport"] = f"{columns or ''},{rows or ''}"
    image_types = [r for r in content_types if not _type_matches(r.type, DICOM) or r.type.startswith("image")]
    params = RenderParams()
    if image_types or rendered:
        try:
            params = render_params(rendered, image_types or [MediaRange(rendering.JPEG)])
        except DicomwebError:
            if any(_type_matches(r.type, DICOM) for r in content_types):
                params = RenderParams()
            else:
                raise
    return WadoUriRequest(
        study_uid=uids["studyUID"],
        series_uid=uids["seriesUID"],
        sop_uid=uids["objectUID"],
        content_types=content_types,
        frame=frame,
        params=params,
        transfer_syntax=query.get("transferSyntax") or None,
    )


def wado_uri_wants_dicom(req: WadoUriRequest) -> bool:
    """application/dicom first in the list means the file; otherwise a rendered image."""
    for r in req.content_types:
        if r.type == DICOM:
            return True
        if r.type.startswith("image/") or r.type in ("*/*", "image"):
            return False
    raise DicomwebError(406, "contentType must be application/dicom, image/jpeg or image/png")


def wado_uri_file(instance: Instance, transfer_syntax: str | None) -> Streamed:
    if transfer_syntax and transfer_syntax not in ("*", instance.transfer_syntax_uid):
        raise DicomwebError(
            406, f"the object is stored in transfer syntax {instance.transfer_syntax_uid} and is not transcoded"
        )
    fh = _open_one(instance)
    return Streamed(
        DICOM,
        file_chunks(fh),
        headers={
            "Content-Length": str(instance.size),
            "Content-Disposition": f'attachment; filename="{instance.sop_instance_uid}.dcm"',
        },
    )


# --- STOW-RS -----------------------------------------------------------------------------------------


@dataclass
class SpooledPart:
    path: Path
    content_type: str


class _Spool:
    """Parts of a multipart/related body, each in its own incoming file, removed on failure."""

    def __init__(self) -> None:
        self.parts: list[SpooledPart] = []
        self.current: tuple[BinaryIO, Path] | None = None

    def open(self) -> BinaryIO:
        self.current = storage.new_incoming_file()
        return self.current[0]

    def close_part(self, content_type: str) -> None:
        assert self.current is not None
        fh, path = self.current
        fh.close()
        self.parts.append(SpooledPart(path, content_type))
        self.current = None

    def discard(self) -> None:
        if self.current is not None:
            self.current[0].close()
            self.current[1].unlink(missing_ok=True)
            self.current = None
        for part in self.parts:
            part.path.unlink(missing_ok=True)
        self.parts = []


_MAX_PART_HEADERS = 16 * 1024


def multipart_spool(
    read: Callable[[int], bytes], *, boundary: str, default_type: str, max_bytes: int
) -> list[SpooledPart]:
    """Read a multipart/related body from ``read`` in chunks, each part into a new incoming file.

    Nothing but a few chunks is held in memory. More than ``max_bytes`` read
    is a 413; a body that is not multipart, or ends inside a part, is a 400.
    Every file is removed when this raises.
    """
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    spool = _Spool()
    # The first delimiter may start the body, without the CRLF that precedes the others.
    buf = bytearray(b"\r\n")
    total = 0
    eof = False

    def fill() -> bool:
        nonlocal total, eof
        if eof:
            return False
        data = read(_CHUNK)
        if not data:
            eof = True
            return False
        total += len(data)
        if total > max_bytes:
            raise DicomwebError(413, f"the request body is larger than {max_bytes} bytes (PACS_STOW_MAX_BYTES)")
        buf.extend(data)
        return True

    try:
        # Preamble: skip to the first delimiter.
        while True:
            i = buf.find(delimiter)
            if i >= 0:
                del buf[: i + len(delimiter)]
                break
            keep = len(delimiter) - 1
            if len(buf) > keep:
                del buf[: len(buf) - keep]
            if not fill():
                raise DicomwebError(400, "the body is not multipart/related: the boundary never occurs")
        while True:
            # After a delimiter: "--" closes the body; otherwise padding, CRLF and the part's headers.
            while len(buf) < 2 and fill():
                pass
            if buf[:2] == b"--":
                break
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(buf) > _MAX_PART_HEADERS:
                    raise DicomwebError(400, "a part's headers are too long or not terminated")
                if not fill():
                    raise DicomwebError(400, "the body ends inside a part's headers")
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            first_line, _, header_block = head.partition("\r\n")
            if first_line.strip(" \t"):
                raise DicomwebError(400, "malformed multipart delimiter line")
            content_type = default_type
            for line in header_block.split("\r\n"):
                name, sep, value = line.partition(":")
                if sep and name.strip().lower() == "content-type":
                    content_type = value.strip()
            out = spool.open()
            while True:
                i = buf.find(delimiter)
                if i >= 0:
                    out.write(buf[:i])
                    del buf[: i + len(delimiter)]
                    break
                keep = len(delimiter) - 1
                if len(buf) > keep:
                    out.write(buf[: len(buf) - keep])
                    del buf[: len(buf) - keep]
                if not fill():
                    raise DicomwebError(400, "the body ends inside a part (no closing boundary)")
            spool.close_part(content_type)
        if not spool.parts:
            raise DicomwebError(400, "the multipart body has no parts")
        return spool.parts
    except BaseException:
        spool.discard()
        raise


@dataclass
class StowOutcome:
    status: int
    response: dict[str, Any]
    warnings: list[str]
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    study_ids: set[int] = field(default_factory=set)


def stow_facility(scope: Scope) -> Facility:
    """The facility STOW stores into: the scope's, else PACS_DICOMWEB_STOW_FACILITY's."""
    if scope.facility is not None:
        return scope.facility
    code = settings.PACS_DICOMWEB_STOW_FACILITY
    if not code:
        raise DicomwebError(
            400,
            "this regional service root does not store: send to a facility's root, "
            f"{scope.base_url}/<facility code>/studies (PACS_DICOMWEB_STOW_FACILITY is not set)",
        )
    facility = Facility.objects.filter(code=code).first()
    if facility is None:
        logger.error("PACS_DICOMWEB_STOW_FACILITY=%r names no facility", code)
        raise DicomwebError(500, f"PACS_DICOMWEB_STOW_FACILITY names no facility ({code!r})")
    return facility


def stow_content_type(content_type: str) -> tuple[str, str]:
    """(boundary, part type) of a STOW request; 415 for anything but multipart/related of application/dicom."""
    media, params = parse_media_type(content_type or "")
    if media != MULTIPART:
        raise DicomwebError(415, f'STOW-RS takes multipart/related; type="application/dicom", not {media or "nothing"}')
    part_type = params.get("type", DICOM).lower()
    if part_type != DICOM:
        raise DicomwebError(
            415, f"only application/dicom parts are stored (type={part_type}: metadata+bulk data is not supported)"
        )
    boundary = params.get("boundary")
    if not boundary:
        raise DicomwebError(400, "the Content-Type has no boundary parameter")
    return boundary, part_type


def _peek(path: Path) -> tuple[str, str, str]:
    """(SOPClassUID, SOPInstanceUID, StudyInstanceUID) of a spooled part, '' for what cannot be read."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        return tuple(str(ds.get(k, "") or "").strip() for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"))  # type: ignore[return-value]
    except Exception:  # not DICOM at all, or damaged: ingestion says why
        return "", "", ""


def stow(
    read: Callable[[int], bytes],
    *,
    content_type: str,
    content_length: int | None,
    scope: Scope,
    study_uid: str | None,
) -> StowOutcome:
    """Store the instances of a STOW-RS request body through :func:`archive.ingest.instance_ingest`.

    Raises DicomwebError for a request refused whole (415, 413, 400, ...).
    """
    boundary, part_type = stow_content_type(content_type)
    if study_uid is not None:
        check_uid(study_uid, "StudyInstanceUID")
    facility = stow_facility(scope)
    max_bytes = settings.PACS_STOW_MAX_BYTES
    if content_length is not None and content_length > max_bytes:
        raise DicomwebError(413, f"the request body is larger than {max_bytes} bytes (PACS_STOW_MAX_BYTES)")
    parts = multipart_spool(read, boundary=boundary, default_type=part_type, max_bytes=max_bytes)

    report = _StowReport(scope)
    done = 0
    try:
        for n, part in enumerate(parts, start=1):
            done = n
            _stow_part(report, n, part, facility=facility, study_uid=study_uid)
    finally:
        # Ingestion consumed the files it was given; the rest (an exception half-way) go now.
        for part in parts[done:]:
            part.path.unlink(missing_ok=True)
    return report.outcome(study_uid)


class _StowReport:
    """The Store Instances Response Module (PS3.18 Annex I) being built, and the counts for the audit."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.result = StowOutcome(status=200, response={}, warnings=[])
        self.referenced: list[Dataset] = []
        self.failed: list[Dataset] = []
        self.study_urls: set[str] = set()

    def fail(self, n: int, sop_class: str, sop_instance: str, reason: int, message: str) -> None:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        item.FailureReason = reason
        self.failed.append(item)
        self.result.failed += 1
        self.result.failures.append(
            {"part": n, "sop_instance_uid": sop_instance, "reason": f"{reason:04X}", "message": message}
        )
        self.result.warnings.append(f"{reason:04X}: part {n}: {message}")

    def stored(self, n: int, sop_class: str, result: IngestResult) -> None:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class or _sop_class_of(result)
        item.ReferencedSOPInstanceUID = result.sop_instance_uid
        item.RetrieveURL = _retrieve_url(self.scope, result)
        if result.outcome == CONFLICT:
            item.WarningReason = WARNING_CONFLICT
            self.result.conflicts += 1
            self.result.warnings.append(f"B000: part {n}: {result.detail}")
        elif result.outcome == DUPLICATE:
            self.result.duplicates += 1
        else:
            self.result.stored += 1
        self.referenced.append(item)
        if result.study_id is not None:
            self.result.study_ids.add(result.study_id)
        self.study_urls.add(self.scope.study_url(result.study_instance_uid))

    def outcome(self, study_uid: str | None) -> StowOutcome:
        ds = Dataset()
        if study_uid is not None:
            ds.RetrieveURL = self.scope.study_url(study_uid)
        elif len(self.study_urls) == 1:
            ds.RetrieveURL = next(iter(self.study_urls))
        else:
            ds.RetrieveURL = None
        if self.failed:
            ds.FailedSOPSequence = self.failed
        if self.referenced:
            ds.ReferencedSOPSequence = self.referenced
        # PS3.18 10.5.3.1: 200 all stored, 202 some failed or warned, 409 none stored.
        if not self.referenced:
            self.result.status = 409
        elif self.failed or self.result.warnings:
            self.result.status = 202
        self.result.response = ds.to_json_dict()
        return self.result


def _stow_part(report: _StowReport, n: int, part: SpooledPart, *, facility: Facility, study_uid: str | None) -> None:
    """Ingest one spooled part (consuming its file) and record what became of it."""
    sop_class, sop_instance, part_study = _peek(part.path)
    media, _params = parse_media_type(part.content_type)
    if media != DICOM:
        part.path.unlink(missing_ok=True)
        report.fail(n, sop_class, sop_instance, FAILURE_CANNOT_UNDERSTAND, f"the part is {media}, not {DICOM}")
        return
    if study_uid is not None and part_study and part_study != study_uid:
        part.path.unlink(missing_ok=True)
        report.fail(
            n,
            sop_class,
            sop_instance,
            FAILURE_STUDY_MISMATCH,
            f"StudyInstanceUID {part_study} differs from the URL's {study_uid}",
        )
        return
    try:
        result = instance_ingest(path=part.path, facility=facility, owned=True, calling_ae="")
    except IngestError as exc:
        report.fail(n, sop_class, sop_instance, _INGEST_FAILURE.get(exc.kind, FAILURE_PROCESSING), exc.reason)
        return
    except Exception as exc:
        logger.exception("STOW-RS: storing part %d failed", n)
        part.path.unlink(missing_ok=True)
        report.fail(n, sop_class, sop_instance, FAILURE_PROCESSING, f"{type(exc).__name__}: {exc}")
        return
    if study_uid is not None and result.study_instance_uid != study_uid:
        # The header could not be peeked at, yet ingestion stored it: it is stored, so say so, with a warning.
        report.result.warnings.append(f"B000: part {n}: stored in study {result.study_instance_uid}, not the URL's")
    report.stored(n, sop_class, result)


def _sop_class_of(result: IngestResult) -> str:
    if result.instance_id is None:
        return ""
    return Instance.objects.filter(pk=result.instance_id).values_list("sop_class_uid", flat=True).first() or ""


def _retrieve_url(scope: Scope, result: IngestResult) -> str:
    series_uid = (
        Instance.objects.filter(pk=result.instance_id).values_list("series__series_instance_uid", flat=True).first()
        if result.instance_id is not None
        else None
    )
    if series_uid is None:
        return scope.study_url(result.study_instance_uid)
    return scope.instance_url(result.study_instance_uid, series_uid, result.sop_instance_uid)


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def error_body(message: str) -> bytes:
    return dumps({"detail": message})


# --- QIDO-RS -----------------------------------------------------------------------------------------

# PS3.18 Table 6.7.1-2, -2a, -2b: what each level returns when no includefield asks for more.
QIDO_DEFAULTS = {
    "STUDY": [
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ],
    "SERIES": [
        "Modality",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
    ],
    "IMAGE": [
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ],
}
# Query parameters that are not attributes (PS3.18 8.3.4).
_QIDO_CONTROL = {"includefield", "limit", "offset", "fuzzymatching", "accept", "charset", "format"}


@dataclass
class QidoResult:
    items: list[dict[str, Any]]
    truncated: bool
    level: str


def _keyword_of(name: str) -> str:
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise DicomwebError(400, f"tag {name} is not an attribute this archive can query")
        return keyword
    if "." in name:
        raise DicomwebError(400, f"{name[:80]!r}: sequence attribute paths are not supported")
    if tag_for_keyword(name) is None:
        raise DicomwebError(400, f"{name[:80]!r} is not a DICOM attribute keyword or tag")
    return name


def _qido_int(query: Any, name: str) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise DicomwebError(400, f"{name} must be a whole number") from None
    if value < 0:
        raise DicomwebError(400, f"{name} cannot be negative")
    return value


def qido_search(
    scope: Scope,
    query: Any,
    *,
    level: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> QidoResult:
    """A QIDO-RS search (PS3.18 10.6) through :func:`archive.query.query_run`, the engine C-FIND uses.

    ``query`` is the request's query parameters (a QueryDict). Matching keys
    are given by keyword or tag; ``includefield`` (repeatable, comma lists,
    ``all``) adds return keys; ``limit`` and ``offset`` page; at most
    PACS_QUERY_MAX_MATCHES results are returned and ``truncated`` says so.
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from .query import ATTRIBUTES, QueryError, query_json

    # The levels above the searched one come along when the URL does not fix them (PS3.18 10.6.3.3.1).
    if level == "STUDY":
        groups = ["STUDY"]
    elif level == "SERIES":
        groups = ["SERIES"] if study_uid else ["STUDY", "SERIES"]
    else:
        groups = ["IMAGE"] if series_uid else ["SERIES", "IMAGE"] if study_uid else ["STUDY", "SERIES", "IMAGE"]
    returned = [keyword for group in groups for keyword in QIDO_DEFAULTS[group]]
    for value in query.getlist("includefield"):
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name.lower() == "all":
                depth = ["PATIENT", "STUDY", "SERIES", "IMAGE"]
                allowed = depth[: depth.index(level) + 1]
                returned += [kw for kw, attr in ATTRIBUTES.items() if attr.level in allowed]
            else:
                returned.append(_keyword_of(name))
    matching: dict[str, str] = {}
    for name in query.keys():
        if name.lower() in _QIDO_CONTROL:
            continue
        values = [v for v in query.getlist(name) if v != ""]
        if not values:
            continue
        keyword = _keyword_of(name)
        value = "\\".join(values)
        attr = ATTRIBUTES.get(keyword)
        if attr is not None and attr.kind == "uid":
            value = value.replace(",", "\\")  # PS3.18 8.3.4.1: a UID list may be comma-separated
        matching[keyword] = value
    if study_uid is not None:
        matching["StudyInstanceUID"] = check_uid(study_uid, "StudyInstanceUID")
    if series_uid is not None:
        matching["SeriesInstanceUID"] = check_uid(series_uid, "SeriesInstanceUID")
    fuzzy_text = (query.get("fuzzymatching") or "false").lower()
    if fuzzy_text not in ("true", "false"):
        raise DicomwebError(400, "fuzzymatching is true or false")
    limit = _qido_int(query, "limit")
    offset = _qido_int(query, "offset") or 0
    maximum = settings.PACS_QUERY_MAX_MATCHES
    capped = limit is None or limit > maximum
    wanted = maximum if capped else limit

    identifier = Dataset()
    with warnings.catch_warnings():
        # Ranges and wildcards are not valid DA/TM/... values; the query engine checks each key itself.
        warnings.simplefilter("ignore", UserWarning)
        for keyword in dict.fromkeys([*returned, *matching]):
            tag = tag_for_keyword(keyword)
            if tag is None:
                continue
            try:
                identifier.add_new(tag, dictionary_VR(tag), matching.get(keyword))
            except Exception as exc:
                raise DicomwebError(400, f"{keyword}: {exc}") from None
    try:
        found = query_json(
            identifier,
            level=level,
            fuzzy=fuzzy_text == "true",
            limit=wanted + 1 if capped else wanted,
            offset=offset,
            facility=scope.facility,
        )
    except QueryError as exc:
        raise DicomwebError(400, str(exc)) from None
    truncated = capped and len(found) > wanted
    items = []
    for data in found[:wanted]:
        url = _qido_retrieve_url(scope, data, level)
        if url:
            data["00081190"] = {"vr": "UR", "Value": [url]}
        items.append(dict(sorted(data.items())))
    return QidoResult(items=items, truncated=truncated, level=level)


def _qido_retrieve_url(scope: Scope, data: dict[str, Any], level: str) -> str:
    def uid(tag: str) -> str:
        return str((data.get(tag, {}).get("Value") or [""])[0])

    study = uid("0020000D")
    if not study:
        return ""
    if level == "STUDY":
        return scope.study_url(study)
    series = uid("0020000E")
    if level == "SERIES":
        return scope.series_url(study, series)
    return scope.instance_url(study, series, uid("00080018"))
