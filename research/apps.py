from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ResearchConfig(AppConfig):
    name = "research"
    verbose_name = _("Esportazioni per didattica e ricerca")

    def ready(self) -> None:
        # The tasks register with Celery here: the services queue them by name
        # (kernel.tasknames), so they never import the module that imports them.
        from . import tasks  # noqa: F401
