"""STOW-RS (PS3.18 10.5): a multipart/related body stored through :func:`archive.ingest.instance_ingest`.

The body is read in chunks from the request stream; each part goes
straight to a new file in this process's incoming folder, the size limit
is enforced while reading, and every spooled file is removed on any error.

Instances whose Study Instance UID differs from the URL's fail with 0xC409
(the value dcm4chee uses for this case, within the standard's Cxxx "cannot
understand" range). A conflict with an archived object (the same SOP Instance
UID with other bytes, in another study, or a study of another patient) is held
aside for review (``archive.ingest``): it is not the archived instance and a
retrieval of its UID answers the archived object or 404, so it is listed in
the FailedSOPSequence with :data:`FAILURE_CONFLICT`, in the A7xx "refused"
range PS3.18 Table I.2-2 takes from C-STORE (dcm4chee also refuses
conflicting objects in A7xx), never in the ReferencedSOPSequence. The HTTP
status follows PS3.18 10.5.3.1: 200 all stored, 202 some stored and some
failed or warned, 409 none stored.

The answer is DICOM JSON, or the Native DICOM Model (PS3.19) for
``Accept: application/dicom+xml`` (:mod:`archive.dicomweb.native_xml`); any
other Accept is 406 before the body is read.

Storing and the access policy (``archive.access``): an instance is stored
into its study whatever the study is to the sender, hidden by the patient
(*oscuramento*) or of another health authority included, because a
modality's later images of a study the patient hid must not be lost and the
hiding covers them too. So that the answer never tells such a study exists,
it is the same as for any study: the same statuses, a RetrieveURL built
from the UIDs the sender gave (it answers 404 to whoever may not see the
study, as for one not archived), and a conflict's warning says only that
the object was kept for review, never what it clashed with (another
patient's PatientID, another study): that stays in the conflict's row and
the audit log. What a sender holding a study's UID can still learn is that
a study it then cannot retrieve exists; never whether it is hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from pydicom import dcmread
from pydicom.dataset import Dataset

from archive.storage import tiers as storage

from ..ingest import CONFLICT, DUPLICATE, IngestError, IngestResult, instance_ingest
from ..models import Facility, Instance
from .media import DICOM, DICOM_JSON, MULTIPART, DicomwebError, MediaRange, parse_media_type
from .multipart import _CHUNK
from .scope import Scope, check_uid

logger = logging.getLogger(__name__)

# STOW-RS failure and warning reasons (PS3.18 Table I.2-1 and I.2-2).
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_SOP_CLASS_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_STUDY_MISMATCH = 0xC409
FAILURE_PROCESSING = 0x0110
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
# Refused: held aside as a conflict with an archived object (implementation specific, in the
# A7xx range; the conformance statement names it). One code for every kind of conflict: which
# one it was (another patient, another study) is not the sender's to learn.
FAILURE_CONFLICT = 0xA7C0
CONFLICT_FAILURE = "held aside for review as a conflict with an archived object; not stored as this instance"
DICOM_XML = "application/dicom+xml"
FAILURE_NOT_AUTHORIZED = 0x0124
_INGEST_FAILURE = {
    "invalid": FAILURE_CANNOT_UNDERSTAND,
    "sop_class_mismatch": FAILURE_SOP_CLASS_MISMATCH,
    "not_storage": FAILURE_SOP_CLASS_NOT_SUPPORTED,
    "out_of_resources": FAILURE_OUT_OF_RESOURCES,
    "processing": FAILURE_PROCESSING,
    "not_authorized": FAILURE_NOT_AUTHORIZED,  # a rejection note from a user who may not (archive.rejection)
}


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
    # For the audit log only, never in the answer.
    conflict_details: list[dict[str, Any]] = field(default_factory=list)
    # The Store Instances Response Module whose DICOM JSON is ``response``.
    dataset: Dataset = field(default_factory=Dataset)


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


def stow_answer_type(ranges: list[MediaRange]) -> str:
    """The media type of the STOW-RS answer for the Accept header's ``ranges`` (best first):
    DICOM JSON (also for ``*/*`` and ``application/*``), or the Native DICOM Model XML.

    Raises DicomwebError 406 when the client accepts neither.
    """
    for r in ranges:
        if r.type in (DICOM_JSON, "application/json", "*/*", "*", "application/*"):
            return DICOM_JSON
        if r.type == DICOM_XML:
            return DICOM_XML
    raise DicomwebError(406, f"the STOW-RS answer is {DICOM_JSON} or {DICOM_XML}")


def _peek(path: Path) -> tuple[str, str, str]:
    """(SOPClassUID, SOPInstanceUID, StudyInstanceUID) of a spooled part, '' for what cannot be read."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        sop_class, sop_instance, study = (
            str(ds.get(k, "") or "").strip() for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
        )
        return sop_class, sop_instance, study
    except Exception:  # not DICOM at all, or damaged: ingestion says why
        return "", "", ""


def stow(
    read: Callable[[int], bytes],
    *,
    content_type: str,
    content_length: int | None,
    scope: Scope,
    study_uid: str | None,
    user: Any = None,
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
            _stow_part(report, n, part, facility=facility, study_uid=study_uid, user=user)
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
        if result.study_id is not None:
            self.result.study_ids.add(result.study_id)
        if result.outcome == CONFLICT:
            self.result.conflicts += 1
            # Not result.detail: it may name what is archived (another patient, another study).
            self.fail(
                n, sop_class or _sop_class_of(result), result.sop_instance_uid, FAILURE_CONFLICT, CONFLICT_FAILURE
            )
            self.result.conflict_details.append(
                {"part": n, "sop_instance_uid": result.sop_instance_uid, "detail": result.detail}
            )
            return
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class or _sop_class_of(result)
        item.ReferencedSOPInstanceUID = result.sop_instance_uid
        item.RetrieveURL = _retrieve_url(self.scope, result)
        if result.outcome == DUPLICATE:
            self.result.duplicates += 1
        else:
            self.result.stored += 1
        self.referenced.append(item)
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
        self.result.dataset = ds
        return self.result


def _stow_part(
    report: _StowReport, n: int, part: SpooledPart, *, facility: Facility, study_uid: str | None, user: Any = None
) -> None:
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
        result = instance_ingest(path=part.path, facility=facility, owned=True, calling_ae="", user=user)
    except IngestError as exc:
        report.fail(n, sop_class, sop_instance, _INGEST_FAILURE.get(exc.code, FAILURE_PROCESSING), exc.message)
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
