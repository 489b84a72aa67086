"""A modality's procedure steps (MPPS) reach the CUP booking the worklist handed
out: real associations to the in-process listener (pynetdicom as the modality,
DCMTK's findscu for the worklist), the booking task run as a worker would, and
the CUP's and the radiologist's pages. The worklist's RequestedProcedurePriority."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from pydicom import dcmread
from pydicom.dataset import Dataset

from archive.models import PerformedProcedureStep, Study
from archive.signals import procedure_step_changed
from booking import steps
from booking.models import Booking, BookingStatusChange
from booking.tasks import booking_procedure_step_sweep, procedure_step_booking_enqueue
from kernel import tasknames
from kernel.models import AuditEvent
from tests.booking.conftest import Cup
from tests.booking.test_worklist import identifier, mwl_find
from tests.conftest import Enqueued
from tests.mpps_helpers import (
    completed_attributes,
    create_attributes,
    discontinued_attributes,
    mpps_association,
    n_create,
    n_set,
)
from tests.reporting_helpers import Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)


def cup_client(cup: Cup) -> Client:
    client = Client()
    client.force_login(cup.operator.user)
    return client


def worklist_item(port: int, booking: Booking) -> Dataset:
    """What the modality reads from the worklist for the booking (pynetdicom's C-FIND)."""
    ds = identifier(AccessionNumber=booking.accession_number)
    ds.RequestedProcedurePriority = ""
    ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = ""
    results, final = mwl_find(port, ds)
    assert final.Status == 0x0000
    (item,) = results
    return item


def step_from(item: Dataset, **overrides: object) -> Dataset:
    """The N-CREATE a modality makes from the worklist item it performs."""
    sps = item.ScheduledProcedureStepSequence[0]
    return create_attributes(
        accession=str(item.AccessionNumber),
        sps_id=str(sps.ScheduledProcedureStepID),
        study_uid=str(item.StudyInstanceUID),
        patient_id=str(item.PatientID),
        patient_name=str(item.PatientName),
        **overrides,
    )


def test_the_receiver_is_connected_and_only_queues_after_commit(
    cup: Cup,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    receivers = [r for r in procedure_step_changed._live_receivers(PerformedProcedureStep)[0]]
    assert receivers.count(procedure_step_booking_enqueue) == 1
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        procedure_step_booking_enqueue(sender=PerformedProcedureStep, step_pk=42)
    assert enqueued.messages == [] and len(callbacks) == 1
    callbacks[0]()
    assert enqueued.messages == [(tasknames.BOOKING_PROCEDURE_STEP, (42,), {})]


def test_in_progress_then_completed_moves_the_booking_and_the_cup_sees_it(
    listener: int, cup: Cup, enqueued: Enqueued
) -> None:
    booking = cup.book()
    item = worklist_item(listener, booking)
    assert item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"
    with mpps_association(listener) as assoc:
        status, uid = n_create(assoc, step_from(item))
        assert status.Status == 0x0000
        assert enqueued.run(tasknames.BOOKING_PROCEDURE_STEP) == [["in_progress"]]
        booking.refresh_from_db()
        assert booking.status == Booking.Status.IN_PROGRESS
        # Another modality reading the worklist sees the step taken.
        assert worklist_item(listener, booking).ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == (
            "STARTED"
        )
        page = cup_client(cup).get(reverse("booking:booking_detail", args=[booking.accession_number]))
        assert page.status_code == 200
        assert "in esecuzione" in page.content.decode() and "in corso" in page.content.decode()

        assert n_set(assoc, completed_attributes(), uid).Status == 0x0000
    assert enqueued.run(tasknames.BOOKING_PROCEDURE_STEP) == [["performed"]]
    booking.refresh_from_db()
    assert booking.status == Booking.Status.PERFORMED
    history = [(c.status, c.system) for c in BookingStatusChange.objects.filter(booking=booking).order_by("at", "id")]
    assert history == [
        ("booked", ""),
        ("in_progress", steps.MPPS_SYSTEM),
        ("performed", steps.MPPS_SYSTEM),
    ]
    step = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert step.patient == booking.patient and step.study_instance_uid == booking.study_instance_uid
    html = cup_client(cup).get(reverse("booking:booking_detail", args=[booking.accession_number])).content.decode()
    assert "eseguito" in html and "completato" in html and "05/12/2026 08:30" in html
    # The N-SET is audited with the booking's patient.
    event = AuditEvent.objects.filter(action="dicom.mpps").order_by("-id").first()
    assert event is not None and event.patient_id == booking.patient_id and event.detail["status"] == "COMPLETED"
    # Run again (a redelivery): nothing more happens.
    assert steps.booking_procedure_step(step_pk=step.pk) == ["unchanged"]


def test_discontinued_with_a_reason_reaches_the_booking_and_the_cup(
    listener: int, cup: Cup, enqueued: Enqueued
) -> None:
    booking = cup.book()
    item = worklist_item(listener, booking)
    with mpps_association(listener) as assoc:
        _status, uid = n_create(assoc, step_from(item))
        assert (
            n_set(
                assoc, discontinued_attributes(meaning="Patient refused to continue procedure", code="110505"), uid
            ).Status
            == 0
        )
    # Both tasks read the step as it is when they run: the first finds it discontinued already.
    assert enqueued.run(tasknames.BOOKING_PROCEDURE_STEP) == [["discontinued"], ["unchanged"]]
    booking.refresh_from_db()
    # Back to accepted: the CUP may move or cancel it; the reason is in its history.
    assert booking.status == Booking.Status.ARRIVED
    last = BookingStatusChange.objects.filter(booking=booking).order_by("-at", "-id").first()
    assert last is not None and last.system == steps.MPPS_SYSTEM
    assert "il paziente ha rifiutato di proseguire (110505)" in last.note
    client = cup_client(cup)
    html = client.get(reverse("booking:booking_detail", args=[booking.accession_number])).content.decode()
    assert "interrotto sulla diagnostica CT01" in html and "il paziente ha rifiutato di proseguire (110505)" in html
    home = client.get(
        reverse("booking:home"),
        {"facility": cup.region.facility.pk, "day": booking.scheduled_at.astimezone().date().isoformat()},
    ).content.decode()
    assert booking.accession_number in home and "il paziente ha rifiutato di proseguire" in home
    # The worklist offers it again, as accepted.
    assert worklist_item(listener, booking).ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == (
        "ARRIVED"
    )
    # The reason is told once, however often the task runs.
    step = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert steps.booking_procedure_step(step_pk=step.pk) == ["unchanged"]


def test_a_step_of_another_scheduled_step_or_facility_leaves_the_booking(
    listener: int, cup: Cup, enqueued: Enqueued
) -> None:
    booking = cup.book()
    gorizia = cup.book(station=cup.other_ct_station)
    item = worklist_item(listener, booking)
    with mpps_association(listener) as assoc:
        assert n_create(assoc, step_from(item, PerformedProcedureStepID="A"), None)[0].Status == 0
        other = step_from(item)
        other.ScheduledStepAttributesSequence[0].ScheduledProcedureStepID = "SPS-ALTRO"
        assert n_create(assoc, other)[0].Status == 0
        # A Gorizia accession reported to Cattinara's archive.
        assert n_create(assoc, create_attributes(accession=gorizia.accession_number))[0].Status == 0
        # An unscheduled exam.
        assert n_create(assoc, create_attributes(accession=""))[0].Status == 0
    assert enqueued.run(tasknames.BOOKING_PROCEDURE_STEP) == [
        ["in_progress"],
        ["other_step"],
        ["no_booking"],
        ["no_accession"],
    ]
    gorizia.refresh_from_db()
    assert gorizia.status == Booking.Status.BOOKED


def test_the_radiologists_work_list_shows_the_step(
    listener: int,
    cup: Cup,
    reporting: Reporting,
    enqueued: Enqueued,  # noqa: F811
) -> None:
    study = reporting.study
    with mpps_association(listener) as assoc:
        _status, uid = n_create(
            assoc, create_attributes(accession=study.accession_number, study_uid=study.study_instance_uid)
        )
        assert n_set(assoc, discontinued_attributes(meaning="Equipment failure", code="110501"), uid).Status == 0
    client = Client()
    client.force_login(reporting.radiologist)  # type: ignore[arg-type]
    html = client.get(reverse("reporting:worklist")).content.decode()
    assert "interrotto" in html and "guasto dell&#x27;apparecchiatura (110501)" in html  # escaped by the template
    assert Study.objects.count() == 1


def test_the_sweep_catches_up_a_booking_whose_task_was_lost(
    listener: int,
    cup: Cup,
    enqueued: Enqueued,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    booking = cup.book()
    item = worklist_item(listener, booking)
    with mpps_association(listener) as assoc:
        _status, uid = n_create(assoc, step_from(item))
        assert n_set(assoc, completed_attributes(), uid).Status == 0
    enqueued.messages.clear()  # lost with the broker
    assert booking_procedure_step_sweep() == 0  # within the grace period the tasks may still come
    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 0
    assert booking_procedure_step_sweep() == 1
    assert enqueued.run(tasknames.BOOKING_PROCEDURE_STEP) == [["performed"]]
    booking.refresh_from_db()
    assert booking.status == Booking.Status.PERFORMED
    assert booking_procedure_step_sweep() == 0


# --- the worklist's priority ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "dicom"),
    [("U", "STAT"), ("B", "HIGH"), ("D", "MEDIUM"), ("P", "ROUTINE")],
)
def test_the_worklist_answers_the_bookings_priority(listener: int, cup: Cup, priority: str, dicom: str) -> None:
    booking = cup.book(priority=priority)
    assert worklist_item(listener, booking).RequestedProcedurePriority == dicom


def test_findscu_reads_the_priority(listener: int, cup: Cup, tmp_path: Path) -> None:
    urgent = cup.book(priority="U")
    out = tmp_path / "found"
    out.mkdir()
    cmd = ["findscu", "-W", "-aet", "FINDSCU", "-aec", "TSCAT_PACS", "-X", "-od", str(out)]
    for key in ("AccessionNumber", "RequestedProcedurePriority", "ScheduledProcedureStepSequence[0].Modality"):
        cmd += ["-k", key]
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK 3.6.7 on loopback (Nagle)
    result = subprocess.run([*cmd, "127.0.0.1", str(listener)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (answer,) = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert answer.AccessionNumber == urgent.accession_number and answer.RequestedProcedurePriority == "STAT"
