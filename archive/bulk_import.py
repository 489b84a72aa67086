"""Bulk import from disk: files, folders, DICOMDIR media and zip archives.

Every object goes through :func:`archive.ingest.instance_ingest`, exactly as
one received by C-STORE: the same checks, the same durable placement, the
same index rows. This module only finds the objects and tallies what became
of each; ``manage.py import_dicom`` parses arguments and prints.

Memory stays flat whatever the size of a folder or archive: folders are
walked lazily, zip members are streamed into temporary files in the incoming
folder, and files are never read whole (ingestion maps them).

The import stays inside what it was given: in a folder (or on a DICOMDIR's
media) a symbolic link whose target lies outside is skipped and reported,
linked folders are not walked, and a zip member whose name is absolute or
climbs out with ``..`` is rejected (members are never written under their
names, but such a name is an attack on whatever unpacks the archive).
"""

from __future__ import annotations

import getpass
import io
import logging
import os
import re
import socket
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from archive.storage import tiers as storage
from kernel.audit import audit_record
from kernel.errors import Invalid, Unavailable
from kernel.models import AuditEvent

from .dicom import is_valid_uid
from .ingest import CONFLICT, DUPLICATE, STORED, IngestError, IngestResult, instance_ingest
from .models import Facility, Study

logger = logging.getLogger(__name__)

REJECTED = "rejected"
SKIPPED = "skipped"

AUDIT_SYSTEM = "import_dicom"
AUDIT_ACTION = "dicom.import"
# The failure event lists rejected files; past this many it only counts them,
# so that one bad folder of a million files does not make a giant row.
_AUDIT_MAX_LISTED = 200

_PREAMBLE = b"\x00" * 128 + b"DICM"
_UNDEFINED_LENGTH = 0xFFFFFFFF
# A raw data set (no Part 10 header) begins with its lowest group; one that
# carries the SOP Class UID (0008,0016) begins at group 0008 or below.
_RAW_FIRST_GROUPS = frozenset({0x0000, 0x0002, 0x0004, 0x0008})
# PS3.5 7.1.2: explicit VR elements with a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


class ImportSetupError(Invalid):
    """The import cannot start: an unknown facility, a path that is not there."""

    code = "import_setup"


@dataclass(frozen=True)
class FileOutcome:
    """What became of one file or archive member.

    ``source`` is what the operator can find again: a path, or
    ``archive.zip!member/name`` for a zip member.
    """

    source: str
    outcome: str  # STORED, DUPLICATE, CONFLICT, REJECTED or SKIPPED
    reason: str = ""
    study_instance_uid: str = ""


@dataclass
class StudyTally:
    study_id: int | None
    patient_id: int | None
    stored: int = 0
    duplicate: int = 0
    conflict: int = 0


@dataclass
class ImportReport:
    facility_code: str
    imported: int = 0
    duplicates: int = 0
    conflicts: list[FileOutcome] = field(default_factory=list)
    rejected: list[FileOutcome] = field(default_factory=list)
    skipped: list[FileOutcome] = field(default_factory=list)
    studies: dict[str, StudyTally] = field(default_factory=dict)
    # Why the import ended before every file was tried (a full disk, Ctrl-C).
    stopped: str = ""
    audit_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.stopped and not self.audit_errors


class _Stop(Unavailable):
    """Going on is pointless: the tier or the database is out of resources."""

    code = "out_of_resources"


class _NotImportable(Invalid):
    """A file that is not a DICOM object the archive could take; ``message`` says why,
    ``code`` is ``not_dicom`` for a file that is no DICOM at all."""

    code = "not_importable"


@dataclass
class _Run:
    facility: Facility
    calling_ae: str
    report: ImportReport
    progress: Callable[[FileOutcome], None] | None
    # The folder the import must stay inside (resolved): the folder given, or the
    # media of a DICOMDIR given by name; None for a file named by the operator.
    root: Path | None = None

    def record(self, item: FileOutcome) -> None:
        report = self.report
        if item.outcome == REJECTED:
            report.rejected.append(item)
        elif item.outcome == SKIPPED:
            report.skipped.append(item)
        if self.progress is not None:
            self.progress(item)

    def record_result(self, source: str, result: IngestResult) -> None:
        report = self.report
        tally = report.studies.get(result.study_instance_uid)
        if tally is None:
            tally = report.studies[result.study_instance_uid] = StudyTally(
                study_id=result.study_id, patient_id=result.patient_id
            )
        if result.outcome == STORED:
            report.imported += 1
            tally.stored += 1
        elif result.outcome == DUPLICATE:
            report.duplicates += 1
            tally.duplicate += 1
        item = FileOutcome(
            source=source,
            outcome=result.outcome,
            reason=result.detail,
            study_instance_uid=result.study_instance_uid,
        )
        if result.outcome == CONFLICT:
            tally.conflict += 1
            report.conflicts.append(item)
        self.record(item)

    def reject(self, source: str, reason: str) -> None:
        self.record(FileOutcome(source=source, outcome=REJECTED, reason=reason))

    def skip(self, source: str, reason: str) -> None:
        self.record(FileOutcome(source=source, outcome=SKIPPED, reason=reason))


# --- setup -------------------------------------------------------------------


def import_facility(*, code: str | None) -> Facility:
    """The facility whose tier receives the import: ``code``, or the only one there is."""
    if code:
        facility = Facility.objects.filter(code=code).first() or Facility.objects.filter(code__iexact=code).first()
        if facility is None:
            known = ", ".join(Facility.objects.order_by("code").values_list("code", flat=True)) or "none"
            raise ImportSetupError(f"no facility with code {code!r} (known facilities: {known})")
        return facility
    facilities = list(Facility.objects.order_by("code")[:2])
    if len(facilities) == 1:
        return facilities[0]
    if not facilities:
        raise ImportSetupError("no facility is configured: create one before importing")
    known = ", ".join(Facility.objects.order_by("code").values_list("code", flat=True))
    raise ImportSetupError(f"--facility is required when there is more than one facility (one of: {known})")


def import_paths(*, paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The paths given, each checked to exist, so a typo fails before anything is imported."""
    checked = [Path(p) for p in paths]
    if not checked:
        raise ImportSetupError("nothing to import: give at least one file or folder")
    missing = [str(p) for p in checked if not p.exists()]
    if missing:
        raise ImportSetupError("no such file or folder: " + ", ".join(missing))
    return checked


def candidate_count(*, paths: Sequence[Path]) -> int:
    """About how many files and members an import of ``paths`` will go through, for a progress bar.

    Cheap: names only, except that the central directory of a ``*.zip`` and a
    DICOMDIR given by name are read. Zip archives without the suffix count as one.
    """
    total = 0
    for path in paths:
        if path.is_dir():
            root = path.resolve()
            for dirpath, _dirnames, filenames in os.walk(path):
                for name in filenames:
                    if _outside(Path(dirpath) / name, root):
                        continue
                    total += _file_estimate(Path(dirpath) / name, top=False)
        else:
            total += _file_estimate(path, top=True)
    return total


def _file_estimate(path: Path, *, top: bool) -> int:
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                return sum(1 for info in zf.infolist() if not info.is_dir())
        if top and path.name.upper() == "DICOMDIR":
            ds = dcmread(path, force=True)
            return sum(1 for r in ds.get("DirectoryRecordSequence", []) if r.get("ReferencedFileID"))
    except Exception:
        return 1
    return 1


# --- the import --------------------------------------------------------------


def dicom_import(
    *,
    paths: Sequence[str | os.PathLike[str]],
    facility: Facility,
    calling_ae: str = "",
    progress: Callable[[FileOutcome], None] | None = None,
) -> ImportReport:
    """Import every DICOM object under ``paths`` into ``facility``'s tier; report what became of each.

    Parameters
    ----------
    paths
        Files, folders (walked recursively), DICOMDIR files (their referenced
        files are imported) and zip archives (every member is a candidate).
    calling_ae : str
        Kept with each instance as its sender's AE title.
    progress
        Called once for every file or member tried, as it is done.

    One audit event per study touched is written at the end, and one failure
    event listing the rejected files if any, even when the import stopped early.
    """
    checked = import_paths(paths=paths)
    report = ImportReport(facility_code=facility.code)
    run = _Run(facility=facility, calling_ae=calling_ae, report=report, progress=progress)
    try:
        for path in checked:
            if path.is_dir():
                run.root = path.resolve()
                _import_folder(run, path)
            else:
                run.root = None
                _import_local(run, source=str(path), path=path, owned=False, top=True)
    except _Stop as exc:
        report.stopped = f"the import stopped early: {exc}"
    except KeyboardInterrupt:
        # What was stored stays stored and must be audited; the caller exits non-zero.
        report.stopped = "the import was interrupted; the files not yet reached were not imported"
    _audit(run, paths=checked)
    return report


def _outside(path: Path, root: Path) -> bool:
    """Whether ``path``, its symbolic links followed, lies outside the folder ``root`` (resolved)."""
    try:
        return not path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a loop of links
        return True


def _import_folder(run: _Run, root: Path) -> None:
    # Folders of DICOMDIR media found so far on the way down, with the files
    # their DICOMDIR referenced (already imported when the walk reaches them).
    media: list[tuple[Path, set[Path]]] = []
    real_root = root.resolve()

    def unreadable(exc: OSError) -> None:
        run.reject(str(exc.filename or root), f"cannot read the folder: {exc.strerror or exc}")

    # os.walk does not descend into linked folders (followlinks=False); they are
    # said, not silently passed over.
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        filenames.sort()
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                where = "outside the folder given" if _outside(here / name, real_root) else "inside the folder given"
                run.skip(str(here / name), f"a symbolic link to a folder {where}: not followed")
        media = [(top, claimed) for top, claimed in media if top == here or top in here.parents]
        for name in filenames:
            if name.upper() == "DICOMDIR":
                dicomdir = here / name
                claimed = _import_media(run, dicomdir)
                if claimed is not None:
                    media.append((here, claimed))
                    run.skip(str(dicomdir), "the media's directory (DICOMDIR): its files are imported, not itself")
        for name in filenames:
            path = here / name
            if name.upper() == "DICOMDIR" or any(path in claimed for _top, claimed in media):
                continue
            # On media, files its DICOMDIR does not list are imported if DICOM,
            # and otherwise expected (a viewer, autorun files): skipped, not rejected.
            _import_local(run, source=str(path), path=path, owned=False, on_media=bool(media))


def _import_local(
    run: _Run,
    *,
    source: str,
    path: Path,
    owned: bool,
    on_media: bool = False,
    top: bool = False,
    in_zip: bool = False,
) -> None:
    """Import one file: a Part 10 file, a DICOMDIR, a zip archive or a raw data set.

    ``owned``: ``path`` is a temporary file in the incoming folder (a zip
    member) and is consumed whatever happens. ``top``: a path the operator
    named, not one found in a folder.
    """
    try:
        if not owned and run.root is not None and _outside(path, run.root):
            # A link (or a DICOMDIR reference through one) must not make the
            # import read what the folder it was given does not hold.
            run.skip(source, f"a symbolic link to a file outside {run.root}: not followed")
            return
        if not owned:
            try:
                st = path.stat()
            except OSError as exc:
                run.reject(source, f"cannot read: {exc.strerror or exc}")
                return
            if not stat.S_ISREG(st.st_mode):
                # A FIFO would block the import forever, a device read garbage.
                run.reject(source, "not a regular file")
                return
        try:
            with open(path, "rb") as fh:
                head = fh.read(132)
        except OSError as exc:
            run.reject(source, f"cannot read: {exc.strerror or exc}")
            return
        if not head:
            run.reject(source, "the file is empty")
            return
        if head[128:132] == b"DICM":
            if _is_dicomdir(path):
                if top:
                    run.root = path.parent.resolve()
                    _import_media(run, path)
                else:
                    run.skip(source, "a media directory (DICOMDIR), not an instance")
                return
            _ingest(run, source=source, path=path, owned=owned)
            owned = False  # consumed by ingestion
            return
        # In a folder only *.zip files are opened: .docx, .jar and the like are
        # zip archives too, and would each give a dozen rejected members.
        if not in_zip and (top or path.suffix.lower() == ".zip") and zipfile.is_zipfile(path):
            _import_zip(run, path)
            return
        try:
            part10 = _part10_from_raw(path)
        except _NotImportable as exc:
            if exc.code == "not_dicom" and on_media:
                run.skip(source, f"{exc.message} (on DICOMDIR media, not referenced by its DICOMDIR)")
            elif exc.code == "not_dicom" and in_zip and head[:4] == b"PK\x03\x04":
                run.reject(source, "not a DICOM file: a zip archive inside a zip archive is not opened")
            else:
                run.reject(source, exc.message)
            return
        except storage.StorageFull as exc:
            run.reject(source, str(exc))
            raise _Stop(str(exc)) from exc
        except storage.StorageError as exc:
            run.reject(source, str(exc))
            return
        _ingest(run, source=source, path=part10, owned=True)
    finally:
        if owned:
            path.unlink(missing_ok=True)


def _ingest(run: _Run, *, source: str, path: Path, owned: bool) -> None:
    try:
        result = instance_ingest(path=path, facility=run.facility, owned=owned, calling_ae=run.calling_ae)
    except IngestError as exc:
        run.reject(source, exc.message)
        if exc.code == "out_of_resources":
            # A full tier or an unreachable database: every next file would fail the same way.
            raise _Stop(exc.message) from exc
        return
    except Exception as exc:
        logger.exception("importing %s failed", source)
        if owned:
            path.unlink(missing_ok=True)
        run.reject(source, f"internal error: {type(exc).__name__}: {exc}")
        return
    run.record_result(source, result)


def _is_dicomdir(path: Path) -> bool:
    try:
        meta = read_file_meta_info(path)
    except Exception:
        return False  # ingestion says what is wrong with it
    return str(meta.get("MediaStorageSOPClassUID", "")).rstrip("\x00") == MediaStorageDirectoryStorage


# --- DICOMDIR media ----------------------------------------------------------


def _import_media(run: _Run, dicomdir: Path) -> set[Path] | None:
    """Import the files a DICOMDIR references; return their paths (None: the DICOMDIR is unreadable)."""
    claimed: set[Path] = set()
    try:
        # Records only: the DICOMDIR's size is its number of records, not the media's.
        ds = dcmread(dicomdir, force=True)
        records = ds.get("DirectoryRecordSequence")
        if records is None:
            raise ValueError("it has no Directory Record Sequence")
    except Exception as exc:
        run.reject(str(dicomdir), f"unreadable DICOMDIR: {exc}")
        return None
    root = dicomdir.parent
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue  # PATIENT, STUDY, SERIES records: no file of their own
        parts = [str(file_id)] if isinstance(file_id, str) else [str(p) for p in file_id]
        shown = f"{dicomdir} -> " + "\\".join(parts)
        if any(not p or p in {".", ".."} or "/" in p or "\x00" in p for p in parts):
            # A crafted DICOMDIR must not make the import read outside the media.
            run.reject(shown, "the DICOMDIR references a file outside the media")
            continue
        path = _media_file(root, parts)
        if path is None:
            run.reject(shown, "referenced by the DICOMDIR but not found on the media")
            continue
        if path in claimed:
            continue
        claimed.add(path)
        _import_local(run, source=str(path), path=path, owned=False)
    return claimed


def _iso_name(name: str) -> str:
    # ISO 9660 media may show "IM000001.;1", or lower case, for "IM000001".
    return name.upper().split(";", 1)[0].rstrip(".")


def _media_file(root: Path, parts: list[str]) -> Path | None:
    path = root.joinpath(*parts)
    if path.is_file():
        return path
    current = root
    for part in parts:
        wanted = _iso_name(part)
        try:
            match = next((e for e in sorted(current.iterdir()) if _iso_name(e.name) == wanted), None)
        except OSError:
            return None
        if match is None:
            return None
        current = match
    return current if current.is_file() else None


# --- zip archives ------------------------------------------------------------


class _ZipMemberStream(io.RawIOBase):
    """A zip member for :func:`archive.storage.tiers.copy_to_incoming`, its errors as OSError.

    ``copy_to_incoming`` removes its temporary file only on OSError; a bad
    CRC (raised by zipfile on the last read) would otherwise leave it behind.
    """

    def __init__(self, member: IO[bytes]) -> None:
        super().__init__()
        self._member = member
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._member.read(size)
        except OSError:
            raise
        except Exception as exc:  # BadZipFile, zlib.error, EOFError, NotImplementedError...
            self.error = exc
            raise OSError(f"corrupt zip member: {exc}") from exc


def _import_zip(run: _Run, path: Path) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        run.reject(str(path), f"unreadable zip archive: {exc}")
        return
    with zf:
        infos = zf.infolist()
        media_dirs = {
            info.filename.rpartition("/")[0] for info in infos if info.filename.rpartition("/")[2].upper() == "DICOMDIR"
        }
        for info in infos:
            if info.is_dir():
                continue
            source = f"{path}!{info.filename}"
            folder, _, name = info.filename.rpartition("/")
            if info.filename.startswith("__MACOSX/"):
                run.skip(source, "macOS metadata, not a file of the archive")
                continue
            if name.upper() == "DICOMDIR":
                run.skip(source, "the media's directory (DICOMDIR): its files are imported as members, not itself")
                continue
            if _zip_name_escapes(info.filename):
                # Members are never written under their names, but an archive
                # that names one so was made to attack whatever unpacks it.
                run.reject(source, "the zip member's name is an absolute path or climbs out of the archive (..)")
                continue
            if info.flag_bits & 0x1:
                run.reject(source, "the zip member is encrypted")
                continue
            on_media = any(folder == d or folder.startswith(d + "/") or d == "" for d in media_dirs)
            try:
                with zf.open(info) as member:
                    stream = _ZipMemberStream(member)
                    try:
                        tmp = storage.copy_to_incoming(stream)
                    except storage.StorageFull as exc:
                        run.reject(source, str(exc))
                        raise _Stop(str(exc)) from exc
                    except storage.StorageError as exc:
                        reason = f"cannot extract from the zip: {stream.error}" if stream.error else str(exc)
                        run.reject(source, reason)
                        continue
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, zlib.error, ValueError) as exc:
                run.reject(source, f"cannot extract from the zip: {exc}")
                continue
            _import_local(run, source=source, path=tmp, owned=True, on_media=on_media, in_zip=True)


def _zip_name_escapes(name: str) -> bool:
    """An absolute name (``/x``, ``\\x``, ``C:x``) or one with a ``..`` component, with
    either slash (archives made on Windows use backslashes)."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return True
    return ".." in re.split(r"[/\\]", name)


# --- raw data sets (no Part 10 header) ---------------------------------------


class _Concatenated(io.RawIOBase):
    """``head`` followed by the rest of ``tail``: a Part 10 file written in one streamed copy."""

    def __init__(self, head: bytes, tail: BinaryIO) -> None:
        super().__init__()
        self._head = io.BytesIO(head)
        self._tail = tail

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._head.read(size)
        if data:
            return data
        return self._tail.read(size)


def _part10_from_raw(path: Path) -> Path:
    """A Part 10 file in the incoming folder wrapping the raw data set in ``path``, bytes unchanged.

    Raises
    ------
    _NotImportable
        Not a DICOM data set, or one whose transfer syntax cannot be told.
    storage.StorageError
        The incoming folder could not be written.
    """
    with open(path, "rb") as fh:
        first = fh.read(8)
    if len(first) < 8 or not (
        struct.unpack("<H", first[:2])[0] in _RAW_FIRST_GROUPS or struct.unpack(">H", first[:2])[0] in _RAW_FIRST_GROUPS
    ):
        raise _NotImportable("not a DICOM file", code="not_dicom")
    try:
        with warnings.catch_warnings():
            # Forcing a read of what may be anything makes pydicom warn about
            # every odd element; the verdict below is what the operator needs.
            warnings.simplefilter("ignore")
            # Values past 64 KB (pixel data) are skipped, not read: flat memory.
            ds = dcmread(path, force=True, defer_size="64 KB")
        sop_class = str(ds.get("SOPClassUID") or "").strip().rstrip("\x00")
        sop_instance = str(ds.get("SOPInstanceUID") or "").strip().rstrip("\x00")
    except Exception as exc:
        raise _NotImportable(f"not a DICOM file: {type(exc).__name__}: {exc}", code="not_dicom") from None
    if not sop_class or not sop_instance:
        raise _NotImportable(
            "not a DICOM file: no 'DICM' Part 10 header, and no SOPClassUID/SOPInstanceUID in a raw data set",
            code="not_dicom",
        )
    for keyword, value in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_instance)):
        if not is_valid_uid(value):
            raise _NotImportable(f"raw data set without Part 10 header: {keyword} {value[:80]!r} is not a valid UID")

    body_offset, meta_ts = _raw_meta(path)
    transfer_syntax = meta_ts or _raw_transfer_syntax(ds)
    if transfer_syntax is None:
        raise _NotImportable(
            "raw data set without Part 10 header: its encoding (implicit VR big endian) is no transfer syntax"
        )
    # keep_deferred: the length is enough; reading the value would load the pixels whole.
    pixel_data = ds.get_item(0x7FE00010, keep_deferred=True) if 0x7FE00010 in ds else None
    encapsulated = pixel_data is not None and (
        getattr(pixel_data, "length", None) == _UNDEFINED_LENGTH or getattr(pixel_data, "is_undefined_length", False)
    )
    if encapsulated and not meta_ts:
        raise _NotImportable(
            "raw data set without Part 10 header and with compressed pixel data: "
            "its transfer syntax (which compression) cannot be determined"
        )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    with open(path, "rb") as fh:
        fh.seek(body_offset)
        return storage.copy_to_incoming(_Concatenated(_PREAMBLE + buf.getvalue(), fh))


def _raw_transfer_syntax(ds: object) -> str | None:
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit and little:
        return ImplicitVRLittleEndian
    if implicit is False and little:
        return ExplicitVRLittleEndian
    if implicit is False and little is False:
        return ExplicitVRBigEndian
    return None


def _raw_meta(path: Path) -> tuple[int, str | None]:
    """Where the data set starts, and the transfer syntax of a file meta group without a preamble.

    Some writers put the group 0002 elements at the very start without the
    preamble and prefix; they are rewritten, not kept twice.
    """
    offset = 0
    transfer_syntax: str | None = None
    with open(path, "rb") as fh:
        while True:
            header = fh.read(8)
            if len(header) < 8 or struct.unpack_from("<H", header)[0] != 0x0002:
                break
            elem = struct.unpack_from("<H", header, 2)[0]
            if header[4:6] in _LONG_VRS:
                extra = fh.read(4)
                if len(extra) < 4:
                    break
                length = struct.unpack("<L", extra)[0]
                head_len = 12
            else:
                length = struct.unpack_from("<H", header, 6)[0]
                head_len = 8
            if elem == 0x0010 and length <= 64:
                value = fh.read(length).decode("ascii", "replace").strip("\x00 ")
                transfer_syntax = value if is_valid_uid(value) else None
            else:
                fh.seek(length, os.SEEK_CUR)
            offset += head_len + length
    return offset, transfer_syntax


# --- audit -------------------------------------------------------------------


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container
        return str(os.getuid())


def _audit(run: _Run, *, paths: Sequence[Path]) -> None:
    report = run.report
    base = {
        "facility": report.facility_code,
        "calling_ae": run.calling_ae,
        "os_user": _os_user(),
        "host": socket.gethostname(),
        "paths": [str(p) for p in paths[:20]],
    }
    study_ids = [t.study_id for t in report.studies.values() if t.study_id is not None]
    studies = Study.objects.select_related("patient").in_bulk(study_ids)
    for uid, tally in report.studies.items():
        study = studies.get(tally.study_id) if tally.study_id is not None else None
        _audit_one(
            report,
            outcome=AuditEvent.Outcome.WARNING if tally.conflict else AuditEvent.Outcome.SUCCESS,
            study=study,
            study_instance_uid=uid,
            detail={**base, "stored": tally.stored, "duplicate": tally.duplicate, "conflict": tally.conflict},
        )
    if report.rejected or report.stopped:
        listed = report.rejected[:_AUDIT_MAX_LISTED]
        _audit_one(
            report,
            outcome=AuditEvent.Outcome.FAILURE,
            study=None,
            study_instance_uid="",
            detail={
                **base,
                "rejected": len(report.rejected),
                "files": [{"source": r.source, "reason": r.reason} for r in listed],
                "files_not_listed": len(report.rejected) - len(listed),
                "stopped": report.stopped,
            },
        )


def _audit_one(
    report: ImportReport, *, outcome: str, study: Study | None, study_instance_uid: str, detail: dict[str, object]
) -> None:
    try:
        audit_record(
            action=AUDIT_ACTION,
            outcome=outcome,
            system=AUDIT_SYSTEM,
            study=study,
            study_instance_uid=study_instance_uid,
            detail=detail,
        )
    except Exception as exc:
        # The files are stored whatever happens here; the operator must know the trail is incomplete.
        logger.exception("could not write the audit event for %s", study_instance_uid or "the rejected files")
        report.audit_errors.append(f"{study_instance_uid or 'rejected files'}: {type(exc).__name__}: {exc}")
