"""Which health authority's studies a member of staff may open.

Staff with no profile, or a profile of no authority, are the region's and
open every study; a radiologist of an authority opens its facilities'
studies only, unless the profile's ``cross_authority`` or the setting
``PACS_REPORT_CROSS_AUTHORITY`` allows all. The radiologist's pages, the
report services and DICOMweb apply the same rule.

A study the patient concealed (*oscuramento*) is refused to staff on top of
that rule unless they hold a live emergency access; the portal decides which
(see :func:`concealment_guard_register`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from django.conf import settings
from django.core.exceptions import PermissionDenied

from .models import StaffProfile, Study


def staff_profile(user: Any) -> StaffProfile | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return StaffProfile.objects.filter(user_id=user.pk).first()


def authority_restriction(user: Any) -> int | None:
    """The id of the only health authority whose studies ``user`` opens, or None for all."""
    profile = staff_profile(user)
    if (
        profile is None
        or profile.authority_id is None
        or profile.cross_authority
        or bool(settings.PACS_REPORT_CROSS_AUTHORITY)
    ):
        return None
    return profile.authority_id


# --- Oscuramento -------------------------------------------------------------------
#
# The citizen's right to hide a study from health professionals lives in the
# portal app, which the archive may not import (DESIGN.md: dependencies point
# down). The portal registers a guard at start-up (portal.apps.ready); the
# archive's pages, report services and DICOMweb ask it through the helpers
# below. With no guard registered (an archive without the portal) nothing is
# concealed.


class ConcealmentGuard(Protocol):
    def concealed_ids(self, study_ids: Iterable[int]) -> set[int]:
        """The ids among ``study_ids`` of the studies concealed now."""
        ...

    def may_open(self, user: Any, study: Study) -> bool:
        """True when ``study`` is not concealed, or ``user`` holds a live emergency access to it."""
        ...

    # Optional: ``emergency_url(study) -> str``, the page where staff ask for an
    # emergency access (see :func:`concealment_emergency_url`).


class StudyConcealed(PermissionDenied):
    """The study is hidden by the patient (*oscuramento*): open only through an emergency access."""

    def __init__(self, message: str = "", *, study: Study | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.study = study


_guard: ConcealmentGuard | None = None


def concealment_guard_register(guard: ConcealmentGuard | None) -> None:
    """Install the guard that decides concealment (None removes it)."""
    global _guard
    _guard = guard


def studies_concealed(study_ids: Iterable[int]) -> set[int]:
    """The ids among ``study_ids`` of the studies concealed now (empty with no guard)."""
    if _guard is None:
        return set()
    ids = [int(i) for i in study_ids]
    return _guard.concealed_ids(ids) if ids else set()


def study_concealed_for(user: Any, study: Study) -> bool:
    """Whether ``study`` is concealed and ``user`` holds no live emergency access to it."""
    return _guard is not None and not _guard.may_open(user, study)


def concealment_emergency_url(study: Study) -> str:
    """The page where staff open ``study`` with an emergency access; "" when the guard offers none."""
    emergency_url = getattr(_guard, "emergency_url", None)
    return str(emergency_url(study)) if emergency_url is not None else ""
