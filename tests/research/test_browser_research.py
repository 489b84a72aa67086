"""A researcher asks for an anonymised export in a real Chromium and follows its progress
until the zip is ready; the pages pass axe's WCAG 2.1 AA rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from research.models import Export
from tests.a11y import assert_accessible
from tests.research.helpers import PASSWORD, Scene
from tests.research.helpers import scene as scene  # noqa: F401  (the fixture)

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("PACS_TEST_SCREENSHOTS", "/tmp/pacs-screenshots"))

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]


def test_a_researcher_exports_a_study_and_follows_the_progress(
    transactional_db: None, live_server: Any, scene: Scene, settings: Any, enqueued: Any
) -> None:
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(accept_downloads=True, locale="it-IT")
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{live_server.url}/ricerca/")
            page.fill("input[name=username]", "ricercatrice")
            page.fill("input[name=password]", PASSWORD)
            page.keyboard.press("Enter")
            page.wait_for_url(f"{live_server.url}/ricerca/")
            assert_accessible(page, "the research projects page")
            page.screenshot(path=str(SHOTS / "research-projects.png"), full_page=True)
            page.get_by_role("link", name="Didattica e ricerca").click()  # the staff menu leads here
            page.get_by_role("link", name=scene.project.code).click()
            page.get_by_label("Paziente (codice fiscale o PatientID)").fill(scene.study.patient.codice_fiscale)
            page.get_by_label("Modalità (es. CT)").fill("CT")
            assert_accessible(page, "the project page")
            page.screenshot(path=str(SHOTS / "research-project.png"), full_page=True)
            page.get_by_role("button", name="Esporta").click()
            page.wait_for_url("**/ricerca/esportazioni/*/")
            assert page.locator("#export-state").inner_text().startswith("In preparazione")
            page.screenshot(path=str(SHOTS / "research-export-queued.png"), full_page=True)

            # The worker builds it; the page follows by itself.
            enqueued.run()
            page.locator("#export-ready").wait_for(state="visible")
            assert page.locator("#export-state").inner_text() == "Pronta."
            assert page.locator("#export-progress").get_attribute("value") in ("100", "100.0")
            page.reload()  # the summary is written on the page once ready
            assert "ecografia" in page.content()
            assert_accessible(page, "the export page")
            page.screenshot(path=str(SHOTS / "research-export-ready.png"), full_page=True)
            with page.expect_download() as info:
                page.get_by_role("link", name="Scarica lo zip").click()
            download = info.value
            assert download.suggested_filename == f"esportazione-{scene.project.code}-{Export.objects.get().pk}.zip"
        finally:
            browser.close()
