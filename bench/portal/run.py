"""Portal benchmark, part 1: latency of "my exams" and of the exam page under 20 citizens at once.

One command: seeds the database when it is empty (``seed.py``: 10,000
citizens, 50,000 exams on PostgreSQL), installs locust into a venv of its own
when missing (``var/bench/locust-venv``, from ``requirements.txt`` here),
starts gunicorn as the Procfile does (``pacs.wsgi --workers 2 --threads 4``,
DEBUG off, ``SECURE_COOKIES=0``, ``PACS_VAR_DIR`` in a temporary folder),
runs locust headless (``locustfile.py``: each user logs in as another
citizen through the form, then alternates /fse/ and /fse/esami/<pk>/ of its
own exams) once per think time asked, prints p50/p95/p99 and requests/s per
page and where the machine's CPU went, and stops everything.

Then (``--skip-queries`` to leave it out) it opens both pages in this process
with Django's test client for a sample of citizens and prints, per page, the
statements it sends (count, mean milliseconds) and the time in the database:
the place to look when a page is slow.

Requests made while the users are still logging in, or in the first
``--warmup`` seconds, are not counted.

Run: ``.venv/bin/python bench/portal/run.py [--users 20] [--duration 60] [--think 1-3 0]``.
This is a benchmark, not a test: it asserts nothing. The machine should be
otherwise idle: the CPU table says how much went to other processes.
``--smoke`` seeds 12 citizens and 40 exams (give it a database of its own with
``--database-url``), runs 2 users for 4 s per think time (``0.1-0.2`` and none)
against one worker and the statement report for 2 citizens, keeps its citizens'
sample and logs in its temporary folder, and exits 1 when a page failed or was
never requested: the test suite runs it (``tests/bench/test_benchmarks.py``) so
that the benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

from bench.common import CLK_TCK, machine_busy_ticks, process_ticks, server_env  # noqa: E402
from bench.portal.seed import CITIZENS_FILE, DEFAULT_URL, WORK_DIR  # noqa: E402

PYTHON = sys.executable
BIN = Path(PYTHON).parent
LOCUST_VENV = REPO / "var" / "bench" / "locust-venv"
PAGES = ["/fse/ (my exams)", "/fse/esami/<pk>/ (exam)"]
GOAL_P95_MS = 100.0


# --- preparation ---------------------------------------------------------------------


def locust_bin() -> Path:
    """locust beside this Python (requirements-test.txt pins it, for the smoke run), else from
    its own venv, made from requirements.txt when missing."""
    beside = BIN / "locust"
    if beside.exists():
        return beside
    exe = LOCUST_VENV / "bin" / "locust"
    if not exe.exists():
        print(f"installing locust into {LOCUST_VENV}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LOCUST_VENV)], check=True)
        subprocess.run(
            [str(LOCUST_VENV / "bin" / "pip"), "install", "-q", "-r", str(HERE / "requirements.txt")], check=True
        )
    return exe


def database_ready(url: str, *, citizens: int, exams: int, citizens_file: Path = CITIZENS_FILE) -> None:
    """Create, migrate and seed the database when it holds no bookings; write citizens.json when missing."""
    from django.core.management import call_command

    from bench.query.generate import database_prepare

    database_prepare(url, reset=False)
    import django

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)  # the checkout may have new migrations
    from bench.portal import seed as seed_module
    from booking.models import Booking

    if not Booking.objects.exists():
        print("seeding (about a minute)", file=sys.stderr, flush=True)
        seed_module.seed(citizens=citizens, exams=exams, seed_value=20261129, citizens_file=citizens_file)
    elif not citizens_file.exists():
        seed_module.citizens_write(path=citizens_file)


# --- gunicorn ------------------------------------------------------------------------


def _wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 60) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = regex.search(text)
        if found:
            return found
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"no line matching {pattern!r} in {log} after {timeout} s")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Web:
    proc: subprocess.Popen
    port: int
    log: Path

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def web_start(env: dict[str, str], logs: Path, *, workers: int, threads: int) -> Web:
    """gunicorn as the Procfile's ``web`` line, on a free port."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "gunicorn.log"
    proc = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "pacs.wsgi",
            "--config",
            "python:pacs.gunicorn_conf",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--access-logfile",
            str(logs / "access.log"),
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        port = int(_wait_for_line(log, r"Listening at: http://127\.0\.0\.1:(\d+)", proc).group(1))
        _wait_for_line(log, r"Booting worker with pid", proc)
        _http_ok(f"http://127.0.0.1:{port}/fse/accesso/")
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return Web(proc, port, log)


def _http_ok(url: str, timeout: float = 60) -> None:
    """Wait until ``url`` answers 200 (the workers have loaded Django)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.2)


# --- CPU accounting ------------------------------------------------------------------


def _postgres_ticks() -> dict[int, int]:
    out = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "postgres":
                pid = int(comm.parent.name)
                out[pid] = process_ticks(pid)
        except (OSError, ValueError):
            continue
    return out


class CpuWatch:
    """Where the machine's CPU went between start and stop: gunicorn, PostgreSQL, locust, the rest."""

    def __init__(self, web: Web) -> None:
        self.web = web
        self.t0 = time.monotonic()
        self.total0 = machine_busy_ticks()
        self.web0 = {pid: process_ticks(pid) for pid in [web.proc.pid, *web.workers()]}
        self.pg0 = _postgres_ticks()
        self.children0 = resource.getrusage(resource.RUSAGE_CHILDREN)

    def stop(self) -> dict[str, float]:
        """Seconds of CPU per part over the wall seconds (1.0 = one core busy)."""
        wall = time.monotonic() - self.t0
        total = (machine_busy_ticks() - self.total0) / CLK_TCK
        web = sum(process_ticks(pid) - self.web0.get(pid, 0) for pid in [self.web.proc.pid, *self.web.workers()])
        pg = sum(t - self.pg0.get(pid, 0) for pid, t in _postgres_ticks().items())
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        locust = (ru.ru_utime + ru.ru_stime) - (self.children0.ru_utime + self.children0.ru_stime)
        parts = {"gunicorn": web / CLK_TCK, "postgres": pg / CLK_TCK, "locust": locust}
        parts["other"] = max(0.0, total - sum(parts.values()))
        return {k: v / wall for k, v in parts.items()} | {"cores": os.cpu_count() or 1}


# --- locust --------------------------------------------------------------------------


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


@dataclass
class Phase:
    think: str
    rows: dict[str, tuple[int, float, float, float, float, int]]  # n, p50, p95, p99, req/s, failures
    window: float
    login_ms: float
    cpu: dict[str, float]
    error: str = ""
    requested: dict[str, int] = field(default_factory=dict)  # per page, the warm-up's and the logins' time too


def locust_phase(web: Web, work: Path, *, users: int, duration: int, warmup: int, think: str, citizens: Path) -> Phase:
    timings_file = work / f"timings-{think}.json"
    env = {
        **os.environ,
        "BENCH_PORTAL_CITIZENS": str(citizens),
        "BENCH_PORTAL_THINK": think,
        "BENCH_PORTAL_TIMINGS": str(timings_file),
    }
    cmd = [
        str(locust_bin()),
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{duration + warmup}s",
        "--host",
        f"http://127.0.0.1:{web.port}",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "10",
    ]
    log = work / f"locust-{think}.log"
    start = time.time()
    watch = CpuWatch(web)
    with log.open("wb") as out:
        proc = subprocess.run(cmd, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT)
    cpu = watch.stop()
    if not timings_file.exists():
        return Phase(think, {}, 0, 0, cpu, f"locust exited {proc.returncode}: {log.read_text()[-1500:]}")
    timings: list[list[Any]] = json.loads(timings_file.read_text())
    logins = [t for t in timings if t[1] == "login"]
    logins_done = max((t[0] + t[2] / 1000 for t in logins), default=start)
    begin = max(start + warmup, logins_done)
    kept = [t for t in timings if t[0] >= begin and t[1] in PAGES]
    end = max((t[0] + t[2] / 1000 for t in kept), default=begin)
    window = max(1e-9, end - begin)
    rows = {}
    for page in PAGES:
        ms = [t[2] for t in kept if t[1] == page and t[3]]
        fails = sum(1 for t in kept if t[1] == page and not t[3])
        if ms:
            rows[page] = (len(ms), _pct(ms, 50), _pct(ms, 95), _pct(ms, 99), len(ms) / window, fails)
        else:
            rows[page] = (0, 0, 0, 0, 0, fails)
    login_ms = _pct([t[2] for t in logins], 50) if logins else 0.0
    error = ""
    failed = [t for t in timings if not t[3]]
    if failed:
        error = f"{len(failed)} failed requests (see {log})"
    elif proc.returncode != 0:  # an exception in a user's task is no failed request
        error = f"locust exited {proc.returncode} (see {log})"
    requested = {page: sum(1 for t in timings if t[1] == page) for page in PAGES}
    return Phase(think, rows, window, login_ms, cpu, error, requested)


def phases_print(phases: list[Phase], *, users: int, workers: int, threads: int, bookings: int, citizens: int) -> None:
    print(
        f"\nPortal pages, {users} citizens at once (locust, one login each), gunicorn {workers} workers x "
        f"{threads} threads, PostgreSQL; {citizens:,} citizens, {bookings:,} exams; {os.cpu_count()} cores"
    )
    print(
        f"{'think time':<12}{'page':<26}{'n':>6}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'req/s':>8}"
        f"{'fails':>6}{'goal p95':>10}  verdict"
    )
    for ph in phases:
        think = "none" if ph.think in ("0", "0-0") else f"{ph.think} s"
        for page in PAGES:
            n, p50, p95, p99, rps, fails = ph.rows.get(page, (0, 0, 0, 0, 0, 0))
            if not n:
                print(f"{think:<12}{page:<26}  not measured: {ph.error[:200]}")
                continue
            verdict = "ok" if p95 < GOAL_P95_MS else "MISSED"
            print(
                f"{think:<12}{page:<26}{n:>6}{p50:>8.1f}{p95:>8.1f}{p99:>8.1f}{rps:>8.1f}{fails:>6}"
                f"{'< 100 ms':>10}  {verdict}"
            )
        cpu = ph.cpu
        print(
            f"{'':<12}CPU (cores busy of {cpu['cores']:.0f}): gunicorn {cpu['gunicorn']:.2f}, postgres "
            f"{cpu['postgres']:.2f}, locust {cpu['locust']:.2f}, other processes {cpu['other']:.2f}; "
            f"login p50 {ph.login_ms:.0f} ms; window {ph.window:.0f} s" + (f"; {ph.error}" if ph.error else "")
        )


# --- what each page asks the database ------------------------------------------------------


def queries_report(citizens: list[dict[str, Any]], *, sample: int) -> list[str]:
    """Open both pages in this process for ``sample`` citizens; per page the statements and their time.

    Returns the pages that did not answer 200."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    picked = [c for c in citizens if len(c["bookings"]) >= 2][:sample]
    User = get_user_model()
    clients = []
    for c in picked:
        client = Client()
        client.force_login(User.objects.get(username=c["codice_fiscale"]))
        client.get("/fse/")  # the first request of a client builds its handler: not timed
        clients.append((client, c))
    stats: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    page_seconds: dict[str, list[float]] = collections.defaultdict(list)
    current = [""]
    failed: list[str] = []

    def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            stats[(current[0], _statement_key(sql))].append(time.perf_counter() - t)

    with connection.execute_wrapper(timed):
        for client, c in clients:
            for page, url in ((PAGES[0], "/fse/"), (PAGES[1], f"/fse/esami/{c['bookings'][-1]}/")):
                current[0] = page
                t = time.perf_counter()
                response = client.get(url)
                page_seconds[page].append(time.perf_counter() - t)
                if response.status_code != 200:
                    print(f"{url}: HTTP {response.status_code}", file=sys.stderr)
                    failed.append(f"{url}: HTTP {response.status_code}")
    print(
        f"\nWhat each page asks PostgreSQL (Django test client in this process, {len(clients)} citizens, "
        "one request each; commits not counted)"
    )
    for page in PAGES:
        n = len(page_seconds[page])
        rows = [(key[1], v) for key, v in stats.items() if key[0] == page]
        count = sum(len(v) for _, v in rows) / n
        db_ms = sum(sum(v) for _, v in rows) / n * 1000
        wall = _pct([s * 1000 for s in page_seconds[page]], 50)
        print(f"\n{page}: {count:.1f} statements per request, {db_ms:.1f} ms in them; page p50 {wall:.1f} ms")
        for sql, v in sorted(rows, key=lambda r: -sum(r[1])):
            print(f"  {len(v) / n:5.1f} x {sum(v) / len(v) * 1000:6.2f} ms  {sql}")
    return failed


def _statement_key(sql: str) -> str:
    """A statement's shape: its verb and tables, without the column lists."""
    sql = " ".join(sql.split())
    if sql.startswith("SELECT") and " FROM " in sql:
        head = "SELECT ... FROM " + sql.split(" FROM ", 1)[1]
    else:
        head = sql
    head = re.sub(r'"(\w+)"\.', "", head)
    head = re.sub(r"IN \((%s, )*%s\)", "IN (...)", head)
    return head[:150]


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--users", type=int, default=20, help="citizens at once")
    parser.add_argument("--duration", type=int, default=60, help="measured seconds per think time")
    parser.add_argument("--warmup", type=int, default=10, help="seconds not counted at the start")
    parser.add_argument(
        "--think",
        nargs="+",
        default=["1-3", "0"],
        help="think times between pages, MIN-MAX seconds, one run each (0: none, the server's capacity)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (Procfile: 2)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (Procfile: 4)")
    parser.add_argument("--citizens", type=int, default=10_000, help="when seeding")
    parser.add_argument("--exams", type=int, default=50_000, help="when seeding")
    parser.add_argument("--skip-queries", action="store_true", help="no per-page statement report")
    parser.add_argument("--query-sample", type=int, default=40, help="citizens for the statement report")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every part at its smallest, in seconds; exit 1 when a page fails (the test suite)",
    )
    args = parser.parse_args()
    if args.smoke:
        # A few citizens with a long enough tail that some have two exams (the locust users
        # need them), two users, a short run of each kind of think time (a range, none) with
        # no warm-up, one worker, the statement report for two citizens.
        args.citizens, args.exams, args.users, args.duration, args.warmup = 12, 40, 2, 4, 0
        args.think, args.workers, args.skip_queries, args.query_sample = ["0.1-0.2", "0"], 1, False, 2

    name = urlparse(args.database_url).path.lstrip("/")
    if name == "test" or name.startswith("test_"):
        sys.exit(f"refusing database {name!r}: the test suites own test and test_*")
    locust_bin()
    if not args.smoke:
        WORK_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pacs-bench-portal-") as tmp:
        work = Path(tmp)
        # The smoke run's sample and logs stay in its temporary folder: var/bench/portal's
        # citizens.json belongs to the full-size database and must not be overwritten.
        citizens_file = work / "citizens.json" if args.smoke else CITIZENS_FILE
        env = server_env(
            args.database_url,
            work / "var",
            SECURE_COOKIES="0",
            # One key for every worker (and this process): else each would make its own in the empty var folder.
            SECRET_KEY=secrets.token_urlsafe(50),
        )
        os.environ["ALLOWED_HOSTS"] = "testserver,localhost,127.0.0.1"  # this process's test client only
        database_ready(args.database_url, citizens=args.citizens, exams=args.exams, citizens_file=citizens_file)
        from booking.models import Booking
        from portal.models import CitizenAccount

        bookings, citizens = Booking.objects.count(), CitizenAccount.objects.count()
        data = json.loads(citizens_file.read_text())
        from django.db import connection

        connection.close()  # no idle connection of ours during the run

        load = os.getloadavg()[0]
        print(
            f"{citizens:,} citizens, {bookings:,} exams in {name}; load average {load:.2f} before the run",
            file=sys.stderr,
            flush=True,
        )
        web = web_start(env, work / "logs", workers=args.workers, threads=args.threads)
        phases = []
        try:
            for think in args.think:
                print(f"locust: {args.users} users, think time {think} s", file=sys.stderr, flush=True)
                phases.append(
                    locust_phase(
                        web,
                        work,
                        users=args.users,
                        duration=args.duration,
                        warmup=args.warmup,
                        think=think,
                        citizens=citizens_file,
                    )
                )
        finally:
            web.stop()
            keep = WORK_DIR / "last-run"
            if not args.smoke:
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(work, keep, ignore=shutil.ignore_patterns("var"), dirs_exist_ok=True)
        phases_print(
            phases, users=args.users, workers=args.workers, threads=args.threads, bookings=bookings, citizens=citizens
        )
        if args.smoke:
            # What a failing page would print as a figure is the smoke run's failure.
            failed = [f"think {ph.think}: {ph.error}" for ph in phases if ph.error]
            # A page requested in no run at all is a locustfile that no longer reaches it. (Per
            # run it may not be: on a busy machine the logins, a PBKDF2 each, can take all of a
            # short run.)
            failed += [f"{page} never requested" for page in PAGES if not any(ph.requested.get(page) for ph in phases)]
        else:
            failed = []
            print(f"(locust logs, timings and gunicorn's access log kept in {keep})")
        if not args.skip_queries:
            failed += queries_report(data["citizens"], sample=args.query_sample)
        if failed and args.smoke:
            for log in sorted([*work.glob("*.log"), *(work / "logs").glob("*.log")]):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            sys.exit("smoke run: failed " + "; ".join(failed))


if __name__ == "__main__":
    main()
