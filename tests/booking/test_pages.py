"""The CUP operator pages, through Django's test client: search, registration,
booking in two steps with the distribution choice and its consent, change,
cancellation, receipt, permissions and the audit trail."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from archive.models import Patient
from booking import services
from booking.models import Booking, DistributionChoice
from kernel.models import AuditEvent
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup
from tests.dicomweb_helpers import make_user
from tests.pdf_text import pdf_text

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(cup: Cup) -> Client:
    c = Client()
    c.force_login(cup.operator.user)
    return c


def errors_of(response, field: str) -> list[str]:  # type: ignore[no-untyped-def]
    form = response.context["form"]
    return list(form.errors.get(field, []))


def step2_data(cup: Cup, *, slot: dt.datetime | None = None, delivery: str = "cd", **extra: str) -> dict[str, str]:
    slot = timezone.localtime(slot or cup.next_slot())
    data = {
        "procedure": str(cup.ct.pk),
        "facility": str(cup.region.facility.pk),
        "day": slot.date().isoformat(),
        "slot": f"{cup.ct_station.pk}|{slot.isoformat()}",
        "nre": "",
        "contact_phone": "040 1234567",
        "contact_email": "mario.rossi@example.org",
        "clinical_question": "Dispnea da sforzo",
        "referring_physician": "Dr. Verdi",
        "channel": Booking.Channel.AUTHORITY_CUP,
        "delivery": delivery,
        "consent_version": cup.consent.version,
    }
    data.update(extra)
    return data


# --- access ---------------------------------------------------------------------------


def test_anonymous_is_sent_to_the_login_page(cup: Cup) -> None:
    response = Client().get(reverse("booking:home"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_is_italian_with_labelled_autofocused_fields(db: None) -> None:
    response = Client().get(reverse("login"))
    html = response.content.decode()
    assert response.status_code == 200
    assert '<html lang="it">' in html
    assert 'for="id_username"' in html and 'for="id_password"' in html
    assert re.search(r'<input[^>]*name="username"[^>]*autofocus', html)
    assert "Accedi" in html


def test_login_leads_to_the_cup_home(cup: Cup) -> None:
    cup.operator.user.set_password("segreta-123")
    cup.operator.user.save()
    c = Client()
    response = c.post(reverse("login"), {"username": "operatore", "password": "segreta-123"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("booking:home")
    assert response.status_code == 200


def test_user_without_permissions_gets_403(cup: Cup) -> None:
    c = Client()
    c.force_login(make_user("curioso", staff=False).user)
    booking = cup.book()
    for url in (
        reverse("booking:home"),
        reverse("booking:patient_search") + f"?codice_fiscale={MARIO_CF}",
        reverse("booking:patient_detail", args=[cup.mario.pk]),
        reverse("booking:booking_detail", args=[booking.accession_number]),
        reverse("booking:booking_receipt", args=[booking.accession_number]),
    ):
        assert c.get(url).status_code == 403, url
    assert not AuditEvent.objects.filter(username="curioso").exists()


def test_viewer_cannot_book_or_change(cup: Cup) -> None:
    c = Client()
    c.force_login(make_user("sola-lettura", "booking.view_booking", "archive.view_patient", staff=False).user)
    booking = cup.book()
    assert c.get(reverse("booking:patient_detail", args=[cup.mario.pk])).status_code == 200
    assert c.get(reverse("booking:booking_new", args=[cup.mario.pk])).status_code == 403
    assert c.post(reverse("booking:patient_create"), {}).status_code == 403
    response = c.post(reverse("booking:booking_cancel", args=[booking.accession_number]), {"reason": "x"})
    assert response.status_code == 403
    booking.refresh_from_db()
    assert booking.status == Booking.Status.BOOKED


# --- home and search ----------------------------------------------------------------------


def test_home_has_an_autofocused_search_and_the_days_bookings(client: Client, cup: Cup) -> None:
    booking = cup.book()
    response = client.get(
        reverse("booking:home"),
        {"facility": cup.region.facility.pk, "day": timezone.localtime(booking.scheduled_at).date().isoformat()},
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert re.search(r'<input[^>]*name="codice_fiscale"[^>]*autofocus', html)
    assert booking.accession_number in html
    assert "ROSSI" in html
    assert AuditEvent.objects.filter(action="cup.booking.list", patient=cup.mario).exists()


def test_search_by_codice_fiscale_finds_the_patient(client: Client, cup: Cup) -> None:
    response = client.get(reverse("booking:patient_search"), {"codice_fiscale": MARIO_CF.lower()})
    html = response.content.decode()
    assert response.status_code == 200
    assert reverse("booking:patient_detail", args=[cup.mario.pk]) in html
    assert "BIANCHI" not in html
    assert AuditEvent.objects.filter(action="cup.patient.search", patient=cup.mario).exists()


def test_search_with_a_wrong_check_character_says_which_is_expected(client: Client, cup: Cup) -> None:
    wrong = MARIO_CF[:15] + ("A" if MARIO_CF[15] != "A" else "B")
    response = client.get(reverse("booking:patient_search"), {"codice_fiscale": wrong})
    html = response.content.decode()
    assert errors_of(response, "codice_fiscale") == [
        f"Il carattere di controllo di {wrong} è errato: atteso {MARIO_CF[15]}."
    ]
    assert 'role="alert"' in html
    assert "atteso P" in html
    assert response.context["patients"] == []


def test_search_by_family_name_and_birth_date(client: Client, cup: Cup) -> None:
    response = client.get(reverse("booking:patient_search"), {"family_name": "bianchi", "birth_date": "1972-07-02"})
    html = response.content.decode()
    assert [p.pk for p in response.context["patients"]] == [cup.laura.pk]
    assert "ROSSI" not in html


def test_search_without_result_offers_to_create_the_patient_prefilled(client: Client, cup: Cup) -> None:
    response = client.get(reverse("booking:patient_search"), {"family_name": "Verdi", "birth_date": "1980-01-01"})
    html = response.content.decode()
    assert "Nessun paziente trovato" in html
    create = reverse("booking:patient_create")
    match = re.search(rf'href="({re.escape(create)}\?[^"]+)"', html)
    assert match is not None
    form_page = client.get(match.group(1).replace("&amp;", "&"))
    assert form_page.context["form"].initial == {"family_name": "Verdi", "birth_date": "1980-01-01"}


def test_empty_search_asks_for_something(client: Client, cup: Cup) -> None:
    response = client.get(reverse("booking:patient_search"), {"codice_fiscale": "", "family_name": "Rossi"})
    assert response.context["form"].non_field_errors()


# --- patients ------------------------------------------------------------------------------


def test_create_patient(client: Client, cup: Cup) -> None:
    Patient.objects.filter(pk=cup.mario.pk).update(codice_fiscale=None, provisional=True)
    response = client.post(
        reverse("booking:patient_create"),
        {
            "codice_fiscale": MARIO_CF.lower(),
            "family_name": "Rossi",
            "given_name": "Mario",
            "birth_date": "1956-03-12",
            "sex": "M",
        },
    )
    created = Patient.objects.get(codice_fiscale=MARIO_CF)
    assert response.status_code == 302
    assert response["Location"] == reverse("booking:patient_detail", args=[created.pk])
    assert created.family_name == "ROSSI"
    assert AuditEvent.objects.filter(action="cup.patient.create", patient=created, username="operatore").exists()


def test_create_patient_with_a_wrong_code_shows_the_reason_and_creates_nothing(client: Client, cup: Cup) -> None:
    before = Patient.objects.count()
    response = client.post(
        reverse("booking:patient_create"),
        {
            "codice_fiscale": "VRDGPP80A01L424Z",
            "family_name": "Verdi",
            "given_name": "Giuseppe",
            "birth_date": "1980-01-01",
            "sex": "M",
        },
    )
    assert response.status_code == 200
    [message] = errors_of(response, "codice_fiscale")
    assert "carattere di controllo" in message and "atteso" in message
    assert Patient.objects.count() == before


def test_create_patient_whose_code_disagrees_with_the_birth_date(client: Client, cup: Cup) -> None:
    Patient.objects.filter(pk=cup.laura.pk).update(codice_fiscale=None, provisional=True)
    response = client.post(
        reverse("booking:patient_create"),
        {
            "codice_fiscale": LAURA_CF,
            "family_name": "Bianchi",
            "given_name": "Laura",
            "birth_date": "1972-07-03",
            "sex": "F",
        },
    )
    assert errors_of(response, "birth_date") == [
        f"Il codice fiscale {LAURA_CF} indica la data di nascita 02/07/1972, non 03/07/1972: "
        "correggi la data o il codice fiscale."
    ]
    assert not Patient.objects.filter(codice_fiscale=LAURA_CF).exists()


def test_patient_page_lists_bookings_and_is_audited(client: Client, cup: Cup) -> None:
    booking = cup.book(delivery=DistributionChoice.Delivery.CD)
    response = client.get(reverse("booking:patient_detail", args=[cup.mario.pk]))
    html = response.content.decode()
    assert booking.accession_number in html
    assert "TC torace senza mdc" in html
    assert "CD da ritirare presso il presidio" in html
    assert "Prenota un esame" in html
    assert AuditEvent.objects.filter(action="cup.patient.view", patient=cup.mario, username="operatore").exists()


# --- booking ----------------------------------------------------------------------------------


def test_step_one_defaults_to_tomorrow_with_procedures_grouped_by_modality(client: Client, cup: Cup) -> None:
    response = client.get(reverse("booking:booking_new", args=[cup.mario.pk]))
    html = response.content.decode()
    tomorrow = (timezone.localdate() + dt.timedelta(days=1)).isoformat()
    assert re.search(rf'<input type="date" name="day" value="{tomorrow}"', html)
    assert '<optgroup label="CT">' in html and '<optgroup label="MR">' in html
    assert "Cerca disponibilità" in html


def test_step_two_lists_free_slots_per_station(client: Client, cup: Cup) -> None:
    taken = cup.book(patient=cup.laura)
    day = timezone.localtime(taken.scheduled_at).date()
    response = client.get(
        reverse("booking:booking_new", args=[cup.mario.pk]),
        {"procedure": cup.ct.pk, "facility": cup.region.facility.pk, "day": day.isoformat()},
    )
    html = response.content.decode()
    assert re.search(r"<legend[^>]*>TC 1</legend>", html)
    assert "TC Gorizia" not in html and "RM 1" not in html  # other facility, other modality
    assert f"{cup.ct_station.pk}|{timezone.localtime(taken.scheduled_at).isoformat()}" not in html
    free = services.station_free_slots(station=cup.ct_station, day=day)
    assert html.count('type="radio" name="slot"') == len(free)
    assert "Il paziente ha letto l'informativa (versione 2026-01) e acconsente alla consegna online" in html
    assert cup.consent.body in html


def test_book_with_cd_delivery(client: Client, cup: Cup) -> None:
    response = client.post(reverse("booking:booking_new", args=[cup.mario.pk]), step2_data(cup, nre="060A01234567890"))
    booking = Booking.objects.get(patient=cup.mario)
    assert response.status_code == 302
    assert response["Location"] == reverse("booking:booking_detail", args=[booking.accession_number])
    choice = booking.current_choice()
    assert choice is not None and choice.delivery == "cd" and choice.consent_text is None
    assert booking.nre == "060A01234567890"
    assert booking.operator == cup.operator.user
    assert AuditEvent.objects.filter(action="cup.booking.create", patient=cup.mario, username="operatore").exists()
    page = client.get(response["Location"])
    assert booking.accession_number in page.content.decode()
    assert "Prenotazione registrata" in page.content.decode()


def test_book_online_with_consent(client: Client, cup: Cup) -> None:
    response = client.post(
        reverse("booking:booking_new", args=[cup.mario.pk]),
        step2_data(cup, delivery="online", consent_given="on"),
    )
    assert response.status_code == 302
    choice = Booking.objects.get(patient=cup.mario).current_choice()
    assert choice is not None and choice.delivery == "online" and choice.consent_text == cup.consent


def test_book_online_without_the_checkbox_is_refused_next_to_it(client: Client, cup: Cup) -> None:
    response = client.post(reverse("booking:booking_new", args=[cup.mario.pk]), step2_data(cup, delivery="online"))
    html = response.content.decode()
    assert response.status_code == 200
    [message] = errors_of(response, "consent_given")
    assert "consenso esplicito" in message
    assert 'id="id_consent_given_error"' in html
    assert 'role="alert"' in html
    assert not Booking.objects.exists()


def test_change_link_on_step_two_goes_back_to_step_one_prefilled(client: Client, cup: Cup) -> None:
    day = (timezone.localdate() + dt.timedelta(days=2)).isoformat()
    url = reverse("booking:booking_new", args=[cup.mario.pk])
    step2 = client.get(url, {"procedure": cup.mr.pk, "facility": cup.region.facility.pk, "day": day})
    back = step2.context["step1_url"]
    step1 = client.get(back)
    html = step1.content.decode()
    assert "Cerca disponibilità" in html and 'name="slot"' not in html
    assert f'<option value="{cup.mr.pk}" selected>' in html
    assert f'value="{day}"' in html


def test_a_day_in_the_past_is_refused(client: Client, cup: Cup) -> None:
    yesterday = timezone.localdate() - dt.timedelta(days=1)
    response = client.get(
        reverse("booking:booking_new", args=[cup.mario.pk]),
        {"procedure": cup.ct.pk, "facility": cup.region.facility.pk, "day": yesterday.isoformat()},
    )
    assert response.context["search"].errors["day"] == [
        f"Il giorno {yesterday:%d/%m/%Y} è già passato: scegli oggi o un giorno futuro."
    ]
    assert "slot" not in response.content.decode()


def test_a_slot_in_the_past_is_refused_by_the_service(client: Client, cup: Cup) -> None:
    yesterday = timezone.localdate() - dt.timedelta(days=1)
    past = services.station_slots(station=cup.ct_station, day=yesterday)[0]
    data = step2_data(cup, slot=past) | {"day": timezone.localdate().isoformat()}
    response = client.post(reverse("booking:booking_new", args=[cup.mario.pk]), data)
    assert response.status_code == 200
    assert errors_of(response, "slot") == ["La data e l'ora dell'appuntamento sono già passate."]
    assert not Booking.objects.exists()


def test_slot_taken_meanwhile_shows_the_message_and_fresh_slots(client: Client, cup: Cup) -> None:
    slot = cup.next_slot()
    page = client.get(
        reverse("booking:booking_new", args=[cup.mario.pk]),
        {"procedure": cup.ct.pk, "facility": cup.region.facility.pk, "day": timezone.localtime(slot).date()},
    )
    value = f"{cup.ct_station.pk}|{timezone.localtime(slot).isoformat()}"
    assert f'value="{value}"' in page.content.decode()
    # Another operator books the same slot before this one presses "Prenota".
    other = cup.book(patient=cup.laura, when=slot)
    response = client.post(reverse("booking:booking_new", args=[cup.mario.pk]), step2_data(cup, slot=slot))
    html = response.content.decode()
    assert response.status_code == 200
    [message] = errors_of(response, "slot")
    assert "è stato appena prenotato da un altro operatore" in message
    assert f'value="{value}"' not in html  # fresh slots, without the taken one
    assert f'value="{cup.ct_station.pk}|' in html
    assert list(Booking.objects.values_list("pk", flat=True)) == [other.pk]


def test_an_unknown_slot_value_is_refused(client: Client, cup: Cup) -> None:
    response = client.post(
        reverse("booking:booking_new", args=[cup.mario.pk]),
        step2_data(cup, slot=cup.next_slot()) | {"slot": f"{cup.other_ct_station.pk}|2030-01-01T08:00:00+01:00"},
    )
    assert errors_of(response, "slot") == ["Scegli un orario libero dall'elenco."]
    assert not Booking.objects.exists()


# --- the booking page -----------------------------------------------------------------------------


def test_booking_page_shows_everything_and_is_audited(client: Client, cup: Cup) -> None:
    booking = cup.book(nre="060A01234567890")
    response = client.get(reverse("booking:booking_detail", args=[booking.accession_number]))
    html = response.content.decode()
    for text in (
        booking.accession_number,
        "Ospedale di Cattinara",
        "TC 1",
        "TC torace senza mdc",
        "prenotato",
        "online sul Fascicolo Sanitario Elettronico",
        "2026-01",
        "operatore",
        "Stampa ricevuta (PDF)",
        "060A01234567890",
    ):
        assert text in html, text
    assert AuditEvent.objects.filter(action="cup.booking.view", patient=cup.mario, username="operatore").exists()


def test_change_choice_keeps_every_version(client: Client, cup: Cup) -> None:
    booking = cup.book(delivery=DistributionChoice.Delivery.CD)
    url = reverse("booking:booking_choice", args=[booking.accession_number])
    refused = client.post(url, {"delivery": "online", "channel": "phone", "consent_version": "2026-01"})
    assert refused.status_code == 400
    assert "consenso esplicito" in refused.context["choice_form"].errors["consent_given"][0]
    assert booking.choices.count() == 1

    response = client.post(
        url, {"delivery": "online", "consent_given": "on", "channel": "phone", "consent_version": "2026-01"}
    )
    assert response.status_code == 302
    assert list(booking.choices.order_by("version").values_list("version", "delivery", "channel")) == [
        (1, "cd", "authority_cup"),
        (2, "online", "phone"),
    ]
    assert booking.current_choice().consent_text == cup.consent  # type: ignore[union-attr]
    assert AuditEvent.objects.filter(action="cup.booking.choice", patient=cup.mario).exists()


def test_choice_form_is_disabled_once_the_report_is_published(client: Client, cup: Cup) -> None:
    booking = cup.book()
    Booking.objects.filter(pk=booking.pk).update(status=Booking.Status.REPORTED)
    response = client.get(reverse("booking:booking_detail", args=[booking.accession_number]))
    html = response.content.decode()
    assert "la scelta di consegna non si può più cambiare" in html
    assert reverse("booking:booking_choice", args=[booking.accession_number]) not in html
    refused = client.post(
        reverse("booking:booking_choice", args=[booking.accession_number]), {"delivery": "cd", "channel": "phone"}
    )
    assert refused.status_code == 400
    assert booking.choices.count() == 1


def test_cancel_asks_for_confirmation_then_cancels(client: Client, cup: Cup) -> None:
    booking = cup.book()
    url = reverse("booking:booking_cancel", args=[booking.accession_number])
    confirm = client.get(url)
    assert f"Conferma l'annullamento di {booking.accession_number}" in confirm.content.decode()
    booking.refresh_from_db()
    assert booking.status == Booking.Status.BOOKED

    assert client.post(url, {"reason": ""}).context["form"].errors["reason"]
    response = client.post(url, {"reason": "Il paziente ha disdetto al telefono"})
    assert response.status_code == 302
    booking.refresh_from_db()
    assert booking.status == Booking.Status.CANCELLED
    assert booking.status_changes.last().note == "Il paziente ha disdetto al telefono"  # type: ignore[union-attr]
    assert AuditEvent.objects.filter(action="cup.booking.cancel", patient=cup.mario).exists()
    again = client.post(url, {"reason": "di nuovo"})
    assert "già annullata" in str(again.context["form"].non_field_errors())


def test_the_desk_records_the_patients_arrival(client: Client, cup: Cup) -> None:
    booking = cup.book()
    page = client.get(reverse("booking:booking_detail", args=[booking.accession_number])).content.decode()
    assert "Registra l'arrivo del paziente" in page
    url = reverse("booking:booking_arrive", args=[booking.accession_number])
    assert client.post(url).status_code == 302
    booking.refresh_from_db()
    assert booking.status == Booking.Status.ARRIVED
    assert booking.status_changes.last().user == cup.operator.user  # type: ignore[union-attr]
    assert AuditEvent.objects.filter(action="cup.booking.status", patient=cup.mario).exists()
    services.booking_cancel(booking=booking, user=cup.operator.user)
    response = client.post(url, follow=True)
    assert "non può passare" in response.content.decode()
    booking.refresh_from_db()
    assert booking.status == Booking.Status.CANCELLED


# --- the receipt ---------------------------------------------------------------------------------


def test_receipt_for_online_delivery(client: Client, cup: Cup) -> None:
    booking = cup.book(nre="060A01234567890")
    response = client.get(reverse("booking:booking_receipt", args=[booking.accession_number]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'attachment; filename="ricevuta-{booking.accession_number}.pdf"'
    assert response.content.startswith(b"%PDF-")
    text = pdf_text(response.content)
    assert booking.accession_number in text
    assert "Referto e immagini disponibili sul Fascicolo Sanitario Elettronico per 45 giorni" in text
    assert "versione 2026-01" in text
    assert "Ritiro CD" not in text
    for fact in ("Ospedale di Cattinara", "ROSSI MARIO", MARIO_CF, "TC torace senza mdc", "TC 1", "060A01234567890"):
        assert fact in text, fact
    assert AuditEvent.objects.filter(action="cup.booking.receipt", patient=cup.mario, username="operatore").exists()


def test_receipt_for_cd_delivery(client: Client, cup: Cup) -> None:
    booking = cup.book(delivery=DistributionChoice.Delivery.CD)
    response = client.get(reverse("booking:booking_receipt", args=[booking.accession_number]))
    text = pdf_text(response.content)
    assert "Ritiro CD presso Ospedale di Cattinara" in text
    assert "Fascicolo Sanitario Elettronico per 45 giorni" not in text
    assert timezone.localtime(booking.scheduled_at).strftime("%H:%M") in text


def test_a_wrong_code_is_reported_with_the_other_missing_fields(client: Client, cup: Cup) -> None:
    response = client.post(reverse("booking:patient_create"), {"codice_fiscale": "VRDGPP80A01L424", "family_name": "X"})
    form = response.context["form"]
    assert form.errors["codice_fiscale"] == ["Il codice fiscale deve avere 16 caratteri (ne ha 15)."]
    assert set(form.errors) == {"codice_fiscale", "given_name", "birth_date", "sex"}


class _Controls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.headings: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("input", "select", "textarea") and a.get("type") not in ("hidden", "submit"):
            self.controls.append(a)
        if tag == "label" and a.get("for"):
            self.label_for.add(a["for"] or "")
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))


def test_every_control_has_a_label_and_headings_go_in_order(client: Client, cup: Cup) -> None:
    booking = cup.book()
    day = (timezone.localdate() + dt.timedelta(days=1)).isoformat()
    urls = [
        reverse("booking:home") + f"?facility={cup.region.facility.pk}",
        reverse("booking:patient_search") + "?codice_fiscale=XX",
        reverse("booking:patient_create"),
        reverse("booking:patient_detail", args=[cup.mario.pk]),
        reverse("booking:booking_new", args=[cup.mario.pk]),
        reverse("booking:booking_new", args=[cup.mario.pk])
        + f"?procedure={cup.ct.pk}&facility={cup.region.facility.pk}&day={day}",
        reverse("booking:booking_detail", args=[booking.accession_number]),
        reverse("booking:booking_cancel", args=[booking.accession_number]),
    ]
    for url in urls:
        parser = _Controls()
        parser.feed(client.get(url).content.decode())
        unlabelled = [c for c in parser.controls if c.get("id") not in parser.label_for]
        assert unlabelled == [], url
        assert parser.headings[0] == 1, url
        assert all(b - a <= 1 for a, b in itertools.pairwise(parser.headings)), (url, parser.headings)


def test_step_two_records_the_prescription_priority_and_the_booking_page_shows_it(client: Client, cup: Cup) -> None:
    url = reverse("booking:booking_new", args=[cup.mario.pk])
    step2 = client.get(
        url,
        {"procedure": cup.ct.pk, "facility": cup.region.facility.pk, "day": timezone.localtime(cup.next_slot()).date()},
    )
    assert 'name="priority"' in step2.content.decode()

    response = client.post(url, step2_data(cup, priority="D"))

    assert response.status_code == 302
    booking = Booking.objects.get(patient=cup.mario)
    assert booking.priority == "D"
    assert "D – differita" in client.get(response["Location"]).content.decode()


def test_step_two_without_priority_books_a_planned_exam(client: Client, cup: Cup) -> None:
    response = client.post(reverse("booking:booking_new", args=[cup.mario.pk]), step2_data(cup))
    assert response.status_code == 302
    assert Booking.objects.get(patient=cup.mario).priority == Booking.Priority.PLANNED


# --- nothing of a study: the CUP's pages show its own records only ---------------------------


def test_the_cup_pages_show_nothing_of_a_hidden_or_other_authoritys_study(cup: Cup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from archive.models import Study
    from archive.sample_data import PatientInfo, write_study
    from booking import matching
    from portal.oscuramento import conceal
    from tests.dicomweb_helpers import ingest_files

    booking = cup.book(cup.mario)
    files = write_study(
        tmp_path / "s",
        patient=PatientInfo(patient_id=MARIO_CF, name="ROSSI^MARIO", birth_date="19560312", sex="M"),
        instances_per_series=1,
        accession_number=booking.accession_number,
        study_description="DESCRIZIONE DELLO STUDIO IN ARCHIVIO",
    )
    ingest_files(files, cup.region.facility)
    study = Study.objects.get()
    assert matching.study_match(study_pk=study.pk).result == "linked"
    conceal(patient=study.patient, study=study)
    client = Client()
    client.force_login(cup.operator.user)
    pages = [
        reverse("booking:patient_detail", args=[cup.mario.pk]),
        reverse("booking:booking_detail", args=[booking.accession_number]),
        reverse("booking:patient_search") + f"?codice_fiscale={MARIO_CF}",
        reverse("booking:home")
        + f"?facility={cup.region.facility.pk}&day={timezone.localtime(booking.scheduled_at).date()}",
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert booking.accession_number in html or MARIO_CF in html, url
        for leak in (study.study_instance_uid, "DESCRIZIONE DELLO STUDIO", "oscurat", "Oscurat"):
            assert leak not in html, (url, leak)
