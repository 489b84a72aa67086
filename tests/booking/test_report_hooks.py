"""What a signed report does to the CUP booking: it becomes *refertato* (in the
task the signal's receiver queues), and the patient's distribution choice is
closed from the signing on."""

from __future__ import annotations

import pytest
from django.apps import apps

from archive.models import Report, Study
from archive.reporting import services as reports
from archive.signals import report_signed
from booking.models import Booking, BookingStatusChange, DistributionChoice
from booking.services import (
    REPORTED_SYSTEM,
    BookingError,
    booking_reported,
    booking_status_set,
    bookings_reported_overdue,
    distribution_choose,
)
from booking.tasks import booking_reported_sweep, report_signed_booking
from kernel import tasknames
from tests.booking.conftest import Cup, linked_booking
from tests.conftest import Enqueued
from tests.reporting_helpers import EXPOSURE_TEXT, RADIOLOGIST_PASSWORD, Reporting, report_signed_send, signed_row
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)


def changes(booking: Booking) -> list[tuple[str, str]]:
    return [(c.status, c.system) for c in BookingStatusChange.objects.filter(booking=booking).order_by("at", "id")]


def test_the_receiver_is_connected_once() -> None:
    assert apps.is_installed("booking")
    receivers = [r for r in report_signed._live_receivers(Report)[0] if r is report_signed_booking]
    assert len(receivers) == 1


def test_the_receiver_only_queues_the_task_after_commit(
    cup: Cup,
    reporting: Reporting,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    booking = linked_booking(cup, reporting.study)
    report = signed_row(reporting)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        report_signed_booking(sender=Report, report_pk=report.pk, study_pk=reporting.study.pk)
    assert enqueued.messages == [] and len(callbacks) == 1
    callbacks[0]()
    assert (tasknames.BOOKING_REPORTED, (report.pk, reporting.study.pk), {}) in enqueued.messages
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.PERFORMED  # nothing done yet

    assert enqueued.run(tasknames.BOOKING_REPORTED) == ["reported"]
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.REPORTED


def test_a_signed_report_marks_the_booking_reported_and_locks_the_choice(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    report = signed_row(reporting)

    report_signed_send(report, tasknames.BOOKING_REPORTED)

    booking.refresh_from_db()
    assert booking.status == Booking.Status.REPORTED
    assert changes(booking)[-1] == ("reported", REPORTED_SYSTEM)
    assert booking.is_choice_locked()
    with pytest.raises(BookingError):
        distribution_choose(
            booking=booking,
            delivery=DistributionChoice.Delivery.CD,
            channel=Booking.Channel.AUTHORITY_CUP,
            user=cup.operator.user,
        )


def test_the_signal_again_or_a_later_version_changes_nothing(
    cup: Cup,
    reporting: Reporting,
) -> None:
    booking = linked_booking(cup, reporting.study)
    first = signed_row(reporting)
    assert report_signed_send(first, tasknames.BOOKING_REPORTED) == ["reported"]
    assert report_signed_send(first, tasknames.BOOKING_REPORTED) == ["already_reported"]
    addendum = signed_row(reporting, version=2, previous=first, kind=Report.Kind.ADDENDUM)

    assert booking_reported(report_pk=addendum.pk, study_pk=reporting.study.pk) == "already_reported"

    booking.refresh_from_db()
    assert booking.status == Booking.Status.REPORTED
    assert [c for c in changes(booking) if c[0] == "reported"] == [("reported", REPORTED_SYSTEM)]


def test_a_study_without_booking_is_fine(reporting: Reporting) -> None:
    report = signed_row(reporting)

    assert report_signed_send(report, tasknames.BOOKING_REPORTED) == ["no_booking"]
    assert booking_reported(report_pk=report.pk, study_pk=reporting.study.pk) == "no_booking"
    assert not BookingStatusChange.objects.exists()


def test_an_arrived_booking_goes_through_performed(cup: Cup, reporting: Reporting) -> None:
    booking = cup.book()
    booking_status_set(booking=booking, status=Booking.Status.ARRIVED, user=cup.operator.user)
    # Tied to the study but not yet marked performed (as a link made by hand would leave it).
    Booking.objects.filter(pk=booking.pk).update(study=reporting.study)
    report = signed_row(reporting)

    report_signed_send(report, tasknames.BOOKING_REPORTED)

    booking.refresh_from_db()
    assert booking.status == Booking.Status.REPORTED
    assert changes(booking)[-2:] == [("performed", REPORTED_SYSTEM), ("reported", REPORTED_SYSTEM)]


def test_a_draft_does_not_report_the_booking(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    draft = reports.report_draft_start(study=reporting.study, user=reporting.radiologist)

    assert booking_reported(report_pk=draft.pk, study_pk=reporting.study.pk) == "not_signed"

    booking.refresh_from_db()
    assert booking.status == Booking.Status.PERFORMED


def test_signing_end_to_end_reports_the_booking(
    cup: Cup,
    reporting: Reporting,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    booking = linked_booking(cup, reporting.study, clinical_question="Tosse persistente.", priority="U")
    study = Study.objects.get(pk=reporting.study.pk)
    # The matching gave the study the request's question and priority; the draft starts from them.
    assert (study.reason_for_request, study.priority) == ("Tosse persistente.", "U")
    user = reporting.radiologist
    draft = reports.report_draft_start(study=study, user=user)
    assert draft.clinical_question == "Tosse persistente."
    draft = reports.report_save(
        report=draft,
        user=user,
        revision=draft.revision,
        clinical_question=draft.clinical_question,
        technique="TC del torace senza mezzo di contrasto.",
        findings="Non lesioni focali polmonari.",
        conclusion="Quadro nella norma.",
        exposure=EXPOSURE_TEXT,
        exposure_confirmed=True,
    )

    with django_capture_on_commit_callbacks(execute=True):
        signed = reports.report_sign(report=draft, user=user, password=RADIOLOGIST_PASSWORD, revision=draft.revision)

    assert signed.is_signed
    # The signing did not touch the booking, and yet the choice is closed as it answers.
    booking.refresh_from_db()
    assert booking.status == Booking.Status.PERFORMED and booking.is_choice_locked()
    with pytest.raises(BookingError, match="refertato"):
        distribution_choose(
            booking=booking,
            delivery=DistributionChoice.Delivery.CD,
            channel=Booking.Channel.AUTHORITY_CUP,
            user=cup.operator.user,
        )
    enqueued.run(tasknames.BOOKING_REPORTED)
    booking.refresh_from_db()
    assert booking.status == Booking.Status.REPORTED
    assert changes(booking)[-1] == ("reported", REPORTED_SYSTEM)
    with pytest.raises(BookingError):
        distribution_choose(
            booking=booking,
            delivery=DistributionChoice.Delivery.CD,
            channel=Booking.Channel.AUTHORITY_CUP,
            user=cup.operator.user,
        )


# --- the sweep of tasks a broker outage lost -------------------------------------------


def test_the_sweep_reports_a_booking_whose_task_was_lost(
    cup: Cup,
    reporting: Reporting,
    settings,  # type: ignore[no-untyped-def]
    enqueued: Enqueued,
) -> None:
    booking = linked_booking(cup, reporting.study)
    report = signed_row(reporting)  # signed, and the signal's task never queued (the broker was down)

    # Within the grace period the task may still be on its way: left alone.
    assert booking_reported_sweep() == 0
    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 0
    assert booking_reported_sweep() == 1
    assert enqueued.messages == [(tasknames.BOOKING_REPORTED, (report.pk, reporting.study.pk), {})]
    assert enqueued.run() == ["reported"]
    booking.refresh_from_db()
    assert booking.status == Booking.Status.REPORTED
    assert changes(booking)[-1] == ("reported", REPORTED_SYSTEM)
    # Done: never queued again, nor for a later version.
    signed_row(reporting, version=2, previous=report, kind=Report.Kind.ADDENDUM)
    assert booking_reported_sweep() == 0
    assert enqueued.messages == []


def test_the_sweep_leaves_cancelled_unbooked_and_old_studies_alone(
    cup: Cup,
    reporting: Reporting,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 0
    report = signed_row(reporting)
    assert bookings_reported_overdue() == []  # no booking: nothing to report

    booking = linked_booking(cup, reporting.study)
    assert bookings_reported_overdue() == [(report.pk, reporting.study.pk)]
    settings.PACS_REPORT_FOLLOWUP_HORIZON_DAYS = 0  # signed before the horizon: no longer looked for
    assert bookings_reported_overdue() == []
    settings.PACS_REPORT_FOLLOWUP_HORIZON_DAYS = 7
    Booking.objects.filter(pk=booking.pk).update(status=Booking.Status.CANCELLED)
    assert bookings_reported_overdue() == []  # the task leaves a cancelled booking alone
