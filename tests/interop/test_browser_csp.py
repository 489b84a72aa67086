"""The Content-Security-Policy in a real Chromium: the staff's pages, the admin
(the DICOM header page included), the citizen's pages with the image viewer and
the API's documentation load without one violation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from archive.models import Instance
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

# Redoc shows a "by Redocly" logo from its CDN once it has rendered: the policy blocks
# that request, as it should (no page of the archive fetches from a CDN).
_EXPECTED = ("img-src https://cdn.redoc.ly/", "'https://cdn.redoc.ly/")

# Every violation the page reports (Playwright's init script is not subject to the page's policy).
_LISTEN = (
    "window.__csp = [];"
    "document.addEventListener('securitypolicyviolation',"
    " e => window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline') + ' ' + e.sourceFile));"
)


def test_the_pages_load_without_a_policy_violation(
    transactional_db: None, live_server, cup: Cup, reporting: Reporting, settings
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False  # the live server speaks plain http
    settings.CSRF_COOKIE_SECURE = False
    exam = citizen_exam_make(cup, reporting)
    get_user_model().objects.create_superuser("amministratore", password="una-password-lunga-1")
    instance = Instance.objects.filter(series__study=exam.booking.study).first()
    assert instance is not None
    staff_pages = [
        "/",
        reverse("reporting:worklist"),
        reverse("reporting:study", args=[exam.booking.study.pk]),
        reverse("booking:home"),
        "/admin/",
        "/admin/archive/study/",
        reverse("admin:archive_instance_header", args=[instance.pk]),
        "/api/schema/swagger/",
        "/api/schema/redoc/",
    ]
    citizen_pages = ["/fse/", f"/fse/esami/{exam.booking.pk}/", f"/fse/esami/{exam.booking.pk}/immagini/"]
    violations: list[str] = []
    console: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            for who, login, fields, pages in (
                (
                    "staff",
                    "/accounts/login/",
                    {"Nome utente": "amministratore", "Password": "una-password-lunga-1"},
                    staff_pages,
                ),
                ("citizen", "/fse/accesso/", {"Codice fiscale": MARIO_CF, "Password": CITIZEN_PASSWORD}, citizen_pages),
            ):
                context = browser.new_context(locale="it-IT")
                context.add_init_script(_LISTEN)
                page = context.new_page()
                page.set_default_timeout(20_000)
                page.on(
                    "console",
                    lambda m: (
                        console.append(m.text)
                        if "Content Security Policy" in m.text and not any(e in m.text for e in _EXPECTED)
                        else None
                    ),
                )
                page.goto(f"{live_server.url}{login}")
                for label, value in fields.items():
                    page.get_by_label(label, exact=True).fill(value)
                with page.expect_navigation():
                    page.locator("form button[type=submit], form input[type=submit]").last.click()
                assert login not in page.url, f"{who} login failed"
                for url in pages:
                    response = page.goto(f"{live_server.url}{url}", wait_until="networkidle")
                    assert response is not None and response.status == 200, (who, url)
                    assert response.headers.get("content-security-policy"), url
                    violations += [f"{url}: {v}" for v in page.evaluate("window.__csp") if not v.startswith(_EXPECTED)]
                context.close()
        finally:
            browser.close()
    assert violations == [] and console == [], violations + console
