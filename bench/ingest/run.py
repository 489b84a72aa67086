"""Ingest benchmark: DCMTK storescu -> our listener (SQLite, PostgreSQL) and the Python floor.

Sends N generated CT instances (default 1,000, CT_small copies of 39 KB) over
one association, then over four concurrent associations (four storescu
processes), to:

* the bare pynetdicom SCP that only writes and fsyncs each file (the floor);
* our ``dicom_listener`` on SQLite (the embedded default);
* our ``dicom_listener`` on PostgreSQL (``BENCH_PG_URL``, default
  ``postgres://postgres@127.0.0.1:5432/pacs_bench``, created and dropped here);
* the same two with ``--processes N`` (``sqlite xN``, ``postgresql xN``; N is
  ``--processes``, default one per CPU), on the same databases: issue 21's goals
  are 1 association >= 0.9 and 4 associations >= 1.3 of the floor.

Prints instances/s and MB/s for each (the best of ``--repeat`` runs, each on
freshly generated instances: this machine is shared and noisy), and our
listener's ratio to the floor. For the best run of each it also prints the CPU
each instance cost the server (all its processes), the storescu clients and the
whole machine (``/proc/stat``: the database and the kernel's work too), and the
rate at which the machine's cores would be full at that cost: on a small machine
the clients and the database share the cores with the listener, and that rate
is a ceiling no listener can pass.
Run: ``.venv/bin/python bench/ingest/run.py [--instances N] [--repeat R] [--skip-pg] [--processes N]``.
This is a benchmark, not a test: it asserts nothing. ``--smoke`` (4 instances, one run: one
instance per association of the four) runs every target in seconds: the test suite runs it
(``tests/bench/test_benchmarks.py``, with ``BENCH_PG_URL`` naming a throw-away database) so that
the benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

from bench.common import (  # noqa: E402
    CLK_TCK,
    database_template,
    machine_busy_ticks,
    process_ticks,
    sqlite_from_template,
)

PYTHON = sys.executable
DATABASE_PREPARE = (
    "import django; django.setup(); from django.core.management import call_command; "
    "call_command('migrate', verbosity=0); from archive.demo import demo_region_load; demo_region_load()"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generate(dest: Path, count: int, folders: int) -> int:
    """Write ``count`` fresh CT instances split over ``folders`` folders; return total bytes."""
    from archive.sample_data import PatientInfo, write_study

    per = count // folders
    total = 0
    for i in range(folders):
        paths = write_study(
            dest / f"a{i}", patient=PatientInfo(patient_id=f"BENCH{i}"), series=1, instances_per_series=per
        )
        total += sum(p.stat().st_size for p in paths)
    return total


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        # echoscu, not a bare connect: a bare connection would hold an association slot.
        done = subprocess.run(
            ["echoscu", "-aet", "STORESCU", "-aec", "TSCAT_PACS", "127.0.0.1", str(port)],
            capture_output=True,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        if done.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError("server did not answer C-ECHO")


def send(port: int, folders: list[Path], aet: str) -> float:
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aet", "STORESCU", "-aec", aet, "127.0.0.1", str(port), "+sd", str(folder)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for folder in folders
    ]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"storescu failed: {p.stderr.read().decode() if p.stderr else ''}")
    return time.perf_counter() - start


def start_floor(work: Path) -> tuple[int, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, str(REPO / "bench/ingest/floor_scp.py"), str(port), str(work / "floor-out")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
    except BaseException:
        stop(proc)
        raise
    return port, proc


def listener_env(work: Path, database_url: str | None) -> dict[str, str]:
    env = {**os.environ, "PACS_VAR_DIR": str(work / "var"), "LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    else:
        env.pop("DATABASE_URL", None)
    return env


def prepare(work: Path, database_url: str | None) -> None:
    """Migrated, then the demo region only (its facilities accept STORESCU), in one process:
    load_demo's accounts (a password hash each) and studies take seconds and are not what
    is measured. The single- and the multi-process listener share the database (they never
    receive at the same time)."""
    env = listener_env(work, database_url)
    if not database_url:
        sqlite_from_template(work / "var" / "pacs.sqlite3")  # settings.SQLITE_PATH
    subprocess.run([PYTHON, "-c", DATABASE_PREPARE], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def start_listener(work: Path, database_url: str | None, processes: int = 1) -> tuple[int, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", str(port)]
        + ["--processes", str(processes)],
        cwd=REPO,
        env=listener_env(work, database_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
    except BaseException:
        stop(proc)
        raise
    return port, proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a minute (the listener's grace and hard deadline are 10 and 30 s):
    a server that does not stop must not hang the benchmark, nor the test suite's smoke run."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        print(f"{proc.args[1:3]} did not stop within 60 s of SIGTERM: killed", file=sys.stderr, flush=True)
        proc.kill()
        proc.wait()


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command name) of every process."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm, rest = (entry / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            found.append((int(entry.name), int(rest.split()[1]), comm.split("(", 1)[1]))
    return found


def cpu_sample(server_pid: int) -> dict[str, float]:
    """CPU seconds so far of the server (its process and its children: a pre-forked listener),
    of this process's reaped children (the storescu clients, once waited for) and of the whole
    machine (the database's backends, which come and go with the associations, and the kernel's
    own work are in it: what is left once the other two are taken out)."""
    procs = _processes()
    tree = {server_pid}
    for _ in range(3):
        tree |= {pid for pid, ppid, _ in procs if ppid in tree}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "server": sum(process_ticks(pid) for pid in tree) / CLK_TCK,
        "clients": children.ru_utime + children.ru_stime,
        "machine": machine_busy_ticks() / CLK_TCK,
    }


def pg_database(url: str, action: str) -> None:
    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    args = ["-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 5432), "-U", parsed.username or "postgres"]
    subprocess.run(["dropdb", "--if-exists", *args, name], check=True)
    if action == "create":
        template = database_template()
        subprocess.run(["createdb", *args, *(["--template", template] if template else []), name], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the best is kept")
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument(
        "--processes", type=int, default=0, help="the multi-process listener's processes (default: one per CPU)"
    )
    parser.add_argument("--smoke", action="store_true", help="every size at its smallest, in seconds (the test suite)")
    args = parser.parse_args()
    if args.smoke:
        # One instance for each of the four associations; every target, one run.
        args.instances, args.repeat = 4, 1
    if shutil.which("storescu") is None:
        sys.exit("DCMTK's storescu is needed: apt-get install dcmtk")

    import django

    django.setup()
    from archive.dicomnet.prefork import processes_default

    pg_url = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/pacs_bench")
    procs_n = args.processes or processes_default()
    multi = f" x{procs_n}"  # the multi-process listener's targets: "sqlite x2"
    databases = ["sqlite"] + ([] if args.skip_pg else ["postgresql"])
    targets = ["floor"] + [t for db in databases for t in (db, db + multi)]
    modes = {"1 association": 1, "4 associations": 4}
    results: dict[str, dict[str, float]] = {t: {} for t in targets}
    # CPU milliseconds per instance of the best run, by part: what caps the rate on this machine's cores.
    cpu: dict[str, dict[str, dict[str, float]]] = {t: {} for t in targets}
    size = 0
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        root = Path(tmp)
        try:
            if "postgresql" in databases:
                pg_database(pg_url, "create")
            urls = {"sqlite": None, "postgresql": pg_url}

            def start(target: str) -> tuple[int, subprocess.Popen]:
                if target == "floor":
                    return start_floor(root / "floor")
                db = target.split()[0]
                return start_listener(root / db, urls[db], procs_n if target.endswith(multi) else 1)

            # Side by side: migrating each database is most of a small run's time.
            with ThreadPoolExecutor(len(databases)) as pool:
                for done in [pool.submit(prepare, root / db, urls[db]) for db in databases]:
                    done.result()
            with ThreadPoolExecutor(len(targets)) as pool:
                started = {target: pool.submit(start, target) for target in targets}
            ports, pids = {}, {}
            for target, future in started.items():
                if future.exception() is None:
                    ports[target], proc = future.result()
                    pids[target] = proc.pid
                    procs.append(proc)
            for future in started.values():
                future.result()  # the first failure, once every server that started is in procs
            # Interleaved, so that the machine's ups and downs fall on every target alike.
            for r in range(args.repeat):
                for mode, folders in modes.items():
                    for target in targets:
                        dest = root / "data" / f"{r}-{mode.replace(' ', '-')}-{target.replace(' ', '')}"
                        size = generate(dest, args.instances, folders)
                        print(f"run {r + 1}/{args.repeat}: {target}, {mode}", file=sys.stderr, flush=True)
                        before = cpu_sample(pids[target])
                        seconds = send(ports[target], sorted(dest.iterdir()), "TSCAT_PACS")
                        after = cpu_sample(pids[target])
                        if seconds <= results[target].get(mode, seconds):
                            results[target][mode] = seconds
                            cpu[target][mode] = {k: (after[k] - before[k]) * 1000 / args.instances for k in after}
                        shutil.rmtree(dest)
        finally:
            for proc in procs:
                stop(proc)
            if "postgresql" in databases:
                pg_database(pg_url, "drop")

    n = args.instances
    print(
        f"\nIngest benchmark: {n} CT instances (CT_small, 39 KB) sent by DCMTK storescu over loopback, "
        f"best of {args.repeat}"
    )
    print(f"{'target':<14}{'mode':<17}{'seconds':>9}{'inst/s':>9}{'MB/s':>8}{'vs floor':>10}")
    for target in targets:
        for mode, seconds in results[target].items():
            rate = n / seconds
            mbps = size / seconds / 1e6
            floor_rate = n / results["floor"][mode]
            ratio = "" if target == "floor" else f"{rate / floor_rate:.2f}"
            print(f"{target:<14}{mode:<17}{seconds:>9.2f}{rate:>9.0f}{mbps:>8.1f}{ratio:>10}")
    cores = os.cpu_count() or 1
    print(
        "\nCPU per instance (ms) in the best run: the server (all its processes), the storescu clients, the rest"
        "\n(the database, the kernel, anything else running), the machine in all, and the rate at which that"
        f"\nmachine's {cores} cores would be full"
    )
    print(f"{'target':<14}{'mode':<17}{'server':>8}{'clients':>9}{'rest':>7}{'machine':>9}{'cap inst/s':>12}")
    for target in targets:
        for mode, part in cpu[target].items():
            machine = part["machine"]
            rest = max(0.0, machine - part["server"] - part["clients"])
            cap = cores * 1000 / machine if machine else float("inf")
            print(
                f"{target:<14}{mode:<17}{part['server']:>8.2f}{part['clients']:>9.2f}{rest:>7.2f}{machine:>9.2f}"
                f"{cap:>12.0f}"
            )
    # Issue 21's goals for the listener of several processes, against the floor of the same run.
    print(f"\nthe listener of {procs_n} processes against the floor (goals: 1 association >= 0.9, 4 >= 1.3):")
    for db in databases:
        ratios = []
        for mode, goal in (("1 association", 0.9), ("4 associations", 1.3)):
            to_floor = results["floor"][mode] / results[db + multi][mode]
            to_single = results[db][mode] / results[db + multi][mode]
            met = "met" if to_floor >= goal else "NOT met"
            ratios.append(f"{mode} {to_floor:.2f} ({met}; {to_single:.2f}x one process)")
        print(f"{db + multi:<14}{', '.join(ratios)}")


if __name__ == "__main__":
    main()
