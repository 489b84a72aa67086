"""DCMTK's getscu and movescu (with storescp) that accept only uncompressed transfer syntaxes
retrieve every compressed file pydicom bundles: the listener transcodes on the way out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from archive.ingest import instance_ingest
from archive.models import RemoteNode
from archive.sample_data import PatientInfo, write_study
from kernel.models import AuditEvent
from tests.archive.test_transcode import BUNDLED_COMPRESSED, LOSSY_FILES, reference_pixels
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.slow

if shutil.which("getscu") is None:  # `make test` installs DCMTK; never skip silently in CI
    pytest.fail("DCMTK is not installed: run `make test` (apt-get install dcmtk)", pytrace=False)


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=cwd)


@pytest.fixture
def compressed_study(region, tmp_path: Path) -> tuple[str, dict[str, tuple[str, Path]]]:  # type: ignore[no-untyped-def]
    """One study with one instance of each bundled compressed file; WS may retrieve."""
    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )
    patient = PatientInfo(patient_id="MRN0077", name="VERDI^ANNA")
    study_uid = ""
    files: dict[str, tuple[str, Path]] = {}
    for n, name in enumerate(BUNDLED_COMPRESSED):
        (path,) = write_study(
            tmp_path / f"src{n}", patient=patient, source=name, study_uid=study_uid or None, instances_per_series=1
        )
        header = dcmread(path, stop_before_pixels=True)
        study_uid = str(header.StudyInstanceUID)
        instance_ingest(path=path, facility=region.facility, owned=False)
        files[str(header.SOPInstanceUID)] = (name, path)
    return study_uid, files


def _check_received(received: dict[str, Path], files: dict[str, tuple[str, Path]]) -> None:
    assert set(received) == set(files)
    for uid, (name, path) in files.items():
        got = dcmread(received[uid])
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        expected = reference_pixels(path)
        if name in LOSSY_FILES:
            assert np.abs(got.pixel_array.astype(float) - expected).max() <= 1, name
        else:
            assert np.array_equal(got.pixel_array, expected), name


def test_getscu_accepting_only_explicit_little_endian_gets_every_compressed_file(  # type: ignore[no-untyped-def]
    start_listener_process, compressed_study, process_env, tmp_path: Path
) -> None:
    study_uid, files = compressed_study
    listener = start_listener_process()
    out = tmp_path / "got"
    out.mkdir()
    # +xe: propose Explicit VR Little Endian (and the other uncompressed ones) only.
    cmd = ["getscu", "-v", "-S", "-aet", "WS", "-aec", "TSCAT_PACS", "+xe", "-od", str(out)]
    cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    result = _run([*cmd, "127.0.0.1", str(listener.port)], process_env, cwd=out)
    assert result.returncode == 0, result.stderr
    assert "Release Failed" not in result.stderr and "P-Data PDU arrived" not in result.stderr, result.stderr
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
    _check_received(received, files)
    event = AuditEvent.objects.get(action="dicom.retrieve")
    assert event.detail["completed"] == len(files) and not event.detail.get("failed")


def test_movescu_to_a_storescp_that_accepts_only_uncompressed(  # type: ignore[no-untyped-def]
    start_listener_process, compressed_study, process_env, region, tmp_path: Path
) -> None:
    study_uid, files = compressed_study
    listener = start_listener_process()
    port = free_port()
    RemoteNode.objects.create(
        facility=region.facility, ae_title="STORESCP", host="127.0.0.1", port=port, is_retrieve_destination=True
    )
    out = tmp_path / "stored"
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "+xe", "-od", str(out), str(port)],
        env=process_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: _accepts(port), what="storescp listening")
        cmd = ["movescu", "-v", "-S", "-aet", "WS", "-aec", "TSCAT_PACS", "-aem", "STORESCP"]
        cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
        result = _run([*cmd, "127.0.0.1", str(listener.port)], process_env)
        assert result.returncode == 0, result.stderr
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
    _check_received(received, files)


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_getscu_with_a_corrupted_stream_gets_one_failed_sub_operation(  # type: ignore[no-untyped-def]
    start_listener_process, region, process_env, tmp_path: Path
) -> None:
    """A stored stream that cannot be decoded (GDCM aborts on this one, in a render worker)
    is one failed sub-operation; the others are sent, the listener lives on.

    DCMTK 3.6.7's getscu then reports "Association Release Failed: DUL P-Data PDU arrived":
    it does not read the Identifier of the final C-GET response, which carries the Failed
    SOP Instance UID List PS3.4 C.4.3.1.3.2 requires with a Warning or Failure status. A
    plain pynetdicom C-GET SCP with one failed sub-operation gets the same from getscu; a
    pynetdicom SCU reads it and releases normally
    (tests/archive/test_transcode.py::test_c_get_with_a_corrupted_stream_is_a_failed_sub_operation).
    The issue's 12-bit JPEG no longer fails at all (the first test here)."""
    from pydicom.uid import generate_uid

    from tests.archive.test_transcode import corrupt_jpeg2000

    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )
    patient = PatientInfo(patient_id="MRN0079")
    study_uid = generate_uid()
    good = write_study(
        tmp_path / "good", patient=patient, source="MR_small_RLE.dcm", study_uid=study_uid, instances_per_series=2
    )
    bad = corrupt_jpeg2000(tmp_path / "bad", patient, study_uid)
    for path in [*good, bad]:
        instance_ingest(path=path, facility=region.facility, owned=False)
    listener = start_listener_process()
    out = tmp_path / "got"
    out.mkdir()
    cmd = ["getscu", "-v", "-S", "-aet", "WS", "-aec", "TSCAT_PACS", "+xe", "-od", str(out)]
    cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    result = _run([*cmd, "127.0.0.1", str(listener.port)], process_env, cwd=out)
    assert "Warning: SubOperationsCompleteOneOrMoreFailures" in result.stderr, result.stderr
    assert "Number of Failed Suboperations    : 1" in result.stderr, result.stderr
    assert "Number of Completed Suboperations : 2" in result.stderr, result.stderr
    assert len(list(out.iterdir())) == 2
    event = AuditEvent.objects.get(action="dicom.retrieve")
    assert event.detail["failed"] == 1 and event.detail["completed"] == 2
    # The listener lives on: another retrieve on a new association works.
    again = _run([*cmd, "127.0.0.1", str(listener.port)], process_env, cwd=out)
    assert "Number of Completed Suboperations : 2" in again.stderr, again.stderr
