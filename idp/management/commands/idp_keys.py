"""Create the IdP di prova's client secret and signing key, if missing (``make run`` does it first)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from idp import keys


class Command(BaseCommand):
    help = "Create the IdP di prova's client secret and signing key under PACS_VAR_DIR/idp/ (kept if present)."
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **opts: Any) -> None:
        keys.client_secret(settings.VAR_DIR)
        key = keys.signing_key(settings.VAR_DIR)
        self.stdout.write(
            f"IdP di prova: client secret and signing key (kid {key.kid}) in {keys.idp_dir(settings.VAR_DIR)}"
        )
