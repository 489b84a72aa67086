"""The DIMSE access matrix: every service the listener offers × who calls × which study.

The services are read from the listener's supported presentation contexts (and,
for C-FIND, the levels of each information model), not written here: a service
added to the listener without a decision in :data:`DECISIONS` fails
:func:`test_every_service_of_the_listener_has_a_decision` and its own row.

Who calls (each over a real association to the in-process listener, with
``PACS_DICOM_ACCEPT_UNKNOWN_AE`` on, as ``make run`` has it):

* ``registered``: a node of TS-CAT (facility scope) calling from its address;
* ``spoofed``: the same AE title calling from another address (127.0.0.2);
* ``unknown``: an AE title nobody registered (let in by the demo flag);
* ``other_authority``: a node of Udine (another health authority), authority scope;
* ``authority_scope``, ``region_scope``: nodes of TS-CAT with a wider scope.

Which study: ``visible`` (TS-CAT), ``hidden`` (TS-CAT, the same patient,
concealed), ``other_facility`` (Gorizia, same authority), ``other_authority``
(Udine).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from archive.dicomnet.listener import build_ae, start_listener, stop_listener
from archive.ingest import instance_ingest
from archive.models import Facility, HealthAuthority, RemoteNode, Study
from archive.query import ROOT_LEVELS
from archive.sample_data import PatientInfo, write_study
from tests.conftest import Region, free_port

pytestmark = pytest.mark.slow  # about a hundred associations

STUDIES = ("visible", "hidden", "other_facility", "other_authority")
# The patient of each study: "visible" and "hidden" are the same person's.
PATIENT_OF = {"visible": "PA", "hidden": "PA", "other_facility": "PB", "other_authority": "PC"}

# What each principal may see (C-FIND at every level and in both models,
# C-MOVE, C-GET). Never a concealed study; a node's scope bounds the rest.
SEES: dict[str, set[str]] = {
    "registered": {"visible"},
    "authority_scope": {"visible", "other_facility"},
    "region_scope": {"visible", "other_facility", "other_authority"},
    "other_authority": {"other_authority"},
}
# Associates (the demo flag), may echo and store, every read refused (0x0124).
REFUSED = {"unknown"}
# Not associated at all: A-ASSOCIATE-RJ.
REJECTED = {"spoofed"}
PRINCIPALS = sorted([*SEES, *REFUSED, *REJECTED])

FIND_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: "patient",
    StudyRootQueryRetrieveInformationModelFind: "study",
}
MOVE_MODELS = {
    PatientRootQueryRetrieveInformationModelMove: "patient",
    StudyRootQueryRetrieveInformationModelMove: "study",
}
GET_MODELS = {
    PatientRootQueryRetrieveInformationModelGet: "patient",
    StudyRootQueryRetrieveInformationModelGet: "study",
}
STORAGE = {cx.abstract_syntax for cx in AllStoragePresentationContexts}
MPPS = "1.2.840.10008.3.1.2.3.3"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


def listener_services() -> list[str]:
    """Every service the listener negotiates, one name per decision to take."""
    services = set()
    for cx in build_ae("MATRIX").supported_contexts:
        uid = cx.abstract_syntax
        if uid == Verification:
            services.add("C-ECHO")
        elif uid in STORAGE:
            services.add("C-STORE")
        elif uid in FIND_MODELS:
            services.update(f"C-FIND {FIND_MODELS[uid]} {level}" for level in ROOT_LEVELS[FIND_MODELS[uid]])
        elif uid in MOVE_MODELS:
            services.add(f"C-MOVE {MOVE_MODELS[uid]}")
        elif uid in GET_MODELS:
            services.add(f"C-GET {GET_MODELS[uid]}")
        elif uid == ModalityWorklistInformationFind:
            services.add("MWL")
        elif uid == MPPS:
            services.add("MPPS")
        elif uid == STORAGE_COMMITMENT:
            services.add("Storage Commitment")
        else:
            services.add(f"undecided {uid}")
    return sorted(services)


# --- the world --------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    calling_ae: str
    called_ae: str = "TSCAT_PACS"
    source: str = "127.0.0.1"


CALLERS = {
    "registered": Caller("REGNODE"),
    "spoofed": Caller("REGNODE", source="127.0.0.2"),
    "unknown": Caller("STRANGER"),
    "other_authority": Caller("UDNODE", called_ae="UDINE_PACS"),
    "authority_scope": Caller("AUTHNODE"),
    "region_scope": Caller("REGIONNODE"),
}


@dataclass
class World:
    port: int
    study_uids: dict[str, str]  # label -> StudyInstanceUID
    sop_label: dict[str, str]  # SOPInstanceUID -> study label
    patient_ids: dict[str, str]  # DICOM PatientID -> patient label
    files: dict[str, Path]
    destination: Destination
    tmp_path: Path


@dataclass
class Destination:
    """A storage SCP registered as the retrieve destination DEST of TS-CAT and Udine."""

    port: int
    received: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def destination() -> Iterator[Destination]:
    dest = Destination(port=free_port())

    def on_store(event):  # type: ignore[no-untyped-def]
        with dest.lock:
            dest.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="DEST")
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(("127.0.0.1", dest.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield dest
    finally:
        server.shutdown()


@pytest.fixture
def world(  # type: ignore[no-untyped-def]
    transactional_db, region: Region, settings, tmp_path: Path, destination: Destination
) -> Iterator[World]:
    asufc = HealthAuthority.objects.create(code="ASUFC", name="Azienda sanitaria universitaria Friuli Centrale")
    udine = Facility.objects.create(
        code="UD-SMM", name="Ospedale di Udine", authority=asufc, ae_title="UDINE_PACS", dicom_port=11114
    )
    rights = dict(can_store=True, can_query=True, can_retrieve=True, can_worklist=True)
    for ae_title, facility, scope in (
        ("REGNODE", region.facility, RemoteNode.Scope.FACILITY),
        ("AUTHNODE", region.facility, RemoteNode.Scope.AUTHORITY),
        ("REGIONNODE", region.facility, RemoteNode.Scope.REGION),
        ("UDNODE", udine, RemoteNode.Scope.AUTHORITY),
    ):
        RemoteNode.objects.create(
            facility=facility, ae_title=ae_title, host="127.0.0.1", port=104, scope=scope, **rights
        )
    for facility in (region.facility, udine):
        RemoteNode.objects.create(
            facility=facility, ae_title="DEST", host="127.0.0.1", port=destination.port, is_retrieve_destination=True
        )

    where = {
        "visible": region.facility,
        "hidden": region.facility,
        "other_facility": region.other_facility,
        "other_authority": udine,
    }
    study_uids, sop_label, patient_ids, files = {}, {}, {}, {}
    for label in STUDIES:
        patient_id = f"MRN-{PATIENT_OF[label]}"
        patient_ids[patient_id] = PATIENT_OF[label]
        (path,) = write_study(
            tmp_path / label,
            patient=PatientInfo(patient_id=patient_id, name=f"PAZIENTE^{PATIENT_OF[label]}", birth_date="19700101"),
            series=1,
            instances_per_series=1,
            study_date=dt.date(2024, 1, 1 + STUDIES.index(label)),
        )
        instance_ingest(path=path, facility=where[label], owned=False)
        ds = dcmread(path, stop_before_pixels=True)
        study_uids[label], sop_label[str(ds.SOPInstanceUID)], files[label] = str(ds.StudyInstanceUID), label, path
    from portal.oscuramento import conceal

    hidden = Study.objects.get(study_instance_uid=study_uids["hidden"])
    conceal(patient=hidden.patient, study=hidden)

    settings.PACS_DICOM_ACCEPT_UNKNOWN_AE = True
    server = start_listener(host="127.0.0.1", port=0)
    try:
        yield World(
            port=int(server.server_address[1]),
            study_uids=study_uids,
            sop_label=sop_label,
            patient_ids=patient_ids,
            files=files,
            destination=destination,
            tmp_path=tmp_path,
        )
    finally:
        stop_listener(server, grace=0.0)


# --- calling each service -----------------------------------------------------------

REJECTED_OUTCOME = "rejected"
REFUSED_OUTCOME = "refused"


def _associate(world: World, caller: Caller, *contexts: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=caller.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for cx in contexts:
        ae.add_requested_context(cx)
    return ae.associate("127.0.0.1", world.port, ae_title=caller.called_ae, bind_address=(caller.source, 0), **kwargs)


def _final(responses: list[tuple[Dataset, Any]]) -> int:
    return int(responses[-1][0].Status)


def call_echo(world: World, caller: Caller) -> Any:
    assoc = _associate(world, caller, Verification)
    if not assoc.is_established:
        return REJECTED_OUTCOME
    try:
        return "success" if assoc.send_c_echo().Status == 0x0000 else "failed"
    finally:
        assoc.release()


def call_store(world: World, caller: Caller) -> Any:
    ds = dcmread(world.files["visible"])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    assoc = _associate(world, caller, CTImageStorage)
    if not assoc.is_established:
        return REJECTED_OUTCOME
    try:
        status = assoc.send_c_store(ds).Status
    finally:
        assoc.release()
    if status != 0x0000:
        return f"status 0x{status:04X}"
    return "stored" if Study.objects.filter(study_instance_uid=ds.StudyInstanceUID).exists() else "lost"


def call_find(world: World, caller: Caller, model: str, level: str) -> Any:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    if level == "PATIENT":
        ds.PatientID = ""
        ds.NumberOfPatientRelatedStudies = ""
    else:
        ds.StudyInstanceUID = ""
        if level in ("SERIES", "IMAGE"):
            ds.SeriesInstanceUID = ""
        if level == "IMAGE":
            ds.SOPInstanceUID = ""
    assoc = _associate(world, caller, model)
    if not assoc.is_established:
        return REJECTED_OUTCOME
    try:
        responses = list(assoc.send_c_find(ds, model))
    finally:
        assoc.release()
    if _final(responses) == 0x0124:
        return REFUSED_OUTCOME
    assert _final(responses) == 0x0000, hex(_final(responses))
    matches = [identifier for status, identifier in responses if status.Status == 0xFF00]
    if level == "PATIENT":
        return {world.patient_ids[str(m.PatientID)]: int(m.NumberOfPatientRelatedStudies) for m in matches}
    labels = {uid: label for label, uid in world.study_uids.items()}
    return {labels[str(m.StudyInstanceUID)] for m in matches if str(m.StudyInstanceUID) in labels}


def _retrieve_identifier(world: World) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    # Every study of the matrix asked for at once (a UID list): what comes is what may.
    ds.StudyInstanceUID = [world.study_uids[label] for label in STUDIES]
    return ds


def call_move(world: World, caller: Caller, model: str) -> Any:
    world.destination.received.clear()
    assoc = _associate(world, caller, model)
    if not assoc.is_established:
        return REJECTED_OUTCOME
    try:
        responses = list(assoc.send_c_move(_retrieve_identifier(world), "DEST", model))
    finally:
        assoc.release()
    if _final(responses) == 0x0124:
        return REFUSED_OUTCOME
    assert _final(responses) == 0x0000, hex(_final(responses))
    return {world.sop_label[uid] for uid in world.destination.received if uid in world.sop_label}


def call_get(world: World, caller: Caller, model: str) -> Any:
    received: list[str] = []

    def on_store(event):  # type: ignore[no-untyped-def]
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae_contexts = [model, CTImageStorage]
    assoc = _associate(
        world,
        caller,
        *ae_contexts,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        return REJECTED_OUTCOME
    try:
        responses = list(assoc.send_c_get(_retrieve_identifier(world), model))
    finally:
        assoc.release()
    if _final(responses) == 0x0124:
        return REFUSED_OUTCOME
    assert _final(responses) == 0x0000, hex(_final(responses))
    return {world.sop_label[uid] for uid in received if uid in world.sop_label}


def call_worklist(world: World, caller: Caller) -> Any:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledStationAETitle = ""
    ds.ScheduledProcedureStepSequence = [sps]
    assoc = _associate(world, caller, ModalityWorklistInformationFind)
    if not assoc.is_established:
        return REJECTED_OUTCOME
    try:
        responses = list(assoc.send_c_find(ds, ModalityWorklistInformationFind))
    finally:
        assoc.release()
    if _final(responses) == 0x0124:
        return REFUSED_OUTCOME
    assert _final(responses) == 0x0000, hex(_final(responses))
    return Counter(str(identifier.AccessionNumber)[:3] for status, identifier in responses if status.Status == 0xFF00)


def call_mpps(world: World, caller: Caller) -> Any:
    """An N-CREATE of a procedure step and its N-SET COMPLETED; "performed" when both succeed."""
    from archive.models import PerformedProcedureStep
    from tests.mpps_helpers import completed_attributes, create_attributes

    assoc = _associate(world, caller, MPPS)
    if not assoc.is_established:
        return REJECTED_OUTCOME
    uid = generate_uid()
    try:
        created, _ = assoc.send_n_create(create_attributes(station=caller.calling_ae), MPPS, uid)
        completed, _ = assoc.send_n_set(completed_attributes(), MPPS, uid)
    finally:
        assoc.release()
    if created.Status == 0x0124 and completed.Status == 0x0124:
        assert not PerformedProcedureStep.objects.filter(sop_instance_uid=uid).exists()
        return REFUSED_OUTCOME
    assert (created.Status, completed.Status) == (0x0000, 0x0000), (hex(created.Status), hex(completed.Status))
    return PerformedProcedureStep.objects.get(sop_instance_uid=uid).status


def call_commitment(world: World, caller: Caller) -> Any:
    """An N-ACTION asking commitment of every study's instance; the studies whose instance the
    N-EVENT-REPORT (on the same association) commits. The others fail as no such instance."""
    reports: list[Dataset] = []

    def on_report(event: Any) -> tuple[int, None]:
        reports.append(event.event_information)
        return 0x0000, None

    assoc = _associate(world, caller, STORAGE_COMMITMENT, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    if not assoc.is_established:
        return REJECTED_OUTCOME
    information = Dataset()
    information.TransactionUID = generate_uid()
    items = []
    for label in STUDIES:
        ds = dcmread(world.files[label], stop_before_pixels=True)
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(item)
    information.ReferencedSOPSequence = items
    try:
        status, _ = assoc.send_n_action(information, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        if status.Status == 0x0124:
            return REFUSED_OUTCOME
        assert status.Status == 0x0000, hex(status.Status)
        answered = threading.Event()
        for _ in range(400):
            if reports:
                break
            answered.wait(0.05)
    finally:
        assoc.release()
    assert reports, "no N-EVENT-REPORT on the association"
    committed = {world.sop_label[str(i.ReferencedSOPInstanceUID)] for i in reports[0].get("ReferencedSOPSequence", [])}
    failed = {
        world.sop_label[str(i.ReferencedSOPInstanceUID)]: int(i.FailureReason)
        for i in reports[0].get("FailedSOPSequence", [])
    }
    assert committed | set(failed) == set(STUDIES) and not committed & set(failed)
    assert set(failed.values()) <= {0x0112}, failed  # not archived for this node: never why
    return committed


# --- the decisions --------------------------------------------------------------------


def _sees(principal: str) -> Any:
    if principal in REJECTED:
        return REJECTED_OUTCOME
    if principal in REFUSED:
        return REFUSED_OUTCOME
    return SEES[principal]


def _patients_counted(principal: str) -> Any:
    """At the PATIENT level: each patient with the number of their studies the principal sees."""
    seen = _sees(principal)
    if not isinstance(seen, set):
        return seen
    return dict(Counter(PATIENT_OF[label] for label in seen))


def _associated(outcome: str) -> Callable[[str], Any]:
    return lambda principal: REJECTED_OUTCOME if principal in REJECTED else outcome


def _worklist(principal: str) -> Any:
    """The called facility's bookings, whatever the node's scope: one at TS-CAT
    (accession prefix TSC) for TS-CAT's nodes, none at Udine."""
    if principal in REJECTED:
        return REJECTED_OUTCOME
    if principal in REFUSED:
        return REFUSED_OUTCOME
    return Counter() if CALLERS[principal].called_ae == "UDINE_PACS" else Counter({"TSC": 1})


@dataclass(frozen=True)
class Decision:
    call: Callable[[World, Caller], Any]
    expected: Callable[[str], Any]
    needs_bookings: bool = False


def _find(model: str, level: str) -> Decision:
    expected = _patients_counted if level == "PATIENT" else _sees
    return Decision(lambda w, c: call_find(w, c, model, level), expected)


DECISIONS: dict[str, Decision] = {
    "C-ECHO": Decision(call_echo, _associated("success")),
    # The demo flag lets an unknown AE store; a spoofed AE title does not associate.
    "C-STORE": Decision(call_store, _associated("stored")),
    **{f"C-FIND {root} {level}": _find(uid, level) for uid, root in FIND_MODELS.items() for level in ROOT_LEVELS[root]},
    **{f"C-MOVE {root}": Decision(lambda w, c, m=uid: call_move(w, c, m), _sees) for uid, root in MOVE_MODELS.items()},
    **{f"C-GET {root}": Decision(lambda w, c, m=uid: call_get(w, c, m), _sees) for uid, root in GET_MODELS.items()},
    "MWL": Decision(call_worklist, _worklist, needs_bookings=True),
    # A registered node that may read the worklist reports its steps; an unknown AE may not.
    "MPPS": Decision(
        call_mpps, lambda p: REJECTED_OUTCOME if p in REJECTED else REFUSED_OUTCOME if p in REFUSED else "COMPLETED"
    ),
    # A node commits only what it may see: the concealed study and those out of its scope are
    # "no such instance"; an unknown AE may store (the demo flag) but not ask for commitment.
    "Storage Commitment": Decision(call_commitment, _sees),
}


def test_every_service_of_the_listener_has_a_decision() -> None:
    services = listener_services()
    assert not [s for s in services if s.startswith("undecided")], "a service the matrix does not know"
    assert set(services) == set(DECISIONS)


@pytest.mark.parametrize("service", listener_services())
def test_dimse_access_matrix(service: str, world: World, request: pytest.FixtureRequest) -> None:
    decision = DECISIONS.get(service)
    assert decision is not None, f"{service}: the listener offers it and the matrix has no decision for it"
    if decision.needs_bookings:
        from booking.models import Booking

        cup = request.getfixturevalue("cup")
        cup.book(cup.mario)  # at TS-CAT
        cup.book(cup.mario, station=cup.other_ct_station)  # at Gorizia: never answered to TS-CAT
        assert Booking.objects.count() == 2
    actual = {principal: decision.call(world, CALLERS[principal]) for principal in PRINCIPALS}
    expected = {principal: decision.expected(principal) for principal in PRINCIPALS}
    assert actual == expected
    if isinstance(next(iter(expected.values())), set):
        # Spelled out per principal × study, so that the decision is the one meant:
        # no principal sees the hidden study, in any service.
        for principal, seen in actual.items():
            if isinstance(seen, set):
                assert "hidden" not in seen, principal


from tests.booking.conftest import cup as cup  # noqa: E402,F401  (the MWL rows need bookings)
