"""An operator books an exam in a real Chromium with the keyboard alone: log
in, find the patient by codice fiscale, pick procedure, day and slot, choose
online delivery with consent, book, download the receipt."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest
from django.utils import timezone

from booking.models import Booking
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import MARIO_CF, Cup
from tests.pdf_text import pdf_text

CHROMIUM = Path("/usr/bin/chromium")

# The CUP data of tests/booking, offered to this folder's tests too.
cup = booking_fixtures.cup

# Playwright's sync API runs an asyncio loop in this thread; the ORM calls the
# test makes between browser steps are still plain synchronous ones.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

PASSWORD = "una-password-lunga-42"


def focused(page) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return page.evaluate(
        """() => { const e = document.activeElement;
        return {tag: e.tagName.toLowerCase(), name: e.getAttribute('name') || '', type: e.type || '',
                text: (e.innerText || e.value || '').trim(), value: e.value || ''}; }"""
    )


def tab_to(page, predicate, *, limit: int = 60) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Press Tab until the focused element satisfies ``predicate``; keyboard only."""
    for _ in range(limit):
        current = focused(page)
        if predicate(current):
            return current
        page.keyboard.press("Tab")
    raise AssertionError(f"focus never reached the element; last focused: {focused(page)}")


def test_book_an_exam_with_the_keyboard_only(
    transactional_db: None, live_server, cup: Cup, browser_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    cup.operator.user.set_password(PASSWORD)
    cup.operator.user.save()
    tomorrow = timezone.localdate() + dt.timedelta(days=1)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(accept_downloads=True, locale="it-IT")
            page = context.new_page()
            page.set_default_timeout(15_000)

            # Log in: the user name field has the focus.
            base = live_server.url
            page.goto(f"{base}/cup/")
            assert "/accounts/login/" in page.url
            assert focused(page)["name"] == "username"
            page.keyboard.type("operatore")
            page.keyboard.press("Tab")
            assert focused(page)["name"] == "password"
            page.keyboard.type(PASSWORD)
            page.keyboard.press("Enter")
            page.wait_for_url(f"{base}/cup/")

            # Search by codice fiscale: the field has the focus.
            assert focused(page)["name"] == "codice_fiscale"
            page.keyboard.type(MARIO_CF.lower())
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(rf"^{re.escape(base)}/cup/pazienti/\?"))

            # Open the patient, then "Prenota un esame".
            tab_to(page, lambda e: e["tag"] == "a" and "ROSSI" in e["text"])
            page.keyboard.press("Enter")
            page.wait_for_url(f"{base}/cup/pazienti/{cup.mario.pk}/")
            tab_to(page, lambda e: e["tag"] == "a" and e["text"] == "Prenota un esame")
            page.keyboard.press("Enter")
            page.wait_for_url(f"{base}/cup/pazienti/{cup.mario.pk}/prenota/")

            # Step 1: procedure (typed to search the native select), facility, day (tomorrow by default).
            # The page puts the focus there once it has loaded: wait for it (slow under load).
            page.wait_for_function("() => document.activeElement && document.activeElement.name === 'procedure'")
            assert focused(page)["name"] == "procedure"
            page.keyboard.type("TC torace")
            assert page.eval_on_selector("select[name=procedure]", "e => e.value") == str(cup.ct.pk)
            page.keyboard.press("Tab")
            assert focused(page)["name"] == "facility"
            page.keyboard.type("Ospedale di Cat")
            assert page.eval_on_selector("select[name=facility]", "e => e.value") == str(cup.region.facility.pk)
            page.keyboard.press("Tab")
            assert focused(page)["name"] == "day"
            assert focused(page)["value"] == tomorrow.isoformat()
            tab_to(page, lambda e: e["tag"] == "button" and e["text"] == "Cerca disponibilità")
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(rf"^{re.escape(base)}/cup/pazienti/{cup.mario.pk}/prenota/\?"))

            # Step 2: the first free slot has the focus; the arrow moves to the second one.
            first = focused(page)
            assert first["name"] == "slot", first
            page.keyboard.press("ArrowRight")
            chosen = focused(page)["value"]
            assert page.eval_on_selector(f'input[value="{chosen}"]', "e => e.checked")
            tab_to(page, lambda e: e["name"] == "nre")
            page.keyboard.type("060a01234567890")
            page.keyboard.press("Tab")
            page.keyboard.type("040 1234567")
            tab_to(page, lambda e: e["name"] == "clinical_question")
            page.keyboard.type("Dispnea da sforzo")
            tab_to(page, lambda e: e["name"] == "delivery")
            # Nothing chosen yet: Space picks the focused option (CD), the arrow moves to online.
            page.keyboard.press("Space")
            page.keyboard.press("ArrowDown")
            assert focused(page)["value"] == "online"
            assert page.eval_on_selector("input[name=delivery][value=online]", "e => e.checked")
            tab_to(page, lambda e: e["name"] == "consent_given")
            page.keyboard.press("Space")
            assert page.eval_on_selector("input[name=consent_given]", "e => e.checked")
            tab_to(page, lambda e: e["tag"] == "button" and e["text"] == "Prenota")
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(rf"^{re.escape(base)}/cup/prenotazioni/[A-Z0-9]+/$"))

            booking = Booking.objects.get(patient=cup.mario)
            assert booking.accession_number in page.inner_text("h1")
            assert f"{booking.station_id}|{timezone.localtime(booking.scheduled_at).isoformat()}" == chosen
            assert booking.nre == "060A01234567890"
            choice = booking.current_choice()
            assert choice is not None and choice.delivery == "online" and choice.consent_text == cup.consent

            # The receipt: the link has the focus; Enter downloads it.
            assert focused(page)["text"] == "Stampa ricevuta (PDF)"
            with page.expect_download() as download_info:
                page.keyboard.press("Enter")
            download = download_info.value
            assert download.suggested_filename == f"ricevuta-{booking.accession_number}.pdf"
            target = tmp_path / download.suggested_filename
            download.save_as(target)
            data = target.read_bytes()
            assert data.startswith(b"%PDF-")
            text = pdf_text(data)
            assert booking.accession_number in text
            assert "Fascicolo Sanitario Elettronico" in text
        finally:
            browser.close()
