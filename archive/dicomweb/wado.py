"""WADO-RS (PS3.18 10.4): instances, metadata, bulk data and frames, and reading stored files for them.

Everything that can be large streams: instances go out as multipart/related
bodies written in blocks of :data:`STREAM_BLOCK` bytes filled from the stored
files (:func:`instances_retrieve_response`; a transcoded part goes through
:mod:`archive.dicomweb.multipart` part by part); metadata
reads headers only (``stop_before_pixels`` and deferred values): large
binary values become BulkDataURIs served by :func:`bulkdata_response`.

Choices the standard leaves open (the conformance statement, in short):

* WADO-RS returns each instance in the transfer syntax it was stored in,
  byte for byte, when no ``transfer-syntax`` is asked, or ``*``, or the
  stored one; another one asked is made by transcoding (lossy ones too, since
  the client named them), and one the archive cannot make is a 406
  (:mod:`archive.dicomweb.transcoding`).
* An instance whose every copy is unreadable makes a single-instance request
  answer 503; in a study or series retrieve it is skipped (logged as an
  error) unless no instance at all can be read, which is a 503.
* Frames: in the media type asked (PS3.18 8.7.3): ``application/octet-stream``
  stays octet-stream, uncompressed (decoded) without ``transfer-syntax`` or
  with Explicit VR Little Endian, as stored with ``transfer-syntax=*``; a
  compressed media type (``image/jpeg``, ``image/jls``, ``image/jp2``, ...)
  only when named. A frame number outside the instance is a 400.
* Metadata carries the stored transfer syntax (0002,0010 and 0008,3002) and
  Instance Availability (0008,0056): ONLINE, or NEARLINE when the only
  copies are in the long-term tier.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from django.db.models import QuerySet
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from archive.rendering import pipeline as rendering
from archive.storage import retrieve

from ..models import Instance
from . import transcoding
from .media import DICOM, DICOM_JSON, OCTET_STREAM, DicomwebError, MediaRange, multipart_acceptable
from .multipart import (
    Part,
    Streamed,
    _swap,
    body_of,
    file_chunks,
    multipart_content_type,
    multipart_stream,
    new_boundary,
)
from .scope import InstanceRow, Scope, _open_all, _open_one, instance_load, instance_url, instances_load

logger = logging.getLogger(__name__)

# PS3.18 Table 8.7.3-5: the media type of an encapsulated frame by transfer syntax.
FRAME_MEDIA_TYPES = transcoding.FRAME_MEDIA_TYPES
# Metadata: values of these VRs above the threshold become BulkDataURIs
# (PS3.18 10.4.1.1.2 allows it for these and a few numeric VRs).
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_BULK_ALLOWED_VRS = _BULK_VRS | {"DS", "FL", "FD", "IS", "LT", "SL", "SS", "ST", "SV", "UC", "UL", "US", "UT", "UV"}
BULK_THRESHOLD = 1024
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_SWAP_SIZE = {"OW": 2, "US": 2, "SS": 2, "OL": 4, "OF": 4, "UL": 4, "SL": 4, "FL": 4, "OD": 8, "OV": 8, "FD": 8}
_SWAP_SIZE |= {"SV": 8, "UV": 8}


# --- WADO-RS: instances -------------------------------------------------------------------


def instances_response(scope: Scope, instances: list[Instance], ranges: list[MediaRange]) -> Streamed:
    """The instances as multipart/related application/dicom: each part the stored file, or the
    object transcoded when the client asked for another transfer syntax (:mod:`.transcoding`)."""
    wanted = transcoding.instance_wanted(ranges)
    if wanted is None:
        raise DicomwebError(406, 'instances are served as multipart/related; type="application/dicom"')
    targets = {i.pk: transcoding.instance_targets(wanted, i.transfer_syntax_uid) for i in instances}
    refused = [i.transfer_syntax_uid for i in instances if not targets[i.pk]]
    if refused:
        raise transcoding.not_producible(refused)
    opened = _open_all(instances)
    boundary = new_boundary()

    def part(instance: Instance, fh: BinaryIO) -> Part:
        url = instance_url(scope, instance)
        stored, wanted_ts = instance.transfer_syntax_uid, targets[instance.pk]
        if wanted_ts[0] == stored:
            return Part(f"{DICOM}; transfer-syntax={stored}", functools.partial(file_chunks, fh), url)
        result = transcoding.instance_transcode(fh, wanted_ts, stored=stored)
        return Part(f"{DICOM}; transfer-syntax={result.transfer_syntax}", body_of(result.data), url)

    # The first part is made now: a request whose (first) object cannot be converted is a 406,
    # not an empty body; a later one that fails is left out and logged.
    first_instance, first_fh = next(opened)
    try:
        first = part(first_instance, first_fh)
    except transcoding.TranscodeError as exc:
        for _instance, fh in opened:
            fh.close()
        raise transcoding.conversion_refused(exc) from None

    def parts() -> Iterator[Part]:
        yield first
        for instance, fh in opened:
            try:
                yield part(instance, fh)
            except transcoding.TranscodeError as exc:
                logger.error("DICOMweb: skipping %s: %s", instance.sop_instance_uid, exc.message)

    return Streamed(multipart_content_type(DICOM, boundary), multipart_stream(parts(), boundary))


# A retrieve of whole instances stored as they go out is written in blocks of this many
# bytes: files of a few KB are framed and sent together, not one write each.
STREAM_BLOCK = 1 << 20


def instances_retrieve_response(
    scope: Scope,
    study_uid: str,
    rows: list[InstanceRow],
    ranges: list[MediaRange],
    among: QuerySet[Instance] | None = None,
) -> Streamed:
    """The instances of a study, series or instance retrieve as multipart/related application/dicom.

    When every instance goes out as stored (the usual case: no transfer syntax
    asked, ``*``, or the stored one) the parts are the stored files read in
    large blocks straight from their copies (one query for all the copies,
    :func:`~archive.storage.retrieve.copies_ranked`), framed and written
    :data:`STREAM_BLOCK` bytes at a time. A copy that is not a local file of a
    facility tier (the long-term tier, an object store), or that cannot be
    opened, goes through :func:`~archive.storage.retrieve.instance_open`, as
    every other reader does. When some instance must be transcoded the
    request takes :func:`instances_response`'s way, part by part. ``among``: the query
    that selected ``rows`` (:func:`.scope.instance_rows_select`), for the copies' query.
    """
    wanted = transcoding.instance_wanted(ranges)
    if wanted is None:
        raise DicomwebError(406, 'instances are served as multipart/related; type="application/dicom"')
    targets = {ts: transcoding.instance_targets(wanted, ts) for ts in {r.transfer_syntax_uid for r in rows}}
    refused = [r.transfer_syntax_uid for r in rows if not targets[r.transfer_syntax_uid]]
    if refused:
        raise transcoding.not_producible(refused)
    if any(produced[0] != stored for stored, produced in targets.items()):
        loaded = {i.pk: i for i in instances_load([r.pk for r in rows])}
        return instances_response(scope, [loaded[r.pk] for r in rows if r.pk in loaded], ranges)
    copies = retrieve.copies_ranked({r.pk: r.own_tier for r in rows}, among)
    opened = _rows_open(rows, copies)
    boundary = new_boundary()
    return Streamed(multipart_content_type(DICOM, boundary), _stored_blocks(scope, study_uid, opened, boundary))


def _row_open(row: InstanceRow, copies: list[retrieve.CopyRef], local: retrieve.LocalOpener) -> BinaryIO:
    fh = local.open(copies)
    if fh is not None:
        return fh
    return retrieve.instance_open(instance_load(row.pk))  # NotAvailable when nothing can be read


def _rows_open(
    rows: list[InstanceRow], copies: dict[int, list[retrieve.CopyRef]]
) -> Iterator[tuple[InstanceRow, BinaryIO]]:
    """Each row with its open file, as :func:`.scope._open_all` (the first opened now: a
    request none of whose instances can be read is a 503, not an empty body)."""
    local = retrieve.LocalOpener()

    def rest(todo: list[InstanceRow]) -> Iterator[tuple[InstanceRow, BinaryIO]]:
        for row in todo:
            try:
                fh = _row_open(row, copies[row.pk], local)
            except retrieve.NotAvailable as exc:
                logger.error("DICOMweb: skipping %s: %s", row.sop_instance_uid, exc.reason)
                continue
            yield row, fh

    for i, row in enumerate(rows):
        try:
            fh = _row_open(row, copies[row.pk], local)
        except retrieve.NotAvailable as exc:
            if len(rows) == 1:
                raise DicomwebError(503, f"instance {row.sop_instance_uid} cannot be read now: {exc.reason}") from None
            logger.error("DICOMweb: skipping %s: %s", row.sop_instance_uid, exc.reason)
            continue
        return itertools.chain([(row, fh)], rest(rows[i + 1 :]))
    raise DicomwebError(503, "none of the requested instances can be read now")


def _stored_blocks(
    scope: Scope, study_uid: str, opened: Iterator[tuple[InstanceRow, BinaryIO]], boundary: str
) -> Iterator[bytes]:
    """The multipart body: each file read with ``readinto`` into one buffer, sent when it is full."""
    buf = bytearray(STREAM_BLOCK)
    view = memoryview(buf)
    pos = 0
    dash = f"--{boundary}".encode("ascii")
    first = True
    for row, fh in opened:  # the files are opened one at a time, as their turn comes
        with fh:
            location = scope.instance_url(study_uid, row.series_instance_uid, row.sop_instance_uid)
            head = b"".join(
                [
                    b"" if first else b"\r\n",
                    dash,
                    b"\r\nContent-Type: application/dicom; transfer-syntax=",
                    row.transfer_syntax_uid.encode("ascii"),
                    b"\r\nContent-Location: ",
                    location.encode("ascii", "replace"),
                    b"\r\n\r\n",
                ]
            )
            first = False
            if pos + len(head) > STREAM_BLOCK:
                yield bytes(view[:pos])
                pos = 0
            view[pos : pos + len(head)] = head
            pos += len(head)
            while True:
                if pos == STREAM_BLOCK:
                    yield bytes(view)
                    pos = 0
                n = _readinto(fh, view[pos:])
                if not n:
                    break
                pos += n
    tail = (b"" if first else b"\r\n") + dash + b"--\r\n"
    if pos + len(tail) > STREAM_BLOCK:
        yield bytes(view[:pos])
        pos = 0
    view[pos : pos + len(tail)] = tail
    yield bytes(view[: pos + len(tail)])


def _readinto(fh: BinaryIO, view: memoryview) -> int:
    """``fh.readinto(view)``, or a read copied in for a file object without it."""
    readinto = getattr(fh, "readinto", None)
    if readinto is not None:
        return int(readinto(view) or 0)
    data = fh.read(len(view))
    view[: len(data)] = data
    return len(data)


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
    explicit = ts != ImplicitVRLittleEndian
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
        # A raw element too (a deferred read), which pydicom's overload omits.
        raw = cast("DataElement | RawDataElement | None", ds.get_item(tag))
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


def instance_metadata(stored: StoredFile, *, url: str, availability: str = "ONLINE") -> dict[str, Any]:
    data = dataset_json(stored.ds, bulk_url=f"{url}/bulkdata")
    # The stored transfer syntax, where viewers look for it (Cornerstone's metaDataProvider
    # reads 00020010, then "the recommended way" 00083002), and the availability (PS3.18
    # 10.4.1.2 allows both in the metadata; PS3.4 C.4.23: ONLINE or NEARLINE).
    data["00020010"] = {"vr": "UI", "Value": [stored.transfer_syntax]}  # TransferSyntaxUID
    data["00083002"] = {"vr": "UI", "Value": [stored.transfer_syntax]}  # AvailableTransferSyntaxUID
    data["00080056"] = {"vr": "CS", "Value": [availability]}  # InstanceAvailability
    if stored.pixel is not None:
        data[f"{stored.pixel.tag:08X}"] = {
            "vr": stored.pixel.vr,
            "BulkDataURI": f"{url}/bulkdata/{stored.pixel.tag:08X}",
        }
    return dict(sorted(data.items()))


def instance_availability(instance: Instance) -> str:
    """ONLINE with a copy in a facility tier, NEARLINE with copies in the long-term tier only
    (a read recalls it), from the copies prefetched with the instance (no query)."""
    tiers = [copy.tier for copy in instance.copies.all()]
    if not tiers or any(t.startswith("facility:") for t in tiers):
        return "ONLINE"
    return "NEARLINE"


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
                    item = instance_metadata(
                        stored, url=instance_url(scope, instance), availability=instance_availability(instance)
                    )
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
    """Frames of one instance in the media type asked (:func:`.transcoding.frame_plan`)."""
    stored = stored_read(_open_one(instance))
    try:
        if stored.pixel is None:
            raise DicomwebError(404, f"instance {instance.sop_instance_uid} has no pixel data")
        nframes = _frame_count(stored.ds)
        beyond = [n for n in numbers if n > nframes]
        if beyond:
            raise DicomwebError(400, f"frame {beyond[0]} does not exist: the instance has {nframes} frame(s)")
        encapsulated = stored.pixel.length is None
        plan = transcoding.frame_plan(ranges, stored.transfer_syntax, encapsulated=encapsulated)
        if plan is None:
            media = transcoding.FRAME_MEDIA_TYPES.get(stored.transfer_syntax) if encapsulated else OCTET_STREAM
            raise DicomwebError(
                406,
                f"the frames are stored as {media} in transfer syntax {stored.transfer_syntax} and cannot be "
                'given as asked; accept multipart/related; type="application/octet-stream" '
                "(uncompressed) or with transfer-syntax=* (as stored)",
            )
        converted: list[bytes] | None = None
        if plan.mode != "stored":
            try:
                converted = transcoding.frames_converted(stored.fh, plan, stored=stored.transfer_syntax)
            except transcoding.TranscodeError as exc:
                raise transcoding.conversion_refused(exc) from None
            if len(converted) < max(numbers):
                raise DicomwebError(500, f"the converted object has {len(converted)} frame(s), not {nframes}")
        extract = _encapsulated_frame if encapsulated else _native_frame
    except BaseException:
        stored.close()
        raise
    boundary = new_boundary()

    def parts() -> Iterator[Part]:
        try:
            for n in numbers:
                data = converted[n - 1] if converted is not None else extract(stored, n - 1)
                yield Part(
                    content_type=f"{plan.media_type}; transfer-syntax={plan.transfer_syntax}",
                    location=f"{url}/frames/{n}",
                    body=body_of(data),
                )
        finally:
            stored.close()

    return Streamed(multipart_content_type(plan.media_type, boundary), multipart_stream(parts(), boundary))


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
            raw = cast("DataElement | RawDataElement | None", ds.get_item(tag))  # raw when deferred
            if raw is None:
                raise DicomwebError(404, f"no element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at {tag_path}")
            if index is None:
                break
            elem = ds[tag]
            if elem.VR != "SQ" or index >= len(elem.value):
                raise DicomwebError(404, f"no item {index} in ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            ds = elem.value[index]
        assert raw is not None  # steps is never empty, and a missing element raised
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
