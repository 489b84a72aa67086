"""The citizen's exam on a phone and on a desktop, in a real Chromium (issue 17):
the list and the exam page with one date and "Numero di prenotazione", the signed
report drawn in the page by PDF.js (its words in the text layer) under the strict
Content-Security-Policy, and the viewer driven by touch through the DevTools
protocol as a finger would: swiping through a 50-image series, the slider, a
pinch to zoom and a double tap back, a series thumbnail. axe-core finds no serious
or critical WCAG 2.1 AA violation on any of the pages; screenshots in tmp_path.
And the report drawn moves nothing below it: its space is kept from the first paint
(Cumulative Layout Shift, measured by the browser, and the download button's place)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from archive.ingest import instance_ingest
from archive.sample_data import PatientInfo, write_study
from booking.models import DistributionChoice
from tests.a11y import assert_accessible
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import MARIO_CF, Cup
from tests.browser_helpers import exam_page_drawn
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

LOADED = "() => { const i = document.getElementById('viewer-image'); return i.complete && i.naturalWidth > 0; }"


class Finger:
    """Touches sent through the DevTools protocol (Input.dispatchTouchEvent): Chromium turns
    them into the pointer events a phone's screen makes, as a real finger's would be."""

    def __init__(self, page: Any, context: Any) -> None:
        self.page = page
        self.cdp = context.new_cdp_session(page)

    def _send(self, kind: str, points: list[tuple[float, float]]) -> None:
        touches = [{"x": x, "y": y, "id": n} for n, (x, y) in enumerate(points)]
        self.cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touches})

    def swipe(self, box: dict[str, float], dx: float, steps: int = 6) -> None:
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self._send("touchStart", [(x, y)])
        for n in range(1, steps + 1):
            self._send("touchMove", [(x + dx * n / steps, y + 2 * n / steps)])
        self._send("touchEnd", [])

    def pinch(self, box: dict[str, float], start: float, end: float, steps: int = 8) -> None:
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self._send("touchStart", [(cx - start / 2, cy), (cx + start / 2, cy)])
        for n in range(1, steps + 1):
            half = (start + (end - start) * n / steps) / 2
            self._send("touchMove", [(cx - half, cy), (cx + half, cy)])
        self._send("touchEnd", [])

    def double_tap(self, box: dict[str, float]) -> None:
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        for _ in range(2):
            self._send("touchStart", [(x, y)])
            self._send("touchEnd", [])
            self.page.wait_for_timeout(60)


def _position(page: Any) -> str:
    return str(page.inner_text("#viewer-position")).strip()


def _login(page: Any, base: str) -> None:
    page.goto(f"{base}/fse/accesso/")
    page.get_by_label("Codice fiscale").fill(MARIO_CF)
    page.get_by_label("Password").fill(CITIZEN_PASSWORD)
    page.get_by_role("button", name="Accedi").click()
    page.wait_for_url(f"{base}/fse/")


def test_the_exam_on_a_phone_and_a_desktop(  # type: ignore[no-untyped-def]
    transactional_db: None, live_server, cup: Cup, reporting: Reporting, settings, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.PACS_PORTAL_INLINE_BYTES = 1 << 30  # the zip made at once: no worker in this test
    exam = citizen_exam_make(cup, reporting)
    # A 50-image series of the same study (pydicom's CT, fresh UIDs). Its SeriesNumber 1 is
    # taken by the first series: it is series 3 in every viewer and zip (archive.series_numbers).
    patient = PatientInfo(patient_id=MARIO_CF, name="ROSSI^MARIO", birth_date="19560312", sex="M")
    for path in write_study(
        tmp_path / "fifty",
        patient=patient,
        series=1,
        instances_per_series=50,
        study_uid=reporting.study.study_instance_uid,
        accession_number=exam.booking.accession_number,
    ):
        instance_ingest(path=path, facility=reporting.region.facility, owned=False, calling_ae="CT01")
    on_cd = cup.book(delivery=DistributionChoice.Delivery.CD, when=cup.next_slot(days=4))
    base = live_server.url
    refused: list[str] = []
    failed: list[str] = []
    shots = Path(os.environ.get("EXAM_SHOTS", str(tmp_path / "shots")))
    shots.mkdir(parents=True, exist_ok=True)

    def watch(page: Any) -> None:
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        page.on("pageerror", lambda e: failed.append(f"page error: {e}"))
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 500 else None)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            # --- a phone --------------------------------------------------------------------
            phone = browser.new_context(
                locale="it-IT",
                viewport={"width": 390, "height": 844},
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
            )
            page = phone.new_page()
            page.set_default_timeout(20_000)
            watch(page)
            _login(page, base)
            page.screenshot(path=str(shots / "phone-exams.png"), full_page=True)
            card = page.locator("li.exam-item", has_text="Eseguito il")
            assert "Numero di prenotazione" in card.inner_text() and "Mario Rossi (Lei)" in card.inner_text()
            assert "Appuntamento" in page.locator("li.exam-item", has_text="CD").inner_text()
            assert_accessible(page, "exams (phone)")

            page.goto(f"{base}/fse/esami/{exam.booking.pk}/")
            page.wait_for_selector(".report-viewer[data-rendered]", timeout=30_000)
            layer = page.locator(".report-viewer .textLayer").first.inner_text()
            assert "Quadro TC nei limiti della norma" in " ".join(layer.split())
            canvas = page.locator(".report-page canvas").first
            assert canvas.evaluate("c => c.width") >= 2 * canvas.bounding_box()["width"] - 2  # sharp at 2x
            page.screenshot(path=str(shots / "phone-exam.png"), full_page=True)
            page.locator(".report-pages").screenshot(path=str(shots / "phone-report.png"))
            assert_accessible(page, "exam (phone)")
            doctor = page.locator("details.for-doctor").first
            assert doctor.locator("p").is_hidden()  # closed until asked
            doctor.locator("summary").click()
            assert "CAdES" in doctor.inner_text()

            page.goto(f"{base}/fse/esami/{on_cd.pk}/")
            assert "ritiro del cd" in page.inner_text("main").lower()  # the callout title is in capitals
            page.screenshot(path=str(shots / "phone-exam-cd.png"), full_page=True)
            assert_accessible(page, "exam on CD (phone)")
            page.goto(f"{base}/fse/esami/{on_cd.pk}/immagini/")
            assert "non sono disponibili online" in page.inner_text("main")
            assert_accessible(page, "not online (phone)")
            page.goto(f"{base}/fse/scarica/non-un-link/")
            assert_accessible(page, "link refused (phone)")

            # The viewer: the 50-image series is series 3.
            page.goto(f"{base}/fse/esami/{exam.booking.pk}/immagini/?serie=3")
            page.wait_for_function(LOADED)
            assert page.inner_text("#viewer-series-title").startswith("Serie 3")
            assert _position(page) == "1 / 50"
            assert page.locator("#viewer-zoom").is_visible() and page.locator("#viewer-next-button").is_visible()
            assert page.locator(".viewer-steps").is_hidden()  # the no-script links give way to the buttons
            page.screenshot(path=str(shots / "phone-viewer.png"), full_page=True)
            assert_accessible(page, "viewer (phone)")
            finger = Finger(page, phone)
            viewport = page.locator("#viewer-viewport")
            viewport.scroll_into_view_if_needed()
            box = viewport.bounding_box()
            first_src = page.get_attribute("#viewer-image", "src")
            finger.swipe(box, -150)  # to the left: the next image
            page.wait_for_function("() => document.getElementById('viewer-position').textContent.startsWith('2 /')")
            assert page.get_attribute("#viewer-image", "src") != first_src
            assert re.search(r"immagine=2", page.url)
            finger.swipe(box, 150)  # to the right: back
            page.wait_for_function("() => document.getElementById('viewer-position').textContent.startsWith('1 /')")
            for n in range(2, 12):
                finger.swipe(box, -120)
                page.wait_for_function(
                    f"() => document.getElementById('viewer-position').textContent.startsWith('{n} /')"
                )
            finger.swipe(box, -8)  # a tap, not a swipe
            page.wait_for_timeout(150)
            assert _position(page) == "11 / 50"
            page.wait_for_function(LOADED)
            page.screenshot(path=str(shots / "phone-viewer-swiped.png"))

            # The slider goes straight to the last image.
            page.locator("#viewer-slider").fill("50")
            page.wait_for_function("() => document.getElementById('viewer-position').textContent === '50 / 50'")
            page.wait_for_function(LOADED)
            assert page.locator("#viewer-next-button").is_disabled()
            finger.swipe(box, -150)  # past the end: stays
            page.wait_for_timeout(150)
            assert _position(page) == "50 / 50"
            assert "immagine 50 di 50" in page.get_attribute("#viewer-image", "alt")

            # Pinch to zoom, then a double tap back to the whole image.
            width = page.eval_on_selector("#viewer-image", "i => i.getBoundingClientRect().width")
            finger.pinch(box, 60, 240)
            # The page applies the pinch on its next frames: wait for it (a busy machine is slow).
            page.wait_for_function(
                "() => parseInt(document.getElementById('viewer-zoom-level').textContent, 10) >= 250"
            )
            zoomed = page.eval_on_selector("#viewer-image", "i => i.getBoundingClientRect().width")
            level = int(page.inner_text("#viewer-zoom-level").rstrip("%"))
            assert zoomed > width * 2.5 and level >= 250, (width, zoomed, level)
            page.screenshot(path=str(shots / "phone-viewer-pinched.png"))
            # Zoomed in, a finger moves the image instead of changing it.
            before = page.eval_on_selector("#viewer-viewport", "v => v.scrollLeft")
            finger.swipe(box, 80)
            page.wait_for_timeout(100)
            assert _position(page) == "50 / 50"
            assert page.eval_on_selector("#viewer-viewport", "v => v.scrollLeft") < before
            finger.double_tap(box)
            page.wait_for_function("() => document.getElementById('viewer-zoom-level').textContent === '100%'")
            assert abs(page.eval_on_selector("#viewer-image", "i => i.getBoundingClientRect().width") - width) < 2

            # A series thumbnail.
            page.locator("a[data-series]", has_text="Serie 1").tap()
            page.wait_for_function("() => document.getElementById('viewer-position').textContent === '1 / 3'")
            assert page.inner_text("#viewer-series-title").startswith("Serie 1")
            page.wait_for_function(LOADED)
            page.screenshot(path=str(shots / "phone-viewer-series1.png"), full_page=True)

            # A package page.
            page.goto(f"{base}/fse/esami/{exam.booking.pk}/")
            exam_page_drawn(page)
            page.locator('button.package-request[data-kind="jpeg"]').click()
            page.wait_for_url(re.compile(r".*/fse/pacchetti/\d+/$"))
            page.locator("#package-link").wait_for(state="visible", timeout=60_000)
            assert_accessible(page, "package (phone)")
            page.screenshot(path=str(shots / "phone-package.png"), full_page=True)
            phone.close()

            # --- a desktop --------------------------------------------------------------------
            desktop = browser.new_context(locale="it-IT", viewport={"width": 1280, "height": 900})
            page = desktop.new_page()
            page.set_default_timeout(20_000)
            watch(page)
            _login(page, base)
            assert_accessible(page, "exams (desktop)")
            page.goto(f"{base}/fse/esami/{exam.booking.pk}/")
            page.wait_for_selector(".report-viewer[data-rendered]", timeout=30_000)
            page.screenshot(path=str(shots / "desktop-exam.png"), full_page=True)
            assert_accessible(page, "exam (desktop)")
            page.goto(f"{base}/fse/esami/{exam.booking.pk}/immagini/?serie=3&immagine=10")
            page.wait_for_function(LOADED)
            assert _position(page) == "10 / 50"
            page.focus("#viewer-viewport")
            page.keyboard.press("ArrowRight")
            page.wait_for_function("() => document.getElementById('viewer-position').textContent === '11 / 50'")
            page.mouse.move(640, 500)
            viewport = page.locator("#viewer-viewport").bounding_box()
            page.mouse.move(viewport["x"] + viewport["width"] / 2, viewport["y"] + viewport["height"] / 2)
            page.mouse.wheel(0, 130)
            page.wait_for_function("() => document.getElementById('viewer-position').textContent === '13 / 50'")
            page.get_by_role("button", name="Ingrandisci").click()
            page.wait_for_function("() => document.getElementById('viewer-zoom-level').textContent === '150%'")
            page.wait_for_function(LOADED)
            page.screenshot(path=str(shots / "desktop-viewer.png"), full_page=True)
            assert_accessible(page, "viewer (desktop)")
            desktop.close()
        finally:
            browser.close()
    assert not refused, "\n".join(r[:300] for r in refused)
    assert not failed, failed


# The page's Cumulative Layout Shift so far, as the browser measures it (the Layout Instability
# API: the layout-shift entries buffered since the navigation), read two frames later so that
# the last change has been painted and reported. Shifts right after an input do not count.
# With a time (performance.now()), only the shifts since then.
CLS = """(since = 0) => new Promise(resolve => {
  let total = 0;
  const add = entries => entries.forEach(e => { if (!e.hadRecentInput && e.startTime >= since) total += e.value; });
  const observer = new PerformanceObserver(list => add(list.getEntries()));
  observer.observe({type: "layout-shift", buffered: true});
  requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(() => {
    add(observer.takeRecords());
    observer.disconnect();
    resolve(total);
  }, 50)));
})"""
# Where an element is in the page (x, y, width, height), wherever the window has scrolled.
PLACE = "e => { const r = e.getBoundingClientRect(); return [r.x, r.y + window.scrollY, r.width, r.height]; }"
DEVICES: dict[str, dict[str, Any]] = {
    "desktop": {"viewport": {"width": 1280, "height": 900}},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
}


def _the_report(url: str) -> bool:
    return "mostra=1" in url  # the PDF shown in the page (portal.views.INLINE)


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_the_report_drawn_moves_nothing_below_it(  # type: ignore[no-untyped-def]
    transactional_db: None, live_server, cup: Cup, reporting: Reporting, browser_settings, tmp_path: Path, device: str
) -> None:
    """The report's box keeps its place while PDF.js draws the pages: the buttons below it do
    not move when they appear (a click about to land on one landed elsewhere), and the page's
    Cumulative Layout Shift stays below 0.1, Core Web Vitals' "good". The report is held back
    until the page has been looked at as it is before the drawing. If the drawing fails, the
    space is given back and the message says to download the report."""
    from playwright.sync_api import sync_playwright

    exam = citizen_exam_make(cup, reporting)
    base = live_server.url
    shots = Path(os.environ.get("EXAM_SHOTS", str(tmp_path / "shots")))
    shots.mkdir(parents=True, exist_ok=True)
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(locale="it-IT", **DEVICES[device])
            page = context.new_page()
            page.set_default_timeout(20_000)
            _login(page, base)
            page.route(_the_report, hold)
            page.goto(f"{base}/fse/esami/{exam.booking.pk}/")
            page.evaluate("() => document.fonts.ready")
            for _ in range(200):  # PDF.js loaded, the report asked for (the handler runs meanwhile)
                if held:
                    break
                page.wait_for_timeout(50)
            assert held, "the page never asked for the report"
            button = page.locator(".report-pdf").first
            before = button.evaluate(PLACE)
            status = page.locator(".report-status").first
            assert status.is_visible() and "si apre qui sotto" in status.inner_text()
            page.screenshot(path=str(shots / f"{device}-before.png"), full_page=True)
            assert_accessible(page, f"exam, the report not drawn yet ({device})")  # the status text's contrast
            released = page.evaluate("() => performance.now()")
            held[0].continue_()
            page.unroute(_the_report)
            exam_page_drawn(page)
            assert page.locator(".report-viewer").first.get_attribute("data-rendered")
            cls, drawing = page.evaluate(CLS), page.evaluate(CLS, released)
            after = button.evaluate(PLACE)
            page.screenshot(path=str(shots / f"{device}-after.png"), full_page=True)
            print(f"{device}: CLS {cls:.4f} ({drawing:.4f} drawing), the PDF button from {before} to {after}")
            # The whole page's, and the drawing's alone: the shift it made was mostly below the
            # window's bottom edge, 0.09 on the desktop and 0.08 on the phone, under 0.1 still.
            assert cls < 0.1 and drawing < 0.01, (cls, drawing)
            assert abs(after[0] - before[0]) <= 2 and abs(after[1] - before[1]) <= 2, (before, after)
            pages = page.locator(".report-pages").first.evaluate(PLACE)
            assert pages[1] + pages[3] <= after[1], (pages, after)  # the pages above the buttons

            if device == "phone":  # turned: drawn again at the new width, still above the buttons
                drawn = page.locator(".report-page").first.evaluate("e => e.style.width")
                page.set_viewport_size({"width": 844, "height": 390})
                page.wait_for_function(
                    f"() => document.querySelector('.report-page').style.width !== '{drawn}'", timeout=30_000
                )
                page.evaluate(CLS)  # two frames: laid out
                pages = page.locator(".report-pages").first.evaluate(PLACE)
                turned = button.evaluate(PLACE)
                assert pages[1] + pages[3] <= turned[1] <= pages[1] + pages[3] + 60, (pages, turned)
                page.screenshot(path=str(shots / f"{device}-turned.png"), full_page=True)

            # The drawing fails: the space is given back, the message says to download the report.
            page.route(_the_report, lambda route: route.abort())
            page.goto(f"{base}/fse/esami/{exam.booking.pk}/")
            page.wait_for_selector(".report-viewer[data-failed-reason]", timeout=30_000)
            page.evaluate(CLS)  # two frames: laid out
            assert "Non è stato possibile mostrare il referto" in status.inner_text() and status.is_visible()
            viewer = page.locator(".report-viewer").first.evaluate(PLACE)
            assert viewer[3] < 100, viewer
            page.screenshot(path=str(shots / f"{device}-failed.png"), full_page=True)
            context.close()

            # Without JavaScript no space is kept: the message, then the buttons that stand in.
            context = browser.new_context(locale="it-IT", java_script_enabled=False, **DEVICES[device])
            page = context.new_page()
            _login(page, base)
            page.goto(f"{base}/fse/esami/{exam.booking.pk}/")
            viewer = page.locator(".report-viewer").first.evaluate(PLACE)
            assert viewer[3] < 100, viewer
            context.close()
        finally:
            browser.close()
