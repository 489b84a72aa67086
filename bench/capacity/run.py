"""Capacity benchmark: what PostgreSQL holds and does per study, and the region's volume (docs/CAPACITY.md).

For one archive size (``--studies``, default 100,000) it fills a database of
its own with ``bench/query/generate.py`` (COPY, the same rows ingestion
writes; ``--reuse`` measures one already filled) and prints:

* **Tables**: rows, heap (with TOAST), indexes and total bytes of every table
  the archive grows (``pg_table_size``, ``pg_indexes_size``,
  ``pg_total_relation_size``) and the bytes per row; the database's bytes per
  study and per instance.
* **Indexes**: every index of those tables with its size and bytes per row.
* **Queries**: the database's own time (planning + execution, EXPLAIN
  ANALYZE with timing per node off) of the statements the archive's own code
  sends for the main queries, p50 / p95 over ``--repeat`` values picked at
  random: PatientID, StudyDate range + ModalitiesInStudy=CT (limit 100),
  PatientName ``ROSSI^MA*`` and ``ROSS*`` (limit 100), the series of a study,
  and the instance list of a retrieve (WADO-RS study: ``instances_select``;
  C-MOVE study: ``retrieve_instances``); with the shared buffers each touched
  (hit + read) and the indexes it read, so that a size against another shows
  what stays flat. ``--explain`` also prints one plan of each in full.
* **Lifecycle** (``--no-lifecycle`` to skip): the archive made as the lifecycle
  leaves it (a verified long-term copy of every instance older than a week,
  no facility copy older than a year), then the database's time and buffers of
  ``instances_to_migrate`` and ``copies_to_evict`` (a batch each). This
  changes the database: the tables are measured before it.
* **Audit**: ``--audit-events`` events written with the project's own
  ``kernel.audit.audit_record``, each committed by itself as a request writes
  it (one statement, the search's patients with it), of two kinds: a WADO-RS read (the study, the patient, the request's
  path in ``detail``: what the viewer writes per image it fetches) and a
  search returning 20 patients (``AuditEventPatient`` rows); bytes per event
  of each (the tables' growth) and events/s of one process.
* **The region** (``--region``, on by default): the volume that 1.2 million
  inhabitants and 20 facilities imply from the assumptions in
  :data:`MODALITIES` (exams per inhabitant by modality, instances per study,
  bytes per instance), the object store per tier and per year over ten years
  of retention, the index rows and the database's size from the bytes per row
  measured here, and the processes each part needs at peak from the
  throughputs in :data:`MEASURED` (the README's benchmarks).

Run: ``.venv/bin/python bench/capacity/run.py [--studies N] [--database-url URL] [--reuse] [--drop]``.
The database is ``capacity_<size>`` on 127.0.0.1 unless ``--database-url``
names another (never ``test`` or ``test_*``); ``--drop`` drops it afterwards
(a million studies take about 10 GB). This is a benchmark: it asserts
nothing. ``--smoke`` (2,000 studies, 3 values per query, 200 audit events,
generated anew and kept for the caller to drop) runs in seconds: the test
suite runs it (``tests/bench/test_benchmarks.py``) so that it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

# The tables an archive grows (the rest are configuration, a few rows each).
TABLES = [
    "archive_patient",
    "archive_patientidentifier",
    "archive_study",
    "archive_series",
    "archive_instance",
    "archive_copy",
    "portal_concealment",
    "archive_auditevent",
    "archive_auditeventpatient",
]
SEARCH_PATIENTS = 20  # the patients an audited search returns, in the benchmark's search events


# --- the region: assumptions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Modality:
    """One modality's share of the region's exams (assumptions, see docs/CAPACITY.md)."""

    code: str
    exams_per_1000: float  # exams archived per 1,000 inhabitants per year
    instances: float  # instances per study
    mb_per_instance: float  # bytes per instance, as received (MB = 10**6)


# Exams archived per 1,000 inhabitants a year, instances per study and bytes per instance.
# Assumptions: about 1.5 archived imaging exams per inhabitant a year (Italy's published
# totals, 70 to 130 million exams a year for 59 million inhabitants, are 1.2 to 2.2), split by
# modality as a regional hospital network sees it; instances and sizes of current equipment
# (CT with thin slices and reformats, 2D mammography without tomosynthesis, uncompressed
# or lossless as the modalities send).
MODALITIES = [
    Modality("CR/DX", 650, 2.2, 6.0),
    Modality("US", 380, 20, 0.6),
    Modality("CT", 150, 500, 0.52),
    Modality("MR", 80, 400, 0.2),
    Modality("MG", 60, 4.5, 20.0),
    Modality("NM/PT", 12, 250, 0.15),
    Modality("XA/RF/other", 50, 40, 1.0),
]
INHABITANTS = 1_200_000
FACILITIES = 20
LARGEST_FACILITY_SHARE = 0.15  # the largest hub's share of the region's studies
YEARS = 10
WORKING_DAYS = 250
WORKING_HOURS = 10  # most exams are made between 8 and 18 on working days
DAYTIME_SHARE = 0.85  # the rest at night and at weekends (emergencies)
PEAK_FACTOR = 2.0  # the busiest hour against the working-hours mean
FACILITY_WINDOW_DAYS = 365  # PACS_EVICT_AFTER_DAYS: the facility tier keeps a year
RECALLED_SHARE = 0.05  # priors recalled into the facility tiers (PACS_RECALL_KEEP_DAYS), of the long-term
FIXITY_CYCLE_DAYS = 90  # PACS_FIXITY_CYCLE_DAYS
PRESERVATION_FIXITY_CYCLE_DAYS = 365  # PACS_PRESERVATION_FIXITY_CYCLE_DAYS
# Reading: each study opened in the diagnostic viewer by about three people (the radiologist,
# a clinician, a second opinion or a prior), each opening fetching every image once (the
# viewer's WADO-RS frames, one request per image, audited once per opening since
# PACS_AUDIT_READING_WINDOW), and a tenth of studies retrieved by C-MOVE to a workstation;
# searches: ten per study read.
OPENINGS_PER_STUDY = 3.0
SEARCHES_PER_OPENING = 3.0
CITIZEN_DOWNLOAD_SHARE = 0.10  # studies a citizen downloads as a zip from the portal
CITIZEN_PAGES_PER_STUDY = 4.0

# Throughputs measured by the other benchmarks on the 2-core development machine (README,
# *Benchmarks*, 2026-12): per process, the current code. The listener (prefork), C-FIND and
# retrieval are being reworked (issue 21): these figures will be updated.
MEASURED = {
    "ingest_inst_s_1assoc": 160.0,  # listener on PostgreSQL, 1 association (bench/ingest)
    "ingest_inst_s_4assoc": 191.0,  # the same listener process, 4 associations
    "lifecycle_s3_obj_s": 34.0,  # migration to S3 (moto), 39 KB objects (bench/lifecycle)
    "lifecycle_s3_mb_s": 16.0,  # migration to S3 (moto), 530 KB objects
    "lifecycle_fs_mb_s": 347.0,  # migration between filesystems, 530 KB objects
    "wado_mb_s_small": 175.0,  # WADO-RS, 500 x 39 KB, cold (bench/query)
    "wado_mb_s_ct": 918.0,  # WADO-RS, 500 x 513 KB, cold
    "render_ms_per_image": 15.0,  # /rendered on the server, per image (issue 21)
    "zip_mb_s": 403.0,  # portal DICOM zip, cold (bench/portal)
    "portal_pages_s": 118.0,  # portal pages at saturation, one 2-core host (bench/portal)
    "qido_ms_p50": 13.0,  # QIDO-RS by PatientID, p50 (bench/query)
    "audit_events_s": 114.0,  # audit events/s of one process, no hold (bench/audit)
}


# --- measuring PostgreSQL ------------------------------------------------------------------------


@dataclass
class TableSize:
    name: str
    rows: int
    heap: int
    indexes: int
    total: int


@dataclass
class QueryStats:
    label: str
    seconds: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    buffers: list[int] = field(default_factory=list)
    indexes: set[str] = field(default_factory=set)
    scans: set[str] = field(default_factory=set)  # sequential scans: the relations read whole
    plan: str = ""


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def tables_measure(cursor: Any) -> list[TableSize]:
    sizes = []
    for name in TABLES:
        cursor.execute("SELECT to_regclass(%s)", [name])
        if cursor.fetchone()[0] is None:
            continue
        cursor.execute(f"SELECT count(*) FROM {name}")  # exact: the estimate is what we measure against
        rows = cursor.fetchone()[0]
        cursor.execute(
            "SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass), pg_total_relation_size(%s::regclass)",
            [name, name, name],
        )
        heap, indexes, total = cursor.fetchone()
        sizes.append(TableSize(name, rows, heap, indexes, total))
    return sizes


def indexes_measure(cursor: Any) -> list[tuple[str, str, int, int]]:
    """(table, index, bytes, table rows) of every index of :data:`TABLES`."""
    cursor.execute(
        "SELECT t.relname, i.relname, pg_relation_size(i.oid), t.reltuples::bigint "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
        "WHERE t.relname = ANY(%s) ORDER BY t.relname, pg_relation_size(i.oid) DESC",
        [TABLES],
    )
    return [(t, i, size, max(0, rows)) for t, i, size, rows in cursor.fetchall()]


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def _captured(run: Callable[[], int]) -> tuple[int, list[tuple[str, Any]]]:
    """Run ``run`` and return what it returned with the statements it sent."""
    from django.db import connection

    captured: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        captured.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        n = run()
    return n, captured


def explain_into(stats: QueryStats, run: Callable[[], int], *, full: bool) -> None:
    """EXPLAIN ANALYZE every statement ``run`` sends; add its time, buffers and indexes to ``stats``."""
    from django.db import connection

    n, statements = _captured(run)
    total = 0.0
    buffers = 0
    for sql, params in statements:
        if not sql.lstrip().upper().startswith("SELECT"):
            continue
        with connection.cursor() as c:
            c.execute("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) " + sql, params)
            doc = c.fetchone()[0]
            doc = json.loads(doc) if isinstance(doc, str) else doc
            plan = doc[0] if isinstance(doc, list) else doc
            total += plan["Planning Time"] + plan["Execution Time"]
            for node in _walk(plan["Plan"]):
                if "Index Name" in node:
                    stats.indexes.add(node["Index Name"])
                if node["Node Type"] == "Seq Scan":
                    stats.scans.add(node.get("Relation Name", "?"))
            top = plan["Plan"]
            buffers += top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
            if full and not stats.seconds:  # the first value's plans, in full
                c.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                stats.plan += ("\n-- next statement\n" if stats.plan else "") + "\n".join(r[0] for r in c.fetchall())
    stats.seconds.append(total / 1000)
    stats.rows.append(n)
    stats.buffers.append(buffers)


def queries_measure(repeat: int, rng: random.Random, *, full: bool) -> list[QueryStats]:
    from pydicom.dataset import Dataset

    from archive import access
    from archive.dicomweb.scope import Scope, instances_select
    from archive.query import query_run, retrieve_instances
    from archive.storage.retrieve import instances_with_copies
    from bench.query.run import SERIES_KEYS, STUDY_KEYS, _engine_options, bench_accounts, values_pick

    bench_accounts()  # the staff user whose principal the queries run as (the region's scope)
    options = _engine_options()
    principal = options.get("principal", access.NOBODY)
    values = values_pick(repeat, rng)

    def find(level: str, matching: dict[str, str], limit: int | None) -> Callable[[], int]:
        def run() -> int:
            ds = Dataset()
            for kw in STUDY_KEYS if level == "STUDY" else SERIES_KEYS:
                setattr(ds, kw, "")
            for kw, value in matching.items():
                setattr(ds, kw, value)
            return sum(1 for _ in query_run(ds, level=level, limit=limit, **options))

        return run

    def wado(study_uid: str) -> Callable[[], int]:
        def run() -> int:
            scope = Scope(facility=None, base_url="http://capacity/dicomweb", principal=principal)
            return len(instances_select(scope, study_uid=study_uid)[1])

        return run

    def move(study_uid: str) -> Callable[[], int]:
        def run() -> int:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = study_uid
            qs = retrieve_instances(ds, level="STUDY", principal=principal)
            return len(list(instances_with_copies(qs.select_related("series__study"))))

        return run

    kinds: list[tuple[QueryStats, Callable[[int], Callable[[], int]]]] = [
        (QueryStats("PatientID"), lambda i: find("STUDY", {"PatientID": values.patient_ids[i]}, 1001)),
        (
            QueryStats("StudyDate 1-31 days + CT, limit 100"),
            lambda i: find("STUDY", {"StudyDate": values.date_ranges[i], "ModalitiesInStudy": "CT"}, 100),
        ),
        (QueryStats("PatientName=ROSSI^MA*"), lambda i: find("STUDY", {"PatientName": values.name_given[i]}, 1001)),
        (
            QueryStats("PatientName=ROSS*, limit 100"),
            lambda i: find("STUDY", {"PatientName": values.name_prefixes[i]}, 100),
        ),
        (
            QueryStats("series of a study"),
            lambda i: find("SERIES", {"StudyInstanceUID": values.study_uids[i]}, 1001),
        ),
        (QueryStats("instances of a study (WADO-RS)"), lambda i: wado(values.study_uids[i])),
        (QueryStats("instances of a study (C-MOVE)"), lambda i: move(values.study_uids[i])),
    ]
    # Interleaved, so that the machine's ups and downs fall on every kind.
    for i in range(repeat):
        for stats, make in kinds:
            explain_into(stats, make(i), full=full)
    return [stats for stats, _ in kinds]


def lifecycle_prepare() -> tuple[int, int]:
    """Make the archive look as the lifecycle leaves it, and return (copies added, copies removed).

    The generated archive has a facility copy of every instance and nothing else;
    a running one has a verified long-term copy of every instance older than
    ``PACS_MIGRATE_AFTER_DAYS`` and no facility copy older than ``PACS_EVICT_AFTER_DAYS``
    (evicted), so that the lifecycle's queries must find the few instances still
    due among all those already done: what the archive's age costs them."""
    from django.conf import settings
    from django.db import connection, transaction

    from archive.storage import tiers as storage

    longterm = storage.longterm_tier(storage.REGION)
    with transaction.atomic(), connection.cursor() as c:
        c.execute(
            "INSERT INTO archive_copy (instance_id, tier, path, sha256, size, created_at, verified_at, "
            "instance_received_at) "
            "SELECT c.instance_id, %s, c.path, c.sha256, c.size, c.created_at, c.verified_at, i.received_at "
            "FROM archive_copy c JOIN archive_instance i ON i.id = c.instance_id "
            "WHERE c.tier LIKE 'facility:%%' AND i.received_at < now() - make_interval(days => %s) "
            "ON CONFLICT DO NOTHING",
            [longterm, int(settings.PACS_MIGRATE_AFTER_DAYS) + 1],
        )
        added = c.rowcount
        # What archive.storage.lifecycle.instances_migrated_sync records with each long-term copy.
        c.execute(
            "UPDATE archive_instance i SET migrated = TRUE FROM archive_copy c "
            "WHERE c.instance_id = i.id AND c.tier = %s AND NOT i.migrated",
            [longterm],
        )
        c.execute(
            "DELETE FROM archive_copy c USING archive_instance i WHERE i.id = c.instance_id "
            "AND c.tier LIKE 'facility:%%' AND i.received_at < now() - make_interval(days => %s)",
            [int(settings.PACS_EVICT_AFTER_DAYS) + 1],
        )
        removed = c.rowcount
    with connection.cursor() as c:
        c.execute("VACUUM (ANALYZE) archive_copy")
        c.execute("VACUUM (ANALYZE) archive_instance")
    return added, removed


def lifecycle_measure(repeat: int) -> list[QueryStats]:
    from archive.storage.lifecycle import copies_to_evict, instances_to_migrate

    kinds = [
        (QueryStats("lifecycle: instances to migrate"), lambda: len(instances_to_migrate())),
        (QueryStats("lifecycle: copies to evict"), lambda: len(copies_to_evict())),
    ]
    for _ in range(repeat):
        for stats, run in kinds:
            explain_into(stats, run, full=False)
    return [stats for stats, _ in kinds]


@dataclass
class AuditFigures:
    kind: str
    events: int
    seconds: float
    event_bytes: int  # growth of archive_auditevent (heap, TOAST and indexes)
    link_bytes: int  # growth of archive_auditeventpatient


def audit_measure(events: int) -> list[AuditFigures]:
    """Write ``events`` audit events of each kind with ``audit_record``; how much each table grew."""
    from django.db import connection

    from archive.models import Instance, Patient, Study
    from kernel.audit import audit_record

    studies = list(Study.objects.order_by("?").values_list("pk", "patient_id", "study_instance_uid")[:200])
    sample = list(
        Instance.objects.filter(series__study_id=studies[0][0]).values_list(
            "series__series_instance_uid", "sop_instance_uid"
        )[:1]
    )
    series_uid, sop_uid = sample[0] if sample else ("1.2.3", "1.2.3.4")
    patients = list(Patient.objects.order_by("?").values_list("pk", flat=True)[: SEARCH_PATIENTS * 20])

    def sizes() -> tuple[int, int]:
        with connection.cursor() as c:
            c.execute(
                "SELECT pg_total_relation_size('archive_auditevent'), pg_total_relation_size('archive_auditeventpatient')"
            )
            a, b = c.fetchone()
        return a, b

    def read(i: int) -> None:
        pk, patient, study_uid = studies[i % len(studies)]
        path = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/1"
        audit_record(
            action="dicomweb.retrieve",
            user=None,
            study=Study(pk=pk, patient_id=patient, study_instance_uid=study_uid),
            patient=Patient(pk=patient),
            source="10.20.30.40",
            detail={"method": "GET", "path": path, "accept": "multipart/related; type=application/octet-stream"},
        )

    def search(i: int) -> None:
        start = (i * SEARCH_PATIENTS) % max(1, len(patients) - SEARCH_PATIENTS)
        audit_record(
            action="dicomweb.search",
            source="10.20.30.40",
            detail={"method": "GET", "path": "/dicomweb/studies", "query": "PatientName=ROSSI^MA*&limit=100"},
            patients=patients[start : start + SEARCH_PATIENTS],
        )

    results = []
    for kind, write in (("WADO-RS read (per image)", read), (f"search, {SEARCH_PATIENTS} patients", search)):
        before = sizes()
        t0 = time.perf_counter()
        for i in range(events):
            write(i)  # committed by itself, as a request's event is (kernel.audit: one statement)
        seconds = time.perf_counter() - t0
        after = sizes()
        results.append(AuditFigures(kind, events, seconds, after[0] - before[0], after[1] - before[1]))
    return results


# --- the region -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Volume:
    studies: float
    instances: float
    bytes: float


def region_volume() -> tuple[list[tuple[Modality, Volume]], Volume]:
    rows = []
    for m in MODALITIES:
        studies = INHABITANTS * m.exams_per_1000 / 1000
        instances = studies * m.instances
        rows.append((m, Volume(studies, instances, instances * m.mb_per_instance * 1e6)))
    total = Volume(*(sum(getattr(v, f) for _, v in rows) for f in ("studies", "instances", "bytes")))
    return rows, total


def region_print(measured: dict[str, float]) -> None:
    rows, year = region_volume()
    tb = 1e12
    print(
        f"\nThe region: {INHABITANTS:,} inhabitants, {FACILITIES} facilities, {YEARS} years of retention "
        "(assumptions: bench/capacity/run.py MODALITIES)"
    )
    print(
        f"{'modality':<14}{'exams/1000/yr':>14}{'studies/yr':>12}{'inst/study':>11}{'MB/inst':>9}"
        f"{'instances/yr':>14}{'MB/study':>10}{'TB/yr':>8}"
    )
    for m, v in rows:
        print(
            f"{m.code:<14}{m.exams_per_1000:>14,.0f}{v.studies:>12,.0f}{m.instances:>11,.1f}{m.mb_per_instance:>9.2f}"
            f"{v.instances:>14,.0f}{v.bytes / v.studies / 1e6:>10,.1f}{v.bytes / tb:>8.1f}"
        )
    print(
        f"{'total':<14}{year.studies / INHABITANTS * 1000:>14,.0f}{year.studies:>12,.0f}"
        f"{year.instances / year.studies:>11,.1f}{year.bytes / year.instances / 1e6:>9.2f}"
        f"{year.instances:>14,.0f}{year.bytes / year.studies / 1e6:>10,.1f}{year.bytes / tb:>8.1f}"
    )
    print(
        f"per facility (mean of {FACILITIES}): {year.studies / FACILITIES:,.0f} studies, "
        f"{year.instances / FACILITIES:,.0f} instances, {year.bytes / FACILITIES / tb:.1f} TB a year; "
        f"the largest ({LARGEST_FACILITY_SHARE:.0%}): {year.studies * LARGEST_FACILITY_SHARE:,.0f} studies, "
        f"{year.bytes * LARGEST_FACILITY_SHARE / tb:.1f} TB"
    )

    # The object store per tier, year by year (the archive grows by the same volume each year).
    window = FACILITY_WINDOW_DAYS / 365
    print(
        "\nObject store per tier at the end of each year, TB (decimal): facility tiers hold "
        f"{FACILITY_WINDOW_DAYS} days plus recalls, long-term and preservation everything kept"
    )
    print(
        f"{'year':>4}{'facility tiers':>16}{'long-term':>11}{'preservation':>14}{'all tiers':>11}"
        f"{'instance rows':>16}{'copy rows':>16}{'package files':>16}{'index (DB)':>12}"
    )
    per_instance = measured.get("instance_bytes", 0.0)
    per_copy = measured.get("copy_bytes", 0.0)
    for y in range(1, YEARS + 1):
        facility = year.bytes * min(window, y) + RECALLED_SHARE * year.bytes * y
        longterm = year.bytes * y
        preservation = year.bytes * y
        instances = year.instances * y
        # A long-term copy of every instance, a facility copy for the window (and the recalled);
        # the preservation's PackageFile rows (one per instance) are counted apart.
        copies = instances + year.instances * min(window, y) + RECALLED_SHARE * instances
        db = instances * per_instance + (copies + instances) * per_copy  # a file row taken as a copy row
        print(
            f"{y:>4}{facility / tb:>16,.0f}{longterm / tb:>11,.0f}{preservation / tb:>14,.0f}"
            f"{(facility + longterm + preservation) / tb:>11,.0f}{instances:>16,.0f}{copies:>16,.0f}"
            f"{instances:>16,.0f}{_fmt_bytes(db) if db else '-':>12}"
        )
    if per_instance:
        print(
            f"index (DB): instance rows x {per_instance:,.0f} B + copy and package-file rows x {per_copy:,.0f} B "
            "(measured here; a package-file row taken as a copy row), without studies, series and audit"
        )

    # Peak rates and the processes they need.
    daytime_hours = WORKING_DAYS * WORKING_HOURS
    peak = PEAK_FACTOR * DAYTIME_SHARE / daytime_hours / 3600  # fraction of a year's volume per second at peak
    inst_s = year.instances * peak
    mb_s = year.bytes * peak / 1e6
    largest = LARGEST_FACILITY_SHARE
    print(
        f"\nPeak: {DAYTIME_SHARE:.0%} of the year in {WORKING_DAYS} days x {WORKING_HOURS} h, "
        f"the busiest hour {PEAK_FACTOR:g}x that mean"
    )
    rate = MEASURED
    openings = year.studies * OPENINGS_PER_STUDY
    read_mb_s = openings * (year.bytes / year.studies) * peak / 1e6
    images_s = openings * (year.instances / year.studies) * peak
    searches_s = openings * SEARCHES_PER_OPENING * peak
    zip_mb_s = year.studies * CITIZEN_DOWNLOAD_SHARE * (year.bytes / year.studies) * peak / 1e6
    portal_s = year.studies * CITIZEN_PAGES_PER_STUDY * peak
    migrate_obj_s = year.instances / (365 * 86400)
    migrate_mb_s = year.bytes / (365 * 86400) / 1e6
    # PACS_FIXITY_CYCLE_DAYS re-reads every copy (facility and long-term tiers) once per cycle,
    # PACS_PRESERVATION_FIXITY_CYCLE_DAYS every preserved package: at the tenth year's size.
    fixity_mb_s = year.bytes * (min(window, YEARS) + RECALLED_SHARE * YEARS + YEARS) / (FIXITY_CYCLE_DAYS * 86400) / 1e6
    preservation_fixity_mb_s = year.bytes * YEARS / (PRESERVATION_FIXITY_CYCLE_DAYS * 86400) / 1e6
    # One event per opening (PACS_AUDIT_READING_WINDOW), its searches, the portal's pages, two stores a study.
    audit_s = openings * peak + searches_s + portal_s + year.studies * 2 * peak
    rows_out = [
        (
            "ingest, region",
            f"{inst_s:,.0f} inst/s, {mb_s:,.0f} MB/s",
            f"{rate['ingest_inst_s_4assoc']:.0f} inst/s per listener process",
            inst_s / rate["ingest_inst_s_4assoc"],
        ),
        (
            "ingest, largest facility",
            f"{inst_s * largest:,.0f} inst/s",
            f"{rate['ingest_inst_s_1assoc']:.0f} inst/s (1 association)",
            inst_s * largest / rate["ingest_inst_s_1assoc"],
        ),
        (
            "viewer reads (WADO-RS)",
            f"{read_mb_s:,.0f} MB/s, {images_s:,.0f} images/s",
            f"{rate['wado_mb_s_ct']:.0f} MB/s (CT) / {rate['wado_mb_s_small']:.0f} MB/s (small)",
            read_mb_s / rate["wado_mb_s_small"],
        ),
        (
            "searches (QIDO-RS, C-FIND)",
            f"{searches_s:,.1f} /s",
            f"{1000 / rate['qido_ms_p50']:.0f} /s per worker thread",
            searches_s * rate["qido_ms_p50"] / 1000,
        ),
        (
            "on-demand /rendered (if every image)",
            f"{images_s:,.0f} images/s",
            f"{1000 / rate['render_ms_per_image']:.0f} images/s per core",
            images_s * rate["render_ms_per_image"] / 1000,
        ),
        (
            "portal pages",
            f"{portal_s:,.2f} /s",
            f"{rate['portal_pages_s']:.0f} /s per 2-core host",
            portal_s / rate["portal_pages_s"],
        ),
        (
            "portal zips",
            f"{zip_mb_s:,.1f} MB/s",
            f"{rate['zip_mb_s']:.0f} MB/s per worker",
            zip_mb_s / rate["zip_mb_s"],
        ),
        (
            "lifecycle to long-term (24 h)",
            f"{migrate_obj_s:,.1f} obj/s, {migrate_mb_s:,.1f} MB/s",
            f"{rate['lifecycle_s3_obj_s']:.0f} obj/s, {rate['lifecycle_s3_mb_s']:.0f} MB/s (moto S3)",
            max(migrate_obj_s / rate["lifecycle_s3_obj_s"], migrate_mb_s / rate["lifecycle_s3_mb_s"]),
        ),
        (
            "preservation packages (24 h)",
            f"{migrate_mb_s:,.1f} MB/s",
            f"{rate['lifecycle_fs_mb_s']:.0f} MB/s (copy + SHA-256)",
            migrate_mb_s / rate["lifecycle_fs_mb_s"],
        ),
        (
            f"fixity: every copy every {FIXITY_CYCLE_DAYS} days (year {YEARS})",
            f"{fixity_mb_s:,.0f} MB/s (24 h)",
            f"{rate['lifecycle_fs_mb_s']:.0f} MB/s read + SHA-256",
            fixity_mb_s / rate["lifecycle_fs_mb_s"],
        ),
        (
            f"preservation fixity, {PRESERVATION_FIXITY_CYCLE_DAYS} days (year {YEARS})",
            f"{preservation_fixity_mb_s:,.0f} MB/s (24 h)",
            f"{rate['lifecycle_fs_mb_s']:.0f} MB/s read + SHA-256",
            preservation_fixity_mb_s / rate["lifecycle_fs_mb_s"],
        ),
        (
            "audit events",
            f"{audit_s:,.0f} /s",
            f"{rate['audit_events_s']:.0f} /s per process (chains scale)",
            audit_s / rate["audit_events_s"],
        ),
    ]
    print(f"{'work at peak':<44}{'needs':<30}{'one process does (measured)':<44}{'processes':>10}")
    for label, need, does, procs in rows_out:
        print(f"{label:<44}{need:<30}{does:<44}{procs:>10.2f}")
    searches_year = openings * SEARCHES_PER_OPENING
    per_image_year = openings * (year.instances / year.studies)
    others_year = year.studies * (2 + CITIZEN_PAGES_PER_STUDY)  # stores, portal pages
    print(
        f"audit events a year at these rates: {openings + searches_year + others_year:,.0f} "
        f"({openings:,.0f} viewer openings, {searches_year:,.0f} searches, {others_year:,.0f} others); "
        f"with every image audited (PACS_AUDIT_READING_WINDOW=0): {per_image_year + searches_year + others_year:,.0f}"
    )
    read_b, search_b = measured.get("audit_read_bytes"), measured.get("audit_search_bytes")
    if read_b and search_b:
        per_image = (per_image_year + others_year) * read_b + searches_year * search_b
        per_opening = (openings + others_year) * read_b + searches_year * search_b
        print(
            f"  at {read_b:,.0f} B per event, {search_b:,.0f} per search: {_fmt_bytes(per_opening)} a year, "
            f"{_fmt_bytes(per_opening * YEARS)} in {YEARS} years; with every image: {_fmt_bytes(per_image)} "
            f"a year, {_fmt_bytes(per_image * YEARS)} in {YEARS} years"
        )


def _stats_print(s: QueryStats) -> None:
    read = ", ".join(sorted(s.indexes)) or "-"
    if s.scans:
        read += "; SEQ SCAN " + ", ".join(sorted(s.scans))
    print(
        f"{s.label:<38}{_pct(s.seconds, 50) * 1000:>9.2f} {_pct(s.seconds, 95) * 1000:>9.2f}"
        f"{statistics.median(s.rows):>7.0f}{statistics.median(s.buffers):>10.0f}  {read}"
    )


# --- main -----------------------------------------------------------------------------------------


def generate(url: str, studies: int) -> None:
    cmd = [sys.executable, str(REPO / "bench/query/generate.py"), "--studies", str(studies)]
    cmd += ["--database-url", url, "--reset"]
    print(f"generating {studies:,} studies into {urlparse(url).path.lstrip('/')}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, stdout=sys.stderr)


def drop(url: str) -> None:
    from bench.query.generate import _admin_connect

    name = urlparse(url).path.lstrip("/")
    with _admin_connect(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"dropped {name}", file=sys.stderr)


def _label(studies: int) -> str:
    return f"{studies // 1_000_000}m" if studies % 1_000_000 == 0 else f"{studies // 1000}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--database-url", help="default: postgres://postgres@127.0.0.1:5432/capacity_<size>")
    parser.add_argument("--reuse", action="store_true", help="measure the database as it is (generated before)")
    parser.add_argument("--drop", action="store_true", help="drop the database afterwards")
    parser.add_argument("--repeat", type=int, default=50, help="values per query kind")
    parser.add_argument("--audit-events", type=int, default=5000, help="audit events of each kind")
    parser.add_argument("--explain", action="store_true", help="print one plan of each query in full")
    parser.add_argument("--no-region", dest="region", action="store_false", help="no projection for the region")
    parser.add_argument("--region-only", action="store_true", help="only the projection (no database)")
    parser.add_argument(
        "--no-lifecycle",
        dest="lifecycle",
        action="store_false",
        help="leave the copies as generated (no long-term copies, no lifecycle queries)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="2,000 studies, every part at its smallest")
    args = parser.parse_args()
    if args.region_only:
        region_print({})
        return
    if args.smoke:
        args.studies, args.repeat, args.audit_events, args.explain, args.reuse = 2000, 3, 200, True, False
    url = args.database_url or f"postgres://postgres@127.0.0.1:5432/capacity_{_label(args.studies)}"
    name = urlparse(url).path.lstrip("/")
    if not urlparse(url).scheme.startswith("postgres"):
        sys.exit("this benchmark needs PostgreSQL (a postgres:// URL)")
    if name == "test" or name.startswith("test_"):
        sys.exit(f"refusing database {name!r}: the test suites own test and test_*")
    if not args.reuse:
        generate(url, args.studies)

    with tempfile.TemporaryDirectory(prefix="pacs-bench-capacity-") as var:
        os.environ.update(
            {
                "DATABASE_URL": url,
                "PACS_VAR_DIR": var,
                "PACS_AUDIT_KEY_FILE": str(Path(var) / "audit.key"),
                "LOG_LEVEL": "WARNING",
            }
        )
        os.environ.pop("REDIS_URL", None)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0, interactive=False)
        measured: dict[str, float] = {}
        with connection.cursor() as c:
            c.execute("SELECT version()")
            version = c.fetchone()[0].split(" on ")[0]
            c.execute("SHOW shared_buffers")
            shared = c.fetchone()[0]
            c.execute("SELECT pg_database_size(current_database())")
            db_size = c.fetchone()[0]
            tables = tables_measure(c)
            indexes = indexes_measure(c)
        rows = {t.name: t for t in tables}
        studies = rows["archive_study"].rows
        instances = rows["archive_instance"].rows
        print(
            f"Capacity: {studies:,} studies, {instances:,} instances in {name} "
            f"({version}, shared_buffers {shared}); database {_fmt_bytes(db_size)}"
        )
        print("\nTables")
        print(f"{'table':<28}{'rows':>14}{'heap':>12}{'indexes':>12}{'total':>12}{'B/row':>8}{'idx B/row':>10}")
        for t in tables:
            per = t.total / t.rows if t.rows else 0
            idx = t.indexes / t.rows if t.rows else 0
            print(
                f"{t.name:<28}{t.rows:>14,}{_fmt_bytes(t.heap):>12}{_fmt_bytes(t.indexes):>12}"
                f"{_fmt_bytes(t.total):>12}{per:>8,.0f}{idx:>10,.0f}"
            )
        archive = sum(t.total for t in tables if not t.name.startswith("archive_audit"))
        inst, copy = rows["archive_instance"], rows["archive_copy"]
        measured["instance_bytes"] = inst.total / max(1, inst.rows)
        measured["copy_bytes"] = copy.total / max(1, copy.rows)
        print(
            f"per study: {archive / max(1, studies):,.0f} B of the archive's tables "
            f"({instances / max(1, studies):.1f} instances); per instance: instance row "
            f"{measured['instance_bytes']:,.0f} B + copy row {measured['copy_bytes']:,.0f} B; "
            f"instance and copy tables {(inst.total + copy.total) / max(1, archive):.0%} of the archive's tables"
        )

        print("\nIndexes")
        print(f"{'table':<28}{'index':<52}{'size':>12}{'B/row':>8}")
        for table, index, size, trows in indexes:
            print(f"{table:<28}{index[:51]:<52}{_fmt_bytes(size):>12}{size / trows if trows else 0:>8,.0f}")

        print(f"\nQueries: the database's time (planning + execution, EXPLAIN ANALYZE), {args.repeat} values each")
        print(f"{'query':<38}{'p50 ms':>9} {'p95 ms':>9}{'rows':>7}{'buffers':>10}  indexes read / tables scanned")
        stats = queries_measure(args.repeat, random.Random(args.seed), full=args.explain)
        for s in stats:
            _stats_print(s)
        if args.explain:
            for s in stats:
                print(f"\n--- plan: {s.label}\n{s.plan}")

        if args.lifecycle:
            t0 = time.perf_counter()
            added, removed = lifecycle_prepare()
            print(
                f"\nLifecycle: the archive as the lifecycle leaves it ({added:,} long-term copies added, "
                f"{removed:,} facility copies past retention removed, {time.perf_counter() - t0:.0f} s); "
                f"{max(1, args.repeat // 10)} run(s) each"
            )
            print(f"{'query':<38}{'p50 ms':>9} {'p95 ms':>9}{'rows':>7}{'buffers':>10}  indexes read / tables scanned")
            for s in lifecycle_measure(max(1, args.repeat // 10)):
                _stats_print(s)

        if args.audit_events <= 0:
            args.audit_events = 0
        print(f"\nAudit: {args.audit_events:,} events of each kind, audit_record in a transaction each")
        print(f"{'kind':<28}{'events/s':>10}{'event B':>10}{'links B':>10}{'B/event':>10}")
        for a in audit_measure(args.audit_events) if args.audit_events else []:
            per = (a.event_bytes + a.link_bytes) / a.events
            measured["audit_read_bytes" if a.kind.startswith("WADO") else "audit_search_bytes"] = per
            print(
                f"{a.kind:<28}{a.events / a.seconds:>10,.0f}{a.event_bytes / a.events:>10,.0f}"
                f"{a.link_bytes / a.events:>10,.0f}{per:>10,.0f}"
            )
        if args.audit_events:
            with connection.cursor() as c:
                audit_tables = [t for t in tables_measure(c) if t.name.startswith("archive_audit")]
                audit_indexes = [i for i in indexes_measure(c) if i[0].startswith("archive_audit")]
            print("the audit's tables after it, and their indexes:")
            for t in audit_tables:
                print(
                    f"  {t.name:<26}{t.rows:>10,} rows, heap {_fmt_bytes(t.heap)}, indexes {_fmt_bytes(t.indexes)}, "
                    f"{t.total / max(1, t.rows):,.0f} B/row"
                )
            counted = {t.name: t.rows for t in audit_tables}
            for table, index, size, _ in audit_indexes:
                per = size / counted[table] if counted.get(table) else 0
                print(f"  {table:<26}{index[:51]:<52}{_fmt_bytes(size):>12}{per:>8,.0f} B/row")
        connection.close()
    if args.region:
        region_print(measured)
    if args.drop:
        drop(url)


if __name__ == "__main__":
    main()
