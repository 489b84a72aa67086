"""Emergency access (break-glass): a clinician's access to one patient's concealed
studies, with a reason, for a limited time."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from archive.models import Patient
from kernel.audit import audit_record

from .errors import PortalError
from .models import EMERGENCY_REASON_MIN_LENGTH, EmergencyAccess

if TYPE_CHECKING:
    from django.contrib.auth.models import User


EMERGENCY_PERMISSION = "portal.emergency_access"


def emergency_access_minutes() -> int:
    return int(settings.PACS_EMERGENCY_ACCESS_MINUTES)


def emergency_access_until(access_row: EmergencyAccess) -> dt.datetime:
    """When ``access_row`` stops opening its patient's concealed studies."""
    return access_row.at + dt.timedelta(minutes=emergency_access_minutes())


def emergency_access_allowed(user: Any) -> bool:
    """Whether ``user`` may ask for an emergency access: a clinician who consults studies."""
    return bool(
        user is not None
        and getattr(user, "is_authenticated", False)
        and user.has_perm(EMERGENCY_PERMISSION)
        and user.has_perm("archive.view_study")
    )


def emergency_reason_clean(reason: str) -> str:
    """``reason`` with its white space folded; :class:`PortalError` when too short to say why."""
    reason = " ".join(reason.split())
    if len(reason) < EMERGENCY_REASON_MIN_LENGTH:
        raise PortalError(
            _("Indicare il motivo dell'accesso in emergenza (almeno %(n)d caratteri).")
            % {"n": EMERGENCY_REASON_MIN_LENGTH},
            code="too_short",
            field="reason",
        )
    return reason


def emergency_access_grant(
    *, user: User, patient: Patient, reason: str, source: str = "", now: dt.datetime | None = None
) -> EmergencyAccess:
    """Record a professional's break-glass access to ``patient``'s concealed studies, with the stated reason.

    Asked for a patient, never for a study: the professional cannot tell
    whether anything is concealed. For ``PACS_EMERGENCY_ACCESS_MINUTES`` the
    access policy shows ``user`` the patient's concealed studies (within the
    user's health authority, which still applies). Audited
    ``portal.emergency_access`` with the patient and the reason, which the
    citizen reads on "Chi ha visto i miei dati".

    Raises
    ------
    PortalError
        ``permission``: the user does not hold ``portal.emergency_access`` (and
        ``archive.view_study``); ``too_short``: the reason is shorter than
        :data:`~portal.models.EMERGENCY_REASON_MIN_LENGTH` characters.
    """
    if not emergency_access_allowed(user):
        raise PortalError(_("Non hai il permesso di chiedere un accesso in emergenza."), code="permission")
    reason = emergency_reason_clean(reason)
    now = now or timezone.now()
    with transaction.atomic():
        row = EmergencyAccess.objects.create(user=user, patient=patient, reason=reason, at=now, source=source[:255])
        audit_record(
            action="portal.emergency_access",
            user=user,
            patient=patient,
            source=source,
            detail={
                "emergency_access": row.pk,
                "reason": reason,
                "until": emergency_access_until(row).isoformat(),
            },
        )
    return row
