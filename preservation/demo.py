"""The preservation's part of the demo: the officer's permissions and signing key, the local TSA."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission

from archive.reporting import signing

from . import retention, timestamp

GROUP = "Responsabili della conservazione"
PERMISSIONS = [
    *(
        f"view_{m}"
        for m in ("package", "packagefile", "volume", "journalentry", "fixityaudit", "discard", "discarditem")
    ),
    "view_retentionclass",
    "change_retentionclass",
    "view_legalhold",
    "add_legalhold",
    "change_legalhold",
    "change_discard",
    "approve_discard",
    "view_preservationalert",
    "change_preservationalert",
]


def demo_load() -> None:
    group, _created = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(*Permission.objects.filter(content_type__app_label="preservation", codename__in=PERMISSIONS))
    retention.retention_table_ensure()
    officers = list(get_user_model().objects.filter(groups=group).order_by("username"))
    # The officers' certificates carry the preservation-officer role the volumes and DIPs are signed with.
    signing.demo_pki_create(users=[], preservation_officers=officers)
    timestamp.tsa_demo_create()
