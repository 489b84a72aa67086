"""Diagnostic viewer benchmark (issue 18): the radiologist's Cornerstone3D viewer in headless Chromium.

A throw-away archive (SQLite and files in a temporary folder) holds one generated axial CT of
``--slices`` images ``--size``×``--size`` (16 bit, uncompressed); gunicorn serves it as the
Procfile's ``web`` line (DEBUG off). Chromium (desktop size) logs in as a radiologist, opens the
work list and clicks the study's "Visualizzatore" link:

* time to first image: from the click to the first slice drawn (``window.pacsViewer``), the best
  and the median of ``--repeat`` openings (the browser's cache emptied each time);
* scrolling once loaded: after the prefetch has decoded the whole series, the time to show
  ``--scroll`` slices one after the other (each drawn before the next), as ms per slice and
  slices/s, against a 60 Hz display's 16.7 ms.

Goals: first image under 1 s; scrolling at the display's rate once loaded.
Run: ``.venv/bin/python bench/viewer/run.py [--slices 200] [--size 512] [--repeat 5]``.
This is a benchmark, not a test: it asserts nothing. ``--smoke`` (20 slices of 128×128, one
opening, 20 slices scrolled) runs in seconds; the test suite runs it
(``tests/bench/test_benchmarks.py``) so that it cannot rot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "una-password-da-benchmark-7"


def seed(work: Path, slices: int, size: int) -> None:
    """Migrate the throw-away database, make a radiologist and ingest the CT."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.core.management import call_command

    from archive.models import Facility, HealthAuthority, StaffProfile
    from archive.sample_data import PatientInfo
    from tests.viewer3d_helpers import ct_series, ingest

    call_command("migrate", verbosity=0, interactive=False)  # on a copy of BENCH_SQLITE_TEMPLATE if set (main)
    authority = HealthAuthority.objects.create(code="ASUGI", name="Azienda sanitaria di prova")
    facility = Facility.objects.create(
        code="TS-CAT", name="Ospedale di prova", authority=authority, ae_title="BENCH", dicom_port=11112
    )
    user = get_user_model().objects.create_user(username="radiologo", password=PASSWORD, is_staff=True)
    for perm in ("view_patient", "view_study", "view_series", "view_instance", "view_report"):
        user.user_permissions.add(Permission.objects.get(content_type__app_label="archive", codename=perm))
    StaffProfile.objects.create(user=user, authority=authority)
    patient = PatientInfo(patient_id="RSSMRA56C12L424P", name="BENCH^VIEWER")
    paths = ct_series(
        work / "ct", patient=patient, slices=slices, size=size, study_date=dt.date.today(), description="TC BENCH"
    )
    ingest(paths, facility)


def web_start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    """gunicorn as the Procfile's ``web`` line, on a free port."""
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "pacs.wsgi", "--bind", "127.0.0.1:0", "--workers", "2"]
        + ["--threads", "4", "--config", "python:pacs.gunicorn_conf"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if found and "Booting worker" in log.read_text(errors="replace"):
            return proc, int(found.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("gunicorn did not start")


def measure(base: str, *, repeat: int, scroll: int, rendering: str) -> dict[str, Any]:
    """Times to first image (s) of each opening and the floors (a plain page's load, s), then ms to
    scroll ``scroll`` loaded slices and the browser's frame interval (ms), and the series' size."""
    from playwright.sync_api import sync_playwright

    firsts: list[float] = []
    floors: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            for _ in range(repeat):
                context = browser.new_context(locale="it-IT", viewport={"width": 1600, "height": 1000})
                page = context.new_page()
                page.set_default_timeout(60_000)
                page.goto(f"{base}/refertazione/")
                page.fill("input[name=username]", "radiologo")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]:has-text('Accedi')")
                page.wait_for_url(f"{base}/refertazione/")
                # The floor: the same browser loading a plain server page (the work list) from the
                # same server, in the same run.
                start = time.perf_counter()
                page.goto(f"{base}/refertazione/")
                page.wait_for_load_state("load")
                floors.append(time.perf_counter() - start)
                link = page.locator("tr", has_text="TC BENCH").get_by_role("link", name="Visualizzatore")
                start = time.perf_counter()
                if rendering:
                    page.goto(f"{base}{link.get_attribute('href')}?rendering={rendering}")
                else:
                    link.click()
                page.wait_for_function(
                    "() => { const v = window.pacsViewer && window.pacsViewer.viewport(0); return v && v.rendered; }",
                    polling="raf",
                )
                firsts.append(time.perf_counter() - start)
                errors = page.evaluate("() => window.pacsViewer.errors")
                if errors:
                    raise RuntimeError(f"the viewer failed: {errors}")
                page.wait_for_function("() => window.pacsViewer.ready")  # the whole series' metadata too
                count = page.evaluate("() => window.pacsViewer.viewport(0).count")
                page.wait_for_function(f"() => window.pacsViewer.cached(0) === {count}")
                scroll_ms = page.evaluate(f"() => window.pacsViewer.timeScroll(0, {scroll})")
                # The scrolling's floor: the browser's own frame interval (requestAnimationFrame), measured here.
                frame_ms = page.evaluate(
                    """() => new Promise((resolve) => {
                        const times = [];
                        const tick = (t) => { times.push(t); if (times.length < 61) requestAnimationFrame(tick);
                            else resolve((times[60] - times[0]) / 60); };
                        requestAnimationFrame(tick);
                    })"""
                )
                cpu = page.evaluate("() => window.pacsViewer.cpuRendering")
                context.close()
        finally:
            browser.close()
    return {
        "firsts": firsts,
        "floors": floors,
        "scroll_ms": scroll_ms,
        "frame_ms": frame_ms,
        "count": count,
        "cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5, help="openings of the study, each in a fresh context")
    parser.add_argument("--scroll", type=int, default=200, help="slices shown one after the other once loaded")
    parser.add_argument(
        "--rendering", choices=("cpu", "gpu"), default="", help="force the viewer's rendering (?rendering=)"
    )
    parser.add_argument("--smoke", action="store_true", help="20 slices of 128x128, one opening (the test suite's)")
    args = parser.parse_args()
    if args.smoke:
        args.slices, args.size, args.repeat, args.scroll = 20, 128, 1, 20
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: this benchmark runs headless Chromium")
    if not (REPO / "frontend" / "dist" / "viewer3d" / "viewer3d.js").is_file():
        sys.exit("the viewer is not built: run `npm ci --omit=optional && npm run build`")

    work = Path(tempfile.mkdtemp(prefix="pacs-bench-viewer-"))
    env = {
        **os.environ,
        "PACS_VAR_DIR": str(work / "var"),
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "pacs.settings",
        "DEBUG": "0",
        "SECURE_COOKIES": "0",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    os.environ.update({k: env[k] for k in ("PACS_VAR_DIR", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "DEBUG")})
    os.environ.pop("REDIS_URL", None)
    from bench.common import sqlite_from_template

    sqlite_from_template(work / "bench.sqlite3")
    started = time.perf_counter()
    seed(work, args.slices, args.size)
    seeded = time.perf_counter() - started
    proc, port = web_start(env, work / "gunicorn.log")
    try:
        m = measure(f"http://127.0.0.1:{port}", repeat=args.repeat, scroll=args.scroll, rendering=args.rendering)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    firsts, floors, count = m["firsts"], m["floors"], m["count"]
    per_slice = m["scroll_ms"] / args.scroll
    first_ratio = statistics.median(firsts) / statistics.median(floors)
    print(
        f"\nDiagnostic viewer, a CT of {count} slices {args.size}x{args.size} (16 bit, uncompressed), "
        f"headless Chromium 1600x1000 ({'CPU' if m['cpu'] else 'WebGL'} rendering), gunicorn 2x4 "
        f"(archive seeded in {seeded:.1f} s):"
    )
    print(f"{'measure':<36}{'best':>10}{'median':>10}{'floor':>10}{'ratio':>8}{'goal':>12}")
    print(
        f"{'time to first image (work list)':<36}{min(firsts) * 1000:>8.0f}ms"
        f"{statistics.median(firsts) * 1000:>8.0f}ms{statistics.median(floors) * 1000:>8.0f}ms"
        f"{first_ratio:>8.1f}{'< 1000 ms':>12}"
    )
    print(f"{f'scroll {args.scroll} loaded slices':<36}{m['scroll_ms']:>8.0f}ms")
    print(
        f"{'  per slice':<36}{per_slice:>8.1f}ms{'':>10}{m['frame_ms']:>8.1f}ms"
        f"{per_slice / m['frame_ms']:>8.2f}{'ratio <= 1':>12}  ({1000 / per_slice:.0f} slices/s)"
    )
    print(
        "floors: a plain page (the work list) loaded by the same browser from the same server; the"
        " browser's own frame interval (requestAnimationFrame)."
    )


if __name__ == "__main__":
    main()
