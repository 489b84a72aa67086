"""The count of unacknowledged preservation alerts, for the admin index."""

from __future__ import annotations

from django import template

from preservation.models import PreservationAlert

register = template.Library()


@register.simple_tag
def preservation_alerts_open() -> int:
    return PreservationAlert.objects.unacknowledged().count()
