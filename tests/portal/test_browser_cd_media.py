"""The CUP's CD page in a real Chromium: the CD of a signed CD booking ready to burn,
another being prepared with its progress, the image downloaded, "Consegnato"
pressed; axe-core finds no serious or critical WCAG 2.1 AA violation."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from django.test import Client

from archive.models import StaffProfile, Study
from archive.sample_data import PatientInfo, write_study
from booking.models import DistributionChoice
from kernel.models import AuditEvent
from portal import cdmedia
from portal.models import CdMedium
from tests.a11y import assert_accessible
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import LAURA_CF, Cup, linked_booking
from tests.dicomweb_helpers import ingest_files, make_user
from tests.portal.test_cd_media import CD_PERMS
from tests.reporting_helpers import Reporting, signed_report
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

CHROMIUM = Path("/usr/bin/chromium")
cup = booking_fixtures.cup
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

SCREENSHOTS = Path(os.environ.get("PACS_SCREENSHOT_DIR", "")) if os.environ.get("PACS_SCREENSHOT_DIR") else None


def session_cookie(user: object, base: str) -> dict[str, str]:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return {"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}


@pytest.mark.parametrize(
    "viewport", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}], ids=["desktop", "phone"]
)
def test_the_cup_burns_and_hands_over_a_cd(
    transactional_db: None, live_server, cup: Cup, reporting: Reporting, settings, tmp_path: Path, viewport
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.PACS_CD_MEDIA_DIR = tmp_path / "cd-media"
    size = "desktop" if viewport["width"] > 800 else "phone"
    booking = linked_booking(cup, reporting.study, delivery=DistributionChoice.Delivery.CD)
    report = signed_report(reporting)
    if not CdMedium.objects.filter(status=CdMedium.Status.READY).exists():
        assert cdmedia.medium_make(report_pk=report.pk, study_pk=reporting.study.pk) == "ready"
    ready = CdMedium.objects.get(status=CdMedium.Status.READY)
    # Another patient's CD halfway through (as a worker leaves the row while it writes).
    laura_files = write_study(
        tmp_path / "laura",
        patient=PatientInfo(patient_id=LAURA_CF, name="BIANCHI^LAURA", birth_date="19720702", sex="F"),
        series=1,
        instances_per_series=2,
    )
    ingest_files(laura_files, reporting.region.facility)
    laura_study = Study.objects.exclude(pk=reporting.study.pk).get()
    other = linked_booking(cup, laura_study, patient=cup.laura, delivery=DistributionChoice.Delivery.CD)
    halfway = CdMedium.objects.create(booking=other, report=report, progress_done=40, progress_total=100)
    operator = make_user("cupcd", *CD_PERMS, staff=False).user
    operator.first_name, operator.last_name = "Luca", "Tomasin"
    operator.save()
    StaffProfile.objects.create(user=operator, authority=reporting.region.authority)
    base = live_server.url
    refused: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(locale="it-IT", viewport=viewport, accept_downloads=True)
            context.add_cookies([session_cookie(operator, base)])
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)

            page.goto(f"{base}/cup/")
            if size == "phone":  # the menu is behind its button
                page.get_by_role("button", name="Mostra o nascondi il menu").click()
            page.get_by_role("link", name="CD da masterizzare").first.click()
            page.wait_for_url(re.compile(r"/cup/cd/$"))
            assert page.get_by_role("heading", level=1).inner_text() == "CD da masterizzare"
            rows = page.locator("table tbody tr")
            assert rows.count() == 2
            text = page.locator("table").inner_text()
            assert "ROSSI MARIO" in text and "BIANCHI LAURA" in text
            assert "pronto da masterizzare" in text and "in preparazione" in text and "Avanzamento: 40%" in text
            assert page.locator("progress").get_attribute("value") == "40"
            page.screenshot(path=str(tmp_path / f"{size}-1-list.png"), full_page=True)
            assert_accessible(page, f"CD list ({size})")
            # The worker goes on: the page follows without reloading.
            CdMedium.objects.filter(pk=halfway.pk).update(progress_done=75)
            page.get_by_text("Avanzamento: 75%").wait_for()
            assert page.locator("progress").evaluate("p => p.value") == 75

            with page.expect_download() as info:
                page.get_by_role(
                    "link", name=f"Scarica l'immagine del CD dell'esame {booking.accession_number}"
                ).click()
            download = info.value
            saved = tmp_path / "cd.iso"
            download.save_as(saved)
            assert download.suggested_filename == f"CD-{booking.accession_number}-v1.iso"
            assert hashlib.sha256(saved.read_bytes()).hexdigest() == ready.sha256

            page.get_by_role("button", name=f"Consegnato il CD dell'esame {booking.accession_number}").click()
            page.wait_for_load_state()
            alert = page.locator(".messages")
            assert f"CD dell'esame {booking.accession_number}" in alert.inner_text()
            assert "segnato come consegnato" in alert.inner_text()
            assert page.locator("table tbody tr").count() == 1
            delivered = page.get_by_role("region", name="Consegnati di recente").inner_text()
            assert booking.accession_number in delivered and "Luca Tomasin" in delivered
            page.screenshot(path=str(tmp_path / f"{size}-2-delivered.png"), full_page=True)
            assert_accessible(page, f"CD list after the hand-over ({size})")
        finally:
            browser.close()
    assert not refused, refused
    ready.refresh_from_db()
    assert ready.status == CdMedium.Status.DELIVERED and ready.delivered_by_id == operator.pk
    assert AuditEvent.objects.filter(action="portal.cd.download", user=operator, patient=booking.patient).count() == 1
    assert AuditEvent.objects.filter(action="portal.cd.deliver", user=operator, patient=booking.patient).count() == 1
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for shot in tmp_path.glob("*.png"):
            (SCREENSHOTS / shot.name).write_bytes(shot.read_bytes())
