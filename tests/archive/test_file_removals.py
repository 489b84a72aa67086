"""A released copy's file is removed after its row, without orphans and without racing a writer
(``archive.removals``).

A process that dies between the release's commit and the file's removal (the region in a box
found one: a worker host killed with SIGKILL) leaves a noted removal, which the lifecycle's next
pass finishes. A recall, a long-term copy made again, or the same image sent again, put a file
back at the path of a pending removal: the removal is cancelled and the file kept. On PostgreSQL,
a remover and a writer meeting on one path each wait for the other's transaction on its row."""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.utils import timezone

from archive import removals
from archive.ingest import DUPLICATE, instance_ingest
from archive.models import Copy, FileRemoval, Instance
from archive.storage import lifecycle
from archive.storage import tiers as storage
from tests.conftest import Region, wait_until

from .lifecycle_helpers import copy_file, ingest_files, read_sha256

pytestmark = pytest.mark.django_db

REGION_TIER = "longterm:region"
FACILITY_TIER = "facility:TS-CAT"
LATER = dt.timedelta(minutes=2)  # past PACS_FILE_REMOVAL_GRACE_SECONDS


@pytest.fixture
def migrated(region: Region, ct_study: list[Path]) -> list[Instance]:
    """The CT study, each instance with its facility copy and a verified long-term copy."""
    instances = ingest_files(ct_study, region.facility, age_days=10)
    for instance in instances:
        assert lifecycle.instance_migrate(instance_pk=instance.pk)
    return instances


@contextmanager
def cut_short(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Releases whose process dies after the commit, before the files: the removals they noted."""
    noted: list[int] = []
    with monkeypatch.context() as m:
        m.setattr(removals, "removals_finish", noted.extend)
        yield noted


def release_facility_copy(instance: Instance, monkeypatch: pytest.MonkeyPatch) -> tuple[Copy, list[int]]:
    facility = Copy.objects.get(instance=instance, tier=FACILITY_TIER)
    with cut_short(monkeypatch) as noted:
        assert lifecycle.copy_release(copy_pk=facility.pk, keeper_tier=REGION_TIER)
    assert not Copy.objects.filter(pk=facility.pk).exists() and copy_file(facility).exists()
    return facility, noted


def test_a_release_cut_short_is_finished_by_the_next_pass(
    migrated: list[Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = migrated[0]
    facility, noted = release_facility_copy(instance, monkeypatch)
    removal = FileRemoval.objects.get()
    assert noted == [removal.pk]
    assert (removal.tier, removal.path, removal.is_copy, removal.instance_id) == (
        FACILITY_TIER,
        facility.path,
        True,
        instance.pk,
    )
    out = io.StringIO()
    call_command("lifecycle", "status", stdout=out)
    assert "file removals pending: 1" in out.getvalue()
    # A pass at once leaves it to the process that noted it; a pass a minute on finishes it.
    assert lifecycle.lifecycle_run().removed == 0 and copy_file(facility).exists()
    assert lifecycle.lifecycle_run(now=timezone.now() + LATER).removed == 1
    assert not copy_file(facility).exists() and not FileRemoval.objects.exists()
    assert read_sha256(instance) == instance.sha256
    # An uninterrupted release removes its file at once and leaves nothing noted.
    other = Copy.objects.get(instance=migrated[1], tier=FACILITY_TIER)
    assert lifecycle.copy_release(copy_pk=other.pk, keeper_tier=REGION_TIER)
    assert not copy_file(other).exists() and not FileRemoval.objects.exists()


def _recall(instance: Instance) -> None:
    assert lifecycle.instance_recall(instance_pk=instance.pk)


def _migrate_again(instance: Instance) -> None:
    assert lifecycle.copies_make(instance_pks=[instance.pk]) == (1, [])


@pytest.mark.parametrize(
    ("tier", "keeper", "write"),
    [(FACILITY_TIER, REGION_TIER, _recall), (REGION_TIER, FACILITY_TIER, _migrate_again)],
    ids=["recall", "long-term copy made again"],
)
def test_a_copy_written_back_cancels_the_pending_removal(
    migrated: list[Instance],
    monkeypatch: pytest.MonkeyPatch,
    tier: str,
    keeper: str,
    write: Callable[[Instance], None],
) -> None:
    instance = migrated[0]
    released = Copy.objects.get(instance=instance, tier=tier)
    with cut_short(monkeypatch) as noted:
        assert lifecycle.copy_release(copy_pk=released.pk, keeper_tier=keeper)
    write(instance)
    assert not FileRemoval.objects.exists()
    # The releasing process, only slow, comes to its removal: nothing to do. Nor for a pass.
    assert removals.removals_finish(noted) == 0
    assert lifecycle.lifecycle_run(now=timezone.now() + LATER).removed == 0
    back = Copy.objects.get(instance=instance, tier=tier)
    assert back.path == released.path and back.verified_at is not None
    assert storage.copy_sha256(tier, back.path) == instance.sha256


def test_the_same_image_sent_again_keeps_the_file_a_removal_waited_for(
    migrated: list[Instance], ct_study: list[Path], region: Region, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = migrated[0]
    facility, noted = release_facility_copy(instance, monkeypatch)
    sent = next(p for p in ct_study if instance.sop_instance_uid in p.read_bytes().decode("latin-1"))
    result = instance_ingest(path=sent, facility=region.facility, owned=False, calling_ae="CT01")
    assert result.outcome == DUPLICATE and not FileRemoval.objects.exists()
    assert removals.removals_finish(noted) == 0
    again = Copy.objects.get(instance=instance, tier=FACILITY_TIER)
    assert again.path == facility.path and storage.copy_sha256(FACILITY_TIER, again.path) == instance.sha256


# --- PostgreSQL: a remover and a writer meeting on one path ------------------------------


def _backend_waits_for_a_lock(pid: int) -> bool:
    with connections.create_connection(DEFAULT_DB_ALIAS).cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
        cursor.connection.close()
    return row is not None and row[0] == "Lock"


class _InThread:
    """``work`` on its own connection in a thread: its backend's pid, its result or error."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.pid: int | None = None
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    self.pid = cursor.fetchone()[0]
                self.result = work()
            except BaseException as error:
                self.error = error
            finally:
                connection.close()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def waiting(self) -> bool:
        return self.pid is not None and self.thread.is_alive() and _backend_waits_for_a_lock(self.pid)

    def join(self) -> Any:
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


@contextmanager
def deleted_in_an_open_transaction(**match: Any) -> Iterator[None]:
    """Another process's transaction that deleted the removals matching ``match`` and has not
    committed yet: a remover's :func:`removals.removal_finish` (by ``id``), or a writer's
    :func:`removals.removals_cancel` (by ``tier`` and ``path``). Leaving commits it."""
    holder = connections.create_connection(DEFAULT_DB_ALIAS)
    holder.set_autocommit(False)
    try:
        where = " AND ".join(f"{column} = %s" for column in match)
        holder.cursor().execute(f"DELETE FROM {FileRemoval._meta.db_table} WHERE {where}", list(match.values()))
        yield
        holder.commit()
    finally:
        holder.close()


def on_postgresql(test: Callable[..., None]) -> Callable[..., None]:
    """A test of two connections meeting on a row: PostgreSQL's row locks, committed data."""
    test = pytest.mark.django_db(transaction=True)(test)
    return pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's row locks")(test)


@on_postgresql
def test_a_recall_waits_for_a_removal_in_progress_then_writes_the_file_again(
    migrated: list[Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = migrated[0]
    facility, _noted = release_facility_copy(instance, monkeypatch)
    with deleted_in_an_open_transaction(id=FileRemoval.objects.get().pk):
        copy_file(facility).unlink()  # what the remover does inside its transaction
        recall = _InThread(lambda: lifecycle.instance_recall(instance_pk=instance.pk))
        wait_until(recall.waiting, timeout=30, interval=0.05, what="the recall to wait for the remover")
        time.sleep(0.3)
        assert recall.thread.is_alive()  # still waiting: it writes nothing before the remover is done
    assert recall.join() is True
    back = Copy.objects.get(instance=instance, tier=FACILITY_TIER)
    assert back.verified_at is not None and storage.copy_sha256(FACILITY_TIER, back.path) == instance.sha256


@on_postgresql
def test_an_image_sent_again_during_the_removal_of_the_file_it_found_is_not_recorded_there(
    migrated: list[Instance], ct_study: list[Path], region: Region, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest found the released copy's file in place (same bytes, same name) and stored
    nothing; the remover, already in its transaction, removes it. The ingest waits for the
    remover, sees the file gone and records no facility copy: the instance stays whole in its
    long-term copy, and the next sending stores it again."""
    instance = migrated[0]
    facility, _noted = release_facility_copy(instance, monkeypatch)
    sent = next(p for p in ct_study if instance.sop_instance_uid in p.read_bytes().decode("latin-1"))

    def send() -> Any:
        return instance_ingest(path=sent, facility=region.facility, owned=False, calling_ae="CT01")

    with deleted_in_an_open_transaction(id=FileRemoval.objects.get().pk):
        ingest = _InThread(send)
        wait_until(ingest.waiting, timeout=30, interval=0.05, what="the ingest to wait for the remover")
        copy_file(facility).unlink()  # the remover's removal, after the ingest found the file
    assert ingest.join().outcome == DUPLICATE
    assert not Copy.objects.filter(instance=instance, tier=FACILITY_TIER).exists()
    assert read_sha256(instance) == instance.sha256
    assert send().outcome == DUPLICATE
    again = Copy.objects.get(instance=instance, tier=FACILITY_TIER)
    assert storage.copy_sha256(FACILITY_TIER, again.path) == instance.sha256


@on_postgresql
def test_a_removal_waits_for_a_writer_that_cancelled_it_and_keeps_the_file(
    migrated: list[Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = migrated[0]
    facility, noted = release_facility_copy(instance, monkeypatch)
    with deleted_in_an_open_transaction(tier=FACILITY_TIER, path=facility.path):
        remover = _InThread(lambda: removals.removals_finish(noted))
        wait_until(remover.waiting, timeout=30, interval=0.05, what="the remover to wait for the writer")
        assert copy_file(facility).exists()
    assert remover.join() == 0
    assert copy_file(facility).exists()
