"""Audit writers in several processes at once: each writes a chain of its own, all
verify, and on PostgreSQL they scale where the old global lock did not
(``bench/audit/run.py`` at a small size, on the test database); a process killed
in the middle of a transaction leaves a chain that verifies."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from django.db import connection

from bench.audit.run import bench, table
from kernel.audit import audit_verify
from kernel.models import AuditEvent, AuditEventPatient
from tests.conftest import REPO

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


CRASH = """
import os, signal
from django.db import transaction
from kernel.audit import audit_record
for i in range(3):
    audit_record(action="test.crash.committed", system="pytest")
with transaction.atomic():
    audit_record(action="test.crash.lost", system="pytest")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_crashed_process_leaves_a_chain_that_verifies_and_the_next_starts_another(
    process_env: dict[str, str],
) -> None:
    cmd = [sys.executable, "manage.py", "shell", "-c", CRASH]
    crashed = subprocess.run(cmd, cwd=REPO, env=process_env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert not AuditEvent.objects.filter(action="test.crash.lost").exists()
    after_crash = "from kernel.audit import audit_record; audit_record(action='test.after', system='pytest')"
    again = subprocess.run(
        [*cmd[:-1], after_crash], cwd=REPO, env=process_env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    crashed_chain = set(AuditEvent.objects.filter(action="test.crash.committed").values_list("chain", flat=True))
    after = AuditEvent.objects.get(action="test.after")
    assert len(crashed_chain) == 1 and after.chain not in crashed_chain and after.seq == 1
    report = audit_verify()
    assert report.ok, [str(p) for p in report.problems]
    assert (report.events, report.chains) == (4, 2)
