"""The storage lifecycle on filesystem tiers: age-based copy to the long-term
tier with read-back verification, eviction only behind a verified copy, reads
after eviction, recall, leftovers adopted, fixity repairs, the scope switch."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from archive.models import Copy, FixityRun, LifecyclePolicy, ScopeMigration, StorageAlert
from archive.storage import lifecycle
from archive.storage import tiers as storage
from kernel import tasknames
from tests.conftest import Region, wait_until

from .lifecycle_helpers import copy_file, ingest_files, read_sha256, tiers_of

pytestmark = pytest.mark.django_db

REGION_TIER = "longterm:region"


@pytest.fixture
def old_study(region: Region, ct_study: list[Path]):  # type: ignore[no-untyped-def]
    return ingest_files(ct_study, region.facility, age_days=10)


def test_only_instances_past_their_age_are_migrated(region: Region, ct_study: list[Path], settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_MIGRATE_AFTER_DAYS = 7
    fresh = ingest_files(ct_study[:3], region.facility)
    old = ingest_files(ct_study[3:], region.facility, age_days=8)
    result = lifecycle.migrate_batch()
    assert result.migrated == 3 and result.failed == 0
    for instance in old:
        assert tiers_of(instance) == {"facility:TS-CAT", REGION_TIER}
        copy = Copy.objects.get(instance=instance, tier=REGION_TIER)
        assert copy.sha256 == instance.sha256 and copy.size == instance.size
        assert storage.copy_sha256(copy.tier, copy.path) == instance.sha256
    for instance in fresh:
        assert tiers_of(instance) == {"facility:TS-CAT"}
    # Idempotent: nothing left to do.
    assert lifecycle.instances_to_migrate() == []
    assert lifecycle.migrate_batch().migrated == 0


def test_policy_per_facility_and_modality(region: Region, ct_study: list[Path], settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_MIGRATE_AFTER_DAYS = 7
    ingest_files(ct_study, region.facility, age_days=8)
    LifecyclePolicy.objects.create(facility=region.facility, modality="CT", migrate_after_days=30, evict_after_days=60)
    assert lifecycle.instances_to_migrate() == []
    LifecyclePolicy.objects.create(facility=None, modality="CT", migrate_after_days=1, evict_after_days=60)
    assert lifecycle.instances_to_migrate() == []  # the facility's own CT policy is more specific
    LifecyclePolicy.objects.filter(facility=region.facility).delete()
    assert len(lifecycle.instances_to_migrate()) == 6


def test_eviction_waits_for_a_verified_long_term_copy(old_study, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_EVICT_AFTER_DAYS = 5
    settings.PACS_MIGRATE_AFTER_DAYS = 30  # not migrated yet
    assert lifecycle.copies_to_evict() == []
    assert lifecycle.evict_batch().evicted == 0
    assert all(tiers_of(i) == {"facility:TS-CAT"} for i in old_study)

    settings.PACS_MIGRATE_AFTER_DAYS = 7
    facility_files = [copy_file(Copy.objects.get(instance=i, tier="facility:TS-CAT")) for i in old_study]
    result = lifecycle.lifecycle_run()
    assert (result.migrated, result.evicted, result.failed) == (6, 6, 0)
    for instance, path in zip(old_study, facility_files, strict=True):
        assert tiers_of(instance, verified=False) == {REGION_TIER}
        assert not path.exists()
        # A read after eviction comes from the long-term tier, byte for byte.
        assert read_sha256(instance) == instance.sha256


def test_a_missing_or_unverified_long_term_copy_blocks_eviction(old_study, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_EVICT_AFTER_DAYS = 5
    lifecycle.migrate_batch()
    first, second = old_study[0], old_study[1]
    copy_file(Copy.objects.get(instance=first, tier=REGION_TIER)).unlink()
    Copy.objects.filter(instance=second, tier=REGION_TIER).update(verified_at=None)
    result = lifecycle.evict_batch()
    assert result.evicted == 4
    assert "facility:TS-CAT" in tiers_of(first) and "facility:TS-CAT" in tiers_of(second)
    assert read_sha256(first) == first.sha256 and read_sha256(second) == second.sha256


def test_the_last_verified_copy_is_never_released(old_study) -> None:  # type: ignore[no-untyped-def]
    instance = old_study[0]
    only = Copy.objects.get(instance=instance)
    assert lifecycle.copy_release(copy_pk=only.pk) is False
    assert lifecycle.copy_release(copy_pk=only.pk, keeper_kind=storage.LONGTERM) is False
    assert copy_file(only).exists()
    # Two copies, each in the other's way: one goes, the other stays.
    lifecycle.instance_migrate(instance_pk=instance.pk)
    lt = Copy.objects.get(instance=instance, tier=REGION_TIER)
    assert lifecycle.copy_release(copy_pk=only.pk) is True
    assert lifecycle.copy_release(copy_pk=lt.pk) is False
    assert tiers_of(instance) == {REGION_TIER}


def test_recall_brings_an_evicted_instance_back_and_keeps_it(old_study, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_EVICT_AFTER_DAYS = 5
    lifecycle.lifecycle_run()
    instance = old_study[0]
    assert tiers_of(instance) == {REGION_TIER}
    assert lifecycle.instance_recall(instance_pk=instance.pk) is True
    copy = Copy.objects.get(instance=instance, tier="facility:TS-CAT")
    assert copy.verified_at is not None and copy.keep_until > timezone.now() + dt.timedelta(days=29)
    assert storage.copy_sha256(copy.tier, copy.path) == instance.sha256
    assert lifecycle.instance_recall(instance_pk=instance.pk) is False  # already there
    # Kept: the next run does not evict it again before keep_until.
    assert lifecycle.lifecycle_run().evicted == 0
    assert "facility:TS-CAT" in tiers_of(instance)
    Copy.objects.filter(pk=copy.pk).update(keep_until=timezone.now() - dt.timedelta(seconds=1))
    assert lifecycle.lifecycle_run().evicted == 1


def test_a_copy_written_by_a_run_that_died_is_adopted(old_study) -> None:  # type: ignore[no-untyped-def]
    instance = old_study[0]
    facility_copy = Copy.objects.get(instance=instance)
    relpath = facility_copy.path
    with open(copy_file(facility_copy), "rb") as fh:
        assert storage.copy_store(fh, REGION_TIER, relpath, sha256=instance.sha256) is True
    # The worker died before recording the copy: the next run finds the file and records it.
    assert lifecycle.instance_migrate(instance_pk=instance.pk) is True
    assert tiers_of(instance) == {"facility:TS-CAT", REGION_TIER}


def test_a_damaged_leftover_is_replaced_then_verified(old_study) -> None:  # type: ignore[no-untyped-def]
    instance = old_study[0]
    relpath = Copy.objects.get(instance=instance).path
    target = storage.absolute_path(REGION_TIER, relpath)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half a file")  # a crash in the middle of a copy, or a power cut before the sync
    assert lifecycle.instance_migrate(instance_pk=instance.pk) is True
    assert storage.copy_sha256(REGION_TIER, relpath) == instance.sha256
    assert tiers_of(instance) == {"facility:TS-CAT", REGION_TIER}


def test_a_verified_copy_is_never_overwritten(old_study) -> None:  # type: ignore[no-untyped-def]
    instance = old_study[0]
    relpath = Copy.objects.get(instance=instance).path
    storage.absolute_path(REGION_TIER, relpath).parent.mkdir(parents=True)
    storage.absolute_path(REGION_TIER, relpath).write_bytes(b"other bytes")
    with open(copy_file(Copy.objects.get(instance=instance)), "rb") as fh, pytest.raises(storage.CopyMismatch):
        storage.copy_store(fh, REGION_TIER, relpath, sha256=instance.sha256)
    assert storage.absolute_path(REGION_TIER, relpath).read_bytes() == b"other bytes"


def test_fixity_finds_and_repairs_a_damaged_copy(old_study) -> None:  # type: ignore[no-untyped-def]
    lifecycle.migrate_batch()
    damaged = Copy.objects.get(instance=old_study[0], tier=REGION_TIER)
    path = copy_file(damaged)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    missing = Copy.objects.get(instance=old_study[1], tier="facility:TS-CAT")
    copy_file(missing).unlink()

    run = lifecycle.fixity_audit(cycle_days=1, sample=0)
    run.refresh_from_db()
    assert (run.checked, run.ok, run.damaged, run.repaired) == (12, 10, 2, 2)
    assert storage.copy_sha256(damaged.tier, damaged.path) == old_study[0].sha256
    assert copy_file(missing).exists()
    alerts = {a.kind: a for a in StorageAlert.objects.all()}
    assert set(alerts) == {StorageAlert.Kind.DAMAGED, StorageAlert.Kind.MISSING}
    assert all(a.repaired and a.fixity_run_id == run.pk for a in alerts.values())
    assert Copy.objects.filter(verified_at__isnull=True).count() == 0


def test_fixity_with_no_good_copy_left_alerts_and_stops_serving_it(old_study) -> None:  # type: ignore[no-untyped-def]
    instance = old_study[0]
    only = Copy.objects.get(instance=instance)
    copy_file(only).write_bytes(b"garbage")
    assert lifecycle.copy_check(copy_pk=only.pk) == "damaged"
    alert = StorageAlert.objects.get()
    assert alert.kind == StorageAlert.Kind.UNREPAIRABLE and not alert.repaired
    only.refresh_from_db()
    assert only.verified_at is None  # never served as good, never deleted
    assert copy_file(only).exists()


def test_fixity_cycle_covers_every_copy(old_study) -> None:  # type: ignore[no-untyped-def]
    seen: set[int] = set()
    for _ in range(3):
        picked = lifecycle.copies_for_fixity(cycle_days=3, sample=0)
        assert len(picked) == 2
        for pk in picked:
            lifecycle.copy_check(copy_pk=pk)
        seen |= set(picked)
    assert seen == set(Copy.objects.values_list("pk", flat=True))
    assert FixityRun.objects.count() == 0


def test_scope_switch_copies_then_releases_with_progress(old_study, settings, region: Region) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_EVICT_AFTER_DAYS = 5
    lifecycle.lifecycle_run()
    assert lifecycle.scope_migration_step() is None

    settings.PACS_LONG_TERM_SCOPE = "authority"
    migration = lifecycle.scope_migration_step(limit=2)
    assert migration is not None and migration.target_scope == "authority"
    assert (migration.total, migration.copied, migration.released, migration.finished_at) == (6, 2, 2, None)
    assert migration.percent == 33
    out = io.StringIO()
    call_command("lifecycle", "status", stdout=out)
    assert "scope migration to authority: running, 2/6 (33%)" in out.getvalue()
    assert "long-term scope: authority" in out.getvalue()
    # Half-way, every instance is readable from one tier or the other.
    for instance in old_study:
        assert read_sha256(instance) == instance.sha256
        assert len(tiers_of(instance)) == 1
    while migration.finished_at is None:
        migration = lifecycle.scope_migration_step(limit=2)
    assert (migration.total, migration.copied, migration.released) == (6, 6, 6)
    for instance in old_study:
        assert tiers_of(instance, verified=False) == {"longterm:ASUGI"}
        assert read_sha256(instance) == instance.sha256
    assert not storage.absolute_path(REGION_TIER, "studies").exists() or not any(
        p.is_file() for p in storage.absolute_path(REGION_TIER, "studies").rglob("*")
    )
    # New instances now go straight to the authority's archive.
    assert lifecycle.longterm_tier_for(region.other_facility) == "longterm:ASUGI"
    assert ScopeMigration.objects.count() == 1


def test_a_read_from_the_long_term_tier_queues_a_recall_of_the_study(old_study, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from django.core.cache import cache

    from archive import tasks
    from archive.storage import retrieve

    settings.PACS_EVICT_AFTER_DAYS = 5
    lifecycle.lifecycle_run()
    cache.clear()
    sent: list[tuple[str, list]] = []
    monkeypatch.setattr(retrieve.current_app, "send_task", lambda name, args: sent.append((name, args)))
    for instance in old_study:
        assert read_sha256(instance) == instance.sha256
    study_pk = old_study[0].series.study_id
    series = {i.series_id for i in old_study}
    assert [name for name, _ in sent] == [tasknames.STUDIES_RECALL] * len(series)
    assert all(args[0] == [study_pk] and args[1] == old_study[0].facility_id for _, args in sent)
    # The task brings the whole study back, kept until the date it was given.
    result = tasks.studies_recall(*sent[0][1])
    assert result["recalled"] == 6
    assert all("facility:TS-CAT" in tiers_of(i) for i in old_study)
    sent.clear()
    read_sha256(old_study[0])
    assert sent == []  # read from the facility tier again


def test_a_copy_released_while_it_is_being_sent_is_sent_whole(region: Region, ct_study: list[Path]) -> None:
    """C-GET and C-MOVE send a copy by its file name; a scope migration released (unlinked)
    one between the choice and the send, and the sub-operation failed (0xB000 in the
    scope-switch test under load)."""
    from archive.models import Instance
    from archive.storage import retrieve

    ingest_files(ct_study[:1], region.facility)
    instance = Instance.objects.get()
    copy = Copy.objects.get(instance=instance)
    on_disk = storage.absolute_path(copy.tier, copy.path)
    expected = on_disk.read_bytes()
    with retrieve.instance_file(instance, held=True) as path:
        on_disk.unlink()  # the lifecycle releases the copy meanwhile
        assert path.read_bytes() == expected
        assert path.stat().st_size == len(expected)


def test_one_lifecycle_pass_at_a_time_and_a_dead_holder_frees_it(old_study, settings) -> None:  # type: ignore[no-untyped-def]
    """Two passes at once (beat's period shorter than a pass, as the region in a box showed) each
    copied the same instances to the long-term tier, and the later one stopped its eviction with a
    false "could not be released" error: a pass now runs only while no other holds the claim."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the claim is a PostgreSQL advisory lock (SQLite: one machine, no claim)")
    import psycopg

    from tests.conftest import database_url

    settings.PACS_EVICT_AFTER_DAYS = 5
    other = psycopg.connect(database_url(), autocommit=True)  # another worker's pass, running
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [lifecycle._RUN_LOCK_KEY])
        result = lifecycle.lifecycle_run()
        assert result.skipped and (result.migrated, result.evicted, result.failed) == (0, 0, 0)
        assert all(tiers_of(i, verified=False) == {"facility:TS-CAT"} for i in old_study)
        out = io.StringIO()
        call_command("lifecycle", "run", "--until-done", stdout=out)
        assert "another lifecycle pass is running" in out.getvalue()
    finally:
        other.close()  # the holder's connection ends, as when its worker is killed: the claim goes with it
    # The server ends that backend, and frees its lock, a moment after the client has closed (under
    # load, after this test's next statement once): wait until no session of this database holds it.
    with connection.cursor() as cursor:

        def released() -> bool:
            cursor.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE l.locktype = 'advisory' AND d.datname = current_database() AND l.objid = %s AND l.granted",
                [lifecycle._RUN_LOCK_KEY],
            )
            return cursor.fetchone()[0] == 0

        wait_until(released, what="the closed connection's lock released", timeout=10)
    result = lifecycle.lifecycle_run()
    assert not result.skipped and (result.migrated, result.evicted, result.failed) == (6, 6, 0)
    # Released at the end of the pass: the next one runs.
    assert not lifecycle.lifecycle_run().skipped
