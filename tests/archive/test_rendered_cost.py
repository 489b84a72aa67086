"""What one on-demand ``/rendered`` request costs the web process around the render: its SQL
statements (counted, so that a change adding one fails here) and its CPU time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests import dicomweb_helpers as helpers
from tests.dicomweb_helpers import ingest_files, uids

reader = helpers.reader


@pytest.fixture
def stored(region, ct_study: list[Path]) -> list[Path]:
    ingest_files(ct_study, region.facility)
    return ct_study


def _instance_url(path: Path) -> str:
    study, series, sop = uids(path)
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def test_rendered_instance_statements(client, stored, reader) -> None:
    url = _instance_url(stored[0]) + "/rendered"
    assert client.get(url, **reader.auth).status_code == 200  # warm: worker started, caches filled
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, **reader.auth)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    statements = [q["sql"] for q in queries.captured_queries]
    if os.environ.get("PACS_RENDERED_COST"):
        cpu = []
        for _ in range(int(os.environ["PACS_RENDERED_COST"])):
            start = time.process_time()
            client.get(url, **reader.auth)
            cpu.append(time.process_time() - start)
        print(f"\nstatements: {len(statements)}; CPU best {min(cpu) * 1000:.2f} ms, median {sorted(cpu)[len(cpu) // 2] * 1000:.2f} ms")
        for s in statements:
            print("  ", s[:160])
    assert len(statements) == 99, statements
