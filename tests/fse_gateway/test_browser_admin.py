"""In a real Chromium, the outbox's admin pages: the list of refused operations with the
gateway's error, the operation with every exchange; accessible (axe, WCAG 2.1 AA)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from fse_gateway.models import Operation
from tests.a11y import BLOCKING, assert_accessible, axe_violations, describe
from tests.booking.conftest import Cup
from tests.interop.test_browser_booking import CHROMIUM
from tests.reporting_helpers import Reporting

from .helpers import booked_and_signed, signed_and_sent
from .standin import Gateway

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]


def test_the_outbox_pages_in_a_browser(
    transactional_db: None,
    live_server: Any,
    fse: Gateway,
    cup: Cup,
    reporting: Reporting,
    settings: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False  # the live server speaks plain http
    settings.CSRF_COOKIE_SECURE = False
    _booking, report = booked_and_signed(cup, reporting)
    fse.fail_next(400, path="/v1/documents/validation")
    signed_and_sent(report)
    failed = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert failed.status == Operation.Status.FAILED
    get_user_model().objects.create_superuser("amministratore", password="una-password-lunga-1")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context(locale="it-IT", viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{live_server.url}/accounts/login/")
            page.get_by_label("Nome utente", exact=True).fill("amministratore")
            page.get_by_label("Password", exact=True).fill("una-password-lunga-1")
            with page.expect_navigation():
                page.locator("form button[type=submit], form input[type=submit]").last.click()
            page.goto(f"{live_server.url}{reverse('admin:fse_gateway_operation_changelist')}?status__exact=failed")
            row = page.locator("#result_list tbody tr", has_text=failed.booking.accession_number)
            assert "rifiutata: serve un operatore" in row.inner_text() and "HTTP 400" in row.inner_text()
            page.screenshot(path=str(tmp_path / "outbox.png"), full_page=True)
            assert_accessible(page, "the outbox's list")
            page.goto(f"{live_server.url}{reverse('admin:fse_gateway_operation_change', args=[failed.pk])}")
            body = page.inner_text("body")
            assert "Errore simulato 400" in body and "validation" in body
            page.screenshot(path=str(tmp_path / "operation.png"), full_page=True)
            # Django's own change-page breadcrumbs (links told by colour only) are the stock admin's,
            # on every change page of the project: everything else must pass.
            blocking = [
                v
                for v in axe_violations(page)
                if v.get("impact") in BLOCKING
                and not (
                    v["id"] == "link-in-text-block" and all(".breadcrumbs" in " ".join(n["target"]) for n in v["nodes"])
                )
            ]
            assert not blocking, describe(blocking)
        finally:
            browser.close()
    print(tmp_path)
