"""DCMTK's own clients against the listener process: what real equipment speaks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.dicom import _body_offset
from archive.models import Instance, Study
from archive.sample_data import COMPRESSED, PatientInfo, fresh_copy, write_study
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests.conftest import wait_until

pytestmark = pytest.mark.slow

if shutil.which("storescu") is None:  # `make test` installs DCMTK; never skip silently in CI
    pytest.fail("DCMTK is not installed: run `make test` (apt-get install dcmtk)", pytrace=False)

# The storescu option that proposes each transfer syntax.
STORESCU_OPTION = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2": "-xi",
}


def _storescu(port: int, *args: str | Path) -> list[str]:
    """storescu from STORESCU to TSCAT_PACS: string arguments are options, Paths are files."""
    options = [str(a) for a in args if not isinstance(a, Path)]
    paths = [str(a) for a in args if isinstance(a, Path)]
    return ["storescu", "-aet", "STORESCU", "-aec", "TSCAT_PACS", *options, "127.0.0.1", str(port), *paths]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _body(path: Path) -> bytes:
    data = path.read_bytes()
    return data[_body_offset(data) :]


@pytest.fixture
def dcmtk_reference(process_env, tmp_path: Path):  # type: ignore[no-untyped-def]
    """DCMTK's storescp in bit-preserving mode: it writes each data set exactly as
    received, so what the same storescu sends it is what our listener must keep."""
    from tests.conftest import free_port

    out = tmp_path / "reference"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "+B", "+xa", "-od", str(out), "-aet", "TSCAT_PACS", str(port)],
        env=process_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # storescp prints nothing when ready: echo until it answers.
    wait_until(
        lambda: _run(["echoscu", "-aec", "TSCAT_PACS", "127.0.0.1", str(port)], process_env).returncode == 0,
        what="storescp",
    )
    yield port, out
    proc.terminate()
    proc.wait(timeout=10)


def _received_by_reference(out: Path, sop_uid: str) -> Path:
    (path,) = [p for p in out.iterdir() if sop_uid in p.name]
    return path


def test_echoscu(start_listener_process, region, process_env) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process()
    ok = _run(["echoscu", "-aet", "STORESCU", "-aec", "TSCAT_PACS", "127.0.0.1", str(listener.port)], process_env)
    assert ok.returncode == 0, ok.stderr
    refused = _run(["echoscu", "-aet", "STRANGER", "-aec", "TSCAT_PACS", "127.0.0.1", str(listener.port)], process_env)
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr


def test_storescu_sends_a_folder(start_listener_process, region, process_env, dcmtk_reference, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process()
    files = write_study(tmp_path / "study", patient=PatientInfo(patient_id="P1"), series=2, instances_per_series=5)
    ref_port, ref_out = dcmtk_reference
    for port in (listener.port, ref_port):
        done = _run(_storescu(port, "+sd", tmp_path / "study"), process_env)
        assert done.returncode == 0, done.stderr
    study = Study.objects.get()
    assert (study.number_of_series, study.number_of_instances) == (2, 10)
    assert set(Instance.objects.values_list("calling_ae", flat=True)) == {"STORESCU"}
    for f in files:
        instance = Instance.objects.get(sop_instance_uid=dcmread(f).SOPInstanceUID)
        copy = instance.copies.get()
        reference = _received_by_reference(ref_out, instance.sop_instance_uid)
        assert _body(storage.absolute_path(copy.tier, copy.path)) == _body(reference)
    wait_until(lambda: AuditEvent.objects.filter(action="dicom.store", ae_title="STORESCU").exists(), what="audit")


@pytest.mark.parametrize("ts", sorted(STORESCU_OPTION))
def test_storescu_compressed_transfer_syntaxes(  # type: ignore[no-untyped-def]
    start_listener_process, region, process_env, dcmtk_reference, tmp_path: Path, ts: str
) -> None:
    listener = start_listener_process()
    ds = fresh_copy(
        COMPRESSED[ts], patient=PatientInfo(patient_id="P1"), study_uid=generate_uid(), series_uid=generate_uid()
    )
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    ref_port, ref_out = dcmtk_reference
    for port in (listener.port, ref_port):
        done = _run(_storescu(port, STORESCU_OPTION[ts], "-R", path), process_env)
        assert done.returncode == 0, done.stderr
    instance = Instance.objects.get()
    assert instance.transfer_syntax_uid == ts  # stored in the syntax it was sent in: never transcoded
    copy = instance.copies.get()
    # Byte for byte what went over the wire (as DCMTK's bit-preserving storescp saw it).
    reference = _received_by_reference(ref_out, instance.sop_instance_uid)
    assert _body(storage.absolute_path(copy.tier, copy.path)) == _body(reference)


def test_dcmsend_mixed_transfer_syntaxes(start_listener_process, region, process_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process()
    study_uid = generate_uid()
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, name in enumerate(sorted(set(COMPRESSED.values()))):
        ds = fresh_copy(name, patient=PatientInfo(patient_id="P2"), study_uid=study_uid, series_uid=generate_uid())
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    done = _run(
        [
            "dcmsend",
            "-aet",
            "DCMSEND",
            "-aec",
            "TSCAT_PACS",
            "--decompress-never",
            "+sd",
            "127.0.0.1",
            str(listener.port),
            str(folder),
        ],
        process_env,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    study = Study.objects.get()
    assert study.number_of_instances == len(list(folder.iterdir()))
    stored_ts = set(Instance.objects.values_list("transfer_syntax_uid", flat=True))
    # Compressed data sets arrive compressed as they were (dcmsend may send
    # uncompressed ones in another uncompressed syntax: its choice, not ours).
    uncompressed = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
    assert set(COMPRESSED) - uncompressed <= stored_ts


def test_four_storescu_processes_at_once(start_listener_process, region, process_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process()
    procs = []
    for i in range(4):
        folder = tmp_path / f"s{i}"
        write_study(folder, patient=PatientInfo(patient_id=f"P{i}"), instances_per_series=10)
        procs.append(
            subprocess.Popen(
                _storescu(listener.port, "+sd", folder),
                env=process_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    assert sorted(Study.objects.values_list("number_of_instances", flat=True)) == [10, 10, 10, 10]
