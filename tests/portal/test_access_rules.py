"""The portal's rules without pages: publication on signing, the exam's status
for the citizen, availability and its expiry, revoked consent, delegations
(what each kind allows, checked against the delegator's age, the data
subject keeping control of hiding and consent), oscuramento and the audited
emergency access per patient."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, transaction
from django.test import override_settings
from django.utils import timezone

from archive import access
from archive.models import Patient, Report
from archive.signals import report_signed
from booking.models import Booking, DistributionChoice
from booking.services import booking_status_set
from kernel import tasknames
from kernel.models import AuditEvent
from portal import exams, publication
from portal.accounts import citizen_account_create
from portal.delegations import (
    citizen_rights,
    delegation_register,
    delegation_revoke,
    majority_cutoff,
    patients_acted_for,
)
from portal.emergency import emergency_access_grant
from portal.errors import PortalError
from portal.exams import citizen_exams, exam_status, is_available_online
from portal.models import Concealment, Delegation, EmergencyAccess, Publication
from portal.oscuramento import conceal, is_concealed, reveal
from portal.publication import consent_revoke_online, publications_withdraw_for_revocation, report_publish
from portal.tasks import publish_on_report_signed, report_publish_sweep
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup, linked_booking
from tests.conftest import Enqueued
from tests.reporting_helpers import Reporting, report_signed_send, signed_report, signed_row
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup


def sign(rep: Reporting, **kwargs: object) -> Report:
    """A signed version, and what its signing queues for the booking and the portal, run."""
    report = signed_row(rep, **kwargs)  # type: ignore[arg-type]
    report_signed_send(report)
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
    enqueued: Enqueued,
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    booking = linked_booking(cup, reporting.study)
    assert exam_status(booking=booking).code == "awaiting_report"

    with django_capture_on_commit_callbacks(execute=True):
        report = signed_report(reporting)

    # The signing queued the publication and did not wait for it.
    assert not Publication.objects.exists()
    status = exam_status(booking=fresh(booking))
    assert (status.code, status.label) == ("awaiting_report", "Refertato, in corso di pubblicazione")
    assert enqueued.run(tasknames.REPORT_PUBLISH) == ["published"]

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
    assert report_signed_send(report, tasknames.REPORT_PUBLISH) == ["already_published"]

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
    assert [p.report.version for p in exams.live_publications(booking=fresh(booking))] == [1, 2]


@pytest.mark.parametrize("in_order", [True, False])
def test_a_correction_supersedes_the_versions_before_it(cup: Cup, reporting: Reporting, in_order: bool) -> None:
    booking = linked_booking(cup, reporting.study)
    first = signed_row(reporting)
    correction = signed_row(reporting, version=2, previous=first, kind=Report.Kind.CORRECTION)
    # The signals may arrive out of order (two processes): the outcome is the same.
    for report in (first, correction) if in_order else (correction, first):
        report_signed_send(report)

    old = Publication.objects.get(booking=booking, report=first)
    new = Publication.objects.get(booking=booking, report=correction)
    assert old.withdrawn_at is not None
    assert old.withdrawn_reason == Publication.WithdrawnReason.SUPERSEDED
    assert new.withdrawn_at is None
    assert exam_status(booking=fresh(booking)).code == "available_online"
    assert exams.live_publications(booking=fresh(booking)) == [new]


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
    assert exams.live_publications(booking=fresh(booking), now=day_31) == []


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


def test_the_sweep_publishes_a_report_whose_task_was_lost(
    cup: Cup,
    reporting: Reporting,
    settings,  # type: ignore[no-untyped-def]
    enqueued: Enqueued,
) -> None:
    booking = linked_booking(cup, reporting.study)
    report = signed_row(reporting)  # signed, and the signal's task never queued (the broker was down)

    # Within the grace period the task may still be on its way: left alone.
    assert report_publish_sweep() == 0
    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 0
    assert report_publish_sweep() == 1
    assert enqueued.messages == [(tasknames.REPORT_PUBLISH, (report.pk, reporting.study.pk), {})]
    assert enqueued.run() == ["published"]
    assert Publication.objects.get().report == report
    assert is_available_online(booking=fresh(booking))
    # Done: never queued again.
    assert report_publish_sweep() == 0
    assert enqueued.messages == []


@pytest.mark.parametrize("case", ["online", "cd", "revoked", "cancelled", "no_booking", "published", "old"])
def test_the_sweep_finds_what_the_task_would_publish(
    cup: Cup,
    reporting: Reporting,
    settings,  # type: ignore[no-untyped-def]
    case: str,
) -> None:
    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 0
    if case != "no_booking":
        booking = linked_booking(
            cup,
            reporting.study,
            delivery=DistributionChoice.Delivery.CD if case == "cd" else DistributionChoice.Delivery.ONLINE,
        )
    report = signed_row(reporting)
    if case == "revoked":
        revoke(booking)
    elif case == "cancelled":
        Booking.objects.filter(pk=booking.pk).update(status=Booking.Status.CANCELLED)
    elif case == "published":
        report_signed_send(report, tasknames.REPORT_PUBLISH)
    elif case == "old":
        settings.PACS_REPORT_FOLLOWUP_HORIZON_DAYS = 0  # signed before the horizon: no longer looked for

    due = publication.reports_unpublished_overdue()
    # The sweep and the task agree: what it queues, the task publishes; the rest, it would not.
    assert due == ([(report.pk, reporting.study.pk)] if case == "online" else [])
    if case != "old":
        outcome = report_publish(report_pk=report.pk, study_pk=reporting.study.pk)
        assert (outcome == "published") == bool(due)


# --- Who may see what ----------------------------------------------------------------


def citizen_principal(cf: str) -> access.Principal:
    """The access policy's principal of the citizen ``cf`` (an account made when missing)."""
    from portal.models import CitizenAccount

    account = CitizenAccount.objects.filter(codice_fiscale=cf).select_related("user").first()
    user = account.user if account is not None else citizen_account_create(codice_fiscale=cf, password="x" * 20)
    return access.principal_for_user(user)


def sees(cf: str, booking: Booking) -> bool:
    """Whether the citizen ``cf`` sees ``booking``: as the portal's pages decide, through the policy."""
    return booking.patient_id in citizen_principal(cf).patient_ids


def test_another_citizen_may_not_see(cup: Cup) -> None:
    marios = cup.book(cup.mario)
    lauras = cup.book(cup.laura)

    assert sees(MARIO_CF, marios)
    assert not sees(LAURA_CF, marios)
    assert [b.pk for b in citizen_exams(patient_ids=citizen_principal(LAURA_CF).patient_ids)] == [lauras.pk]


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
    assert citizen_principal(LAURA_CF).patient_ids == {cup.laura.pk, cup.mario.pk}
    assert sees(LAURA_CF, marios)
    # Newest first, with the statuses ready.
    exams = citizen_exams(patient_ids=citizen_principal(LAURA_CF).patient_ids)
    assert [b.pk for b in exams] == [lauras.pk, marios.pk]
    assert [exam_status(booking=b).code for b in exams] == ["booked", "booked"]
    # Not the other way round.
    assert not sees(MARIO_CF, lauras)
    # Expired: no longer.
    later = now + dt.timedelta(days=11)
    assert patients_acted_for(patient=cup.laura, now=later) == [cup.laura]
    # Revoked: no longer.
    delegation_revoke(delegation=delegation, user=cup.operator.user)
    assert not sees(LAURA_CF, marios)
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="portal.delegation").order_by("id")] == [
        "portal.delegation.register",
        "portal.delegation.revoke",
    ]


def make_minor(cup: Cup, *, years: int = 10, days: int = 0) -> Patient:
    """Mario made a child: born ``years`` years (less ``days``) ago."""
    today = timezone.localdate()
    birth = today.replace(year=today.year - years, day=min(today.day, 28)) + dt.timedelta(days=days)
    Patient.objects.filter(pk=cup.mario.pk).update(birth_date=birth)
    cup.mario.refresh_from_db()
    return cup.mario


def test_a_delegation_not_yet_in_force_gives_nothing(cup: Cup) -> None:
    marios = cup.book(cup.mario)
    delegation_register(
        delegator=make_minor(cup),
        delegate=cup.laura,
        kind=Delegation.Kind.PARENT,
        evidence="Certificato di nascita",
        user=cup.operator.user,
        valid_from=timezone.now() + dt.timedelta(days=1),
    )
    assert not sees(LAURA_CF, marios)


def test_a_delegation_needs_evidence_and_two_people(cup: Cup) -> None:
    with pytest.raises(ValueError):
        delegation_register(
            delegator=cup.mario, delegate=cup.laura, kind="altro", evidence="  ", user=cup.operator.user
        )
    with pytest.raises(ValueError):
        delegation_register(delegator=cup.mario, delegate=cup.mario, kind="altro", evidence="x", user=cup.operator.user)
    assert not Delegation.objects.exists()


# --- Delegations: the kind fits the age; the data subject keeps control -------------------


def test_a_parent_delegation_is_refused_for_an_adult(cup: Cup) -> None:
    """Reproduces: a "genitore di un minore" delegation was accepted for a 54-year-old."""
    Patient.objects.filter(pk=cup.mario.pk).update(
        birth_date=timezone.localdate().replace(year=timezone.localdate().year - 54, day=1)
    )
    cup.mario.refresh_from_db()
    with pytest.raises(PortalError) as refused:
        delegation_register(
            delegator=cup.mario,
            delegate=cup.laura,
            kind=Delegation.Kind.PARENT,
            evidence="Certificato di nascita",
            user=cup.operator.user,
        )
    assert refused.value.field == "kind" and refused.value.code == "age"
    assert "maggiorenne" in refused.value.message
    assert not Delegation.objects.exists()


@pytest.mark.parametrize(
    ("kind", "minor", "accepted"),
    [
        (Delegation.Kind.PARENT, True, True),
        (Delegation.Kind.PARENT, False, False),
        (Delegation.Kind.GUARDIAN, True, True),
        (Delegation.Kind.GUARDIAN, False, True),
        (Delegation.Kind.SUPPORT, True, False),
        (Delegation.Kind.SUPPORT, False, True),
        (Delegation.Kind.OTHER, True, False),
        (Delegation.Kind.OTHER, False, True),
    ],
)
def test_each_kind_is_checked_against_the_delegators_age(cup: Cup, kind: str, minor: bool, accepted: bool) -> None:
    make_minor(cup, years=10 if minor else 30)
    register = {
        "delegator": cup.mario,
        "delegate": cup.laura,
        "kind": kind,
        "evidence": "Documento verificato",
        "user": cup.operator.user,
    }
    if accepted:
        assert delegation_register(**register).kind == kind  # type: ignore[arg-type]
    else:
        with pytest.raises(PortalError, match="(maggiorenne|minorenne)"):
            delegation_register(**register)  # type: ignore[arg-type]


def test_a_parent_delegation_needs_a_known_birth_date(cup: Cup) -> None:
    Patient.objects.filter(pk=cup.mario.pk).update(birth_date=None)
    cup.mario.refresh_from_db()
    with pytest.raises(PortalError, match="data di nascita"):
        delegation_register(
            delegator=cup.mario, delegate=cup.laura, kind=Delegation.Kind.PARENT, evidence="x", user=cup.operator.user
        )


def test_a_parent_delegation_stops_when_the_child_turns_18(cup: Cup) -> None:
    child = make_minor(cup, years=18, days=3)  # 18 in three days
    marios = cup.book(child)
    delegation = delegation_register(
        delegator=child,
        delegate=cup.laura,
        kind=Delegation.Kind.PARENT,
        evidence="Atto di nascita",
        user=cup.operator.user,
    )
    birthday = timezone.make_aware(
        dt.datetime.combine(child.birth_date.replace(year=child.birth_date.year + 18), dt.time.min)
    )
    assert delegation.valid_until == birthday
    assert sees(LAURA_CF, marios)
    assert patients_acted_for(patient=cup.laura, now=birthday - dt.timedelta(seconds=1)) == [cup.laura, child]
    assert patients_acted_for(patient=cup.laura, now=birthday) == [cup.laura]
    # A row without an end (registered before the rule, or edited) stops too: the policy reads the age.
    Delegation.objects.filter(pk=delegation.pk).update(valid_until=None)
    assert patients_acted_for(patient=cup.laura, now=birthday + dt.timedelta(days=1)) == [cup.laura]
    Patient.objects.filter(pk=child.pk).update(birth_date=child.birth_date.replace(year=child.birth_date.year - 1))
    assert not sees(LAURA_CF, marios)


def test_the_age_of_majority_on_the_29th_of_february() -> None:
    leap_day = timezone.make_aware(dt.datetime(2028, 2, 29, 12, 0))
    assert majority_cutoff(leap_day) == dt.date(2010, 2, 28)
    march_first = timezone.make_aware(dt.datetime(2026, 3, 1, 12, 0))
    assert majority_cutoff(march_first) == dt.date(2008, 3, 1)  # born 29/2/2008: of age on 1/3/2026


@pytest.mark.parametrize(
    ("kind", "rights"),
    [
        (Delegation.Kind.PARENT, {"view", "download", "concealment", "consent"}),
        (Delegation.Kind.GUARDIAN, {"view", "download", "concealment", "consent"}),
        (Delegation.Kind.SUPPORT, {"view", "download", "concealment"}),
        (Delegation.Kind.OTHER, {"view", "download"}),
    ],
)
def test_a_delegation_says_what_it_allows(cup: Cup, kind: str, rights: set[str]) -> None:
    make_minor(cup, years=10 if kind == Delegation.Kind.PARENT else 40)
    delegation = delegation_register(
        delegator=cup.mario, delegate=cup.laura, kind=kind, evidence="Documento", user=cup.operator.user
    )
    assert delegation.rights == rights
    assert citizen_rights(citizen=cup.laura, patient=cup.mario) == rights
    assert citizen_rights(citizen=cup.mario, patient=cup.mario) == set(Delegation.Right.values)
    assert citizen_rights(citizen=cup.mario, patient=cup.laura) == frozenset()


def test_a_delegate_never_lifts_a_hiding_the_delegator_set_herself(cup: Cup, reporting: Reporting) -> None:
    """Reproduces: a delegate lifted a hiding the delegator had set herself."""
    delegation_register(
        delegator=cup.mario,
        delegate=cup.laura,
        kind=Delegation.Kind.SUPPORT,
        evidence="Decreto di nomina dell'amministratore di sostegno",
        user=cup.operator.user,
    )
    study = reporting.study
    conceal(patient=cup.mario, study=study, requested_by=cup.mario)
    with pytest.raises(PortalError) as refused:
        reveal(patient=cup.mario, study=study, requested_by=cup.laura)
    assert refused.value.code == "subject_choice"
    assert is_concealed(study=study)
    assert not AuditEvent.objects.filter(action="portal.reveal").exists()
    # The patient herself lifts it.
    assert reveal(patient=cup.mario, study=study, requested_by=cup.mario) is not None
    # A hiding the representative set, the representative lifts.
    conceal(patient=cup.mario, study=study, requested_by=cup.laura)
    assert reveal(patient=cup.mario, study=study, requested_by=cup.laura) is not None
    assert not is_concealed(study=study)


def test_a_delegate_who_is_no_legal_representative_does_not_hide(cup: Cup, reporting: Reporting) -> None:
    delegation_register(
        delegator=cup.mario,
        delegate=cup.laura,
        kind=Delegation.Kind.OTHER,
        evidence="Delega firmata",
        user=cup.operator.user,
    )
    with pytest.raises(PortalError) as refused:
        conceal(patient=cup.mario, study=reporting.study, requested_by=cup.laura)
    assert refused.value.code == "not_representative"
    assert not is_concealed(study=reporting.study)


def test_a_delegate_does_not_revoke_the_consent_of_someone_who_can_act(cup: Cup, reporting: Reporting) -> None:
    """Reproduces: a delegate revoked the delegator's consent to online delivery."""
    booking = linked_booking(cup, reporting.study)
    sign(reporting)
    delegation_register(
        delegator=cup.mario,
        delegate=cup.laura,
        kind=Delegation.Kind.SUPPORT,
        evidence="Decreto di nomina dell'amministratore di sostegno",
        user=cup.operator.user,
    )
    laura_user = citizen_account_create(codice_fiscale=LAURA_CF, password="x" * 20)
    with pytest.raises(PortalError) as refused:
        consent_revoke_online(booking=booking, requested_by=cup.laura, user=laura_user)
    assert refused.value.code == "not_representative"
    assert is_available_online(booking=fresh(booking))
    assert fresh(booking).current_choice().delivery == DistributionChoice.Delivery.ONLINE  # type: ignore[union-attr]


def test_a_parent_revokes_a_minors_consent(cup: Cup, reporting: Reporting) -> None:
    """Before the report, as the information text says; after it, refused (``published``)."""
    booking = linked_booking(cup, reporting.study)
    make_minor(cup)  # after the matching, which compares the birth date with the images'

    delegation_register(
        delegator=cup.mario,
        delegate=cup.laura,
        kind=Delegation.Kind.PARENT,
        evidence="Atto di nascita",
        user=cup.operator.user,
    )
    laura_user = citizen_account_create(codice_fiscale=LAURA_CF, password="x" * 20)
    assert consent_revoke_online(booking=booking, requested_by=cup.laura, user=laura_user) == 0  # none published
    choice = fresh(booking).current_choice()
    assert choice is not None and choice.revokes_consent and choice.channel == Booking.Channel.ONLINE
    sign(reporting)
    assert exam_status(booking=fresh(booking)).code == "on_cd"


def test_consent_is_not_revoked_once_the_report_is_signed(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    sign(reporting)
    user = citizen_account_create(codice_fiscale=MARIO_CF, password="x" * 20)
    with pytest.raises(PortalError) as refused:
        consent_revoke_online(booking=fresh(booking), requested_by=cup.mario, user=user)
    assert refused.value.code == "published" and "prima della pubblicazione" in refused.value.message
    assert fresh(booking).current_choice().delivery == DistributionChoice.Delivery.ONLINE  # type: ignore[union-attr]


def test_a_revocation_whose_withdrawal_fails_is_not_recorded(
    cup: Cup, reporting: Reporting, monkeypatch: pytest.MonkeyPatch
) -> None:
    booking = linked_booking(cup, reporting.study)
    choices = list(DistributionChoice.objects.filter(booking=booking).values_list("pk", flat=True))
    user = citizen_account_create(codice_fiscale=MARIO_CF, password="x" * 20)

    def withdrawal_fails(**kwargs: object) -> int:
        raise RuntimeError("the database went away between the two writes")

    monkeypatch.setattr(publication, "publications_withdraw_for_revocation", withdrawal_fails)
    with pytest.raises(RuntimeError):
        consent_revoke_online(booking=booking, requested_by=cup.mario, user=user)

    # The revoking choice went with the failed withdrawal: nothing half-done.
    assert list(DistributionChoice.objects.filter(booking=booking).values_list("pk", flat=True)) == choices
    assert fresh(booking).current_choice().delivery == DistributionChoice.Delivery.ONLINE  # type: ignore[union-attr]
    assert not AuditEvent.objects.filter(action="cup.booking.consent_revoke").exists()
    monkeypatch.undo()
    assert consent_revoke_online(booking=booking, requested_by=cup.mario, user=user) == 0
    assert fresh(booking).current_choice().revokes_consent  # type: ignore[union-attr]


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


def test_emergency_access_is_per_patient_needs_a_reason_and_is_audited(reporting: Reporting) -> None:
    study = reporting.study
    conceal(patient=study.patient, study=study)
    colleague = reporting.colleague

    for reason in ("", "urgente", "   breve   "):
        with pytest.raises(PortalError, match="motivo"):
            emergency_access_grant(user=colleague, patient=study.patient, reason=reason, source="10.0.0.1")
    assert not EmergencyAccess.objects.exists()
    assert not AuditEvent.objects.filter(action="portal.emergency_access").exists()
    assert not access.study_visible(access.principal_for_user(colleague), study)

    row = emergency_access_grant(
        user=colleague,
        patient=study.patient,
        reason="Paziente in pronto soccorso, politrauma: confronto con la TC precedente.",
        source="10.0.0.1",
    )

    assert (row.user, row.patient, row.study) == (colleague, study.patient, None)
    event = AuditEvent.objects.get(action="portal.emergency_access")
    assert (event.user, event.patient_id, event.study_id, event.source) == (
        colleague,
        study.patient_id,
        None,
        "10.0.0.1",
    )
    assert event.detail["reason"].startswith("Paziente in pronto soccorso")
    assert "concealed" not in event.detail  # nothing says whether anything was hidden
    assert access.study_visible(access.principal_for_user(colleague), study)


# --- The data migration -------------------------------------------------------------------


def test_the_migration_narrows_old_guardian_rows_and_gives_radiologists_the_emergency_permission(cup: Cup) -> None:
    import importlib

    from django.apps import apps
    from django.contrib.auth.models import Group, Permission

    migration = importlib.import_module("portal.migrations.0005_delegation_kinds_emergency_permission")
    old = Delegation.objects.create(
        delegator=cup.mario, delegate=cup.laura, kind="tutore", evidence="x", registered_by=cup.operator.user
    )
    radiologists, archivists = Group.objects.create(name="Radiologi"), Group.objects.create(name="Archivisti")
    migration._guardian_to_support(apps, None)
    migration._grant_emergency_access(apps, None)
    old.refresh_from_db()
    # "tutore o amministratore di sostegno": the kind with fewer powers (no consent in her name).
    assert old.kind == Delegation.Kind.SUPPORT
    permission = Permission.objects.get(content_type__app_label="portal", codename="emergency_access")
    assert permission in radiologists.permissions.all()
    assert permission not in archivists.permissions.all()


def test_a_parent_delegation_without_the_childs_birth_date_is_not_in_force(cup: Cup) -> None:
    """A row the desk could not check (the birth date removed afterwards) gives nothing; other kinds still hold."""
    make_minor(cup)
    parent = delegation_register(
        delegator=cup.mario, delegate=cup.laura, kind=Delegation.Kind.PARENT, evidence="x", user=cup.operator.user
    )
    Delegation.objects.filter(pk=parent.pk).update(valid_until=None)
    assert patients_acted_for(patient=cup.laura) == [cup.laura, cup.mario]
    Patient.objects.filter(pk=cup.mario.pk).update(birth_date=None)
    assert patients_acted_for(patient=cup.laura) == [cup.laura]
    Delegation.objects.filter(pk=parent.pk).update(kind=Delegation.Kind.OTHER)
    assert patients_acted_for(patient=cup.laura) == [cup.laura, cup.mario]
