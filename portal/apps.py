from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = _("Portale del cittadino (FSE)")

    def ready(self) -> None:
        # The archive announces signed reports without importing this app
        # (docs/ARCHITECTURE.md: dependencies point down); the publication hooks in here.
        from archive.signals import report_signed

        from .policy import policy_register
        from .tasks import publish_on_report_signed

        report_signed.connect(publish_on_report_signed, dispatch_uid="portal.publish")
        # Patients who chose CD: the IHE PDI image for the CUP to burn (portal.cdmedia).
        from .tasks import cd_medium_on_report_signed

        report_signed.connect(cd_medium_on_report_signed, dispatch_uid="portal.cd_medium")
        # IOCM: withdrawn images take the study's zips with them; a published report needs the CUP.
        from archive.signals import instances_rejected

        from .tasks import rejection_enqueue

        instances_rejected.connect(rejection_enqueue, dispatch_uid="portal.rejection")

        from django.contrib.auth.signals import user_logged_in

        from .views import on_citizen_login

        user_logged_in.connect(on_citizen_login, dispatch_uid="portal.citizen_login")
        from . import checks  # noqa: F401  (registers the portal's system checks)

        policy_register()  # oscuramento, emergency accesses, citizens: asked by archive.access

        from archive.conformance import media_profile_source_register

        from .media import media_profile

        media_profile_source_register(media_profile)  # the conformance statement's media section
