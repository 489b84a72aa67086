"""Italian names for the admin sections of two libraries: django-axes (the login
throttling) and django-rest-knox (the API tokens).

Neither ships an Italian name: the admin showed "Axes – Access attempts" and
"Knox – Auth tokens" among the Italian sections. The app's section takes its
name from the AppConfig (these subclasses, named in ``INSTALLED_APPS``); a
model's from its ``_meta``, set here when the app is ready. Only the names the
admin shows change: ``_meta.original_attrs``, which migrations read, is left
as the library wrote it, so no migration of theirs is asked for (tested).
The Italian is the message id, with its English translation in locale/en, as
for every other label; axes' own column and filter labels are English message
ids, translated in locale/it.
"""

from __future__ import annotations

from typing import Any

from axes.apps import AppConfig as AxesAppConfig
from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


def _name(model: Any, singular: Any, plural: Any) -> None:
    model._meta.verbose_name = singular
    model._meta.verbose_name_plural = plural


class AxesConfig(AxesAppConfig):
    verbose_name = _("Accessi falliti e blocchi")

    def ready(self) -> None:
        super().ready()
        from axes.models import AccessAttempt, AccessAttemptExpiration, AccessFailureLog, AccessLog

        _name(AccessAttempt, _("tentativo di accesso fallito"), _("tentativi di accesso falliti"))
        _name(AccessAttemptExpiration, _("scadenza di un tentativo"), _("scadenze dei tentativi"))
        _name(AccessFailureLog, _("accesso fallito"), _("registro degli accessi falliti"))
        _name(AccessLog, _("accesso riuscito"), _("registro degli accessi riusciti"))
        from pacs import axes_admin  # noqa: F401  (registers itself over axes' own)


class KnoxConfig(AppConfig):
    name = "knox"
    verbose_name = _("Accesso alle API")

    def ready(self) -> None:
        from knox.models import AuthToken

        _name(AuthToken, _("token per le API"), _("token di accesso alle API"))
