"""The CUP desk's daily tools: the patient form filled from the codice fiscale,
the receipt with preparation, place and the CUP's number, the consent only
with online delivery, dates and people written one way on every CUP page."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

from archive.models import Patient
from booking import services
from booking.formatting import long_date, long_date_time, person_name
from booking.models import Booking, DistributionChoice, FacilityContact, Procedure, Station
from kernel.codice_fiscale import codice_fiscale_facts
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup
from tests.booking.test_pages import step2_data
from tests.dicomweb_helpers import make_user
from tests.pdf_text import pdf_pages, pdf_text

pytestmark = pytest.mark.django_db

# Müller Hans, born in Germany on 1 January 1980.
HANS_CF = "MLLHNS80A01Z112Z"


@pytest.fixture
def client(cup: Cup) -> Client:
    c = Client()
    c.force_login(cup.operator.user)
    return c


# --- the codice fiscale's facts ------------------------------------------------------------------


def test_facts_of_a_code_born_in_italy_and_abroad() -> None:
    mario = codice_fiscale_facts(MARIO_CF.lower())
    assert (mario.birth_date, mario.sex, mario.place_label) == (dt.date(1956, 3, 12), "M", "Trieste (TS)")
    hans = codice_fiscale_facts(HANS_CF)
    assert hans.born_abroad and hans.place_label == "Germania" and hans.place_matches("germany")
    laura = codice_fiscale_facts(LAURA_CF)
    assert (laura.sex, laura.place_label) == ("F", "Udine (UD)")


@pytest.mark.parametrize(
    ("typed", "matches"),
    [("Trieste", True), ("trieste (ts)", True), ("TRIESTE(TS)", True), (" Trieste ", True), ("Trieste (UD)", False)],
)
def test_place_typed_is_compared_by_name_and_province(typed: str, matches: bool) -> None:
    assert codice_fiscale_facts(MARIO_CF).place_matches(typed) is matches


def test_an_omocodia_code_gives_the_same_facts() -> None:
    # The 15th character's digit replaced by its letter (4 → Q), the check character recomputed.
    omocode = "RSSMRA56C12L42QM"
    facts = codice_fiscale_facts(omocode)
    assert (facts.birth_date, facts.place_code, facts.code) == (dt.date(1956, 3, 12), "L424", omocode)


def test_facts_of_an_invalid_code_say_why() -> None:
    with pytest.raises(ValueError, match="carattere di controllo"):
        codice_fiscale_facts("RSSMRA56C12L424A")


# --- the patient form ---------------------------------------------------------------------------


def _free_mario(cup: Cup) -> None:
    Patient.objects.filter(pk=cup.mario.pk).update(codice_fiscale=None, provisional=True)


def test_birth_date_and_sex_left_empty_come_from_the_code(client: Client, cup: Cup) -> None:
    _free_mario(cup)
    response = client.post(
        reverse("booking:patient_create"),
        {"codice_fiscale": MARIO_CF, "family_name": "Rossi", "given_name": "Mario"},
    )
    created = Patient.objects.get(codice_fiscale=MARIO_CF)
    assert response.status_code == 302
    assert (created.birth_date, created.sex) == (dt.date(1956, 3, 12), "M")
    page = client.get(response["Location"]).content.decode()
    assert re.search(r"<dt>Luogo di nascita</dt><dd>Trieste \(TS\)</dd>", page)


def test_what_the_code_gives_shows_when_the_form_comes_back_for_another_error(client: Client, cup: Cup) -> None:
    _free_mario(cup)
    response = client.post(reverse("booking:patient_create"), {"codice_fiscale": MARIO_CF, "family_name": "Rossi"})
    html = response.content.decode()
    assert list(response.context["form"].errors) == ["given_name"]
    assert re.search(r'<input[^>]*name="birth_date"[^>]*value="1956-03-12"', html)
    assert re.search(r'<option value="M" selected>', html)
    assert re.search(r'<input[^>]*name="birth_place"[^>]*value="Trieste \(TS\)"', html)
    assert not Patient.objects.filter(codice_fiscale=MARIO_CF).exists()


@pytest.mark.parametrize(
    ("typed", "field", "message"),
    [
        (
            {"sex": "F"},
            "sex",
            f"Il codice fiscale {MARIO_CF} è di una persona di sesso M, non F: correggi il sesso o il codice fiscale.",
        ),
        (
            {"birth_date": "1956-03-13"},
            "birth_date",
            f"Il codice fiscale {MARIO_CF} indica la data di nascita 12/03/1956, non 13/03/1956: "
            "correggi la data o il codice fiscale.",
        ),
        (
            {"birth_place": "Udine"},
            "birth_place",
            f"Il codice fiscale {MARIO_CF} indica come luogo di nascita Trieste (TS), non Udine: "
            "correggi il luogo o il codice fiscale.",
        ),
    ],
)
def test_what_is_typed_against_the_code_is_refused_and_nothing_is_created(
    client: Client, cup: Cup, typed: dict[str, str], field: str, message: str
) -> None:
    _free_mario(cup)
    data = {"codice_fiscale": MARIO_CF, "family_name": "Rossi", "given_name": "Mario", **typed}
    response = client.post(reverse("booking:patient_create"), data)
    assert response.status_code == 200
    assert response.context["form"].errors == {field: [message]}
    assert "Il paziente non è stato registrato" in response.content.decode()
    assert not Patient.objects.filter(codice_fiscale=MARIO_CF).exists()


def test_everything_typed_and_agreeing_is_accepted(client: Client, cup: Cup) -> None:
    _free_mario(cup)
    data = {
        "codice_fiscale": MARIO_CF,
        "family_name": "Rossi",
        "given_name": "Mario",
        "birth_date": "1956-03-12",
        "sex": "M",
        "birth_place": "trieste (TS)",
    }
    assert client.post(reverse("booking:patient_create"), data).status_code == 302


def test_without_a_valid_code_birth_date_and_sex_must_be_typed(client: Client, cup: Cup) -> None:
    response = client.post(
        reverse("booking:patient_create"),
        {"codice_fiscale": "RSSMRA56C12L424A", "family_name": "Rossi", "given_name": "Mario"},
    )
    errors = response.context["form"].errors
    assert set(errors) == {"codice_fiscale", "birth_date", "sex"}
    assert errors["sex"] == ["Campo obbligatorio: scrivilo, oppure correggi il codice fiscale da cui si ricava."]


def test_the_form_page_loads_its_script_and_names_the_decoder(client: Client, cup: Cup) -> None:
    html = client.get(reverse("booking:patient_create")).content.decode()
    assert f'data-cf-decode="{reverse("booking:codice_fiscale_decode")}"' in html
    assert re.search(r'<script src="/static/cup\.js">', html)
    assert 'id="cf-status" class="help" role="status" aria-live="polite"' in html


def test_decoder_answers_the_facts(client: Client, cup: Cup) -> None:
    response = client.post(reverse("booking:codice_fiscale_decode"), {"codice_fiscale": " rssmra56c12l424p "})
    assert response.status_code == 200
    data = json.loads(response.content)
    assert data == {
        "valid": True,
        "codice_fiscale": MARIO_CF,
        "birth_date": "1956-03-12",
        "sex": "M",
        "birth_place": "Trieste (TS)",
        "summary": "Dal codice fiscale: maschio, nato/a il 12/03/1956 a Trieste (TS).",
    }


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("RSSMRA56C12L424", "16 caratteri"),
        ("RSSMRA56C12L424A", "carattere di controllo"),
        ("12345678901234567", "16 caratteri"),
        ("", "16 caratteri"),
    ],
)
def test_decoder_says_why_a_code_is_wrong(client: Client, cup: Cup, code: str, reason: str) -> None:
    response = client.post(reverse("booking:codice_fiscale_decode"), {"codice_fiscale": code})
    assert response.status_code == 400
    data = json.loads(response.content)
    assert data["valid"] is False and reason in data["error"]


def test_decoder_is_post_only_for_who_may_register(cup: Cup, client: Client) -> None:
    url = reverse("booking:codice_fiscale_decode")
    assert client.get(url, {"codice_fiscale": MARIO_CF}).status_code == 405
    reader = make_user("lettore-cup", "booking.view_booking", "archive.view_patient", staff=False)
    c = Client()
    c.force_login(reader.user)
    assert c.post(url, {"codice_fiscale": MARIO_CF}).status_code == 403
    assert Client().post(url, {"codice_fiscale": MARIO_CF}).status_code == 302


def test_decoder_needs_the_csrf_token(cup: Cup) -> None:
    c = Client(enforce_csrf_checks=True)
    c.force_login(cup.operator.user)
    assert c.post(reverse("booking:codice_fiscale_decode"), {"codice_fiscale": MARIO_CF}).status_code == 403


# --- consent only with online delivery ------------------------------------------------------------------

CONSENT_WITH_CD = (
    "Il consenso alla consegna online è spuntato, ma hai scelto «CD da ritirare presso il presidio»: "
    "scegli la consegna online oppure togli la spunta dal consenso."
)


def test_cd_with_the_consent_ticked_is_refused_on_booking(client: Client, cup: Cup) -> None:
    response = client.post(
        reverse("booking:booking_new", args=[cup.mario.pk]), step2_data(cup, delivery="cd", consent_given="on")
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert response.context["form"].errors == {"consent_given": [CONSENT_WITH_CD]}
    assert '<a href="#id_consent_given">Consenso alla consegna online</a>: Il consenso' in html
    assert "Consent given" not in html
    assert not Booking.objects.filter(patient=cup.mario).exists()


def test_every_field_of_the_booking_forms_has_an_italian_label(cup: Cup) -> None:
    from booking.forms import BookingForm, ChoiceForm

    # A field without a label is named after its attribute in the error summary ("Consent given").
    for form in (BookingForm(stations=[]), ChoiceForm()):
        for name, field in form.fields.items():
            assert field.label and str(field.label) != name.replace("_", " ").capitalize(), name


def test_cd_with_the_consent_ticked_is_refused_on_a_new_choice(client: Client, cup: Cup) -> None:
    booking = cup.book(delivery=DistributionChoice.Delivery.CD)
    response = client.post(
        reverse("booking:booking_choice", args=[booking.accession_number]),
        {"delivery": "cd", "consent_given": "on", "channel": "phone", "consent_version": cup.consent.version},
    )
    assert response.status_code == 400
    assert response.context["choice_form"].errors == {"consent_given": [CONSENT_WITH_CD]}
    assert '<a href="#id_consent_given">Consenso alla consegna online</a>: Il consenso' in response.content.decode()
    assert booking.choices.count() == 1


def test_the_services_refuse_it_too(cup: Cup) -> None:
    with pytest.raises(services.BookingError) as exc:
        services.booking_create(
            patient=cup.mario,
            procedure=cup.ct,
            station=cup.ct_station,
            scheduled_at=cup.next_slot(),
            delivery="cd",
            consent_given=True,
            channel=Booking.Channel.PHONE,
            user=None,
        )
    assert (exc.value.field, exc.value.code, exc.value.message) == (
        "consent_given",
        "consent_without_online",
        CONSENT_WITH_CD,
    )
    assert not Booking.objects.exists()
    booking = cup.book(delivery=DistributionChoice.Delivery.CD)
    with pytest.raises(services.BookingError) as exc:
        # Even when the choice in force is already the CD.
        services.distribution_choose(booking=booking, delivery="cd", consent_given=True, channel="phone", user=None)
    assert exc.value.field == "consent_given"
    assert booking.choices.count() == 1


def test_an_external_cup_sending_cd_with_consent_gets_a_400(cup: Cup) -> None:
    from tests.booking.test_api import _create  # the API's own request helper

    client = Client()
    response = _create(
        client,
        cup,
        choice={"delivery": "cd", "consent": {"given": True, "text_version": cup.consent.version, "collected_by": "A"}},
    )
    assert response.status_code == 400
    assert "choice.consent.given" in response.content.decode()
    assert not Booking.objects.exists()


def test_the_consent_box_is_marked_for_the_script(client: Client, cup: Cup) -> None:
    day = (timezone.localdate() + dt.timedelta(days=1)).isoformat()
    html = client.get(
        reverse("booking:booking_new", args=[cup.mario.pk]),
        {"procedure": cup.ct.pk, "facility": cup.region.facility.pk, "day": day},
    ).content.decode()
    assert re.search(r'<input type="checkbox" name="consent_given"[^>]*data-online-only', html)
    assert re.search(r'<script src="/static/cup\.js">', html)


# --- the receipt and the booking page ------------------------------------------------------------------


@pytest.fixture
def directions(cup: Cup) -> Cup:
    Procedure.objects.filter(pk=cup.ct.pk).update(
        preparation="Digiuno da almeno 6 ore. Porti il risultato della creatinina."
    )
    Station.objects.filter(pk=cup.ct_station.pk).update(location="Radiologia, piano terra, sala TC 1")
    FacilityContact.objects.create(
        facility=cup.region.facility,
        address="Strada di Fiume 447, 34149 Trieste",
        cup_phone="040 000 4040",
        cup_hours="dal lunedì al venerdì, 8:00–17:00",
    )
    cup.ct.refresh_from_db()
    cup.ct_station.refresh_from_db()
    return cup


def test_receipt_has_preparation_where_to_go_and_the_cup_number(client: Client, directions: Cup) -> None:
    booking = directions.book(delivery=DistributionChoice.Delivery.CD)
    text = pdf_text(client.get(reverse("booking:booking_receipt", args=[booking.accession_number])).content)
    flat = " ".join(text.split())
    assert "Come prepararsi all'esame" in flat
    assert "Digiuno da almeno 6 ore. Porti il risultato della creatinina." in flat
    assert "Dove presentarsi" in flat
    assert "Radiologia, piano terra, sala TC 1 – Ospedale di Cattinara, Strada di Fiume 447, 34149 Trieste" in flat
    assert "chiami il CUP al numero 040 000 4040 (dal lunedì al venerdì, 8:00–17:00)" in flat
    assert f"Numero di prenotazione {booking.accession_number}" in flat
    assert "accession" not in flat.lower()
    assert long_date(booking.scheduled_at) in flat


def test_receipt_without_directions_says_only_what_it_knows(client: Client, cup: Cup) -> None:
    booking = cup.book(delivery=DistributionChoice.Delivery.CD)
    flat = " ".join(
        pdf_text(client.get(reverse("booking:booking_receipt", args=[booking.accession_number])).content).split()
    )
    assert "Come prepararsi" not in flat
    assert "Dove presentarsi Ospedale di Cattinara" in flat
    assert "contatti il CUP citando il numero di prenotazione" in flat


def test_a_long_preparation_goes_on_to_a_second_page(client: Client, directions: Cup) -> None:
    steps = "\n".join(f"Punto {n}: istruzione." for n in range(80))
    Procedure.objects.filter(pk=directions.ct.pk).update(preparation=steps)
    booking = directions.book(delivery=DistributionChoice.Delivery.CD)
    pages = pdf_pages(client.get(reverse("booking:booking_receipt", args=[booking.accession_number])).content)
    assert len(pages) > 1
    assert "Punto 0: istruzione." in pages[0] and "Punto 79: istruzione." in pages[-1]
    assert "040 000 4040" in pages[-1]
    assert all(f"Punto {n}: istruzione." in " ".join(pages) for n in range(80))  # no line lost at a page break


def test_booking_page_shows_the_same_directions(client: Client, directions: Cup) -> None:
    booking = directions.book(delivery=DistributionChoice.Delivery.CD)
    html = client.get(reverse("booking:booking_detail", args=[booking.accession_number])).content.decode()
    assert "<dt>Numero di prenotazione</dt>" in html
    assert "Accession number" not in html
    assert "Radiologia, piano terra, sala TC 1 – Ospedale di Cattinara, Strada di Fiume 447" in html
    assert "Digiuno da almeno 6 ore." in html
    assert "040 000 4040" in html


def test_the_success_message_uses_the_same_name(client: Client, cup: Cup) -> None:
    response = client.post(reverse("booking:booking_new", args=[cup.mario.pk]), step2_data(cup), follow=True)
    booking = Booking.objects.get(patient=cup.mario)
    assert f"Prenotazione registrata: numero di prenotazione {booking.accession_number}." in response.content.decode()


def test_catalogue_csv_loads_the_preparation_and_a_csv_without_it_keeps_it(cup: Cup) -> None:
    services.procedures_load_csv(
        'code,description,modality,body_part,preparation\n87.41,TC torace,CT,CHEST,"Digiuno, 6 ore."\n'
    )
    assert Procedure.objects.get(code="87.41").preparation == "Digiuno, 6 ore."
    services.procedures_load_csv("code,description,modality,body_part\n87.41,TC del torace,CT,CHEST\n")
    procedure = Procedure.objects.get(code="87.41")
    assert (procedure.description, procedure.preparation) == ("TC del torace", "Digiuno, 6 ore.")


def test_a_cup_phone_must_look_like_one(cup: Cup) -> None:
    from django.core.exceptions import ValidationError

    contact = FacilityContact(facility=cup.region.facility, address="Via Roma 1", cup_phone="chiamate")
    with pytest.raises(ValidationError) as exc:
        contact.full_clean()
    assert "cup_phone" in exc.value.message_dict


# --- dates and people ---------------------------------------------------------------------------


def test_long_dates_are_lower_case_in_italian_and_capitalised_in_english() -> None:
    monday = dt.date(2026, 12, 7)
    assert long_date(monday) == "lunedì 7 dicembre 2026"
    at = timezone.make_aware(dt.datetime(2026, 12, 7, 8, 40))
    assert long_date_time(at) == "lunedì 7 dicembre 2026, 08:40"
    with translation.override("en"):
        assert long_date(monday) == "Monday 7 December 2026"


def test_every_cup_page_writes_the_booking_date_the_same_way(client: Client, cup: Cup) -> None:
    booking = cup.book()
    when = timezone.localtime(booking.scheduled_at)
    expected = long_date(when)
    capitalised = expected[0].upper() + expected[1:]
    pages = [
        reverse("booking:booking_detail", args=[booking.accession_number]),
        reverse("booking:booking_cancel", args=[booking.accession_number]),
        reverse("booking:home") + f"?facility={cup.region.facility.pk}&day={when.date().isoformat()}",
        reverse("booking:booking_new", args=[cup.mario.pk])
        + f"?procedure={cup.ct.pk}&facility={cup.region.facility.pk}&day={when.date().isoformat()}",
    ]
    for url in pages:
        html = client.get(url).content.decode()
        assert expected in html, url
        assert capitalised not in html, url
        assert not re.search(r"\b(Lunedì|Martedì|Mercoledì|Giovedì|Venerdì|Sabato|Domenica)\b", html), url


def test_operator_is_named_by_full_name_else_user_name(client: Client, cup: Cup) -> None:
    user = cup.operator.user
    user.first_name, user.last_name = "Luca", "Tomasin"
    user.save()
    booking = cup.book()
    html = client.get(reverse("booking:booking_detail", args=[booking.accession_number])).content.decode()
    assert "<dt>Operatore</dt><dd>Luca Tomasin</dd>" in html
    assert re.search(r"<td[^>]*>Luca Tomasin</td>", html)  # status history and choice versions
    assert person_name(user) == "Luca Tomasin"
    user.first_name = user.last_name = ""
    user.save()
    html = client.get(reverse("booking:booking_detail", args=[booking.accession_number])).content.decode()
    assert "<dt>Operatore</dt><dd>operatore</dd>" in html


def test_the_demo_cup_operator_has_a_name_and_the_demo_has_directions(db: None) -> None:
    from io import StringIO

    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("load_demo", stdout=StringIO())
    assert person_name(get_user_model().objects.get(username="cup")) == "Luca Tomasin"
    assert "Digiuno" in Procedure.objects.get(code="88.01.6").preparation  # abdomen CT with contrast
    assert "oggetti metallici" in Procedure.objects.get(code="88.91.1").preparation  # MR
    assert not Procedure.objects.filter(preparation="").exists()
    assert not Station.objects.filter(location="").exists()
    from archive.models import Facility

    assert FacilityContact.objects.count() == Facility.objects.count()
    assert FacilityContact.objects.get(facility__code="TS-CAT").cup_phone == "040 000 4040"
