from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PreservationConfig(AppConfig):
    name = "preservation"
    verbose_name = _("Conservazione a norma")

    def ready(self) -> None:
        # The archive announces signed reports without importing this app
        # (docs/ARCHITECTURE.md: dependencies point down); packaging hooks in here.
        from django.db.models.signals import post_migrate

        from archive.signals import report_signed

        from . import checks  # noqa: F401  (registers the system checks)
        from .guard import sqlite_triggers_ensure
        from .tasks import package_on_report_signed

        report_signed.connect(package_on_report_signed, dispatch_uid="preservation.package")
        # IOCM: a rejection note on a preserved study needs the archivist (packages are write-once).
        from archive.signals import instances_rejected

        from .tasks import rejection_enqueue

        instances_rejected.connect(rejection_enqueue, dispatch_uid="preservation.rejection")
        # SQLite drops a table's triggers when a migration rebuilds it: put the registry's back.
        post_migrate.connect(sqlite_triggers_ensure, sender=self, dispatch_uid="preservation.guard.triggers")

        # The seals of the audit chains are kept in the giornale; the archive's
        # verifier reads them back through this (it does not import preservation).
        from kernel.audit import seal_source_register

        from .audit_seal import audit_seals_read

        seal_source_register(audit_seals_read)
