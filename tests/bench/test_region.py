"""A region in a box (issue 21): every process of a deployment on 127.0.0.1, loaded, broken half-way.

``bench/region/harness.py`` starts PostgreSQL's database of its own, Redis
queues of their own, a moto S3 server as the long-term tier, three listeners
(one per facility, ``PACS_DICOM_FACILITIES``), two gunicorn web processes, two
worker hosts (``alpha``: the ingest and lifecycle groups; ``beta``: the front
group and beat); eight modalities (DCMTK ``storescu``) send while readers
download whole studies over WADO-RS, two citizens download the DICOM package
of their exam through the portal (zipped by host beta's worker, checked
against the index) and the lifecycle migrates every instance to S3 and evicts
the facility copy; half-way host ``alpha``'s process group is
killed with SIGKILL and restarted, then one listener restarted (SIGTERM). The
benchmark (``bench/region/run.py``) runs the same, larger, and prints the
throughput of each part.

Skipped when PostgreSQL or Redis is not reachable on 127.0.0.1.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.region import run as region_bench
from bench.region.harness import services_reachable
from bench.region.seed import FACILITIES
from tests.bench.template import template_ready

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_a_region_loses_nothing_acknowledged_through_a_killed_worker_host_and_a_restarted_listener(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    why = services_reachable()
    if why:
        pytest.skip(why)
    # The box's database is a copy of the session's migrated template (tests/bench/template.py).
    monkeypatch.setenv("BENCH_PG_TEMPLATE", template_ready())
    # The benchmark's own smoke run (bench/region/run.py --smoke): one run is both the test and the
    # proof that the benchmark still runs. It exits 1 (SystemExit) when the verification finds anything,
    # with every process's log on stderr.
    outcome = region_bench.main(["--smoke", "--keep", str(tmp_path)])
    out = capsys.readouterr().out
    for line in (
        r"^Region in a box: 3 listeners, 2 web processes, 2 worker hosts; 8 modalities ",
        r"^part\s+count\s+seconds\s+per s\s+MB/s$",
        *(rf"^store {code}\s+\d+\s" for code in ("TS-CAT", "GO-SG", "MON-SP", "total")),
        r"^download \(WADO-RS study\)\s+\d+\s",
        r"^package \(portal DICOM zip\)\s+\d+\s",
        r"^citizens' packages, request to ready: median \d+\.\d s",
        r"^migrate to S3 \(verified\)\s+\d+\s",
        r"^drain after the kill \(",
        r"^drain after the last store ",
        r"^verification: every acknowledged instance indexed once, every copy verified, every queue drained, "
        r"every package ready and exact$",
    ):
        assert re.search(line, out, re.M), f"{line!r} not in:\n{out}"
    s = outcome.stats
    logs = "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
        for log in sorted((tmp_path / "logs").glob("*.log"))
    )
    # Every acknowledged instance indexed once, every copy of each on each tier hashed to the index,
    # every queue drained, nothing half-written, every download complete and byte-exact, every package
    # a citizen asked for ready, a valid zip with its DICOMDIR and every instance as the index records it.
    assert not outcome.problems, "\n".join(outcome.problems) + "\n" + logs[-20000:]
    # ... and the run did what it says: each facility's listener stored, through both faults.
    assert sorted(s.stored) == sorted(code for code, _name, _ae in FACILITIES), s.stored
    assert all(n > 0 for n in s.stored.values()), s.stored
    assert s.seeded > 0 and s.instances == sum(s.stored.values()) + s.seeded
    assert s.downloads > 0 and s.download_instances > 0
    assert s.packages > 0 and s.package_instances > 0
    assert s.listener_down_seconds > 0
    # The long-term tier took every instance, and reads went on after facility copies were evicted:
    # a citizen's package was zipped while its study was on S3 only.
    assert s.evicted > 0
    assert s.packages_longterm > 0
