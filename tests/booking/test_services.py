"""The CUP's rules, through its services: accession numbers, slots, the
distribution choice and its consent, cancellation, patients, the catalogue."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from codicefiscale import codicefiscale
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import DatabaseError, close_old_connections, connections, transaction
from django.utils import timezone

from archive.models import Patient
from booking import services
from booking.models import AccessionSequence, Booking, BookingStatusChange, DistributionChoice, Procedure
from booking.services import BookingError, SlotTaken
from kernel.models import AuditEvent
from tests.booking.conftest import MARIO_CF, Cup

ONLINE, CD = DistributionChoice.Delivery.ONLINE, DistributionChoice.Delivery.CD


# --- accession numbers -----------------------------------------------------------------


def test_accession_numbers_carry_the_facility_prefix_and_year_and_follow_each_other(cup: Cup) -> None:
    first = cup.book()
    second = cup.book(cup.laura)
    year = f"{first.scheduled_at.year % 100:02d}"
    assert first.accession_number == f"TSC{year}0000001"
    assert second.accession_number == f"TSC{year}0000002"
    other = cup.book(station=cup.other_ct_station)
    assert other.accession_number == f"GOS{year}0000001"
    assert len(first.accession_number) <= 16


def test_a_new_year_restarts_the_counter(cup: Cup) -> None:
    AccessionSequence.objects.filter(facility=cup.region.facility).update(year=1, last_number=41)
    booking = cup.book()
    assert booking.accession_number.endswith("0000001")


def test_a_facility_without_a_prefix_cannot_book(cup: Cup) -> None:
    AccessionSequence.objects.filter(facility=cup.region.facility).delete()
    with pytest.raises(BookingError, match="prefisso"):
        cup.book()
    assert not Booking.objects.exists()


# --- slots -------------------------------------------------------------------------------


def test_free_slots_leave_out_taken_and_past_slots(cup: Cup) -> None:
    day = timezone.localdate() + dt.timedelta(days=1)
    slots = services.station_slots(station=cup.ct_station, day=day)
    assert len(slots) == 30  # 08:00-18:00 in 20-minute slots
    assert (slots[0].hour, slots[0].minute, slots[-1].hour, slots[-1].minute) == (8, 0, 17, 40)
    cup.book(when=slots[3])
    free = services.station_free_slots(station=cup.ct_station, day=day)
    assert slots[3] not in free and len(free) == 29
    # At 10:05 of that day, only the slots after it remain.
    at = slots[6] + dt.timedelta(minutes=5)
    assert services.station_free_slots(station=cup.ct_station, day=day, now=at)[0] == slots[7]


def test_a_room_has_no_slots_on_the_days_it_is_closed(cup: Cup) -> None:
    cup.ct_station.open_weekdays = "12345"
    cup.ct_station.save()
    monday = timezone.localdate() + dt.timedelta(days=7 - timezone.localdate().weekday())
    assert services.station_slots(station=cup.ct_station, day=monday)
    saturday = monday + dt.timedelta(days=5)
    assert services.station_slots(station=cup.ct_station, day=saturday) == []
    on_saturday = timezone.make_aware(dt.datetime.combine(saturday, dt.time(8, 0)))
    with pytest.raises(BookingError, match="non ha uno slot"):
        cup.book(when=on_saturday)


def test_a_taken_slot_cannot_be_booked_again_but_a_cancelled_one_can(cup: Cup) -> None:
    when = cup.next_slot()
    first = cup.book(when=when)
    with pytest.raises(SlotTaken, match="appena prenotato"):
        cup.book(cup.laura, when=when)
    assert Booking.objects.count() == 1
    services.booking_cancel(booking=first, user=cup.operator.user, reason="il paziente rinuncia")
    again = cup.book(cup.laura, when=when)
    assert again.scheduled_at == when and again.status == Booking.Status.BOOKED


@pytest.mark.django_db(transaction=True)
def test_two_operators_booking_the_same_slot_at_once_one_wins(cup: Cup) -> None:
    """Both pass every check before either writes; the database lets one in."""
    when = cup.next_slot()
    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]
    original = services._check_slot

    def check_then_wait(**kwargs):  # type: ignore[no-untyped-def]
        result = original(**kwargs)
        barrier.wait(timeout=10)  # both operators saw the slot free
        return result

    def operator(i: int, patient: Patient) -> None:
        try:
            outcomes[i] = cup.book(patient, when=when)
        except Exception as exc:
            outcomes[i] = exc
        finally:
            connections.close_all()

    services._check_slot = check_then_wait  # type: ignore[assignment]
    try:
        threads = [threading.Thread(target=operator, args=(i, p)) for i, p in enumerate((cup.mario, cup.laura))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        services._check_slot = original  # type: ignore[assignment]
        close_old_connections()
    won = [o for o in outcomes if isinstance(o, Booking)]
    lost = [o for o in outcomes if isinstance(o, SlotTaken)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert "appena prenotato da un altro operatore" in lost[0].message
    assert Booking.objects.filter(scheduled_at=when).count() == 1
    # The loser's accession number was rolled back with its booking.
    assert AccessionSequence.objects.get(facility=cup.region.facility).last_number == 1


def test_a_time_in_the_past_or_off_the_grid_is_refused(cup: Cup) -> None:
    past = timezone.now() - dt.timedelta(hours=1)
    with pytest.raises(BookingError, match="già passate") as exc:
        cup.book(when=past)
    assert exc.value.field == "scheduled_at"
    with pytest.raises(BookingError, match="non ha uno slot"):
        cup.book(when=cup.next_slot() + dt.timedelta(minutes=7))
    late = timezone.make_aware(dt.datetime.combine(timezone.localdate() + dt.timedelta(days=1), dt.time(19, 0)))
    with pytest.raises(BookingError, match="non ha uno slot"):
        cup.book(when=late)
    assert not Booking.objects.exists()


def test_a_procedure_is_booked_only_on_a_station_of_its_modality(cup: Cup) -> None:
    with pytest.raises(BookingError, match="non si esegue") as exc:
        services.booking_create(
            patient=cup.mario,
            procedure=cup.mr,
            station=cup.ct_station,
            scheduled_at=cup.next_slot(),
            delivery=CD,
            channel=Booking.Channel.PHONE,
            user=cup.operator.user,
        )
    assert exc.value.field == "station"


def test_inactive_procedures_provisional_patients_and_bad_contacts_are_refused(cup: Cup) -> None:
    provisional = Patient.objects.create(provisional=True, family_name="X")
    with pytest.raises(BookingError, match="codice fiscale"):
        cup.book(provisional)
    Procedure.objects.filter(pk=cup.ct.pk).update(active=False)
    cup.ct.refresh_from_db()
    with pytest.raises(BookingError, match="non è prenotabile"):
        cup.book()
    Procedure.objects.filter(pk=cup.ct.pk).update(active=True)
    cup.ct.refresh_from_db()
    with pytest.raises(BookingError) as exc:
        cup.book(contact_email="non-una-mail")
    assert exc.value.field == "contact_email"
    with pytest.raises(BookingError) as exc:
        cup.book(nre="12345")
    assert exc.value.field == "nre"
    with pytest.raises(BookingError) as exc:
        cup.book(contact_phone="040 123; DROP")
    assert exc.value.field == "contact_phone"
    assert not Booking.objects.exists()
    booking = cup.book(nre="0300a1234567890", contact_phone="+39 040 399 1111", contact_email="mario@example.it")
    assert booking.nre == "0300A1234567890"


# --- the distribution choice and its consent -------------------------------------------


def test_online_delivery_needs_the_patients_explicit_consent(cup: Cup) -> None:
    with pytest.raises(BookingError, match="consenso esplicito") as exc:
        services.booking_create(
            patient=cup.mario,
            procedure=cup.ct,
            station=cup.ct_station,
            scheduled_at=cup.next_slot(),
            delivery=ONLINE,
            consent_given=False,
            channel=Booking.Channel.REGIONAL_CUP,
            user=cup.operator.user,
        )
    assert exc.value.field == "consent_given"
    assert not Booking.objects.exists()
    booking = cup.book()
    choice = booking.current_choice()
    assert choice is not None
    assert (choice.version, choice.delivery, choice.consent_text, choice.recorded_by) == (
        1,
        ONLINE,
        cup.consent,
        cup.operator.user,
    )
    assert choice.channel == Booking.Channel.AUTHORITY_CUP


def test_without_an_information_text_in_force_online_delivery_is_not_offered(cup: Cup) -> None:
    cup.consent.delete()
    with pytest.raises(BookingError, match="Nessuna informativa"):
        cup.book()


def test_every_version_of_the_choice_is_kept_and_a_revocation_says_so(cup: Cup) -> None:
    booking = cup.book(delivery=CD)
    user = cup.operator.user
    services.distribution_choose(booking=booking, delivery=ONLINE, consent_given=True, channel="phone", user=user)
    services.distribution_choose(booking=booking, delivery=CD, channel="authority_cup", user=user, note="ci ripensa")
    versions = list(booking.choices.order_by("version"))
    assert [(c.version, c.delivery, c.revokes_consent) for c in versions] == [
        (1, CD, False),
        (2, ONLINE, False),
        (3, CD, True),
    ]
    assert versions[1].consent_text == cup.consent and versions[1].channel == "phone"
    # Choosing what is already chosen adds nothing.
    assert services.distribution_choose(booking=booking, delivery=CD, channel="phone", user=user) == versions[2]
    assert booking.choices.count() == 3
    assert AuditEvent.objects.filter(action="cup.booking.choice", patient=cup.mario).count() == 2


def test_the_choice_is_closed_once_the_report_is_published(cup: Cup) -> None:
    booking = cup.book(delivery=CD)
    for status in (Booking.Status.PERFORMED, Booking.Status.REPORTED):
        services.booking_status_set(booking=booking, status=status, system="test")
    with pytest.raises(BookingError, match="non si può più cambiare"):
        services.distribution_choose(
            booking=booking, delivery=ONLINE, consent_given=True, channel="phone", user=cup.operator.user
        )
    assert booking.choices.count() == 1


def test_consent_versions_and_status_history_are_append_only_in_the_database(cup: Cup) -> None:
    booking = cup.book()
    choice = booking.current_choice()
    assert choice is not None
    choice.note = "ritoccata"
    with pytest.raises(ValidationError):
        choice.save()
    with pytest.raises(ValidationError):
        choice.delete()
    for queryset in (DistributionChoice.objects.all(), BookingStatusChange.objects.all()):
        with pytest.raises(DatabaseError), transaction.atomic():
            queryset.update(note="riscritta")
    assert booking.current_choice().note == ""  # type: ignore[union-attr]


# --- the booking's life -------------------------------------------------------------------


def test_status_changes_are_kept_and_only_allowed_moves_happen(cup: Cup) -> None:
    booking = cup.book()
    services.booking_status_set(booking=booking, status=Booking.Status.ARRIVED, user=cup.operator.user)
    with pytest.raises(BookingError, match="non può passare"):
        services.booking_status_set(booking=booking, status=Booking.Status.REPORTED, system="test")
    services.booking_status_set(booking=booking, status=Booking.Status.PERFORMED, system="booking.match")
    with pytest.raises(BookingError, match="già stato eseguito"):
        services.booking_cancel(booking=booking, user=cup.operator.user)
    history = list(booking.status_changes.values_list("status", "system"))
    assert history == [("booked", ""), ("arrived", ""), ("performed", "booking.match")]
    booking.refresh_from_db()
    assert booking.status == Booking.Status.PERFORMED


def test_cancel_frees_the_slot_and_is_audited(cup: Cup) -> None:
    booking = cup.book()
    services.booking_cancel(booking=booking, user=cup.operator.user, reason="doppia prenotazione", source="10.0.0.5")
    booking.refresh_from_db()
    assert booking.status == Booking.Status.CANCELLED
    with pytest.raises(BookingError, match="già annullata"):
        services.booking_cancel(booking=booking, user=cup.operator.user)
    event = AuditEvent.objects.filter(action="cup.booking.cancel").get()
    assert (event.patient, event.username, event.source) == (cup.mario, "operatore", "10.0.0.5")
    assert event.detail["accession_number"] == booking.accession_number
    assert event.detail["reason"] == "doppia prenotazione"


def test_moving_a_booking_checks_the_new_slot(cup: Cup) -> None:
    booking = cup.book()
    other = cup.book(cup.laura)
    with pytest.raises(SlotTaken):
        services.booking_update(booking=booking, user=cup.operator.user, scheduled_at=other.scheduled_at)
    later = cup.next_slot(days=2)
    moved = services.booking_update(
        booking=booking, user=cup.operator.user, scheduled_at=later, clinical_question="dolore toracico"
    )
    assert (moved.scheduled_at, moved.clinical_question) == (later, "dolore toracico")
    with pytest.raises(BookingError, match="presidio"):
        services.booking_update(booking=booking, user=cup.operator.user, station=cup.other_ct_station)
    event = AuditEvent.objects.filter(action="cup.booking.update").get()
    assert set(event.detail["changed"]) == {"scheduled_at", "station", "clinical_question"}


def test_creating_a_booking_is_audited_with_its_choice(cup: Cup) -> None:
    booking = cup.book(source="10.1.2.3")
    event = AuditEvent.objects.filter(action="cup.booking.create").get()
    assert (event.patient, event.source) == (cup.mario, "10.1.2.3")
    assert event.detail["accession_number"] == booking.accession_number
    assert event.detail["choice"] == {
        "version": 1,
        "delivery": "online",
        "consent_text": "2026-01",
        "revokes_consent": False,
        "channel": "authority_cup",
    }


# --- patients ------------------------------------------------------------------------------


def _create(code: str, **overrides: object) -> Patient:
    values: dict[str, object] = dict(
        codice_fiscale=code,
        family_name="Verdi",
        given_name="Anna",
        birth_date=dt.date(1980, 4, 15),
        sex="F",
        user=None,
    )
    values.update(overrides)
    return services.patient_create(**values)  # type: ignore[arg-type]


def test_a_patient_is_registered_only_under_a_valid_codice_fiscale(db: None) -> None:
    code = codicefiscale.encode("Verdi", "Anna", "F", "1980-04-15", "Roma")
    wrong_check = code[:15] + ("A" if code[15] != "A" else "B")
    with pytest.raises(BookingError, match="carattere di controllo") as exc:
        _create(wrong_check)
    assert exc.value.field == "codice_fiscale"
    with pytest.raises(BookingError, match="16 caratteri"):
        _create(code[:12])
    with pytest.raises(BookingError, match="data di nascita"):
        _create(code, birth_date=dt.date(1980, 4, 16))
    with pytest.raises(BookingError, match="sesso"):
        _create(code, sex="M")
    assert not Patient.objects.exists()
    patient = _create(code.lower())
    assert (patient.codice_fiscale, patient.family_name, patient.provisional) == (code, "VERDI", False)
    with pytest.raises(BookingError, match="già registrato"):
        _create(code)
    assert AuditEvent.objects.filter(action="cup.patient.create", patient=patient).count() == 1


def test_an_omocodia_code_is_a_valid_and_different_code(db: None) -> None:
    code = codicefiscale.encode("Verdi", "Anna", "F", "1980-04-15", "Roma")
    omocode = [c for c in codicefiscale.decode(code)["omocodes"] if c != code][0]
    first = _create(code)
    second = _create(omocode)
    assert first.pk != second.pk and second.codice_fiscale == omocode


# --- the catalogue -----------------------------------------------------------------------------


def test_the_catalogue_loads_from_csv_all_rows_or_none(db: None) -> None:
    result = services.procedures_load_csv("code,description,modality,body_part\n87.41,TC torace,CT,CHEST\n")
    assert (result.created, result.updated) == (1, 0)
    bad = "code,description,modality,body_part\n87.41,TC torace (nuova),CT,CHEST\n99.99,Esame,ct?,X\n"
    with pytest.raises(BookingError, match="Riga 3"):
        services.procedures_load_csv(bad)
    assert Procedure.objects.get(code="87.41").description == "TC torace"
    with pytest.raises(BookingError, match="Colonne mancanti"):
        services.procedures_load_csv("code,description\n1,x\n")
    result = services.procedures_load_csv("code,description,modality,body_part,active\n87.41,TC torace,CT,CHEST,0\n")
    assert (result.created, result.updated) == (0, 1)
    assert not Procedure.objects.get(code="87.41").active


def test_the_demo_catalogue_loads_with_the_command(db: None, capsys: pytest.CaptureFixture[str]) -> None:
    csv_file = Path(__file__).resolve().parents[2] / "booking" / "data" / "procedures.csv"
    call_command("load_procedures", str(csv_file))
    modalities = set(Procedure.objects.values_list("modality", flat=True))
    assert {"CT", "MR", "US", "NM", "MG", "DX"} <= modalities
    assert Procedure.objects.filter(modality="US", body_part="HEART").count() >= 3  # echocardiography
    assert "procedures added" in capsys.readouterr().out


def test_mario_fixture_code_is_valid() -> None:
    from kernel.codice_fiscale import codice_fiscale_error

    assert codice_fiscale_error(MARIO_CF) is None


def test_the_prescription_priority_is_checked_and_can_change_before_the_exam(cup: Cup) -> None:
    assert cup.book().priority == "P"
    with pytest.raises(BookingError) as err:
        cup.book(cup.laura, priority="Z")
    assert err.value.field == "priority"

    booking = cup.book(cup.laura, priority="b", when=cup.next_slot(days=2))
    assert booking.priority == "B"
    booking = services.booking_update(booking=booking, user=cup.operator.user, priority="U")
    booking.refresh_from_db()
    assert booking.priority == "U"
