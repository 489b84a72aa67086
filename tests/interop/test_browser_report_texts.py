"""In a real Chromium, the radiologist's editor: the work list and the study
page name the exam as booked, a template for the booked procedure goes into
the empty sections with one click (asking before it replaces written text),
and a standard phrase goes in at the cursor of the section being written, by
keyboard. The script is a static file under the strict CSP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission

from archive.models import Report, ReportPhrase, ReportTemplate
from tests.a11y import assert_accessible
from tests.booking.conftest import Cup, cup, linked_booking  # noqa: F401
from tests.browser_helpers import viewer_page_url
from tests.interop.test_browser_booking import CHROMIUM
from tests.reporting_helpers import RADIOLOGIST_PASSWORD, Reporting, reporting  # noqa: F401

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

TECHNIQUE = "Esame TC del torace senza mezzo di contrasto."
FINDINGS = "Non addensamenti parenchimali in atto."
CONCLUSION = "Quadro TC del torace nei limiti della norma."
PHRASE = "Si consiglia controllo a 12 mesi."
TYPED = "Nodulo di 6 mm al lobo inferiore sinistro."


def test_a_template_and_a_phrase_in_the_editor(
    transactional_db: None,
    live_server,  # type: ignore[no-untyped-def]
    cup: Cup,  # noqa: F811
    reporting: Reporting,  # noqa: F811
    browser_settings,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    study = reporting.study
    cup.ct_station.location = "Radiologia, piano terra"
    cup.ct_station.save()
    linked_booking(cup, study, referring_physician="Dott. Paolo Bassi")
    ReportTemplate.objects.create(
        authority=reporting.region.authority,
        procedure_code="87.41",
        name="TC torace standard",
        technique=TECHNIQUE,
        findings=FINDINGS,
        conclusion=CONCLUSION,
    )
    ReportPhrase.objects.create(owner=reporting.radiologist, title="Controllo", text=PHRASE)
    ReportPhrase.objects.create(owner=reporting.radiologist, title="Non versamento", text="Non versamento pleurico.")
    base = live_server.url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context(locale="it-IT", viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(30_000)
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.goto(f"{base}/refertazione/")
            page.fill("input[name=username]", "radiologo")
            page.fill("input[name=password]", RADIOLOGIST_PASSWORD)
            page.click("button[type=submit]:has-text('Accedi')")
            page.wait_for_url(f"{base}/refertazione/")

            row = page.locator("tr", has_text=study.accession_number)
            assert "TC torace senza mdc (87.41)" in row.inner_text()
            page.screenshot(path=str(tmp_path / "worklist.png"), full_page=True)
            row.get_by_role("link", name="TC torace senza mdc").click()
            page.wait_for_url(viewer_page_url(f"{base}/refertazione/studi/{study.pk}/"), wait_until="domcontentloaded")
            assert "TC torace senza mdc (87.41)" in page.inner_text("h1")

            page.click("button:has-text('Inizia a refertare')")
            page.wait_for_selector("textarea[name=findings]")
            page.fill("textarea[name=findings]", TYPED)

            # The template: the findings have text, so it asks; "no" keeps them.
            asked: list[str] = []

            def dismiss(dialog) -> None:  # type: ignore[no-untyped-def]
                asked.append(dialog.message)
                dialog.dismiss()

            page.once("dialog", dismiss)
            page.get_by_label("Modello per TC torace senza mdc (87.41)").select_option(label="TC torace standard")
            page.click("#template-insert")
            page.wait_for_function(
                "(t) => document.querySelector('textarea[name=technique]').value === t", arg=TECHNIQUE
            )
            assert len(asked) == 1 and "Descrizione" in asked[0]
            assert page.input_value("textarea[name=findings]") == TYPED
            assert page.input_value("textarea[name=conclusion]") == CONCLUSION
            assert "Modello «TC torace standard» inserito" in page.inner_text("#editor-status")

            # A phrase at the cursor of the section being written, by keyboard only.
            conclusion = page.locator("textarea[name=conclusion]")
            conclusion.click()
            page.keyboard.press("End")
            page.keyboard.type(" ")
            page.focus("#phrase-choice")
            page.select_option("#phrase-choice", label="Controllo")
            page.focus("#phrase-insert")
            page.keyboard.press("Enter")
            page.wait_for_function(
                "(t) => document.querySelector('textarea[name=conclusion]').value.endsWith(t)", arg=PHRASE
            )
            assert page.input_value("textarea[name=conclusion]") == f"{CONCLUSION} {PHRASE}"
            assert page.evaluate("document.activeElement.name") == "conclusion"
            assert "Frase inserita in «Conclusioni»" in page.inner_text("#editor-status")

            assert_accessible(page, "the report editor with templates and phrases")
            page.locator("#referto").screenshot(path=str(tmp_path / "editor.png"))

            page.click("button:has-text('Salva bozza')")
            page.wait_for_selector("text=Bozza salvata")
            draft = Report.objects.get(study=study)
            assert (draft.technique, draft.findings, draft.conclusion) == (
                TECHNIQUE,
                TYPED,
                f"{CONCLUSION} {PHRASE}",
            )

            # Asked again and answered "yes", the template replaces the written findings.
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#template-insert")
            page.wait_for_function("(t) => document.querySelector('textarea[name=findings]').value === t", arg=FINDINGS)
            page.locator("dl.study-facts").screenshot(path=str(tmp_path / "study-facts.png"))

            # The radiologist's own phrases page.
            page.get_by_role("link", name="Le mie frasi standard").click()
            page.wait_for_url(f"{base}/refertazione/frasi/", wait_until="domcontentloaded")
            assert PHRASE in page.inner_text("main")
            assert_accessible(page, "the phrases page")
            page.screenshot(path=str(tmp_path / "phrases.png"), full_page=True)

            # Made head of the department: the templates in the admin, only their authority's.
            ReportTemplate.objects.create(
                authority=reporting.other_authority, procedure_code="87.41", name="Di Udine", findings="Altro."
            )
            for action in ("view", "add", "change"):
                reporting.radiologist.user_permissions.add(  # type: ignore[attr-defined]
                    Permission.objects.get(content_type__app_label="archive", codename=f"{action}_reporttemplate")
                )
            page.goto(f"{base}/admin/archive/reporttemplate/", wait_until="domcontentloaded")
            listing = page.inner_text("#result_list")
            assert "TC torace standard" in listing and "Di Udine" not in listing
            page.screenshot(path=str(tmp_path / "admin-templates.png"), full_page=True)
            page.get_by_role("link", name="TC torace standard").click()
            page.wait_for_selector("textarea[name=findings]")
            options = page.locator("select[name=authority] option").all_inner_texts()
            assert [o for o in options if "Friuli Centrale" in o] == []
            page.screenshot(path=str(tmp_path / "admin-template.png"), full_page=True)
            assert not [m for m in console if "Content Security Policy" in m], console
        finally:
            browser.close()
    print(f"screenshots in {tmp_path}")
