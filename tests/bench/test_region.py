"""A region in a box (issue 21): every process of a deployment on 127.0.0.1, loaded, broken half-way.

``bench/region/harness.py`` starts PostgreSQL's database of its own, Redis
queues of their own, a moto S3 server as the long-term tier, three listeners
(one per facility, ``PACS_DICOM_FACILITIES``), two gunicorn web processes, two
worker hosts (``alpha``: the ingest and lifecycle groups; ``beta``: the front
group and beat); eight modalities (DCMTK ``storescu``) send while readers
download whole studies over WADO-RS and the lifecycle migrates every instance
to S3 and evicts the facility copy; half-way host ``alpha``'s process group is
killed with SIGKILL and restarted, then one listener restarted (SIGTERM). The
benchmark (``bench/region/run.py``) runs the same, larger, and prints the
throughput of each part.

Skipped when PostgreSQL or Redis is not reachable on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.region.harness import Size, region_run, services_reachable
from bench.region.seed import FACILITIES

pytestmark = pytest.mark.slow

# Short enough for the suite on the 2-core machine: 30 s of sending (longer when the restarts are
# slow: the faults always happen while the modalities send), a study of 4 images every 2 s or so
# from each modality; the benchmark sends back to back.
SIZE = Size(modalities=8, send_seconds=30.0, images_per_study=4, study_pause=2.0, readers=2, worker_down_seconds=5.0)


@pytest.mark.timeout(900)
def test_a_region_loses_nothing_acknowledged_through_a_killed_worker_host_and_a_restarted_listener(
    tmp_path: Path,
) -> None:
    why = services_reachable()
    if why:
        pytest.skip(why)
    outcome = region_run(SIZE, tmp_path, log=print)
    s = outcome.stats
    logs = "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
        for log in sorted((tmp_path / "logs").glob("*.log"))
    )
    # Every acknowledged instance indexed once, every copy of each on each tier hashed to the index,
    # every queue drained, nothing half-written, every download complete and byte-exact.
    assert not outcome.problems, "\n".join(outcome.problems) + "\n" + logs[-20000:]
    # ... and the run did what it says: each facility's listener stored, through both faults.
    assert sorted(s.stored) == sorted(code for code, _name, _ae in FACILITIES), s.stored
    assert all(n > 0 for n in s.stored.values()), s.stored
    assert s.instances == sum(s.stored.values())
    assert s.downloads > 0 and s.download_instances > 0
    assert s.listener_down_seconds > 0
    # The long-term tier took every instance, and reads went on after facility copies were evicted.
    assert s.evicted > 0
