"""The DICOMDIR of a citizen's zip, record by record, against PS3.3 Annex F (issue 19, point 7).

The rules are written here from the standard, not taken from the code that builds
the records: each record type's Type 1 keys (present, with a value), Type 2 keys
(present), and nothing but the keys F.5 lists and the directory attributes of
F.3 (Table F.3-3). F.5 also allows "any attribute of the IE's modules" as Type 3;
the archive writes none, so the check is the stricter one. The study holds one
series per IOD the bundled pydicom data has (each file a fresh copy), and DCMTK
reads the DICOMDIR back (``dcmdump``) and, made over again from the same files by
``dcmmkdir``, gives each file the same record type.
"""

from __future__ import annotations

import io
import subprocess
import warnings
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from archive.dicom import DicomRejected, is_storage_sop_class, read_part10
from archive.models import Study
from archive.sample_data import SR, PatientInfo, bundled_dataset, fresh_copy
from portal.media import dicom_media_zip_write
from tests.dicomweb_helpers import ingest_files

# PS3.3 F.3-3: the attributes of every directory record.
DIRECTORY_ATTRIBUTES = {
    "OffsetOfTheNextDirectoryRecord",
    "RecordInUseFlag",
    "OffsetOfReferencedLowerLevelDirectoryEntity",
    "DirectoryRecordType",
    "PrivateRecordUID",
    "ReferencedFileID",
    "MRDRDirectoryRecordOffset",
    "ReferencedSOPClassUIDInFile",
    "ReferencedSOPInstanceUIDInFile",
    "ReferencedTransferSyntaxUIDInFile",
    "ReferencedRelatedGeneralSOPClassUIDInFile",
    "SpecificCharacterSet",  # 1C in every F.5 table
}
# PS3.3 F.5: record type -> (Type 1 keys, Type 2 keys, other keys allowed: 1C and 3).
F5 = {
    "PATIENT": ({"PatientID"}, {"PatientName"}, set()),
    "STUDY": ({"StudyDate", "StudyTime", "StudyID"}, {"StudyDescription", "AccessionNumber"}, {"StudyInstanceUID"}),
    "SERIES": ({"Modality", "SeriesInstanceUID", "SeriesNumber"}, set(), {"IconImageSequence"}),
    "IMAGE": ({"InstanceNumber"}, set(), {"IconImageSequence"}),
    "RT DOSE": ({"InstanceNumber", "DoseSummationType"}, set(), {"DoseComment", "IconImageSequence"}),
    "RT STRUCTURE SET": ({"InstanceNumber", "StructureSetLabel"}, {"StructureSetDate", "StructureSetTime"}, set()),
    "RT PLAN": ({"InstanceNumber", "RTPlanLabel"}, {"RTPlanDate", "RTPlanTime"}, set()),
    "WAVEFORM": ({"InstanceNumber", "ContentDate", "ContentTime"}, set(), set()),
    "SR DOCUMENT": (
        {
            "InstanceNumber",
            "CompletionFlag",
            "VerificationFlag",
            "ContentDate",
            "ContentTime",
            "ConceptNameCodeSequence",
        },
        set(),
        {"VerificationDateTime", "ContentSequence"},
    ),
    "KEY OBJECT DOC": (
        {"InstanceNumber", "ContentDate", "ContentTime", "ConceptNameCodeSequence"},
        set(),
        {"ContentSequence"},
    ),
    "ENCAP DOC": (
        {"InstanceNumber", "MIMETypeOfEncapsulatedDocument"},
        {"ContentDate", "ContentTime", "DocumentTitle", "ConceptNameCodeSequence"},
        {"HL7InstanceIdentifier"},
    ),
}
# What a Content Sequence item of an SR or KOS record may not hold: the Document
# Relationship Macro (Table C.17-6) and by-reference relationships. The item is the
# Relationship Type and the Document Content Macro only.
NOT_IN_RECORD_ITEMS = {"ContentSequence", "ObservationDateTime", "ObservationUID", "ReferencedContentItemIdentifier"}


def _code_item_ok(item: Dataset) -> bool:
    has_value = any(k in item and item[k].VM for k in ("CodeValue", "LongCodeValue", "URNCodeValue"))
    return has_value and bool(item.get("CodingSchemeDesignator")) and bool(item.get("CodeMeaning"))


def record_problems(record: Dataset) -> list[str]:
    """What in ``record`` PS3.3 F.5 does not allow (an empty list: nothing)."""
    kind = str(record.DirectoryRecordType)
    if kind not in F5:
        return [f"{kind}: a record type this test does not know"]
    type1, type2, other = F5[kind]
    problems = [f"{kind}: Type 1 {k} missing or empty" for k in sorted(type1) if k not in record or record[k].VM == 0]
    problems += [f"{kind}: Type 2 {k} missing" for k in sorted(type2) if k not in record]
    allowed = type1 | type2 | other | DIRECTORY_ATTRIBUTES
    problems += [f"{kind}: {e.keyword or e.tag} not allowed" for e in record if (e.keyword or "") not in allowed]
    if kind in ("SR DOCUMENT", "KEY OBJECT DOC"):
        names = record.get("ConceptNameCodeSequence") or []
        if len(names) != 1 or not _code_item_ok(names[0]):
            problems.append(f"{kind}: Concept Name Code Sequence is not one code item")
        for item in record.get("ContentSequence") or []:
            if item.get("RelationshipType") != "HAS CONCEPT MOD":
                problems.append(f"{kind}: a Content Sequence item {item.get('RelationshipType')}, not HAS CONCEPT MOD")
            problems += [f"{kind}: {k} in a Content Sequence item" for k in NOT_IN_RECORD_ITEMS if k in item]
            if "ValueType" not in item:
                problems.append(f"{kind}: a Content Sequence item without Value Type")
        if "ContentSequence" in record and not record.ContentSequence:
            problems.append(f"{kind}: an empty Content Sequence (1C: present only with items)")
    if kind == "SR DOCUMENT" and (record.VerificationFlag == "VERIFIED") != ("VerificationDateTime" in record):
        problems.append("SR DOCUMENT: Verification DateTime must be there exactly when VERIFIED")
    if kind not in ("PATIENT", "STUDY", "SERIES"):
        for k in ("ReferencedFileID", "ReferencedSOPClassUIDInFile", "ReferencedSOPInstanceUIDInFile"):
            if k not in record:
                problems.append(f"{kind}: {k} missing from a leaf record")
    return problems


def _bundled_storage_files() -> list[Path]:
    """One bundled file per storage SOP class for images, every one for the other IODs,
    among those the archive stores (the wheel's folder only: nothing is downloaded)."""
    from pydicom.fileset import _four_level_record_type

    chosen: dict[tuple[str, str], Path] = {}
    for path in sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*")):
        if not path.is_file():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
        sop_class = str(ds.get("SOPClassUID", ""))
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}) or not sop_class:
            continue
        if not is_storage_sop_class(sop_class):
            continue
        kind = _four_level_record_type(ds)
        key = (sop_class, "" if kind == "IMAGE" else path.name)
        chosen.setdefault(key, path)
    return list(chosen.values())


def _fresh(path: Path, study_uid: str, n: int) -> bytes | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = fresh_copy(dcmread(path), patient=PatientInfo("P-DIR"), study_uid=study_uid, series_uid=generate_uid())
        ds.SeriesNumber = n
        buf = io.BytesIO()
        try:
            ds.save_as(buf, enforce_file_format=True)
            read_part10(buf.getvalue())
        except (DicomRejected, ValueError, TypeError, AttributeError):
            return None  # a file the archive refuses (truncated, broken on purpose)
    return buf.getvalue()


def _sr_with_concept_modifiers() -> Dataset:
    ds = bundled_dataset(SR)
    modifier = Dataset()
    modifier.RelationshipType = "HAS CONCEPT MOD"
    modifier.ValueType = "CODE"
    modifier.ConceptNameCodeSequence = Sequence([_code("121049", "DCM", "Language of Content Item and Descendants")])
    modifier.ConceptCodeSequence = Sequence([_code("it", "RFC5646", "Italian")])
    modifier.ObservationDateTime = "20260101120000"
    child = Dataset()
    child.RelationshipType = "HAS CONCEPT MOD"
    child.ValueType = "CODE"
    child.ConceptNameCodeSequence = Sequence([_code("121046", "DCM", "Country of Language")])
    child.ConceptCodeSequence = Sequence([_code("IT", "ISO3166_1", "Italy")])
    modifier.ContentSequence = Sequence([child])
    ds.ContentSequence = Sequence([modifier, *ds.ContentSequence])
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


@pytest.fixture
def every_iod_zip(region, tmp_path: Path) -> tuple[Path, list[Path]]:  # type: ignore[no-untyped-def]
    study_uid = generate_uid()
    files = []
    sources = _bundled_storage_files()
    for n, path in enumerate(sources, start=1):
        data = _fresh(path, study_uid, n)
        if data is not None:
            files.append(tmp_path / "in" / f"{n:03d}-{path.name}")
            files[-1].parent.mkdir(exist_ok=True)
            files[-1].write_bytes(data)
    sr = fresh_copy(
        _sr_with_concept_modifiers(), patient=PatientInfo("P-DIR"), study_uid=study_uid, series_uid=generate_uid()
    )
    sr.SeriesNumber = len(sources) + 1
    files.append(tmp_path / "in" / "sr-modifiers.dcm")
    sr.save_as(files[-1], enforce_file_format=True)
    ingest_files(files, region.facility)
    out = tmp_path / "study.zip"
    dicom_media_zip_write(study=Study.objects.get(), path=out)
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(out) as zf:
        zf.extractall(unzipped)
    return unzipped, files


def test_every_record_is_what_f5_allows(every_iod_zip) -> None:  # type: ignore[no-untyped-def]
    unzipped, files = every_iod_zip
    dicomdir = dcmread(unzipped / "DICOMDIR")
    records = list(dicomdir.DirectoryRecordSequence)
    kinds = {str(r.DirectoryRecordType) for r in records}
    # The IODs the bundled data has: images, RT dose and plan, SR, waveform.
    assert {"PATIENT", "STUDY", "SERIES", "IMAGE", "SR DOCUMENT", "WAVEFORM", "RT DOSE", "RT PLAN"} <= kinds
    assert [p for r in records for p in record_problems(r)] == []
    leaves = [r for r in records if "ReferencedFileID" in r]
    assert len(leaves) == len(files)
    # pydicom reads the file-set and finds every instance.
    assert len(list(FileSet(unzipped / "DICOMDIR"))) == len(files)


def test_sr_record_keeps_only_the_concept_modifiers(every_iod_zip) -> None:  # type: ignore[no-untyped-def]
    unzipped, _files = every_iod_zip
    records = [
        r for r in dcmread(unzipped / "DICOMDIR").DirectoryRecordSequence if r.DirectoryRecordType == "SR DOCUMENT"
    ]
    by_file = {}
    for record in records:
        document = dcmread(unzipped.joinpath(*record.ReferencedFileID))
        by_file[str(document.SOPInstanceUID)] = (record, document)
        modifiers = [i for i in document.ContentSequence if i.RelationshipType == "HAS CONCEPT MOD"]
        assert len(record.get("ContentSequence") or []) == len(modifiers)
        assert record.ConceptNameCodeSequence[0].CodeValue == document.ConceptNameCodeSequence[0].CodeValue
        if document.VerificationFlag == "VERIFIED":
            latest = max(i.VerificationDateTime for i in document.VerifyingObserverSequence)
            assert record.VerificationDateTime == latest
    with_modifier = [r for r, d in by_file.values() if "ContentSequence" in r]
    (record,) = with_modifier
    (item,) = record.ContentSequence
    assert item.ConceptCodeSequence[0].CodeMeaning == "Italian"
    assert "ContentSequence" not in item and "ObservationDateTime" not in item
    assert record.SpecificCharacterSet == "ISO_IR 100"


def test_dcmtk_reads_the_dicomdir_and_types_each_file_alike(every_iod_zip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    unzipped, _files = every_iod_zip
    dump = subprocess.run(["dcmdump", "-q", str(unzipped / "DICOMDIR")], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
    theirs = tmp_path / "DICOMDIR.dcmtk"
    made = subprocess.run(
        ["dcmmkdir", "-Pgp", "-Nxc", "-Nec", "-Nrc", "+I", "+r", "+id", str(unzipped), "+D", str(theirs), "DICOM"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert theirs.exists(), made.stdout + made.stderr

    def kinds(path: Path) -> dict[str, str]:
        return {
            "/".join(r.ReferencedFileID): str(r.DirectoryRecordType)
            for r in dcmread(path).DirectoryRecordSequence
            if "ReferencedFileID" in r
        }

    ours, dcmtk = kinds(unzipped / "DICOMDIR"), kinds(theirs)
    assert dcmtk and {k: ours[k] for k in dcmtk} == dcmtk


def _as_leaf(record: Dataset, kind: str) -> Dataset:
    record.DirectoryRecordType = kind
    record.ReferencedFileID = ["DICOM", "S0001", "I0001"]
    record.ReferencedSOPClassUIDInFile = "1.2.840.10008.5.1.4.1.1.88.33"
    record.ReferencedSOPInstanceUIDInFile = generate_uid()
    return record


def test_the_rules_catch_the_whole_content_tree_pydicom_copies() -> None:
    from pydicom.fileset import DIRECTORY_RECORDERS

    from portal.dicomdir import directory_record

    document = bundled_dataset(SR)  # VERIFIED, HAS OBS CONTEXT and CONTAINS items at the root
    copied = record_problems(_as_leaf(DIRECTORY_RECORDERS["SR DOCUMENT"](document), "SR DOCUMENT"))
    assert any("CONTAINS, not HAS CONCEPT MOD" in p for p in copied)
    assert "SR DOCUMENT: Verification DateTime must be there exactly when VERIFIED" in copied
    assert record_problems(_as_leaf(directory_record("SR DOCUMENT", document), "SR DOCUMENT")) == []


def test_key_object_record_keeps_the_title_and_its_modifiers_only() -> None:
    from portal.dicomdir import directory_record

    kos = Dataset()
    kos.SpecificCharacterSet = "ISO_IR 192"
    kos.InstanceNumber = 1
    kos.ContentDate, kos.ContentTime = "20260101", "120000"
    kos.ConceptNameCodeSequence = Sequence([_code("113000", "DCM", "Of Interest")])
    modifier = Dataset()
    modifier.RelationshipType = "HAS CONCEPT MOD"
    modifier.ValueType = "TEXT"
    modifier.ConceptNameCodeSequence = Sequence([_code("113011", "DCM", "Document Title Modifier")])
    modifier.TextValue = "Sinistra"
    reference = Dataset()
    reference.RelationshipType = "CONTAINS"
    reference.ValueType = "IMAGE"
    reference.ReferencedSOPSequence = Sequence([Dataset()])
    kos.ContentSequence = Sequence([reference, modifier])
    record = _as_leaf(directory_record("KEY OBJECT DOC", kos), "KEY OBJECT DOC")
    assert record_problems(record) == []
    (item,) = record.ContentSequence
    assert item.TextValue == "Sinistra" and record.SpecificCharacterSet == "ISO_IR 192"
