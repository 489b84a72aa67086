"""Template tags of the admin's storage pages: the open storage alerts, for the index banner."""

from __future__ import annotations

from django import template

from ..models import StorageAlert

register = template.Library()


@register.simple_tag
def storage_alerts_open() -> int:
    return StorageAlert.objects.unacknowledged().count()
