from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PreservationConfig(AppConfig):
    name = "preservation"
    verbose_name = _("Conservazione a norma")

    def ready(self) -> None:
        # The archive announces signed reports without importing this app
        # (DESIGN.md: dependencies point down); packaging hooks in here.
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_migrate

        from archive.signals import report_signed

        from . import checks  # noqa: F401  (registers the system checks)
        from .guard import sqlite_connection_created, sqlite_triggers_ensure
        from .tasks import package_on_report_signed

        report_signed.connect(package_on_report_signed, dispatch_uid="preservation.package")
        # The SQLite triggers of the preservation tables ask a function of each connection.
        connection_created.connect(sqlite_connection_created, dispatch_uid="preservation.guard")
        post_migrate.connect(sqlite_triggers_ensure, sender=self, dispatch_uid="preservation.guard.triggers")
