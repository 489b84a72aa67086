"""A citizen in a real Chromium: log in with the codice fiscale, see the exam
online, download the signed report and its signature, have both zips prepared
by the Celery worker while the page shows the progress, check the DICOM zip
with pydicom's FileSet (every instance, byte for byte) and the JPEG zip (one
image per frame), and page through the viewer."""

from __future__ import annotations

import faulthandler
import hashlib
import os
import re
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from archive.manifest import MANIFEST_SERIES_NUMBER
from archive.models import Instance
from archive.reporting import services as reports
from portal.models import DownloadPackage, Notification
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import MARIO_CF, Cup
from tests.browser_helpers import exam_page_drawn, viewer_page_url
from tests.conftest import wait_until
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


def _download(page, locator, folder: Path) -> Path:  # type: ignore[no-untyped-def]
    with page.expect_download() as info:
        locator.click()
    download = info.value
    target = folder / download.suggested_filename
    download.save_as(target)
    return target


def _prepare(page, kind: str, folder: Path) -> Path:  # type: ignore[no-untyped-def]
    page.locator(f'button.package-request[data-kind="{kind}"]').click()
    page.wait_for_url(re.compile(r".*/fse/pacchetti/\d+/$"))
    assert page.locator("progress#package-progress").count() == 1
    page.locator("#package-link").wait_for(state="visible", timeout=90_000)
    assert page.locator("#package-state").inner_text().strip() == "Pronto."
    return _download(page, page.locator("#package-link"), folder)


def test_a_citizen_downloads_report_and_images_and_views_them(
    transactional_db: None, live_server, celery_worker, cup: Cup, reporting: Reporting, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False  # the live server speaks plain http
    settings.CSRF_COOKIE_SECURE = False
    settings.PACS_PORTAL_INLINE_BYTES = 0  # every zip through the worker, with progress
    exam = citizen_exam_make(cup, reporting)
    # The worker stores the study's XDS-I manifest after the signing (archive.manifest): part of the study.
    wait_until(
        lambda: Instance.objects.filter(series__series_number=MANIFEST_SERIES_NUMBER).exists(),
        timeout=120,
        what="manifest",
    )
    instances = list(Instance.objects.all())
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(accept_downloads=True, locale="it-IT", viewport={"width": 390, "height": 844})
            page = context.new_page()
            page.set_default_timeout(20_000)
            base = live_server.url

            page.goto(f"{base}/fse/")
            assert "/fse/accesso/" in page.url
            page.get_by_label("Codice fiscale").fill(MARIO_CF.lower())
            page.get_by_label("Password").fill(CITIZEN_PASSWORD)
            page.get_by_role("button", name="Accedi").click()
            page.wait_for_url(f"{base}/fse/")

            page.screenshot(path=str(tmp_path / "exams.png"), full_page=True)
            row = page.locator("li.exam-item", has_text=exam.booking.procedure.description)
            assert "Disponibile online fino al" in row.inner_text()
            row.get_by_role("link").click()
            page.wait_for_url(f"{base}/fse/esami/{exam.booking.pk}/")
            exam_page_drawn(page)

            page.screenshot(path=str(tmp_path / "exam.png"), full_page=True)
            pdf = _download(page, page.locator("a.report-pdf"), downloads)
            assert pdf.read_bytes() == reports.report_file(report=exam.report, which="pdf")
            p7m = _download(page, page.locator("a.report-p7m"), downloads)
            assert p7m.name.endswith(".pdf.p7m")
            assert p7m.read_bytes() == reports.report_file(report=exam.report, which="p7m")

            dicom_zip = _prepare(page, "dicom", downloads)
            media = tmp_path / "media"
            with zipfile.ZipFile(dicom_zip) as zf:
                zf.extractall(media)
            fileset = FileSet(media / "DICOMDIR")
            assert len(fileset) == len(instances)
            stored = {i.sop_instance_uid: i.sha256 for i in instances}
            for record in fileset:
                path = Path(record.path)
                assert hashlib.sha256(path.read_bytes()).hexdigest() == stored[record.SOPInstanceUID]
                assert dcmread(path, stop_before_pixels=True).SOPInstanceUID == record.SOPInstanceUID

            page.goto(f"{base}/fse/esami/{exam.booking.pk}/")
            exam_page_drawn(page)
            jpeg_zip = _prepare(page, "jpeg", downloads)
            with zipfile.ZipFile(jpeg_zip) as zf:
                jpegs = [n for n in zf.namelist() if n.endswith(".jpg")]
                # The manifest has no pixels: listed in the README, not a JPEG.
                frames = sum(max(1, i.number_of_frames or 1) for i in instances if i.rows)
                assert len(jpegs) == frames
                assert all(zf.read(n)[:2] == b"\xff\xd8" for n in jpegs)

            page.goto(f"{base}/fse/esami/{exam.booking.pk}/")
            exam_page_drawn(page)
            page.get_by_role("link", name="Guarda le immagini").click()
            try:
                page.wait_for_url(viewer_page_url(f"{base}/fse/esami/{exam.booking.pk}/immagini/"))
            except Exception:
                # Where each of the live server's threads waits (a request never answered).
                faulthandler.dump_traceback(all_threads=True)
                raise
            image = page.locator("#viewer-image")
            image.wait_for()
            page.wait_for_function("() => document.getElementById('viewer-image').naturalWidth > 0")
            page.keyboard.press("ArrowRight")
            page.wait_for_function("() => document.getElementById('viewer-position').textContent.startsWith('2 /')")
            assert "immagine=2" in page.url
            page.wait_for_function("() => document.getElementById('viewer-image').naturalWidth > 0")
            page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
            assert page.inner_text("#viewer-position").startswith("2 /")
            # The access log, with an emergency access: tests/interop/test_browser_access_log.py.
        finally:
            browser.close()

    assert DownloadPackage.objects.filter(status="ready").count() == 2
    assert Notification.objects.filter(user=exam.user).count() == 2
