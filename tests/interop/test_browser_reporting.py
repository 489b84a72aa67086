"""A radiologist reports a study in a real Chromium: log in, open the study
from the work list, look at the images (the viewer loads a preview and the
arrow key moves to the next one), claim the study, write, save, sign with the
password, open the signed PDF and download its signature."""

from __future__ import annotations

import faulthandler
import os
import re
from pathlib import Path

import pytest

from archive.models import Report
from tests.browser_helpers import viewer_page_url
from tests.interop.test_browser_booking import CHROMIUM
from tests.pdf_text import pdf_text
from tests.reporting_helpers import RADIOLOGIST_PASSWORD, Reporting, reporting  # noqa: F401

# Playwright's sync API runs an asyncio loop in this thread; the ORM calls the
# test makes between browser steps are still plain synchronous ones.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

FINDINGS = "Nodulo di 8 mm al lobo superiore destro."
CONCLUSION = "Controllo TC a 6 mesi."

IMAGE_LOADED = """() => { const i = document.getElementById('viewer-image');
    return i.complete && i.naturalWidth > 0 ? i.getAttribute('src') : null; }"""


def test_report_a_study_in_the_browser(
    transactional_db: None,
    live_server,  # type: ignore[no-untyped-def]
    reporting: Reporting,  # noqa: F811
    browser_settings,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    study = reporting.study
    base = live_server.url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(accept_downloads=True, locale="it-IT")
            page = context.new_page()
            page.set_default_timeout(30_000)

            # Log in through the real form.
            page.goto(f"{base}/refertazione/")
            assert "/accounts/login/" in page.url
            page.fill("input[name=username]", "radiologo")
            page.fill("input[name=password]", RADIOLOGIST_PASSWORD)
            page.click("button[type=submit]:has-text('Accedi')")
            page.wait_for_url(f"{base}/refertazione/")
            assert page.get_by_role("link", name="Refertazione").is_visible()

            # The work list: open the study.
            row = page.locator("tr", has_text=study.accession_number)
            assert "da refertare" in row.inner_text()
            row.locator(f'a[href="/refertazione/studi/{study.pk}/"]').click()
            page.wait_for_url(viewer_page_url(f"{base}/refertazione/studi/{study.pk}/"))

            # The viewer shows a loaded preview; the arrow key moves to the next image.
            first = page.wait_for_function(IMAGE_LOADED).json_value()
            assert "/frames/1/rendered" in first
            assert page.inner_text("#viewer-position") == "1 / 3"
            page.focus("#viewer-viewport")
            page.keyboard.press("ArrowDown")
            page.wait_for_function(
                """(first) => { const i = document.getElementById('viewer-image');
                return i.getAttribute('src') !== first && i.complete && i.naturalWidth > 0; }""",
                arg=first,
            )
            assert page.inner_text("#viewer-position") == "2 / 3"
            assert "immagine=2" in page.url
            # A window preset re-renders the same image with the window asked for.
            page.click("#viewer-presets button:has-text('Polmone')")
            page.wait_for_function(
                """() => { const i = document.getElementById('viewer-image');
                return i.getAttribute('src').includes('window=') && i.complete && i.naturalWidth > 0; }"""
            )
            # Zoom with the keyboard.
            width = page.eval_on_selector("#viewer-image", "i => i.getBoundingClientRect().width")
            page.focus("#viewer-viewport")
            page.keyboard.press("+")
            assert page.eval_on_selector("#viewer-image", "i => i.getBoundingClientRect().width") > width * 1.2

            # Claim the study, write, save.
            page.click("button:has-text('Inizia a refertare')")
            page.wait_for_selector("textarea[name=findings]")
            assert "Dispnea da sforzo" in page.input_value("textarea[name=clinical_question]")
            page.fill("textarea[name=findings]", FINDINGS)
            page.fill("textarea[name=conclusion]", CONCLUSION)
            # A CT: the exposure is confirmed before signing (D.Lgs 101/2020, art. 161, c. 5).
            page.fill("textarea[name=exposure]", "TC: DLP totale 412,5 mGy·cm. Fonte: inserita dal medico.")
            page.check("input[name=exposure_confirmed]")
            page.click("button:has-text('Salva bozza')")
            page.wait_for_selector("text=Bozza salvata")
            assert page.input_value("textarea[name=findings]") == FINDINGS

            # Sign with the password again.
            page.click("button:has-text('Firma…')")
            page.wait_for_url(re.compile(r"/refertazione/referti/\d+/firma/$"))
            page.fill("input[name=password]", RADIOLOGIST_PASSWORD)
            page.click("button:has-text('Firma il referto')")
            page.wait_for_url(re.compile(r"/refertazione/referti/\d+/$"))
            assert "Referto firmato" in page.inner_text("main")
            report = Report.objects.get(study=study)
            assert report.is_signed and report.findings == FINDINGS

            # The PDF (inline) with the text, and the signature (a download).
            pdf_url = page.get_attribute("#report-pdf-link", "href")
            response = context.request.get(f"{base}{pdf_url}")
            assert response.status == 200
            assert response.headers["content-type"] == "application/pdf"
            data = response.body()
            assert data.startswith(b"%PDF")
            text = pdf_text(data)
            assert "Nodulo di 8 mm" in text and "Controllo TC a 6 mesi" in text
            with page.expect_download() as download_info:
                page.click("a:has-text('Scarica la firma (.p7m)')")
            download = download_info.value
            assert download.suggested_filename.endswith(".p7m")
            target = tmp_path / download.suggested_filename
            download.save_as(target)
            assert target.read_bytes()[:1] == b"\x30"  # a DER SEQUENCE: the CMS SignedData
        finally:
            browser.close()


EMERGENCY_REASON = "Paziente in pronto soccorso, politrauma: servono tutti gli esami precedenti."


def test_an_emergency_access_from_the_study_page_in_the_browser(
    transactional_db: None,
    live_server,  # type: ignore[no-untyped-def]
    reporting: Reporting,  # noqa: F811
    browser_settings,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A hidden prior is not on the study page; the link asks for the patient, and then it is there."""
    from playwright.sync_api import sync_playwright

    from portal.oscuramento import conceal
    from tests.archive.test_reporting_pages import another_study

    study = reporting.study
    prior = another_study(tmp_path / "prior", reporting.region, accession_number="TSC260000002")
    conceal(patient=prior.patient, study=prior)
    base = live_server.url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context(locale="it-IT").new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{base}/refertazione/studi/{study.pk}/")
            page.fill("input[name=username]", "radiologo")
            page.fill("input[name=password]", RADIOLOGIST_PASSWORD)
            page.click("button[type=submit]:has-text('Accedi')")
            page.wait_for_url(viewer_page_url(f"{base}/refertazione/studi/{study.pk}/"))
            priors = page.locator("section[aria-labelledby=priors-title]")
            assert "Nessun altro esame di questo paziente" in priors.inner_text()
            assert "scurat" not in page.inner_text("main")
            priors.screenshot(path=str(tmp_path / "study-priors.png"))

            page.get_by_role("link", name="Accesso in emergenza per questo paziente").click()
            page.wait_for_url(re.compile(r"/fse/sportello/emergenza/\?paziente="))
            assert page.get_by_label("Codice fiscale del paziente").input_value() == study.patient.codice_fiscale
            page.get_by_label("Motivo dell'accesso in emergenza").fill(EMERGENCY_REASON)
            page.screenshot(path=str(tmp_path / "emergency.png"), full_page=True)
            page.get_by_role("button", name="Registra l'accesso in emergenza").click()
            page.wait_for_url(f"{base}/refertazione/pazienti/{study.patient_id}/")
            main = page.inner_text("main")
            assert "Accesso in emergenza registrato" in main
            assert prior.accession_number in main and study.accession_number in main
            page.screenshot(path=str(tmp_path / "patient.png"), full_page=True)
        except Exception:
            # Where each of the live server's threads waits (a page whose thumbnails never came).
            faulthandler.dump_traceback(all_threads=True)
            raise
        finally:
            browser.close()
