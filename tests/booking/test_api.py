"""The CUP's REST API: an external CUP books, reads, moves and cancels exams
and changes the distribution choice, by token, under /api/cup/."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from archive.models import Patient
from booking.models import Booking, DistributionChoice
from kernel.models import AuditEvent
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup
from tests.dicomweb_helpers import ApiUser, make_user

# Verdi Giuseppe, born in Trieste on 1 January 1980: python-codicefiscale's encoding.
NEW_CF = "VRDGPP80A01L424F"

pytestmark = pytest.mark.django_db


def _iso(when: dt.datetime) -> str:
    return timezone.localtime(when).isoformat()


def _body(cup: Cup, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "codice_fiscale": MARIO_CF,
        "procedure": cup.ct.code,
        "facility": cup.region.facility.code,
        "station": cup.ct_station.ae_title,
        "scheduled_at": _iso(cup.next_slot()),
        "nre": "0600A1234567890",
        "contact_phone": "+39 040 123456",
        "contact_email": "mario.rossi@example.org",
        "clinical_question": "Tosse persistente",
        "referring_physician": "Dott. Bianchi",
        "channel": "regional_cup",
        "external_id": "CUP-0001",
        "choice": {
            "delivery": "online",
            "consent": {"given": True, "text_version": cup.consent.version, "collected_by": "Anna Neri"},
        },
    }
    body.update(overrides)
    return body


def _post(client: Client, user: ApiUser, url: str, body: dict[str, Any]) -> Any:
    return client.post(url, body, content_type="application/json", **user.auth)


def _create(client: Client, cup: Cup, **overrides: Any) -> Any:
    return _post(client, cup.operator, "/api/cup/bookings/", _body(cup, **overrides))


# --- create ------------------------------------------------------------------------------


def test_create_for_existing_patient_answers_the_booking(client: Client, cup: Cup) -> None:
    when = cup.next_slot()
    response = _create(client, cup, scheduled_at=_iso(when))

    assert response.status_code == 201, response.json()
    data = response.json()
    booking = Booking.objects.get(accession_number=data["accession_number"])
    assert booking.patient == cup.mario
    assert booking.external_id == "CUP-0001"
    assert booking.operator == cup.operator.user
    assert data["accession_number"].startswith("TSC")
    assert data["study_instance_uid"] == booking.study_instance_uid
    assert data["status"] == "booked"
    assert dt.datetime.fromisoformat(data["scheduled_at"]) == when
    assert data["facility"] == "TS-CAT"
    assert data["station"]["ae_title"] == "CT01"
    assert data["procedure"]["code"] == "87.41"
    assert data["patient_codice_fiscale"] == MARIO_CF
    assert data["choice"]["version"] == 1
    assert data["choice"]["delivery"] == "online"
    assert data["choice"]["consent_text_version"] == "2026-01"
    assert data["choice"]["recorded_by_name"] == "Anna Neri"
    assert data["choice"]["recorded_at"]
    assert [h["status"] for h in data["status_history"]] == ["booked"]
    event = AuditEvent.objects.get(action="cup.booking.create")
    assert event.user_id == cup.operator.user.pk
    assert event.patient == cup.mario
    assert event.source == "127.0.0.1"


def test_create_with_unknown_codice_fiscale_registers_the_patient(client: Client, cup: Cup) -> None:
    response = _create(
        client,
        cup,
        codice_fiscale=NEW_CF.lower(),
        family_name="Verdi",
        given_name="Giuseppe",
        birth_date="1980-01-01",
        sex="M",
    )

    assert response.status_code == 201, response.json()
    patient = Patient.objects.get(codice_fiscale=NEW_CF)
    assert (patient.family_name, patient.given_name) == ("VERDI", "GIUSEPPE")
    assert response.json()["patient_codice_fiscale"] == NEW_CF
    assert AuditEvent.objects.filter(action="cup.patient.create", patient=patient).exists()


def test_unknown_codice_fiscale_without_personal_data_is_refused(client: Client, cup: Cup) -> None:
    response = _create(client, cup, codice_fiscale=NEW_CF)

    assert response.status_code == 400
    assert response.json()["field"] == "codice_fiscale"
    assert "family_name" in response.json()["detail"]
    assert not Patient.objects.filter(codice_fiscale=NEW_CF).exists()


def test_invalid_codice_fiscale_is_refused_with_the_reason(client: Client, cup: Cup) -> None:
    wrong_check = NEW_CF[:15] + "A"
    response = _create(
        client, cup, codice_fiscale=wrong_check, family_name="Verdi", given_name="G", birth_date="1980-01-01", sex="M"
    )

    assert response.status_code == 400
    data = response.json()
    assert data["field"] == "codice_fiscale"
    assert data["code"] == "invalid_codice_fiscale"
    assert "carattere di controllo" in data["detail"] and "atteso F" in data["detail"]
    assert not Booking.objects.exists()


def test_new_patient_whose_data_disagree_with_the_code_is_not_left_behind(client: Client, cup: Cup) -> None:
    response = _create(
        client, cup, codice_fiscale=NEW_CF, family_name="Verdi", given_name="G", birth_date="1980-01-01", sex="F"
    )

    assert response.status_code == 400
    assert response.json()["field"] == "sex"
    assert not Patient.objects.filter(codice_fiscale=NEW_CF).exists()


def test_new_patient_registered_by_a_failed_booking_is_rolled_back(client: Client, cup: Cup) -> None:
    past = timezone.now().replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
    response = _create(
        client,
        cup,
        codice_fiscale=NEW_CF,
        family_name="Verdi",
        given_name="Giuseppe",
        birth_date="1980-01-01",
        sex="M",
        scheduled_at=_iso(past),
    )

    assert response.status_code == 400
    assert not Patient.objects.filter(codice_fiscale=NEW_CF).exists()
    assert not AuditEvent.objects.filter(action="cup.patient.create").exists()


def test_creating_a_patient_needs_add_patient(client: Client, cup: Cup) -> None:
    clerk = make_user("sportello", "booking.add_booking", "booking.view_booking")
    body = _body(
        cup, codice_fiscale=NEW_CF, family_name="Verdi", given_name="Giuseppe", birth_date="1980-01-01", sex="M"
    )

    response = _post(client, clerk, "/api/cup/bookings/", body)

    assert response.status_code == 403
    assert not Patient.objects.filter(codice_fiscale=NEW_CF).exists()
    # An existing patient needs no such permission.
    assert _post(client, clerk, "/api/cup/bookings/", _body(cup)).status_code == 201


def test_a_date_in_the_past_is_refused(client: Client, cup: Cup) -> None:
    past = timezone.localtime().replace(hour=9, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
    response = _create(client, cup, scheduled_at=past.isoformat())

    assert response.status_code == 400
    assert response.json()["field"] == "scheduled_at"
    assert "passate" in response.json()["detail"]


def test_a_time_without_offset_is_refused(client: Client, cup: Cup) -> None:
    naive = timezone.localtime(cup.next_slot()).replace(tzinfo=None).isoformat()
    response = _create(client, cup, scheduled_at=naive)

    assert response.status_code == 400
    assert response.json()["field"] == "scheduled_at"
    assert "fuso orario" in response.json()["detail"]


def test_a_time_in_utc_is_the_same_slot(client: Client, cup: Cup) -> None:
    when = cup.next_slot()
    response = _create(client, cup, scheduled_at=when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"))

    assert response.status_code == 201, response.json()
    assert Booking.objects.get().scheduled_at == when


def test_unknown_procedure_code_is_refused_naming_the_field(client: Client, cup: Cup) -> None:
    response = _create(client, cup, procedure="99.99")

    assert response.status_code == 400
    assert response.json()["field"] == "procedure"
    assert "99.99" in response.json()["detail"]


def test_unknown_station_is_refused(client: Client, cup: Cup) -> None:
    response = _create(client, cup, station="NOPE")

    assert response.status_code == 400
    assert response.json()["field"] == "station"


def test_station_by_id(client: Client, cup: Cup) -> None:
    body = _body(cup, station_id=cup.ct_station.pk)
    del body["facility"], body["station"]

    response = _post(client, cup.operator, "/api/cup/bookings/", body)

    assert response.status_code == 201, response.json()
    assert response.json()["station"]["id"] == cup.ct_station.pk


def test_procedure_on_a_station_of_another_modality_is_refused(client: Client, cup: Cup) -> None:
    response = _create(client, cup, procedure=cup.mr.code)

    assert response.status_code == 400
    assert response.json()["field"] == "station"


def test_online_without_consent_is_refused(client: Client, cup: Cup) -> None:
    response = _create(client, cup, choice={"delivery": "online"})

    assert response.status_code == 400
    assert response.json()["field"] == "choice.consent.given"
    assert "consenso" in response.json()["detail"]
    assert not Booking.objects.exists()


def test_online_with_consent_refused_by_the_patient_is_refused(client: Client, cup: Cup) -> None:
    choice = {"delivery": "online", "consent": {"given": False, "text_version": "2026-01", "collected_by": "Anna"}}
    response = _create(client, cup, choice=choice)

    assert response.status_code == 400
    assert response.json()["field"] == "choice.consent.given"


def test_unknown_consent_text_version_is_refused(client: Client, cup: Cup) -> None:
    choice = {"delivery": "online", "consent": {"given": True, "text_version": "1999-01", "collected_by": "Anna"}}
    response = _create(client, cup, choice=choice)

    assert response.status_code == 400
    assert response.json()["field"] == "choice.consent.text_version"
    assert "1999-01" in response.json()["detail"]


def test_cd_needs_no_consent(client: Client, cup: Cup) -> None:
    response = _create(client, cup, choice={"delivery": "cd"})

    assert response.status_code == 201, response.json()
    assert response.json()["choice"]["delivery"] == "cd"
    assert response.json()["choice"]["consent_text_version"] is None


def test_missing_required_field_is_named(client: Client, cup: Cup) -> None:
    body = _body(cup)
    del body["channel"]

    response = _post(client, cup.operator, "/api/cup/bookings/", body)

    assert response.status_code == 400
    assert response.json()["field"] == "channel"
    assert response.json()["detail"]


def test_invalid_nre_is_refused(client: Client, cup: Cup) -> None:
    response = _create(client, cup, nre="123")

    assert response.status_code == 400
    assert response.json()["field"] == "nre"


def test_slot_taken_is_a_conflict(client: Client, cup: Cup) -> None:
    when = cup.next_slot()
    cup.book(cup.laura, when=when)

    response = _create(client, cup, scheduled_at=_iso(when))

    assert response.status_code == 409
    assert response.json()["code"] == "slot_taken"
    assert response.json()["field"] == "scheduled_at"


def test_duplicate_external_id_is_a_conflict_naming_the_booking(client: Client, cup: Cup) -> None:
    first = _create(client, cup).json()
    later = cup.next_slot()  # the first booking took the earliest slot

    response = _create(client, cup, scheduled_at=_iso(later), codice_fiscale=LAURA_CF)

    assert response.status_code == 409
    data = response.json()
    assert data["code"] == "duplicate"
    assert data["field"] == "external_id"
    assert data["accession_number"] == first["accession_number"]
    assert Booking.objects.count() == 1


def test_a_repeated_post_is_a_duplicate_not_a_taken_slot(client: Client, cup: Cup) -> None:
    body = _body(cup)
    first = _post(client, cup.operator, "/api/cup/bookings/", body).json()

    response = _post(client, cup.operator, "/api/cup/bookings/", body)

    assert response.status_code == 409
    assert response.json()["accession_number"] == first["accession_number"]


# --- authentication and permissions ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/cup/procedures/"),
        ("get", "/api/cup/stations/"),
        ("get", "/api/cup/slots/?station=1&date=2030-01-01"),
        ("post", "/api/cup/bookings/"),
        ("get", "/api/cup/bookings/TSC260000001/"),
        ("patch", "/api/cup/bookings/TSC260000001/"),
        ("post", "/api/cup/bookings/TSC260000001/cancel/"),
        ("post", "/api/cup/bookings/TSC260000001/choice/"),
    ],
)
def test_without_token_is_401(client: Client, cup: Cup, method: str, url: str) -> None:
    response = getattr(client, method)(url, {}, content_type="application/json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token, Bearer"


def test_bad_token_is_401(client: Client, cup: Cup) -> None:
    response = client.get("/api/cup/procedures/", HTTP_AUTHORIZATION="Token nope")

    assert response.status_code == 401


def test_wrong_permission_is_403(client: Client, cup: Cup) -> None:
    booking = cup.book()
    reader = make_user("lettore", "booking.view_booking")
    nobody = make_user("nessuno", "archive.view_study")
    detail = f"/api/cup/bookings/{booking.accession_number}/"

    assert client.get("/api/cup/procedures/", **nobody.auth).status_code == 403
    assert client.get(detail, **nobody.auth).status_code == 403
    assert client.get(detail, **reader.auth).status_code == 200
    assert _post(client, reader, "/api/cup/bookings/", _body(cup)).status_code == 403
    assert client.patch(detail, {}, content_type="application/json", **reader.auth).status_code == 403
    assert _post(client, reader, f"{detail}cancel/", {}).status_code == 403
    assert _post(client, reader, f"{detail}choice/", {"delivery": "cd"}).status_code == 403
    assert Booking.objects.get().status == Booking.Status.BOOKED
    assert client.delete(detail, **cup.operator.auth).status_code == 405


# --- catalogue and slots ----------------------------------------------------------------


def test_procedures_lists_the_bookable_catalogue(client: Client, cup: Cup) -> None:
    cup.mr.active = False
    cup.mr.save()

    response = client.get("/api/cup/procedures/", **cup.operator.auth)

    assert response.status_code == 200
    assert response.json() == [
        {"code": "87.41", "description": "TC torace senza mdc", "modality": "CT", "body_part": "CHEST"}
    ]


def test_stations_by_facility_and_modality(client: Client, cup: Cup) -> None:
    response = client.get("/api/cup/stations/?facility=TS-CAT&modality=CT", **cup.operator.auth)

    assert response.status_code == 200
    assert [(s["id"], s["ae_title"], s["facility"]) for s in response.json()] == [(cup.ct_station.pk, "CT01", "TS-CAT")]
    everything = client.get("/api/cup/stations/", **cup.operator.auth).json()
    assert {s["ae_title"] for s in everything} == {"CT01", "MR01", "CTGO"}


def test_slots_lists_the_free_ones(client: Client, cup: Cup) -> None:
    first = cup.next_slot()
    day = timezone.localtime(first).date()
    url = f"/api/cup/slots/?station={cup.ct_station.pk}&date={day.isoformat()}"
    before = client.get(url, **cup.operator.auth).json()
    cup.book(when=first)

    after = client.get(url, **cup.operator.auth).json()

    assert before["slot_minutes"] == 20
    assert len(before["free"]) == 30  # 08:00 to 18:00 in 20 minutes
    assert dt.datetime.fromisoformat(before["free"][0]) == first
    assert dt.datetime.fromisoformat(after["free"][0]) == first + dt.timedelta(minutes=20)
    assert len(after["free"]) == 29


def test_slots_needs_station_and_date(client: Client, cup: Cup) -> None:
    response = client.get(f"/api/cup/slots/?station={cup.ct_station.pk}&date=tomorrow", **cup.operator.auth)

    assert response.status_code == 400
    assert response.json()["field"] == "date"


# --- read, move, cancel, choose ---------------------------------------------------------


def test_read_is_audited(client: Client, cup: Cup) -> None:
    booking = cup.book(external_id="CUP-77")

    response = client.get(f"/api/cup/bookings/{booking.accession_number}/", **cup.operator.auth)

    assert response.status_code == 200
    assert response.json()["accession_number"] == booking.accession_number
    assert response.json()["external_id"] == "CUP-77"
    event = AuditEvent.objects.get(action="cup.api.booking.read")
    assert event.patient == cup.mario
    assert event.user_id == cup.operator.user.pk
    assert event.detail["accession_number"] == booking.accession_number


def test_lookup_by_external_id(client: Client, cup: Cup) -> None:
    booking = cup.book(external_id="CUP-77")

    found = client.get("/api/cup/bookings/?external_id=CUP-77", **cup.operator.auth)
    missing = client.get("/api/cup/bookings/?external_id=CUP-78", **cup.operator.auth)
    no_filter = client.get("/api/cup/bookings/", **cup.operator.auth)

    assert found.status_code == 200
    assert found.json()["accession_number"] == booking.accession_number
    assert missing.status_code == 404
    assert no_filter.status_code == 400
    assert AuditEvent.objects.filter(action="cup.api.booking.read").count() == 1


def test_unknown_accession_is_404(client: Client, cup: Cup) -> None:
    for method, url in (
        (client.get, "/api/cup/bookings/XX/"),
        (client.patch, "/api/cup/bookings/XX/"),
        (client.post, "/api/cup/bookings/XX/cancel/"),
        (client.post, "/api/cup/bookings/XX/choice/"),
    ):
        response = method(url, {}, content_type="application/json", **cup.operator.auth)
        assert response.status_code == 404, url
        assert "XX" in response.json()["detail"]


def test_reschedule_moves_the_booking(client: Client, cup: Cup) -> None:
    booking = cup.book()
    later = cup.next_slot(days=2)

    response = client.patch(
        f"/api/cup/bookings/{booking.accession_number}/",
        {"scheduled_at": _iso(later), "contact_phone": "333 1234567", "clinical_question": "Controllo"},
        content_type="application/json",
        **cup.operator.auth,
    )

    assert response.status_code == 200, response.json()
    booking.refresh_from_db()
    assert booking.scheduled_at == later
    assert booking.contact_phone == "333 1234567"
    assert booking.clinical_question == "Controllo"
    assert booking.nre == ""  # absent fields stay as they were
    assert dt.datetime.fromisoformat(response.json()["scheduled_at"]) == later
    event = AuditEvent.objects.get(action="cup.booking.update")
    assert event.source == "127.0.0.1"
    assert "scheduled_at" in event.detail["changed"]


def test_reschedule_to_another_station_by_ae_title(client: Client, cup: Cup) -> None:
    from booking.models import Station

    ct2 = Station.objects.create(facility=cup.region.facility, ae_title="CT02", name="TC 2", modality="CT")
    booking = cup.book()

    response = client.patch(
        f"/api/cup/bookings/{booking.accession_number}/",
        {"station": "CT02"},
        content_type="application/json",
        **cup.operator.auth,
    )

    assert response.status_code == 200, response.json()
    booking.refresh_from_db()
    assert booking.station == ct2


def test_reschedule_onto_a_taken_slot_is_a_conflict(client: Client, cup: Cup) -> None:
    booking = cup.book()
    other = cup.book(cup.laura)

    response = client.patch(
        f"/api/cup/bookings/{booking.accession_number}/",
        {"scheduled_at": _iso(other.scheduled_at)},
        content_type="application/json",
        **cup.operator.auth,
    )

    assert response.status_code == 409
    assert response.json()["code"] == "slot_taken"


def test_cancel_frees_the_slot(client: Client, cup: Cup) -> None:
    booking = cup.book(external_id="CUP-1")
    url = f"/api/cup/bookings/{booking.accession_number}/cancel/"

    response = _post(client, cup.operator, url, {"reason": "Il paziente ha disdetto"})

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "cancelled"
    assert [h["status"] for h in response.json()["status_history"]] == ["booked", "cancelled"]
    assert response.json()["status_history"][-1]["note"] == "Il paziente ha disdetto"
    assert AuditEvent.objects.filter(action="cup.booking.cancel", patient=cup.mario).exists()
    again = _create(client, cup, scheduled_at=_iso(booking.scheduled_at), codice_fiscale=LAURA_CF, external_id="CUP-2")
    assert again.status_code == 201, again.json()
    # Cancelling twice is refused.
    assert _post(client, cup.operator, url, {}).status_code == 400


def test_choice_change_adds_version_2_and_keeps_version_1(client: Client, cup: Cup) -> None:
    booking = cup.book()  # online, version 1
    url = f"/api/cup/bookings/{booking.accession_number}/choice/"

    response = _post(client, cup.operator, url, {"delivery": "cd", "collected_by": "Anna Neri", "note": "Preferisce"})

    assert response.status_code == 201, response.json()
    data = response.json()
    assert data["choice"]["version"] == 2
    assert data["choice"]["delivery"] == "cd"
    assert data["choice"]["revokes_consent"] is True
    assert [(c["version"], c["delivery"]) for c in data["choices"]] == [(1, "online"), (2, "cd")]
    versions = DistributionChoice.objects.filter(booking=booking).order_by("version")
    assert [(c.version, c.delivery, c.consent_text_id) for c in versions] == [
        (1, "online", cup.consent.pk),
        (2, "cd", None),
    ]
    assert versions[1].recorded_by_name == "Anna Neri"
    assert AuditEvent.objects.filter(action="cup.booking.choice", patient=cup.mario).count() == 1


def test_choice_back_to_online_needs_consent(client: Client, cup: Cup) -> None:
    booking = cup.book(delivery="cd")
    url = f"/api/cup/bookings/{booking.accession_number}/choice/"

    refused = _post(client, cup.operator, url, {"delivery": "online"})
    consent = {"given": True, "text_version": cup.consent.version, "collected_by": "Anna Neri"}
    accepted = _post(client, cup.operator, url, {"delivery": "online", "consent": consent})
    unchanged = _post(client, cup.operator, url, {"delivery": "online", "consent": consent})

    assert refused.status_code == 400
    assert refused.json()["field"] == "consent.given"
    assert accepted.status_code == 201
    assert accepted.json()["choice"]["consent_text_version"] == "2026-01"
    assert unchanged.status_code == 200
    assert unchanged.json()["choice"]["version"] == 2


def test_choice_on_a_cancelled_booking_is_refused(client: Client, cup: Cup) -> None:
    booking = cup.book()
    _post(client, cup.operator, f"/api/cup/bookings/{booking.accession_number}/cancel/", {})

    response = _post(client, cup.operator, f"/api/cup/bookings/{booking.accession_number}/choice/", {"delivery": "cd"})

    assert response.status_code == 400
    assert "annullat" in response.json()["detail"]


# --- the schema ---------------------------------------------------------------------------


def test_schema_describes_every_cup_endpoint(client: Client) -> None:
    response = client.get("/api/schema/?format=json")

    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    expected = {
        "/api/cup/procedures/": ["get"],
        "/api/cup/stations/": ["get"],
        "/api/cup/slots/": ["get"],
        "/api/cup/bookings/": ["get", "post"],
        "/api/cup/bookings/{accession_number}/": ["get", "patch"],
        "/api/cup/bookings/{accession_number}/cancel/": ["post"],
        "/api/cup/bookings/{accession_number}/choice/": ["post"],
    }
    for url, methods in expected.items():
        assert url in paths, url
        for method in methods:
            operation = paths[url][method]
            assert operation["tags"] == ["CUP"], (url, method)
            assert "200" in operation["responses"] or "201" in operation["responses"]
    create = paths["/api/cup/bookings/"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/BookingCreateInput")
    assert create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/BookingOutput")
    assert {"400", "401", "403", "409"} <= set(create["responses"])
    choice = schema["components"]["schemas"]["BookingOutput"]["properties"]["choice"]
    assert "ChoiceOutput" in str(choice)


# --- priority ----------------------------------------------------------------------------


def test_the_prescription_priority_goes_in_and_comes_out(client: Client, cup: Cup) -> None:
    response = _create(client, cup, priority="B")

    assert response.status_code == 201, response.json()
    assert response.json()["priority"] == "B"
    accession = response.json()["accession_number"]
    assert Booking.objects.get(accession_number=accession).priority == "B"

    response = client.patch(
        f"/api/cup/bookings/{accession}/", {"priority": "U"}, content_type="application/json", **cup.operator.auth
    )

    assert response.status_code == 200, response.json()
    assert response.json()["priority"] == "U"
    assert Booking.objects.get(accession_number=accession).priority == "U"
    assert "priority" in AuditEvent.objects.get(action="cup.booking.update").detail["changed"]


def test_without_priority_a_booking_is_planned_and_an_unknown_class_is_refused(client: Client, cup: Cup) -> None:
    response = _create(client, cup)
    assert response.status_code == 201, response.json()
    assert response.json()["priority"] == "P"

    response = _create(client, cup, priority="X", external_id="CUP-0002", scheduled_at=_iso(cup.next_slot(days=2)))
    assert response.status_code == 400
    assert response.json()["field"] == "priority"
