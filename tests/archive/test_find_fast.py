"""The C-FIND fast road (archive.dicomnet.find_fast): identifiers written straight
from the index rows are, byte for byte, what the data sets of query_run encode to;
responses framed by the listener read back as pynetdicom's own."""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from archive.access import SYSTEM
from archive.dicomnet.find_fast import response_pdus
from archive.models import Patient, RemoteNode, Study
from archive.query import ATTRIBUTES, LEVELS, query_encoded, query_run
from archive.sample_data import PatientInfo, write_study
from kernel.models import AuditEvent
from tests.conftest import wait_until
from tests.dicomweb_helpers import ingest_files

FIND = StudyRootQueryRetrieveInformationModelFind
_DEPTH = {level: i for i, level in enumerate(LEVELS)}

# Return keys the index does not hold (returned empty) and the constant one.
_OTHER_KEYS = {
    "InstanceAvailability": "",
    "PatientComments": "",  # LT
    "OtherPatientIDs": "",  # LO
    "ReferencedStudySequence": [],  # SQ, returned empty
    "TimezoneOffsetFromUTC": "",  # ignored by the engine
}

NAMES = [
    # (PatientID, PatientName, ReferringPhysicianName, ModalitiesInStudy, StudyTime, StudyDescription)
    ("FF01", "DELL'ÒRSO^NICOLÒ", "BIANCHI^LUCA^^DR.", "CT\\SR", "101500.123", "TC torace"),
    ("FF02", "YAMADA^TARO=山田^太郎=やまだ^たろう", "", "MR", "", ""),
    ("FF03", "WÓJCIK^ŁUKASZ", "ŻÓŁW^ANNA", "US", "0930", "Ecografia àddome"),
    ("FF04", "", "", "", "", ""),
    ("FF05", "ROSSI^MARIO^^SIG.^", "=^", "CR\\DX\\SR", "235959", "RX"),
]


@pytest.fixture
def rows(region, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Studies whose values are the hard cases, and two ingested studies for the
    series and image levels."""
    for i, (pid, name, referring, modalities, time, description) in enumerate(NAMES):
        Study.objects.create(
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.55{i}",
            patient=Patient.objects.create(provisional=True),
            facility=region.facility,
            patient_name=name,
            dicom_patient_id=pid,
            issuer_of_patient_id="ASUGI" if i % 2 else "",
            patient_birth_date=dt.date(1950 + i, 1 + i, 10 + i) if i != 3 else None,
            patient_sex="MF"[i % 2] if i != 3 else "",
            study_date=dt.date(2024, 3, 1 + i),
            study_time=time,
            accession_number=f"ACC{i}" if i != 3 else "",
            study_id=str(i),
            study_description=description,
            referring_physician_name=referring,
            modalities_in_study=modalities,
            number_of_series=i,
            number_of_instances=i * 7,
        )
    mario = PatientInfo(patient_id="FF06", name="ROSSI^MARIA", birth_date="19560312", sex="F")
    ingest_files(
        write_study(tmp_path / "a", patient=mario, series=2, instances_per_series=2, study_date=dt.date(2024, 3, 9)),
        region.facility,
    )


def _identifier(level: str, charset: str | list[str] | None, **matching: object) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if charset is not None:
            ds.SpecificCharacterSet = charset
        ds.QueryRetrieveLevel = level
        for keyword, attr in ATTRIBUTES.items():
            setattr(ds, keyword, None if attr.kind in ("int", "count") else "")
        for keyword, value in _OTHER_KEYS.items():
            setattr(ds, keyword, value)
        for keyword, value in matching.items():
            setattr(ds, keyword, value)
    if level == "PATIENT":
        for keyword, attr in ATTRIBUTES.items():
            if attr.level != "PATIENT":
                delattr(ds, keyword)
    return ds


def _old_road(ds: Dataset, level: str, root: str, implicit: bool, patients: list[int]) -> list[bytes]:
    """The answers as the listener wrote them before: query_run's data sets, the
    listener's two elements added, encoded by pynetdicom."""
    out = []
    for answer in query_run(
        ds, level=level, root=root, principal=SYSTEM, limit=1001, encoding=(implicit, True), patients=patients
    ):
        answer.QueryRetrieveLevel = level
        answer.RetrieveAETitle = "TSCAT_PACS"
        out.append(bytes(encode(answer, implicit, True, False) or b""))
    return out


def _fast_road(ds: Dataset, level: str, root: str, implicit: bool, patients: list[int]) -> list[bytes]:
    encoded = query_encoded(
        ds,
        level=level,
        root=root,
        principal=SYSTEM,
        limit=1001,
        implicit=implicit,
        added=[("QueryRetrieveLevel", level), ("RetrieveAETitle", "TSCAT_PACS")],
        patients=patients,
    )
    assert encoded is not None, "the fast road refused keys it should write"
    return [data for data, _row in encoded.answers]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(
    "charset",
    [None, "ISO_IR 192", "ISO_IR 100", "ISO 2022 IR 87", ["ISO_IR 100", "ISO 2022 IR 100"]],
    ids=["default", "utf8", "latin1", "iso2022", "two-terms"],
)
@pytest.mark.parametrize("level", LEVELS)
def test_fast_road_writes_the_bytes_the_data_sets_encode_to(rows, level: str, charset, implicit: bool) -> None:  # type: ignore[no-untyped-def]
    root = "patient" if level == "PATIENT" else "study"
    ds = _identifier(level, charset)
    old_patients: list[int] = []
    new_patients: list[int] = []
    old = _old_road(ds, level, root, implicit, old_patients)
    new = _fast_road(ds, level, root, implicit, new_patients)
    assert len(old) >= {"PATIENT": 6, "STUDY": 6, "SERIES": 2, "IMAGE": 4}[level]
    assert new == old
    assert new_patients == old_patients


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192"])
def test_fast_road_in_the_query_character_set_when_every_answer_fits(rows, charset, implicit: bool) -> None:  # type: ignore[no-untyped-def]
    # Only Latin-1 names (NICOLÒ, ROSSI, the empty one): in ISO_IR 100 when asked.
    ds = _identifier("STUDY", charset, PatientID=["FF01", "FF04", "FF05"])
    old = _old_road(ds, "STUDY", "study", implicit, [])
    new = _fast_road(ds, "STUDY", "study", implicit, [])
    assert len(new) == 3 and new == old
    if charset == "ISO_IR 100":
        assert all(b"ISO_IR 100" in data for data in new)
        assert any("NICOLÒ".encode("latin-1") in data for data in new)


def test_fast_road_leaves_a_key_of_another_vr_to_the_data_sets(rows) -> None:  # type: ignore[no-untyped-def]
    ds = _identifier("STUDY", None)
    ds.add_new(0x00281052, "DS", None)  # RescaleIntercept: written by query_run
    ds.add_new(0x00091001, "LO", "")  # private: ignored by the engine, no reason to refuse
    ds.add_new(0x00280106, "US", None)  # SmallestImagePixelValue: "US or SS" in the dictionary
    assert query_encoded(ds, level="STUDY", principal=SYSTEM, limit=10, implicit=True) is None
    del ds[0x00280106]
    encoded = query_encoded(ds, level="STUDY", principal=SYSTEM, limit=10, implicit=True)
    assert encoded is not None and len(list(encoded.answers)) == 6


@pytest.mark.parametrize("max_pdu", [0, 16384, 128, 40])
def test_response_pdus_fit_the_peer_maximum(max_pdu: int) -> None:
    command, identifier = b"C" * 70, b"I" * 300
    data = response_pdus(1, command, identifier, max_pdu)
    pdvs: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        assert data[offset] == 0x04
        length = int.from_bytes(data[offset + 2 : offset + 6], "big")
        assert not max_pdu or length <= max_pdu
        body, offset = data[offset + 6 : offset + 6 + length], offset + 6 + length
        at = 0
        while at < len(body):
            item = int.from_bytes(body[at : at + 4], "big")
            assert body[at + 4] == 1
            pdvs.append((body[at + 5], body[at + 6 : at + 4 + item]))
            at += 4 + item
    assert b"".join(p for c, p in pdvs if c & 1) == command
    assert b"".join(p for c, p in pdvs if not c & 1) == identifier
    assert [c for c, _ in pdvs if c & 1][-1] == 0x03 and [c for c, _ in pdvs if not c & 1][-1] == 0x02
    assert all(c in (0x01, 0x00) for c, _ in pdvs[:-1] if c not in (0x03,))


# --- over a real association ------------------------------------------------------------


@pytest.fixture
def workstation(region) -> None:  # type: ignore[no-untyped-def]
    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )


def _c_find(port: int, ds: Dataset, model, transfer_syntax: str | None = None) -> tuple[list[Dataset], int]:  # type: ignore[no-untyped-def]
    ae = AE(ae_title="WS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    if transfer_syntax:
        ae.add_requested_context(model, [transfer_syntax])
    else:
        ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="TSCAT_PACS")
    assert assoc.is_established
    try:
        answers, final = [], -1
        for status, identifier in assoc.send_c_find(ds, model):
            if status.Status in (0xFF00, 0xFF01):
                answers.append(identifier)
            else:
                final = status.Status
        return answers, final
    finally:
        assoc.release()


@pytest.mark.parametrize(
    "transfer_syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"], ids=["ivr", "evr", "be"]
)
def test_the_fast_road_answers_what_pynetdicom_answered(  # type: ignore[no-untyped-def]
    transactional_db, rows, workstation, region, settings, transfer_syntax: str, caplog
) -> None:
    """The same answers with the fast paths on and off; on, in little endian, the
    pending responses bypass pynetdicom's service class (it logs only the final one)."""
    from archive.dicomnet.listener import start_listener, stop_listener

    answers = {}
    for fast in (True, False):
        settings.PACS_DICOM_FAST_PATHS = fast
        server = start_listener(host="127.0.0.1", port=0)
        try:
            port = int(server.server_address[1])
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="pynetdicom"):
                for level, model in (("STUDY", FIND), ("PATIENT", PatientRootQueryRetrieveInformationModelFind)):
                    ds = _identifier(level, "ISO_IR 192")
                    del ds.TimezoneOffsetFromUTC
                    found, final = _c_find(port, ds, model, transfer_syntax)
                    assert final == 0x0000
                    answers[fast, level] = [d.to_json_dict() for d in found]
            logged = [
                r
                for r in caplog.records
                if r.name == "pynetdicom.service_class" and r.getMessage().startswith("Find SCP Response")
            ]
            bypassed = fast and transfer_syntax != "1.2.840.10008.1.2.2"
            assert len(logged) == (2 if bypassed else len(answers[fast, "STUDY"]) + len(answers[fast, "PATIENT"]) + 2)
        finally:
            stop_listener(server, grace=0.0)
    for level in ("STUDY", "PATIENT"):
        assert answers[True, level] == answers[False, level]
        assert len(answers[True, level]) >= 6
    assert any(
        a.get("00100010", {}).get("Value")
        == [{"Alphabetic": "YAMADA^TARO", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}]
        for a in answers[True, "STUDY"]
    )


def test_an_abort_stops_the_answer_and_the_audit_says_so(  # type: ignore[no-untyped-def]
    listener: int, region, workstation, settings
) -> None:
    total = 5000
    patient = Patient.objects.create(provisional=True)
    Study.objects.bulk_create(
        Study(
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.9.{i}",
            patient=patient,
            facility=region.facility,
            patient_name="MOLTI^STUDI",
            dicom_patient_id="MANY",
            study_date=dt.date(2020, 1, 1) + dt.timedelta(days=i % 900),
        )
        for i in range(total)
    )
    settings.PACS_QUERY_MAX_MATCHES = total * 2
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "MANY"
    ds.StudyInstanceUID = ""
    ae = AE(ae_title="WS")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", listener, ae_title="TSCAT_PACS")
    assert assoc.is_established
    responses = assoc.send_c_find(ds, FIND)
    status, _identifier = next(responses)
    assert status.Status == 0xFF00
    assoc.abort()

    def audited() -> AuditEvent | None:
        return AuditEvent.objects.filter(action="dicom.query").first()

    event = wait_until(audited, what="the C-FIND's audit event")
    assert event.detail.get("ended") is True and event.outcome == AuditEvent.Outcome.WARNING
    assert 1 <= event.detail["matches"] < total
    assert len(event.detail["studies"]) == 20
