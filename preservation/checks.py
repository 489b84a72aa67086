"""System checks of the preservation's configuration (``manage.py check``)."""

from __future__ import annotations

import shutil
from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def check_preservation(app_configs: Any, **kwargs: Any) -> list[Any]:
    errors: list[Any] = []
    tier = settings.PACS_PRESERVATION_TIER
    if not tier.startswith("preservation:"):
        errors.append(
            Error(
                f"PACS_PRESERVATION_TIER={tier!r} must name a preservation tier (preservation:<scope>).",
                id="preservation.E001",
            )
        )
    url = settings.PACS_TSA_URL
    if url and not url.startswith(("http://", "https://")):
        errors.append(Error(f"PACS_TSA_URL={url!r} is not an http(s) URL.", id="preservation.E002"))
    if not url and shutil.which("openssl") is None:
        errors.append(
            Warning(
                "PACS_TSA_URL is empty and openssl is not on PATH: volumes cannot be time-stamped.",
                id="preservation.W001",
            )
        )
    return errors
