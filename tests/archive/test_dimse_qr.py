"""C-FIND, C-MOVE and C-GET over real associations to the in-process listener."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from archive.dicom import _body_offset
from archive.ingest import instance_ingest
from archive.models import Copy, Instance, Patient, RemoteNode, Study
from archive.sample_data import PatientInfo, write_study
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests.conftest import free_port

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet


@dataclass
class Stored:
    study_uid: str
    files: dict[str, Path]  # SOPInstanceUID -> the file as sent


@pytest.fixture(autouse=True)
def workstation(region) -> None:  # type: ignore[no-untyped-def]
    """WS: a reporting workstation of TS-CAT that may query and retrieve."""
    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )


@pytest.fixture
def stored(region, tmp_path: Path) -> Stored:  # type: ignore[no-untyped-def]
    """A CT study (2 series x 3) archived at TS-CAT."""
    patient = PatientInfo(patient_id="MRN0001", name="ROSSI^MARIO", birth_date="19560312", sex="M")
    paths = write_study(
        tmp_path / "ct", patient=patient, series=2, instances_per_series=3, study_date=dt.date(2024, 3, 1)
    )
    files = {}
    for path in paths:
        instance_ingest(path=path, facility=region.facility, owned=False)
        files[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return Stored(study_uid=str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), files=files)


def _body(data: bytes) -> bytes:
    return data[_body_offset(data) :]


def _received(event) -> bytes:  # type: ignore[no-untyped-def]
    """The data set bytes a C-STORE brought to a test SCP in this process: pynetdicom's
    own, whether or not a listener ran here before (the listener changes nothing of it)."""
    return bytes(event.encoded_dataset(include_meta=False))


def _assoc(port: int, contexts: list, *, calling_ae: str = "WS", **kwargs):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for cx in contexts:
        ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", port, ae_title="TSCAT_PACS", **kwargs)
    assert assoc.is_established
    return assoc


def c_find(port: int, level: str, model=FIND, calling_ae: str = "WS", **keys: object) -> tuple[list[Dataset], Dataset]:  # type: ignore[no-untyped-def]
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    assoc = _assoc(port, [model], calling_ae=calling_ae)
    try:
        results, final = [], None
        for status, identifier in assoc.send_c_find(ds, model):
            assert status is not None, "no response"
            if status.Status in (0xFF00, 0xFF01):
                results.append(identifier)
            else:
                final = status
        return results, final
    finally:
        assoc.release()


@pytest.mark.plain_too
def test_find_each_level(listener: int, stored: Stored) -> None:
    studies, final = c_find(listener, "STUDY", PatientName="rossi*", StudyDate="20240101-", StudyInstanceUID="")
    assert final.Status == 0x0000
    assert [str(s.StudyInstanceUID) for s in studies] == [stored.study_uid]
    assert studies[0].QueryRetrieveLevel == "STUDY"
    assert studies[0].RetrieveAETitle == "TSCAT_PACS"

    series, _ = c_find(
        listener, "SERIES", StudyInstanceUID=stored.study_uid, SeriesInstanceUID="", NumberOfSeriesRelatedInstances=""
    )
    assert len(series) == 2 and {int(s.NumberOfSeriesRelatedInstances) for s in series} == {3}

    images, _ = c_find(listener, "IMAGE", SeriesInstanceUID=series[0].SeriesInstanceUID, SOPInstanceUID="")
    assert {str(i.SOPInstanceUID) for i in images} <= set(stored.files) and len(images) == 3

    patients, final = c_find(
        listener,
        "PATIENT",
        model=PatientRootQueryRetrieveInformationModelFind,
        PatientID="MRN0001",
        PatientName="",
        NumberOfPatientRelatedInstances="",
    )
    assert final.Status == 0x0000
    assert [(str(p.PatientName), int(p.NumberOfPatientRelatedInstances)) for p in patients] == [("ROSSI^MARIO", 6)]

    event = AuditEvent.objects.filter(action="dicom.query").first()
    assert event.ae_title == "WS" and event.outcome == AuditEvent.Outcome.SUCCESS
    assert event.detail["level"] == "PATIENT" and event.detail["matches"] == 1


def test_find_answers_a_peer_with_a_small_maximum_pdu(listener: int, stored: Stored) -> None:
    """Responses that do not fit one PDU take pynetdicom's fragmenting path."""
    keys = dict(StudyInstanceUID=stored.study_uid, SeriesInstanceUID="", SeriesDescription="", Modality="")
    normal, _ = c_find(listener, "SERIES", **keys)
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    assoc = _assoc(listener, [FIND], max_pdu=128)
    try:
        small = [identifier for status, identifier in assoc.send_c_find(ds, FIND) if status.Status == 0xFF00]
    finally:
        assoc.release()
    assert len(small) == 2
    assert [d.to_json_dict() for d in small] == [d.to_json_dict() for d in normal]


def test_find_with_wildcards_ranges_and_lists(listener: int, stored: Stored) -> None:
    uid = stored.study_uid
    assert len(c_find(listener, "STUDY", PatientName="R?SSI^*", StudyInstanceUID="")[0]) == 1
    assert c_find(listener, "STUDY", StudyDate="-20231231", StudyInstanceUID="")[0] == []
    assert len(c_find(listener, "STUDY", StudyInstanceUID=[uid, "1.2.3.4"])[0]) == 1


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("FRAME", {"StudyInstanceUID": ""}),
        ("STUDY", {"StudyDate": "20241231-20240101"}),
        ("PATIENT", {"PatientID": ""}),
    ],
)
def test_find_refuses_a_bad_identifier(listener: int, stored: Stored, level: str, keys: dict) -> None:
    results, final = c_find(listener, level, **keys)
    assert results == [] and final.Status == 0xA900
    assert AuditEvent.objects.filter(action="dicom.query", outcome=AuditEvent.Outcome.FAILURE).exists()


def test_find_without_the_query_right_is_refused(listener: int, stored: Stored) -> None:
    results, final = c_find(listener, "STUDY", calling_ae="STORESCU", StudyInstanceUID="")
    assert results == [] and final.Status == 0x0124
    assert AuditEvent.objects.filter(action="dicom.query", outcome=AuditEvent.Outcome.DENIED, ae_title="STORESCU")


def _many_studies(region, n: int) -> None:  # type: ignore[no-untyped-def]
    patient = Patient.objects.create(provisional=True, family_name="MOLTI")
    Study.objects.bulk_create(
        Study(
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.9.{i}",
            patient=patient,
            facility=region.facility,
            patient_name="MOLTI^STUDI",
            dicom_patient_id="MANY",
            study_date=dt.date(2020, 1, 1) + dt.timedelta(days=i % 900),
        )
        for i in range(n)
    )


def test_find_stops_at_the_maximum_number_of_matches(listener: int, region, settings) -> None:  # type: ignore[no-untyped-def]
    _many_studies(region, 12)
    settings.PACS_QUERY_MAX_MATCHES = 10
    results, final = c_find(listener, "STUDY", PatientID="MANY", StudyInstanceUID="")
    assert len(results) == 10
    assert final.Status == 0xA700 and "narrow" in final.ErrorComment


def test_c_cancel_stops_a_find(listener: int, region, settings) -> None:  # type: ignore[no-untyped-def]
    # The listener queues responses faster than the socket drains them: the
    # cancel must be read while responses are still queued for sending.
    total = 5000
    _many_studies(region, total)
    settings.PACS_QUERY_MAX_MATCHES = total * 2
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "MANY"
    ds.StudyInstanceUID = ""
    assoc = _assoc(listener, [FIND])
    try:
        responses = assoc.send_c_find(ds, FIND, msg_id=7)
        statuses = []
        for status, _identifier in responses:
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=FIND)
        assert statuses[-1] == 0xFE00, (len(statuses), hex(statuses[-1]))
        assert 1 <= len(statuses) - 1 < total
    finally:
        assoc.release()
    event = AuditEvent.objects.filter(action="dicom.query").first()
    assert event.detail.get("cancelled") is True


@dataclass
class StoreSCP:
    port: int
    ae_title: str
    received: dict[str, bytes] = field(default_factory=dict)  # SOPInstanceUID -> data set bytes
    calling: set[str] = field(default_factory=set)


@pytest.fixture
def destination(region) -> Iterator[StoreSCP]:  # type: ignore[no-untyped-def]
    """A pynetdicom storage SCP registered as TS-CAT's retrieve destination DEST."""
    scp = StoreSCP(port=free_port(), ae_title="DEST")
    lock = threading.Lock()

    def on_store(event):  # type: ignore[no-untyped-def]
        with lock:
            scp.received[str(event.request.AffectedSOPInstanceUID)] = _received(event)
            scp.calling.add(event.assoc.requestor.ae_title.strip())
        return 0x0000

    ae = AE(ae_title="DEST")
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(("127.0.0.1", scp.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    RemoteNode.objects.create(
        facility=region.facility, ae_title="DEST", host="127.0.0.1", port=scp.port, is_retrieve_destination=True
    )
    try:
        yield scp
    finally:
        server.shutdown()


def c_move(port: int, destination_ae: str, calling_ae: str = "WS", **keys: object) -> list[Dataset]:
    """The statuses of the responses; the final one carries its identifier as ``.identifier``."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    assoc = _assoc(port, [MOVE], calling_ae=calling_ae)
    try:
        responses = list(assoc.send_c_move(ds, destination_ae, MOVE))
        statuses = [status for status, _ in responses]
        statuses[-1].identifier = responses[-1][1]
        return statuses
    finally:
        assoc.release()


@pytest.mark.plain_too
def test_move_sends_the_archived_files_unchanged(listener: int, stored: Stored, destination: StoreSCP) -> None:
    responses = c_move(listener, "DEST", StudyInstanceUID=stored.study_uid)
    final = responses[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 6
    pending = [r for r in responses if r.Status == 0xFF00]
    assert pending and pending[0].NumberOfRemainingSuboperations in (5, 6)
    assert set(destination.received) == set(stored.files)
    for uid, path in stored.files.items():
        assert destination.received[uid] == _body(path.read_bytes())
    # The sub-association calls out as the facility that was asked.
    assert destination.calling == {"TSCAT_PACS"}
    event = AuditEvent.objects.get(action="dicom.retrieve")
    assert event.study.study_instance_uid == stored.study_uid and event.patient_id is not None
    assert event.detail["completed"] == 6 and event.detail["destination"] == "DEST"


def test_move_counts_failed_sub_operations(listener: int, stored: Stored, destination: StoreSCP) -> None:
    lost = Instance.objects.order_by("id").first()
    copy = Copy.objects.get(instance=lost)
    storage.absolute_path(copy.tier, copy.path).unlink()
    final = c_move(listener, "DEST", StudyInstanceUID=stored.study_uid)[-1]
    assert final.Status == 0xB000
    assert final.NumberOfFailedSuboperations == 1 and final.NumberOfCompletedSuboperations == 5
    assert lost.sop_instance_uid in final.identifier.FailedSOPInstanceUIDList
    assert AuditEvent.objects.get(action="dicom.retrieve").detail["failed"] == 1


def test_move_to_an_unknown_destination(listener: int, stored: Stored, destination: StoreSCP) -> None:
    final = c_move(listener, "NOWHERE", StudyInstanceUID=stored.study_uid)[-1]
    assert final.Status == 0xA801
    assert destination.received == {}
    assert AuditEvent.objects.get(action="dicom.retrieve").outcome == AuditEvent.Outcome.FAILURE


@pytest.mark.plain_too
def test_move_without_the_retrieve_right_is_refused(listener: int, stored: Stored, destination: StoreSCP) -> None:
    final = c_move(listener, "DEST", calling_ae="VIEWER", StudyInstanceUID=stored.study_uid)[-1]
    assert final.Status == 0x0124 and "VIEWER" in final.ErrorComment
    assert destination.received == {}
    assert AuditEvent.objects.get(action="dicom.retrieve").outcome == AuditEvent.Outcome.DENIED


def test_move_with_a_bad_identifier(listener: int, stored: Stored, destination: StoreSCP) -> None:
    final = c_move(listener, "DEST", PatientName="ROSSI*")[-1]
    assert final.Status == 0xA900 and "StudyInstanceUID" in final.ErrorComment


@pytest.mark.plain_too
def test_get_returns_the_files_on_the_same_association(listener: int, stored: Stored) -> None:
    received: dict[str, bytes] = {}

    def on_store(event):  # type: ignore[no-untyped-def]
        received[str(event.request.AffectedSOPInstanceUID)] = _received(event)
        return 0x0000

    ct = "1.2.840.10008.5.1.4.1.1.2"
    ae = AE(ae_title="WS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(GET)
    ae.add_requested_context(ct)
    assoc = ae.associate(
        "127.0.0.1",
        listener,
        ae_title="TSCAT_PACS",
        ext_neg=[build_role(ct, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = stored.study_uid
        ds.SeriesInstanceUID = str(dcmread(next(iter(stored.files.values()))).SeriesInstanceUID)
        responses = [status for status, _ in assoc.send_c_get(ds, GET)]
    finally:
        assoc.release()
    assert responses[-1].Status == 0x0000 and responses[-1].NumberOfCompletedSuboperations == 3
    assert len(received) == 3
    for uid, data in received.items():
        assert data == _body(stored.files[uid].read_bytes())
    assert AuditEvent.objects.get(action="dicom.retrieve").detail["service"] == "C-GET"


# --- the access policy: concealment and the node's scope ----------------------------


def _archive_study(tmp_path: Path, facility, patient_id: str, name: str = "ROSSI^MARIO") -> Stored:  # type: ignore[no-untyped-def]
    paths = write_study(
        tmp_path / f"{facility.code}-{patient_id}",
        patient=PatientInfo(patient_id=patient_id, name=name, birth_date="19560312", sex="M"),
        series=1,
        instances_per_series=2,
        study_date=dt.date(2024, 5, 1),
    )
    files = {}
    for path in paths:
        instance_ingest(path=path, facility=facility, owned=False)
        files[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return Stored(study_uid=str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), files=files)


def _conceal(study_uid: str) -> None:
    from portal.oscuramento import conceal

    study = Study.objects.get(study_instance_uid=study_uid)
    conceal(patient=study.patient, study=study)


PATIENT_FIND = PatientRootQueryRetrieveInformationModelFind


def _found(port: int, calling_ae: str = "WS") -> dict[str, set[str]]:
    """The study UIDs each C-FIND level answers (both roots), and at the patient level
    each patient's NumberOfPatientRelatedStudies."""
    found: dict[str, set[str]] = {}
    for model, root in ((FIND, "study"), (PATIENT_FIND, "patient")):
        for level in ("STUDY", "SERIES", "IMAGE"):
            keys = {"StudyInstanceUID": "", "SeriesInstanceUID": "", "SOPInstanceUID": ""}
            keys = dict(list(keys.items())[: ("STUDY", "SERIES", "IMAGE").index(level) + 1])
            results, final = c_find(port, level, model=model, calling_ae=calling_ae, **keys)
            assert final.Status == 0x0000
            found[f"{root}/{level}"] = {str(r.StudyInstanceUID) for r in results}
    patients, final = c_find(
        port, "PATIENT", model=PATIENT_FIND, calling_ae=calling_ae, PatientID="", NumberOfPatientRelatedStudies=""
    )
    assert final.Status == 0x0000
    found["patient/PATIENT"] = {f"{p.PatientID}:{p.NumberOfPatientRelatedStudies}" for p in patients}
    return found


def test_a_hidden_study_is_absent_from_every_find_level_and_every_count(  # type: ignore[no-untyped-def]
    listener: int, region, stored: Stored, tmp_path: Path
) -> None:
    hidden = _archive_study(tmp_path, region.facility, "MRN0001")  # the same patient's second study
    before = _found(listener)
    assert all(hidden.study_uid in uids for key, uids in before.items() if key != "patient/PATIENT")
    assert before["patient/PATIENT"] == {"MRN0001:2"}
    _conceal(hidden.study_uid)
    after = _found(listener)
    for key, uids in after.items():
        if key != "patient/PATIENT":
            assert uids == {stored.study_uid}, key
    assert after["patient/PATIENT"] == {"MRN0001:1"}


def test_a_hidden_study_is_not_retrieved(  # type: ignore[no-untyped-def]
    listener: int, region, stored: Stored, destination: StoreSCP, tmp_path: Path
) -> None:
    hidden = _archive_study(tmp_path, region.facility, "MRN0001")
    _conceal(hidden.study_uid)
    final = c_move(listener, "DEST", StudyInstanceUID=hidden.study_uid)[-1]
    assert final.Status == 0x0000 and final.get("NumberOfCompletedSuboperations", 0) == 0
    # Asked together with a visible study, only the visible one comes.
    final = c_move(listener, "DEST", StudyInstanceUID=[hidden.study_uid, stored.study_uid])[-1]
    assert final.NumberOfCompletedSuboperations == 6
    assert set(destination.received) == set(stored.files)
    got = _c_get(listener, hidden.study_uid)
    assert got == ({}, 0x0000)


def _c_get(port: int, study_uid: str, calling_ae: str = "WS") -> tuple[dict[str, bytes], int]:
    received: dict[str, bytes] = {}

    def on_store(event):  # type: ignore[no-untyped-def]
        received[str(event.request.AffectedSOPInstanceUID)] = _received(event)
        return 0x0000

    ct = "1.2.840.10008.5.1.4.1.1.2"
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(GET)
    ae.add_requested_context(ct)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="TSCAT_PACS",
        ext_neg=[build_role(ct, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study_uid
        final = [status for status, _ in assoc.send_c_get(ds, GET)][-1]
    finally:
        assoc.release()
    return received, int(final.Status)


def test_a_node_sees_its_scope_only(listener: int, region, stored: Stored, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from archive.models import Facility, HealthAuthority

    asufc = HealthAuthority.objects.create(code="ASUFC", name="Azienda sanitaria universitaria Friuli Centrale")
    udine = Facility.objects.create(
        code="UD-SMM", name="Ospedale di Udine", authority=asufc, ae_title="UDINE_PACS", dicom_port=11114
    )
    gorizia = _archive_study(tmp_path, region.other_facility, "GO0001", "BIANCHI^LAURA")
    ud = _archive_study(tmp_path, udine, "UD0001", "VERDI^ANNA")
    study_level = "study/STUDY"
    # WS: facility scope (the default).
    assert _found(listener)[study_level] == {stored.study_uid}
    RemoteNode.objects.filter(ae_title="WS").update(scope=RemoteNode.Scope.AUTHORITY)
    assert _found(listener)[study_level] == {stored.study_uid, gorizia.study_uid}
    RemoteNode.objects.filter(ae_title="WS").update(scope=RemoteNode.Scope.REGION)
    assert _found(listener)[study_level] == {stored.study_uid, gorizia.study_uid, ud.study_uid}
    # A node of another authority, even of region scope for its own, sees only its own there.
    RemoteNode.objects.create(facility=udine, ae_title="WS", host="127.0.0.1", port=104, can_query=True)
    results, _ = c_find_at(listener, "UDINE_PACS", "WS", "STUDY", StudyInstanceUID="")
    assert {str(r.StudyInstanceUID) for r in results} == {ud.study_uid}


def c_find_at(port: int, called_ae: str, calling_ae: str, level: str, **keys: object):  # type: ignore[no-untyped-def]
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_find(ds, FIND))
    finally:
        assoc.release()
    return [i for s, i in responses if s.Status == 0xFF00], responses[-1][0]


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
def test_find_audits_the_patients_it_returned(  # type: ignore[no-untyped-def]
    listener: int, region, stored: Stored, tmp_path: Path, level: str
) -> None:
    other = _archive_study(tmp_path, region.facility, "MRN0002", "BIANCHI^LAURA")
    keys = {"PATIENT": {"PatientID": ""}, "STUDY": {"StudyInstanceUID": ""}}.get(level, {"StudyInstanceUID": ""})
    results, final = c_find(listener, level, model=PATIENT_FIND, **keys)
    assert final.Status == 0x0000 and results
    expected = {
        Study.objects.get(study_instance_uid=stored.study_uid).patient_id,
        Study.objects.get(study_instance_uid=other.study_uid).patient_id,
    }
    event = AuditEvent.objects.filter(action="dicom.query").latest("id")
    assert set(event.detail["patients"]) == expected
    assert event.detail["patients_total"] == 2


@pytest.mark.plain_too
@pytest.mark.parametrize("asks_patient_id", [True, False])
def test_worklist_audits_the_patients_it_returned(listener: int, cup, asks_patient_id: bool) -> None:  # type: ignore[no-untyped-def]
    """The worklist answers demographics: its audit lists whose; a modality that did not
    ask for PatientID still gets no PatientID."""
    from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL

    cup.book(cup.mario)
    cup.book(cup.laura)
    cup.book(cup.laura, station=cup.other_ct_station)  # Gorizia's: not answered, not audited
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    if asks_patient_id:
        ds.PatientID = ""
    ae = AE(ae_title="CT01")
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", listener, ae_title="TSCAT_PACS")
    assert assoc.is_established
    try:
        answers = [i for s, i in assoc.send_c_find(ds, MWL) if s.Status == 0xFF00]
    finally:
        assoc.release()
    assert len(answers) == 2
    assert all(("PatientID" in a) == asks_patient_id for a in answers)
    event = AuditEvent.objects.get(action="dicom.worklist")
    assert sorted(event.detail["patients"]) == sorted([cup.mario.pk, cup.laura.pk])


from tests.booking.conftest import cup as cup  # noqa: E402,F401  (the worklist test's bookings)
