"""Every benchmark at its smoke size, so that none can rot.

Each ``bench/<x>/run.py --smoke`` runs as a subprocess of the project's
Python, every part of it at its smallest (each measured kind once), and must
exit 0 and print its tables: their titles and header lines and a row for each
kind, never their figures (a benchmark asserts nothing about speed). A
benchmark that no longer runs (a moved import, a column it does not write, a
page that fails) fails its test here. Those that need PostgreSQL get a
throw-away database of their own (never ``test_*``, which the suite owns),
created as a copy of the session's migrated template (``BENCH_PG_TEMPLATE``,
tests/bench/template.py: each benchmark's own ``migrate`` then has nothing to do; the
SQLite ones of ingest, lifecycle and viewer start as copies of a migrated file the same way),
dropped afterwards, and are skipped when PostgreSQL is not reachable on
127.0.0.1:5432; ingest, render and region need DCMTK, which ``make test`` installs;
region makes (and drops) its own database and needs Redis too (skipped without).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench.template import HOST, PORT, admin, environment_without_session, sqlite_template_ready, template_ready
from tests.conftest import REPO

pytestmark = pytest.mark.slow

PAGES = ("/fse/ (my exams)", "/fse/esami/<pk>/ (exam)")  # bench/portal/run.py's


@pytest.fixture
def database_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL of a database of the benchmark's own, dropped afterwards (the benchmark creates it,
    as a copy of the session's migrated template: tests/bench/template.py)."""
    try:
        admin().close()
    except Exception as exc:
        pytest.skip(f"this benchmark needs PostgreSQL on {HOST}:{PORT}: {exc}")
    monkeypatch.setenv("BENCH_PG_TEMPLATE", template_ready())
    bench = request.node.name.removeprefix("test_").split("_")[0]
    name = f"smoke_{bench}_{os.getpid()}"
    try:
        yield f"postgres://postgres@{HOST}:{PORT}/{name}"
    finally:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQLite databases the benchmark makes start as copies of the session's migrated one
    (``BENCH_SQLITE_TEMPLATE``, tests/bench/template.py)."""
    monkeypatch.setenv("BENCH_SQLITE_TEMPLATE", str(sqlite_template_ready()))


def _run(script: str, *args: str, tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 240) -> str:
    """Run ``script`` with the project's Python; its standard output, or a failure with both outputs' ends."""
    # Not the test session's database, broker or audit key (a file this session may not have
    # made yet): each benchmark names its own, and generates its key in its own var folder.
    clean = environment_without_session()
    clean["PACS_VAR_DIR"] = str(tmp_path / "var")  # for those that do not choose one
    # A session of its own: on a timeout the benchmark's servers go with it, not only the script.
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{script} took more than {timeout:.0f} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return stdout


def _has_lines(out: str, *patterns: str) -> None:
    """Each pattern matches the start of a line of ``out`` (a title, a header, a row's label)."""
    missing = [p for p in patterns if not re.search(p, out, re.MULTILINE)]
    assert not missing, f"no line matching {missing} in:\n{out[-3000:]}"


def test_audit_benchmark_runs_at_its_smoke_size(database_url: str, tmp_path: Path) -> None:
    out = _run("bench/audit/run.py", "--smoke", tmp_path=tmp_path, env={"BENCH_PG_URL": database_url})
    _has_lines(
        out,
        r"^design\s+hold\s+procs\s+events/s\s+vs 1 proc$",
        r"^chains\s+5ms\s+1\s",
        r"^chains\s+5ms\s+2\s",
        r"^global-lock\s+5ms\s+1\s",
        r"^global-lock\s+5ms\s+2\s",
        r"^2 processes, hold 5ms: chains / global lock = ",
        r"^verification: \d+ events in \d+ chains, 0 problems$",
    )


def test_capacity_benchmark_runs_at_its_smoke_size(database_url: str, tmp_path: Path) -> None:
    out = _run("bench/capacity/run.py", "--smoke", "--database-url", database_url, tmp_path=tmp_path)
    _has_lines(
        out,
        r"^Capacity: 2,000 studies, [\d,]+ instances in smoke_capacity_",
        r"^table\s+rows\s+heap\s+indexes\s+total\s+B/row\s+idx B/row$",
        *(rf"^{table}\s+[\d,]+\s" for table in ("archive_study", "archive_instance", "archive_copy")),
        r"^per study: [\d,]+ B of the archive's tables",
        r"^table\s+index\s+size\s+B/row$",
        r"^query\s+p50 ms\s+p95 ms\s+rows\s+buffers\s+indexes read",
        *(
            rf"^{re.escape(query)}\s+[\d.]+\s+[\d.]+\s"
            for query in (
                "PatientID",
                "StudyDate 1-31 days + CT, limit 100",
                "PatientName=ROSSI^MA*",
                "series of a study",
                "instances of a study (WADO-RS)",
                "instances of a study (C-MOVE)",
            )
        ),
        r"^--- plan: instances of a study \(WADO-RS\)$",
        r"^Lifecycle: the archive as the lifecycle leaves it \([\d,]+ long-term copies added",
        r"^lifecycle: instances to migrate\s+[\d.]+\s+[\d.]+\s",
        r"^lifecycle: copies to evict\s+[\d.]+\s+[\d.]+\s",
        r"^WADO-RS read \(per image\)\s+[\d,]+\s+[\d,]+\s+0\s+[\d,]+$",
        r"^search, 20 patients\s+[\d,]+\s+[\d,]+\s+[\d,]+\s+[\d,]+$",
        r"^The region: 1,200,000 inhabitants, 20 facilities, 10 years",
        r"^total\s+[\d,]+\s+[\d,]+\s",
        r"^\s+10\s+[\d,]+\s+[\d,]+\s",
        r"^work at peak\s+needs",
        r"^ingest, region\s+[\d,]+ inst/s",
        r"^audit events a year at these rates: [\d,]+ \([\d,]+ viewer openings, .*with every image audited",
        r"^  at [\d,]+ B per event, [\d,]+ per search: ",
    )


@pytest.mark.usefixtures("sqlite_template")
def test_ingest_benchmark_runs_at_its_smoke_size(database_url: str, tmp_path: Path) -> None:
    out = _run("bench/ingest/run.py", "--smoke", tmp_path=tmp_path, env={"BENCH_PG_URL": database_url})
    _has_lines(
        out,
        r"^Ingest benchmark: 4 CT instances",
        r"^target\s+mode\s+seconds\s+inst/s\s+MB/s\s+vs floor$",
        *(
            rf"^{target}\s+{mode}\s+\d"
            for target in ("floor", "sqlite", "postgresql", r"sqlite x\d+", r"postgresql x\d+")
            for mode in ("1 association", "4 associations")
        ),
        r"^sqlite x\d+\s+1 association \d+\.\d+ \((met|NOT met);",
        r"^postgresql x\d+\s+1 association \d+\.\d+ \((met|NOT met);",
    )


@pytest.mark.usefixtures("sqlite_template")
def test_lifecycle_benchmark_runs_at_its_smoke_size(tmp_path: Path) -> None:
    out = _run("bench/lifecycle/run.py", "--smoke", tmp_path=tmp_path)
    _has_lines(
        out,
        r"^3 objects, ",
        r"^filesystem$",
        r"^  floor: plain copy\s+\d",
        r"^  floor: plain copy \+ fsync\s+\d",
        r"^  migration \(verified, recorded\)\s+.*ratio to floor",
        r"^\s+ratio to the fsync floor ",
        r"^S3 \(moto server on 127.0.0.1\)$",
        r"^  floor: upload_file\s+\d",
    )
    assert out.count("migration (verified, recorded)") == 2, out


def test_portal_benchmark_runs_at_its_smoke_size(database_url: str, tmp_path: Path) -> None:
    out = _run("bench/portal/run.py", "--smoke", "--database-url", database_url, tmp_path=tmp_path)
    _has_lines(
        out,
        r"^Portal pages, 2 citizens at once",
        r"^think time\s+page\s+n\s+p50 ms\s+p95 ms\s+p99 ms\s+req/s\s+fails\s+goal p95\s+verdict$",
        *(rf"^{think}\s+{re.escape(page)}\s" for think in (r"0\.1-0\.2 s", "none") for page in PAGES),
        r"^\s+CPU \(cores busy of \d+\): gunicorn ",
        r"^What each page asks PostgreSQL",
        *(rf"^{re.escape(page)}: [\d.]+ statements per request" for page in PAGES),
    )


def test_query_benchmark_generates_and_runs_at_its_smoke_size(database_url: str, tmp_path: Path) -> None:
    out = _run("bench/query/generate.py", "--smoke", "--database-url", database_url, "--reset", tmp_path=tmp_path)
    _has_lines(out, r"^200 studies, 600 series, [\d,]+ instances")
    out = _run("bench/query/run.py", "--smoke", "--database-url", database_url, tmp_path=tmp_path)
    _has_lines(
        out,
        r"^--- PatientID: ",  # --explain
        r"^In the database: planning \+ execution",  # --sql
        r"^QIDO-RS over HTTP",
        r"^C-FIND \(raw SCU",
        r"^C-FIND \(pynetdicom SCU",
        r"^query\s+n\s+p50 ms\s+p95 ms\s+max ms\s+matches\s+goal p95\s+verdict$",
        r"^PatientName=\*OSS\*\^MA\* \(inner wildcards",
        r"^series of one study",
        r"^SERIES level, StudyInstanceUID=",
    )
    # The WADO-RS retrieve is bench/retrieve's (below): measured there only.
    assert "WADO-RS retrieve" not in out, out


# bench/region/run.py --smoke is run by tests/bench/test_region.py: the region test is that run.


def test_retrieve_benchmark_runs_at_its_smoke_size(database_url: str, tmp_path: Path) -> None:
    out = _run("bench/retrieve/run.py", "--smoke", "--database-url", database_url, tmp_path=tmp_path)
    _has_lines(
        out,
        r"^WADO-RS retrieve of a whole study",
        r"^study\s+MB\s+cache\s+floor MB/s\s+WADO MB/s\s+ratio\s+goal",
        r"^4 x CT_small \(39 KB\)\s+[\d.]+\s+cold\s+\d",
        r"^4 x CT 512x512 \(513 KB\)\s+[\d.]+\s+warm\s+\d",
        r"^On-demand WADO-RS rendered",
        r"^image\s+floor ms\s+server ms\s+ratio\s+requests ms$",
        r"^all \(4 images\)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+goal >= 0.5",
        r"^with requests as the client: ratio [\d.]+$",
        r"ms with http\.client, [\d.]+ ms with requests$",
    )
    assert "not measured" not in out and "FAILED" not in out, out


def test_render_benchmark_runs_at_its_smoke_size(tmp_path: Path) -> None:
    out = _run("bench/render/run.py", "--smoke", tmp_path=tmp_path)
    _has_lines(
        out,
        r"^Rendering benchmark: JPEG quality 90",
        r"^case\s+frames\s+MB/img\s+ours img/s\s+ours\s+isolated\s+naive\s+dcmj2pnm\s+ours/dcmtk\s+peak/img\s+verdict$",
        *(
            rf"^{case}\s+\d"
            for case in (
                "CT 512x512 16-bit",
                "MG 1024x832 MONOCHROME1",
                "US clip 2x640x480 JPEG",
                "JPEG baseline",
                "JPEG-LS lossless",
                "Deflated",
            )
        ),
        r"^goals: faster than dcmj2pnm on \d+ of the \d+ rows",
        r"^pydicom's bundled image files rendered \(frame 1\), of 4 with pixel data:$",
        *(rf"^  {who}\s+\d+ of 4$" for who in ("ours", "isolated", "naive", "dcmj2pnm")),
    )


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Chromium is not installed at /usr/bin/chromium")
@pytest.mark.usefixtures("sqlite_template")
def test_viewer_benchmark_runs_at_its_smoke_size(tmp_path: Path) -> None:
    out = _run("bench/viewer/run.py", "--smoke", tmp_path=tmp_path)
    _has_lines(
        out,
        r"^Diagnostic viewer, a CT of 20 slices 128x128 ",
        r"^measure\s+best\s+median\s+floor\s+ratio\s+goal$",
        r"^time to first image \(work list\)\s+\d+ms\s+\d+ms\s+\d+ms\s+[\d.]+\s+< 1000 ms$",
        r"^scroll 20 loaded slices\s+\d+ms",
        r"^  per slice\s+[\d.]+ms\s+[\d.]+ms\s+[\d.]+\s+ratio <= 1\s+\(\d+ slices/s\)$",
    )
