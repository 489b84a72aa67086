from __future__ import annotations

from django.apps import AppConfig


class ArchiveConfig(AppConfig):
    name = "archive"
    verbose_name = "Archivio immagini"

    def ready(self) -> None:
        # The system checks register themselves; the admin's pages beyond
        # archive.admin import it (it imports neither).
        from . import admin_storage, admin_tokens, checks  # noqa: F401
        from .signals import study_instances_received
        from .tasks import study_renditions_enqueue

        study_instances_received.connect(study_renditions_enqueue, dispatch_uid="archive.renditions")
