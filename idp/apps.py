from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class IdpConfig(AppConfig):
    name = "idp"
    verbose_name = _("IdP di prova (SPID/CIE)")
