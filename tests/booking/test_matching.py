"""Matching arriving studies to their CUP booking, and the staff actions on the queue."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from archive.models import Patient, PatientIdentifier, Study
from archive.sample_data import PatientInfo, write_study
from booking import matching
from booking.models import Booking, BookingStatusChange, Reconciliation
from booking.services import BookingError, booking_cancel
from booking.tasks import study_match_enqueue
from kernel.models import AuditEvent
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup
from tests.conftest import wait_until
from tests.dicom_client import send_files
from tests.dicomweb_helpers import ingest_files, make_user

MARIO = PatientInfo(patient_id=MARIO_CF, name="ROSSI^MARIO", birth_date="19560312", sex="M")


def arrive(cup: Cup, tmp_path: Path, *, accession: str, patient: PatientInfo = MARIO, instances: int = 2) -> Study:
    """A study stored at the booking facility, as the listener would index it."""
    files = write_study(
        tmp_path / f"s{Study.objects.count()}",
        patient=patient,
        instances_per_series=instances,
        accession_number=accession,
    )
    ingest_files(files, cup.region.facility)
    return Study.objects.order_by("-pk").first()  # type: ignore[return-value]


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


@pytest.fixture
def staff(db: None):  # type: ignore[no-untyped-def]
    return make_user("riconciliatore", "booking.reconcile_study", staff=False).user


# --- automatic matching ---------------------------------------------------------


def test_exact_match_links_the_booking_and_marks_it_performed(cup: Cup, tmp_path: Path) -> None:
    booking = cup.book()
    study = arrive(cup, tmp_path, accession=booking.accession_number)
    assert study.patient == cup.mario

    outcome = matching.study_match(study_pk=study.pk)

    assert outcome.result == "linked" and outcome.booking_pk == booking.pk
    booking.refresh_from_db()
    assert booking.study == study
    assert booking.status == Booking.Status.PERFORMED
    change = BookingStatusChange.objects.filter(booking=booking).last()
    assert change is not None and change.status == "performed" and change.system == "booking.match"
    assert not Reconciliation.objects.exists()
    (event,) = events("booking.match")
    assert event.outcome == "success" and event.system == "booking.match" and event.study == study
    assert event.detail["accession_number"] == booking.accession_number and event.detail["status"] == "performed"


def test_names_are_compared_without_case_accents_spaces_or_apostrophes(cup: Cup, tmp_path: Path) -> None:
    cup.mario.family_name, cup.mario.given_name = "D'ANGELO", "NICOLÒ MARIA"
    cup.mario.save()
    booking = cup.book()
    sent = PatientInfo(patient_id=MARIO_CF, name="dangelo^Nicolo^Maria", birth_date="19560312", sex="M")
    study = arrive(cup, tmp_path, accession=booking.accession_number, patient=sent)
    assert matching.study_match(study_pk=study.pk).result == "linked"


def test_local_id_with_matching_name_and_birth_date_is_linked_and_the_patient_follows(cup: Cup, tmp_path: Path) -> None:
    # The documented decision: a provisional patient under a local PatientID,
    # with the booking's accession number, name and birth date, is the booked patient.
    booking = cup.book()
    local = PatientInfo(patient_id="MRN-4711", name="Rossi^Mario", birth_date="19560312", sex="M")
    study = arrive(cup, tmp_path, accession=booking.accession_number, patient=local)
    provisional = study.patient
    assert provisional.provisional

    assert matching.study_match(study_pk=study.pk).result == "linked"

    study.refresh_from_db()
    assert study.patient == cup.mario
    assert study.patient_name == "ROSSI^MARIO"
    assert study.dicom_patient_id == MARIO_CF
    assert study.issuer_of_patient_id == settings.PACS_PATIENT_ID_ISSUER
    # The local ID now designates Mario, so the study's later instances join him.
    assert PatientIdentifier.objects.get(dicom_patient_id="MRN-4711").patient == cup.mario
    assert events("archive.study.patient_assign")[0].detail["before"]["PatientID"] == "MRN-4711"
    booking.refresh_from_db()
    assert booking.study == study and booking.status == "performed"


def test_local_id_without_birth_date_goes_to_the_queue(cup: Cup, tmp_path: Path) -> None:
    booking = cup.book()
    local = PatientInfo(patient_id="MRN-4711", name="Rossi^Mario", birth_date="", sex="M")
    study = arrive(cup, tmp_path, accession=booking.accession_number, patient=local)
    outcome = matching.study_match(study_pk=study.pk)
    assert outcome.result == "queued" and outcome.reason == "identity_mismatch"


def test_mismatched_identity_is_queued_with_its_differences(cup: Cup, tmp_path: Path) -> None:
    booking = cup.book(cup.mario)
    laura = PatientInfo(patient_id=LAURA_CF, name="BIANCHI^LAURA", birth_date="19720702", sex="F")
    study = arrive(cup, tmp_path, accession=booking.accession_number, patient=laura)

    outcome = matching.study_match(study_pk=study.pk)

    assert outcome.result == "queued"
    item = Reconciliation.objects.get(study=study)
    assert item.reason == Reconciliation.Reason.IDENTITY_MISMATCH
    assert item.state == Reconciliation.State.PENDING and item.booking == booking
    by_field = {d["field"]: d for d in item.differences}
    assert set(by_field) == {"patient_id", "patient_name", "birth_date", "sex"}
    assert by_field["patient_id"] == {"field": "patient_id", "booking": MARIO_CF, "dicom": LAURA_CF}
    assert by_field["birth_date"] == {"field": "birth_date", "booking": "1956-03-12", "dicom": "1972-07-02"}
    booking.refresh_from_db()
    assert booking.study is None and booking.status == "booked"
    (event,) = events("booking.match")
    assert event.outcome == "warning" and event.detail["reason"] == "identity_mismatch"


def test_right_patient_with_a_different_birth_date_is_queued(cup: Cup, tmp_path: Path) -> None:
    booking = cup.book()
    sent = PatientInfo(patient_id=MARIO_CF, name="ROSSI^MARIO", birth_date="19560313", sex="M")
    study = arrive(cup, tmp_path, accession=booking.accession_number, patient=sent)
    outcome = matching.study_match(study_pk=study.pk)
    assert outcome.reason == "identity_mismatch"
    assert [d["field"] for d in outcome.differences] == ["birth_date"]


def test_study_without_a_booking_is_queued(cup: Cup, tmp_path: Path) -> None:
    study = arrive(cup, tmp_path, accession="XX999")
    outcome = matching.study_match(study_pk=study.pk)
    item = Reconciliation.objects.get(study=study)
    assert outcome.reason == item.reason == "no_booking" and item.booking is None and item.differences == []


def test_study_without_accession_number_is_queued(cup: Cup, tmp_path: Path) -> None:
    study = arrive(cup, tmp_path, accession="")
    matching.study_match(study_pk=study.pk)
    assert Reconciliation.objects.get(study=study).reason == "no_accession"


def test_cancelled_booking_is_not_linked(cup: Cup, tmp_path: Path) -> None:
    booking = cup.book()
    booking_cancel(booking=booking, user=cup.operator.user, reason="il paziente ha disdetto")
    study = arrive(cup, tmp_path, accession=booking.accession_number)
    matching.study_match(study_pk=study.pk)
    item = Reconciliation.objects.get(study=study)
    assert item.reason == "booking_cancelled" and item.booking == booking
    booking.refresh_from_db()
    assert booking.study is None and booking.status == "cancelled"


def test_booking_already_linked_to_another_study_is_not_taken(cup: Cup, tmp_path: Path) -> None:
    booking = cup.book()
    first = arrive(cup, tmp_path, accession=booking.accession_number)
    assert matching.study_match(study_pk=first.pk).result == "linked"
    second = arrive(cup, tmp_path, accession=booking.accession_number)

    outcome = matching.study_match(study_pk=second.pk)

    assert outcome.reason == "booking_taken"
    booking.refresh_from_db()
    assert booking.study == first


def test_matching_again_changes_nothing(cup: Cup, tmp_path: Path) -> None:
    booking = cup.book()
    study = arrive(cup, tmp_path, accession=booking.accession_number)
    matching.study_match(study_pk=study.pk)
    changes = BookingStatusChange.objects.count()
    audit = AuditEvent.objects.count()

    assert matching.study_match(study_pk=study.pk).result == "already_linked"
    assert BookingStatusChange.objects.count() == changes and AuditEvent.objects.count() == audit

    other = arrive(cup, tmp_path, accession="NOPE1")
    matching.study_match(study_pk=other.pk)
    audit = AuditEvent.objects.count()
    assert matching.study_match(study_pk=other.pk).result == "queued"
    assert Reconciliation.objects.filter(study=other).count() == 1
    assert AuditEvent.objects.count() == audit  # nothing changed, nothing to record


def test_a_pending_item_is_re_evaluated_and_a_resolved_one_left_alone(cup: Cup, tmp_path: Path, staff) -> None:  # type: ignore[no-untyped-def]
    booking = cup.book()
    sent = PatientInfo(patient_id=MARIO_CF, name="ROSSI^MARIA", birth_date="19560312", sex="M")
    study = arrive(cup, tmp_path, accession=booking.accession_number, patient=sent)
    assert matching.study_match(study_pk=study.pk).reason == "identity_mismatch"

    # The registry had the name wrong; corrected, the next batch of instances matches.
    cup.mario.given_name = "MARIA"
    cup.mario.save()
    outcome = matching.study_match(study_pk=study.pk)
    assert outcome.result == "linked"
    item = Reconciliation.objects.get(study=study)
    assert item.state == "linked" and item.booking == booking and item.resolved_by is None

    rejected_study = arrive(cup, tmp_path, accession="NOPE2")
    matching.study_match(study_pk=rejected_study.pk)
    rejected = Reconciliation.objects.get(study=rejected_study)
    matching.reconciliation_reject(reconciliation=rejected, user=staff, note="non è un esame prenotato")
    assert matching.study_match(study_pk=rejected_study.pk).result == "resolved"
    rejected.refresh_from_db()
    assert rejected.state == "rejected"


def test_the_booking_row_is_claimed_with_a_conditional_update(cup: Cup, tmp_path: Path) -> None:
    booking = cup.book()
    study = arrive(cup, tmp_path, accession=booking.accession_number)
    with CaptureQueriesContext(connection) as queries:
        matching.study_match(study_pk=study.pk)
    claims = [q["sql"] for q in queries if q["sql"].startswith('UPDATE "booking_booking" SET "study_id"')]
    assert len(claims) == 1 and '"study_id" IS NULL' in claims[0]


@pytest.mark.django_db(transaction=True)
def test_two_workers_matching_the_same_study_link_it_once(cup: Cup, tmp_path: Path) -> None:
    booking = cup.book()
    study = arrive(cup, tmp_path, accession=booking.accession_number)
    start = threading.Barrier(2)
    results: list[str] = []

    def worker() -> None:
        try:
            start.wait(timeout=10)
            results.append(matching.study_match(study_pk=study.pk).result)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert sorted(results) == ["already_linked", "linked"]
    assert BookingStatusChange.objects.filter(booking=booking, status="performed").count() == 1
    assert AuditEvent.objects.filter(action="booking.match").count() == 1
    assert not Reconciliation.objects.exists()


# --- staff actions --------------------------------------------------------------


def test_link_to_the_proposed_booking_moves_the_study_to_its_patient(cup: Cup, tmp_path: Path, staff) -> None:  # type: ignore[no-untyped-def]
    booking = cup.book(cup.mario)
    laura = PatientInfo(patient_id=LAURA_CF, name="BIANCHI^LAURA", birth_date="19720702", sex="F")
    study = arrive(cup, tmp_path, accession=booking.accession_number, patient=laura)
    matching.study_match(study_pk=study.pk)
    item = Reconciliation.objects.get(study=study)

    matching.reconciliation_link(
        reconciliation=item, booking=booking, user=staff, source="10.0.0.1", note="nome errato in modalità"
    )

    item.refresh_from_db()
    assert item.state == "linked" and item.resolved_by == staff and item.resolved_at is not None
    booking.refresh_from_db()
    assert booking.study == study and booking.status == "performed"
    change = BookingStatusChange.objects.filter(booking=booking).last()
    assert change is not None and change.user == staff and change.status == "performed"
    study.refresh_from_db()
    assert study.patient == cup.mario
    assert (study.patient_name, study.dicom_patient_id, study.patient_sex) == ("ROSSI^MARIO", MARIO_CF, "M")
    assert study.patient_birth_date == dt.date(1956, 3, 12)
    (event,) = events("booking.reconciliation.link")
    assert event.user == staff and event.source == "10.0.0.1" and event.patient == cup.mario
    assert event.detail["before"]["PatientID"] == LAURA_CF
    assert events("archive.study.patient_assign")


def test_link_to_another_booking_by_accession_number(cup: Cup, tmp_path: Path, staff) -> None:  # type: ignore[no-untyped-def]
    laura_booking = cup.book(cup.laura)
    study = arrive(cup, tmp_path, accession="TYPO123")
    matching.study_match(study_pk=study.pk)
    item = Reconciliation.objects.get(study=study)
    assert item.reason == "no_booking"

    matching.reconciliation_link(reconciliation=item, booking=laura_booking, user=staff)

    study.refresh_from_db()
    assert study.patient == cup.laura and study.dicom_patient_id == LAURA_CF
    assert study.patient_name == "BIANCHI^LAURA"
    assert study.accession_number == laura_booking.accession_number
    laura_booking.refresh_from_db()
    assert laura_booking.study == study and laura_booking.status == "performed"


def test_link_refuses_a_cancelled_or_taken_booking(cup: Cup, tmp_path: Path, staff) -> None:  # type: ignore[no-untyped-def]
    taken = cup.book()
    first = arrive(cup, tmp_path, accession=taken.accession_number)
    matching.study_match(study_pk=first.pk)
    cancelled = cup.book(cup.laura)
    booking_cancel(booking=cancelled, user=None)
    study = arrive(cup, tmp_path, accession="NOPE3")
    matching.study_match(study_pk=study.pk)
    item = Reconciliation.objects.get(study=study)

    with pytest.raises(BookingError, match="già collegata"):
        matching.reconciliation_link(reconciliation=item, booking=taken, user=staff)
    with pytest.raises(BookingError, match="annullata"):
        matching.reconciliation_link(reconciliation=item, booking=cancelled, user=staff)
    item.refresh_from_db()
    assert item.state == "pending"


def test_reassign_puts_the_study_under_an_identified_patient(cup: Cup, tmp_path: Path, staff) -> None:  # type: ignore[no-untyped-def]
    emergency = PatientInfo(patient_id="PS-0001", name="SCONOSCIUTO^UOMO", birth_date="", sex="M")
    study = arrive(cup, tmp_path, accession="", patient=emergency)
    matching.study_match(study_pk=study.pk)
    item = Reconciliation.objects.get(study=study)

    matching.reconciliation_reassign(reconciliation=item, patient=cup.mario, user=staff, note="pronto soccorso")

    item.refresh_from_db()
    assert item.state == "reassigned" and item.booking is None and item.note == "pronto soccorso"
    study.refresh_from_db()
    assert study.patient == cup.mario
    assert (study.patient_name, study.dicom_patient_id) == ("ROSSI^MARIO", MARIO_CF)
    assert not Booking.objects.filter(study=study).exists()
    (event,) = events("booking.reconciliation.reassign")
    assert event.user == staff and event.detail["before"]["PatientID"] == "PS-0001"


def test_reassign_refuses_a_provisional_patient(cup: Cup, tmp_path: Path, staff) -> None:  # type: ignore[no-untyped-def]
    study = arrive(cup, tmp_path, accession="")
    matching.study_match(study_pk=study.pk)
    provisional = Patient.objects.create(provisional=True, family_name="X")
    with pytest.raises(BookingError, match="identificato"):
        matching.reconciliation_reassign(
            reconciliation=Reconciliation.objects.get(study=study), patient=provisional, user=staff
        )


def test_reject_needs_a_note_and_changes_nothing_else(cup: Cup, tmp_path: Path, staff) -> None:  # type: ignore[no-untyped-def]
    booking = cup.book(cup.mario)
    laura = PatientInfo(patient_id=LAURA_CF, name="BIANCHI^LAURA", birth_date="19720702", sex="F")
    study = arrive(cup, tmp_path, accession=booking.accession_number, patient=laura)
    matching.study_match(study_pk=study.pk)
    item = Reconciliation.objects.get(study=study)

    with pytest.raises(BookingError, match="motivo"):
        matching.reconciliation_reject(reconciliation=item, user=staff, note="  ")
    matching.reconciliation_reject(reconciliation=item, user=staff, note="esame di un'altra paziente")

    item.refresh_from_db()
    assert item.state == "rejected" and item.booking == booking and item.note == "esame di un'altra paziente"
    study.refresh_from_db()
    assert study.patient == cup.laura and study.dicom_patient_id == LAURA_CF
    booking.refresh_from_db()
    assert booking.study is None and booking.status == "booked"
    (event,) = events("booking.reconciliation.reject")
    assert event.user == staff and event.detail["note"] == "esame di un'altra paziente"
    with pytest.raises(BookingError, match="già stato riconciliato"):
        matching.reconciliation_link(reconciliation=item, booking=booking, user=staff)


# --- the reconciliation page's comparison -------------------------------------


def test_the_comparison_reads_the_first_header_and_falls_back_to_the_index(cup: Cup, tmp_path: Path) -> None:
    from archive.storage import tiers as storage

    booking = cup.book(cup.mario)
    laura = PatientInfo(patient_id=LAURA_CF, name="BIANCHI^LAURA", birth_date="19720702", sex="F")
    study = arrive(cup, tmp_path, accession=booking.accession_number, patient=laura)
    assert matching.study_match(study_pk=study.pk).result == "queued"
    item = Reconciliation.objects.select_related("booking__patient", "booking__procedure").get(study=study)

    comparison = matching.reconciliation_compare(reconciliation=item)
    assert comparison.header is not None and comparison.header_error == ""
    rows = {row.label: row for row in comparison.rows}
    assert (rows["Cognome^Nome"].booking, rows["Cognome^Nome"].dicom) == ("ROSSI^MARIO", "BIANCHI^LAURA")
    assert rows["Cognome^Nome"].differs and not rows["Accession number"].differs
    assert comparison.differences == sum(1 for row in comparison.rows if row.differs) >= 4
    assert matching.booking_linkable(item.booking)

    # The file cannot be read: the index's values, and why.
    assert comparison.instance is not None
    for copy in comparison.instance.copies.all():
        storage.absolute_path(copy.tier, copy.path).unlink()
    again = matching.reconciliation_compare(reconciliation=item)
    assert again.header is None and again.header_error == "Il file archiviato non è leggibile."
    assert {row.label: row.dicom for row in again.rows}["Cognome^Nome"] == "BIANCHI^LAURA"

    matching.reconciliation_link(reconciliation=item, booking=item.booking, user=None)
    assert not matching.booking_linkable(Booking.objects.get(pk=booking.pk))


# --- the signal, the task, the worker -------------------------------------------


def test_the_receiver_enqueues_after_commit(
    cup: Cup, tmp_path: Path, monkeypatch, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    queued: list[int] = []
    monkeypatch.setattr("booking.tasks.study_match.delay", queued.append)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        study_match_enqueue(sender=Study, study_pk=42)
    assert queued == [] and len(callbacks) == 1
    callbacks[0]()
    assert queued == [42]


@pytest.mark.slow
def test_a_stored_study_is_matched_by_the_worker(  # type: ignore[no-untyped-def]
    start_listener_process, celery_worker, cup: Cup, tmp_path: Path
) -> None:
    booking = cup.book()
    files = write_study(
        tmp_path / "sent", patient=MARIO, instances_per_series=3, accession_number=booking.accession_number
    )
    listener = start_listener_process()
    report = send_files(listener.port, files)
    assert set(report.statuses.values()) == {0}

    def performed() -> bool:
        return Booking.objects.filter(pk=booking.pk, status="performed", study__isnull=False).exists()

    wait_until(performed, timeout=90, what="booking performed by the worker's match")
    booking.refresh_from_db()
    assert booking.study.accession_number == booking.accession_number
    assert booking.study.patient == cup.mario
    assert AuditEvent.objects.filter(action="booking.match", outcome="success").count() == 1


def test_linking_gives_the_study_the_requests_question_and_priority(cup: Cup, tmp_path: Path, staff) -> None:  # type: ignore[no-untyped-def]
    booking = cup.book(clinical_question="Tosse persistente da 3 mesi.", priority="U")
    study = arrive(cup, tmp_path, accession=booking.accession_number)

    assert matching.study_match(study_pk=study.pk).result == "linked"

    study.refresh_from_db()
    assert (study.reason_for_request, study.priority) == ("Tosse persistente da 3 mesi.", "U")

    # By hand, from the reconciliation queue, too.
    other = cup.book(cup.laura, clinical_question="Controllo", priority="B", when=cup.next_slot(days=2))
    lost = arrive(cup, tmp_path, accession="", patient=PatientInfo(LAURA_CF, "BIANCHI^LAURA", "19720702", "F"))
    matching.study_match(study_pk=lost.pk)
    matching.reconciliation_link(reconciliation=Reconciliation.objects.get(study=lost), booking=other, user=staff)

    lost.refresh_from_db()
    assert (lost.reason_for_request, lost.priority) == ("Controllo", "B")
