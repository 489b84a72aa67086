"""The oscuramento as the archive sees it: which studies are concealed, and
whether a member of staff may open one now (a live emergency access).

The archive cannot import the portal (DESIGN.md), so :class:`PortalConcealmentGuard`
is registered with :func:`archive.access.concealment_guard_register` in
``PortalConfig.ready``; the archive's pages, report services and DICOMweb ask
it through ``archive.access``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from archive.access import concealment_guard_register
from archive.models import Study

from .availability import is_concealed
from .models import Concealment, EmergencyAccess

logger = logging.getLogger(__name__)


def emergency_access_minutes() -> int:
    return int(settings.PACS_EMERGENCY_ACCESS_MINUTES)


def emergency_access_live(*, user: Any, study: Study, now: dt.datetime | None = None) -> EmergencyAccess | None:
    """``user``'s latest emergency access to ``study`` younger than ``PACS_EMERGENCY_ACCESS_MINUTES``, if any."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    now = now or timezone.now()
    since = now - dt.timedelta(minutes=emergency_access_minutes())
    return (
        EmergencyAccess.objects.filter(user_id=user.pk, study_id=study.pk, at__gt=since, at__lte=now)
        .order_by("-at")
        .first()
    )


def emergency_access_until(access: EmergencyAccess) -> dt.datetime:
    """When ``access`` stops opening its study."""
    return access.at + dt.timedelta(minutes=emergency_access_minutes())


class PortalConcealmentGuard:
    """The guard ``archive.access`` asks: the portal's Concealment and EmergencyAccess rows."""

    def concealed_ids(self, study_ids: Iterable[int]) -> set[int]:
        ids = list(study_ids)
        if not ids:
            return set()
        return set(
            Concealment.objects.filter(study_id__in=ids, revealed_at__isnull=True).values_list("study_id", flat=True)
        )

    def may_open(self, user: Any, study: Study) -> bool:
        if not is_concealed(study=study):
            return True
        return emergency_access_live(user=user, study=study) is not None

    def emergency_url(self, study: Study) -> str:
        try:
            return reverse("portal:staff_emergency_access", args=[study.pk])
        except NoReverseMatch:  # the portal's pages are not mounted (a URL configuration without them)
            logger.warning("no emergency access page: portal:staff_emergency_access is not in the URLs")
            return ""


guard = PortalConcealmentGuard()


def guard_register() -> None:
    """Make the archive ask the portal about concealed studies (called by ``PortalConfig.ready``)."""
    concealment_guard_register(guard)
