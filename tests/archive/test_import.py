"""manage.py import_dicom and archive.bulk_import: folders, zips, DICOMDIR media, raw data sets."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from archive import bulk_import
from archive.ingest import IngestError
from archive.models import Copy, Facility, Instance, InstanceConflict, Study
from archive.sample_data import CT, MR, PatientInfo, bundled_path, fresh_copy, write_study
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests.conftest import REPO, Region


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(*args: str, stderr: io.StringIO | None = None) -> tuple[str, str, CommandError | None]:
    out, err = io.StringIO(), stderr or io.StringIO()
    try:
        call_command("import_dicom", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


def _count(out: str, label: str) -> int:
    line = next(line for line in out.splitlines() if line.strip().startswith(f"{label}:"))
    return int(line.split(":")[1].split()[0])


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return storage.file_sha256(fh)


def _tier_root(code: str) -> Path:
    return storage.absolute_path(storage.facility_tier(code), ".")


def _assert_rows_match_files() -> None:
    """Every instance has a copy whose file is there with its SHA-256; no file in a tier lacks a row."""
    rows = set()
    for instance in Instance.objects.prefetch_related("copies"):
        copies = list(instance.copies.all())
        assert copies, f"{instance} has no copy"
        for copy in copies:
            path = storage.absolute_path(copy.tier, copy.path)
            assert path.is_file(), copy.path
            assert _sha256(path) == copy.sha256 == instance.sha256, copy.path
            assert path.stat().st_size == copy.size == instance.size
            rows.add(path.resolve())
    for conflict in InstanceConflict.objects.all():
        rows.add(storage.absolute_path(conflict.tier, conflict.path).resolve())
    root = Path(settings.PACS_FACILITY_TIER_DIR)
    files = {p.resolve() for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()
    assert files == rows, "files without rows or rows without files"


def _incoming_files() -> list[Path]:
    return sorted(p for p in storage.incoming_dir().rglob("*") if p.is_file())


def _raw(ds: Dataset, path: Path, *, implicit: bool = True, little: bool = True) -> Path:
    """``ds`` written as a bare data set: no preamble, no 'DICM', no file meta."""
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    dcmwrite(path, ds, implicit_vr=implicit, little_endian=little, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    return path


def _media(dest: Path, patient: PatientInfo, *, ct: int = 3, mr: int = 1) -> list[Dataset]:
    """DICOMDIR media written by pydicom's FileSet from fresh copies; returns the data sets."""
    study_uid = generate_uid()
    ct_series, mr_series = generate_uid(), generate_uid()
    datasets = [
        fresh_copy(CT, patient=patient, study_uid=study_uid, series_uid=ct_series, instance_number=i + 1)
        for i in range(ct)
    ]
    datasets += [
        fresh_copy(
            MR, patient=patient, study_uid=study_uid, series_uid=mr_series, series_number=2, instance_number=i + 1
        )
        for i in range(mr)
    ]
    fs = FileSet()
    for ds in datasets:
        fs.add(ds)
    fs.write(dest)
    return datasets


def _media_files(dest: Path) -> list[Path]:
    return sorted(p for p in dest.rglob("*") if p.is_file() and p.name != "DICOMDIR")


# --- folders -----------------------------------------------------------------


def test_folder_with_nested_subfolders(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    root = tmp_path / "in"
    ct = write_study(root / "a" / "b", patient=patient, series=2, instances_per_series=2, accession_number="ACC1")
    other = PatientInfo(patient_id="MRN0002", name="Bianchi^Anna", sex="F")
    mr = write_study(root / "c" / "d" / "e", patient=other, source=MR, instances_per_series=3)

    out, err, error = _run(str(root), "--facility", "TS-CAT", "--calling-ae", "IMPORTER")

    assert error is None, out + err
    assert (_count(out, "imported"), _count(out, "duplicates"), _count(out, "rejected")) == (7, 0, 0)
    assert Instance.objects.count() == 7
    assert set(Instance.objects.values_list("calling_ae", "facility__code")) == {("IMPORTER", "TS-CAT")}
    assert set(Copy.objects.values_list("tier", flat=True)) == {"facility:TS-CAT"}
    for path in ct + mr:
        instance = Instance.objects.get(sop_instance_uid=dcmread(path).SOPInstanceUID)
        # Stored as found: the very same bytes.
        assert instance.sha256 == _sha256(path)
    assert sorted(Study.objects.values_list("number_of_instances", flat=True)) == [3, 4]
    _assert_rows_match_files()
    assert _incoming_files() == []

    events = AuditEvent.objects.filter(action="dicom.import").order_by("id")
    assert len(events) == 2
    for event in events:
        study = Study.objects.get(study_instance_uid=event.study_instance_uid)
        assert event.study_id == study.pk and event.patient_id == study.patient_id
        assert event.system == "import_dicom" and event.outcome == AuditEvent.Outcome.SUCCESS
        assert event.detail["stored"] == study.number_of_instances
        assert event.detail["facility"] == "TS-CAT" and event.detail["duplicate"] == 0


def test_second_run_counts_duplicates_and_changes_nothing(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    root = tmp_path / "in"
    write_study(root / "x", patient=patient, series=2, instances_per_series=3)
    assert _run(str(root), "--facility", "TS-CAT")[2] is None

    def snapshot() -> tuple:
        instances = sorted(Instance.objects.values_list("sop_instance_uid", "sha256", "size", "received_at"))
        copies = sorted(Copy.objects.values_list("instance_id", "tier", "path", "sha256"))
        studies = sorted(Study.objects.values_list("study_instance_uid", "number_of_series", "number_of_instances"))
        files = sorted((str(p), p.stat().st_ino, p.stat().st_mtime_ns) for p in _tier_root("TS-CAT").rglob("*.dcm"))
        return instances, copies, studies, files

    before = snapshot()
    out, err, error = _run(str(root), "--facility", "TS-CAT")
    assert error is None, out + err
    assert (_count(out, "imported"), _count(out, "duplicates"), _count(out, "rejected")) == (0, 6, 0)
    assert snapshot() == before
    _assert_rows_match_files()
    last = AuditEvent.objects.filter(action="dicom.import").order_by("-id").first()
    assert last is not None and (last.detail["stored"], last.detail["duplicate"]) == (0, 6)


def test_mixed_folder_rejects_what_is_not_dicom_with_reasons(
    region: Region, tmp_path: Path, patient: PatientInfo
) -> None:
    root = tmp_path / "mixed"
    good = write_study(root / "good", patient=patient, instances_per_series=2)
    (root / "README.txt").write_text("Studies exported from the old PACS.\n")
    (root / "notes").mkdir()
    (root / "notes" / "index.json").write_text('{"studies": 1}')
    (root / "empty.dcm").write_bytes(b"")
    with zipfile.ZipFile(root / "notes" / "report.docx", "w") as zf:  # a zip, but no archive to open
        zf.writestr("word/document.xml", "<w:document/>")
    data = good[0].read_bytes()
    truncated = root / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 1000])
    damaged = root / "no_meta.dcm"
    shutil.copy(bundled_path("no_meta.dcm"), damaged)  # pydicom's: a raw data set shifted by one stray byte
    study_uid, series_uid = generate_uid(), generate_uid()
    no_uids_ds = fresh_copy(CT, patient=patient, study_uid=study_uid, series_uid=series_uid)
    del no_uids_ds.SOPInstanceUID
    no_uids = _raw(no_uids_ds, root / "no_uids.raw")
    raw_ds = fresh_copy(CT, patient=patient, study_uid=study_uid, series_uid=series_uid)
    raw_implicit = _raw(raw_ds, root / "raw_implicit")
    raw_big = _raw(
        fresh_copy(MR, patient=patient, study_uid=study_uid, series_uid=generate_uid()),
        root / "raw_big_endian",
        implicit=False,
        little=False,
    )

    out, err, error = _run(str(root), "--facility", "GO-SG")

    assert error is not None and "7 file(s) rejected" in str(error)
    assert (_count(out, "imported"), _count(out, "rejected")) == (4, 7)
    rejected = {
        line.strip().split(": ", 1)[0]: line.strip().split(": ", 1)[1]
        for line in out.split("Rejected:", 1)[1].splitlines()
        if line.startswith("  ")
    }
    assert rejected.keys() == {
        str(root / "README.txt"),
        str(root / "notes" / "index.json"),
        str(root / "notes" / "report.docx"),
        str(root / "empty.dcm"),
        str(truncated),
        str(damaged),
        str(no_uids),
    }
    assert rejected[str(root / "README.txt")] == "not a DICOM file"
    assert rejected[str(root / "notes" / "index.json")] == "not a DICOM file"
    assert rejected[str(root / "notes" / "report.docx")] == "not a DICOM file"
    assert rejected[str(root / "empty.dcm")] == "the file is empty"
    assert "truncated" in rejected[str(truncated)]
    assert rejected[str(damaged)] == "not a DICOM file"
    assert "no SOPClassUID/SOPInstanceUID" in rejected[str(no_uids)]

    # The raw data sets became proper Part 10 files around their original bytes.
    for raw, ts in ((raw_implicit, ImplicitVRLittleEndian), (raw_big, ExplicitVRBigEndian)):
        original = raw.read_bytes()
        uid = dcmread(raw, force=True).SOPInstanceUID
        instance = Instance.objects.get(sop_instance_uid=uid)
        stored = storage.absolute_path("facility:GO-SG", instance.copies.get().path).read_bytes()
        assert stored[128:132] == b"DICM" and stored.endswith(original)
        part10 = dcmread(io.BytesIO(stored))
        assert part10.file_meta.TransferSyntaxUID == ts == instance.transfer_syntax_uid
        assert part10.file_meta.MediaStorageSOPInstanceUID == uid
    assert Instance.objects.filter(sop_instance_uid=raw_ds.SOPInstanceUID).exists()
    _assert_rows_match_files()
    assert _incoming_files() == []

    failure = AuditEvent.objects.get(action="dicom.import", outcome=AuditEvent.Outcome.FAILURE)
    assert failure.detail["rejected"] == 7
    assert {f["source"] for f in failure.detail["files"]} == set(rejected)
    assert AuditEvent.objects.filter(action="dicom.import", outcome=AuditEvent.Outcome.SUCCESS).count() == 2


def test_raw_data_set_with_compressed_pixels_is_rejected(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    ds = fresh_copy("SC_rgb_jpeg_dcmtk.dcm", patient=patient, study_uid=generate_uid(), series_uid=generate_uid())
    raw = _raw(ds, tmp_path / "jpeg_raw", implicit=False)
    out, _err, error = _run(str(raw), "--facility", "TS-CAT")
    assert error is not None
    assert f"{raw}: raw data set without Part 10 header and with compressed pixel data" in out
    assert Instance.objects.count() == 0 and _incoming_files() == []


def test_conflict_is_counted_not_rejected(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    (first,) = write_study(tmp_path / "a", patient=patient, instances_per_series=1)
    assert _run(str(first), "--facility", "TS-CAT")[2] is None
    changed = dcmread(first)
    changed.SeriesDescription = "edited elsewhere"
    (tmp_path / "b").mkdir()
    changed.save_as(tmp_path / "b" / "changed.dcm")

    out, err, error = _run(str(tmp_path / "b"), "--facility", "TS-CAT")

    assert error is None, out + err
    assert (_count(out, "imported"), _count(out, "conflicts"), _count(out, "rejected")) == (0, 1, 0)
    assert f"{tmp_path / 'b' / 'changed.dcm'}: kept for review" in out
    assert InstanceConflict.objects.count() == 1
    assert AuditEvent.objects.filter(action="dicom.import", outcome=AuditEvent.Outcome.WARNING).count() == 1
    _assert_rows_match_files()


# --- zip archives ------------------------------------------------------------


def test_zip_members_are_streamed_and_imported(
    region: Region, tmp_path: Path, patient: PatientInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_study(tmp_path / "src", patient=patient, series=2, instances_per_series=2)
    raw = _raw(fresh_copy(CT, patient=patient, study_uid=generate_uid(), series_uid=generate_uid()), tmp_path / "raw")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, path in enumerate(files):
            zf.write(path, f"export/series{i % 2}/{path.name}")
        zf.write(raw, "export/raw/IM0001")
        zf.writestr("export/", "")
        zf.writestr("__MACOSX/export/._IM0001", b"\x00\x05\x16\x07junk")
        zf.writestr("export/README.txt", "burned by the modality")
    # A member is never read whole into memory.
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a, **k: pytest.fail("ZipFile.read loads a member whole"))

    out, err, error = _run(str(archive), "--facility", "TS-CAT", "-v", "2")

    assert error is not None
    assert (_count(out, "imported"), _count(out, "rejected"), _count(out, "skipped")) == (5, 1, 1)
    assert f"{archive}!export/README.txt: not a DICOM file" in out
    assert f"{archive}!__MACOSX/export/._IM0001: macOS metadata" in out
    for path in files:
        assert Instance.objects.get(sop_instance_uid=dcmread(path).SOPInstanceUID).sha256 == _sha256(path)
    _assert_rows_match_files()
    assert _incoming_files() == []


def test_zip_with_dicomdir_media(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    media = tmp_path / "cd"
    datasets = _media(media, patient)
    (media / "VIEWER").mkdir()
    (media / "VIEWER" / "viewer.exe").write_bytes(b"MZ\x90\x00" + b"\x00" * 200)
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(media.rglob("*")):
            zf.write(path, f"CD/{path.relative_to(media)}")

    out, err, error = _run(str(archive), "--facility", "TS-CAT", "-v", "2")

    assert error is None, out + err
    assert (_count(out, "imported"), _count(out, "rejected"), _count(out, "skipped")) == (len(datasets), 0, 2)
    assert f"{archive}!CD/DICOMDIR: the media's directory" in out
    assert f"{archive}!CD/VIEWER/viewer.exe: not a DICOM file (on DICOMDIR media" in out
    assert not Instance.objects.filter(sop_class_uid=MediaStorageDirectoryStorage).exists()
    _assert_rows_match_files()


def test_corrupt_zip_member_is_rejected_and_leaves_no_temporary_file(
    region: Region, tmp_path: Path, patient: PatientInfo
) -> None:
    files = write_study(tmp_path / "src", patient=patient, instances_per_series=3)
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in files:
            zf.write(path, path.name)
    # Flip a byte inside the second member's data: its CRC no longer matches.
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[1]
    data = bytearray(archive.read_bytes())
    offset = info.header_offset + 30 + len(info.filename.encode()) + 5000
    data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))

    out, _err, error = _run(str(archive), "--facility", "TS-CAT")

    assert error is not None
    assert f"{archive}!{files[1].name}: cannot extract from the zip: Bad CRC-32" in out
    assert _count(out, "imported") == 2
    assert _incoming_files() == []
    _assert_rows_match_files()


# --- DICOMDIR media ----------------------------------------------------------


def test_dicomdir_media_imports_the_files_it_references(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    media = tmp_path / "cdrom"
    datasets = _media(media, patient, ct=3, mr=2)
    (media / "AUTORUN.INF").write_text("[autorun]\nopen=viewer.exe\n")
    (media / "VIEWER").mkdir()
    (media / "VIEWER" / "viewer.exe").write_bytes(b"MZ" + b"\x00" * 300)

    out, err, error = _run(str(media / "DICOMDIR"), "--facility", "TS-CAT", "-v", "2")

    assert error is None, out + err
    assert (_count(out, "imported"), _count(out, "rejected"), _count(out, "skipped")) == (5, 0, 0)
    assert sorted(Instance.objects.values_list("sop_instance_uid", flat=True)) == sorted(
        ds.SOPInstanceUID for ds in datasets
    )
    assert not Instance.objects.filter(sop_class_uid=MediaStorageDirectoryStorage).exists()
    for path in _media_files(media):
        if path.suffix in {".exe", ".INF"}:
            continue
        assert Instance.objects.get(sop_instance_uid=dcmread(path).SOPInstanceUID).sha256 == _sha256(path)
    _assert_rows_match_files()

    # The media's folder: the same instances (now duplicates); the viewer is skipped, not rejected.
    out, err, error = _run(str(media), "--facility", "TS-CAT", "-v", "2")
    assert error is None, out + err
    assert (_count(out, "imported"), _count(out, "duplicates"), _count(out, "rejected")) == (0, 5, 0)
    assert _count(out, "skipped") == 3  # the DICOMDIR, AUTORUN.INF, viewer.exe
    assert f"{media / 'VIEWER' / 'viewer.exe'}: not a DICOM file (on DICOMDIR media" in out


def test_dicomdir_with_missing_and_renamed_files(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    media = tmp_path / "cdrom"
    _media(media, patient, ct=3, mr=0)
    first, second, third = _media_files(media)
    first.unlink()
    # Mounted ISO 9660 media often shows names in lower case.
    second.rename(second.with_name(second.name.lower()))

    out, _err, error = _run(str(media / "DICOMDIR"), "--facility", "TS-CAT")

    assert error is not None
    assert (_count(out, "imported"), _count(out, "rejected")) == (2, 1)
    assert "referenced by the DICOMDIR but not found on the media" in out
    assert "\\".join(first.relative_to(media).parts) in out
    _assert_rows_match_files()


def test_bundled_dicomdir_media(region: Region, tmp_path: Path) -> None:
    """pydicom's own test media (fixed UIDs, but each test has an empty archive)."""
    media = tmp_path / "dicomdirtests"
    shutil.copytree(Path(bundled_path("CT_small.dcm")).parent / "dicomdirtests", media)
    out, err, _error = _run(str(media / "DICOMDIR"), "--facility", "TS-CAT")
    referenced = [
        r for r in dcmread(media / "DICOMDIR").DirectoryRecordSequence if r.get("ReferencedFileID") is not None
    ]
    assert _count(out, "imported") + _count(out, "rejected") == len(referenced)
    assert _count(out, "imported") > 0, out
    _assert_rows_match_files()


# --- arguments ---------------------------------------------------------------


def test_unknown_facility_is_a_clear_error(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    write_study(tmp_path / "in", patient=patient, instances_per_series=1)
    _out, _err, error = _run(str(tmp_path / "in"), "--facility", "NOPE")
    assert error is not None
    assert "no facility with code 'NOPE'" in str(error) and "GO-SG, TS-CAT" in str(error)
    assert Instance.objects.count() == 0


def test_facility_is_required_only_when_there_are_several(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    write_study(tmp_path / "in", patient=patient, instances_per_series=2)
    _out, _err, error = _run(str(tmp_path / "in"))
    assert error is not None and "--facility is required" in str(error)
    assert Instance.objects.count() == 0

    Facility.objects.filter(code="GO-SG").delete()
    out, err, error = _run(str(tmp_path / "in"))
    assert error is None, out + err
    assert set(Instance.objects.values_list("facility__code", flat=True)) == {"TS-CAT"}


def test_missing_path_and_bad_ae_title_fail_before_importing(
    region: Region, tmp_path: Path, patient: PatientInfo
) -> None:
    write_study(tmp_path / "in", patient=patient, instances_per_series=1)
    _out, _err, error = _run(str(tmp_path / "in"), str(tmp_path / "typo"), "--facility", "TS-CAT")
    assert error is not None and f"no such file or folder: {tmp_path / 'typo'}" in str(error)
    _out, _err, error = _run(str(tmp_path / "in"), "--facility", "TS-CAT", "--calling-ae", "WAY_TOO_LONG_AE_TITLE")
    assert error is not None and "not a valid AE title" in str(error)
    assert Instance.objects.count() == 0


# --- progress, stopping, the module's API --------------------------------------


def test_progress_bar_only_on_a_terminal(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    write_study(tmp_path / "in", patient=patient, instances_per_series=3)
    tty = _TTY()
    _out, _err, error = _run(str(tmp_path / "in"), "--facility", "TS-CAT", stderr=tty)
    assert error is None
    assert "import into TS-CAT" in tty.getvalue() and "3/3" in tty.getvalue()

    tty = _TTY()
    _run(str(tmp_path / "in"), "--facility", "TS-CAT", "--no-progress", stderr=tty)
    assert tty.getvalue() == ""
    _out, err, _error = _run(str(tmp_path / "in"), "--facility", "TS-CAT")
    assert "import into" not in err


def test_dicom_import_reports_each_file_once(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    root = tmp_path / "in"
    files = write_study(root / "study", patient=patient, instances_per_series=3)
    (root / "notes.txt").write_text("hello")
    with zipfile.ZipFile(root / "more.zip", "w") as zf:
        for path in write_study(tmp_path / "z", patient=patient, instances_per_series=2):
            zf.write(path, path.name)
    seen: list[bulk_import.FileOutcome] = []

    report = bulk_import.dicom_import(paths=[root], facility=region.facility, calling_ae="X", progress=seen.append)

    assert bulk_import.candidate_count(paths=[root]) == len(seen) == 6
    assert sorted(item.source for item in seen) == sorted(
        [str(p) for p in files]
        + [str(root / "notes.txt")]
        + [f"{root / 'more.zip'}!{n}" for n in zipfile.ZipFile(root / "more.zip").namelist()]
    )
    assert (report.imported, report.duplicates, len(report.rejected)) == (5, 0, 1)
    assert len(report.studies) == 2 and not report.ok


def test_out_of_resources_stops_the_import(
    region: Region, tmp_path: Path, patient: PatientInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_study(tmp_path / "in", patient=patient, instances_per_series=4)
    calls = []

    def full(**kwargs: object) -> None:
        calls.append(kwargs)
        raise IngestError("no space left while storing", code="out_of_resources")

    monkeypatch.setattr(bulk_import, "instance_ingest", full)
    out, _err, error = _run(str(tmp_path / "in"), "--facility", "TS-CAT")
    assert error is not None and "stopped early" in str(error)
    assert len(calls) == 1
    assert "the import stopped early: no space left while storing" in out
    failure = AuditEvent.objects.get(action="dicom.import", outcome=AuditEvent.Outcome.FAILURE)
    assert failure.detail["stopped"]


def test_interrupted_import_still_audits_what_was_stored(
    region: Region, tmp_path: Path, patient: PatientInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_study(tmp_path / "in", patient=patient, instances_per_series=4)
    real = bulk_import.instance_ingest
    calls = []

    def ctrl_c_on_the_third(**kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(**kwargs)

    monkeypatch.setattr(bulk_import, "instance_ingest", ctrl_c_on_the_third)
    out, _err, error = _run(str(tmp_path / "in"), "--facility", "TS-CAT")
    assert error is not None and "stopped early" in str(error)
    assert "the import was interrupted" in out and _count(out, "imported") == 2
    event = AuditEvent.objects.get(action="dicom.import", outcome=AuditEvent.Outcome.SUCCESS)
    assert event.detail["stored"] == 2 and event.study_id == Study.objects.get().pk
    assert AuditEvent.objects.filter(action="dicom.import", outcome=AuditEvent.Outcome.FAILURE).count() == 1
    _assert_rows_match_files()


@pytest.mark.slow
def test_the_real_command_exit_status(
    process_env: dict[str, str], region: Region, tmp_path: Path, patient: PatientInfo
) -> None:
    root = tmp_path / "in"
    write_study(root, patient=patient, instances_per_series=2)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "import_dicom", *args, "--facility", "TS-CAT"],
            cwd=REPO,
            env=process_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = run(str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported:   2" in done.stdout and "Done: nothing was rejected." in done.stdout
    assert done.stderr.count("\r") == 0  # stderr is no terminal: no progress bar

    (root / "README.txt").write_text("not an image")
    done = run(str(root), "--no-progress")
    assert done.returncode == 1
    assert "duplicates: 2" in done.stdout
    assert f"{root / 'README.txt'}: not a DICOM file" in done.stdout
    assert "CommandError: import incomplete: 1 file(s) rejected" in done.stderr
    assert Instance.objects.count() == 2
    _assert_rows_match_files()


def _with_large_pixels(ds: Dataset, path: Path, *, size: int, part10: bool) -> Path:
    """``ds`` with ``size`` bytes of pixel data, written in chunks (never whole in this process)."""
    ds = ds.copy()
    del ds.PixelData
    if part10:
        ds.save_as(path, enforce_file_format=True)  # explicit VR little endian
        header = b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little")
    else:
        _raw(ds, path)  # implicit VR little endian
        header = b"\xe0\x7f\x10\x00" + size.to_bytes(4, "little")
    chunk = os.urandom(1024 * 1024)
    with open(path, "ab") as fh:
        fh.write(header)
        for _ in range(size // len(chunk)):
            fh.write(chunk)
    return path


def test_memory_stays_flat_with_large_files(region: Region, tmp_path: Path, patient: PatientInfo) -> None:
    import threading
    import time

    size = 96 * 1024 * 1024
    folder = tmp_path / "big"
    folder.mkdir()
    study_uid = generate_uid()
    for i, part10 in enumerate((True, False)):
        ds = fresh_copy(CT, patient=patient, study_uid=study_uid, series_uid=generate_uid(), instance_number=i + 1)
        _with_large_pixels(ds, folder / f"big{i}", size=size, part10=part10)
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"z/{path.name}")

    def rss_anon_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        raise AssertionError("no RssAnon")

    for source in (folder, archive):
        base = rss_anon_kib()
        peak = base
        done = threading.Event()

        def sample(done: threading.Event) -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_anon_kib())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, args=(done,))
        sampler.start()
        try:
            report = bulk_import.dicom_import(paths=[source], facility=region.facility)
        finally:
            done.set()
            sampler.join()
        assert report.ok and report.imported + report.duplicates == 2, report
        # Ingestion maps files (page cache, not counted here); nothing may hold a file in memory.
        assert (peak - base) < 32 * 1024, f"{source.name}: anonymous memory grew by {(peak - base) // 1024} MiB"
    _assert_rows_match_files()


# --- staying inside what was given ---------------------------------------------------


def test_links_out_of_the_folder_given_are_skipped_and_said(
    region: Region, tmp_path: Path, patient: PatientInfo
) -> None:
    """A symbolic link in the folder once made the import read (and archive) any file the
    process could read: a link to a file elsewhere, or a linked folder."""
    inside = write_study(tmp_path / "src", patient=patient, series=1, instances_per_series=2)
    elsewhere = write_study(tmp_path / "elsewhere", patient=patient, series=1, instances_per_series=2)
    src = tmp_path / "src"
    (src / "leak.dcm").symlink_to(elsewhere[0])
    (src / "more").symlink_to(elsewhere[0].parent, target_is_directory=True)
    (src / "again").symlink_to(inside[0].parent, target_is_directory=True)
    (src / "same.dcm").symlink_to(inside[0])  # a link that stays inside is followed

    report = bulk_import.dicom_import(paths=[src], facility=region.facility)

    assert (report.imported, report.duplicates, report.rejected) == (2, 1, [])
    skipped = {Path(item.source).name: item.reason for item in report.skipped}
    assert skipped == {
        "leak.dcm": f"a symbolic link to a file outside {src.resolve()}: not followed",
        "more": "a symbolic link to a folder outside the folder given: not followed",
        "again": "a symbolic link to a folder inside the folder given: not followed",
    }
    stored = set(Instance.objects.values_list("sop_instance_uid", flat=True))
    assert stored == {str(dcmread(p).SOPInstanceUID) for p in inside}
    assert bulk_import.candidate_count(paths=[src]) == 3  # the two files and the link inside
    _assert_rows_match_files()


def test_a_dicomdir_cannot_reference_a_file_through_a_link_off_the_media(
    region: Region, tmp_path: Path, patient: PatientInfo
) -> None:
    media = tmp_path / "cd"
    datasets = _media(media, patient, ct=2, mr=0)
    secret = write_study(tmp_path / "elsewhere", patient=patient, series=1, instances_per_series=1)[0]
    listed = _media_files(media)
    listed[0].unlink()
    listed[0].symlink_to(secret)

    report = bulk_import.dicom_import(paths=[media / "DICOMDIR"], facility=region.facility)

    assert report.imported == len(datasets) - 1 and report.rejected == []
    assert [(Path(i.source).name, i.reason) for i in report.skipped] == [
        (listed[0].name, f"a symbolic link to a file outside {media.resolve()}: not followed")
    ]
    assert not Instance.objects.filter(sop_instance_uid=dcmread(secret).SOPInstanceUID).exists()


@pytest.mark.parametrize(
    "name", ["/etc/IM0001", "../IM0001", "export/../../IM0001", "..\\IM0001", "C:/IM0001", "\\\\server\\IM0001"]
)
def test_zip_members_named_absolute_or_climbing_out_are_refused(
    region: Region, tmp_path: Path, patient: PatientInfo, name: str
) -> None:
    good, bad = write_study(tmp_path / "src", patient=patient, series=1, instances_per_series=2)
    archive = tmp_path / "crafted.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(good, "export/IM0000")
        # ZipInfo keeps the name as given (ZipFile.write would strip a leading slash).
        zf.writestr(zipfile.ZipInfo(name), bad.read_bytes())

    report = bulk_import.dicom_import(paths=[archive], facility=region.facility)

    assert report.imported == 1
    assert [(r.source, r.reason) for r in report.rejected] == [
        (f"{archive}!{name}", "the zip member's name is an absolute path or climbs out of the archive (..)")
    ]
    assert not Instance.objects.filter(sop_instance_uid=dcmread(bad).SOPInstanceUID).exists()
    assert _incoming_files() == []
