"""The lifecycle's work to do, kept in indexes (docs/CAPACITY.md): ``Instance.migrated``
is true exactly while the instance has a verified long-term copy, in every path that
records, releases, finds damaged or repairs one; ``Copy.instance_received_at`` is its
instance's received time; migration 0026 fills both for an archive already there (on
PostgreSQL building its indexes and constraint while the archive goes on writing); and
on PostgreSQL each selection reads its partial index, the due rows only."""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, migrations, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder
from django.test.utils import CaptureQueriesContext

from archive.ingest import instance_ingest
from archive.models import Copy, Instance
from archive.storage import lifecycle
from tests.conftest import Region
from tests.plan_helpers import plan_buffers, plan_nodes, plan_of

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
        migrate_to_the_end()
    assert migrated(old_study) == expected
    copies = list(Copy.objects.all())
    assert {c.tier for c in copies} == {"facility:TS-CAT", REGION_TIER}
    for copy in copies:
        facility = copy.tier.startswith("facility:")
        assert copy.instance_received_at == (received[copy.instance_id] if facility else None)
    assert_invariant()
    if connection.vendor == "postgresql":
        assert_work_indexes_in_catalogue(old_study[0])


def migrate_to_the_end() -> None:
    """Every migration applied, as the test found the database (the graph read again from disk)."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


MIGRATION = "0026_lifecycle_work_indexes"
# pg_get_indexdef of the two indexes as Django's plain AddIndex built them (before 0026 built them online).
WORK_INDEXES = {
    "instance_to_migrate": "CREATE INDEX instance_to_migrate ON public.archive_instance USING btree"
    " (received_at, id) WHERE (NOT migrated)",
    "copy_facility_by_received": "CREATE INDEX copy_facility_by_received ON public.archive_copy USING btree"
    " (instance_received_at, id) WHERE ((tier)::text ~~ 'facility:%'::text)",
}


def assert_work_indexes_in_catalogue(instance: Instance) -> None:
    """PostgreSQL: both partial indexes valid and defined as before, the constraint validated and enforced."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexrelid::regclass::text, indisvalid, pg_get_indexdef(indexrelid) FROM pg_index"
            " WHERE indexrelid::regclass::text IN (%s, %s)",
            list(WORK_INDEXES),
        )
        assert {name: (valid, sql) for name, valid, sql in cursor.fetchall()} == {
            name: (True, sql) for name, sql in WORK_INDEXES.items()
        }
        cursor.execute(
            "SELECT convalidated, pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
            ["copy_facility_received_at"],
        )
        assert cursor.fetchall() == [
            (True, "CHECK (((NOT ((tier)::text ~~ 'facility:%'::text)) OR (instance_received_at IS NOT NULL)))")
        ]
    with pytest.raises(IntegrityError), transaction.atomic():
        Copy.objects.create(instance=instance, tier="facility:GO-SG", path="y.dcm", sha256=instance.sha256, size=1)


def write(cursor: Any, sample: Instance, tag: str, *, copy: bool = True) -> None:
    """What an ingest writes: an instance and its facility copy (raw SQL: the tables are mid-migration)."""
    cursor.execute(
        "INSERT INTO archive_instance (sop_instance_uid, series_id, sop_class_uid, transfer_syntax_uid, size,"
        " sha256, facility_id, calling_ae, received_at) VALUES (%s, %s, %s, %s, 1, %s, %s, '', now())"
        " RETURNING id, received_at",
        [
            f"9.8.{tag}",
            sample.series_id,
            sample.sop_class_uid,
            sample.transfer_syntax_uid,
            "0" * 64,
            sample.facility_id,
        ],
    )
    pk, received_at = cursor.fetchone()
    if copy:
        cursor.execute(
            "INSERT INTO archive_copy (instance_id, tier, path, sha256, size, created_at, instance_received_at)"
            " VALUES (%s, 'facility:TS-CAT', %s, %s, 1, now(), %s)",
            [pk, f"w/{tag}", "0" * 64, received_at],
        )


def apply(operations: Sequence[Any], state: Any, editor: Any) -> None:
    """Operations of a migration that is not atomic, as ``Migration.apply`` runs them (``state`` moves on)."""
    for operation in operations:
        before = state.clone()
        operation.state_forwards("archive", state)
        operation.database_forwards("archive", editor, before, state)


def holders_end(holders: Sequence[Any], thread: threading.Thread) -> None:
    """The open transactions rolled back and closed, the migration's thread waited for, and this
    connection's lock_timeout reset."""
    for holder in holders:
        holder.rollback()
        holder.close()
    if thread.ident is not None:
        thread.join(60)
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's locks")
@pytest.mark.django_db(transaction=True)
def test_the_constraint_and_indexes_are_built_while_the_archive_writes(old_study: list[Instance]) -> None:
    """0026's constraint and partial indexes, built on an archive in use, never hold its writes.

    After the columns and the fill, the rest of 0026 runs in a thread while ingest transactions
    are open: one that wrote both tables (the constraint waits for it), then one that wrote an
    instance (the concurrent build of ``instance_to_migrate`` waits for it). Meanwhile this
    connection writes instances and facility copies with ``lock_timeout = 2s``: none may wait
    that long. A plain ``ADD CONSTRAINT`` or ``CREATE INDEX`` queues for its lock behind the open
    transaction, and every write queues behind it."""
    sample = old_study[0]
    executor = MigrationExecutor(connection)
    executor.migrate([("archive", "0025_dose_register")])
    operations = executor.loader.get_migration("archive", MIGRATION).operations
    split = 1 + next(i for i, op in enumerate(operations) if isinstance(op, migrations.RunPython))  # the fill
    state = executor.loader.project_state(("archive", "0025_dose_register"), at_end=True)
    with connection.schema_editor(atomic=False) as editor:
        apply(operations[:split], state, editor)  # the columns and the fill

    errors: list[BaseException] = []
    pid: list[int] = []

    def build() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pid.append(cursor.fetchone()[0])
            with connection.schema_editor(atomic=False) as editor:
                apply(operations[split:], state, editor)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    def write_for(cursor: Any, seconds: float, phase: str) -> None:
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            write(cursor, sample, f"{phase}{n}")  # OperationalError (lock timeout) if held 2 s
            n += 1
            time.sleep(0.1)

    thread = threading.Thread(target=build)
    holders = [connections.create_connection(DEFAULT_DB_ALIAS) for _ in range(2)]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
            holders[0].set_autocommit(False)
            write(holders[0].cursor(), sample, "h0")
            thread.start()
            write_for(cursor, 3, "a")
            assert thread.is_alive() and not errors  # the constraint waits for the open transaction
            holders[1].set_autocommit(False)
            write(holders[1].cursor(), sample, "h1", copy=False)
            holders[0].commit()
            deadline = time.monotonic() + 30
            while True:
                cursor.execute("SELECT wait_event_type, query FROM pg_stat_activity WHERE pid = %s", pid)
                waiting, query = cursor.fetchone()
                if waiting == "Lock" and query.startswith("CREATE INDEX CONCURRENTLY"):
                    break
                assert thread.is_alive() and time.monotonic() < deadline, (errors, waiting, query)
                time.sleep(0.05)
            write_for(cursor, 1, "b")  # while the build waits for the instance's transaction
            assert thread.is_alive()
            holders[1].commit()
            thread.join(60)
            assert not thread.is_alive() and not errors, errors
    finally:
        holders_end(holders, thread)
        if not errors:
            MigrationRecorder(connection).record_applied("archive", MIGRATION)
        migrate_to_the_end()
    assert_work_indexes_in_catalogue(sample)


def _columns(table: str) -> set[str]:
    with connection.cursor() as cursor:
        return {c.name for c in connection.introspection.get_table_description(cursor, table)}


@pytest.mark.django_db(transaction=True)
def test_a_crash_after_the_columns_is_resumed_by_migrating_again(old_study: list[Instance]) -> None:
    """0026 is not atomic: its columns are made and committed, then the process dies before the
    migration is recorded. Migrating again finds them there and goes on (no "column exists")."""
    executor = MigrationExecutor(connection)
    executor.migrate([("archive", "0025_dose_register")])
    try:
        assert "migrated" not in _columns("archive_instance")
        operations = executor.loader.get_migration("archive", MIGRATION).operations
        state = executor.loader.project_state(("archive", "0025_dose_register"), at_end=True)
        with connection.schema_editor(atomic=False) as editor:
            apply(operations[:1], state, editor)  # the columns; then the crash
        assert "migrated" in _columns("archive_instance") and "instance_received_at" in _columns("archive_copy")
        assert not MigrationRecorder(connection).migration_qs.filter(app="archive", name=MIGRATION).exists()
    finally:
        migrate_to_the_end()
    assert MigrationRecorder(connection).migration_qs.filter(app="archive", name=MIGRATION).exists()
    assert migrated(old_study) == [False] * len(old_study)
    assert_invariant()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's locks")
@pytest.mark.django_db(transaction=True)
def test_the_columns_never_queue_the_archive_s_writes(old_study: list[Instance]) -> None:
    """0026's columns need ACCESS EXCLUSIVE on archive_instance and archive_copy. With an ingest's
    transaction open on archive_instance, the ALTER TABLE waits for it; every write would queue
    behind that wait. It is asked with a lock_timeout of a second and asked again: meanwhile this
    connection writes instances with ``lock_timeout = 2s``, and none may wait that long. The
    columns are made once the open transaction ends, all in one transaction."""
    sample = old_study[0]
    executor = MigrationExecutor(connection)
    executor.migrate([("archive", "0025_dose_register")])
    operations = executor.loader.get_migration("archive", MIGRATION).operations
    state = executor.loader.project_state(("archive", "0025_dose_register"), at_end=True)
    errors: list[BaseException] = []

    def columns() -> None:
        try:
            with connection.schema_editor(atomic=False) as editor:
                apply(operations[:1], state, editor)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=columns)
    holder = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
            holder.set_autocommit(False)
            write(holder.cursor(), sample, "h0", copy=False)
            thread.start()
            end, n = time.monotonic() + 3.5, 0
            while time.monotonic() < end:
                write(cursor, sample, f"a{n}", copy=False)  # OperationalError (lock timeout) if queued 2 s
                n += 1
                time.sleep(0.1)
            assert thread.is_alive() and not errors  # still asking, every second
            assert "migrated" not in _columns("archive_instance")
            holder.commit()
            thread.join(30)
            assert not thread.is_alive() and not errors, errors
            assert "migrated" in _columns("archive_instance") and "instance_received_at" in _columns("archive_copy")
    finally:
        holders_end([holder], thread)
        migrate_to_the_end()
    assert_invariant()
    assert_work_indexes_in_catalogue(sample)


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
        plan = plan_of(sql)
        nodes = list(plan_nodes(plan))
        scans = [n for n in nodes if n.get("Index Name") == index]
        assert scans, f"{select.__name__} does not read {index}: {json.dumps(plan)[:2000]}"
        # The range of the due rows: the study's six, never the 20,000 done.
        assert all(n["Actual Rows"] * n.get("Actual Loops", 1) <= 6 for n in scans), scans
        assert not [
            n for n in nodes if n.get("Node Type") == "Seq Scan" and n.get("Relation Name") == "archive_instance"
        ]
        assert plan_buffers(plan) < 200


def test_a_facility_copy_without_its_received_time_is_refused(old_study: list[Instance]) -> None:
    instance = old_study[0]
    with pytest.raises(IntegrityError), transaction.atomic():
        Copy.objects.create(instance=instance, tier="facility:GO-SG", path="x.dcm", sha256=instance.sha256, size=1)
    # A long-term copy (the data migration leaves theirs empty) may go without.
    Copy.objects.create(instance=instance, tier="longterm:ASUGI", path="x.dcm", sha256=instance.sha256, size=1)
