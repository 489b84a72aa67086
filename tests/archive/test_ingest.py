from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.db import OperationalError
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.ingest import CONFLICT, DUPLICATE, STORED, IngestError, conflict_resolve, instance_ingest
from archive.models import Copy, Instance, InstanceConflict, Patient, PatientIdentifier, Series, Study
from archive.sample_data import CT, PatientInfo, fresh_copy, write_study
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests.conftest import assert_private


def _ingest(path: Path, facility, **kwargs):  # type: ignore[no-untyped-def]
    return instance_ingest(path=path, facility=facility, owned=False, calling_ae="CT01", **kwargs)


def _tier_files(facility_code: str) -> list[Path]:
    root = storage.absolute_path(storage.facility_tier(facility_code), ".")
    return sorted(p for p in root.rglob("*") if p.is_file())


def _incoming_files() -> list[Path]:
    return sorted(p for p in storage.incoming_dir().rglob("*") if p.is_file())


def test_study_is_stored_and_indexed(region, ct_study: list[Path]) -> None:
    results = [_ingest(p, region.facility) for p in ct_study]
    assert {r.outcome for r in results} == {STORED}
    study = Study.objects.get()
    assert study.number_of_series == 2
    assert study.number_of_instances == 6
    assert study.modalities_in_study == "CT"
    assert study.accession_number == "ACC1"
    assert study.patient_name == "Rossi^Mario"
    assert study.dicom_patient_id == "MRN0001"
    assert study.facility == region.facility
    assert study.post_ingest_pending is True
    assert sorted(Series.objects.values_list("number_of_instances", flat=True)) == [3, 3]
    for path in ct_study:
        original = path.read_bytes()
        instance = Instance.objects.get(sop_instance_uid=dcmread(path).SOPInstanceUID)
        copy = instance.copies.get()
        assert copy.tier == "facility:TS-CAT"
        assert copy.sha256 == instance.sha256 and copy.verified_at is not None
        assert instance.calling_ae == "CT01" and instance.size == len(original)
        stored = storage.absolute_path(copy.tier, copy.path)
        # Stored as received: the same bytes, path named after UIDs and content hash.
        assert stored.read_bytes() == original
        assert stored.name == f"{instance.sop_instance_uid}.{instance.sha256}.dcm"
    assert len(_tier_files("TS-CAT")) == 6
    assert _incoming_files() == []


def test_unknown_patient_id_creates_a_provisional_patient(region, ct_study: list[Path]) -> None:
    for p in ct_study:
        _ingest(p, region.facility)
    patient = Patient.objects.get()
    assert patient.provisional and patient.codice_fiscale is None
    assert (patient.family_name, patient.given_name, str(patient.birth_date), patient.sex) == (
        "Rossi",
        "Mario",
        "1970-01-01",
        "M",
    )
    mapping = PatientIdentifier.objects.get()
    assert (mapping.facility, mapping.dicom_patient_id, mapping.patient) == (region.facility, "MRN0001", patient)


def test_patient_id_that_is_a_codice_fiscale_names_the_patient(region, tmp_path: Path) -> None:
    known = Patient.objects.create(codice_fiscale="RSSMRA85T10A562S", family_name="Rossi", given_name="Mario")
    files = write_study(tmp_path, patient=PatientInfo(patient_id="RSSMRA85T10A562S"), instances_per_series=2)
    for p in files:
        _ingest(p, region.facility)
    assert Study.objects.get().patient == known
    assert Patient.objects.count() == 1


def test_same_patient_id_at_another_facility_is_another_identifier(region, patient, tmp_path: Path) -> None:
    a = write_study(tmp_path / "a", patient=patient, instances_per_series=1)
    b = write_study(tmp_path / "b", patient=patient, instances_per_series=1)
    _ingest(a[0], region.facility)
    _ingest(b[0], region.other_facility)
    assert PatientIdentifier.objects.count() == 2
    assert Patient.objects.count() == 2  # MRNs are local to a facility: two provisional patients to reconcile


def test_same_instance_same_bytes_is_a_successful_no_op(region, ct_study: list[Path]) -> None:
    first = _ingest(ct_study[0], region.facility)
    again = _ingest(ct_study[0], region.facility)
    assert (first.outcome, again.outcome) == (STORED, DUPLICATE)
    assert again.instance_id == first.instance_id
    assert Instance.objects.count() == 1 and Copy.objects.count() == 1
    assert Study.objects.get().number_of_instances == 1
    assert len(_tier_files("TS-CAT")) == 1


def test_same_instance_other_bytes_is_kept_as_conflict(region, ct_study: list[Path], tmp_path: Path) -> None:
    first = _ingest(ct_study[0], region.facility)
    ds = dcmread(ct_study[0])
    ds.StudyDescription = "changed by the modality"
    other = tmp_path / "other.dcm"
    ds.save_as(other, enforce_file_format=True)
    result = _ingest(other, region.facility)
    assert result.outcome == CONFLICT and "kept for review" in result.detail
    instance = Instance.objects.get()
    assert instance.pk == first.instance_id
    copy = instance.copies.get()
    # The archived object is untouched; the other bytes lie beside it, under their own hash.
    assert storage.absolute_path(copy.tier, copy.path).read_bytes() == ct_study[0].read_bytes()
    conflict = InstanceConflict.objects.get()
    assert conflict.reason == InstanceConflict.Reason.DIFFERENT_CONTENT
    assert conflict.instance == instance and conflict.sha256 != instance.sha256
    assert storage.absolute_path(conflict.tier, conflict.path).read_bytes() == other.read_bytes()
    # Sending the conflicting bytes again adds nothing.
    assert _ingest(other, region.facility).outcome == CONFLICT
    assert InstanceConflict.objects.count() == 1
    assert Study.objects.get().number_of_instances == 1


def test_a_conflict_is_resolved_once_by_whoever_is_first(  # type: ignore[no-untyped-def]
    region, ct_study: list[Path], tmp_path: Path, django_user_model
) -> None:
    _ingest(ct_study[0], region.facility)
    ds = dcmread(ct_study[0])
    ds.StudyDescription = "changed by the modality"
    ds.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    _ingest(tmp_path / "other.dcm", region.facility)
    conflict = InstanceConflict.objects.get()
    first = django_user_model.objects.create_user("revisore")
    second = django_user_model.objects.create_user("collega")

    resolved = conflict_resolve(conflict_pk=conflict.pk, user=first, note="Reinvio: scartato.", source="10.0.0.7")
    assert resolved is not None and resolved.resolved_at is not None
    assert conflict_resolve(conflict_pk=conflict.pk, user=second, note="Anche io.") is None

    conflict.refresh_from_db()
    assert (conflict.resolved_by, conflict.resolution_note) == (first, "Reinvio: scartato.")
    (event,) = AuditEvent.objects.filter(action="admin.instanceconflict.resolve")
    assert (event.user_id, event.study_id, event.patient_id, event.source) == (
        first.pk,
        conflict.study_id,
        conflict.study.patient_id,
        "10.0.0.7",
    )
    assert event.detail == {"object_id": conflict.pk, "note": "Reinvio: scartato."}
    # Resolved, not removed: the bytes it kept stay in the tier.
    assert storage.absolute_path(conflict.tier, conflict.path).exists()


def test_study_of_another_patient_is_a_conflict(region, ct_study: list[Path], tmp_path: Path) -> None:
    _ingest(ct_study[0], region.facility)
    ds = dcmread(ct_study[1])
    ds.PatientID = "SOMEONE-ELSE"
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = _ingest(path, region.facility)
    assert result.outcome == CONFLICT
    assert InstanceConflict.objects.get().reason == InstanceConflict.Reason.OTHER_PATIENT
    assert Instance.objects.count() == 1 and Study.objects.get().number_of_instances == 1


def test_duplicate_received_by_another_facility_is_recorded_as_its_copy(region, ct_study: list[Path]) -> None:
    _ingest(ct_study[0], region.facility)
    result = _ingest(ct_study[0], region.other_facility)
    assert result.outcome == DUPLICATE
    assert sorted(Copy.objects.values_list("tier", flat=True)) == ["facility:GO-SG", "facility:TS-CAT"]


@pytest.mark.parametrize(
    "damage,kind,reason",
    [
        (lambda data, ds: data[: len(data) // 2], "invalid", "truncated"),
        (lambda data, ds: b"", "invalid", "empty"),
        (lambda data, ds: b"\x00" * 128 + b"DICM" + b"\x02\x00" * 10, "invalid", ""),
        (
            lambda data, ds: data.replace(
                ds.SOPInstanceUID.encode(),
                b"1.2.3/../../9".ljust(len(ds.SOPInstanceUID), b"9")[: len(ds.SOPInstanceUID)],
            ),
            "invalid",
            "not a valid DICOM UID",
        ),
    ],
    ids=["truncated", "empty", "garbage", "uid-with-path"],
)
def test_bad_input_is_refused_and_changes_nothing(
    region, ct_study: list[Path], tmp_path: Path, damage, kind, reason
) -> None:  # type: ignore[no-untyped-def]
    ds = dcmread(ct_study[0])
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(damage(ct_study[0].read_bytes(), ds))
    with pytest.raises(IngestError) as info:
        _ingest(bad, region.facility)
    assert info.value.kind == kind
    assert reason in info.value.reason
    assert not Study.objects.exists() and not Patient.objects.exists()
    assert _tier_files("TS-CAT") == [] and _incoming_files() == []


def test_non_storage_sop_class_is_refused(region, patient, tmp_path: Path) -> None:
    ds = fresh_copy(CT, patient=patient, study_uid=generate_uid(), series_uid=generate_uid())
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND
    path = tmp_path / "find.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(IngestError) as info:
        _ingest(path, region.facility)
    assert info.value.kind == "not_storage"
    assert not Instance.objects.exists() and _tier_files("TS-CAT") == []


def test_a_failure_inside_the_transaction_leaves_no_index_row(
    transactional_db, region, ct_study: list[Path], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    calls = {"n": 0}
    real_create = Copy.objects.create

    def failing_create(**kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        raise OperationalError("connection lost in the middle of the transaction")

    monkeypatch.setattr(Copy.objects, "create", failing_create)
    with pytest.raises(IngestError) as info:
        _ingest(ct_study[0], region.facility)
    assert info.value.kind == "out_of_resources"
    assert calls["n"] == 4  # retried, then refused
    # No row of any kind: no patient, study, series or instance without its copy.
    assert not Patient.objects.exists() and not Study.objects.exists() and not Instance.objects.exists()
    # The complete file stays (harmless); the resend adopts it.
    monkeypatch.setattr(Copy.objects, "create", real_create)
    assert _ingest(ct_study[0], region.facility).outcome == STORED
    assert len(_tier_files("TS-CAT")) == 1


def test_stray_incoming_files_of_dead_processes_are_removed(settings, tmp_path: Path) -> None:
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stray_dir = storage.incoming_dir_of(dead.pid)
    stray_dir.mkdir(parents=True, exist_ok=True)
    (stray_dir / "tmp123.dcm").write_bytes(b"half a file")
    # A folder named by its pid only (before folders were named by host too): this host's.
    legacy = Path(settings.PACS_INCOMING_DIR) / str(dead.pid)
    legacy.mkdir()
    (legacy / "tmp456.dcm").write_bytes(b"half a file")
    # Another host's process with that pid: that host judges it, not this one.
    other_host = Path(settings.PACS_INCOMING_DIR) / f"another-host.{dead.pid}"
    other_host.mkdir()
    (other_host / "receiving.dcm").write_bytes(b"being received there")
    # A mark that names something else than a temporary file of a tier: the link goes, not its target.
    victim = tmp_path / "victim.dcm"
    victim.write_bytes(b"not ours to remove")
    (stray_dir / "x.part.tier-temp").symlink_to(victim)
    live_dir = Path(settings.PACS_INCOMING_DIR) / "1"  # pid 1 is alive
    live_dir.mkdir(exist_ok=True)
    (live_dir / "busy.part").write_bytes(b"being written")
    assert storage.incoming_clean_stray() >= 1
    assert not stray_dir.exists() and not legacy.exists()
    assert (other_host / "receiving.dcm").exists()
    assert victim.read_bytes() == b"not ours to remove"
    assert (live_dir / "busy.part").exists()
    (live_dir / "busy.part").unlink()
    live_dir.rmdir()


_COPY_CUT_SHORT = """
import sys, time
import django
django.setup()
from archive.storage import tiers as storage

class Hanging:
    \"\"\"A source that gives part of its bytes, then hangs (a store that stops answering).\"\"\"
    given = False
    def read(self, size=-1):
        if self.given:
            print("writing", flush=True)
            time.sleep(3600)
        self.given = True
        return b"x" * 65536

storage.copy_store(Hanging(), sys.argv[1], sys.argv[2], sha256="0" * 64)
"""


def test_a_copy_cut_short_by_a_killed_process_leaves_no_temporary_file_in_the_tier(settings) -> None:  # type: ignore[no-untyped-def]
    """A worker killed while it copies into a tier (a recall, in the region in a box) left its
    temporary file beside the copy's name for ever: nothing walks the tiers. Its mark in the
    process's incoming folder now lets the clean-up of dead processes remove it."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    tier, relpath = "facility:TS-CAT", "studies/00/1.2.3/1.2.3.4/1.2.3.4.5." + "0" * 64 + ".dcm"
    folder = storage.absolute_path(tier, relpath).parent
    child = subprocess.Popen(
        [sys.executable, "-c", _COPY_CUT_SHORT, tier, relpath], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "writing"
        (half,) = [p for p in folder.iterdir() if p.name.endswith(".part")]
        assert half.stat().st_size == 65536
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    # This process writing a copy of its own meanwhile: alive, so its file is kept.
    with storage._tier_temp(folder) as (fd, mine):
        os.close(fd)
        assert storage.incoming_clean_stray(own=False) == 1
        assert not half.exists() and Path(mine).exists()
        assert not storage.incoming_dir_of(child.pid).exists()
        os.unlink(mine)
    assert not any(storage.incoming_dir().iterdir())  # its mark gone with it
    assert list(folder.iterdir()) == []


def test_stored_files_and_their_folders_are_the_service_accounts_only(
    loose_umask: None, region, ct_study: list[Path], settings
) -> None:  # type: ignore[no-untyped-def]
    """Files were 0644 and folders 0755: every local user read every image."""
    first, second, third, *rest = ct_study
    assert _ingest(first, region.facility).outcome == STORED  # copied into the incoming folder
    # Held in memory by the listener, then written by ingestion.
    data = second.read_bytes()
    path = storage.incoming_dir() / "held-in-memory.dcm"
    assert instance_ingest(path=path, facility=region.facility, owned=True, data=data).outcome == STORED
    # Spooled to disk by the listener, which opens its own file (0644 under this umask).
    spooled = storage.incoming_dir() / "spooled.dcm"
    spooled.write_bytes(third.read_bytes())
    assert oct(spooled.stat().st_mode & 0o777) == oct(0o644)
    assert instance_ingest(path=spooled, facility=region.facility, owned=True).outcome == STORED

    assert assert_private(Path(settings.PACS_FACILITY_TIER_DIR)) == 3
    assert_private(Path(settings.PACS_INCOMING_DIR))
