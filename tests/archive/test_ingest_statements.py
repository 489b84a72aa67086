"""The statements ingestion sends the database per stored instance (issue 21: round trips per image).

Counted on the database in use (SQLite by default, PostgreSQL with DATABASE_URL), on
the common case: a new image of a series already archived. Outside a test's
transaction (``transactional_db``), as the listener runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom import dcmread

from archive.ingest import STORED, instance_ingest
from archive.models import Copy, Instance, Rejection, RejectionNote, Series, Study
from archive.sample_data import PatientInfo, rejection_note, write_study

# Round trips per image of a known series: PostgreSQL's one statement in autocommit;
# SQLite's transaction (BEGIN IMMEDIATE, seven statements, COMMIT: calls inside this
# process, not round trips, and SQLite has no statement that writes several tables).
EXPECTED = {"postgresql": 1, "sqlite": 9}


class _Transactions:
    """Counts the transactions statements ran in: psycopg's BEGIN is implicit, sent
    before a transaction's first statement and logged by nobody."""

    def __init__(self) -> None:
        self.count = 0
        self._in = False

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        atomic = connection.in_atomic_block
        if atomic and not self._in:
            self.count += 1
        self._in = atomic
        return execute(sql, params, many, context)


def _round_trips(captured: CaptureQueriesContext, transactions: _Transactions) -> int:
    """Statements Django sent (COMMIT included; SQLite's BEGIN too), and PostgreSQL's BEGINs."""
    implicit_begins = transactions.count if connection.vendor == "postgresql" else 0
    return len(captured.captured_queries) + implicit_begins


def _ingest(path: Path, region: Any) -> Any:
    return instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")


@pytest.fixture
def known_series(transactional_db: None, region: Any, tmp_path: Path) -> list[Path]:
    """A study whose first image is archived; the other four are images of a known series."""
    files = write_study(tmp_path, patient=PatientInfo(patient_id="MRN1"), series=1, instances_per_series=5)
    assert _ingest(files[0], region).outcome == STORED
    return files[1:]


def test_an_image_of_a_known_series_costs_its_round_trips(region: Any, known_series: list[Path]) -> None:
    vendor = connection.vendor
    counted = []
    for path in known_series:
        transactions = _Transactions()
        with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(transactions):
            result = _ingest(path, region)
        assert result.outcome == STORED
        counted.append(_round_trips(captured, transactions))
    sent = [q["sql"][:60] for q in captured.captured_queries]
    assert counted == [EXPECTED[vendor]] * len(known_series), (vendor, counted, sent)
    # And what the statement(s) did is what the transaction does.
    study = Study.objects.get()
    series = Series.objects.get()
    assert study.number_of_instances == series.number_of_instances == Instance.objects.count() == 5
    assert Copy.objects.count() == 5
    assert study.post_ingest_pending is True
    assert all(i.copies.get().sha256 == i.sha256 for i in Instance.objects.all())


def test_an_image_a_rejection_note_waits_for_takes_the_transaction(
    region: Any, known_series: list[Path], tmp_path: Path
) -> None:
    """The one statement inserts nothing when a rejection note named the image before it
    came: the transaction withdraws it on arrival (archive.rejection)."""
    first = Instance.objects.get()
    late = known_series[-1]
    note = rejection_note([dcmread(known_series[0], stop_before_pixels=True), dcmread(late)], code="113001")
    note_path = tmp_path / "note.dcm"
    note.save_as(note_path, enforce_file_format=True)
    instance_ingest(path=note_path, facility=region.facility, owned=False, calling_ae="MODALITY")
    assert RejectionNote.objects.get().pending == 2
    transactions = _Transactions()
    with connection.execute_wrapper(transactions):
        result = _ingest(late, region)
    assert result.outcome == STORED
    assert transactions.count == 1
    assert Instance.all_objects.get(pk=result.instance_id).withdrawn_at is not None
    assert Rejection.objects.get(instance_id=result.instance_id).note == RejectionNote.objects.get()
    assert Instance.objects.filter(pk=first.pk).exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="heap-only tuples are PostgreSQL's")
def test_an_image_of_a_known_series_updates_its_study_and_series_rows_in_place(
    region: Any, known_series: list[Path]
) -> None:
    """The study's and the series' counters and last_received_at are in no index: PostgreSQL
    rewrites both rows in place (heap-only tuples), adding no entry to any of their indexes,
    the trigram GIN among them, for each image."""

    def updates() -> dict[str, tuple[int, int]]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")  # this backend's counts, on its next idle
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname IN (%s, %s)",
                [Study._meta.db_table, Series._meta.db_table],
            )
            return {name: (upd, hot) for name, upd, hot in cursor.fetchall()}

    # A heap-only update needs room on its row's page. The flush after an earlier test
    # deletes rows (tests/conftest.py) and leaves them dead on the pages until a VACUUM, so
    # the page may be full of them: vacuumed, it holds what this test wrote.
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM {Study._meta.db_table}, {Series._meta.db_table}")
    before = updates()
    for path in known_series:
        assert _ingest(path, region).outcome == STORED
    after = updates()
    for table in (Study._meta.db_table, Series._meta.db_table):
        updated = after[table][0] - before[table][0]
        in_place = after[table][1] - before[table][1]
        assert updated == len(known_series) and in_place == updated, (table, updated, in_place)
