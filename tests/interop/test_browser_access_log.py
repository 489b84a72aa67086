"""«Chi ha visto i miei dati» and «Deleghe» in a real Chromium, on a phone and on a
desktop, on Bootstrap Italia and with no serious or critical axe-core violation: a
radiologist's emergency access comes first in an alert with who, until when, the
reason she wrote and what she saw; her dozen requests are one line; the system's
work is folded in an accordion; the filters refuse a reversed period with a clear
error and narrow the log to one exam; the delegations page says who may act for
whom in plain words."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from django.utils import timezone

from archive.models import StaffProfile
from kernel.audit import audit_record
from portal.delegations import delegation_register
from portal.emergency import emergency_access_grant
from tests.a11y import assert_accessible
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import MARIO_CF, Cup
from tests.portal.portal_helpers import CITIZEN_PASSWORD, citizen_exam_make
from tests.reporting_helpers import Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

CHROMIUM = Path("/usr/bin/chromium")
cup = booking_fixtures.cup
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

REASON = "Paziente incosciente in pronto soccorso: servono le TC precedenti."
VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 900}}


def test_the_citizen_reads_the_grouped_log_with_the_emergency_access_first(
    transactional_db: None, live_server, cup: Cup, reporting: Reporting, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect, sync_playwright

    settings.SESSION_COOKIE_SECURE = False  # the live server speaks plain http
    settings.CSRF_COOKIE_SECURE = False
    exam = citizen_exam_make(cup, reporting)
    colleague = exam.rep.colleague
    StaffProfile.objects.filter(user=colleague).update(title="Dott.ssa", role="radiologa")
    # The emergency access, then her look at the exam: the study page, a DICOMweb request per image, the report.
    emergency_access_grant(user=colleague, patient=exam.booking.patient, reason=REASON, source="10.0.0.7")
    audit_record(action="study.view", user=colleague, study=exam.rep.study, source="10.0.0.7")
    for _ in range(11):
        audit_record(action="dicomweb.retrieve", user=colleague, study=exam.rep.study, source="10.0.0.7")
    audit_record(action="report.view", user=colleague, study=exam.rep.study, source="10.0.0.7")
    other = cup.book()  # a second exam, booked: the filter tells them apart
    delegation_register(
        delegator=exam.booking.patient,
        delegate=cup.laura,
        kind="altro",
        evidence="Delega firmata",
        user=cup.operator.user,
    )

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            for name, viewport in VIEWPORTS.items():
                context = browser.new_context(locale="it-IT", viewport=viewport)
                page = context.new_page()
                page.set_default_timeout(20_000)
                base = live_server.url
                page.goto(f"{base}/fse/accesso/")
                page.get_by_label("Codice fiscale").fill(MARIO_CF)
                page.get_by_label("Password").fill(CITIZEN_PASSWORD)
                page.get_by_role("button", name="Accedi").click()
                page.wait_for_url(f"{base}/fse/")
                page.goto(f"{base}/fse/accessi/")  # on a phone the menu is behind its button

                alert = page.locator("section.emergencies")
                expect(alert).to_be_visible()
                text = alert.inner_text()
                assert REASON in text and "Dott.ssa Chiara Degano, radiologa" in text
                assert "Ha visto le immagini e il referto" in text and "13 accessi" in text
                # First on the page: above the filters and the list.
                alert_top = alert.bounding_box()["y"]  # type: ignore[index]
                assert alert_top < page.locator("#accesses-title").bounding_box()["y"]  # type: ignore[index]
                line = page.locator("li.access-group.emergency", has_text="ha visto le immagini e il referto")
                expect(line).to_have_count(1)
                assert "13 accessi" in line.inner_text()
                page.screenshot(path=str(tmp_path / f"access_log_{name}.png"), full_page=True)
                alert.screenshot(path=str(tmp_path / f"access_log_emergency_{name}.png"))
                assert_accessible(page, f"access log at {viewport['width']} px")

                # The system's work is folded away until asked for.
                background = page.locator("section.background")
                expect(background.locator("li").first).to_be_hidden()
                background.locator("button.accordion-button").click()
                expect(background.get_by_text("ha pubblicato il referto sul Fascicolo")).to_be_visible()
                assert background.locator("button.accordion-button").get_attribute("aria-expanded") == "true"
                assert_accessible(page, f"access log, automatic operations open, at {viewport['width']} px")

                # A reversed period: a clear error, tied to the field.
                today = timezone.localdate()
                page.get_by_label("Dal giorno", exact=True).fill(today.isoformat())
                page.get_by_label("Al giorno", exact=True).fill((today - dt.timedelta(days=3)).isoformat())
                page.get_by_role("button", name="Mostra gli accessi").click()
                errors = page.locator("[role=alert]")
                expect(errors).to_contain_text("viene prima di quello iniziale")
                expect(page.locator("#id_al")).to_have_attribute("aria-invalid", "true")
                page.screenshot(path=str(tmp_path / f"access_log_error_{name}.png"), full_page=True)
                assert_accessible(page, f"access log with a wrong period at {viewport['width']} px")

                # One exam: the booked one has only the CUP's work.
                page.get_by_label("Al giorno", exact=True).fill(today.isoformat())
                page.get_by_label("Dal giorno", exact=True).fill("")
                page.get_by_label("Esame").select_option(str(other.pk))
                page.get_by_role("button", name="Mostra gli accessi").click()
                page.wait_for_url(f"**/fse/accessi/?esame={other.pk}*")
                lines = page.locator("li.access-group")
                expect(lines.filter(has_text="Ha prenotato l'esame")).to_have_count(1)
                assert "Degano" not in page.locator("section[aria-labelledby=accesses-title]").inner_text()
                page.screenshot(path=str(tmp_path / f"access_log_filtered_{name}.png"), full_page=True)

                page.goto(f"{base}/fse/deleghe/")
                acted_by = page.locator("section[aria-labelledby=acted-by-title]")
                expect(acted_by).to_contain_text("Laura Bianchi")
                expect(acted_by).to_contain_text("vedere gli esami e chi li ha visti")
                page.screenshot(path=str(tmp_path / f"delegations_{name}.png"), full_page=True)
                assert_accessible(page, f"delegations at {viewport['width']} px")
                context.close()
        finally:
            browser.close()
    print(f"screenshots in {tmp_path}")
