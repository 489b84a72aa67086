from __future__ import annotations

from django.apps import AppConfig


class ArchiveConfig(AppConfig):
    name = "archive"
    verbose_name = "Archivio immagini"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
