from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.models import Instance, Study
from archive.sample_data import COMPRESSED, CT, MR, PatientInfo, fresh_copy, write_study
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests.conftest import wait_until
from tests.dicom_client import echo, send_files


def _body(path: Path) -> bytes:
    """The data set's bytes, after the file meta (which the receiver writes itself)."""
    from archive.dicom import _body_offset

    data = path.read_bytes()
    return data[_body_offset(data) :]


@pytest.mark.plain_too
def test_echo(listener: int) -> None:
    assert echo(listener) == 0x0000


@pytest.mark.plain_too
def test_store_a_study(listener: int, ct_study: list[Path]) -> None:
    report = send_files(listener, ct_study)
    assert set(report.statuses.values()) == {0x0000}
    study = Study.objects.get()
    assert (study.number_of_series, study.number_of_instances) == (2, 6)
    for path in ct_study:
        instance = Instance.objects.get(sop_instance_uid=dcmread(path).SOPInstanceUID)
        assert instance.calling_ae == "STORESCU"
        copy = instance.copies.get()
        assert _body(storage.absolute_path(copy.tier, copy.path)) == _body(path)
    # The association's audit summary is written as its thread ends, after the release.
    event = wait_until(lambda: AuditEvent.objects.filter(action="dicom.store").first(), what="audit event")
    assert event.ae_title == "STORESCU" and event.study == study and event.patient == study.patient
    assert event.detail["stored"] == 6 and event.source.startswith("127.0.0.1:")


def test_called_ae_chooses_the_facility(listener: int, ct_study: list[Path]) -> None:
    send_files(listener, ct_study[:1], called_ae="GORIZIA_PACS")
    assert Instance.objects.get().facility.code == "GO-SG"


@pytest.mark.plain_too
def test_unknown_calling_ae_is_rejected_at_association(listener: int, ct_study: list[Path]) -> None:
    report = send_files(listener, ct_study, calling_ae="INTRUDER")
    assert report.rejected and not report.established
    assert not Instance.objects.exists()
    denied = wait_until(lambda: AuditEvent.objects.filter(action="dicom.association").first(), what="audit")
    assert denied.outcome == "denied" and denied.ae_title == "INTRUDER"
    assert "not a registered DICOM node" in denied.detail["reason"]


def test_node_of_another_facility_is_rejected(listener: int, ct_study: list[Path]) -> None:
    # MODALITY is registered at TS-CAT only.
    report = send_files(listener, ct_study, calling_ae="MODALITY", called_ae="GORIZIA_PACS")
    assert report.rejected


def test_unknown_called_ae_is_rejected(listener: int) -> None:
    assert echo(listener, called_ae="NOT_HERE") is None


def test_node_without_store_right_is_refused(listener: int, ct_study: list[Path]) -> None:
    report = send_files(listener, ct_study[:2], calling_ae="VIEWER")
    assert report.established
    assert set(report.statuses.values()) == {0x0124}
    assert not Instance.objects.exists()


def test_accept_unknown_ae_setting_opens_the_listener(transactional_db, region, settings, ct_study) -> None:  # type: ignore[no-untyped-def]
    from archive.dicomnet.listener import start_listener, stop_listener

    settings.PACS_DICOM_ACCEPT_UNKNOWN_AE = True
    server = start_listener(host="127.0.0.1", port=0)
    try:
        report = send_files(server.server_address[1], ct_study[:1], calling_ae="ANY_DEVICE")
    finally:
        stop_listener(server, grace=0)
    assert set(report.statuses.values()) == {0x0000}
    assert Instance.objects.get().calling_ae == "ANY_DEVICE"


@pytest.mark.parametrize("ts,name", sorted(COMPRESSED.items()))
def test_transfer_syntaxes_are_stored_as_received(listener: int, tmp_path: Path, patient, ts: str, name: str) -> None:  # type: ignore[no-untyped-def]
    ds = fresh_copy(name, patient=patient, study_uid=generate_uid(), series_uid=generate_uid())
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    report = send_files(listener, [path])
    assert list(report.statuses.values()) == [0x0000]
    instance = Instance.objects.get()
    assert instance.transfer_syntax_uid == ts
    copy = instance.copies.get()
    assert _body(storage.absolute_path(copy.tier, copy.path)) == _body(path)


def _broken(tmp_path: Path, patient: PatientInfo, change) -> Path:  # type: ignore[no-untyped-def]
    ds = fresh_copy(CT, patient=patient, study_uid=generate_uid(), series_uid=generate_uid())
    ds.preamble = b"\0" * 128
    change(ds)
    path = tmp_path / f"broken-{generate_uid()}.dcm"
    ds.save_as(path, enforce_file_format=False)
    return path


def test_failures_get_their_dimse_status_and_leave_nothing(listener: int, tmp_path: Path, patient) -> None:  # type: ignore[no-untyped-def]
    def no_sop_instance(ds):  # type: ignore[no-untyped-def]
        del ds.SOPInstanceUID

    def other_class(ds):  # type: ignore[no-untyped-def]
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR in a file whose meta says CT

    def bad_uid(ds):  # type: ignore[no-untyped-def]
        ds.StudyInstanceUID = "1.2.3/../../x"

    cases = {
        "no-sop-instance": (_broken(tmp_path, patient, no_sop_instance), 0xC000),
        "class-mismatch": (_broken(tmp_path, patient, other_class), 0xA900),
        "path-uid": (_broken(tmp_path, patient, bad_uid), 0xC000),
    }
    truncated = tmp_path / "truncated.dcm"
    good = _broken(tmp_path, patient, lambda ds: None)
    truncated.write_bytes(good.read_bytes()[:-5000])
    cases["truncated"] = (truncated, 0xC000)
    for name, (path, expected) in cases.items():
        report = send_files(listener, [path])
        (status,) = report.statuses.values()
        assert status == expected, name
        (comment,) = report.comments.values()
        assert comment, name
    assert not Instance.objects.exists() and not Study.objects.exists()
    assert not any(p.is_file() for p in Path(storage.absolute_path("facility:TS-CAT", ".")).rglob("*"))
    wait_until(lambda: AuditEvent.objects.filter(action="dicom.store", outcome="failure").count() == 4, what="4 audits")


def test_four_concurrent_associations(listener: int, tmp_path: Path) -> None:
    studies = [
        write_study(
            tmp_path / str(i),
            patient=PatientInfo(patient_id=f"P{i}"),
            source=MR if i % 2 else CT,
            series=2,
            instances_per_series=5,
        )
        for i in range(4)
    ]
    reports: list = [None] * 4

    def run(i: int) -> None:
        reports[i] = send_files(listener, studies[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None and set(r.statuses.values()) == {0x0000} for r in reports)
    assert Study.objects.count() == 4
    assert sorted(Study.objects.values_list("number_of_instances", flat=True)) == [10, 10, 10, 10]
    assert Instance.objects.count() == 40


@pytest.mark.plain_too
def test_data_sets_above_the_memory_limit_spill_to_disk_as_they_arrive(  # type: ignore[no-untyped-def]
    transactional_db, region, settings, ct_study, dicom_fast_paths
) -> None:
    from archive.dicomnet.listener import start_listener, stop_listener

    settings.PACS_DICOM_SPOOL_MEMORY = 4096  # a CT image is 39 KB
    server = start_listener(host="127.0.0.1", port=0)
    try:
        report = send_files(server.server_address[1], ct_study)
    finally:
        stop_listener(server, grace=0)
    assert set(report.statuses.values()) == {0x0000}
    for path in ct_study:
        copy = Instance.objects.get(sop_instance_uid=dcmread(path).SOPInstanceUID).copies.get()
        assert _body(storage.absolute_path(copy.tier, copy.path)) == _body(path)
    assert not any(p.is_file() for p in storage.incoming_dir().rglob("*"))


def test_non_storage_sop_class_gets_no_presentation_context(listener: int) -> None:
    from pynetdicom import AE

    # MPPS Retrieve (N-GET of a step): a non-storage class the listener does not serve.
    from pynetdicom.sop_class import CTImageStorage, ModalityPerformedProcedureStepRetrieve

    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ModalityPerformedProcedureStepRetrieve)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", listener, ae_title="TSCAT_PACS")
    try:
        assert assoc.is_established
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        assert ModalityPerformedProcedureStepRetrieve in rejected and CTImageStorage in accepted
    finally:
        assoc.release()


# --- node trust: registered addresses, unknown AEs ------------------------------------


def _echo_from(port: int, source: str, *, calling_ae: str = "STORESCU", called_ae: str = "TSCAT_PACS") -> int | None:
    """C-ECHO from a given loopback address (every 127.x.y.z is this machine)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, bind_address=(source, 0))
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_registered_node_is_accepted_from_its_address(listener: int) -> None:
    # STORESCU is registered with host 127.0.0.1 and no addresses: the host is its address.
    assert _echo_from(listener, "127.0.0.1") == 0x0000


def test_same_ae_title_from_another_address_is_refused_and_audited(listener: int, ct_study: list[Path]) -> None:
    assert _echo_from(listener, "127.0.0.2") is None
    denied = wait_until(lambda: AuditEvent.objects.filter(action="dicom.association").first(), what="audit")
    assert denied.outcome == "denied" and denied.ae_title == "STORESCU"
    assert denied.source.startswith("127.0.0.2:")
    assert "127.0.0.2, which is not among its registered addresses" in denied.detail["reason"]


def test_same_ae_title_from_another_address_is_refused_even_with_the_demo_flag(  # type: ignore[no-untyped-def]
    transactional_db, region, settings
) -> None:
    """The demo flag lets unknown AE titles in; a registered one from elsewhere is
    someone using the node's name, not an unknown device."""
    from archive.dicomnet.listener import start_listener, stop_listener

    settings.PACS_DICOM_ACCEPT_UNKNOWN_AE = True
    server = start_listener(host="127.0.0.1", port=0)
    try:
        port = server.server_address[1]
        assert _echo_from(port, "127.0.0.2") is None
        assert _echo_from(port, "127.0.0.2", calling_ae="NEWDEVICE") == 0x0000
        # A node switched off in the admin (no right left) is not an unknown AE either.
        from archive.models import RemoteNode

        RemoteNode.objects.filter(ae_title="STORESCU").update(can_store=False)
        assert _echo_from(port, "127.0.0.1") is None
    finally:
        stop_listener(server, grace=0)


@pytest.mark.parametrize(
    ("addresses", "accepted", "refused"),
    [
        ("127.0.0.2", ["127.0.0.2"], ["127.0.0.1", "127.0.0.3"]),
        ("127.0.0.0/30, 10.1.2.3", ["127.0.0.1", "127.0.0.2", "127.0.0.3"], ["127.0.0.4"]),
        ("localhost", ["127.0.0.1"], ["127.0.0.2"]),
    ],
)
def test_registered_addresses_are_ips_networks_and_host_names(  # type: ignore[no-untyped-def]
    listener: int, region, addresses: str, accepted: list[str], refused: list[str]
) -> None:
    from archive.models import RemoteNode

    RemoteNode.objects.filter(facility=region.facility, ae_title="STORESCU").update(addresses=addresses)
    for source in accepted:
        assert _echo_from(listener, source) == 0x0000, source
    for source in refused:
        assert _echo_from(listener, source) is None, source


def test_unknown_ae_with_the_demo_flag_may_echo_and_store_only(  # type: ignore[no-untyped-def]
    transactional_db, region, settings, ct_study
) -> None:
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import (
        ModalityWorklistInformationFind,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    )

    from archive.dicomnet.listener import start_listener, stop_listener

    settings.PACS_DICOM_ACCEPT_UNKNOWN_AE = True
    server = start_listener(host="127.0.0.1", port=0)
    try:
        port = server.server_address[1]
        assert echo(port, calling_ae="ANY_DEVICE") == 0x0000
        report = send_files(port, ct_study, calling_ae="ANY_DEVICE")
        assert set(report.statuses.values()) == {0x0000}
        study_uid = Study.objects.get().study_instance_uid

        ae = AE(ae_title="ANY_DEVICE")
        for cx in (
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelMove,
            ModalityWorklistInformationFind,
        ):
            ae.add_requested_context(cx)
        assoc = ae.associate("127.0.0.1", port, ae_title="TSCAT_PACS")
        assert assoc.is_established
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study_uid
            finds = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
            gets = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
            moves = list(assoc.send_c_move(query, "ANY_DEVICE", StudyRootQueryRetrieveInformationModelMove))
            worklist = Dataset()
            worklist.PatientName = ""
            mwl = list(assoc.send_c_find(worklist, ModalityWorklistInformationFind))
        finally:
            assoc.release()
    finally:
        stop_listener(server, grace=0)
    for name, responses in {"C-FIND": finds, "C-GET": gets, "C-MOVE": moves, "MWL": mwl}.items():
        assert [int(status.Status) for status, _ in responses] == [0x0124], name
    denied = AuditEvent.objects.filter(ae_title="ANY_DEVICE", outcome="denied")
    assert sorted(denied.values_list("action", flat=True)) == [
        "dicom.query",
        "dicom.retrieve",
        "dicom.retrieve",
        "dicom.worklist",
    ]


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "transfer_syntax"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),  # even and odd lengths
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", "1.2.840.10008.1.2"),
        (
            "1.2.840.10008.5.1.4.1.1.1.2",
            "1.2.826.0.1.3680043.8.498.78248223987126699690872944570305397463",
            "1.2.840.10008.1.2.4.90",
        ),
        ("1.2.840.10008.5.1.4.1.1.7", "9" * 64, "1.2.840.10008.1.2.5"),
        # Not plain UIDs, as a careless peer may send them: pydicom's own path.
        ("1.2.840.10008.5.1.4.1.1.2 ", "1.2.3.4\x00", "1.2.840.10008.1.2.1"),
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.abc", "1.2.840.10008.1.2.1"),
        ("1.2.840.10008.5.1.4.1.1.2", "1." + "2" * 70, "1.2.840.10008.1.2.1"),
    ],
)
def test_the_part10_header_of_a_received_data_set_is_what_pydicom_writes(
    sop_class: str, sop_instance: str, transfer_syntax: str
) -> None:
    import io

    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta

    from archive.dicomnet.listener import part10_header

    expected = io.BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(
        expected,  # type: ignore[arg-type]
        create_file_meta(
            sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance), transfer_syntax=UID(transfer_syntax)
        ),
    )
    header = part10_header(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=transfer_syntax)
    assert header == expected.getvalue()
    assert dcmread(io.BytesIO(header)).file_meta.MediaStorageSOPInstanceUID == sop_instance.rstrip("\x00 ")
