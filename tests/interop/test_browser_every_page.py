"""Every page of the citizen's portal and of the CUP desk, in a real Chromium on a
phone and on a desktop: axe-core finds no serious or critical WCAG 2.1 AA
violation, the Content-Security-Policy refuses nothing, and nothing the page
loads fails. A census keeps the list whole: every route of the portal and of the
CUP is either visited here or named below with the reason it is not a page."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from pydicom.uid import generate_uid

from archive import procedure_steps
from booking.models import DistributionChoice
from tests.a11y import assert_accessible
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import MARIO_CF, Cup
from tests.browser_helpers import exam_page_drawn
from tests.mpps_helpers import create_attributes, discontinued_attributes
from tests.portal.portal_helpers import citizen_exam_make
from tests.reporting_helpers import Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

CHROMIUM = Path("/usr/bin/chromium")
cup = booking_fixtures.cup
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

# Routes of the two apps that are not pages a person reads, and why.
NOT_PAGES = {
    "portal:oidc_authentication_init": "redirects to the identity provider",
    "portal:oidc_authentication_callback": "redirects back from the identity provider",
    "portal:package_request": "POST: prepares a package, then redirects to its page",
    "portal:preview": "a JPEG image",
    "portal:concealment": "POST from the exam page",
    "portal:consent_revoke": "POST from the exam page",
    "portal:download": "a file (the page that fails is link_refused, visited)",
    "portal:staff_delegation_revoke": "POST from the desk's delegations page",
    "portal:staff_emergency_access": "the radiologist's page (staff skeleton, tests/interop/test_browser_reporting.py)",
    "booking:codice_fiscale_decode": "POST answered in JSON for cup.js",
    "booking:booking_choice": "POST from the booking page",
    "booking:booking_arrive": "POST from the booking page",
    "booking:booking_receipt": "a PDF",
    "booking:reconciliation_list": "the archivist's page (staff skeleton)",
    "booking:reconciliation_detail": "the archivist's page (staff skeleton)",
    "booking:reconciliation_link": "POST from the archivist's page",
    "booking:reconciliation_reassign": "POST from the archivist's page",
    "booking:reconciliation_reject": "POST from the archivist's page",
}


def route_names(namespace: str) -> set[str]:
    def walk(patterns: list[object], ns: str | None) -> set[str]:
        names: set[str] = set()
        for p in patterns:
            if isinstance(p, URLResolver):
                names |= walk(p.url_patterns, p.namespace or ns)
            elif isinstance(p, URLPattern) and p.name and ns == namespace:
                names.add(f"{ns}:{p.name}")
        return names

    return walk(get_resolver().url_patterns, None)


def session_cookie(user: object, base: str) -> dict[str, str]:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return {"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}


def test_every_citizen_and_cup_page_is_accessible(
    transactional_db: None, live_server, cup: Cup, reporting: Reporting, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    exam = citizen_exam_make(cup, reporting)
    on_cd = cup.book(delivery=DistributionChoice.Delivery.CD)
    # The booking's modality started it and stopped (MPPS): its page shows the step and the reason.
    step_uid = generate_uid()
    procedure_steps.step_create(
        facility=on_cd.facility,
        calling_ae="CT01",
        sop_instance_uid=step_uid,
        attributes=create_attributes(accession=on_cd.accession_number, patient_id=MARIO_CF),
    )
    procedure_steps.step_set(
        facility=on_cd.facility,
        sop_instance_uid=step_uid,
        modifications=discontinued_attributes(code="110505", meaning="Patient refused to continue procedure"),
    )
    base = live_server.url
    visited: dict[str, str] = {}
    refused: list[str] = []
    failed: list[str] = []
    package_url: str | None = None

    def check(page, what: str) -> None:  # type: ignore[no-untyped-def]
        width = page.viewport_size["width"]
        page.wait_for_load_state("networkidle")
        name = resolve(page.url.removeprefix(base).split("?")[0]).view_name
        visited.setdefault(name, what)
        page.screenshot(path=str(tmp_path / f"{what}-{width}.png"), full_page=True)
        assert_accessible(page, f"{what} ({page.url}) at {width} px")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            for viewport in ({"width": 390, "height": 844}, {"width": 1280, "height": 900}):

                def new_page(user: object | None, viewport: dict[str, int] = viewport):  # type: ignore[no-untyped-def]
                    phone = viewport["width"] < 500
                    context = browser.new_context(locale="it-IT", viewport=viewport, has_touch=phone)
                    if user is not None:
                        context.add_cookies([session_cookie(user, base)])
                    page = context.new_page()
                    page.set_default_timeout(20_000)
                    page.on(
                        "console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None
                    )
                    # (PDF.js aborts its first request of the report once it knows it can ask for ranges.)
                    page.on(
                        "requestfailed",
                        lambda r: (
                            failed.append(f"{r.url} {r.failure}") if "ERR_ABORTED" not in str(r.failure) else None
                        ),
                    )
                    page.on("response", lambda r: failed.append(f"{r.url} {r.status}") if r.status >= 500 else None)
                    return page

                def visit(page, pages: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
                    for what, path in pages:
                        page.goto(f"{base}{path}")
                        check(page, what)

                # Anyone: the front door and the citizen's login.
                page = new_page(None)
                visit(page, [("home", "/"), ("login", "/fse/accesso/"), ("link-refused", "/fse/scarica/not-a-link/")])
                page.context.close()

                # The citizen.
                page = new_page(exam.user)
                mine = f"/fse/esami/{exam.booking.pk}/"
                visit(
                    page,
                    [
                        ("exams", "/fse/"),
                        ("exam", mine),
                        ("viewer", f"{mine}immagini/"),
                        ("exam-on-cd", f"/fse/esami/{on_cd.pk}/"),
                        ("not-online", f"/fse/esami/{on_cd.pk}/immagini/"),
                        ("access-log", "/fse/accessi/"),
                        ("delegations", "/fse/deleghe/"),
                    ],
                )
                if package_url is None:  # asked once; the exam page then shows the package prepared
                    page.goto(f"{base}{mine}")
                    exam_page_drawn(page)
                    page.locator('button.package-request[data-kind="jpeg"]').click()
                    page.wait_for_url("**/fse/pacchetti/*/")
                    package_url = page.url
                else:
                    page.goto(package_url)
                check(page, "package")
                page.context.close()

                # A member of staff on the citizen's side, then at the CUP desk.
                page = new_page(cup.operator.user)
                patient = f"/cup/pazienti/{cup.mario.pk}/"
                visit(
                    page,
                    [
                        ("citizens-only", "/fse/"),
                        ("cup-home", "/cup/"),
                        ("cup-patient-search", f"/cup/pazienti/?codice_fiscale={MARIO_CF}"),
                        ("cup-patient-create", "/cup/pazienti/nuovo/"),
                        ("cup-patient", patient),
                        ("cup-booking", f"/cup/prenotazioni/{on_cd.accession_number}/"),
                        ("cup-booking-cancel", f"/cup/prenotazioni/{on_cd.accession_number}/annulla/"),
                        ("cup-delegations", "/fse/sportello/deleghe/"),
                        ("cup-booking-new", f"{patient}prenota/"),
                    ],
                )
                page.get_by_role("button", name="Cerca disponibilità").click()
                page.wait_for_url("**/prenota/?*")
                check(page, "cup-booking-slots")
                visit(page, [("cup-first-available", f"{patient}prima-disponibilita/")])
                page.select_option("select[name=procedure]", str(cup.ct.pk))
                page.get_by_role("button", name="Cerca la prima disponibilità").click()
                page.wait_for_url("**/prima-disponibilita/?*")
                check(page, "cup-first-available-results")
                page.context.close()
        finally:
            browser.close()

    assert not refused, "\n".join(r[:300] for r in refused)
    assert not failed, failed
    routes = route_names("portal") | route_names("booking")
    unlisted = routes - set(visited) - set(NOT_PAGES)
    assert not unlisted, f"routes neither visited nor named in NOT_PAGES: {sorted(unlisted)}"
    stale = set(NOT_PAGES) - routes
    assert not stale, f"NOT_PAGES names routes that no longer exist: {sorted(stale)}"
