"""The CUP desk's daily tools in a real Chromium, on a phone and on a desktop:
the operator searches the first available slot across facilities, sees the
nearest first, books one (the consent box follows the delivery chosen),
reads the receipt's preparation, place and CUP number, and registers a
patient whose birth date, sex and place of birth the codice fiscale fills in.
axe-core finds no serious or critical WCAG 2.1 AA violation on any CUP page."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from archive.models import Patient
from booking import services
from booking.formatting import long_date
from booking.models import Booking, FacilityContact, Procedure, Station
from tests.a11y import assert_accessible
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import Cup
from tests.pdf_text import pdf_text

CHROMIUM = Path("/usr/bin/chromium")
cup = booking_fixtures.cup
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
# Verdi Giuseppe, born in Rome on 1 January 1980.
GIUSEPPE_CF = "VRDGPP80A01H501U"
PREPARATION = "Digiuno da almeno 6 ore. Porti il risultato della creatinina degli ultimi 3 mesi."


def session_cookie(user: object, base: str) -> dict[str, str]:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return {"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}


@pytest.fixture
def desk(cup: Cup) -> Cup:
    """The demo's kind of directions, and Cattinara's CT open only the day after tomorrow."""
    user = cup.operator.user
    user.first_name, user.last_name = "Luca", "Tomasin"
    user.save()
    Procedure.objects.filter(pk=cup.ct.pk).update(preparation=PREPARATION)
    tomorrow = timezone.localdate() + dt.timedelta(days=1)
    Station.objects.filter(pk=cup.ct_station.pk).update(
        open_weekdays=str((tomorrow + dt.timedelta(days=1)).isoweekday()), location="Radiologia, piano terra, sala TC 1"
    )
    Station.objects.filter(pk=cup.other_ct_station.pk).update(location="Radiologia, primo piano, sala TC")
    FacilityContact.objects.create(
        facility=cup.region.facility, address="Strada di Fiume 447, 34149 Trieste", cup_phone="040 000 4040"
    )
    FacilityContact.objects.create(
        facility=cup.region.other_facility,
        address="Via Vittorio Veneto 171, 34170 Gorizia",
        cup_phone="0481 000 481",
        cup_hours="dal lunedì al venerdì, 8:00–17:00",
    )
    return cup


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_first_available_slot_booked_and_its_receipt(
    transactional_db: None, live_server, desk: Cup, settings, tmp_path: Path, viewport: dict[str, int]
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    cup = desk
    base = live_server.url
    size = "phone" if viewport is PHONE else "desktop"
    tomorrow = timezone.localdate() + dt.timedelta(days=1)
    shots: list[Path] = []
    refused: list[str] = []

    def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
        path = tmp_path / f"{size}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(locale="it-IT", viewport=viewport, accept_downloads=True)
            context.add_cookies([session_cookie(cup.operator.user, base)])
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)

            # The patient's page leads to the search.
            page.goto(f"{base}/cup/pazienti/{cup.mario.pk}/")
            assert_accessible(page, f"patient page ({size})")
            page.get_by_role("link", name="Prima disponibilità").click()
            page.wait_for_url(re.compile(r"/prima-disponibilita/$"))
            assert page.locator("input[name=days]").input_value() == "30"
            assert_accessible(page, f"first-available form ({size})")

            # Bad input first: a clear Italian error, no results.
            page.select_option("select[name=procedure]", str(cup.ct.pk))
            page.fill("input[name=days]", "400")
            page.get_by_role("button", name="Cerca la prima disponibilità").click()
            page.wait_for_url(re.compile(r"days=400"))
            alert = page.locator(".alert-danger")
            assert "Entro quanti giorni: Si cerca al massimo in 90 giorni." in alert.inner_text()
            assert page.locator("ol.first-available").count() == 0
            shot(page, "1-first-available-error")
            assert_accessible(page, f"first-available error ({size})")

            # The search across the region, from tomorrow, within 30 days.
            page.fill("input[name=start]", tomorrow.isoformat())
            page.fill("input[name=days]", "30")
            page.get_by_role("button", name="Cerca la prima disponibilità").click()
            page.wait_for_url(re.compile(r"days=30"))
            headings = page.locator("ol.first-available h3").all_inner_texts()
            assert headings[:3] == [
                f"{long_date(tomorrow)} – Ospedale di Gorizia",
                f"{long_date(tomorrow + dt.timedelta(days=1))} – Ospedale di Cattinara",
                f"{long_date(tomorrow + dt.timedelta(days=1))} – Ospedale di Gorizia",
            ]
            expected = services.first_available(
                procedure=cup.ct, facilities=[cup.region.facility, cup.region.other_facility], start=tomorrow, days=30
            )
            assert len(headings) == len(expected)
            shot(page, "2-first-available-results")
            assert_accessible(page, f"first-available results ({size})")

            # The nearest time: step 2 opens with it chosen.
            first_time = page.locator("ol.first-available > li").first.locator("a.btn").first
            when = expected[0].slots[0]
            assert first_time.inner_text().strip() == timezone.localtime(when).strftime("%H:%M")
            # The nearest time has the focus: Enter takes it.
            assert page.evaluate("() => document.activeElement.textContent.trim()") == first_time.inner_text().strip()
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/prenota/\?"))
            chosen = page.locator("input[name=slot]:checked")
            assert chosen.get_attribute("value") == f"{cup.other_ct_station.pk}|{timezone.localtime(when).isoformat()}"

            # The consent box follows the delivery: off until online is chosen, cleared when it is not.
            # (Bootstrap Italia draws the box in the label, which takes the click.)
            consent = page.locator("input[name=consent_given]")
            assert consent.is_disabled()
            page.locator("label[for=id_delivery_1]").click()  # online
            assert consent.is_enabled()
            page.locator("label[for=id_consent_given]").click()
            assert consent.is_checked()
            page.locator("label[for=id_delivery_0]").click()  # CD
            assert consent.is_disabled() and not consent.is_checked()
            assert page.locator("input[name=delivery][value=cd]").is_checked()
            page.fill("input[name=contact_phone]", "040 1234567")
            shot(page, "3-step-two")
            assert_accessible(page, f"booking step 2 ({size})")
            page.get_by_role("button", name="Prenota", exact=True).click()
            page.wait_for_url(re.compile(r"/cup/prenotazioni/[A-Z0-9]+/$"))

            booking = Booking.objects.get(patient=cup.mario)
            assert booking.station == cup.other_ct_station and booking.scheduled_at == when
            choice = booking.current_choice()
            assert choice is not None and choice.delivery == "cd" and choice.consent_text is None
            text = page.locator("main").inner_text()
            assert f"Prenotazione registrata: numero di prenotazione {booking.accession_number}." in text
            assert "Numero di prenotazione" in text and "Accession number" not in text
            assert "Luca Tomasin" in text
            assert "Radiologia, primo piano, sala TC – Ospedale di Gorizia, Via Vittorio Veneto 171" in text
            assert PREPARATION in text and "0481 000 481" in text
            assert long_date(when) in text
            shot(page, "4-booking")
            assert_accessible(page, f"booking page ({size})")

            # The receipt says the same.
            with page.expect_download() as download_info:
                page.get_by_role("link", name="Stampa ricevuta (PDF)").click()
            target = tmp_path / f"{size}-ricevuta.pdf"
            download_info.value.save_as(target)
            receipt = " ".join(pdf_text(target.read_bytes()).split())
            assert PREPARATION in receipt
            assert (
                "Radiologia, primo piano, sala TC – Ospedale di Gorizia, Via Vittorio Veneto 171, 34170 Gorizia"
                in receipt
            )
            assert "chiami il CUP al numero 0481 000 481 (dal lunedì al venerdì, 8:00–17:00)" in receipt
            assert f"Numero di prenotazione {booking.accession_number}" in receipt

            # The cancellation page, then the day's list at the facility.
            page.goto(f"{base}/cup/prenotazioni/{booking.accession_number}/annulla/")
            assert_accessible(page, f"cancel page ({size})")
            page.goto(f"{base}/cup/?facility={cup.region.other_facility.pk}&day={when.date().isoformat()}")
            assert booking.accession_number in page.locator("main").inner_text()
            shot(page, "5-home")
            assert_accessible(page, f"CUP home ({size})")
            page.goto(f"{base}/cup/pazienti/?codice_fiscale=XX")
            assert_accessible(page, f"patient search with an error ({size})")
            page.goto(f"{base}/cup/pazienti/{cup.mario.pk}/prenota/")
            assert_accessible(page, f"booking step 1 ({size})")

            # A new patient: the codice fiscale fills in birth date, sex and place of birth.
            page.goto(f"{base}/cup/pazienti/nuovo/")
            assert_accessible(page, f"new patient form ({size})")
            page.locator("input[name=codice_fiscale]").press_sequentially(GIUSEPPE_CF.lower(), delay=10)
            page.wait_for_function("() => document.querySelector('input[name=birth_date]').value !== ''")
            assert page.locator("input[name=birth_date]").input_value() == "1980-01-01"
            assert page.locator("select[name=sex]").input_value() == "M"
            assert page.locator("input[name=birth_place]").input_value() == "Roma (RM)"
            assert "nato/a il 01/01/1980 a Roma (RM)" in page.locator("#cf-status").inner_text()
            page.fill("input[name=family_name]", "Verdi")
            page.fill("input[name=given_name]", "Giuseppe")
            shot(page, "6-new-patient")
            assert_accessible(page, f"new patient filled ({size})")
            # A mistyped code says why, and leaves what was filled alone.
            page.fill("input[name=codice_fiscale]", GIUSEPPE_CF[:15] + "A")
            page.wait_for_function("() => document.getElementById('cf-status').textContent.includes('controllo')")
            page.fill("input[name=codice_fiscale]", GIUSEPPE_CF)
            page.wait_for_function("() => document.getElementById('cf-status').textContent.includes('Roma')")
            page.get_by_role("button", name="Registra il paziente").click()
            page.wait_for_url(re.compile(r"/cup/pazienti/\d+/$"))
            created = Patient.objects.get(codice_fiscale=GIUSEPPE_CF)
            assert (created.birth_date, created.sex) == (dt.date(1980, 1, 1), "M")
            assert "Roma (RM)" in page.locator("main").inner_text()
            context.close()
        finally:
            browser.close()
    assert not refused, refused
    assert all(s.stat().st_size > 10_000 for s in shots)
