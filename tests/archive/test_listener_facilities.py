"""PACS_DICOM_FACILITIES: a listener process serves the hospitals it is given, and only
those (each hospital's listener on its own network); real associations from pynetdicom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at run time

from archive.models import Instance
from archive.sample_data import PatientInfo, write_study
from tests.conftest import REPO, Region
from tests.dicom_client import echo, send_files

pytestmark = pytest.mark.slow


def _rejection(port: int, called_ae: str) -> tuple[int, int, int] | None:
    """The A-ASSOCIATE-RJ's (result, source, reason), None when the association was accepted."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if assoc.is_established:
        assoc.release()
        return None
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def test_a_listener_for_one_facility_turns_the_others_called_ae_away(  # type: ignore[no-untyped-def]
    start_listener_process, region: Region, tmp_path: Path
) -> None:
    listener = start_listener_process(env={"PACS_DICOM_FACILITIES": "GO-SG"})
    assert "AE titles: GORIZIA_PACS (GO-SG) (PACS_DICOM_FACILITIES)" in listener.log()
    assert "TSCAT_PACS" not in listener.log()
    assert echo(listener.port, called_ae="GORIZIA_PACS") == 0x0000
    # Cattinara's AE title, known to the archive but not served here: "called AE title not
    # recognised", permanent, as an unknown one; and nothing it sends is stored.
    assert _rejection(listener.port, "TSCAT_PACS") == (0x01, 0x01, 0x07)
    assert _rejection(listener.port, "NOBODY_PACS") == (0x01, 0x01, 0x07)
    files = write_study(tmp_path / "s", patient=PatientInfo(patient_id="P1"), series=1, instances_per_series=2)
    assert send_files(listener.port, files, called_ae="TSCAT_PACS").rejected
    assert not Instance.objects.exists()
    report = send_files(listener.port, files, called_ae="GORIZIA_PACS")
    assert set(report.statuses.values()) == {0}
    assert set(Instance.objects.values_list("series__study__facility__code", flat=True)) == {"GO-SG"}


def test_every_facility_when_the_setting_is_empty(start_listener_process, region: Region) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process(env={"PACS_DICOM_FACILITIES": ""})
    assert "GORIZIA_PACS (GO-SG), TSCAT_PACS (TS-CAT)" in listener.log()
    assert _rejection(listener.port, "TSCAT_PACS") is None
    assert _rejection(listener.port, "GORIZIA_PACS") is None


def test_an_unknown_facility_code_stops_start_up(process_env: dict[str, str], region: Region) -> None:
    proc = subprocess.run(
        [sys.executable, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO,
        env={**process_env, "PACS_DICOM_FACILITIES": "GO-SG,TS-XXX"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "PACS_DICOM_FACILITIES names no facility with code TS-XXX" in proc.stderr
    assert "listener ready" not in proc.stdout


def test_facility_must_be_among_the_served_ones(process_env: dict[str, str], region: Region) -> None:
    proc = subprocess.run(
        [sys.executable, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0", "--facility", "TS-CAT"],
        cwd=REPO,
        env={**process_env, "PACS_DICOM_FACILITIES": "GO-SG"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--facility TS-CAT is not among PACS_DICOM_FACILITIES" in proc.stderr
