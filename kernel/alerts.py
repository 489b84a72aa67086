"""Alerts: what a periodic check found wrong and staff must know, shown in the
admin until someone acknowledges it.

The storage alerts (``archive.StorageAlert``: a copy damaged or missing) and
the preservation alerts (``preservation.PreservationAlert``: what the fixity
audit of the signed volumes found) are both an :class:`Alert`. One rule for
both: a damage has one open alert, which a later check that finds it again
updates (``count``, ``last_seen_at``, what it says now) instead of repeating
(:meth:`Alert.raise_or_update`); once acknowledged it is closed, and the next
finding opens a new one. Staff acknowledge with the admin action of
``kernel.admin.AlertAdminMixin``.

What is damaged (a copy's tier and path, a package or a volume) and the kinds
of damage are each app's: the concrete models name them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class AlertQuerySet(models.QuerySet):
    def unacknowledged(self) -> AlertQuerySet:
        return self.filter(acknowledged_at__isnull=True)

    def acknowledge(self, *, user: Any) -> int:
        """Acknowledge the open alerts among these, as ``user``; how many (one already
        acknowledged keeps who and when)."""
        return self.unacknowledged().update(acknowledged_at=timezone.now(), acknowledged_by=user)


class Alert(models.Model):
    """Something a check found, shown until acknowledged; the same damage found again updates it.

    The fields are those both alert tables were created with (same names,
    labels and options): deriving from this changed no column.
    """

    created_at = models.DateTimeField(_("rilevato il"), auto_now_add=True, db_index=True)
    last_seen_at = models.DateTimeField(_("ultima rilevazione"), null=True, blank=True)
    count = models.PositiveIntegerField(_("rilevazioni"), default=1)
    detail = models.TextField(_("dettaglio"), blank=True)
    acknowledged_at = models.DateTimeField(_("presa visione il"), null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("presa visione da"),
    )

    objects = AlertQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    @classmethod
    def raise_or_update(cls, *, damage: dict[str, Any], **values: Any) -> bool:
        """Raise an alert for ``damage`` (the fields that name what is damaged), or update
        its open one: ``values`` (what it says now), one more sighting, seen now.
        True when a new alert was raised.

        Not locked: two checks finding the same damage at the same moment may
        raise two alerts, which is noise, not harm.
        """
        now = timezone.now()
        updated = cls.objects.filter(**damage).unacknowledged().update(**values, last_seen_at=now, count=F("count") + 1)
        if updated:
            return False
        cls.objects.create(**damage, **values, last_seen_at=now)
        return True
