"""Fixtures of the browser tests in this folder."""

from __future__ import annotations

import pytest


@pytest.fixture
def browser_settings(settings):  # type: ignore[no-untyped-def]
    # The live server speaks plain http: session and CSRF cookies without Secure.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    return settings
