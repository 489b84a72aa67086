"""The portal's rules without pages: publication on signing, the exam's status
for the citizen, availability and its expiry, revoked consent, delegations,
oscuramento and the audited emergency access."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, transaction
from django.test import override_settings
from django.utils import timezone

from archive.models import AuditEvent, Report
from archive.signals import report_signed
from booking.models import Booking, DistributionChoice
from booking.services import booking_status_set
from portal import availability
from portal.availability import (
    citizen_exams,
    citizen_may_see,
    conceal,
    delegation_register,
    delegation_revoke,
    emergency_access,
    exam_status,
    is_available_online,
    is_concealed,
    patients_acted_for,
    publications_withdraw_for_revocation,
    report_publish,
    reveal,
)
from portal.models import Concealment, Delegation, EmergencyAccess, Publication
from portal.tasks import publish_on_report_signed
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import Cup, linked_booking
from tests.reporting_helpers import Reporting, signed_report, signed_row
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup


def sign(rep: Reporting, **kwargs: object) -> Report:
    report = signed_row(rep, **kwargs)  # type: ignore[arg-type]
    report_signed.send(sender=Report, report_pk=report.pk, study_pk=rep.study.pk)
    return report


def revoke(booking: Booking) -> DistributionChoice:
    """A revocation recorded after publication (the booking service refuses it once reported)."""
    current = booking.current_choice()
    assert current is not None
    return DistributionChoice.objects.create(
        booking=booking,
        version=current.version + 1,
        delivery=DistributionChoice.Delivery.CD,
        revokes_consent=True,
        channel=Booking.Channel.AUTHORITY_CUP,
    )


def fresh(booking: Booking) -> Booking:
    return Booking.objects.get(pk=booking.pk)


# --- Publication ---------------------------------------------------------------------


def test_the_receiver_is_connected_once() -> None:
    receivers = [r for r in report_signed._live_receivers(Report)[0] if r is publish_on_report_signed]
    assert len(receivers) == 1


def test_signing_end_to_end_publishes_an_online_exam(
    cup: Cup,
    reporting: Reporting,
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    booking = linked_booking(cup, reporting.study)
    assert exam_status(booking=booking).code == "awaiting_report"

    with django_capture_on_commit_callbacks(execute=True):
        report = signed_report(reporting)

    publication = Publication.objects.get()
    assert (publication.booking, publication.report) == (booking, report)
    assert publication.available_until == publication.published_at + dt.timedelta(days=45)
    status = exam_status(booking=fresh(booking))
    assert status.code == "available_online"
    assert status.available_until == publication.available_until
    assert is_available_online(booking=fresh(booking))
    event = AuditEvent.objects.get(action="portal.publish")
    assert (event.system, event.patient_id, event.study_id) == (
        "portal.publish",
        booking.patient_id,
        reporting.study.pk,
    )
    assert event.detail["version"] == 1


def test_a_cd_choice_is_not_published_and_says_where_to_collect(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study, delivery=DistributionChoice.Delivery.CD)
    report = sign(reporting)

    assert not Publication.objects.exists()
    assert report_publish(report_pk=report.pk, study_pk=reporting.study.pk) == "not_online"
    status = exam_status(booking=fresh(booking))
    assert status.code == "on_cd"
    assert status.facility_name == "Ospedale di Cattinara"
    assert "Ospedale di Cattinara" in status.label
    assert not is_available_online(booking=fresh(booking))


def test_the_signal_twice_publishes_once(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    report = sign(reporting)
    report_signed.send(sender=Report, report_pk=report.pk, study_pk=reporting.study.pk)

    assert Publication.objects.filter(booking=booking).count() == 1
    assert report_publish(report_pk=report.pk, study_pk=reporting.study.pk) == "already_published"
    assert AuditEvent.objects.filter(action="portal.publish").count() == 1


def test_a_draft_or_a_study_without_booking_publishes_nothing(reporting: Reporting) -> None:
    report = sign(reporting)
    assert report_publish(report_pk=report.pk, study_pk=reporting.study.pk) == "no_booking"
    draft = Report.objects.create(study=reporting.study, version=2, previous=report, author=reporting.radiologist)
    assert report_publish(report_pk=draft.pk, study_pk=reporting.study.pk) == "not_signed"
    assert not Publication.objects.exists()


def test_an_addendum_is_published_next_to_the_original(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    first = sign(reporting)
    sign(reporting, version=2, previous=first, kind=Report.Kind.ADDENDUM)

    publications = list(Publication.objects.filter(booking=booking).order_by("report__version"))
    assert [p.report.version for p in publications] == [1, 2]
    assert all(p.withdrawn_at is None for p in publications)
    assert [p.report.version for p in availability.live_publications(booking=fresh(booking))] == [1, 2]


@pytest.mark.parametrize("in_order", [True, False])
def test_a_correction_supersedes_the_versions_before_it(cup: Cup, reporting: Reporting, in_order: bool) -> None:
    booking = linked_booking(cup, reporting.study)
    first = signed_row(reporting)
    correction = signed_row(reporting, version=2, previous=first, kind=Report.Kind.CORRECTION)
    # The signals may arrive out of order (two processes): the outcome is the same.
    for report in (first, correction) if in_order else (correction, first):
        report_signed.send(sender=Report, report_pk=report.pk, study_pk=reporting.study.pk)

    old = Publication.objects.get(booking=booking, report=first)
    new = Publication.objects.get(booking=booking, report=correction)
    assert old.withdrawn_at is not None
    assert old.withdrawn_reason == Publication.WithdrawnReason.SUPERSEDED
    assert new.withdrawn_at is None
    assert exam_status(booking=fresh(booking)).code == "available_online"
    assert availability.live_publications(booking=fresh(booking)) == [new]


# --- Status codes --------------------------------------------------------------------


def test_booked_arrived_and_cancelled(cup: Cup) -> None:
    booking = cup.book()
    assert exam_status(booking=booking).code == "booked"
    booking = booking_status_set(booking=booking, status=Booking.Status.ARRIVED, user=cup.operator.user)
    assert exam_status(booking=booking).code == "booked"
    other = cup.book()
    other = booking_status_set(booking=other, status=Booking.Status.CANCELLED, user=cup.operator.user)
    assert exam_status(booking=other).code == "cancelled"
    assert not is_available_online(booking=other)


def test_performed_without_a_signed_report_awaits_it(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    Report.objects.create(study=reporting.study, version=1, author=reporting.radiologist)  # a draft

    status = exam_status(booking=fresh(booking))
    assert status.code == "awaiting_report"
    assert not is_available_online(booking=fresh(booking))


@override_settings(PACS_PORTAL_AVAILABILITY_DAYS=30)
def test_availability_expires_after_the_configured_days(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    sign(reporting)
    publication = Publication.objects.get()
    assert publication.available_until == publication.published_at + dt.timedelta(days=30)

    day_29 = publication.published_at + dt.timedelta(days=29)
    day_31 = publication.published_at + dt.timedelta(days=31)
    assert is_available_online(booking=fresh(booking), now=day_29)
    status = exam_status(booking=fresh(booking), now=day_31)
    assert status.code == "expired"
    assert "Ospedale di Cattinara" in status.hint
    assert not is_available_online(booking=fresh(booking), now=day_31)
    assert availability.live_publications(booking=fresh(booking), now=day_31) == []


def test_a_revoked_consent_withdraws_the_exam(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    sign(reporting)
    assert is_available_online(booking=fresh(booking))

    revoke(booking)

    # At once, before the rows record the withdrawal.
    assert exam_status(booking=fresh(booking)).code == "withdrawn"
    assert not is_available_online(booking=fresh(booking))
    assert publications_withdraw_for_revocation(booking=booking, user=cup.operator.user) == 1
    publication = Publication.objects.get()
    assert publication.withdrawn_reason == Publication.WithdrawnReason.CONSENT_REVOKED
    assert publication.withdrawn_by == cup.operator.user
    assert exam_status(booking=fresh(booking)).code == "withdrawn"
    assert AuditEvent.objects.filter(action="portal.withdraw", patient=booking.patient).count() == 1
    # Once recorded, again is nothing.
    assert publications_withdraw_for_revocation(booking=booking, user=cup.operator.user) == 0


def test_a_revocation_before_signing_means_cd(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    revoke(booking)
    sign(reporting)

    assert not Publication.objects.exists()
    assert exam_status(booking=fresh(booking)).code == "on_cd"


def test_signed_but_not_yet_published_is_not_available(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    signed_row(reporting)  # no signal: the receiver has not run

    status = exam_status(booking=fresh(booking))
    assert status.code == "awaiting_report"
    assert not is_available_online(booking=fresh(booking))


# --- Who may see what ----------------------------------------------------------------


def test_another_citizen_may_not_see(cup: Cup) -> None:
    marios = cup.book(cup.mario)
    lauras = cup.book(cup.laura)

    assert citizen_may_see(citizen=cup.mario, booking=marios)
    assert not citizen_may_see(citizen=cup.laura, booking=marios)
    assert [b.pk for b in citizen_exams(patient=cup.laura)] == [lauras.pk]


def test_a_delegate_acts_for_the_delegator_while_the_delegation_holds(cup: Cup) -> None:
    marios = cup.book(cup.mario)
    lauras = cup.book(cup.laura, when=cup.next_slot(days=2))
    now = timezone.now()
    delegation = delegation_register(
        delegator=cup.mario,
        delegate=cup.laura,
        kind=Delegation.Kind.GUARDIAN,
        evidence="Decreto di nomina del giudice tutelare n. 123/2026",
        user=cup.operator.user,
        valid_from=now - dt.timedelta(days=1),
        valid_until=now + dt.timedelta(days=10),
    )

    assert patients_acted_for(patient=cup.laura) == [cup.laura, cup.mario]
    assert citizen_may_see(citizen=cup.laura, booking=marios)
    # Newest first, with the statuses ready.
    exams = citizen_exams(patient=cup.laura)
    assert [b.pk for b in exams] == [lauras.pk, marios.pk]
    assert [exam_status(booking=b).code for b in exams] == ["booked", "booked"]
    # Not the other way round.
    assert not citizen_may_see(citizen=cup.mario, booking=lauras)
    # Expired: no longer.
    later = now + dt.timedelta(days=11)
    assert patients_acted_for(patient=cup.laura, now=later) == [cup.laura]
    assert not citizen_may_see(citizen=cup.laura, booking=marios, now=later)
    # Revoked: no longer.
    delegation_revoke(delegation=delegation, user=cup.operator.user)
    assert not citizen_may_see(citizen=cup.laura, booking=marios)
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="portal.delegation").order_by("id")] == [
        "portal.delegation.register",
        "portal.delegation.revoke",
    ]


def test_a_delegation_not_yet_in_force_gives_nothing(cup: Cup) -> None:
    marios = cup.book(cup.mario)
    delegation_register(
        delegator=cup.mario,
        delegate=cup.laura,
        kind=Delegation.Kind.PARENT,
        evidence="Certificato di nascita",
        user=cup.operator.user,
        valid_from=timezone.now() + dt.timedelta(days=1),
    )
    assert not citizen_may_see(citizen=cup.laura, booking=marios)


def test_a_delegation_needs_evidence_and_two_people(cup: Cup) -> None:
    with pytest.raises(ValueError):
        delegation_register(
            delegator=cup.mario, delegate=cup.laura, kind="genitore", evidence="  ", user=cup.operator.user
        )
    with pytest.raises(ValueError):
        delegation_register(
            delegator=cup.mario, delegate=cup.mario, kind="genitore", evidence="x", user=cup.operator.user
        )
    assert not Delegation.objects.exists()


# --- Oscuramento and emergency access -----------------------------------------------------


def test_conceal_and_reveal(cup: Cup, reporting: Reporting) -> None:
    study = reporting.study
    patient = study.patient
    assert not is_concealed(study=study)

    first = conceal(patient=patient, study=study)
    assert first.hidden_by_patient
    assert is_concealed(study=study)
    assert conceal(patient=patient, study=study) == first  # idempotent
    with pytest.raises(IntegrityError), transaction.atomic():
        Concealment.objects.create(patient=patient, study=study)  # the database allows one active

    closed = reveal(patient=patient, study=study)
    assert closed is not None and closed.revealed_at is not None
    assert not is_concealed(study=study)
    assert reveal(patient=patient, study=study) is None

    # Hidden again, recorded by an operator: a new row, the history stays.
    again = conceal(patient=patient, study=study, by_user=cup.operator.user)
    assert again.pk != first.pk and not again.hidden_by_patient
    assert Concealment.objects.filter(study=study).count() == 2
    actions = list(
        AuditEvent.objects.filter(study=study, action__in=["portal.conceal", "portal.reveal"]).order_by("id")
    )
    assert [e.action for e in actions] == ["portal.conceal", "portal.reveal", "portal.conceal"]
    assert actions[-1].user == cup.operator.user


def test_only_the_studys_patient_conceals_it(cup: Cup, reporting: Reporting) -> None:
    with pytest.raises(ValueError):
        conceal(patient=cup.laura, study=reporting.study)
    assert not is_concealed(study=reporting.study)


def test_emergency_access_needs_a_reason_and_is_audited(reporting: Reporting) -> None:
    study = reporting.study
    conceal(patient=study.patient, study=study)

    for reason in ("", "urgente", "   breve   "):
        with pytest.raises(ValueError, match="motivo"):
            emergency_access(user=reporting.radiologist, study=study, reason=reason, source="10.0.0.1")
    assert not EmergencyAccess.objects.exists()
    assert not AuditEvent.objects.filter(action="portal.emergency_access").exists()

    access = emergency_access(
        user=reporting.radiologist,
        study=study,
        reason="Paziente in pronto soccorso, politrauma: confronto con la TC precedente.",
        source="10.0.0.1",
    )

    assert access.user == reporting.radiologist
    event = AuditEvent.objects.get(action="portal.emergency_access")
    assert (event.user, event.study_id, event.source) == (reporting.radiologist, study.pk, "10.0.0.1")
    assert event.detail["reason"].startswith("Paziente in pronto soccorso")
    assert event.detail["concealed"] is True
