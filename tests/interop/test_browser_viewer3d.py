"""The radiologist's diagnostic viewer (Cornerstone3D on the archive's DICOMweb) in a real
Chromium at desktop size: a 100-slice CT opens from the work list; one slice per wheel notch;
dragging changes the window; a length on a phantom of known geometry reads its millimetres;
a prior opens beside the study and scrolls with it; JPEG 2000 and JPEG-LS images decode in the
browser; the page reports no CSP violation. The state is read from ``window.pacsViewer``."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pydicom
import pytest

from archive.sample_data import PatientInfo
from kernel.models import AuditEvent
from tests.a11y import assert_accessible
from tests.interop.test_browser_booking import CHROMIUM
from tests.reporting_helpers import PATIENT_CF, RADIOLOGIST_PASSWORD, Reporting, reporting  # noqa: F401
from tests.viewer3d_helpers import bundled_study, ct_series, ingest

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

PATIENT = PatientInfo(patient_id=PATIENT_CF, name="ROSSI^MARIO", birth_date="19560312", sex="M")
READY = "() => window.pacsViewer && window.pacsViewer.ready"
CSP_LISTENER = """window.__csp = []; document.addEventListener('securitypolicyviolation',
    (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"""


def _state(page: Any, index: int = 0) -> dict[str, Any]:
    return page.evaluate(f"() => window.pacsViewer.viewport({index})")


def _wait_rendered(page: Any, index: int = 0) -> None:
    page.wait_for_function(
        f"() => {{ const v = window.pacsViewer.viewport({index}); return v && v.rendered && v.window; }}"
    )


def _open(page: Any, base: str, pk: int, shots: Path, name: str) -> None:
    page.goto(f"{base}/refertazione/studi/{pk}/viewer/")
    page.wait_for_function(READY)
    assert page.evaluate("() => window.pacsViewer.errors") == []
    _wait_rendered(page)
    page.screenshot(path=str(shots / f"{name}.png"))


def _login(page: Any, base: str) -> None:
    page.goto(f"{base}/refertazione/")
    page.fill("input[name=username]", "radiologo")
    page.fill("input[name=password]", RADIOLOGIST_PASSWORD)
    page.click("button[type=submit]:has-text('Accedi')")
    page.wait_for_url(f"{base}/refertazione/")


def test_diagnostic_viewer_in_the_browser(
    transactional_db: None,
    live_server,  # type: ignore[no-untyped-def]
    reporting: Reporting,  # noqa: F811
    browser_settings,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    facility = reporting.region.facility
    today = dt.date.today()
    ct = ingest(
        ct_series(tmp_path / "ct", patient=PATIENT, slices=100, study_date=today, description="TC TORACE 100"),
        facility,
    )
    # Three more series of the same study: a 5 mm axial and a 1 mm axial in the same frame of
    # reference (they scroll with the first by the same point in space) and a coronal one (not parallel).
    frame_uid = pydicom.dcmread(next((tmp_path / "ct").iterdir()), stop_before_pixels=True).FrameOfReferenceUID
    for number, (name, slices, spacing, coronal) in enumerate(
        (("Assiale 5 mm", 50, 5.0, False), ("Coronale", 40, 3.0, True), ("Assiale 1 mm", 30, 1.0, False)), start=2
    ):
        ingest(
            ct_series(
                tmp_path / f"ct{number}",
                patient=PATIENT,
                slices=slices,
                spacing=spacing,
                coronal=coronal,
                study_date=today,
                description="TC TORACE 100",
                study_uid=ct.study_instance_uid,
                frame_uid=frame_uid,
                series_number=number,
                series_description=name,
            ),
            facility,
        )
    prior = ingest(
        ct_series(
            tmp_path / "prior",
            patient=PATIENT,
            slices=60,
            study_date=today - dt.timedelta(days=400),
            description="TC TORACE PRECEDENTE",
            z0=40.0,
            spacing=5.0,
        ),
        facility,
    )
    phantom = ingest(
        ct_series(
            tmp_path / "phantom",
            patient=PATIENT,
            slices=1,
            size=256,
            pixel_spacing=0.5,
            dots=((128, 78), (128, 178)),
            study_date=today - dt.timedelta(days=800),
            description="FANTOCCIO",
        ),
        facility,
    )
    uncalibrated = ingest(
        ct_series(
            tmp_path / "uncal",
            patient=PATIENT,
            slices=1,
            pixel_spacing=None,
            imager_pixel_spacing=0.2,
            study_date=today - dt.timedelta(days=900),
            description="SENZA CALIBRAZIONE",
        ),
        facility,
    )
    # The transfer syntaxes the archive holds, as pydicom bundles them (archive.sample_data.COMPRESSED).
    compressed = {
        name: ingest(
            bundled_study(tmp_path / name, patient=PATIENT, name=filename, study_date=today, description=name),
            facility,
        )
        for name, filename in (
            ("jpeg2000-lossless", "MR_small_jp2klossless.dcm"),
            ("jpeg2000", "JPEG2000.dcm"),
            ("jpeg-ls", "MR_small_jpeg_ls_lossless.dcm"),
            ("jpeg-baseline", "SC_rgb_jpeg_dcmtk.dcm"),
            ("jpeg-lossless", "SC_rgb_jpeg_gdcm.dcm"),
            ("rle", "MR_small_RLE.dcm"),
        )
    }
    shots = tmp_path / "shots"
    shots.mkdir()
    base = live_server.url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(locale="it-IT", viewport={"width": 1600, "height": 1000})
            context.add_init_script(CSP_LISTENER)
            page = context.new_page()
            page.set_default_timeout(30_000)
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            failed: list[str] = []
            page.on("response", lambda r: r.status >= 400 and "favicon" not in r.url and failed.append(r.url))
            _login(page, base)

            # From the work list, the 100-slice CT opens in the viewer.
            page.locator("tr", has_text="TC TORACE 100").get_by_role("link", name="Visualizzatore").click()
            page.wait_for_url(f"{base}/refertazione/studi/{ct.pk}/viewer/")
            page.wait_for_function(READY)
            _wait_rendered(page)
            state = _state(page)
            assert state["count"] == 100 and state["index"] == 0
            assert state["window"] == {"center": 40, "width": 400}
            assert AuditEvent.objects.filter(
                action="study.view", study=ct, detail__page="reporting.viewer", user=reporting.radiologist
            ).exists()
            page.screenshot(path=str(shots / "ct-first.png"))
            assert_accessible(page, "the diagnostic viewer")

            # One slice per wheel notch, both ways.
            box = page.locator(".v3d-element").first.bounding_box()
            assert box is not None and box["width"] > 1000  # full window at 1600 px
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            for notch in range(1, 16):
                page.mouse.wheel(0, 100)
                page.wait_for_function(f"() => window.pacsViewer.viewport(0).index === {notch}")
            page.mouse.wheel(0, -100)
            page.wait_for_function("() => window.pacsViewer.viewport(0).index === 14")
            # The keyboard: End, Home, PageDown.
            page.keyboard.press("End")
            page.wait_for_function("() => window.pacsViewer.viewport(0).index === 99")
            page.keyboard.press("Home")
            page.keyboard.press("PageDown")
            page.wait_for_function("() => window.pacsViewer.viewport(0).index === 10")

            # Window/level by left-drag (the default tool).
            before = _state(page)["window"]
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 80, cy + 40, steps=8)
            page.mouse.up()
            after = _state(page)["window"]
            assert after != before, (before, after)
            assert after["width"] != before["width"] and after["center"] != before["center"]
            page.screenshot(path=str(shots / "ct-windowed.png"))
            # A preset, then reset to the data set's window.
            page.select_option("#v3d-preset", "-600,1500")
            assert _state(page)["window"] == {"center": -600, "width": 1500}
            # Zoom with the right button, then reset: the data set's window and the fitted image.
            fitted = _state(page)["zoom"]
            page.mouse.move(cx, cy)
            page.mouse.down(button="right")
            page.mouse.move(cx, cy - 120, steps=8)
            page.mouse.up(button="right")
            assert _state(page)["zoom"] != fitted
            page.click("#v3d-reset")
            assert _state(page)["window"] == {"center": 40, "width": 400}
            assert abs(_state(page)["zoom"] - fitted) < 1e-6
            # Cine plays and stops.
            start = _state(page)["index"]
            page.click("#v3d-cine")
            page.wait_for_function(f"() => window.pacsViewer.viewport(0).index >= {start + 3}")
            page.click("#v3d-cine")
            assert not _state(page)["cine"]
            page.keyboard.press("Home")
            page.wait_for_function("() => window.pacsViewer.viewport(0).index === 0")
            page.keyboard.press("PageDown")
            page.wait_for_function("() => window.pacsViewer.viewport(0).index === 10")

            # The prior beside the current study, linked: it scrolls with it by slice position.
            page.get_by_role("button", name="TC TORACE PRECEDENTE").click()
            page.wait_for_function("() => window.pacsViewer.layout === '1x2'")
            _wait_rendered(page, 1)
            page.wait_for_function(
                "() => { const v = window.pacsViewer.viewport(1); return v.linked && v.count === 60; }"
            )
            right = _state(page, 1)
            assert right["studyUid"] == prior.study_instance_uid and right["linked"]
            left = _state(page, 0)
            offset = right["position"] - left["position"]  # aligned where they were linked
            page.mouse.move(box["x"] + 200, cy)
            for _ in range(6):
                page.mouse.wheel(0, 100)
            page.wait_for_function("() => window.pacsViewer.viewport(0).index === 16")
            left, right = _state(page, 0), _state(page, 1)
            # 6 slices of 2.5 mm = 15 mm: the prior (5 mm slices) moves 3 slices.
            assert abs((right["position"] - left["position"]) - offset) <= 2.5, (left, right)
            assert right["index"] > 0
            page.screenshot(path=str(shots / "prior-beside.png"))
            for layout in ("2x2", "1x1"):
                page.click(f"[data-layout='{layout}']")
                page.wait_for_function(f"() => window.pacsViewer.layout === '{layout}'")
            assert not _state(page)["linked"]  # alone again: nothing to scroll with
            page.screenshot(path=str(shots / "layout.png"))

            # 2×2 with the study's four series, one per viewport (the active one takes the series).
            page.click("[data-layout='2x2']")
            page.wait_for_function("() => window.pacsViewer.layout === '2x2'")
            for i, count in enumerate((100, 50, 40, 30)):
                page.evaluate(f"() => window.pacsViewer.setActive({i})")
                page.locator("#v3d-series button").nth(i).click()
                _wait_rendered(page, i)  # the first image shows before the series' metadata is in
                page.wait_for_function(f"() => window.pacsViewer.viewport({i}).count === {count}")
            states = [_state(page, i) for i in range(4)]
            assert [s["count"] for s in states] == [100, 50, 40, 30], states
            assert len({s["seriesUid"] for s in states}) == 4
            assert all(s["studyUid"] == ct.study_instance_uid for s in states)
            # Synchronised in the shared frame of reference: the same point in space at once, and
            # while scrolling; the coronal series is not parallel and stays where it is.
            page.evaluate("() => window.pacsViewer.setActive(0)")
            page.evaluate("() => window.pacsViewer.scrollTo(0, 8)")  # z = 20 mm
            page.click("#v3d-link")
            assert page.get_attribute("#v3d-link", "aria-pressed") == "true"
            states = [_state(page, i) for i in range(4)]
            assert [s["linked"] for s in states] == [True, True, False, True], states
            assert states[1]["position"] == 20.0 and states[3]["position"] == 20.0, states
            coronal_index = states[2]["index"]
            quarter = page.locator(".v3d-element").first.bounding_box()
            assert quarter is not None and quarter["width"] < box["width"] * 0.6
            page.mouse.move(quarter["x"] + quarter["width"] / 2, quarter["y"] + quarter["height"] / 2)
            for notch in range(1, 5):
                page.mouse.wheel(0, 100)
                page.wait_for_function(f"() => window.pacsViewer.viewport(0).index === {8 + notch}")
            page.wait_for_function("() => window.pacsViewer.viewport(3).position === 29")
            states = [_state(page, i) for i in range(4)]
            assert states[0]["position"] == 30.0 and abs(states[1]["position"] - 30.0) <= 2.5, states
            assert states[3]["position"] == 29.0  # the 1 mm series ends at 29 mm: its nearest slice
            assert states[2]["index"] == coronal_index
            # Drawn, not only moved: the overlay follows the image shown (STACK_NEW_IMAGE).
            page.wait_for_function(
                "() => document.querySelectorAll('.v3d-element')[3].getAttribute('aria-label').endsWith('30/30')"
            )
            page.screenshot(path=str(shots / "four-series-linked.png"))
            page.click("#v3d-link")
            assert page.get_attribute("#v3d-link", "aria-pressed") == "false"
            assert not any(_state(page, i)["linked"] for i in range(4))
            page.click("[data-layout='1x1']")
            page.wait_for_function("() => window.pacsViewer.layout === '1x1'")

            # A length on the phantom: two dots 100 px apart at 0.5 mm → 50.0 mm.
            _open(page, base, phantom.pk, shots, "phantom")
            assert _state(page)["warning"] == ""
            page.click("[data-tool='Length']")
            a = page.evaluate("() => window.pacsViewer.pagePoint(0, 78, 128)")
            b = page.evaluate("() => window.pacsViewer.pagePoint(0, 178, 128)")
            page.mouse.move(a["x"], a["y"])
            page.mouse.down()
            page.mouse.move((a["x"] + b["x"]) / 2, a["y"], steps=5)
            page.mouse.move(b["x"], b["y"], steps=5)
            page.mouse.up()
            page.wait_for_function("() => window.pacsViewer.lastMeasurement !== null")
            page.wait_for_timeout(300)  # drawn once more after the mouse is released
            measured = page.evaluate("() => window.pacsViewer.lastMeasurement")
            assert measured["unit"] == "mm" and abs(measured["value"] - 50.0) <= 0.5, measured
            page.screenshot(path=str(shots / "phantom-length.png"))
            # An angle: from the left dot to the right one, then up 50 px: 90°.
            page.click("[data-tool='Angle']")
            c = page.evaluate("() => window.pacsViewer.pagePoint(0, 178, 78)")
            page.mouse.move(a["x"], a["y"] + 30)
            page.mouse.down()
            page.mouse.move(b["x"], b["y"] + 30, steps=8)
            page.mouse.up()
            page.mouse.move(c["x"], c["y"] + 30, steps=8)
            page.mouse.down()
            page.mouse.up()
            page.wait_for_function("() => (window.pacsViewer.lastMeasurement || {}).tool === 'Angle'")
            page.wait_for_timeout(300)
            angle = page.evaluate("() => window.pacsViewer.lastMeasurement")
            assert angle["unit"] == "°" and abs(angle["value"] - 90) <= 1, angle
            page.screenshot(path=str(shots / "phantom-angle.png"))

            # Only Imager Pixel Spacing: a visible warning.
            _open(page, base, uncalibrated.pk, shots, "uncalibrated")
            assert "non sono calibrate" in _state(page)["warning"]
            assert page.locator(".v3d-ov-warn").first.is_visible()

            # JPEG 2000, JPEG-LS, JPEG baseline and lossless, RLE decode in the browser (WebAssembly
            # codecs in workers).
            for name, study in compressed.items():
                _open(page, base, study.pk, shots, name)
                assert _state(page)["count"] == 1, name

            violations = page.evaluate("() => window.__csp")
            assert violations == [], violations
            # The browser reports CSP violations on the console too ("Refused to ..."), on every page.
            assert not [line for line in console if "Refused" in line], console
            assert not [line for line in console if line.startswith("error") and "Failed to load" not in line]
            assert failed == []
        finally:
            browser.close()
