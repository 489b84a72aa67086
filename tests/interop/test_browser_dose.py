"""The exposure section in a real Chromium: a CT with its Radiation Dose SR, the
proposed text in the editor, signing refused until the radiologist confirms it,
then signed with the exposure on the report's page; axe finds no WCAG violation."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from archive.ingest import instance_ingest
from archive.models import Report, Study
from archive.reporting import signing
from tests import dose_helpers
from tests.a11y import assert_accessible
from tests.archive.test_dose import PATIENT
from tests.conftest import Region
from tests.interop.test_browser_booking import CHROMIUM
from tests.reporting_helpers import RADIOLOGIST_PASSWORD, make_radiologist

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

SCREENSHOT_DIR = Path(os.environ.get("PACS_TEST_SCREENSHOTS", "/tmp/pacs-screenshots"))


def test_the_radiologist_confirms_the_proposed_exposure_before_signing(
    transactional_db: None,
    live_server,  # type: ignore[no-untyped-def]
    region: Region,
    browser_settings: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    for path in dose_helpers.write_ct_study_with_rdsr(tmp_path / "ct", patient=PATIENT, accession_number="TSC2601"):
        instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")
    study = Study.objects.get()
    user = make_radiologist("radiologo", "Stefano", "Cossutta", region.authority)
    signing.demo_pki_create(users=[user])
    base = live_server.url
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context(locale="it-IT", viewport={"width": 1280, "height": 1600}).new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{base}/accounts/login/?next=/refertazione/studi/{study.pk}/")
            page.fill("input[name=username]", "radiologo")
            page.fill("input[name=password]", RADIOLOGIST_PASSWORD)
            page.click("button[type=submit]:has-text('Accedi')")
            page.wait_for_url(re.compile(rf"/refertazione/studi/{study.pk}/"))

            page.click("button:has-text('Inizia a refertare')")
            page.wait_for_selector("textarea[name=exposure]")
            proposed = page.input_value("textarea[name=exposure]")
            assert "DLP totale 412,5 mGy·cm (2 acquisizioni)" in proposed
            assert "Fonte: Radiation Dose SR della modalità." in proposed
            assert not page.is_checked("input[name=exposure_confirmed]")
            page.fill("textarea[name=findings]", "Non lesioni focali.")
            page.fill("textarea[name=conclusion]", "Nella norma.")
            page.click("button:has-text('Salva bozza')")
            page.wait_for_selector("text=Bozza salvata")
            page.locator("#esposizione").scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOT_DIR / "dose-editor.png"), full_page=False)
            assert_accessible(page, "the study page with the exposure section")

            # Signing without the confirmation is refused, with the reason.
            page.click("button:has-text('Firma…')")
            page.wait_for_url(re.compile(r"/refertazione/referti/\d+/firma/$"))
            page.fill("input[name=password]", RADIOLOGIST_PASSWORD)
            page.click("button:has-text('Firma il referto')")
            page.wait_for_selector("text=Manca la conferma delle informazioni sull'esposizione")
            assert Report.objects.get(study=study).status == Report.Status.DRAFT

            # Back to the editor: confirm, save, sign.
            page.goto(f"{base}/refertazione/studi/{study.pk}/#referto")
            page.check("input[name=exposure_confirmed]")
            page.click("button:has-text('Salva bozza')")
            page.wait_for_selector("text=Bozza salvata")
            assert page.is_checked("input[name=exposure_confirmed]")
            page.click("button:has-text('Firma…')")
            page.wait_for_url(re.compile(r"/refertazione/referti/\d+/firma/$"))
            page.fill("input[name=password]", RADIOLOGIST_PASSWORD)
            page.click("button:has-text('Firma il referto')")
            page.wait_for_url(re.compile(r"/refertazione/referti/\d+/$"))
            assert "DLP totale 412,5 mGy·cm" in page.inner_text("main")
            page.screenshot(path=str(SCREENSHOT_DIR / "dose-signed.png"), full_page=True)
            report = Report.objects.get(study=study)
            assert report.is_signed and report.exposure_data["confirmed"] is True
        finally:
            browser.close()
