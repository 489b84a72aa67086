"""The CUP's part of the demo region."""

from __future__ import annotations

from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import call_command

from archive.models import Facility, Study
from booking.models import AccessionSequence, Booking, ConsentText, DistributionChoice, Procedure, Station


def test_load_demo_gives_every_facility_a_cup_and_is_idempotent(db: None) -> None:
    call_command("load_demo", stdout=StringIO())
    facilities = Facility.objects.count()
    assert Procedure.objects.count() >= 30
    assert Station.objects.filter(modality="CT").count() == facilities
    prefixes = set(AccessionSequence.objects.values_list("prefix", flat=True))
    assert len(prefixes) == facilities  # regionally unique accession numbers
    assert ConsentText.objects.filter(version="2026-01").exists()
    upcoming = Booking.objects.filter(status=Booking.Status.BOOKED, external_id__startswith="demo-").exclude(
        external_id__startswith="demo-done"
    )
    assert upcoming.count() == 4
    deliveries = {b.current_choice().delivery for b in upcoming}  # type: ignore[union-attr]
    assert deliveries == {DistributionChoice.Delivery.ONLINE, DistributionChoice.Delivery.CD}
    # The first demo study has its booking, for the matching to link.
    done = Booking.objects.get(external_id="demo-done")
    study = Study.objects.get(accession_number=done.accession_number)
    assert done.patient_id == study.patient_id and done.study_instance_uid == study.study_instance_uid

    bookings = Booking.objects.count()
    call_command("load_demo", stdout=StringIO())
    assert Booking.objects.count() == bookings

    users = get_user_model().objects
    assert users.get(username="cup").has_perm("booking.add_booking")
    assert users.get(username="cup-regionale").has_perm("booking.change_booking")
    assert users.get(username="archivista").has_perm("booking.reconcile_study")
    assert not users.get(username="radiologo").has_perm("booking.add_booking")


def test_the_demo_cup_system_books_with_a_token_and_has_no_admin(db: None, client) -> None:  # type: ignore[no-untyped-def]
    """The CUP system account was ``is_staff``: its password, kept in another system, opened the admin."""
    from archive import demo

    call_command("load_demo", stdout=StringIO())
    password = demo.demo_credentials()["cup-regionale"]
    token = client.post("/api/token/", {"username": "cup-regionale", "password": password})
    assert token.status_code == 200, token.content
    auth = {"HTTP_AUTHORIZATION": f"Token {token.json()['token']}"}
    assert client.get("/api/cup/procedures/", **auth).status_code == 200
    # Its password does not open the admin site.
    assert client.login(username="cup-regionale", password=password)
    admin = client.get("/admin/")
    assert admin.status_code == 302 and admin.url.startswith("/admin/login/")


def test_after_load_demo_the_reconciliation_queue_holds_only_its_one_explained_item(
    db: None, enqueued, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    """Issue 17: the demo started with six unmatched studies. Every demo study now has
    its booking, and the matching (run as the worker runs it after ``make run``'s
    load) links them all but one: the child's emergency exam sent under a local
    hospital number, kept on purpose to show the archivist's queue."""
    from archive import demo
    from booking.models import Reconciliation
    from kernel import tasknames

    def load_and_match() -> None:
        with django_capture_on_commit_callbacks(execute=True):
            call_command("load_demo", stdout=StringIO())
        with django_capture_on_commit_callbacks(execute=True):
            enqueued.run(tasknames.STUDY_POST_INGEST)
        enqueued.run(tasknames.STUDY_MATCH)

    load_and_match()

    pending = Reconciliation.objects.filter(state=Reconciliation.State.PENDING)
    (item,) = pending
    coren = demo.PATIENTS[4]
    assert item.study.dicom_patient_id == coren.dicom_id and item.study.patient.provisional
    assert item.reason == Reconciliation.Reason.NO_BOOKING
    assert not Reconciliation.objects.exclude(pk=item.pk).exists()
    linked = Study.objects.exclude(pk=item.study_id)
    assert linked.count() == len(demo.STUDIES) - 1
    for study in linked:
        booking = Booking.objects.get(study=study)
        assert booking.status == Booking.Status.PERFORMED
        assert booking.patient_id == study.patient_id and booking.external_id.startswith("demo-done")

    # Loaded again (make run does, each time): nothing new to reconcile.
    load_and_match()
    assert list(Reconciliation.objects.values_list("pk", flat=True)) == [item.pk]
