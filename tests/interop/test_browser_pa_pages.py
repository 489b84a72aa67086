"""The citizen's and the CUP desk's pages on Bootstrap Italia, in a real Chromium:
the stylesheet, the fonts and the script come from this server (no CDN) under the
Content-Security-Policy with nothing refused, the menu opens on a phone, and axe-core
finds no serious or critical WCAG 2.1 AA violation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.test import Client

from portal.accounts import citizen_account_create
from tests.a11y import assert_accessible
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import MARIO_CF, Cup

CHROMIUM = Path("/usr/bin/chromium")
cup = booking_fixtures.cup
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]


def session_cookie(user: object, base: str) -> dict[str, str]:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return {"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}


def test_pages_on_bootstrap_italia(transactional_db: None, live_server, cup: Cup, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    citizen = citizen_account_create(codice_fiscale=MARIO_CF, password="x" * 20)
    base = live_server.url
    refused: list[str] = []
    failed: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            for who, user, path in (("citizen", citizen, "/fse/"), ("cup", cup.operator.user, "/cup/")):
                for viewport in ({"width": 390, "height": 844}, {"width": 1280, "height": 900}):
                    context = browser.new_context(locale="it-IT", viewport=viewport)
                    context.add_cookies([session_cookie(user, base)])
                    page = context.new_page()
                    page.on(
                        "console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None
                    )
                    page.on("requestfailed", lambda r: failed.append(r.url))
                    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
                    page.goto(f"{base}{path}")
                    page.wait_for_load_state("networkidle")
                    page.evaluate("() => document.fonts.ready")
                    # Bootstrap Italia's stylesheet and its typeface, served here.
                    assert "Titillium Web" in page.evaluate("() => getComputedStyle(document.body).fontFamily")
                    assert page.evaluate("() => document.fonts.check('16px \"Titillium Web\"')")
                    assert page.locator(".it-header-wrapper").count() == 1
                    phone = viewport["width"] < 500
                    toggler = page.locator("button.custom-navbar-toggler")
                    if phone:
                        # The menu is folded behind the burger, and the burger opens it.
                        assert page.locator("#nav-main .nav-link").first.is_hidden()
                        toggler.click()
                        page.locator("#nav-main .nav-link").first.wait_for(state="visible")
                        page.wait_for_timeout(600)  # the panel slides in
                        page.screenshot(path=str(tmp_path / f"{who}-menu.png"))
                        assert toggler.get_attribute("aria-expanded") == "true"
                        page.locator("#nav-main .close-menu").click()
                        page.wait_for_function(
                            "() => getComputedStyle(document.querySelector('#nav-main')).display === 'none'"
                        )
                    else:
                        assert page.locator("#nav-main .nav-link").first.is_visible()
                    page.screenshot(path=str(tmp_path / f"{who}-{viewport['width']}.png"), full_page=True)
                    assert_accessible(page, f"{who} {path} at {viewport['width']} px")
                    context.close()
        finally:
            browser.close()
    assert not refused, "\n".join(r[:300] for r in refused)
    assert not failed, failed
