"""Which health authority's studies a member of staff may open.

Staff with no profile, or a profile of no authority, are the region's and
open every study; a radiologist of an authority opens its facilities'
studies only, unless the profile's ``cross_authority`` or the setting
``PACS_REPORT_CROSS_AUTHORITY`` allows all. The radiologist's pages, the
report services and DICOMweb apply the same rule.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from .models import StaffProfile


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
