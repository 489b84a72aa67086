"""bench/query runs: generate a small archive and measure it, so that the benchmark cannot rot.

The figures are not checked (a benchmark asserts nothing); what is checked is
that generate.py still writes rows the models accept and that every query kind
of run.py answers, on a throw-away PostgreSQL database of 200 studies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

HOST, PORT = "127.0.0.1", 5432


def _admin() -> Any:
    import psycopg

    return psycopg.connect(host=HOST, port=PORT, user="postgres", dbname="postgres", autocommit=True, connect_timeout=3)


@pytest.fixture
def bench_database() -> Iterator[str]:
    """A database of its own (never test_*, which the suite owns), dropped afterwards."""
    try:
        _admin().close()
    except Exception as exc:
        pytest.skip(f"bench/query needs PostgreSQL on {HOST}:{PORT}: {exc}")
    name = f"pacs_bench_query_ci_{os.getpid()}"
    try:
        yield f"postgres://postgres@{HOST}:{PORT}/{name}"
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_the_query_benchmark_generates_and_runs_at_200_studies(bench_database: str) -> None:
    out = _run("bench/query/generate.py", "--studies", "200", "--database-url", bench_database, "--reset")
    assert "200 studies, 600 series" in out
    out = _run(
        "bench/query/run.py",
        "--database-url",
        bench_database,
        # Five rounds, none of warm-up: the slowest kind runs one round in five.
        "--repeat",
        "5",
        "--warmup",
        "0",
        "--skip-wado",
        "--min-studies",
        "100",
        "--strict",
    )
    assert "QIDO-RS over HTTP" in out and "C-FIND (pynetdicom SCU" in out
    assert "not measured" not in out
