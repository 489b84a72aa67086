from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class KernelConfig(AppConfig):
    name = "kernel"
    verbose_name = _("Registro di audit")

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from .dbsession import session_settings

        connection_created.connect(session_settings, dispatch_uid="kernel.dbsession")
