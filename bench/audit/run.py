"""Audit benchmark: N processes writing audit events at once against one, events/s.

Each worker process sets Django up, writes one event (connection, key and
chain ready), says it is ready, and at the parent's signal writes ``--events``
events, each in a transaction of its own that stays open ``--hold-ms`` after
the event (a request whose work goes on after the audit row: the old global
lock was held until that commit). Two designs:

* ``chains``: ``kernel.audit.audit_record`` as it is (a chain per writer, no lock);
* ``global-lock``: the same behind one PostgreSQL advisory lock taken in the
  transaction, as every audited request did before (the ceiling this removes).

Prints events/s for 1..N processes and each figure's ratio to one process of
the same design, then verifies every chain written (``audit_verify``).
Default database: ``BENCH_PG_URL`` (``postgres://postgres@127.0.0.1:5432/pacs_bench_audit``),
created, migrated and dropped here; ``--database-url`` uses an existing,
migrated one (the test suite runs a small size on its own database).

Run: ``.venv/bin/python bench/audit/run.py [--events N] [--processes 1,2,4] [--hold-ms 0,5]``.
This is a benchmark: it asserts nothing. ``--smoke`` (5 events, 1 and 2 processes, hold 5 ms, both
designs) runs in seconds: the test suite runs it (``tests/bench/test_benchmarks.py``, with
``BENCH_PG_URL`` naming a throw-away database) so that the benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

DESIGNS = ("chains", "global-lock")
_LOCK_KEY = 0x50414353  # the constant the old audit_record locked on


@dataclass(frozen=True)
class Result:
    design: str
    hold_ms: float
    processes: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


# --- the worker process --------------------------------------------------------------------


def worker(events: int, hold_ms: float, design: str) -> None:
    import django

    django.setup()
    from django.db import connection, transaction

    from kernel.audit import audit_record

    def one(i: int) -> None:
        with transaction.atomic():
            if design == "global-lock":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
            audit_record(action="bench.audit", system="bench", detail={"i": i}, patients=[i % 97 + 1])
            if hold_ms:
                time.sleep(hold_ms / 1000)

    one(-1)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    start = time.perf_counter()
    for i in range(events):
        one(i)
    print(f"done {time.perf_counter() - start:.6f}", flush=True)


# --- the parent ----------------------------------------------------------------------------------


def measure(*, env: dict[str, str], processes: int, events: int, hold_ms: float, design: str) -> Result:
    """Start ``processes`` workers, wait until each is ready, start them together, time them all."""
    cmd = [sys.executable, __file__, "--worker", "--events", str(events), "--hold-ms", str(hold_ms)]
    procs = [
        subprocess.Popen(
            [*cmd, "--design", design],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            line = p.stdout.readline() if p.stdout else ""
            if line.strip() != "ready":
                raise RuntimeError(f"a worker did not start (exit {p.wait()})")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        # Each worker times its own events (not its start-up or exit); they
        # start together, so the slowest one's time is the run's.
        seconds = 0.0
        for p in procs:
            out, _ = p.communicate(timeout=600)
            if p.returncode != 0 or not out.startswith("done"):
                raise RuntimeError(f"a worker failed (exit {p.returncode}): {out}")
            seconds = max(seconds, float(out.split()[1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return Result(design, hold_ms, processes, processes * events, seconds)


def bench(
    *, env: dict[str, str], processes: list[int], events: int, hold_ms: list[float], designs: list[str]
) -> list[Result]:
    results = []
    for hold in hold_ms:
        for design in designs:
            for n in processes:
                results.append(measure(env=env, processes=n, events=events, hold_ms=hold, design=design))
    return results


def table(results: list[Result]) -> str:
    lines = [f"{'design':<12} {'hold':>6} {'procs':>5} {'events/s':>9} {'vs 1 proc':>9}"]
    for r in results:
        base = next(b for b in results if (b.design, b.hold_ms, b.processes) == (r.design, r.hold_ms, 1))
        lines.append(f"{r.design:<12} {r.hold_ms:>4.0f}ms {r.processes:>5} {r.rate:>9.0f} {r.rate / base.rate:>8.2f}x")
    top = max(r.processes for r in results)
    for hold in sorted({r.hold_ms for r in results}):
        by = {r.design: r for r in results if r.hold_ms == hold and r.processes == top}
        if len(by) == 2:
            lines.append(
                f"{top} processes, hold {hold:.0f}ms: chains / global lock = "
                f"{by['chains'].rate / by['global-lock'].rate:.2f}x"
            )
    return "\n".join(lines)


def _psql(url: str, sql: str) -> None:
    u = urlparse(url)
    admin = u._replace(path="/postgres").geturl()
    subprocess.run(["psql", admin, "-q", "-c", sql], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--design", default="chains", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=500, help="events per process")
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--hold-ms", default="0,5", help="milliseconds each transaction stays open after its event")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--database-url", help="an existing, migrated database (not dropped)")
    parser.add_argument("--smoke", action="store_true", help="every size at its smallest, in seconds (the test suite)")
    args = parser.parse_args()
    if args.worker:
        worker(args.events, float(args.hold_ms), args.design)
        return
    if args.smoke:
        # A few events; one process and two (the ratio's base and a contended run); a hold,
        # so that the transaction stays open as at full size; both designs.
        args.events, args.processes, args.hold_ms, args.designs = 5, "1,2", "5", ",".join(DESIGNS)

    var = tempfile.mkdtemp(prefix="pacs-bench-audit-")
    url = args.database_url or os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/pacs_bench_audit")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PACS_VAR_DIR": var,
        "PACS_AUDIT_KEY_FILE": os.environ.get("PACS_AUDIT_KEY_FILE", str(Path(var) / "audit.key")),
    }
    created = not args.database_url
    if created:
        name = urlparse(url).path.lstrip("/")
        _psql(url, f'DROP DATABASE IF EXISTS "{name}"')
        from bench.common import database_template

        template = database_template()
        _psql(url, f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)
    try:
        designs = [d for d in args.designs.split(",") if d]
        if not url.startswith("postgres"):
            designs = [d for d in designs if d != "global-lock"]  # SQLite's write lock is already global
        results = bench(
            env=env,
            processes=[int(n) for n in args.processes.split(",")],
            events=args.events,
            hold_ms=[float(h) for h in args.hold_ms.split(",")],
            designs=designs,
        )
        print(table(results))
        os.environ.update(env)
        import django

        django.setup()
        from kernel.audit import audit_verify

        report = audit_verify()
        print(f"verification: {report.events} events in {report.chains} chains, {len(report.problems)} problems")
    finally:
        if created:
            from django.db import connections

            connections.close_all()
            _psql(url, f'DROP DATABASE IF EXISTS "{urlparse(url).path.lstrip("/")}"')
        shutil.rmtree(var, ignore_errors=True)  # the generated audit key; run after run (the test suite's)


if __name__ == "__main__":
    main()
