"""DCMTK's query/retrieve clients (findscu, movescu, getscu) against the listener process."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from archive.dicom import _body_offset
from archive.ingest import instance_ingest
from archive.models import RemoteNode
from archive.sample_data import COMPRESSED, PatientInfo, write_study
from kernel.models import AuditEvent
from tests.conftest import free_port

pytestmark = pytest.mark.slow

if shutil.which("findscu") is None:  # `make test` installs DCMTK; never skip silently in CI
    pytest.fail("DCMTK is not installed: run `make test` (apt-get install dcmtk)", pytrace=False)


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def _body(path: Path) -> bytes:
    data = path.read_bytes()
    return data[_body_offset(data) :]


@pytest.fixture
def archived(region, tmp_path: Path) -> tuple[str, dict[str, Path]]:  # type: ignore[no-untyped-def]
    """A CT series of 3 and a JPEG series of 1 in one study at TS-CAT; WS may query and retrieve."""
    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )
    patient = PatientInfo(patient_id="MRN0042", name="ROSSI^MARIO", birth_date="19560312", sex="M")
    paths = write_study(tmp_path / "ct", patient=patient, instances_per_series=3, study_date=dt.date(2024, 5, 2))
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    paths += write_study(
        tmp_path / "jpeg",
        patient=patient,
        source=COMPRESSED["1.2.840.10008.1.2.4.50"],
        study_uid=study_uid,
        instances_per_series=1,
        study_date=dt.date(2024, 5, 2),
    )
    files = {}
    for path in paths:
        instance_ingest(path=path, facility=region.facility, owned=False)
        files[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return study_uid, files


def test_findscu_at_study_and_series_level(start_listener_process, archived, process_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    study_uid, _files = archived
    listener = start_listener_process()
    out = tmp_path / "found"
    out.mkdir()
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=ROSSI*", "-k", "StudyDate=20240101-20241231"]
    keys += ["-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances", "-k", "ModalitiesInStudy"]
    cmd = ["findscu", "-S", "-aet", "WS", "-aec", "TSCAT_PACS", "-X", "-od", str(out), *keys]
    result = _run([*cmd, "127.0.0.1", str(listener.port)], process_env)
    assert result.returncode == 0, result.stderr
    (rsp,) = sorted(out.glob("rsp*.dcm"))
    ds = dcmread(rsp)
    assert ds.StudyInstanceUID == study_uid
    assert int(ds.NumberOfStudyRelatedInstances) == 4
    assert ds.RetrieveAETitle == "TSCAT_PACS"

    series_out = tmp_path / "series"
    series_out.mkdir()
    keys = ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}", "-k", "SeriesInstanceUID"]
    keys += ["-k", "NumberOfSeriesRelatedInstances"]
    cmd = ["findscu", "-S", "-aet", "WS", "-aec", "TSCAT_PACS", "-X", "-od", str(series_out), *keys]
    assert _run([*cmd, "127.0.0.1", str(listener.port)], process_env).returncode == 0
    counts = sorted(int(dcmread(p).NumberOfSeriesRelatedInstances) for p in series_out.glob("rsp*.dcm"))
    assert counts == [1, 3]
    assert AuditEvent.objects.filter(action="dicom.query", ae_title="WS").count() == 2


def _movescu_to_itself(
    listener_port: int, study_uid: str, region, env: dict[str, str], out: Path, *options: str
) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """movescu moving a study to itself (registered as TS-CAT's destination MOVESCU,
    receiving on its own port into ``out``); returns the received files by SOPInstanceUID."""
    port = free_port()
    RemoteNode.objects.create(
        facility=region.facility, ae_title="MOVESCU", host="127.0.0.1", port=port, is_retrieve_destination=True
    )
    out.mkdir()
    cmd = ["movescu", "-S", "-aet", "WS", "-aec", "TSCAT_PACS", "-aem", "MOVESCU", "+P", str(port), *options]
    cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    result = _run([*cmd, "127.0.0.1", str(listener_port)], env, cwd=out)
    assert result.returncode == 0, result.stderr
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}


def test_movescu_to_itself_receives_every_file_unchanged(  # type: ignore[no-untyped-def]
    start_listener_process, archived, process_env, region, tmp_path: Path
) -> None:
    study_uid, files = archived
    listener = start_listener_process()
    # +xa: accept every transfer syntax, so that the JPEG comes as archived; +B:
    # write what arrives as it arrives (DCMTK 3.6.7 then writes to the working
    # directory, whatever -od says).
    received = _movescu_to_itself(listener.port, study_uid, region, process_env, tmp_path / "moved", "+xa", "+B")
    assert set(received) == set(files)
    for uid, path in files.items():
        assert _body(received[uid]) == _body(path), uid
    event = AuditEvent.objects.get(action="dicom.retrieve")
    assert event.detail["completed"] == 4 and event.detail["service"] == "C-MOVE"


def test_movescu_to_an_unknown_destination_fails(start_listener_process, archived, process_env) -> None:  # type: ignore[no-untyped-def]
    study_uid, _files = archived
    listener = start_listener_process()
    cmd = ["movescu", "-v", "-S", "-aet", "WS", "-aec", "TSCAT_PACS", "-aem", "NOWHERE"]
    cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    result = _run([*cmd, "127.0.0.1", str(listener.port)], process_env)
    assert "Refused: MoveDestinationUnknown" in result.stderr


def test_getscu_retrieves_a_series(start_listener_process, archived, process_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    study_uid, files = archived
    ct = [p for p in files.values() if "CT" in str(dcmread(p, stop_before_pixels=True).Modality)]
    series_uid = str(dcmread(ct[0], stop_before_pixels=True).SeriesInstanceUID)
    listener = start_listener_process()
    out = tmp_path / "got"
    out.mkdir()
    cmd = ["getscu", "-S", "-aet", "WS", "-aec", "TSCAT_PACS", "+B", "-od", str(out)]
    cmd += ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}"]
    cmd += ["-k", f"SeriesInstanceUID={series_uid}"]
    result = _run([*cmd, "127.0.0.1", str(listener.port)], process_env, cwd=out)
    assert result.returncode == 0, result.stderr
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
    assert len(received) == 3
    for uid, path in received.items():
        assert _body(path) == _body(files[uid])


def test_movescu_that_accepts_only_uncompressed_gets_the_jpeg_decompressed(  # type: ignore[no-untyped-def]
    start_listener_process, archived, process_env, region, tmp_path: Path
) -> None:
    study_uid, files = archived
    listener = start_listener_process()
    received = _movescu_to_itself(listener.port, study_uid, region, process_env, tmp_path / "moved")
    assert set(received) == set(files)
    (jpeg_uid,) = [
        u for u, p in files.items() if dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    ]
    got = dcmread(received[jpeg_uid])
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    original = dcmread(files[jpeg_uid])
    assert got.pixel_array.shape == original.pixel_array.shape
