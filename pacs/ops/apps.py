from __future__ import annotations

from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operations (pacs.ops): no models; installed for its commands (backup, restore, restore_verify)."""

    name = "pacs.ops"
    label = "ops"
    verbose_name = "Operations"
