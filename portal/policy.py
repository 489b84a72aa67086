"""The portal's part of the access policy (``archive.access``): which studies are
concealed (*oscuramento*), which patients a professional holds a live emergency
access for, and whose studies a citizen may see (self and delegators).

The archive cannot import the portal (docs/ARCHITECTURE.md), so :class:`PortalPolicy` is
registered with :func:`archive.access.extension_register` in
``PortalConfig.ready``; every way into the archive asks it through
``archive.access``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from django.db.models import Exists, OuterRef
from django.utils import timezone

from archive import access
from archive.models import Patient, Report

from .delegations import delegator_ids
from .emergency import emergency_access_minutes, emergency_access_until
from .models import CitizenAccount, Concealment, ConcealmentVersion, EmergencyAccess

logger = logging.getLogger(__name__)

__all__ = [
    "PortalPolicy",
    "emergency_access_live",
    "emergency_access_minutes",
    "emergency_access_until",
    "policy",
    "policy_register",
]


def emergency_access_live(*, user: Any, patient: Patient, now: dt.datetime | None = None) -> EmergencyAccess | None:
    """``user``'s latest emergency access for ``patient`` younger than ``PACS_EMERGENCY_ACCESS_MINUTES``, if any."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    now = now or timezone.now()
    since = now - dt.timedelta(minutes=emergency_access_minutes())
    return (
        EmergencyAccess.objects.filter(user_id=user.pk, patient_id=patient.pk, at__gt=since, at__lte=now)
        .order_by("-at")
        .first()
    )


class PortalPolicy:
    """The portal's rows as ``archive.access`` asks for them."""

    def concealed_exists(self, study_ref: str, *, author_id: int | None = None) -> Exists:
        concealed = Concealment.objects.filter(study_id=OuterRef(study_ref), revealed_at__isnull=True)
        if author_id is not None:
            concealed = concealed.exclude(
                Exists(Report.objects.filter(study_id=OuterRef("study_id"), author_id=author_id))
            )
        return Exists(concealed)

    def concealed_ids(self, study_ids: Iterable[int]) -> set[int]:
        ids = list(study_ids)
        if not ids:
            return set()
        return set(
            Concealment.objects.filter(study_id__in=ids, revealed_at__isnull=True).values_list("study_id", flat=True)
        )

    def emergency_patient_ids(self, user: Any) -> set[int]:
        now = timezone.now()
        since = now - dt.timedelta(minutes=emergency_access_minutes())
        return set(
            EmergencyAccess.objects.filter(user_id=user.pk, at__gt=since, at__lte=now).values_list(
                "patient_id", flat=True
            )
        )

    def emergency_window(self) -> tuple[dt.datetime, dt.datetime]:
        """``(since, now)``: an emergency access granted after ``since`` and by ``now`` is live."""
        now = timezone.now()
        return now - dt.timedelta(minutes=emergency_access_minutes()), now

    def emergency_exists(self, user_ref: str, *, window: tuple[dt.datetime, dt.datetime] | None = None) -> Exists:
        since, now = window or self.emergency_window()
        return Exists(EmergencyAccess.objects.filter(user_id=OuterRef(user_ref), at__gt=since, at__lte=now))

    def citizen_exists(self, user_ref: str) -> Exists:
        return Exists(CitizenAccount.objects.filter(user_id=OuterRef(user_ref)))

    def citizen_patient_ids(self, user: Any) -> set[int] | None:
        cf = CitizenAccount.objects.filter(user_id=user.pk).values_list("codice_fiscale", flat=True).first()
        if cf is None:
            return None
        own = Patient.objects.filter(codice_fiscale=cf).values_list("pk", flat=True).first()
        if own is None:
            return set()
        return {own, *delegator_ids(delegate_id=own)}

    def state_version(self) -> str:
        """Changes whenever a study is concealed or revealed: the count of the writes of
        concealments (:class:`~portal.models.ConcealmentVersion`, one row read by its key;
        not an aggregate over every concealment of the region)."""
        version = ConcealmentVersion.objects.filter(pk=1).values_list("version", flat=True).first()
        return f"v{version or 0}"


policy = PortalPolicy()


def policy_register() -> None:
    """Make the archive's access policy ask the portal (called by ``PortalConfig.ready``)."""
    access.extension_register(policy)
