"""Storage Commitment Push Model SCP (PS3.4 J) over real loopback associations: a
pynetdicom modality stores by C-STORE, asks for commitment and receives the
N-EVENT-REPORT on its association or, as SCP with role selection, on its own port."""

from __future__ import annotations

import datetime as dt
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from archive.dicomnet import commitment
from archive.models import Copy, Instance, RemoteNode, StorageCommitment, Study
from archive.sample_data import PatientInfo, write_study
from kernel import tasknames
from kernel.models import AuditEvent
from tests.conftest import Enqueued, wait_until
from tests.dicom_client import send_files

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
MPPS = "1.2.840.10008.3.1.2.3.3"


@dataclass
class Report:
    event_type: int
    information: Dataset
    on_request_association: bool
    calling_ae: str

    def committed(self) -> list[str]:
        return [str(i.ReferencedSOPInstanceUID) for i in self.information.get("ReferencedSOPSequence", [])]

    def failed(self) -> dict[str, int]:
        return {
            str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in self.information.get("FailedSOPSequence", [])
        }


class Modality:
    """A Storage Commitment SCU that also runs an SCP for the N-EVENT-REPORT (DCMTK has none)."""

    def __init__(self, ae_title: str = "STORESCU") -> None:
        self.ae_title = ae_title
        self.reports: queue.Queue[Report] = queue.Queue()
        self.ae = AE(ae_title=ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.ae.add_requested_context(StorageCommitmentPushModel)
        # Accepts the archive's proposal to act as SCP on an association it opens (J.3.3.1.3).
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        self.server: Any = None
        self._requesting: Any = None

    def _on_report(self, event: Any) -> tuple[int, None]:
        self.reports.put(
            Report(
                event_type=int(event.event_type),
                information=event.event_information,
                on_request_association=event.assoc is self._requesting,
                calling_ae=str(event.assoc.requestor.ae_title).strip(),
            )
        )
        return 0x0000, None

    def listen(self) -> int:
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)]
        )
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def request(
        self,
        port: int,
        references: list[tuple[str, str]],
        *,
        transaction_uid: str | None = None,
        wait_report: bool = False,
        action_type: int = 1,
        information: Dataset | None = None,
    ) -> tuple[int, str]:
        """Send one N-ACTION; with ``wait_report`` keep the association until the report comes on it.
        Returns the N-ACTION status and the Transaction UID."""
        transaction_uid = transaction_uid or generate_uid()
        if information is None:
            information = Dataset()
            information.TransactionUID = transaction_uid
            items = []
            for sop_class, uid in references:
                item = Dataset()
                item.ReferencedSOPClassUID = sop_class
                item.ReferencedSOPInstanceUID = uid
                items.append(item)
            information.ReferencedSOPSequence = items
        assoc = self.ae.associate(
            "127.0.0.1", port, ae_title="TSCAT_PACS", evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)]
        )
        assert assoc.is_established
        self._requesting = assoc
        try:
            status, _reply = assoc.send_n_action(information, action_type, StorageCommitmentPushModel, WELL_KNOWN)
            if wait_report:
                wait_until(lambda: not self.reports.empty(), what="N-EVENT-REPORT on the association")
        finally:
            assoc.release()
        return int(status.Status), transaction_uid

    def report(self, timeout: float = 30.0) -> Report:
        return self.reports.get(timeout=timeout)


@pytest.fixture
def modality() -> Iterator[Modality]:
    m = Modality()
    try:
        yield m
    finally:
        m.stop()


def _references(paths: list[Path]) -> list[tuple[str, str]]:
    return [
        (str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in (dcmread(p, stop_before_pixels=True) for p in paths)
    ]


def _node_listens_on(port: int, ae_title: str = "STORESCU") -> None:
    RemoteNode.objects.filter(facility__code="TS-CAT", ae_title=ae_title).update(port=port)


def run_once(enqueued: Enqueued, name: str) -> object:
    """Run the first kept message of task ``name`` only (not what it queues again)."""
    from pacs.celery import app

    message = next(m for m in enqueued.messages if m[0] == name)
    enqueued.messages.remove(message)
    return app.tasks[name].apply(args=message[1], kwargs=message[2], throw=True).get()


def _sweep() -> object:
    from pacs.celery import app

    return app.tasks[tasknames.STORAGE_COMMITMENT_SWEEP].apply(throw=True).get()


def _stored(listener: int, paths: list[Path]) -> list[tuple[str, str]]:
    report = send_files(listener, paths)
    assert set(report.statuses.values()) == {0x0000}
    return _references(paths)


@pytest.mark.plain_too
def test_answer_on_the_same_association(
    listener: int, ct_study: list[Path], modality: Modality, dicom_fast_paths: bool
) -> None:
    refs = _stored(listener, ct_study)
    unknown = (CT_IMAGE, generate_uid())
    status, transaction_uid = modality.request(listener, [*refs, unknown], wait_report=True)
    assert status == 0x0000
    report = modality.report()
    assert report.on_request_association
    assert report.event_type == 2
    assert report.information.TransactionUID == transaction_uid
    assert report.information.RetrieveAETitle == "TSCAT_PACS"
    assert sorted(report.committed()) == sorted(uid for _c, uid in refs)
    assert report.failed() == {unknown[1]: 0x0112}
    # Recorded once the node's N-EVENT-REPORT response is back (the listener's thread).
    row = wait_until(lambda: StorageCommitment.objects.filter(state="answered").first(), what="the answer recorded")
    assert (row.answered_via, row.event_type) == ("association", 2)
    assert row.result == {"committed": 6, "failed": {unknown[1]: 0x0112}}
    patient_pk = Study.objects.get().patient_id
    request = AuditEvent.objects.get(action="dicom.commitment.request")
    assert request.ae_title == "STORESCU" and request.detail["instances"] == 7
    assert request.detail["patients"] == [patient_pk]
    answer = AuditEvent.objects.get(action="dicom.commitment.answer")
    assert answer.outcome == "warning" and answer.detail["failed"] == {"0x0112": 1}
    assert answer.detail["patients"] == [patient_pk] and answer.detail["via"] == "association"
    # The Transaction UID is no longer active: used again, it is refused.
    assert modality.request(listener, refs, transaction_uid=transaction_uid)[0] == 0x0210
    assert modality.reports.empty()


def test_all_committed_is_event_type_1(listener: int, ct_study: list[Path], modality: Modality) -> None:
    refs = _stored(listener, ct_study[:2])
    modality.request(listener, refs, wait_report=True)
    report = modality.report()
    assert report.event_type == 1 and "FailedSOPSequence" not in report.information
    assert sorted(report.committed()) == sorted(uid for _c, uid in refs)
    answer = wait_until(lambda: AuditEvent.objects.filter(action="dicom.commitment.answer").first(), what="audit")
    assert answer.outcome == "success"


def test_answer_on_a_new_association_to_the_node(  # type: ignore[no-untyped-def]
    listener: int, ct_study: list[Path], modality: Modality, enqueued: Enqueued, settings
) -> None:
    settings.PACS_STORAGE_COMMITMENT_SAME_ASSOCIATION = False
    refs = _stored(listener, ct_study[:3])
    enqueued.messages.clear()  # the post-ingest work, not ours
    _node_listens_on(modality.listen())
    unknown = (CT_IMAGE, generate_uid())
    status, transaction_uid = modality.request(listener, [*refs, unknown])
    assert status == 0x0000
    # Acknowledged and recorded; the answer is the task's.
    row = StorageCommitment.objects.get()
    assert row.state == "pending"
    assert enqueued.names() == [tasknames.STORAGE_COMMITMENT_ANSWER]
    assert enqueued.run(tasknames.STORAGE_COMMITMENT_ANSWER) == ["answered"]
    report = modality.report()
    # Called by the facility's AE title, with the archive as SCP of the SOP class.
    assert not report.on_request_association and report.calling_ae == "TSCAT_PACS"
    assert report.information.TransactionUID == transaction_uid
    assert report.event_type == 2 and report.failed() == {unknown[1]: 0x0112}
    assert sorted(report.committed()) == sorted(uid for _c, uid in refs)
    row.refresh_from_db()
    assert (row.state, row.answered_via) == ("answered", "new")


@pytest.mark.plain_too
def test_a_node_that_releases_at_once_is_answered_once(
    listener: int, ct_study: list[Path], modality: Modality, enqueued: Enqueued, dicom_fast_paths: bool
) -> None:
    refs = _stored(listener, ct_study[:2])
    enqueued.messages.clear()
    _node_listens_on(modality.listen())
    modality.request(listener, refs)  # released as soon as the N-ACTION is acknowledged
    # Either the report made it onto the association before the release, or the task takes over.
    wait_until(
        lambda: (
            StorageCommitment.objects.get().state == "answered"
            or tasknames.STORAGE_COMMITMENT_ANSWER in enqueued.names()
        ),
        what="answered or left to the task",
    )
    enqueued.run(tasknames.STORAGE_COMMITMENT_ANSWER)
    report = modality.report()
    assert report.event_type == 1
    assert StorageCommitment.objects.get().state == "answered"
    assert modality.reports.empty()
    assert AuditEvent.objects.filter(action="dicom.commitment.answer").count() == 1


def test_failure_reasons(listener: int, tmp_path: Path, ct_study: list[Path], modality: Modality) -> None:
    from portal.oscuramento import conceal

    refs = _stored(listener, ct_study)
    (ct_class, first), (_c2, second), (_c3, not_durable) = refs[0], refs[1], refs[2]
    Copy.objects.filter(instance__sop_instance_uid=not_durable).update(verified_at=None)
    # A study of another facility (the node's scope is its own facility) and a concealed one.
    elsewhere = write_study(tmp_path / "go", patient=PatientInfo(patient_id="GO1"), series=1, instances_per_series=1)
    assert set(send_files(listener, elsewhere, called_ae="GORIZIA_PACS").statuses.values()) == {0x0000}
    hidden = write_study(tmp_path / "hidden", patient=PatientInfo(patient_id="H1"), series=1, instances_per_series=1)
    (hidden_ref,) = _stored(listener, hidden)
    hidden_study = Study.objects.get(study_instance_uid=dcmread(hidden[0]).StudyInstanceUID)
    conceal(patient=hidden_study.patient, study=hidden_study)
    (elsewhere_ref,) = _references(elsewhere)
    request = [
        (ct_class, first),
        (MR_IMAGE, second),  # archived as CT
        (ct_class, not_durable),
        (MPPS, generate_uid()),  # not a storage class
        elsewhere_ref,
        hidden_ref,
    ]
    modality.request(listener, request, wait_report=True)
    report = modality.report()
    assert report.event_type == 2 and report.committed() == [first]
    assert report.failed() == {
        second: 0x0119,
        not_durable: 0x0110,
        request[3][1]: 0x0122,
        elsewhere_ref[1]: 0x0112,
        hidden_ref[1]: 0x0112,
    }
    # The audit names only the patients the node may see.
    answer = wait_until(lambda: AuditEvent.objects.filter(action="dicom.commitment.answer").first(), what="audit")
    assert answer.detail["patients"] == [
        Study.objects.get(study_instance_uid=dcmread(ct_study[0]).StudyInstanceUID).patient_id
    ]


def test_an_evicted_instance_stays_committed(  # type: ignore[no-untyped-def]
    listener: int, ct_study: list[Path], modality: Modality, settings
) -> None:
    from archive.storage import lifecycle

    refs = _stored(listener, ct_study[:2])
    settings.PACS_MIGRATE_AFTER_DAYS = 0
    settings.PACS_EVICT_AFTER_DAYS = 0
    result = lifecycle.lifecycle_run()
    assert (result.migrated, result.evicted) == (2, 2)
    modality.request(listener, refs, wait_report=True)
    assert modality.report().event_type == 1


def test_untrusted_nodes_are_refused(listener: int, ct_study: list[Path]) -> None:
    refs = _stored(listener, ct_study[:1])
    viewer = Modality("VIEWER")  # registered, may query only
    status, _uid = viewer.request(listener, refs)
    assert status == 0x0124
    assert not StorageCommitment.objects.exists()
    denied = AuditEvent.objects.get(action="dicom.commitment.request")
    assert denied.outcome == "denied" and denied.ae_title == "VIEWER"
    assert viewer.reports.empty()


def test_unknown_ae_let_in_by_the_demo_flag_is_refused(transactional_db, region, settings, ct_study) -> None:  # type: ignore[no-untyped-def]
    from archive.dicomnet.listener import start_listener, stop_listener

    settings.PACS_DICOM_ACCEPT_UNKNOWN_AE = True
    server = start_listener(host="127.0.0.1", port=0)
    try:
        port = server.server_address[1]
        refs = _stored(port, ct_study[:1])
        assert Modality("ANY_DEVICE").request(port, refs)[0] == 0x0124
    finally:
        stop_listener(server, grace=0)
    assert not StorageCommitment.objects.exists()


def test_bad_requests_get_their_status(listener: int, ct_study: list[Path], modality: Modality) -> None:
    refs = _stored(listener, ct_study[:1])
    assert modality.request(listener, refs, action_type=2)[0] == 0x0123
    no_uid = Dataset()
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = refs[0]
    no_uid.ReferencedSOPSequence = [item]
    assert modality.request(listener, [], information=no_uid)[0] == 0x0115
    empty = Dataset()
    empty.TransactionUID = generate_uid()
    empty.ReferencedSOPSequence = []
    assert modality.request(listener, [], information=empty)[0] == 0x0115
    assert not StorageCommitment.objects.exists()
    assert AuditEvent.objects.filter(action="dicom.commitment.request", outcome="failure").count() == 3


def test_long_term_wait_until_the_lifecycle_copies(  # type: ignore[no-untyped-def]
    listener: int, ct_study: list[Path], modality: Modality, enqueued: Enqueued, settings
) -> None:
    from pacs.celery import app

    settings.PACS_STORAGE_COMMITMENT_REQUIRE_LONG_TERM = True
    settings.PACS_STORAGE_COMMITMENT_RECHECK_SECONDS = 60
    refs = _stored(listener, ct_study[:3])
    enqueued.messages.clear()  # the post-ingest work, not ours
    _node_listens_on(modality.listen())
    unknown = (CT_IMAGE, generate_uid())
    modality.request(listener, [*refs, unknown])
    assert enqueued.names() == [tasknames.STORAGE_COMMITMENT_ANSWER]
    # No long-term copy yet: the task waits and queues itself again.
    assert run_once(enqueued, tasknames.STORAGE_COMMITMENT_ANSWER) == "waiting"
    assert enqueued.names() == [tasknames.STORAGE_COMMITMENT_ANSWER]
    assert modality.reports.empty()
    row = StorageCommitment.objects.get()
    assert row.state == "pending" and row.next_attempt_at > timezone.now() + dt.timedelta(seconds=30)

    settings.PACS_MIGRATE_AFTER_DAYS = 0
    settings.PACS_EVICT_AFTER_DAYS = 365
    app.tasks[tasknames.LIFECYCLE_RUN].apply(throw=True)
    assert all(
        Copy.objects.filter(instance__sop_instance_uid=uid, tier="longterm:region", verified_at__isnull=False).exists()
        for _c, uid in refs
    )
    assert run_once(enqueued, tasknames.STORAGE_COMMITMENT_ANSWER) == "answered"
    report = modality.report()
    assert report.event_type == 2 and report.failed() == {unknown[1]: 0x0112}
    assert sorted(report.committed()) == sorted(uid for _c, uid in refs)
    assert tasknames.STORAGE_COMMITMENT_ANSWER not in enqueued.names()


def test_long_term_wait_times_out_into_failures(  # type: ignore[no-untyped-def]
    listener: int, ct_study: list[Path], modality: Modality, enqueued: Enqueued, settings
) -> None:
    settings.PACS_STORAGE_COMMITMENT_REQUIRE_LONG_TERM = True
    settings.PACS_STORAGE_COMMITMENT_MAX_WAIT_SECONDS = 3600
    refs = _stored(listener, ct_study[:2])
    enqueued.messages.clear()
    _node_listens_on(modality.listen())
    modality.request(listener, refs)
    assert run_once(enqueued, tasknames.STORAGE_COMMITMENT_ANSWER) == "waiting"
    # The lifecycle never copies (the instances are not due): the hour passes.
    StorageCommitment.objects.update(answer_by=timezone.now() - dt.timedelta(seconds=1))
    assert run_once(enqueued, tasknames.STORAGE_COMMITMENT_ANSWER) == "answered"
    report = modality.report()
    assert report.event_type == 2 and report.committed() == []
    assert report.failed() == {uid: 0x0110 for _c, uid in refs}


def test_a_request_survives_the_association_and_a_lost_task(  # type: ignore[no-untyped-def]
    listener: int, ct_study: list[Path], modality: Modality, enqueued: Enqueued, settings
) -> None:
    settings.PACS_STORAGE_COMMITMENT_SAME_ASSOCIATION = False
    refs = _stored(listener, ct_study[:2])
    enqueued.messages.clear()
    port = modality.listen()
    _node_listens_on(port)
    modality.request(listener, refs)
    # The task's message is lost (a broker or worker restart): only the row is left.
    enqueued.messages.clear()
    row = StorageCommitment.objects.get()
    assert row.state == "pending"
    StorageCommitment.objects.update(next_attempt_at=timezone.now() - dt.timedelta(minutes=10))
    assert _sweep() == 1
    assert enqueued.run(tasknames.STORAGE_COMMITMENT_ANSWER) == ["answered"]
    assert modality.report().event_type == 1
    # Answered once: a redelivered message, or the next sweep, sends nothing again.
    assert commitment.commitment_answer(commitment_pk=row.pk).state == "done"
    assert _sweep() == 0
    assert modality.reports.empty()


def test_an_unreachable_node_is_retried_then_undelivered(  # type: ignore[no-untyped-def]
    listener: int, ct_study: list[Path], modality: Modality, enqueued: Enqueued, settings
) -> None:
    from tests.conftest import free_port

    settings.PACS_STORAGE_COMMITMENT_SAME_ASSOCIATION = False
    settings.PACS_STORAGE_COMMITMENT_DELIVERY_ATTEMPTS = 2
    settings.PACS_DICOM_ACSE_TIMEOUT = 2
    refs = _stored(listener, ct_study[:1])
    enqueued.messages.clear()
    _node_listens_on(free_port())  # nobody listens there
    modality.request(listener, refs)
    assert enqueued.run(tasknames.STORAGE_COMMITMENT_ANSWER) == ["retry", "undelivered"]
    row = StorageCommitment.objects.get()
    assert row.state == "undelivered" and row.attempts == 2 and row.last_error
    failed = AuditEvent.objects.get(action="dicom.commitment.answer")
    assert failed.outcome == "failure" and failed.detail["attempts"] == 2


def test_the_same_request_sent_again_while_pending_is_answered_once(  # type: ignore[no-untyped-def]
    listener: int, ct_study: list[Path], modality: Modality, enqueued: Enqueued, settings
) -> None:
    settings.PACS_STORAGE_COMMITMENT_SAME_ASSOCIATION = False
    refs = _stored(listener, ct_study[:1])
    enqueued.messages.clear()
    _node_listens_on(modality.listen())
    _status, uid = modality.request(listener, refs)
    assert enqueued.names() == [tasknames.STORAGE_COMMITMENT_ANSWER]
    assert modality.request(listener, refs, transaction_uid=uid)[0] == 0x0000
    assert modality.request(listener, refs[:0] + [(CT_IMAGE, generate_uid())], transaction_uid=uid)[0] == 0x0210
    assert StorageCommitment.objects.count() == 1
    assert enqueued.run(tasknames.STORAGE_COMMITMENT_ANSWER) == ["answered"]
    assert modality.report().event_type == 1
    assert modality.reports.empty()


def test_instance_model_untouched(listener: int, ct_study: list[Path], modality: Modality) -> None:
    """Asking for commitment changes nothing archived."""
    refs = _stored(listener, ct_study[:2])
    before = list(Instance.objects.order_by("pk").values())
    modality.request(listener, refs, wait_report=True)
    assert list(Instance.objects.order_by("pk").values()) == before


def test_an_object_held_aside_as_a_conflict_is_not_committed(
    listener: int, tmp_path: Path, ct_study: list[Path], modality: Modality
) -> None:
    """The node sent other bytes under an archived SOP Instance UID: the archive keeps
    what it had, so it does not commit to what the node holds (which it might delete)."""
    refs = _stored(listener, ct_study[:2])
    other = dcmread(ct_study[0])
    other.StudyDescription = "altri byte"
    changed = tmp_path / "changed.dcm"
    other.save_as(changed, enforce_file_format=True)
    assert list(send_files(listener, [changed]).statuses.values()) == [0xB000]
    modality.request(listener, refs, wait_report=True)
    report = modality.report()
    assert report.event_type == 2
    assert report.committed() == [refs[1][1]] and report.failed() == {refs[0][1]: 0x0110}


@pytest.mark.slow
def test_processes_the_listener_records_and_a_worker_answers_after_the_listener_is_gone(  # type: ignore[no-untyped-def]
    start_listener_process, celery_worker, region, ct_study: list[Path], modality: Modality
) -> None:
    """``manage.py dicom_listener`` and a real Celery worker: the request acknowledged by
    the listener is answered by the worker on a new association, the listener killed."""
    import signal

    listener = start_listener_process(env={"PACS_STORAGE_COMMITMENT_SAME_ASSOCIATION": "0"})
    refs = _stored(listener.port, ct_study[:2])
    _node_listens_on(modality.listen())
    status, transaction_uid = modality.request(listener.port, refs)
    assert status == 0x0000
    listener.stop(signal.SIGKILL)
    report = modality.report(timeout=60)
    assert report.information.TransactionUID == transaction_uid and report.event_type == 1
    assert not report.on_request_association and report.calling_ae == "TSCAT_PACS"
    row = wait_until(lambda: StorageCommitment.objects.filter(state="answered").first(), what="answered")
    assert row.answered_via == "new"
