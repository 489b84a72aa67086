"""The fixity audit re-reads every AIP's files and verifies each volume's
signature and time stamp; a mismatch raises an alert in the admin."""

from __future__ import annotations

import shutil

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from preservation import fixity, tasks
from preservation.models import FixityAudit, JournalEntry, PackageFile, PreservationAlert

from .conftest import Preserved, tier_root

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _flip(path) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def test_a_clean_audit(preserved: Preserved) -> None:
    assert tasks.fixity_audit() == 0
    audit = FixityAudit.objects.get()
    assert audit.packages_checked == 1 and audit.volumes_checked == 1
    assert audit.files_checked == 17 + 3 and audit.finished_at is not None
    assert not PreservationAlert.objects.exists()
    preserved.package.refresh_from_db()
    assert preserved.package.fixity_checked_at is not None
    entry = JournalEntry.objects.filter(action="fixity.audit").get()
    assert entry.outcome == "success" and entry.detail["files"] == 20
    # Within the cycle, the next night checks its share only (at least one package).
    assert fixity.packages_due(now=audit.finished_at, cycle_days=365) == [preserved.package]


def test_damage_raises_alerts_shown_in_the_admin(preserved: Preserved, settings) -> None:  # type: ignore[no-untyped-def]
    settings.SESSION_COOKIE_SECURE = False
    files = PackageFile.objects.filter(package=preserved.package)
    damaged = files.filter(role=PackageFile.Role.DICOM).first()
    missing = files.filter(role=PackageFile.Role.METADATA).first()
    _flip(tier_root() / damaged.path)
    (tier_root() / missing.path).unlink()
    _flip(tier_root() / preserved.volume.index_path)
    audit = fixity.fixity_audit()
    alerts = {(a.kind, a.path) for a in PreservationAlert.objects.all()}
    assert (PreservationAlert.Kind.DAMAGED, damaged.path) in alerts
    assert (PreservationAlert.Kind.MISSING, missing.path) in alerts
    assert (PreservationAlert.Kind.DAMAGED, preserved.volume.index_path) in alerts
    assert (PreservationAlert.Kind.SIGNATURE, preserved.volume.signature_path) in alerts
    assert (PreservationAlert.Kind.TIMESTAMP, preserved.volume.timestamp_path) in alerts
    assert audit.failures == 5
    assert JournalEntry.objects.get(action="fixity.audit").outcome == "failure"

    officer = preserved.officer
    for codename in ("view_preservationalert", "change_preservationalert"):
        officer.user_permissions.add(Permission.objects.get(codename=codename))
    # An alert naming a package is shown to who may see its study (archive.access, issue 15).
    officer.user_permissions.add(Permission.objects.get(content_type__app_label="archive", codename="view_study"))
    client = Client()
    client.force_login(officer)
    index = client.get("/admin/")
    assert b"5 allarmi della conservazione da vedere" in index.content
    url = "/admin/preservation/preservationalert/"
    assert client.get(url).status_code == 200
    client.post(
        url, {"action": "acknowledge", "_selected_action": list(PreservationAlert.objects.values_list("pk", flat=True))}
    )
    assert not PreservationAlert.objects.filter(acknowledged_at__isnull=True).exists()
    assert b"allarmi della conservazione" not in client.get("/admin/").content
