from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class FseGatewayConfig(AppConfig):
    name = "fse_gateway"
    verbose_name = _("Pubblicazione al gateway FSE 2.0")

    def ready(self) -> None:
        # The archive announces signed reports, the booking records consent and the
        # portal the oscuramento, none of them importing this app (docs/ARCHITECTURE.md:
        # dependencies point down): the outbox hooks in here, and every receiver only queues.
        from django.db.models.signals import post_save

        from archive.signals import report_signed
        from booking.models import DistributionChoice
        from portal.models import Concealment

        from . import checks  # noqa: F401  (registers the system checks)
        from .tasks import concealment_saved, distribution_choice_saved, publish_on_report_signed

        report_signed.connect(publish_on_report_signed, dispatch_uid="fse_gateway.publish")
        post_save.connect(distribution_choice_saved, sender=DistributionChoice, dispatch_uid="fse_gateway.consent")
        post_save.connect(concealment_saved, sender=Concealment, dispatch_uid="fse_gateway.concealment")
