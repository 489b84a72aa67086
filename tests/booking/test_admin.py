"""The CUP's admin through the access policy (archive.access): a booking or a
reconciliation whose study the user may not see (hidden by the patient, another
health authority's) is not there; a booking not yet performed follows its facility.
Lists are audited with the patients they showed."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from booking.models import Booking, Reconciliation
from kernel.models import AuditEvent
from portal.models import Concealment, EmergencyAccess
from tests.booking.conftest import Cup, linked_booking
from tests.reporting_helpers import Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (fixture)


def client_for(user: object) -> Client:
    for codename in ("view_booking", "view_reconciliation"):
        user.user_permissions.add(Permission.objects.get(content_type__app_label="booking", codename=codename))  # type: ignore[attr-defined]
    client = Client()
    client.force_login(type(user).objects.get(pk=user.pk))  # type: ignore[attr-defined]
    return client


def listed(client: Client, model: str) -> set:  # type: ignore[type-arg]
    response = client.get(reverse(f"admin:booking_{model}_changelist"))
    assert response.status_code == 200
    return set(response.context["cl"].result_list)


@pytest.fixture
def rep(cup: Cup, reporting: Reporting) -> Reporting:
    """The reporting study, ingested after the CUP registered its patient (the same codice fiscale)."""
    return reporting


@pytest.fixture
def booked(cup: Cup, rep: Reporting) -> tuple[Booking, Booking]:
    performed = linked_booking(cup, rep.study)
    scheduled = cup.book(cup.laura, station=cup.other_ct_station)
    return performed, scheduled


def test_a_booking_of_a_hidden_study_is_not_in_the_admin(rep: Reporting, booked: tuple[Booking, Booking]) -> None:
    performed, scheduled = booked
    client = client_for(rep.colleague)
    assert listed(client, "booking") == {performed, scheduled}

    Concealment.objects.create(patient=rep.study.patient, study=rep.study)

    assert listed(client, "booking") == {scheduled}
    hidden = client.get(reverse("admin:booking_booking_change", args=[performed.pk]))
    missing = client.get(reverse("admin:booking_booking_change", args=[999999]))
    assert hidden.status_code == missing.status_code == 302 and hidden["Location"] == missing["Location"]
    search = client.get(reverse("admin:booking_booking_changelist"), {"q": performed.accession_number})
    assert search.context["cl"].result_count == 0

    EmergencyAccess.objects.create(
        user=rep.colleague,
        patient=rep.study.patient,
        reason="Urgenza clinica in reparto.",
        at=timezone.now(),
    )
    assert listed(client, "booking") == {performed, scheduled}


def test_another_authoritys_bookings_are_not_in_the_admin(rep: Reporting, booked: tuple[Booking, Booking]) -> None:
    assert listed(client_for(rep.foreign), "booking") == set()


def test_a_reconciliation_of_a_hidden_study_is_not_in_the_admin(
    cup: Cup,
    rep: Reporting,
) -> None:
    waiting = Reconciliation.objects.create(study=rep.study, reason=Reconciliation.Reason.NO_BOOKING)
    client = client_for(rep.colleague)
    assert listed(client, "reconciliation") == {waiting}
    assert listed(client_for(rep.foreign), "reconciliation") == set()

    Concealment.objects.create(patient=rep.study.patient, study=rep.study)

    assert listed(client, "reconciliation") == set()
    assert client.get(reverse("admin:booking_reconciliation_change", args=[waiting.pk])).status_code == 302


def test_the_booking_list_is_audited_with_its_patients(
    cup: Cup,
    rep: Reporting,
    booked: tuple[Booking, Booking],
) -> None:
    client_for(rep.colleague).get(reverse("admin:booking_booking_changelist"), {"q": "ROSSI"})
    event = AuditEvent.objects.filter(action="admin.booking.list").latest("id")
    assert event.detail["patients"] == [cup.mario.pk] and event.detail["q"] == "ROSSI"
