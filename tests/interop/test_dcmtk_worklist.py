"""DCMTK's findscu in worklist mode (-W) against the listener: each matching key
the worklist supports, the answer's content, and the refusals."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset

from archive.models import Patient
from booking import services
from booking.models import Booking, Station
from kernel.models import AuditEvent
from tests.booking.conftest import MARIO_CF, Cup
from tests.booking.conftest import cup as cup  # noqa: F401  (the fixture, shared with tests/booking)

pytestmark = pytest.mark.slow

if shutil.which("findscu") is None:  # `make test` installs DCMTK; never skip silently in CI
    pytest.fail("DCMTK is not installed: run `make test` (apt-get install dcmtk)", pytrace=False)

SPS = "ScheduledProcedureStepSequence[0]."
# What a modality typically asks for (return keys: empty values).
RETURN_KEYS = {
    "PatientName": "",
    "PatientID": "",
    "IssuerOfPatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "StudyInstanceUID": "",
    "RequestedProcedureID": "",
    "RequestedProcedureDescription": "",
    "RequestedProcedureCodeSequence": "",
    "ReferringPhysicianName": "",
    SPS + "ScheduledStationAETitle": "",
    SPS + "ScheduledProcedureStepStartDate": "",
    SPS + "ScheduledProcedureStepStartTime": "",
    SPS + "Modality": "",
    SPS + "ScheduledProcedureStepID": "",
    SPS + "ScheduledProcedureStepDescription": "",
    SPS + "ScheduledProtocolCodeSequence": "",
}


def findscu_worklist(
    port: int, out: Path, keys: dict[str, str], *, aet: str = "FINDSCU", env: dict[str, str] | None = None
) -> tuple[list[Dataset], subprocess.CompletedProcess]:
    """Run ``findscu -W`` with the return keys and ``keys``; the answers as extracted files."""
    out.mkdir()
    cmd = ["findscu", "-v", "-W", "-aet", aet, "-aec", "TSCAT_PACS", "-X", "-od", str(out)]
    for path, value in {**RETURN_KEYS, **keys}.items():
        cmd += ["-k", f"{path}={value}" if value else path]
    env = {**(env or os.environ), "TCP_NODELAY": "1"}  # DCMTK 3.6.7 on loopback (Nagle)
    result = subprocess.run([*cmd, "127.0.0.1", str(port)], env=env, capture_output=True, text=True, timeout=120)
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], result


def _day(days: int) -> dt.date:
    return timezone.localdate() + dt.timedelta(days=days)


def _slot(station: Station, days: int, index: int = 0) -> dt.datetime:
    return services.station_slots(station=station, day=_day(days))[index]


@pytest.fixture
def scheduled(cup: Cup) -> dict[str, Booking]:  # noqa: F811
    """CT tomorrow at 08:00 (Rossi) and 10:00 (Bianchi), MR in two days at 09:00 (Rossi),
    and a CT at Gorizia."""
    return {
        "ct1": cup.book(cup.mario, when=_slot(cup.ct_station, 1, 0), referring_physician="VERDI^GIUSEPPE"),
        "ct1_late": cup.book(cup.laura, when=_slot(cup.ct_station, 1, 6)),
        "mr2": cup.book(cup.mario, station=cup.mr_station, when=_slot(cup.mr_station, 2, 2)),
        "gorizia": cup.book(cup.mario, station=cup.other_ct_station),
    }


def test_findscu_reads_the_worklist_of_a_listener_process(  # type: ignore[no-untyped-def]
    start_listener_process, scheduled, process_env, settings, tmp_path: Path
) -> None:
    # The listener as it runs in production: booking registers its worklist at start-up.
    listener = start_listener_process()
    keys = {SPS + "ScheduledStationAETitle": "CT01"}
    answers, result = findscu_worklist(listener.port, tmp_path / "found", keys, env=process_env)
    assert result.returncode == 0, result.stderr
    assert [str(ds.AccessionNumber) for ds in answers] == [
        scheduled["ct1"].accession_number,
        scheduled["ct1_late"].accession_number,
    ]
    ds = answers[0]
    booking = scheduled["ct1"]
    assert ds.PatientName == "ROSSI^MARIO" and ds.PatientID == MARIO_CF
    assert ds.IssuerOfPatientID == settings.PACS_PATIENT_ID_ISSUER
    assert ds.PatientBirthDate == "19560312" and ds.PatientSex == "M"
    assert ds.StudyInstanceUID == booking.study_instance_uid
    assert ds.RequestedProcedureID == booking.accession_number
    assert ds.RequestedProcedureCodeSequence[0].CodeValue == "87.41"
    assert ds.ReferringPhysicianName == "VERDI^GIUSEPPE"
    step = ds.ScheduledProcedureStepSequence[0]
    assert step.ScheduledStationAETitle == "CT01" and step.Modality == "CT"
    assert step.ScheduledProcedureStepStartDate == _day(1).strftime("%Y%m%d")
    assert step.ScheduledProcedureStepStartTime == "080000"
    assert step.ScheduledProcedureStepDescription == "TC torace senza mdc"
    assert step.ScheduledProtocolCodeSequence[0].CodingSchemeDesignator == "99FVG-CUP"
    event = AuditEvent.objects.get(action="dicom.worklist")
    assert event.ae_title == "FINDSCU" and event.detail["matches"] == 2


def _dated(value: str) -> str:
    # "+N": N days from today, as a DICOM date.
    return "-".join(_day(int(part)).strftime("%Y%m%d") if part else "" for part in value.split("-"))


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({SPS + "ScheduledStationAETitle": "MR01"}, ["mr2"]),
        ({SPS + "Modality": "CT"}, ["ct1", "ct1_late"]),
        ({SPS + "ScheduledProcedureStepStartDate": "+2"}, ["mr2"]),
        ({SPS + "ScheduledProcedureStepStartDate": "+1-+2"}, ["ct1", "ct1_late", "mr2"]),
        ({SPS + "ScheduledProcedureStepStartDate": "+2-"}, ["mr2"]),
        ({SPS + "ScheduledProcedureStepStartDate": "-+1"}, ["ct1", "ct1_late"]),
        ({SPS + "ScheduledProcedureStepStartTime": "0930-1030"}, ["ct1_late"]),
        ({"PatientID": MARIO_CF}, ["ct1", "mr2"]),
        ({"PatientName": "bianchi*"}, ["ct1_late"]),
        ({"PatientName": "ROSSI^MARIO"}, ["ct1", "mr2"]),
    ],
)
def test_findscu_matching_keys(listener: int, scheduled, tmp_path: Path, keys: dict[str, str], expected) -> None:  # type: ignore[no-untyped-def]
    keys = {k: _dated(v) if k.endswith("StartDate") else v for k, v in keys.items()}
    answers, result = findscu_worklist(listener, tmp_path / "found", keys)
    assert result.returncode == 0, result.stderr
    assert [str(ds.AccessionNumber) for ds in answers] == [scheduled[name].accession_number for name in expected]


def test_findscu_by_accession_number(listener: int, scheduled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wanted = scheduled["mr2"].accession_number
    answers, result = findscu_worklist(listener, tmp_path / "found", {"AccessionNumber": wanted})
    assert result.returncode == 0, result.stderr
    assert [str(ds.AccessionNumber) for ds in answers] == [wanted]
    # Gorizia's booking is not in Cattinara's worklist.
    other = scheduled["gorizia"].accession_number
    answers, _result = findscu_worklist(listener, tmp_path / "other", {"AccessionNumber": other})
    assert answers == []


def test_findscu_gets_an_accented_name_in_utf8(listener: int, cup: Cup, tmp_path: Path) -> None:  # noqa: F811
    patient = Patient.objects.create(
        codice_fiscale="DLLNCL80A01L424X", family_name="DELL'ORTÒ", given_name="NICOLÈ", sex="M"
    )
    cup.book(patient)
    answers, result = findscu_worklist(listener, tmp_path / "found", {"PatientName": "DELL'ORT*"})
    assert result.returncode == 0, result.stderr
    (ds,) = answers
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == "DELL'ORTÒ^NICOLÈ"


def test_findscu_without_the_worklist_right_is_refused(listener: int, scheduled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    answers, result = findscu_worklist(listener, tmp_path / "found", {}, aet="MODALITY")
    assert answers == []
    # DCMTK names no status 0x0124 for C-FIND: "Unknown Status: 0x124".
    assert "Final Find Response (Unknown Status: 0x124)" in result.stderr, result.stderr


def test_findscu_with_a_malformed_date_range_is_refused(listener: int, scheduled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys = {SPS + "ScheduledProcedureStepStartDate": "20270101-20260101"}
    answers, result = findscu_worklist(listener, tmp_path / "found", keys)
    assert answers == []
    # 0xA900, as DCMTK names it.
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in result.stderr, result.stderr
    assert AuditEvent.objects.get(action="dicom.worklist").outcome == AuditEvent.Outcome.FAILURE
