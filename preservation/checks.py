"""System checks of the preservation's configuration (``manage.py check``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
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
    if not settings.PACS_PRESERVATION_SIGNER_POLICIES and not settings.PACS_PRESERVATION_SIGNER_SUBJECTS:
        errors.append(
            Error(
                "PACS_PRESERVATION_SIGNER_POLICIES and PACS_PRESERVATION_SIGNER_SUBJECTS are both empty: "
                "no certificate would hold the preservation-officer role.",
                id="preservation.E003",
            )
        )
    for oid in settings.PACS_PRESERVATION_SIGNER_POLICIES:
        if not re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", oid):
            errors.append(
                Error(f"PACS_PRESERVATION_SIGNER_POLICIES: {oid!r} is not a dotted OID.", id="preservation.E004")
            )
    if not settings.PACS_TSA_CERTIFICATES:
        errors.append(Error("PACS_TSA_CERTIFICATES lists no TSA certificate.", id="preservation.E005"))
    missing = [str(p) for p in settings.PACS_TSA_CERTIFICATES if not Path(p).exists()]
    # The local TSA's certificate appears with the demo; an HTTP TSA's must be configured.
    if missing and url:
        errors.append(
            Warning(
                f"PACS_TSA_CERTIFICATES: {', '.join(missing)} not found: the time stamps of "
                f"{url} are not accepted and volumes cannot be closed.",
                id="preservation.W002",
            )
        )
    return errors
