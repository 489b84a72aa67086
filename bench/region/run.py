"""Region benchmark: a whole region on one machine, and the throughput of each part.

Starts the region in a box (``harness.py``: PostgreSQL, Redis, a moto S3 server
as the long-term tier, three listeners for three facilities, two gunicorn web
processes, two worker hosts with the queues split as ``deploy/worker/`` splits
them, Celery beat), sends from eight modalities (DCMTK ``storescu``, a study per
association) for ``--seconds`` while readers download whole studies over WADO-RS,
citizens download the DICOM package of their exam through the portal (log in,
request, wait for the ``portal`` queue's worker on host ``beta`` to zip it,
download, check every member against the index) and the lifecycle migrates
every instance to S3 and evicts the facility copies; kills worker host ``alpha``
(ingest and lifecycle) with SIGKILL half-way and restarts it, restarts one
listener; waits for the region to drain; verifies every acknowledged instance
and every copy (the run fails, exit 1, when anything is wrong); and prints:

* instances/s and MB/s stored per listener and in total (over the sending time,
  the faults included);
* downloads/s, instances/s and MB/s served by the web processes;
* the citizens' packages: packages/s and MB/s downloaded, the median time from
  the request to "ready" (the worker's queue and zip), how many were built
  while the study was on S3 only;
* migrations/s to S3 (verified copies, from the first to the last);
* the time to drain after the kill (from host ``alpha``'s restart until the
  backlog, the dead host's unacknowledged messages included, is back to its
  level before the kill) and after the last store (to every instance on S3,
  every queue empty).

Run: ``.venv/bin/python bench/region/run.py [--seconds 180] [--modalities 8] [--citizens 4]``;
``--smoke`` is the suite's run (``tests/bench/test_region.py``, which is also this benchmark's smoke test);
``--keep DIR`` keeps the logs of every process in DIR.
Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres), Redis
(``REGION_REDIS_URL``, default db 5) and DCMTK. Asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.region.harness import Outcome, Size, region_run, services_reachable, work_dir  # noqa: E402

# The suite's size (``tests/bench/test_region.py`` runs ``main(["--smoke", ...])``: the region test and
# this benchmark's smoke run are one run): eight modalities for 30 s (longer when the restarts are slow:
# the faults always happen while they send), a study of 4 images every 2 s or so from each; two citizens
# (one per web process) downloading the package of a study of 6 images, a second apart.
SMOKE = Size(
    modalities=8,
    send_seconds=30.0,
    images_per_study=4,
    study_pause=2.0,
    readers=2,
    citizens=2,
    citizen_images=6,
    citizen_pause=1.0,
    worker_down_seconds=5.0,
)


def report(outcome: Outcome, size: Size) -> None:
    s = outcome.stats
    mb = 1024 * 1024
    print(
        f"Region in a box: 3 listeners, 2 web processes, 2 worker hosts; {size.modalities} modalities "
        f"for {s.send_seconds:.0f} s, {size.readers} readers, {size.citizens} citizens; {s.instances} instances"
    )
    print(f"{'part':<34}{'count':>8}{'seconds':>9}{'per s':>9}{'MB/s':>8}")
    for code in sorted(s.stored):
        n, b = s.stored[code], s.stored_bytes.get(code, 0)
        print(
            f"{'store ' + code:<34}{n:>8}{s.send_seconds:>9.1f}{n / s.send_seconds:>9.1f}{b / mb / s.send_seconds:>8.2f}"
        )
    n, b = sum(s.stored.values()), sum(s.stored_bytes.values())
    print(f"{'store total':<34}{n:>8}{s.send_seconds:>9.1f}{n / s.send_seconds:>9.1f}{b / mb / s.send_seconds:>8.2f}")
    wall = s.send_seconds
    print(
        f"{'download (WADO-RS study)':<34}{s.downloads:>8}{wall:>9.1f}{s.downloads / wall:>9.1f}{s.download_bytes / mb / wall:>8.2f}"
    )
    print(f"{'  instances downloaded':<34}{s.download_instances:>8}{wall:>9.1f}{s.download_instances / wall:>9.1f}")
    # The citizens' own time: after the sending, each waits for its study to be evicted (see citizen_run).
    cit = s.citizen_seconds or float("nan")
    print(
        f"{'package (portal DICOM zip)':<34}{s.packages:>8}{cit:>9.1f}{s.packages / cit:>9.2f}{s.package_bytes / mb / cit:>8.2f}"
    )
    print(f"{'  instances in packages':<34}{s.package_instances:>8}{cit:>9.1f}{s.package_instances / cit:>9.1f}")
    secs = s.migrate_seconds or float("nan")
    print(f"{'migrate to S3 (verified)':<34}{s.instances:>8}{secs:>9.1f}{s.instances / secs:>9.1f}")
    print(f"{'evicted from the facility tier':<34}{s.evicted:>8}")
    print(f"{'resent (not acknowledged)':<34}{s.retried:>8}")
    drain = "never" if s.worker_drain_seconds is None else f"{s.worker_drain_seconds:.1f} s"
    print(f"drain after the kill (restart to the backlog before it): {drain}; backlog peak {s.backlog_peak} messages")
    print(f"drain after the last store (to all on S3, queues empty): {s.final_drain_seconds:.1f} s")
    print(f"listener restart (SIGTERM to ready again): {s.listener_down_seconds:.1f} s")
    if s.package_ready:
        print(
            f"citizens' packages, request to ready: median {statistics.median(s.package_ready):.1f} s, "
            f"max {max(s.package_ready):.1f} s; {s.packages_longterm} of {s.packages} asked for while "
            "the study was on S3 only"
        )
    if outcome.problems:
        print(f"verification: {len(outcome.problems)} problems")
        for problem in outcome.problems:
            print(f"  {problem}")
    else:
        print(
            "verification: every acknowledged instance indexed once, every copy verified, every queue drained, "
            "every package ready and exact"
        )


def main(argv: list[str] | None = None) -> Outcome:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the modalities send")
    parser.add_argument("--modalities", type=int, default=8)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--citizens", type=int, default=4, help="citizens downloading their exam's DICOM package")
    parser.add_argument("--citizen-images", type=int, default=100, help="images in each citizen's study (~39 KB)")
    parser.add_argument("--images", type=int, default=20, help="images per study")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers per web process")
    parser.add_argument("--smoke", action="store_true", help="a short run, for the test suite")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (logs of every process)")
    args = parser.parse_args(argv)
    size = (
        SMOKE
        if args.smoke
        else Size(
            modalities=args.modalities,
            send_seconds=args.seconds,
            images_per_study=args.images,
            readers=args.readers,
            citizens=args.citizens,
            citizen_images=args.citizen_images,
            web_workers=args.web_workers,
            drain_timeout=600.0,
        )
    )
    why = services_reachable()
    if why:
        sys.exit(why)
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} before the run", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with work_dir(args.keep) as work:
        outcome = region_run(size, work, log=lambda m: print(m, file=sys.stderr, flush=True))
        report(outcome, size)
        print(f"(whole run {time.monotonic() - t0:.0f} s)", file=sys.stderr)
        if outcome.problems:
            for log in sorted((work / "logs").glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            sys.exit(1)
    return outcome


if __name__ == "__main__":
    main()
