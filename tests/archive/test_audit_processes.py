"""Audit writers in several processes at once: each writes a chain of its own, all
verify, and on PostgreSQL they scale where the old global lock did not
(``bench/audit/run.py`` at a small size, on the test database)."""

from __future__ import annotations

import pytest
from django.db import connection

from archive.audit import audit_verify
from archive.models import AuditEvent, AuditEventPatient
from bench.audit.run import bench, table

pytestmark = pytest.mark.slow

EVENTS = 12


def test_concurrent_processes_write_chains_that_all_verify_and_scale(process_env: dict[str, str]) -> None:
    postgresql = connection.vendor == "postgresql"
    # Each transaction stays open 100 ms after its event, as a slow request's would:
    # the old lock was held that long, so one process at a time could write
    # (long enough that this shared, busy machine's CPU is not what is measured).
    hold = 100.0 if postgresql else 0.0
    designs = ["chains", "global-lock"] if postgresql else ["chains"]
    results = bench(env=process_env, processes=[1, 3], events=EVENTS, hold_ms=[hold], designs=designs)
    print("\n" + table(results))
    workers = sum(r.processes for r in results)
    # Each worker wrote one warm-up event, then EVENTS events, all in one chain.
    assert AuditEvent.objects.count() == workers * (EVENTS + 1)
    assert AuditEventPatient.objects.count() == workers * (EVENTS + 1)
    report = audit_verify()
    assert report.ok, [str(p) for p in report.problems]
    assert report.chains == workers
    if postgresql:
        rate = {(r.design, r.processes): r.rate for r in results}
        assert rate[("chains", 3)] > 1.3 * rate[("chains", 1)], table(results)
        assert rate[("chains", 3)] > 1.3 * rate[("global-lock", 3)], table(results)
