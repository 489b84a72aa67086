"""Modality Worklist C-FIND answered from the CUP bookings, over real associations
to the in-process listener (TS-CAT, AE title TSCAT_PACS)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from archive.dicomnet.listener import worklist_source_register
from archive.models import Patient
from booking import services
from booking.models import Booking
from booking.worklist import CODING_SCHEME_DESIGNATOR, worklist_find
from kernel.models import AuditEvent
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup

MWL = ModalityWorklistInformationFind

SPS_KEYS = (
    "ScheduledStationAETitle",
    "ScheduledStationName",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
    "ScheduledProtocolCodeSequence",
    "ScheduledPerformingPhysicianName",
)
TOP_KEYS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence",
    "ReferringPhysicianName",
    "ReasonForTheRequestedProcedure",
)


def identifier(sps: dict[str, object] | None = None, **keys: object) -> Dataset:
    """A worklist identifier asking for every key, with ``keys`` and ``sps`` as matching values."""
    ds = Dataset()
    for keyword in TOP_KEYS:
        setattr(ds, keyword, [] if keyword.endswith("Sequence") else "")
    item = Dataset()
    for keyword in SPS_KEYS:
        setattr(item, keyword, [] if keyword.endswith("Sequence") else "")
    for keyword, value in (sps or {}).items():
        setattr(item, keyword, value)
    ds.ScheduledProcedureStepSequence = [item]
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def mwl_find(port: int, ds: Dataset, *, calling_ae: str = "CT01") -> tuple[list[Dataset], Dataset]:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", port, ae_title="TSCAT_PACS")
    assert assoc.is_established
    try:
        results, final = [], None
        for status, answer in assoc.send_c_find(ds, MWL):
            assert status is not None, "no response"
            if status.Status in (0xFF00, 0xFF01):
                results.append(answer)
            else:
                final = status
        assert final is not None
        return results, final
    finally:
        assoc.release()


def accessions(results: list[Dataset]) -> list[str]:
    return [str(ds.AccessionNumber) for ds in results]


def day(days: int) -> str:
    return (timezone.localdate() + dt.timedelta(days=days)).strftime("%Y%m%d")


def slot(cup: Cup, station, days: int, index: int = 0) -> dt.datetime:  # type: ignore[no-untyped-def]
    return services.station_slots(station=station, day=timezone.localdate() + dt.timedelta(days=days))[index]


# --- what an answer holds -----------------------------------------------------------------


def test_an_answer_carries_the_patient_the_request_and_the_scheduled_step(listener: int, cup: Cup, settings) -> None:  # type: ignore[no-untyped-def]
    booking = cup.book(
        cup.mario,
        when=slot(cup, cup.ct_station, 2, 3),
        referring_physician="VERDI^GIUSEPPE",
        clinical_question="Tosse persistente da tre settimane,\nex fumatore. " + "Controllo. " * 10,
    )
    results, final = mwl_find(listener, identifier())
    assert final.Status == 0x0000
    (ds,) = results
    assert ds.PatientName == "ROSSI^MARIO"
    assert ds.PatientID == MARIO_CF
    assert ds.IssuerOfPatientID == settings.PACS_PATIENT_ID_ISSUER
    assert ds.PatientBirthDate == "19560312" and ds.PatientSex == "M"
    assert ds.AccessionNumber == booking.accession_number
    assert ds.StudyInstanceUID == booking.study_instance_uid
    assert ds.RequestedProcedureID == booking.accession_number
    assert ds.RequestedProcedureDescription == "TC torace senza mdc"
    (code,) = ds.RequestedProcedureCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "87.41",
        CODING_SCHEME_DESIGNATOR,
        "TC torace senza mdc",
    )
    assert ds.ReferringPhysicianName == "VERDI^GIUSEPPE"
    reason = ds.ReasonForTheRequestedProcedure
    assert len(reason) <= 64 and reason.startswith("Tosse persistente da tre settimane, ex fumatore.")
    (step,) = ds.ScheduledProcedureStepSequence
    assert step.ScheduledStationAETitle == "CT01" and step.ScheduledStationName == "TC 1"
    # Local time (Europe/Rome): the slot the CUP booked, 08:00 + 3 x 20 minutes.
    assert step.ScheduledProcedureStepStartDate == day(2)
    assert step.ScheduledProcedureStepStartTime == "090000"
    assert step.Modality == "CT"
    assert step.ScheduledProcedureStepID == booking.accession_number
    assert step.ScheduledProcedureStepDescription == "TC torace senza mdc"
    assert step.ScheduledProtocolCodeSequence[0].CodeValue == "87.41"
    assert step.ScheduledPerformingPhysicianName == ""
    # Only what was asked for: no key the SCU did not request.
    assert "ScheduledProcedureStepStatus" not in step and "SpecificCharacterSet" not in ds


def test_every_requested_key_is_returned_even_without_a_value(listener: int, cup: Cup) -> None:
    cup.laura.birth_date = None
    cup.laura.save()
    cup.book(cup.laura)
    ds = identifier(PatientWeight="", AdmittingDiagnosesDescription="")
    results, _final = mwl_find(listener, ds)
    (answer,) = results
    for keyword in [*TOP_KEYS, "PatientWeight", "AdmittingDiagnosesDescription"]:
        assert keyword in answer, keyword
    assert answer.PatientBirthDate == "" and answer.ReferringPhysicianName == ""
    assert answer.PatientWeight is None


def test_an_empty_scheduled_step_sequence_returns_the_whole_item(listener: int, cup: Cup) -> None:
    cup.book()
    ds = Dataset()
    ds.PatientID = ""
    ds.ScheduledProcedureStepSequence = []
    results, _final = mwl_find(listener, ds)
    (step,) = results[0].ScheduledProcedureStepSequence
    assert step.ScheduledStationAETitle == "CT01" and step.ScheduledProcedureStepStatus == "SCHEDULED"
    assert step.ScheduledProtocolCodeSequence[0].CodingSchemeDesignator == CODING_SCHEME_DESIGNATOR


def test_an_accented_name_round_trips_in_utf8(listener: int, cup: Cup) -> None:
    patient = Patient.objects.create(
        codice_fiscale="DLLNCL80A01L424X", family_name="DELL'ORTÒ", given_name="NICOLÈ", sex="M"
    )
    booking = cup.book(patient, clinical_question="Dolore all'anca, già operato")
    ds = identifier(PatientName="DELL'ORTÒ^*")
    ds.SpecificCharacterSet = "ISO_IR 192"
    results, _final = mwl_find(listener, ds)
    (answer,) = results
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert answer.PatientName == "DELL'ORTÒ^NICOLÈ"
    assert answer.ReasonForTheRequestedProcedure == "Dolore all'anca, già operato"
    assert answer.AccessionNumber == booking.accession_number


# --- matching -----------------------------------------------------------------------------------


@pytest.fixture
def scheduled(cup: Cup) -> dict[str, Booking]:
    """Five bookings at TS-CAT: CT in 1, 2 and 4 days, MR in 2 days, a later CT in 1 day; one at Gorizia."""
    return {
        "ct1": cup.book(cup.mario, when=slot(cup, cup.ct_station, 1, 0)),  # 08:00
        "ct1_late": cup.book(cup.laura, when=slot(cup, cup.ct_station, 1, 6)),  # 10:00
        "ct2": cup.book(cup.laura, when=slot(cup, cup.ct_station, 2, 0)),
        "ct4": cup.book(cup.mario, when=slot(cup, cup.ct_station, 4, 0)),
        "mr2": cup.book(cup.mario, station=cup.mr_station, when=slot(cup, cup.mr_station, 2, 2)),  # 09:00
        "gorizia": cup.book(cup.mario, station=cup.other_ct_station),
    }


def _expect(scheduled: dict[str, Booking], *names: str) -> list[str]:
    return [scheduled[name].accession_number for name in names]


@pytest.mark.parametrize(
    ("sps", "expected"),
    [
        ({"ScheduledStationAETitle": "CT01"}, ["ct1", "ct1_late", "ct2", "ct4"]),
        ({"ScheduledStationAETitle": "MR01"}, ["mr2"]),
        ({"ScheduledStationAETitle": "?R0*"}, ["mr2"]),
        ({"ScheduledStationAETitle": "CTGO"}, []),  # another facility's station
        ({"Modality": "MR"}, ["mr2"]),
        ({"Modality": "CT", "ScheduledStationAETitle": "CT*"}, ["ct1", "ct1_late", "ct2", "ct4"]),
        ({"Modality": "US"}, []),
        ({"ScheduledProcedureStepStartDate": "+2"}, ["ct2", "mr2"]),
        ({"ScheduledProcedureStepStartDate": "+1-+2"}, ["ct1", "ct1_late", "ct2", "mr2"]),
        ({"ScheduledProcedureStepStartDate": "+2-"}, ["ct2", "mr2", "ct4"]),
        ({"ScheduledProcedureStepStartDate": "-+1"}, ["ct1", "ct1_late"]),
        ({"ScheduledProcedureStepStartDate": "+1", "ScheduledProcedureStepStartTime": "0800-0900"}, ["ct1"]),
        ({"ScheduledProcedureStepStartDate": "+1", "ScheduledProcedureStepStartTime": "0930-"}, ["ct1_late"]),
        ({"ScheduledProcedureStepStartTime": "-0859"}, ["ct1", "ct2", "ct4"]),
        ({"ScheduledProcedureStepStartTime": "09"}, ["mr2"]),
        ({"ScheduledProcedureStepStartDate": "+2", "Modality": "CT"}, ["ct2"]),
        ({}, ["ct1", "ct1_late", "ct2", "mr2", "ct4"]),
    ],
)
def test_matching_on_the_scheduled_step(listener: int, scheduled, sps: dict[str, str], expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    # "+N": N days from today, in the DICOM date format.
    def dated(value: str) -> str:
        return "-".join(day(int(part)) if part else "" for part in value.split("-"))

    sps = {k: dated(v) if k == "ScheduledProcedureStepStartDate" else v for k, v in sps.items()}
    results, final = mwl_find(listener, identifier(sps))
    assert final.Status == 0x0000
    assert accessions(results) == _expect(scheduled, *expected)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientID": MARIO_CF}, ["ct1", "mr2", "ct4"]),
        ({"PatientID": LAURA_CF}, ["ct1_late", "ct2"]),
        ({"PatientID": "RSSMRA*"}, ["ct1", "mr2", "ct4"]),
        ({"PatientID": "NOBODY"}, []),
        ({"PatientName": "ROSSI^MARIO"}, ["ct1", "mr2", "ct4"]),
        ({"PatientName": "rossi^mario"}, ["ct1", "mr2", "ct4"]),
        ({"PatientName": "ROSSI^MARIO^^^"}, ["ct1", "mr2", "ct4"]),
        ({"PatientName": "bian*"}, ["ct1_late", "ct2"]),
        ({"PatientName": "B?ANCHI^L*"}, ["ct1_late", "ct2"]),
        ({"PatientName": "*"}, ["ct1", "ct1_late", "ct2", "mr2", "ct4"]),
        ({"PatientName": "ROSSI"}, []),  # single value matching is on the whole name
        ({"PatientName": "VERDI*"}, []),
    ],
)
def test_matching_on_the_patient(listener: int, scheduled, keys: dict[str, str], expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    results, _final = mwl_find(listener, identifier(**keys))
    assert accessions(results) == _expect(scheduled, *expected)


def test_matching_on_the_accession_number(listener: int, scheduled) -> None:  # type: ignore[no-untyped-def]
    wanted = scheduled["ct2"].accession_number
    results, _final = mwl_find(listener, identifier(AccessionNumber=wanted))
    assert accessions(results) == [wanted]
    results, _final = mwl_find(listener, identifier(AccessionNumber=wanted[:3] + "*"))
    assert len(results) == 5
    results, _final = mwl_find(listener, identifier(AccessionNumber="NONE"))
    assert results == []


def test_only_bookings_still_to_perform_are_listed(listener: int, scheduled, cup: Cup) -> None:  # type: ignore[no-untyped-def]
    services.booking_cancel(booking=scheduled["ct1"], user=None, reason="il paziente ha disdetto")
    services.booking_status_set(booking=scheduled["ct2"], status=Booking.Status.PERFORMED, system="test")
    services.booking_status_set(booking=scheduled["ct4"], status=Booking.Status.ARRIVED, system="test")
    results, _final = mwl_find(listener, identifier())
    assert accessions(results) == _expect(scheduled, "ct1_late", "mr2", "ct4")
    ds = identifier(AccessionNumber=scheduled["ct4"].accession_number)
    ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = ""
    (arrived,) = mwl_find(listener, ds)[0]
    assert arrived.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "ARRIVED"


def test_another_facilitys_bookings_are_never_answered(listener: int, scheduled) -> None:  # type: ignore[no-untyped-def]
    results, _final = mwl_find(listener, identifier())
    assert scheduled["gorizia"].accession_number not in accessions(results)
    results, _final = mwl_find(listener, identifier(AccessionNumber=scheduled["gorizia"].accession_number))
    assert results == []


# --- refusals, limits, the audit log -------------------------------------------------------------


def test_a_node_without_the_worklist_right_is_refused(listener: int, scheduled) -> None:  # type: ignore[no-untyped-def]
    # MODALITY may store at TS-CAT, not read its worklist.
    results, final = mwl_find(listener, identifier(), calling_ae="MODALITY")
    assert results == [] and final.Status == 0x0124
    assert "MODALITY" in final.ErrorComment
    event = AuditEvent.objects.get(action="dicom.worklist", ae_title="MODALITY")
    assert event.outcome == AuditEvent.Outcome.DENIED and event.detail["facility"] == "TS-CAT"


@pytest.mark.parametrize(
    "sps",
    [
        {"ScheduledProcedureStepStartDate": "20261231-20260101"},
        {"ScheduledProcedureStepStartDate": "2026-13-01"},
        {"ScheduledProcedureStepStartDate": "tomorrow"},
        {"ScheduledProcedureStepStartTime": "2500"},
        {"ScheduledProcedureStepStartTime": "1200-0800"},
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom, as the test SCU writes them
def test_a_malformed_key_is_refused(listener: int, scheduled, sps: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    results, final = mwl_find(listener, identifier(sps))
    assert results == [] and final.Status == 0xA900
    assert final.ErrorComment.startswith("ScheduledProcedureStepStart")
    event = AuditEvent.objects.get(action="dicom.worklist")
    assert event.outcome == AuditEvent.Outcome.FAILURE and event.detail["error"]


def test_each_query_is_audited_with_its_keys_and_count(listener: int, scheduled) -> None:  # type: ignore[no-untyped-def]
    mwl_find(listener, identifier({"Modality": "CT", "ScheduledProcedureStepStartDate": day(1)}))
    event = AuditEvent.objects.get(action="dicom.worklist")
    assert event.outcome == AuditEvent.Outcome.SUCCESS and event.ae_title == "CT01"
    assert event.detail["facility"] == "TS-CAT" and event.detail["matches"] == 2
    assert event.detail["keys"] == {"Modality": "CT", "ScheduledProcedureStepStartDate": day(1)}


def test_the_maximum_number_of_matches(listener: int, scheduled, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_QUERY_MAX_MATCHES = 3
    results, final = mwl_find(listener, identifier())
    assert len(results) == 3
    assert final.Status == 0xA700 and "narrow" in final.ErrorComment


def test_without_a_source_or_when_it_fails_the_answer_is_unable_to_process(listener: int, scheduled) -> None:  # type: ignore[no-untyped-def]
    def broken(identifier: Dataset, **kwargs: object) -> Iterator[Dataset]:
        raise RuntimeError("boom")

    try:
        worklist_source_register(None)
        results, final = mwl_find(listener, identifier())
        assert results == [] and final.Status == 0xC000
        worklist_source_register(broken)
        results, final = mwl_find(listener, identifier())
        assert results == [] and final.Status == 0xC000 and "RuntimeError" in final.ErrorComment
    finally:
        worklist_source_register(worklist_find)


def test_c_cancel_stops_the_answer(listener: int, cup: Cup, settings) -> None:
    # Enough items that the cancel is read while answers are still queued for sending.
    total = 3000
    settings.PACS_QUERY_MAX_MATCHES = total * 2
    start = slot(cup, cup.ct_station, 1)
    Booking.objects.bulk_create(
        Booking(
            accession_number=f"BULK{i:06d}",
            study_instance_uid=generate_uid(),
            patient=cup.mario,
            facility=cup.region.facility,
            procedure=cup.ct,
            station=cup.ct_station,
            scheduled_at=start + dt.timedelta(minutes=i),
            channel=Booking.Channel.AUTHORITY_CUP,
        )
        for i in range(total)
    )
    ae = AE(ae_title="CT01")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", listener, ae_title="TSCAT_PACS")
    assert assoc.is_established
    try:
        statuses = []
        for status, _answer in assoc.send_c_find(identifier(), MWL, msg_id=9):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(9, query_model=MWL)
        assert statuses[-1] == 0xFE00, (len(statuses), hex(statuses[-1]))
        assert 1 <= len(statuses) - 1 < total
    finally:
        assoc.release()
    event = AuditEvent.objects.get(action="dicom.worklist")
    assert event.detail.get("cancelled") is True and event.outcome == AuditEvent.Outcome.WARNING


# --- wildcards: LIKE with literals, bounded (issue 15) ------------------------------------------


@pytest.mark.parametrize(
    ("keys", "sps", "expected"),
    [
        ({"PatientName": "ROSSI^MARI?"}, {}, ["ct1", "mr2", "ct4"]),
        ({"PatientName": "ROSSI^MAR?"}, {}, []),
        ({"PatientName": "**ROSSI****"}, {}, ["ct1", "mr2", "ct4"]),
        ({"PatientName": "*SS*^*RIO"}, {}, ["ct1", "mr2", "ct4"]),
        ({"PatientName": "*" * 50}, {}, ["ct1", "ct1_late", "ct2", "mr2", "ct4"]),
        ({"PatientID": "RSSMRA**"}, {}, ["ct1", "mr2", "ct4"]),
        ({"PatientID": "?SSMRA*"}, {}, ["ct1", "mr2", "ct4"]),
        # Only person names ignore case: a lower-case AE title or PatientID matches nothing.
        ({"PatientID": "rssmra*"}, {}, []),
        ({}, {"ScheduledStationAETitle": "ct0*"}, []),
        ({}, {"ScheduledStationAETitle": "?T0?"}, ["ct1", "ct1_late", "ct2", "ct4"]),
        ({}, {"Modality": "?R"}, ["mr2"]),
    ],
)
def test_wildcards_on_the_worklist(listener: int, scheduled, keys, sps, expected) -> None:  # type: ignore[no-untyped-def]
    results, final = mwl_find(listener, identifier(sps, **keys))
    assert final.Status == 0x0000
    assert accessions(results) == _expect(scheduled, *expected)


def test_underscore_and_percent_in_a_name_are_literals(listener: int, cup: Cup) -> None:
    names = ("DE_LUCA", "DEXLUCA", "50%SCONTO", "50XSCONTO")
    codes = ("BNCNNA80A41L424C", "BNCNNA80A42L424H", "BNCNNA80A43L424J", "BNCNNA80A44L424L")
    people = {
        name: Patient.objects.create(codice_fiscale=code, family_name=name, given_name="ANNA", sex="F")
        for name, code in zip(names, codes, strict=True)
    }
    booked = {name: cup.book(patient).accession_number for name, patient in people.items()}
    assert accessions(mwl_find(listener, identifier(PatientName="de_l*"))[0]) == [booked["DE_LUCA"]]
    assert accessions(mwl_find(listener, identifier(PatientName="*%S*"))[0]) == [booked["50%SCONTO"]]
    assert sorted(accessions(mwl_find(listener, identifier(PatientName="DE?LUCA^*"))[0])) == sorted(
        [booked["DE_LUCA"], booked["DEXLUCA"]]
    )


def test_an_accented_name_matches_in_lower_case_with_a_wildcard(listener: int, cup: Cup) -> None:
    patient = Patient.objects.create(
        codice_fiscale="DLLNCL80A01L424X", family_name="DELL'ORTÒ", given_name="NICOLÈ", sex="M"
    )
    booking = cup.book(patient)
    # Without case nor accents (archive.person_names), exact values too.
    for key in ("dell'ortò^*", "dell'orto^nicole", "DELL'ORTO*", "*^nicolè"):
        ds = identifier(PatientName=key)
        ds.SpecificCharacterSet = "ISO_IR 192"
        assert accessions(mwl_find(listener, ds)[0]) == [booking.accession_number], key
    # A name corrected at the desk is matched by its new spelling.
    patient.given_name = "NICOLÒ"
    patient.save()
    ds = identifier(PatientName="dell'orto^nicolo")
    assert accessions(mwl_find(listener, ds)[0]) == [booking.accession_number]


@pytest.mark.parametrize(
    ("keys", "sps", "comment"),
    [
        ({"PatientName": "*A" * 11}, {}, "PatientName: 11 wildcards, at most 10"),
        ({"PatientName": "*A" * 40}, {}, "PatientName: more than 64 characters"),
        ({"PatientID": "R" * 65}, {}, "PatientID: more than 64 characters (LO)"),
        ({}, {"ScheduledStationAETitle": "C" * 17}, "ScheduledStationAETitle: more than 16 characters (AE)"),
    ],
)
@pytest.mark.filterwarnings("ignore:The PN component length", "ignore:The value length")
def test_too_many_wildcards_or_too_long_a_value_is_refused(listener: int, scheduled, keys, sps, comment) -> None:  # type: ignore[no-untyped-def]
    results, final = mwl_find(listener, identifier(sps, **keys))
    assert results == [] and final.Status == 0xA900
    assert final.ErrorComment.startswith(comment)
