"""The lifecycle's work to do, kept in indexes (docs/CAPACITY.md): ``Instance.migrated``
is true exactly while the instance has a verified long-term copy, in every path that
records, releases, finds damaged or repairs one; ``Copy.instance_received_at`` is its
instance's received time; migration 0026 fills both for an archive already there; and
on PostgreSQL each selection reads its partial index, the due rows only."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from archive.ingest import instance_ingest
from archive.models import Copy, Instance
from archive.storage import lifecycle
from tests.conftest import Region

from .lifecycle_helpers import copy_file, ingest_files

pytestmark = pytest.mark.django_db

REGION_TIER = "longterm:region"


@pytest.fixture
def old_study(region: Region, ct_study: list[Path]) -> list[Instance]:
    return ingest_files(ct_study, region.facility, age_days=10)


def migrated(instances: list[Instance]) -> list[bool]:
    rows = dict(Instance.all_objects.filter(pk__in=[i.pk for i in instances]).values_list("pk", "migrated"))
    return [rows[i.pk] for i in instances]


def has_verified_longterm(instance: Instance) -> bool:
    return Copy.objects.filter(instance=instance, tier__startswith="longterm:", verified_at__isnull=False).exists()


def assert_invariant() -> None:
    for instance in Instance.all_objects.all():
        assert instance.migrated == has_verified_longterm(instance), instance
    for copy in Copy.objects.select_related("instance"):
        # Every path writes it; the data migration fills it only where the lifecycle reads it.
        facility = copy.tier.startswith("facility:")
        assert copy.instance_received_at == copy.instance.received_at or (
            not facility and copy.instance_received_at is None
        ), copy


def test_ingest_records_the_received_time_on_each_copy_and_nothing_migrated(
    region: Region, ct_study: list[Path]
) -> None:
    instances = ingest_files(ct_study[:2], region.facility)
    # The same object from another facility: a copy of the archived instance, at its time.
    result = instance_ingest(path=ct_study[0], facility=region.other_facility, owned=False, calling_ae="CT01")
    assert result.instance_id == instances[0].pk
    assert Copy.objects.filter(instance=instances[0]).count() == 2
    assert migrated(instances) == [False, False]
    assert_invariant()


def test_migration_sets_it_and_the_instance_leaves_the_queue(old_study: list[Instance], settings: Any) -> None:
    settings.PACS_MIGRATE_AFTER_DAYS = 7
    assert len(lifecycle.instances_to_migrate()) == 6
    assert lifecycle.migrate_batch().migrated == 6
    assert migrated(old_study) == [True] * 6
    assert lifecycle.instances_to_migrate() == []
    # One at a time too (instance_migrate: copy_make, _record).
    first = old_study[0]
    Copy.objects.filter(instance=first, tier=REGION_TIER).delete()
    assert_invariant_after_sync([first])
    assert lifecycle.instances_to_migrate() == [first.pk]
    assert lifecycle.instance_migrate(instance_pk=first.pk) is True
    assert migrated([first]) == [True]
    assert_invariant()


def assert_invariant_after_sync(instances: list[Instance]) -> None:
    # A test deleted a row behind the services' back: put the flag right as they would.
    from django.db import transaction

    with transaction.atomic():
        lifecycle.instances_migrated_sync(instance_pks=[i.pk for i in instances])
    assert_invariant()


def test_a_released_long_term_copy_clears_it(old_study: list[Instance]) -> None:
    instance = old_study[0]
    lifecycle.instance_migrate(instance_pk=instance.pk)
    assert migrated([instance]) == [True]
    longterm = Copy.objects.get(instance=instance, tier=REGION_TIER)
    # The facility copy is the keeper: the instance is no longer migrated, and due again.
    assert lifecycle.copy_release(copy_pk=longterm.pk) is True
    assert migrated([instance]) == [False]
    assert instance.pk in lifecycle.instances_to_migrate()
    assert_invariant()


def test_a_long_term_copy_failing_verification_clears_it_until_repaired(old_study: list[Instance]) -> None:
    first, second = old_study[0], old_study[1]
    lifecycle.migrate_batch()
    # Repairable: damaged, then repaired from the facility copy, in the same check.
    path = copy_file(Copy.objects.get(instance=first, tier=REGION_TIER))
    path.write_bytes(b"not the object")
    assert lifecycle.copy_check(copy_pk=Copy.objects.get(instance=first, tier=REGION_TIER).pk) == "repaired"
    assert migrated([first]) == [True]
    # Not repairable (the facility copy is gone too): unverified, not migrated, due again.
    facility = Copy.objects.get(instance=second, tier="facility:TS-CAT")
    copy_file(facility).unlink()
    Copy.objects.filter(pk=facility.pk).delete()
    copy_file(Copy.objects.get(instance=second, tier=REGION_TIER)).unlink()
    assert lifecycle.copy_check(copy_pk=Copy.objects.get(instance=second, tier=REGION_TIER).pk) == "damaged"
    assert migrated([first, second]) == [True, False]
    assert lifecycle.instances_to_migrate()[:1] == [second.pk]
    assert_invariant()


def test_a_long_term_copy_found_whole_again_sets_it(old_study: list[Instance]) -> None:
    instance = old_study[0]
    lifecycle.instance_migrate(instance_pk=instance.pk)
    longterm = Copy.objects.get(instance=instance, tier=REGION_TIER)
    path = copy_file(longterm)
    whole = path.read_bytes()
    facility = Copy.objects.get(instance=instance, tier="facility:TS-CAT")
    copy_file(facility).unlink()
    Copy.objects.filter(pk=facility.pk).delete()
    path.unlink()
    assert lifecycle.copy_check(copy_pk=longterm.pk) == "damaged"
    assert migrated([instance]) == [False]
    path.write_bytes(whole)  # the file came back (a remounted volume): the next check verifies it
    assert lifecycle.copy_check(copy_pk=longterm.pk) == "ok"
    assert migrated([instance]) == [True]
    assert_invariant()


def test_scope_migration_recall_and_eviction_keep_it(old_study: list[Instance], settings: Any) -> None:
    settings.PACS_EVICT_AFTER_DAYS = 5
    result = lifecycle.lifecycle_run()
    assert (result.migrated, result.evicted) == (6, 6)
    assert migrated(old_study) == [True] * 6
    settings.PACS_LONG_TERM_SCOPE = "authority"
    lifecycle.scope_migration_step()
    assert not Copy.objects.filter(tier=REGION_TIER).exists()
    assert Copy.objects.filter(tier="longterm:ASUGI").count() == 6
    assert migrated(old_study) == [True] * 6
    assert lifecycle.instance_recall(instance_pk=old_study[0].pk) is True
    assert migrated(old_study) == [True] * 6
    assert_invariant()


@pytest.mark.django_db(transaction=True)  # a migration backwards and forwards: SQLite alters tables outside one
def test_the_data_migration_fills_an_archive_already_there(
    old_study: list[Instance], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PACS_EVICT_AFTER_DAYS = 5
    lifecycle.migrate_batch(limit=4)  # 4 migrated, 2 not
    Copy.objects.filter(instance=old_study[0], tier=REGION_TIER).update(verified_at=None)  # damaged: not migrated
    expected = [False, True, True, True, False, False]
    received = {i.pk: i.received_at for i in old_study}
    fill = importlib.import_module("archive.migrations.0026_lifecycle_work_indexes")
    monkeypatch.setattr(fill, "_BATCH", 2)  # several ranges, some empty
    executor = MigrationExecutor(connection)
    executor.migrate([("archive", "0025_dose_register")])
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM archive_instance")
            assert cursor.fetchone()[0] == 6
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert migrated(old_study) == expected
    copies = list(Copy.objects.all())
    assert {c.tier for c in copies} == {"facility:TS-CAT", REGION_TIER}
    for copy in copies:
        facility = copy.tier.startswith("facility:")
        assert copy.instance_received_at == (received[copy.instance_id] if facility else None)
    assert_invariant()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plans are PostgreSQL's")
def test_each_selection_reads_its_partial_index_only_over_the_due_rows(
    old_study: list[Instance], settings: Any
) -> None:
    """An archive as the lifecycle leaves it: 20,000 instances done (a verified long-term copy,
    no facility copy), the study of ``old_study`` due for both. Each selection's plan reads its
    partial index and returns a handful of rows from it, not a walk of the 20,000."""
    settings.PACS_EVICT_AFTER_DAYS = 5
    done = 20_000
    sample = old_study[0]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO archive_instance (sop_instance_uid, series_id, sop_class_uid, transfer_syntax_uid, size,"
            " sha256, facility_id, calling_ae, received_at, migrated) "
            "SELECT '9.9.' || g, %s, %s, %s, 1, %s, %s, '', now() - interval '900 days' + g * interval '1 minute',"
            " TRUE FROM generate_series(1, %s) AS g",
            [sample.series_id, sample.sop_class_uid, sample.transfer_syntax_uid, "0" * 64, sample.facility_id, done],
        )
        cursor.execute(
            "INSERT INTO archive_copy (instance_id, tier, path, sha256, size, created_at, verified_at,"
            " instance_received_at) "
            "SELECT id, %s, 'lt/' || id, sha256, 1, received_at, received_at, received_at FROM archive_instance"
            " WHERE sop_instance_uid LIKE '9.9.%%'",
            [REGION_TIER],
        )
        cursor.execute("ANALYZE archive_instance")
        cursor.execute("ANALYZE archive_copy")
    lifecycle.migrate_batch(limit=3)  # three of the study's six migrated (and so evictable)
    for select, index, due in (
        (lifecycle.instances_to_migrate, "instance_to_migrate", 3),
        (lifecycle.copies_to_evict, "copy_facility_by_received", 3),
    ):
        assert len(select()) == due
        with CaptureQueriesContext(connection) as queries:
            select()
        sql = next(q["sql"] for q in queries.captured_queries if "LIMIT" in q["sql"])
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
            raw = cursor.fetchone()[0]
        plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
        nodes = list(_walk(plan))
        scans = [n for n in nodes if n.get("Index Name") == index]
        assert scans, f"{select.__name__} does not read {index}: {json.dumps(plan)[:2000]}"
        # The range of the due rows: the study's six, never the 20,000 done.
        assert all(n["Actual Rows"] * n.get("Actual Loops", 1) <= 6 for n in scans), scans
        assert not [
            n for n in nodes if n.get("Node Type") == "Seq Scan" and n.get("Relation Name") == "archive_instance"
        ]
        assert plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0) < 200


def _walk(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def test_a_facility_copy_without_its_received_time_is_refused(old_study: list[Instance]) -> None:
    from django.db import IntegrityError, transaction

    instance = old_study[0]
    with pytest.raises(IntegrityError), transaction.atomic():
        Copy.objects.create(instance=instance, tier="facility:GO-SG", path="x.dcm", sha256=instance.sha256, size=1)
    # A long-term copy (the data migration leaves theirs empty) may go without.
    Copy.objects.create(instance=instance, tier="longterm:ASUGI", path="x.dcm", sha256=instance.sha256, size=1)
