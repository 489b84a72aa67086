from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ArchiveConfig(AppConfig):
    name = "archive"
    verbose_name = _("Archivio immagini")

    def ready(self) -> None:
        # The system checks register themselves on import; so do the admin's pages
        # beyond archive.admin (they import it, it imports neither).
        from archive import checks, tokens_admin  # noqa: F401
        from archive.storage import admin as storage_admin  # noqa: F401

        from .signals import instances_rejected, report_signed, study_instances_received
        from .tasks import manifest_on_instances_rejected, manifest_on_report_signed, study_renditions_enqueue

        study_instances_received.connect(study_renditions_enqueue, dispatch_uid="archive.renditions")
        # IHE XDS-I.b: the study's manifest after a signing, and again after a rejection.
        report_signed.connect(manifest_on_report_signed, dispatch_uid="archive.manifest")
        instances_rejected.connect(manifest_on_instances_rejected, dispatch_uid="archive.manifest")
