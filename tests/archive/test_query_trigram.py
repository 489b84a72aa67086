"""Wildcards inside a person name read the trigram index on PostgreSQL (migration 0027),
and answer what they answered before, on SQLite and on PostgreSQL.

On PostgreSQL the answers are also read with sequential and plain index scans turned
off, so that they come through the trigram index (its candidates checked against the
pattern again) and not from a scan of every name; a regular expression written here
from the DICOM rules (PS3.4 C.2.2.2.4) says what each pattern must find.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, transaction
from pydicom.dataset import Dataset

from archive.access import SYSTEM
from archive.models import Patient, Study
from archive.person_names import pn_search_key
from archive.query import query_run

INDEX = "study_patient_name_search_trgm"

NAMES = [
    "ROSSI^MARIO",
    "ROSSI^MARIA",
    "GROSSO^MARTA",
    "DELL'ÒRSO^NICOLÒ",
    "STRAUß^MASSIMO",
    "BIANCHI^LUCA",
    "100%_GROSS^MA",  # LIKE's own wildcards, literals here
    "ROSSI^MA[R]CO",
    "MOSS^MAX",
    "ΑΛΈΞΗΣ^ΓΙΆΝΝΗΣ",  # letters a C-locale database would not count as letters (pg_trgm's words)
    "YAMADA^TARO=山田^太郎=やまだ^たろう",
]

PATTERNS = [
    "*OSS*^MA*",
    "*oss*^ma*",
    "*OSS*",
    "*ROSS*",
    "*SSI^MARI?",
    "*ÒRSO*",
    "*ORSO^NICOLO",
    "*STRAUSS*",
    "*%_GROSS*",
    "*0%_G*",
    "*[R]*",
    "*A*^M*",  # no run of three literals: nothing for the index to look up
    "?OSS*^MA?",
    "*OSS^MA*",
    "*ZZZ*",
    "*λέξ*^*ΆΝΝ*",
    "*山田*",
    "*=山?^太郎=*",
    "*まだ^たろ*",
]


def _expected(pattern: str) -> set[str]:
    """The names a DICOM wildcard value matches, by the rules, not by the database."""
    key = pn_search_key(pattern)
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in key)
    return {name for name in NAMES if re.fullmatch(regex, pn_search_key(name), re.S)}


@pytest.fixture
def studies(region) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The UID of each name's study."""
    uids = {}
    for i, name in enumerate(NAMES):
        study = Study.objects.create(
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.26.{i}",
            patient=Patient.objects.create(provisional=True),
            facility=region.facility,
            study_date=dt.date(2024, 1, 1 + i),
            patient_name=name,
        )
        uids[study.study_instance_uid] = name
    return uids


def _find(pattern: str, *, fuzzy: bool = False) -> set[str]:
    ds = Dataset()
    ds.PatientName = pattern
    ds.StudyInstanceUID = ""
    return {str(r.StudyInstanceUID) for r in query_run(ds, level="STUDY", principal=SYSTEM, fuzzy=fuzzy)}


@contextmanager
def _statements() -> Iterator[list[tuple[str, Any]]]:
    captured: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        captured.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        yield captured


@contextmanager
def _only_bitmap_scans() -> Iterator[None]:
    """On a table of a few rows a sequential scan is the cheapest plan, and the planner
    rightly takes it; with it and plain index scans off the question is only whether
    the trigram index can answer the statement the engine sends (its cast, LIKE and
    ESCAPE clause) at all. Which plan wins at 100,000 studies: bench/query --explain."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        yield


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_wildcard_inside_a_name_finds_what_the_rules_say(studies: dict[str, str], pattern: str) -> None:
    found = {studies[uid] for uid in _find(pattern)}
    assert found == _expected(pattern)
    if connection.vendor == "postgresql":
        with _only_bitmap_scans():
            assert {studies[uid] for uid in _find(pattern)} == found


@pytest.mark.parametrize("part", ["oss", "ÒRSO", "%_G", "ZZZ", "山田", "ΓΙΆΝ"])
def test_fuzzy_matching_finds_a_part_of_a_name(studies: dict[str, str], part: str) -> None:
    found = {studies[uid] for uid in _find(part, fuzzy=True)}
    assert found == _expected(f"*{part}*")
    if connection.vendor == "postgresql":
        with _only_bitmap_scans():
            assert {studies[uid] for uid in _find(part, fuzzy=True)} == found


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_trgm is PostgreSQL's")
@pytest.mark.parametrize(
    ("pattern", "fuzzy", "like"),
    [("*OSS*^MA*", False, "%oss%^ma%"), ("OSS", True, "%oss%")],  # C-FIND and QIDO-RS; fuzzymatching=true
)
def test_the_statement_sent_reads_the_trigram_index(
    studies: dict[str, str], pattern: str, fuzzy: bool, like: str
) -> None:
    with _statements() as sent:
        assert {studies[uid] for uid in _find(pattern, fuzzy=fuzzy)} == _expected(f"*{pattern}*" if fuzzy else pattern)
    [(sql, params)] = [(s, p) for s, p in sent if "LIKE" in s]
    assert like in params
    with _only_bitmap_scans(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"Bitmap Index Scan on {INDEX}" in plan, plan
    assert f"Index Cond: ((patient_name_search)::text ~~ '{like}'::text)" in plan, plan


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_trgm is PostgreSQL's")
def test_the_index_is_a_trigram_gin_without_a_pending_list(db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [INDEX])
        (definition,) = cursor.fetchone()
    assert "USING gin (patient_name_search gin_trgm_ops)" in definition
    assert "fastupdate=off" in definition
