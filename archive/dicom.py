"""DICOM parsing for the archive, with no ORM: headers, UID checks, completeness.

Everything that reads a DICOM file for indexing goes through :func:`read_part10`,
which refuses what the archive must not store: a file whose elements run past
its end (truncated), one without the identifying UIDs, a UID that is not a UID
(a ``../`` in it would otherwise reach a path), a SOP class that is not a
storage class, a dataset whose SOP class or instance disagrees with its file
meta (or with the C-STORE request that carried it), pixel data too short for
the image's geometry (native) or with fewer fragments than frames
(encapsulated).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import mmap
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Union

from pydicom import dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from kernel.errors import Invalid

Buffer = Union[bytes, bytearray, memoryview, "mmap.mmap"]

logger = logging.getLogger(__name__)

# The transfer syntaxes the listener accepts. Images are stored as received:
# the archive never transcodes on ingest.
ACCEPTED_TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

# PS3.5 9.1: a UID is dot-separated numeric components, no leading zero, at most 64 characters.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
# Float Pixel Data, Double Float Pixel Data, Pixel Data (PS3.3 C.7.6.3), with the
# bits per sample the first two always have.
_PIXEL_TAGS = {
    0x7FE00008: ("Float Pixel Data", 32),
    0x7FE00009: ("Double Float Pixel Data", 64),
    0x7FE00010: ("Pixel Data", 0),
}
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD


class DicomRejected(Invalid):
    """A file or dataset the archive refuses to store; ``message`` says why.

    ``code`` says which DIMSE failure fits: ``"invalid"`` (cannot understand),
    ``"sop_class_mismatch"`` (data set does not match SOP class),
    ``"not_storage"`` (SOP class not supported).
    """

    @property
    def reason(self) -> str:
        """The older name of ``message``, kept for its callers."""
        return self.message

    @property
    def kind(self) -> str:
        """The older name of ``code``, kept for its callers."""
        return self.code


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))


@functools.lru_cache(maxsize=512)
def is_storage_sop_class(uid: str) -> bool:
    """True for every storage SOP class pynetdicom knows (composite and non-patient)."""
    from pynetdicom.service_class import NonPatientObjectStorageServiceClass, StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    return uid_to_service_class(uid) in (StorageServiceClass, NonPatientObjectStorageServiceClass)


# (model field, DICOM keyword, maximum length kept in the index). The file keeps
# the full value; the index keeps what query/retrieve and the pages need.
PATIENT_FIELDS = [
    ("patient_name", "PatientName", 256),
    ("dicom_patient_id", "PatientID", 64),
    ("issuer_of_patient_id", "IssuerOfPatientID", 64),
    ("patient_sex", "PatientSex", 16),
]
STUDY_FIELDS = [
    ("accession_number", "AccessionNumber", 16),
    ("study_id", "StudyID", 16),
    ("study_description", "StudyDescription", 64),
    ("referring_physician_name", "ReferringPhysicianName", 256),
    ("study_time", "StudyTime", 16),
]
SERIES_FIELDS = [
    ("modality", "Modality", 16),
    ("series_description", "SeriesDescription", 64),
    ("body_part_examined", "BodyPartExamined", 16),
]
INSTANCE_INT_FIELDS = [
    ("instance_number", "InstanceNumber"),
    ("rows", "Rows"),
    ("columns", "Columns"),
    ("number_of_frames", "NumberOfFrames"),
]


@dataclass(frozen=True)
class Header:
    """What the index needs of one instance, already checked."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)


def _text(values: dict[str, Any], keyword: str, max_len: int) -> str:
    value = values.get(keyword)
    if value is None:
        return ""
    return str(value).replace("\x00", "").strip()[:max_len]


def _int(values: dict[str, Any], keyword: str) -> int | None:
    value = values.get(keyword)
    if isinstance(value, int):
        return value
    try:
        return int(str(value or "").split("\\")[0].strip())
    except ValueError:
        return None


def parse_da(value: object) -> dt.date | None:
    """A DICOM DA (``YYYYMMDD``; ``YYYY.MM.DD`` from old ACR-NEMA files) as a date, or None."""
    text = str(value or "").strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _uid(values: dict[str, Any], keyword: str, *, where: str = "data set") -> str:
    text = str(values.get(keyword) or "").strip().rstrip("\x00")
    if not text:
        raise DicomRejected(f"{keyword} is missing from the {where}")
    if not is_valid_uid(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise DicomRejected(f"{keyword} {shown!r} is not a valid DICOM UID")
    return text


_BINARY_INTS = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}
_CHARSET_VRS = {"LO", "SH", "LT", "ST", "UT", "UC"}
_CHARSET_TAG = 0x00080005


def _decode(raw: dict[int, RawDataElement]) -> dict[str, Any]:
    """The collected elements' values by keyword: text decoded in the data set's
    character set (PS3.5 6.1), binary integers unpacked.

    Decoding a handful of elements directly is several times faster than
    building a pydicom Dataset for them, and the listener does it per image.
    """
    # Every element collected here was built from the file's bytes (never a deferred None).
    charset = raw.get(_CHARSET_TAG)
    terms = (charset.value or b"").decode("ascii", "replace").strip(" \x00").split("\\") if charset else []
    encodings = convert_encodings([t.strip() for t in terms] or None)
    values: dict[str, Any] = {}
    for tag, el in raw.items():
        vr = el.VR or dictionary_VR(tag)
        data = el.value or b""
        if vr in _BINARY_INTS:
            fmt = ("<" if el.is_little_endian else ">") + _BINARY_INTS[vr]
            value: Any = struct.unpack_from(fmt, data)[0] if len(data) >= struct.calcsize(fmt) else None
        elif vr == "PN":
            value = decode_bytes(data, encodings, {0x5E, 0x3D})
        elif vr in _CHARSET_VRS:
            value = decode_bytes(data, encodings, {0x5C})
        else:
            value = data.decode("ascii", "replace")
        if isinstance(value, str):
            value = value.strip(" \x00")
        values[keyword_for_tag(tag)] = value
    return values


# Every top-level element the index reads (the walk keeps these, undecoded).
_WANTED_KEYWORDS = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientBirthDate",
    "StudyDate",
    "SeriesNumber",
    *(kw for _, kw, _ in PATIENT_FIELDS + STUDY_FIELDS + SERIES_FIELDS),
    *(kw for _, kw in INSTANCE_INT_FIELDS),
    # The pixel data's geometry (check_pixel_data).
    "SamplesPerPixel",
    "BitsAllocated",
    "PhotometricInterpretation",
]
_WANTED = frozenset(int(Tag(kw)) for kw in _WANTED_KEYWORDS)
_META_WANTED = frozenset(
    int(Tag(kw)) for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
)


def read_part10(
    buf: Buffer,
    *,
    expected_sop_class_uid: str | None = None,
    expected_sop_instance_uid: str | None = None,
) -> Header:
    """Check a DICOM Part 10 file and read the header fields the index needs.

    One walk over the file's elements proves it complete and keeps the few
    elements the index needs; only those are decoded (by pydicom, which
    knows the character sets). Nothing else of the file is parsed.

    Parameters
    ----------
    buf : bytes-like
        The whole file (an ``mmap`` for files on disk), walked without copying.
    expected_sop_class_uid, expected_sop_instance_uid : str, optional
        The Affected SOP Class/Instance UID of the C-STORE request that carried
        the data set, which the data set must agree with.

    Raises
    ------
    DicomRejected
        With the reason, for anything the archive must not store.
    """
    if len(buf) == 0:
        raise DicomRejected("the file is empty")
    meta_raw: dict[int, RawDataElement] = {}
    body_offset = _body_offset(buf, meta_raw)
    meta = _decode(meta_raw)
    ts = _uid(meta, "TransferSyntaxUID", where="file meta information")
    collected: dict[int, RawDataElement] = {}
    pixels: dict[int, PixelElement] = {}
    check_complete(buf, body_offset, ts, collect=collected, pixels=pixels)
    if not collected and _is_empty_body(buf, body_offset, ts):
        raise DicomRejected("the data set is empty")
    try:
        ds = _decode(collected)
        sop_class = _uid(ds, "SOPClassUID")
        sop_instance = _uid(ds, "SOPInstanceUID")
        study_uid = _uid(ds, "StudyInstanceUID")
        series_uid = _uid(ds, "SeriesInstanceUID")
    except DicomRejected:
        raise
    except Exception as exc:  # a value that does not decode
        raise DicomRejected(f"unreadable identifying attribute: {type(exc).__name__}: {exc}") from None

    meta_class = str(meta.get("MediaStorageSOPClassUID") or "")
    meta_instance = str(meta.get("MediaStorageSOPInstanceUID") or "")
    # The C-STORE request's UIDs first: over DIMSE the file meta is written from them.
    # A data set that is not the instance the request announced does not match it
    # (0xA900, as DCMTK's storescp answers for either UID).
    if expected_sop_class_uid is not None and expected_sop_class_uid != sop_class:
        raise DicomRejected(
            f"SOP Class mismatch: the data set is {_uid_name(sop_class)}, the request "
            f"{_uid_name(expected_sop_class_uid)} ({sop_class}, {expected_sop_class_uid})",
            code="sop_class_mismatch",
        )
    if expected_sop_instance_uid is not None and expected_sop_instance_uid != sop_instance:
        raise DicomRejected(
            f"SOP Instance mismatch: the data set's SOPInstanceUID {sop_instance} differs from "
            f"the request's {expected_sop_instance_uid}",
            code="sop_class_mismatch",
        )
    if meta_class and meta_class != sop_class:
        raise DicomRejected(
            f"SOPClassUID {sop_class} differs from the file meta's MediaStorageSOPClassUID {meta_class}",
            code="sop_class_mismatch",
        )
    if meta_instance and meta_instance != sop_instance:
        raise DicomRejected(
            f"SOPInstanceUID {sop_instance} differs from the file meta's MediaStorageSOPInstanceUID {meta_instance}",
            code="sop_class_mismatch",
        )
    if not is_storage_sop_class(sop_class):
        name = UID(sop_class).name
        raise DicomRejected(f"SOP class {sop_class} ({name}) is not a storage SOP class", code="not_storage")
    check_pixel_data(ds, pixels, ts)

    try:
        patient: dict[str, Any] = {name: _text(ds, kw, n) for name, kw, n in PATIENT_FIELDS}
        patient["patient_birth_date"] = parse_da(ds.get("PatientBirthDate"))
        study: dict[str, Any] = {name: _text(ds, kw, n) for name, kw, n in STUDY_FIELDS}
        study["study_date"] = parse_da(ds.get("StudyDate"))
        series: dict[str, Any] = {name: _text(ds, kw, n) for name, kw, n in SERIES_FIELDS}
        series["series_number"] = _int(ds, "SeriesNumber")
        instance = {name: _int(ds, kw) for name, kw in INSTANCE_INT_FIELDS}
    except Exception as exc:
        raise DicomRejected(f"unreadable attribute: {type(exc).__name__}: {exc}") from None
    return Header(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        transfer_syntax_uid=ts,
        patient=patient,
        study=study,
        series=series,
        instance=instance,
    )


def _uid_name(uid: str) -> str:
    """A UID's name when pydicom knows it (``CT Image Storage``), else the UID."""
    name = UID(uid).name
    return name if name and name != uid else uid


def check_store_context(*, abstract_syntax: str, affected_sop_class_uid: str) -> None:
    """Refuse a C-STORE whose Affected SOP Class is not its presentation context's.

    PS3.7 9.3.1.1 / PS3.8 7.1.1.13: a request is sent on a presentation context
    negotiated for its SOP class; pynetdicom picks the service from the
    command alone, so a CT data set sent on the MR context would otherwise be
    stored. The data set's own SOP Class UID is checked against the request
    by :func:`read_part10`.

    Raises
    ------
    DicomRejected
        ``sop_class_mismatch`` (0xA900, Data Set does not match SOP Class).
    """
    if str(abstract_syntax) != str(affected_sop_class_uid):
        raise DicomRejected(
            # The names first: a DIMSE Error Comment keeps 64 characters.
            f"{_uid_name(str(affected_sop_class_uid))} sent on the {_uid_name(str(abstract_syntax))} "
            f"context ({affected_sop_class_uid} on a presentation context for {abstract_syntax})",
            code="sop_class_mismatch",
        )


@dataclass(frozen=True)
class PixelElement:
    """A top-level pixel data element as the walk found it: the value's length
    (native), or each item's length (encapsulated: the Basic Offset Table first)
    and the offset table's bytes."""

    length: int | None = None
    items: tuple[int, ...] | None = None
    offset_table: bytes = b""


def _frames(values: dict[str, Any]) -> int:
    frames = _int(values, "NumberOfFrames")
    return frames if frames is not None and frames > 0 else 1  # absent (or 0, as some writers put): one


def check_pixel_data(values: dict[str, Any], pixels: dict[int, PixelElement], transfer_syntax: str) -> None:
    """Refuse pixel data that cannot hold the image it describes.

    Native (PS3.5 8.1.1, 8.2): at least Rows x Columns x Samples per Pixel x
    Number of Frames samples of Bits Allocated bits (bit-packed for 1 bit,
    two samples per pixel for YBR_FULL_422, PS3.3 C.7.6.3.1.2); a longer value
    is accepted (padding). Encapsulated (PS3.5 A.4): at least one fragment
    per frame after the Basic Offset Table, and that table, when not empty,
    one offset per frame, the first 0, each at the start of a fragment.
    Float and Double Float Pixel Data have 32 and 64 bits per sample.

    Raises
    ------
    DicomRejected
        ``invalid`` (0xC000, cannot understand), saying what is missing.
    """
    if not pixels:
        return
    encapsulated = UID(transfer_syntax).is_encapsulated
    for tag, element in pixels.items():
        name, fixed_bits = _PIXEL_TAGS[tag]
        rows, columns = _int(values, "Rows"), _int(values, "Columns")
        bits = fixed_bits or _int(values, "BitsAllocated")
        if not rows or not columns or not bits:
            raise DicomRejected(f"{name} without Rows, Columns or Bits Allocated: its geometry is unknown")
        frames = _frames(values)
        if element.items is not None:
            if not encapsulated or tag != 0x7FE00010:
                raise DicomRejected(f"{name} of undefined length in the native transfer syntax {transfer_syntax}")
            _check_fragments(element, frames)
            continue
        if encapsulated and tag == 0x7FE00010:
            raise DicomRejected(f"Pixel Data of defined length in the encapsulated transfer syntax {transfer_syntax}")
        samples = _int(values, "SamplesPerPixel") or 1
        photometric = str(values.get("PhotometricInterpretation") or "").strip()
        count = rows * columns * frames * samples
        if photometric == "YBR_FULL_422" and samples == 3:
            count = count // 3 * 2
        needed = (count + 7) // 8 if bits == 1 else count * ((bits + 7) // 8)
        assert element.length is not None
        if element.length < needed:
            plural = "s" if frames > 1 else ""
            raise DicomRejected(
                f"{name} too short: {element.length} of {needed} bytes "
                f"({rows}x{columns}x{samples}, {bits}-bit, {frames} frame{plural})"
            )


def _check_fragments(element: PixelElement, frames: int) -> None:
    assert element.items is not None
    if not element.items:
        raise DicomRejected("encapsulated Pixel Data without its Basic Offset Table item")
    fragments = element.items[1:]  # the first item is the Basic Offset Table (PS3.5 A.4), empty or not
    if len(fragments) < frames:
        raise DicomRejected(
            f"encapsulated Pixel Data has {len(fragments)} fragment(s) for {frames} frame(s): "
            "each frame needs at least one"
        )
    table = element.offset_table
    if not table:
        return
    if len(table) != 4 * frames:
        raise DicomRejected(
            f"the Basic Offset Table of the Pixel Data has {len(table) // 4} offset(s) for {frames} frame(s)"
        )
    offsets = struct.unpack(f"<{frames}L", table)  # encapsulated data is always little endian
    starts = set()
    at = 0
    for length in fragments:
        starts.add(at)
        at += 8 + length
    previous = -1
    for offset in offsets:
        if offset <= previous or offset not in starts:
            raise DicomRejected(
                f"the Basic Offset Table of the Pixel Data is wrong: offset {offset} is not the start of a "
                "fragment after the previous frame's"
            )
        previous = offset
    if offsets[0] != 0:
        raise DicomRejected("the Basic Offset Table of the Pixel Data is wrong: the first offset is not 0")


def _is_empty_body(buf: Buffer, offset: int, transfer_syntax: str) -> bool:
    return len(buf) == offset or transfer_syntax == DeflatedExplicitVRLittleEndian and len(buf) - offset <= 2


def _body_offset(buf: Buffer, collect: dict[int, RawDataElement] | None = None) -> int:
    """Where the data set starts: after the preamble, the prefix and the file meta group."""
    view = memoryview(buf)
    try:
        if len(view) < 132 or bytes(view[128:132]) != b"DICM":
            raise DicomRejected("not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble")
        pos = 132
        # File meta is always explicit VR little endian (PS3.10 7.1); walk group 0002.
        while pos + 8 <= len(view):
            group, elem = struct.unpack_from("<HH", view, pos)
            if group != 0x0002:
                return pos
            vr = bytes(view[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if pos + 12 > len(view):
                    raise DicomRejected("the file meta information is truncated")
                (length,) = struct.unpack_from("<L", view, pos + 8)
                start = pos + 12
            else:
                (length,) = struct.unpack_from("<H", view, pos + 6)
                start = pos + 8
            end = start + length
            if end > len(view):
                raise DicomRejected("the file meta information is truncated")
            tag = (group << 16) | elem
            if collect is not None and tag in _META_WANTED:
                collect[tag] = RawDataElement(
                    BaseTag(tag), vr.decode("ascii", "replace"), length, bytes(view[start:end]), start, False, True
                )
            pos = end
        return pos
    finally:
        view.release()


def check_complete(
    buf: Buffer,
    offset: int,
    transfer_syntax: str,
    *,
    collect: dict[int, RawDataElement] | None = None,
    pixels: dict[int, PixelElement] | None = None,
) -> None:
    """Walk every element of the data set and fail unless the last one ends at the end of the file.

    pydicom reads lazily and forgives a file cut short inside its pixel data;
    the archive must not acknowledge such a file, so the structure is walked
    here without reading any value. Top-level elements the index needs are
    kept in ``collect``, undecoded; the top-level pixel data's lengths in
    ``pixels`` (never its value).
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        with memoryview(buf) as view:
            try:
                body = inflater.decompress(view[offset:]) + inflater.flush()
            except zlib.error as exc:
                raise DicomRejected(f"the deflated data set is corrupt: {exc}") from None
        if not inflater.eof:
            raise DicomRejected("the deflated data set is truncated")
        _walk(body, 0, len(body), explicit=True, little=True, top=True, collect=collect, pixels=pixels)
        return
    explicit = transfer_syntax != ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    _walk(buf, offset, len(buf), explicit=explicit, little=little, top=True, collect=collect, pixels=pixels)


def _walk(
    buf: Buffer,
    pos: int,
    end: int,
    *,
    explicit: bool,
    little: bool,
    top: bool = False,
    collect: dict[int, RawDataElement] | None = None,
    pixels: dict[int, PixelElement] | None = None,
) -> int:
    """Walk elements from ``pos``; return where the walk stopped (``end``, or after an item delimiter).

    Reads tags and lengths only, with ``struct.unpack_from`` on the buffer
    (no copy); values are skipped, except the wanted top-level ones.
    """
    e = "<" if little else ">"
    tag_fmt = struct.Struct(e + "HH")
    u16 = struct.Struct(e + "H")
    u32 = struct.Struct(e + "L")
    while pos < end:
        if pos + 8 > end:
            raise DicomRejected(f"the data set is truncated: {end - pos} stray bytes at offset {pos}")
        group, elem = tag_fmt.unpack_from(buf, pos)
        tag = (group << 16) | elem
        if tag == _ITEM_END and not top:
            return pos + 8
        if group == 0xFFFE:
            # A delimiter or item where an element should be.
            raise DicomRejected(f"unexpected item tag ({group:04X},{elem:04X}) at offset {pos}")
        vr = b""
        if explicit:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise DicomRejected(f"the data set is truncated inside element ({group:04X},{elem:04X})")
                (length,) = u32.unpack_from(buf, pos + 8)
                pos += 12
            else:
                (length,) = u16.unpack_from(buf, pos + 6)
                pos += 8
        else:
            (length,) = u32.unpack_from(buf, pos + 4)
            pos += 8
        if length == _UNDEFINED and top and pixels is not None and tag in _PIXEL_TAGS and vr != b"UN":
            pos, pixels[tag] = _walk_fragments(buf, pos, end, little=little)
        elif length == _UNDEFINED:
            # SQ, encapsulated pixel data, or UN of undefined length (whose
            # content is implicit VR little endian, PS3.5 6.2.2).
            nested_explicit = explicit and vr != b"UN"
            nested_little = little if vr != b"UN" else True
            pos = _walk_items(buf, pos, end, explicit=nested_explicit, little=nested_little, tag=tag)
        else:
            start = pos
            pos += length
            if pos > end:
                raise DicomRejected(
                    f"the data set is truncated: element ({group:04X},{elem:04X}) needs "
                    f"{pos - end} more bytes than the file holds"
                )
            if pixels is not None and top and tag in _PIXEL_TAGS:
                pixels[tag] = PixelElement(length=length)
            if collect is not None and top and tag in _WANTED:
                collect[tag] = RawDataElement(
                    BaseTag(tag),
                    vr.decode("ascii", "replace") if vr else None,
                    length,
                    bytes(buf[start:pos]),
                    start,
                    not explicit,
                    little,
                )
    if not top:
        raise DicomRejected("the data set is truncated inside a sequence item")
    return pos


def _walk_fragments(buf: Buffer, pos: int, end: int, *, little: bool) -> tuple[int, PixelElement]:
    """Walk the items of encapsulated pixel data (PS3.5 A.4): each of defined length,
    then the sequence delimiter. Keeps their lengths and the first item (the offset table)."""
    u32 = struct.Struct(("<" if little else ">") + "L")
    tag_fmt = struct.Struct(("<" if little else ">") + "HH")
    lengths: list[int] = []
    table = b""
    while True:
        if pos + 8 > end:
            raise DicomRejected("the data set is truncated inside the encapsulated Pixel Data")
        group, elem = tag_fmt.unpack_from(buf, pos)
        item_tag = (group << 16) | elem
        (length,) = u32.unpack_from(buf, pos + 4)
        pos += 8
        if item_tag == _SEQ_END:
            return pos, PixelElement(items=tuple(lengths), offset_table=table)
        if item_tag != _ITEM:
            raise DicomRejected(f"unexpected tag ({group:04X},{elem:04X}) inside the Pixel Data at offset {pos - 8}")
        if length == _UNDEFINED:
            raise DicomRejected(f"a Pixel Data fragment of undefined length at offset {pos - 8}")
        if pos + length > end:
            raise DicomRejected("the data set is truncated inside the encapsulated Pixel Data")
        if not lengths:
            table = bytes(buf[pos : pos + length])
        lengths.append(length)
        pos += length


def _walk_items(buf: Buffer, pos: int, end: int, *, explicit: bool, little: bool, tag: int) -> int:
    u32 = struct.Struct(("<" if little else ">") + "L")
    tag_fmt = struct.Struct(("<" if little else ">") + "HH")
    while True:
        if pos + 8 > end:
            raise DicomRejected(f"the data set is truncated inside the sequence ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        group, elem = tag_fmt.unpack_from(buf, pos)
        item_tag = (group << 16) | elem
        (length,) = u32.unpack_from(buf, pos + 4)
        pos += 8
        if item_tag == _SEQ_END:
            return pos
        if item_tag != _ITEM:
            raise DicomRejected(f"unexpected tag ({group:04X},{elem:04X}) inside a sequence at offset {pos - 8}")
        if length == _UNDEFINED:
            pos = _walk(buf, pos, end, explicit=explicit, little=little)
        else:
            pos += length
            if pos > end:
                raise DicomRejected(
                    f"the data set is truncated inside the sequence ({tag >> 16:04X},{tag & 0xFFFF:04X})"
                )


_RAW_NUMBERS = {"US": "<H", "UL": "<L", "SS": "<h", "SL": "<l"}


def raw_element(tag: int, vr: str, value: Any, *, implicit: bool, encoding: str = "utf-8") -> RawDataElement:
    """An element already encoded in little endian, text in UTF-8 (ISO_IR 192) or
    in ``encoding`` (a Python codec: the data set's SpecificCharacterSet's).

    For answers written a thousand times a second (C-FIND): pydicom writes a
    raw element's bytes as they are when the data set's original encoding
    is the one being written, instead of validating and encoding each value.
    """
    if value is None:
        data = b""
    else:
        values = value if isinstance(value, list) else [value]
        fmt = _RAW_NUMBERS.get(vr)
        if fmt is not None:
            data = b"".join(struct.pack(fmt, int(v)) for v in values)
        else:
            data = "\\".join(str(v) for v in values).encode(encoding)
            if len(data) % 2:
                data += b"\0" if vr == "UI" else b" "
    return RawDataElement(BaseTag(tag), vr, len(data), data, 0, implicit, True)


def read_dataset(source: Path | BinaryIO) -> Any:
    """The full header of a stored file (a path or an open file), without pixel
    data and with large values left unread, for display."""
    return dcmread(source, stop_before_pixels=True, defer_size="16 KB")
