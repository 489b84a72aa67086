"""Migrations that route around damage (issue 22, finding 4).

A copy that cannot be made because its sources are damaged is recorded
(attempts, last error, next try), retried with exponential backoff and
skipped in the queue meanwhile, so the rest moves on; ``lifecycle run
--until-done`` ends when nothing that can move is left and says what is
stuck and why; the admin shows stuck copies; the fixity audit keeps one alert
per damaged copy, updated rather than repeated.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from archive.models import Copy, CopyFailure, Instance, StorageAlert
from archive.sample_data import PatientInfo, write_study
from archive.storage import lifecycle
from tests.conftest import Region
from tests.dicomweb_helpers import make_user

from .lifecycle_helpers import copy_file, ingest_files, read_sha256, tiers_of

pytestmark = pytest.mark.django_db

REGION_TIER = "longterm:region"
AUTHORITY_TIER = "longterm:ASUGI"


@pytest.fixture
def archived(region: Region, tmp_path: Path, patient: PatientInfo) -> list[Instance]:
    """35 instances old enough to have left the facility tier: one copy each, in the regional long-term tier."""
    files = write_study(tmp_path / "old", patient=patient, series=1, instances_per_series=35)
    instances = ingest_files(files, region.facility, age_days=400)
    result = lifecycle.lifecycle_run()
    assert (result.migrated, result.evicted, result.failed) == (35, 35, 0)
    return instances


def _damage(copy: Copy) -> None:
    copy_file(copy).write_bytes(b"damaged beyond repair")


def test_a_scope_migration_moves_every_healthy_copy_past_damaged_ones_in_one_run(  # type: ignore[no-untyped-def]
    archived: list[Instance], settings
) -> None:
    head = list(Copy.objects.filter(tier=REGION_TIER).select_related("instance").order_by("pk")[:5])
    for copy in head:
        _damage(copy)  # the only copy: nothing to repair it from
    damaged = {c.instance_id for c in head}
    settings.PACS_LONG_TERM_SCOPE = "authority"

    out = io.StringIO()
    call_command("lifecycle", "run", "--until-done", "--limit", "10", stdout=out)

    healthy = [i for i in archived if i.pk not in damaged]
    for instance in healthy:
        assert tiers_of(instance, verified=False) == {AUTHORITY_TIER}
        assert read_sha256(instance) == instance.sha256
    for instance in (c.instance for c in head):
        assert tiers_of(instance, verified=False) == {REGION_TIER}  # never released: no good copy elsewhere
    text = out.getvalue()
    assert "stuck: 5" in text
    for copy in head:
        line = next(line for line in text.splitlines() if copy.instance.sop_instance_uid in line)
        assert f"-> {AUTHORITY_TIER} (scope, sources damaged): 1 attempts" in line
        assert "damaged (SHA-256 differs)" in line
    failures = CopyFailure.objects.all()
    assert {f.instance_id for f in failures} == damaged
    assert all(f.attempts == 1 and f.damaged and f.next_try_at > timezone.now() for f in failures)

    # The status says so too, and another run leaves them waiting.
    status = io.StringIO()
    call_command("lifecycle", "status", stdout=status)
    assert "stuck copies: 5" in status.getvalue()
    again = lifecycle.lifecycle_run()
    assert (again.scope_copied, again.failed) == (0, 0)

    # One alert per damaged copy, updated by the next audit rather than repeated.
    lifecycle.fixity_audit(cycle_days=1, sample=0)
    lifecycle.fixity_audit(cycle_days=1, sample=0)
    alerts = list(StorageAlert.objects.all())
    assert len(alerts) == 5
    assert {(a.tier, a.path) for a in alerts} == {(c.tier, c.path) for c in head}
    assert all(a.kind == StorageAlert.Kind.UNREPAIRABLE and a.count == 2 and a.last_seen_at for a in alerts)


def test_a_copy_to_the_long_term_tier_that_fails_waits_with_backoff(  # type: ignore[no-untyped-def]
    region: Region, tmp_path: Path, patient: PatientInfo, settings
) -> None:
    settings.PACS_LIFECYCLE_RETRY_SECONDS = 60
    settings.PACS_LIFECYCLE_RETRY_MAX_SECONDS = 150
    files = write_study(tmp_path / "new", patient=patient, series=1, instances_per_series=12)
    instances = ingest_files(files, region.facility, age_days=10)
    broken = instances[:3]
    for instance in broken:
        _damage(Copy.objects.get(instance=instance))

    result = lifecycle.migrate_batch()

    assert (result.migrated, result.failed) == (9, 3)
    assert lifecycle.instances_to_migrate() == []  # the damaged ones wait for their next try
    first = {f.instance_id: f for f in CopyFailure.objects.all()}
    assert set(first) == {i.pk for i in broken}
    for f in first.values():
        assert f.step == CopyFailure.Step.MIGRATE and f.tier == REGION_TIER and f.attempts == 1
        assert f.next_try_at - f.last_failed_at == dt.timedelta(seconds=60)

    # Due again: tried again, and the wait doubles (up to the maximum).
    CopyFailure.objects.update(next_try_at=timezone.now() - dt.timedelta(seconds=1))
    assert len(lifecycle.instances_to_migrate()) == 3
    assert lifecycle.migrate_batch().failed == 3
    for f in CopyFailure.objects.all():
        assert f.attempts == 2 and f.next_try_at - f.last_failed_at == dt.timedelta(seconds=120)
    CopyFailure.objects.update(next_try_at=timezone.now() - dt.timedelta(seconds=1))
    lifecycle.migrate_batch()
    assert all(f.next_try_at - f.last_failed_at == dt.timedelta(seconds=150) for f in CopyFailure.objects.all())

    # Repaired by hand (the bytes back in place): the next try copies it and the record goes.
    for instance, path in zip(broken, files[:3], strict=True):
        copy_file(Copy.objects.get(instance=instance)).write_bytes(path.read_bytes())
    CopyFailure.objects.update(next_try_at=timezone.now() - dt.timedelta(seconds=1))
    assert lifecycle.migrate_batch().migrated == 3
    assert not CopyFailure.objects.exists()


def test_the_dashboard_and_the_admin_show_stuck_copies(  # type: ignore[no-untyped-def]
    archived: list[Instance], settings
) -> None:
    head = list(Copy.objects.filter(tier=REGION_TIER).select_related("instance").order_by("pk")[:2])
    for copy in head:
        _damage(copy)
    settings.PACS_LONG_TERM_SCOPE = "authority"
    lifecycle.scope_migration_step(limit=5)
    client = Client()
    client.force_login(
        make_user("archivista", "archive.view_study", "archive.view_copy", "archive.view_copyfailure").user
    )

    page = client.get("/admin/archive/storage-dashboard/")

    assert page.status_code == 200 and page.context["stuck_count"] == 2
    html = page.content.decode()
    assert 'id="storage-stuck"' in html and html.count('class="stuck-row"') == 2
    for copy in head:
        assert copy.instance.sop_instance_uid in html
    listing = client.get("/admin/archive/copyfailure/")
    assert listing.status_code == 200 and head[0].instance.sop_instance_uid in listing.content.decode()
