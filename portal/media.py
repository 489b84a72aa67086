"""A study packaged for the citizen to download (issue 7): the original DICOM
files laid out as DICOM media, or the images rendered as JPEG.

Both packages are ZIP files written with the standard library, stored (not
compressed: DICOM pixel data and JPEG hardly shrink) and ZIP64 for every
member, since a study can exceed 4 GB. Each member is copied in chunks of at
most :data:`CHUNK` bytes, so memory does not grow with the study. The zip is
written under a temporary name next to ``path`` and renamed at the end: a
reader never sees a half-written package at ``path``.

The DICOM package is a PS3.10 file-set as a CD of IHE PDI would hold it::

    README.TXT          for the recipient, in Italian and English
    DICOMDIR            the Media Storage Directory (PS3.10 8.6), written last
    DICOM/S0001/I0001   the instances, byte for byte as stored (PS3.10 8.2 file IDs:
    DICOM/S0001/I0002   upper case, at most 8 characters per component)
    ...

The DICOMDIR's records are made by pydicom's own recorders
(:data:`pydicom.fileset.DIRECTORY_RECORDERS`), except where PS3.3 F.5 allows
less than they copy (SR and key object documents, presentation states:
:mod:`portal.dicomdir`): PATIENT, STUDY and SERIES
from one header per series, an image's record from the index, any other
object's from its header. They are laid out and linked here
(:func:`dicomdir_encode`) rather than through :class:`pydicom.fileset.FileSet`,
whose ``add`` re-reads every instance already added (quadratic in the study's
size) and whose ``write`` would re-encode the instances and name them itself.
The instances themselves are copied from :func:`archive.storage.retrieve.instance_open`
into the zip, and each copy's SHA-256 is checked against
:attr:`archive.models.Instance.sha256`. Memory holds the records and one
chunk, whatever the study's size.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import logging
import os
import queue
import re
import struct
import tempfile
import threading
import unicodedata
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, cast

from pydicom.dataset import Dataset

from archive.conformance import MediaProfile
from archive.models import Instance, Rendition, Series
from archive.rendering import pipeline as rendering
from archive.rendering import previews
from archive.rendering.isolated import RenderBusy, render_with
from archive.series_numbers import MODALITY_NAMES, NumberedSeries, study_series_numbered
from archive.storage import retrieve
from archive.storage import tiers as storage
from kernel.errors import PacsError
from portal.dicomdir import directory_record

if TYPE_CHECKING:
    from archive.models import Study

logger = logging.getLogger(__name__)

CHUNK = 1 << 20  # at most 1 MiB in memory per copy
DICOMDIR = "DICOMDIR"
README = "README.TXT"
FILES_ROOT = "DICOM"
# Full size, the data set's own window, JPEG at the archive's default quality (90).
JPEG_PARAMS = rendering.RenderParams()

Progress = Callable[[int, int], None]


class MediaError(PacsError):
    """The zip cannot be made (an instance unreadable or not as recorded, a DICOMDIR not buildable)."""

    code = "media"


@dataclass(frozen=True)
class PackageInfo:
    path: Path
    size: int
    instance_count: int


# -- the zip file ------------------------------------------------------------


@contextmanager
def _zip_in_place(path: Path) -> Iterator[zipfile.ZipFile]:
    """A ZipFile on a temporary file next to ``path``, renamed to ``path`` when
    the block ends without error, removed otherwise."""
    storage.makedirs_durable(path.parent)  # 0700; mkstemp makes the zip 0600
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w+b") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                yield zf
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _member_info(name: str, when: dt.datetime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16  # rw-r--r-- when unzipped on Unix
    return info


READ_AHEAD = 8  # files opened, and their first READ_AHEAD_BYTES asked of the disk, before their turn
READ_AHEAD_BYTES = 8 << 20


def _opened_ahead(entries: Sequence[tuple[Instance, tuple[str, ...]]]) -> Iterator[tuple[Instance, str, IO[bytes]]]:
    """Each entry with its stored copy open (to be closed by the caller).

    The next :data:`READ_AHEAD` files are opened early with
    ``POSIX_FADV_WILLNEED``, so that the disk reads them while the current
    one is hashed and written; handles not handed out are closed on exit.
    """
    pending: deque[tuple[Instance, str, IO[bytes]]] = deque()
    fh: IO[bytes]
    rest = iter(entries)
    try:
        while True:
            while len(pending) < READ_AHEAD and (entry := next(rest, None)) is not None:
                instance, file_id = entry
                try:
                    fh = retrieve.instance_open(instance)
                except retrieve.NotAvailable as exc:
                    raise MediaError(str(exc)) from exc
                with contextlib.suppress(AttributeError, OSError, io.UnsupportedOperation):
                    os.posix_fadvise(fh.fileno(), 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
                pending.append((instance, "/".join(file_id), fh))
            if not pending:
                return
            yield pending.popleft()
    finally:
        for _instance, _name, fh in pending:
            fh.close()


def _instance_copy(instance: Instance, name: str, fh: IO[bytes], writer: _MemberWriter, meter: _Progress) -> None:
    """Hand ``instance``'s stored bytes (open as ``fh``, closed here) to the zip as member
    ``name``, checking them against its SHA-256."""
    digest = hashlib.sha256()
    with fh:
        writer.put(name)
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            writer.put(chunk)
            meter.add(len(chunk))
    if digest.hexdigest() != instance.sha256:
        logger.error("%s read back with SHA-256 %s, %s recorded", instance, digest.hexdigest(), instance.sha256)
        raise MediaError(f"{instance.sop_instance_uid}: the stored copy does not match its SHA-256")


# Instances up to this size are read whole and hashed by HASHERS threads at once (the
# SHA-256, the zip's CRC-32 and the writes then share both cores, in order); larger
# ones are copied a chunk at a time by _instance_copy. Memory: at most IN_FLIGHT of them.
WHOLE_FILE = 8 << 20
HASHERS = 2
# The zip's writer starts the disk writing this often (_MemberWriter._writeback).
WRITEBACK = 16 << 20
IN_FLIGHT = 4


def _read_hashed(fh: IO[bytes]) -> tuple[bytes, str]:
    with fh:
        data = fh.read()
    return data, hashlib.sha256(data).hexdigest()


def _instances_copy(
    entries: Sequence[tuple[Instance, tuple[str, ...]]], writer: _MemberWriter, meter: _Progress
) -> None:
    """Every instance into the zip, in order, each checked against its SHA-256 before it is written."""
    pending: deque[tuple[Instance, str, IO[bytes], Future[tuple[bytes, str]]]] = deque()

    def write_oldest() -> None:
        instance, name, _fh, future = pending.popleft()
        data, digest = future.result()
        if digest != instance.sha256:
            logger.error("%s read back with SHA-256 %s, %s recorded", instance, digest, instance.sha256)
            raise MediaError(f"{instance.sop_instance_uid}: the stored copy does not match its SHA-256")
        writer.put(name)
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):  # the writer's queue holds chunks, not whole files
            writer.put(view[start : start + CHUNK])
        meter.add(len(data))

    with ThreadPoolExecutor(max_workers=HASHERS, thread_name_prefix="zip-hash") as hashers:
        try:
            for instance, name, fh in _opened_ahead(entries):
                if instance.size > WHOLE_FILE:
                    while pending:
                        write_oldest()
                    _instance_copy(instance, name, fh, writer, meter)
                    continue
                pending.append((instance, name, fh, hashers.submit(_read_hashed, fh)))
                while len(pending) > IN_FLIGHT:
                    write_oldest()
            while pending:
                write_oldest()
        finally:
            for _instance, _name, fh, future in pending:
                if future.cancel():  # never started: its file is closed here
                    fh.close()


def _synced(zf: zipfile.ZipFile) -> None:
    """What is written of the zip so far, on the disk (the final fsync then has little left)."""
    assert zf.fp is not None
    zf.fp.flush()
    os.fdatasync(zf.fp.fileno())


def _member_write_bytes(zf: zipfile.ZipFile, name: str, data: bytes, *, when: dt.datetime) -> None:
    with zf.open(_member_info(name, when), "w", force_zip64=True) as out:
        out.write(data)


def _info(path: Path, count: int) -> PackageInfo:
    return PackageInfo(path=path, size=path.stat().st_size, instance_count=count)


class _MemberWriter:
    """The zip's writing (its CRC-32 and the file writes) in a thread of its own.

    The caller reads and hashes the instances; this thread writes what it is
    given: a ``str`` starts a member of that name, ``bytes`` go into it. The
    two halves then use both cores (hashlib, zlib and file I/O release the
    GIL). The queue holds at most :data:`_QUEUED` chunks, so memory stays
    bounded. A failure on either side stops both; :meth:`finish` is always called.
    """

    _QUEUED = 8

    def __init__(self, zf: zipfile.ZipFile, when: dt.datetime) -> None:
        self.zf = zf
        self.when = when
        self._written_back = 0
        self.items: queue.Queue[str | bytes | memoryview | None] = queue.Queue(maxsize=self._QUEUED)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="zip-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        out: IO[bytes] | None = None
        try:
            while (item := self.items.get()) is not None:
                if isinstance(item, str):
                    if out is not None:
                        out.close()
                    # force_zip64: the size is not known to zipfile beforehand, and a member over
                    # 4 GB written without the ZIP64 local header cannot be fixed up afterwards.
                    out = self.zf.open(_member_info(item, self.when), "w", force_zip64=True)
                else:
                    assert out is not None
                    out.write(item)
                    self._writeback()
            if out is not None:
                out.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by put() and finish()
            self.error = exc
            while self.items.get() is not None:  # let the caller's put() go on until it sees the error
                pass

    def _writeback(self) -> None:
        """Every :data:`WRITEBACK` bytes, ask the kernel to start writing the zip's new pages to
        the disk (``POSIX_FADV_DONTNEED`` on dirty pages starts their writeback without waiting,
        and lets the cache drop them once written). Otherwise nothing reaches the disk before
        the final fsync, which then writes the whole zip while nothing else happens."""
        fh = self.zf.fp
        if fh is None or not hasattr(os, "posix_fadvise"):
            return
        position = fh.tell()
        if position - self._written_back < WRITEBACK:
            return
        fh.flush()
        with contextlib.suppress(OSError, io.UnsupportedOperation):
            os.posix_fadvise(fh.fileno(), self._written_back, position - self._written_back, os.POSIX_FADV_DONTNEED)
        self._written_back = position

    def put(self, item: str | bytes | memoryview) -> None:
        if self.error is not None:
            raise MediaError(f"writing the zip failed: {self.error}") from self.error
        self.items.put(item)

    def finish(self) -> None:
        """End the writing; raise what went wrong in the writer (after the caller's own error, nothing)."""
        self.items.put(None)
        self.thread.join()
        if self.error is not None:
            raise MediaError(f"writing the zip failed: {self.error}") from self.error


class _Progress:
    def __init__(self, total: int, callback: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.callback = callback

    def add(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


# -- what the study holds ----------------------------------------------------


def _study_series(study: Study) -> list[NumberedSeries]:
    """The study's series, numbered and ordered as the viewers show them, with their instances."""
    return study_series_numbered(study_id=study.pk, instances=retrieve.instances_with_copies(Instance.objects.all()))


def _file_id(series_index: int, instance_index: int) -> tuple[str, str, str]:
    # PS3.10 8.2: at most 8 characters of A-Z, 0-9 and _ per component. "S" and
    # "I" plus up to 7 digits: ten million series or instances before it breaks.
    components = (FILES_ROOT, f"S{series_index:04d}", f"I{instance_index:04d}")
    if any(len(c) > 8 for c in components):
        raise MediaError("too many series or instances for PS3.10 file IDs")
    return components


def _person_name(value: str) -> str:
    return " ".join(part for part in value.replace("^", " ").split() if part)


def _date(value: dt.date | None) -> str:
    return value.strftime("%d/%m/%Y") if value else "-"


def _study_summary(study: Study, *, series: int, instances: int) -> list[str]:
    facility = study.facility.name if study.facility_id else "-"
    return [
        f"Paziente / Patient: {_person_name(study.patient_name) or '-'}"
        f" (nato il / born {_date(study.patient_birth_date)})",
        f"Esame / Study: {study.study_description or '-'} ({study.modalities_in_study or '-'})",
        f"Data dell'esame / Date of the study: {_date(study.performed_on())}",
        f"Struttura / Facility: {facility}",
        f"Numero di prenotazione / Booking (accession) number: {study.accession_number or '-'}",
        f"Serie / Series: {series}; immagini / images: {instances}",
    ]


def _readme(lines: list[str]) -> bytes:
    # CRLF and UTF-8 with its byte order mark: the accents read right in any Windows
    # Notepad (older ones guess a legacy code page without it) as on any other system.
    return ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")


# -- the DICOM package -------------------------------------------------------


def _record_header(instance: Instance, *, series: Series, series_number: int, instance_number: int) -> Dataset:
    """The instance's attributes up to its pixel data, for its DICOMDIR records.

    PS3.3 F.5 makes a few attributes Type 1 in the records (Study ID, Study
    Date and Time, Series Number, Instance Number...); an instance that lacks
    one gets a stand-in in its record only. The file itself is never touched.
    """
    from pydicom import dcmread

    with retrieve.instance_open(instance) as fh:
        ds = dcmread(fh, stop_before_pixels=True)
    study = series.study
    stand_ins = {
        "PatientID": study.dicom_patient_id or "UNKNOWN",
        "StudyDate": study.study_date.strftime("%Y%m%d") if study.study_date else "19000101",
        "StudyTime": study.study_time or "000000",
        "StudyID": (study.study_id or study.accession_number or "1")[:16],
        "Modality": series.modality or "OT",
        "SeriesNumber": series_number,
        "InstanceNumber": instance_number,
    }
    for keyword, value in stand_ins.items():
        if keyword not in ds or ds[keyword].VM == 0:
            setattr(ds, keyword, value)
    return ds


@dataclass(frozen=True)
class _ImageLeaf:
    """An IMAGE record made from the index alone (PS3.3 F.5.20: its Instance Number and the
    file it refers to): encoded straight to bytes, since a study has thousands of them."""

    instance_number: int
    file_id: tuple[str, ...]
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    def dataset(self) -> Dataset:
        """The record as pydicom would hold it (the same elements :meth:`encoded` writes)."""
        ds = Dataset()
        ds.InstanceNumber = self.instance_number
        _record_finish_dataset(ds, "IMAGE")
        _references_set(ds, self.file_id, self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax_uid)
        return ds

    def encoded(self) -> bytes | None:
        """The item's value in Explicit VR Little Endian, in tag order; None when a value is not
        ASCII (never from a valid index), for pydicom to encode instead."""
        try:
            return b"".join(
                (
                    _ul(NEXT_RECORD, 0),
                    _us(RECORD_IN_USE, 0xFFFF),
                    _ul(LOWER_LEVEL, 0),
                    _short_text(0x00041430, b"CS", "IMAGE", b" "),
                    _short_text(0x00041500, b"CS", "\\".join(self.file_id), b" "),
                    _short_text(0x00041510, b"UI", self.sop_class_uid, b"\0"),
                    _short_text(0x00041511, b"UI", self.sop_instance_uid, b"\0"),
                    _short_text(0x00041512, b"UI", self.transfer_syntax_uid, b"\0"),
                    _short_text(0x00200013, b"IS", str(self.instance_number), b" "),
                )
            )
        except (UnicodeEncodeError, struct.error):
            return None


def _header(tag: int, vr: bytes, length: int) -> bytes:
    """An element's header in Explicit VR Little Endian, for a VR with a 2-byte length (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, length)


def _ul(tag: int, value: int) -> bytes:
    return _header(tag, b"UL", 4) + struct.pack("<I", value)


def _us(tag: int, value: int) -> bytes:
    return _header(tag, b"US", 2) + struct.pack("<H", value)


def _short_text(tag: int, vr: bytes, text: str, pad: bytes) -> bytes:
    """A text element, padded to an even length (PS3.5 6.2)."""
    value = text.encode("ascii")
    if len(value) % 2:
        value += pad
    return _header(tag, vr, len(value)) + value


def _references_set(
    ds: Dataset, file_id: Sequence[str], sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str
) -> None:
    """A leaf record's reference to its file (PS3.3 F.3-3)."""
    ds.ReferencedFileID = list(file_id)
    ds.ReferencedSOPClassUIDInFile = sop_class_uid
    ds.ReferencedSOPInstanceUIDInFile = sop_instance_uid
    ds.ReferencedTransferSyntaxUIDInFile = transfer_syntax_uid


class _Record:
    """A directory record and the records below it (PS3.3 F.3: a tree of linked records).

    Either a data set (PATIENT, STUDY, SERIES and any record made from a header) or an
    :class:`_ImageLeaf`, whose data set is made only when asked for."""

    def __init__(self, dataset: Dataset | None = None, *, image: _ImageLeaf | None = None) -> None:
        assert (dataset is None) != (image is None)
        self._dataset = dataset
        self.image = image
        self.children: list[_Record] = []

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            assert self.image is not None
            self._dataset = self.image.dataset()
        return self._dataset


def _record(kind: str, header: Dataset) -> _Record:
    try:
        ds = directory_record(kind, header)  # PS3.3 F.5, with Specific Character Set (F.3.2.2)
    except (ValueError, KeyError, AttributeError) as exc:
        raise MediaError(f"{header.get('SOPInstanceUID', '?')}: no {kind} record for the DICOMDIR: {exc}") from exc
    _record_finish_dataset(ds, kind)
    return _Record(ds)


def _leaf_kind_from_index(instance: Instance, series: Series) -> str | None:
    """IMAGE when the index alone says so (the record needs only the Instance
    Number); None when the file must be read to make the record."""
    from pydicom.fileset import _FOUR_LEVEL_SOP_CLASSES

    if series.modality in ("RTINTENT", "RTSEGANN", "RTRAD", "PLAN"):
        return None
    if instance.rows is None:
        # Not an image: an RT plan, an encapsulated PDF or CDA, which pydicom tells by
        # their attributes (RT Plan Label, Encapsulated Document), not by the SOP class.
        return None
    return None if instance.sop_class_uid in _FOUR_LEVEL_SOP_CLASSES else "IMAGE"


def dicomdir_records(
    *, groups: Sequence[tuple[Series, Sequence[tuple[Instance, tuple[str, ...]]]]], numbers: Sequence[int] = ()
) -> list[_Record]:
    """The PATIENT/STUDY/SERIES/leaf record tree of a study's file-set.

    Made with pydicom's own recorders (:data:`pydicom.fileset.DIRECTORY_RECORDERS`)
    from one header per series; an image's record comes from the index (its
    Instance Number, SOP Class and Transfer Syntax), any other object's (a
    structured report, a presentation state, an encapsulated PDF) from its
    own header. Only the small records stay in memory, whatever the study's size.
    ``numbers``: each group's series number (:mod:`archive.series_numbers`), the
    stand-in for a header without one; by default the series' own or its position.
    """
    from pydicom.fileset import _four_level_record_type

    roots: list[_Record] = []
    study_record: _Record | None = None
    for s_index, (series, entries) in enumerate(groups, start=1):
        if len(numbers) >= s_index:
            series_number = numbers[s_index - 1]
        else:
            series_number = series.series_number if series.series_number is not None else s_index
        first = _record_header(entries[0][0], series=series, series_number=series_number, instance_number=1)
        if study_record is None:
            patient = _record("PATIENT", first)
            study_record = _record("STUDY", first)
            patient.children.append(study_record)
            roots.append(patient)
        series_record = _record("SERIES", first)
        study_record.children.append(series_record)
        for i_index, (instance, file_id) in enumerate(entries, start=1):
            number = instance.instance_number if instance.instance_number is not None else i_index
            if _leaf_kind_from_index(instance, series) == "IMAGE":
                leaf = _Record(
                    image=_ImageLeaf(
                        instance_number=number,
                        file_id=tuple(file_id),
                        sop_class_uid=instance.sop_class_uid,
                        sop_instance_uid=instance.sop_instance_uid,
                        transfer_syntax_uid=instance.transfer_syntax_uid,
                    )
                )
            else:
                header = _record_header(instance, series=series, series_number=series_number, instance_number=number)
                leaf = _record(_four_level_record_type(header), header)
                _references_set(
                    leaf.dataset,
                    file_id,
                    instance.sop_class_uid,
                    instance.sop_instance_uid,
                    instance.transfer_syntax_uid,
                )
            series_record.children.append(leaf)
    return roots


def _record_finish_dataset(ds: Dataset, kind: str) -> None:
    ds.OffsetOfTheNextDirectoryRecord = 0
    ds.RecordInUseFlag = 0xFFFF
    ds.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    ds.DirectoryRecordType = kind


def _flatten(records: list[_Record]) -> list[_Record]:
    out: list[_Record] = []
    for record in records:
        out.append(record)
        out.extend(_flatten(record.children))
    return out


def dicomdir_encode(roots: list[_Record]) -> bytes:
    """The DICOMDIR file (PS3.10 8.6, Media Storage Directory) of the record tree ``roots``.

    pydicom encodes the file's meta information and its own elements, with an empty
    Directory Record Sequence; each record is then encoded as an item of it (an image's
    record from the index straight to bytes, any other by pydicom) and appended, with the
    sequence's length set at the end. The records' offsets (PS3.3 F.3.1: each record's
    next sibling and first child, the root's first and last record) are unsigned longs
    encoded as 0 and written in place once every item's position is known: they are the
    first and third elements of every record (F.3-3 puts nothing of group 0004 below
    them in a record), so each lies at the same distance from its item's start. pydicom's
    own encoding of a 600-image DICOMDIR, read back for the positions, took half a second
    of the zip's time; this takes a hundredth of that.
    """
    from pydicom import dcmwrite
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = ""
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = Sequence()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    out = bytearray(buffer.getvalue())
    empty_sequence = struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, 0)
    if not out.endswith(empty_sequence):
        raise MediaError("the DICOMDIR's Directory Record Sequence is not where it was encoded")
    sequence_start = len(out)

    flat = _flatten(roots)
    where: dict[int, int] = {}
    for record in flat:
        body = record.image.encoded() if record.image is not None else None
        if body is None:
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, False
            write_dataset(fp, record.dataset)
            body = fp.getvalue()
        where[id(record)] = len(out)
        out += struct.pack("<HHI", 0xFFFE, 0xE000, len(body))
        out += body
    struct.pack_into("<I", out, sequence_start - 4, len(out) - sequence_start)

    def put(position: int, tag: int, offset: int) -> None:
        # Checked against the element's own header, and its value still the 0 encoded.
        if out[position - 8 : position] != _header(tag, b"UL", 4) or out[position : position + 4] != bytes(4):
            raise MediaError(f"the DICOMDIR's offset {tag:08X} is not where it was encoded")
        struct.pack_into("<I", out, position, offset)

    def link(siblings: list[_Record]) -> None:
        for n, record in enumerate(siblings):
            item = where[id(record)]
            if n + 1 < len(siblings):
                put(item + _NEXT_AT, NEXT_RECORD, where[id(siblings[n + 1])])
            if record.children:
                put(item + _LOWER_AT, LOWER_LEVEL, where[id(record.children[0])])
                link(record.children)

    link(roots)
    for tag, record in ((FIRST_ROOT_RECORD, roots[0]), (LAST_ROOT_RECORD, roots[-1])):
        found = out.find(_header(tag, b"UL", 4), 0, sequence_start)
        put(found + 8 if found >= 0 else 0, tag, where[id(record)])
    return bytes(out)


# PS3.3 F.3.1: the DICOMDIR's offsets (OffsetOfTheNextDirectoryRecord,
# OffsetOfReferencedLowerLevelDirectoryEntity, and the root's first and last record).
NEXT_RECORD = 0x00041400
RECORD_IN_USE = 0x00041410
LOWER_LEVEL = 0x00041420
# Where their values lie in a record's item: after the item's header (8 bytes) and, for the
# lower level's, the next record's offset (12) and the record-in-use flag (10) before it.
_NEXT_AT = 8 + 8
_LOWER_AT = 8 + 12 + 10 + 8
FIRST_ROOT_RECORD = 0x00041200
LAST_ROOT_RECORD = 0x00041202


@dataclass(frozen=True)
class DicomLayout:
    """Where each instance of a study goes on DICOM media, and the DICOMDIR's records.

    One layout for every medium the archive writes (the citizen's zip, the CD's
    ISO image: :mod:`portal.cdmedia`), so that both hold the same file-set.
    """

    entries: list[tuple[Instance, tuple[str, ...]]]  # each instance and its PS3.10 file ID
    records: list[_Record]  # the PATIENT/STUDY/SERIES/leaf tree for dicomdir_encode
    series_count: int

    @property
    def total_bytes(self) -> int:
        return sum(instance.size for instance, _file_id in self.entries)

    def directories(self) -> list[tuple[str, ...]]:
        """Every folder the file IDs need, parents first (``DICOM``, ``DICOM/S0001``...)."""
        seen: dict[tuple[str, ...], None] = {}
        for _instance, file_id in self.entries:
            for depth in range(1, len(file_id)):
                seen.setdefault(file_id[:depth], None)
        return list(seen)


def dicom_media_layout(*, study: Study) -> DicomLayout:
    """The study's instances numbered into PS3.10 file IDs (``DICOM/S0001/I0001``),
    series as the viewers order them, with the DICOMDIR's record tree.

    Reads one header per series (and the header of any non-image object), never
    the pixel data; memory holds the records only.

    Raises
    ------
    MediaError
        No instances, too many for the file IDs, or a header unreadable.
    """
    groups, tree, entries = _layout_entries(study)
    return DicomLayout(entries=entries, records=_layout_records(groups, tree), series_count=len(groups))


_Tree = list[tuple[Series, list[tuple[Instance, tuple[str, ...]]]]]


def _layout_entries(study: Study) -> tuple[list[NumberedSeries], _Tree, list[tuple[Instance, tuple[str, ...]]]]:
    """The series, their instances numbered into file IDs, and the instances in that order (the index only)."""
    groups = _study_series(study)
    tree: _Tree = [
        (
            n.series,
            [(instance, _file_id(s_index, i_index)) for i_index, instance in enumerate(n.instances, start=1)],
        )
        for s_index, n in enumerate(groups, start=1)
    ]
    entries: list[tuple[Instance, tuple[str, ...]]] = [entry for _series, group in tree for entry in group]
    if not entries:
        raise MediaError(f"study {study.study_instance_uid} has no instances")
    return groups, tree, entries


def _layout_records(groups: list[NumberedSeries], tree: _Tree) -> list[_Record]:
    try:
        return dicomdir_records(groups=tree, numbers=[n.number for n in groups])
    except retrieve.NotAvailable as exc:
        raise MediaError(str(exc)) from exc


def _dicom_readme(study: Study, *, series: int, instances: int) -> bytes:
    summary = _study_summary(study, series=series, instances=instances)
    return _readme(
        [
            "IMMAGINI DIAGNOSTICHE IN FORMATO DICOM",
            "======================================",
            "",
            "Questo archivio contiene le immagini originali dell'esame, in qualità diagnostica,",
            "organizzate come su un CD DICOM (standard DICOM PS3.10, profilo IHE PDI).",
            "",
            *summary,
            "",
            "Come aprirle:",
            "- estrarre l'archivio ZIP in una cartella;",
            "- aprire il file DICOMDIR con un qualsiasi visualizzatore DICOM (per esempio",
            "  Weasis, Horos, RadiAnt, MicroDicom, OsiriX): elenca tutte le serie e le immagini;",
            "- oppure aprire direttamente i file nella cartella DICOM.",
            "I file sono gli originali archiviati, identici byte per byte a quelli ricevuti",
            "dalle apparecchiature; si possono consegnare a un altro medico specialista.",
            "",
            "",
            "DIAGNOSTIC IMAGES IN DICOM FORMAT",
            "=================================",
            "",
            "This archive holds the study's original images in diagnostic quality,",
            "laid out as on a DICOM CD (DICOM PS3.10, IHE PDI profile).",
            "",
            "How to open them:",
            "- extract the ZIP archive into a folder;",
            "- open the DICOMDIR file with any DICOM viewer (for example Weasis, Horos,",
            "  RadiAnt, MicroDicom, OsiriX): it lists every series and image;",
            "- or open the files in the DICOM folder directly.",
            "The files are the archived originals, byte for byte as the equipment sent them;",
            "they can be given to another specialist.",
            "",
            "Prodotto da / Made by: PACS regionale / Regional PACS",
        ]
    )


def dicom_media_zip_write(*, study: Study, path: Path, progress: Progress | None = None) -> PackageInfo:
    """Write ``study`` to ``path`` as a ZIP laid out as DICOM media (PS3.10, IHE PDI).

    Parameters
    ----------
    study : archive.models.Study
        The study to package; every instance needs a readable verified copy.
    path : Path
        Where the zip goes; a temporary file in the same folder is renamed to
        it at the end, and removed if anything fails.
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)`` after each chunk;
        ``total_bytes`` is the instances' size plus the DICOMDIR and README.

    Raises
    ------
    MediaError
        An instance cannot be read, its bytes do not hash as recorded, or
        FileSet cannot list it in the DICOMDIR.
    """
    groups, tree, entries = _layout_entries(study)
    when = dt.datetime.now()
    readme = _dicom_readme(study, series=len(groups), instances=len(entries))
    meter = _Progress(sum(i.size for i, _ in entries) + len(readme), progress)

    # The copy starts as soon as the index is read; the DICOMDIR goes last into the zip.
    # Its records are made (a header per series) and encoded after the copy, while the
    # instances' bytes still on their way to the disk are written: it is pure Python,
    # and during the copy it would hold the GIL that the hashing and writing threads
    # take back after each block (on a 600-image study, a third longer).
    with _zip_in_place(path) as zf:
        _member_write_bytes(zf, README, readme, when=when)
        meter.add(len(readme))
        writer = _MemberWriter(zf, when)
        try:
            _instances_copy(entries, writer, meter)
        except BaseException:
            with contextlib.suppress(MediaError):
                writer.finish()
            raise
        writer.finish()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zip-sync") as pool:
            synced = pool.submit(_synced, zf)
            dicomdir = dicomdir_encode(_layout_records(groups, tree))
            synced.result()
        _member_write_bytes(zf, DICOMDIR, dicomdir, when=when)
    logger.info("DICOM package of study %s: %d instances in %s", study.study_instance_uid, len(entries), path)
    return _info(path, len(entries))


# -- the ISO 9660 image of a CD ----------------------------------------------

ISO_BLOCK = 32768  # what pycdlib copies at a time: memory per file, whatever its size


class _InstanceReader:
    """A stored instance as the read-only file pycdlib copies into the image.

    pycdlib keeps a file object per file until the image is written; an open
    file per instance would run out of descriptors on a large study. This one
    opens the stored copy (:func:`archive.storage.retrieve.instance_open`) when
    pycdlib seeks to its start, hashes what is read, and closes it once its
    ``size`` bytes are read, checking them against :attr:`Instance.sha256`.
    """

    mode = "rb"  # what pycdlib looks at to accept a file object

    def __init__(self, instance: Instance, on_read: Callable[[int], None]) -> None:
        self.instance = instance
        self.on_read = on_read
        self.fh: IO[bytes] | None = None
        self.digest = hashlib.sha256()
        self.done = 0

    def _open(self) -> IO[bytes]:
        if self.fh is None:
            try:
                self.fh = retrieve.instance_open(self.instance)
            except retrieve.NotAvailable as exc:
                raise MediaError(str(exc)) from exc
            self.digest = hashlib.sha256()
            self.done = 0
        return self.fh

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0:
            raise io.UnsupportedOperation("an instance is read from its start only")
        self.close()
        self._open()
        return 0

    def tell(self) -> int:
        return self.done

    def read(self, size: int = -1) -> bytes:
        fh = self._open()
        data = fh.read(size)
        self.digest.update(data)
        self.done += len(data)
        self.on_read(len(data))
        if self.done >= self.instance.size:
            self.close()
            if self.digest.hexdigest() != self.instance.sha256:
                logger.error(
                    "%s read back with SHA-256 %s, %s recorded",
                    self.instance,
                    self.digest.hexdigest(),
                    self.instance.sha256,
                )
                raise MediaError(f"{self.instance.sop_instance_uid}: the stored copy does not match its SHA-256")
        return data

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def iso_name(components: Sequence[str], *, directory: bool = False) -> str:
    """The ISO 9660 path of a file ID (``DICOM/S0001/I0001`` -> ``/DICOM/S0001/I0001.;1``).

    ISO 9660 level 1 (PS3.12 Annex F, STD-GEN-CD): d-characters only (A-Z, 0-9,
    _), at most 8 before the dot and 3 after it; a file's name ends with its
    version ``;1``. A DICOM file ID has no extension, so the dot stands alone.
    """
    for component in components:
        stem, _dot, ext = component.partition(".")
        if not re.fullmatch(r"[A-Z0-9_]{1,8}", stem) or not re.fullmatch(r"[A-Z0-9_]{0,3}", ext):
            raise MediaError(f"{component!r} is not an ISO 9660 level 1 name")
        if directory and ext:
            raise MediaError(f"{component!r}: a directory has no extension")
    path = "/" + "/".join(components)
    if directory:
        return path
    return path + ("" if "." in components[-1] else ".") + ";1"


def _volume_id(text: str) -> str:
    # d-characters, at most 32 (ECMA-119 8.4.11).
    cleaned = re.sub(
        r"[^A-Z0-9_]+", "_", unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().upper()
    )
    return cleaned.strip("_")[:32] or "DICOM"


@contextmanager
def _file_in_place(path: Path) -> Iterator[IO[bytes]]:
    """A file open on a temporary name next to ``path``, renamed to ``path`` when the
    block ends without error (after an fsync), removed otherwise."""
    storage.makedirs_durable(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def dicom_media_iso_write(
    *,
    study: Study,
    path: Path,
    volume_id: str,
    files: Sequence[tuple[tuple[str, ...], bytes]],
    progress: Progress | None = None,
) -> PackageInfo:
    """Write ``study`` to ``path`` as the ISO 9660 image of a CD of IHE PDI (RAD TF-3 4.47).

    The same file-set as the citizen's zip (:func:`dicom_media_layout`): the
    DICOMDIR in the root, the instances under ``DICOM/``, byte for byte as
    stored; ``files`` are the other files of the medium (README.TXT, INDEX.HTM,
    the signed report), each as its path components (ISO 9660 level 1 names)
    and its bytes. Plain ISO 9660 level 1, no Joliet or Rock Ridge: the
    STD-GEN-CD application profile (PS3.12 Annex F) asks nothing more, and
    every system reads it.

    The instances are read from the archive while the image is written, one
    at a time (:class:`_InstanceReader`), never held in memory; the image is
    written under a temporary name and renamed at the end.

    Raises
    ------
    MediaError
        An instance cannot be read or does not hash as recorded, a name is not
        ISO 9660 level 1, the DICOMDIR cannot be made.
    """
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    layout = dicom_media_layout(study=study)
    dicomdir = dicomdir_encode(layout.records)
    meter = _Progress(layout.total_bytes + len(dicomdir) + sum(len(data) for _name, data in files), progress)
    iso = pycdlib.PyCdlib()
    readers: list[_InstanceReader] = []
    try:
        iso.new(interchange_level=1, vol_ident=_volume_id(volume_id), app_ident_str="PACS REGIONALE IHE PDI")
        made: set[tuple[str, ...]] = set()

        def directory(components: tuple[str, ...]) -> None:
            for depth in range(1, len(components) + 1):
                if components[:depth] not in made:
                    iso.add_directory(iso_name(components[:depth], directory=True))
                    made.add(components[:depth])

        iso.add_fp(io.BytesIO(dicomdir), len(dicomdir), iso_name((DICOMDIR,)))
        for components, data in files:
            directory(tuple(components[:-1]))
            iso.add_fp(io.BytesIO(data), len(data), iso_name(components))
        for folder in layout.directories():
            directory(folder)
        for instance, file_id in layout.entries:
            reader = _InstanceReader(instance, meter.add)
            readers.append(reader)
            iso.add_fp(cast(BinaryIO, reader), instance.size, iso_name(file_id))
        small = len(dicomdir) + sum(len(data) for _name, data in files)
        with _file_in_place(path) as out:
            iso.write_fp(cast(BinaryIO, out), blocksize=ISO_BLOCK)
            meter.add(small)
    except PyCdlibException as exc:
        raise MediaError(f"the ISO image cannot be written: {exc}") from exc
    finally:
        for reader in readers:
            reader.close()
        with contextlib.suppress(PyCdlibException):
            iso.close()
    logger.info("CD image of study %s: %d instances in %s", study.study_instance_uid, len(layout.entries), path)
    return _info(path, len(layout.entries))


# -- the JPEG package --------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9 ._()-]+")


def safe_name(text: str, *, limit: int = 60) -> str:
    """``text`` with only characters every file system and unzip accepts:
    accents dropped (è -> e), anything else but letters, digits, space and
    ``._()-`` removed, spaces collapsed."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cleaned = " ".join(_UNSAFE.sub(" ", ascii_text).split())
    return cleaned[:limit].strip(" .") or "serie"


def series_folder_name(*, number: int, series: Series, width: int = 2) -> str:
    """``Serie 03 - TC Torace``: the series' number (:mod:`archive.series_numbers`, as the
    viewers show it, padded to ``width`` digits so that the folders sort), the modality
    in Italian, the description."""
    modality = MODALITY_NAMES.get(series.modality.upper(), series.modality)
    label = " ".join(p for p in (modality, series.series_description) if p)
    parts = [f"Serie {number:0{width}d}"]
    if label:
        parts.append(label)
    return safe_name(" - ".join(parts), limit=80)


@dataclass
class _Failure:
    where: str
    reason: str


@dataclass
class _JpegPlan:
    folder: str
    instance: Instance
    position: int
    frames: int
    width: int = field(default=3)


def _frame_name(plan: _JpegPlan, frame: int) -> str:
    base = f"immagine-{plan.position:0{plan.width}d}"
    if plan.frames > 1:
        base += f"-fotogramma-{frame:0{max(3, len(str(plan.frames)))}d}"
    return f"{plan.folder}/{base}.jpg"


def _jpeg_frames(instance: Instance, frames: int) -> Iterator[tuple[int, bytes | str]]:
    """Each frame's JPEG, or the reason it cannot be rendered.

    The stored preview serves when it was made with exactly the default
    full-size parameters; the rest is rendered in a worker process. No
    readable copy and no render worker are not the image's fault: they raise.
    """
    todo = list(range(1, frames + 1))
    stored = previews.rendition_get(instance=instance, frame=1, kind=Rendition.Kind.PREVIEW, params=JPEG_PARAMS)
    if stored is not None:
        yield 1, stored
        todo.remove(1)
    if not todo:
        return
    with retrieve.instance_file(instance) as local:
        for frame in todo:
            try:
                yield frame, render_with(path=local, frame=frame, params=JPEG_PARAMS)
            except rendering.NoImage as exc:
                yield frame, exc.reason
            except ValueError as exc:  # attributes out of range for the renderer
                yield frame, f"{type(exc).__name__}: {exc}"


def _jpeg_readme(study: Study, *, series: int, instances: int, failures: list[_Failure]) -> bytes:
    lines = [
        "IMMAGINI DELL'ESAME IN FORMATO JPEG / STUDY IMAGES AS JPEG",
        "==========================================================",
        "",
        *_study_summary(study, series=series, instances=instances),
        "",
        "Una cartella per serie, con il numero di serie che mostrano il visualizzatore",
        "online e il referto; un file JPEG per immagine (per ogni fotogramma nelle",
        "sequenze). Si aprono con qualsiasi programma per le foto. Non sono in qualità",
        "diagnostica: per un altro medico scaricare la versione DICOM.",
        "",
        "One folder per series, numbered as in the online viewer and the report; one",
        "JPEG file per image (per frame in clips). They open with any photo viewer.",
        "They are not of diagnostic quality: for another doctor, download the DICOM version.",
    ]
    if failures:
        lines += [
            "",
            "Immagini che non è stato possibile convertire / Images that could not be converted:",
        ]
        lines += [f"- {f.where}: {f.reason}" for f in failures]
    return _readme(lines)


def jpeg_zip_write(*, study: Study, path: Path, progress: Progress | None = None) -> PackageInfo:
    """Write ``study`` to ``path`` as a ZIP of JPEGs: one folder per series, one
    JPEG per frame, rendered full size with the image's own window.

    A frame that cannot be rendered is listed in the README instead.
    ``progress(done, total)`` counts frames. ``instance_count`` in the result
    counts the JPEGs written.

    Raises
    ------
    MediaError
        An instance has no readable copy, or no render worker could start
        (worth trying again later).
    """
    plans: list[_JpegPlan] = []
    groups = _study_series(study)
    number_width = max(2, *(len(str(n.number)) for n in groups)) if groups else 2
    for numbered in groups:
        instances = numbered.instances
        folder = series_folder_name(number=numbered.number, series=numbered.series, width=number_width)
        width = max(3, len(str(len(instances))))
        for position, instance in enumerate(instances, start=1):
            plans.append(_JpegPlan(folder, instance, position, max(1, instance.number_of_frames or 1), width))
    meter = _Progress(sum(p.frames for p in plans), progress)
    failures: list[_Failure] = []
    written = 0
    when = dt.datetime.now()
    with _zip_in_place(path) as zf:
        for plan in plans:
            try:
                for frame, result in _jpeg_frames(plan.instance, plan.frames):
                    name = _frame_name(plan, frame)
                    if isinstance(result, str):
                        logger.warning("%s frame %d not in the JPEG package: %s", plan.instance, frame, result)
                        failures.append(_Failure(name, result))
                    else:
                        _member_write_bytes(zf, name, result, when=when)
                        written += 1
                    meter.add(1)
            except (retrieve.NotAvailable, RenderBusy, RuntimeError) as exc:
                raise MediaError(f"{plan.instance.sop_instance_uid}: {exc}") from exc
        readme = _jpeg_readme(study, series=len(groups), instances=len(plans), failures=failures)
        _member_write_bytes(zf, README, readme, when=when)
    logger.info("JPEG package of study %s: %d images, %d failed", study.study_instance_uid, written, len(failures))
    return _info(path, written)


def media_profile() -> MediaProfile:
    """What :func:`dicom_media_zip_write` writes, for the conformance statement
    (``PortalConfig.ready`` registers it with :func:`archive.conformance.media_profile_source_register`)."""
    from pydicom.fileset import _FOUR_LEVEL_SOP_CLASSES
    from pydicom.uid import ExplicitVRLittleEndian

    # The instance records dicomdir_records makes: IMAGE, or _four_level_record_type's.
    leaves = sorted({"IMAGE", *_FOUR_LEVEL_SOP_CLASSES.values()})
    return MediaProfile(
        file_id="/".join(_file_id(1, 1)),
        files=(DICOMDIR, README),
        dicomdir_transfer_syntax=ExplicitVRLittleEndian,  # as dicomdir_encode writes it
        record_types=tuple(leaves),
    )
