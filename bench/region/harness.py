"""A region in a box: every process of a regional deployment on 127.0.0.1, under load and faults.

Shared by the test (``tests/bench/test_region.py``) and the benchmark (``run.py``):
:func:`region_run` starts, all on loopback,

* a PostgreSQL database of its own (created with a unique name, dropped at the
  end), migrated and seeded by ``seed.py`` (which also imports each citizen's
  study, its booking reported and its report signed and published on line);
  Redis (a db number of its own, queue names with a prefix of this run's); an
  S3 server (moto) as the long-term tier;
* the deployment's processes as ``deploy/`` runs them: a listener per facility
  (``manage.py dicom_listener`` with ``PACS_DICOM_FACILITIES``), two web
  processes (gunicorn ``pacs.wsgi``), and two worker hosts, each a process group
  of its own: host ``alpha`` runs the ``ingest`` group (``ingest,render``) and the
  ``lifecycle`` group (``lifecycle,preservation``), host ``beta`` the ``front``
  group (``portal,publication,research`` and the default queue, as
  ``deploy/worker/front.env.example``) and Celery beat, whose sweeps run every
  few seconds;

then drives it: modalities (DCMTK ``storescu``, one association per study of
fresh-UID CT or MR images made from pydicom's bundled files) send to their
facility's listener for ``send_seconds``, retrying what was not acknowledged as
a modality does; readers download whole studies over WADO-RS from the two web
processes with an API token; citizens (:func:`citizen_run`, one per citizen,
each on one of the two web processes) log in to the portal with their codice
fiscale and password, ask for the DICOM package of their exam, poll its page
until host ``beta``'s ``portal`` queue has zipped it (``PACS_PORTAL_INLINE_BYTES``
0: never while the request waits), download it and check it, and ask again
(each package purged after its check, so that each request builds one anew);
the lifecycle migrates every instance to the S3 tier at once and evicts the
facility copy soon after (a recalled one too), so packages are zipped from the
facility's copies or, once evicted, from S3's. Half-way, host ``alpha``'s
whole process group is killed with SIGKILL and restarted a few seconds later;
then one listener is stopped with SIGTERM and started again.

At the end it waits for the region to drain, stops every process, and
:func:`verify` checks the state left behind against what the modalities were
told (:class:`Outcome`'s ``problems``, empty when all is well):

* every instance acknowledged (status 0x0000 at ``storescu``) is indexed exactly
  once, and nothing is indexed that was not sent;
* every copy of every instance, on the facility tier and on S3, hashes to the
  index's SHA-256; every instance has a verified long-term copy; no file or
  object under ``studies/`` that no copy records and no file removal left pending
  (a release cut short by the kill is finished by the next lifecycle pass), no
  temporary file left in the incoming folders;
* every queue empty in Redis (``LLEN`` 0) and no message left unacknowledged;
  no study whose post-ingest work is pending; no copy failure outstanding;
* every download complete (each instance acknowledged before the request in the
  answer) and byte-exact against the index;
* every package a citizen asked for ready within ``package_timeout`` (none left
  queued, running or failed), and each a valid zip (``testzip``) holding a
  DICOMDIR that lists exactly its instance members, one per instance of the
  study, each with the SHA-256 the index records; no half-written package left.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import database_template

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_URL = os.environ.get("REGION_REDIS_URL", "redis://127.0.0.1:6379/5")
BUCKET = "pacs-longterm"
SCOPE = "region"  # PACS_LONG_TERM_SCOPE: the S3 keys start with it
SOURCES = ("CT_small.dcm", "MR_small.dcm")  # pydicom's bundled files, alternately per modality
# The variables of the session that started us (a test run's database, queue, var folder, broker):
# never passed on, each process of the box gets the box's own.
NOT_INHERITED = (
    "DATABASE_URL",
    "DATABASE_URL_FILE",
    "REDIS_URL",
    "REDIS_URL_FILE",
    "PACS_AUDIT_KEY_FILE",
    "PACS_TEST_VAR_DIR",
    "PACS_VAR_DIR",
    "CELERY_QUEUE",
    "CELERY_QUEUE_PREFIX",
    "PACS_FACILITY_TIER_DIR",
    "PACS_INCOMING_DIR",
    "PACS_LONGTERM_S3_BUCKET",
    "PACS_PRESERVATION_S3_BUCKET",
    "AWS_S3_ENDPOINT_URL",
    "DJANGO_SETTINGS_MODULE",
)


@dataclass(frozen=True)
class Size:
    """How big a run is: the test's, the benchmark's and its smoke size are instances."""

    modalities: int = 8
    send_seconds: float = 40.0
    images_per_study: int = 10
    study_pause: float = 0.0  # seconds a modality waits between studies (0: back to back)
    readers: int = 2
    citizens: int = 2  # each with an exam on line, downloading its DICOM package through the portal
    citizen_images: int = 20  # images in each citizen's study (CT, ~39 KB each)
    citizen_pause: float = 0.0  # seconds a citizen waits between packages
    package_timeout: float = 120.0  # seconds from a package request to "ready" before it counts as never ready
    web_workers: int = 1  # per web process (the Procfile's gunicorn has 2; two processes here)
    web_threads: int = 4
    concurrency: int = 2  # per worker group
    evict_after_seconds: float = 15.0
    worker_down_seconds: float = 8.0
    lifecycle_seconds: float = 4.0  # the beat's period for the lifecycle run
    visibility_timeout: int = 30  # seconds before a message a dead worker held goes back to its queue
    drain_timeout: float = 240.0


# --- small helpers -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, *, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


def pg_admin() -> Any:
    import psycopg

    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", autocommit=True, connect_timeout=3
    )


def services_reachable() -> str | None:
    """Why the box cannot run here (PostgreSQL or Redis unreachable), or None."""
    try:
        pg_admin().close()
    except Exception as exc:
        return f"PostgreSQL on {PG_HOST}:{PG_PORT} is not reachable: {exc}"
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis at {REDIS_URL} is not reachable: {exc}"
    return None


@dataclass
class Proc:
    """A process of the box; ``group`` is its process group (a host: killed as a whole)."""

    name: str
    popen: subprocess.Popen  # type: ignore[type-arg]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, pattern: str, *, timeout: float = 180.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def seen() -> re.Match[str] | None:
            found = regex.search(self.text())
            if not found and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.text()[-3000:]}")
            return found

        return wait_until(seen, timeout=timeout, what=f"{self.name}: {pattern!r}")  # type: ignore[no-any-return]

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to the process (not its group: gunicorn and Celery stop their children), then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Stats:
    """What the run measured, for the benchmark's table and the test's report."""

    stored: dict[str, int] = field(default_factory=dict)  # facility code -> instances acknowledged
    stored_bytes: dict[str, int] = field(default_factory=dict)
    send_seconds: float = 0.0
    retried: int = 0  # files sent again after no acknowledgement
    downloads: int = 0
    download_instances: int = 0
    download_bytes: int = 0
    download_seconds: float = 0.0
    packages: int = 0  # the citizens' DICOM packages downloaded and checked
    package_instances: int = 0
    package_bytes: int = 0
    package_ready: list[float] = field(default_factory=list)  # seconds from each request to "ready"
    packages_longterm: int = 0  # requested while the study had no facility copy (built from S3)
    citizen_seconds: float = 0.0  # from the start of the load until the last citizen was done
    seeded: int = 0  # the citizens' instances, imported before the load
    migrated: int = 0
    migrate_seconds: float = 0.0
    evicted: int = 0
    listener_down_seconds: float = 0.0
    worker_drain_seconds: float | None = None  # from host alpha's restart to the backlog before the kill
    final_drain_seconds: float = 0.0  # from the end of sending to the region idle
    sent_at: float = 0.0  # time.monotonic() when the last modality was done
    backlog_peak: int = 0
    instances: int = 0


@dataclass
class Outcome:
    stats: Stats
    problems: list[str]
    work: Path


# --- the box -----------------------------------------------------------------------------


class Box:
    """The processes, the database and the stores of one run (see the module docstring)."""

    def __init__(self, size: Size, work: Path) -> None:
        self.size = size
        self.work = work
        self.run_id = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.db_name = f"region_{self.run_id}"
        self.database_url = f"postgres://postgres@{PG_HOST}:{PG_PORT}/{self.db_name}"
        self.queue = f"region-{self.run_id}"
        self.var = work / "var"
        self.logs = work / "logs"
        self.procs: list[Proc] = []
        self.listeners: dict[str, tuple[Proc, int]] = {}  # facility code -> (process, port)
        self.webs: list[int] = []
        self.hosts: dict[str, list[Proc]] = {}
        self.token = ""
        self.citizens: list[dict[str, Any]] = []  # from seed.py: codice_fiscale, password, booking, study_uid
        self.s3_port = 0
        self.queues: list[str] = []

    # -- environment

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        size = self.size
        return {
            **base,
            "DATABASE_URL": self.database_url,
            "DB_CONN_MAX_AGE": "60",
            "REDIS_URL": REDIS_URL,
            "CELERY_QUEUE": self.queue,
            "CELERY_QUEUE_PREFIX": self.queue + ".",
            "CELERY_VISIBILITY_TIMEOUT": str(size.visibility_timeout),
            "PACS_VAR_DIR": str(self.var),
            "PACS_AUDIT_KEY_FILE": str(self.var / "audit.key"),
            "SECRET_KEY": "region-in-a-box-" + self.run_id,
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_COOKIES": "0",
            "LOG_LEVEL": "INFO",
            "PACS_DICOM_ACCEPT_UNKNOWN_AE": "0",
            "PACS_LONGTERM_S3_BUCKET": BUCKET,
            "PACS_LONG_TERM_SCOPE": SCOPE,
            "AWS_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_S3_REGION_NAME": "us-east-1",
            # Every instance is due for the long-term tier at once, its facility copy soon after.
            "PACS_MIGRATE_AFTER_DAYS": "0",
            "PACS_EVICT_AFTER_DAYS": repr(size.evict_after_seconds / 86400),
            "PACS_LIFECYCLE_SECONDS": repr(size.lifecycle_seconds),
            "PACS_LIFECYCLE_RETRY_SECONDS": "5",
            "PACS_POST_INGEST_SWEEP_SECONDS": "10",
            # A file removal left by the killed host is finished by the next lifecycle pass.
            "PACS_FILE_REMOVAL_GRACE_SECONDS": repr(size.lifecycle_seconds),
            # A study recalled by a read from S3 is evicted again as soon as a new one would be.
            "PACS_RECALL_KEEP_DAYS": repr(size.evict_after_seconds / 86400),
            # Every citizen's package is zipped by the portal queue's worker (host beta), as a large
            # study's is, not while its request waits.
            "PACS_PORTAL_INLINE_BYTES": "0",
            "PYTHONUNBUFFERED": "1",
            "TCP_NODELAY": "1",  # DCMTK 3.6.7 on loopback crawls without it (Nagle)
            **extra,
        }

    def start_proc(self, name: str, args: list[str], *, env: dict[str, str], group: int | None = None) -> Proc:
        """Start a process in a new process group, or in ``group`` (another process of the same host)."""
        # A log of its own for each start: a restarted process's "ready" is its own, not its predecessor's.
        log = self.logs / f"{name}.log"
        restart = 1
        while log.exists():
            restart += 1
            log = self.logs / f"{name}.{restart}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args,
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # A group of its own (0), or the host's: setpgid cannot join a group of another session.
                process_group=0 if group is None else group,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    # -- start-up

    def database_create(self) -> None:
        with pg_admin() as conn:
            template = database_template()
            conn.execute(f'CREATE DATABASE "{self.db_name}"' + (f' TEMPLATE "{template}"' if template else ""))
        env = self.env()
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        )
        seeded = subprocess.run(
            [
                PYTHON,
                "-m",
                "bench.region.seed",
                str(self.size.modalities),
                "--citizens",
                str(self.size.citizens),
                "--images",
                str(self.size.citizen_images),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        if seeded.returncode != 0:
            raise RuntimeError(f"bench.region.seed exited {seeded.returncode}:\n{seeded.stderr[-3000:]}")
        rows = json.loads(seeded.stdout.strip().splitlines()[-1])
        self.token, self.citizens = rows["token"], rows["citizens"]

    def database_drop(self) -> None:
        with pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def broker_clean(self) -> None:
        """This run's keys in Redis (its queues and kombu's bindings of them), once every process is gone."""
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"*{self.queue}*", count=1000))
        if keys:
            r.delete(*keys)

    def s3_start(self) -> None:

        self.s3_port = free_port()
        proc = self.start_proc(
            "moto",
            [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
            env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        )

        def accepting() -> bool:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"moto server exited:\n{proc.text()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.s3_port)) == 0

        wait_until(accepting, timeout=60, what="moto server")
        self.s3().create_bucket(Bucket=BUCKET)

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.s3_port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def listener_start(self, code: str, port: int, *, wait: bool = True) -> Proc:
        proc = self.start_proc(
            f"listener-{code}",
            [PYTHON, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", str(port)],
            env=self.env(PACS_DICOM_FACILITIES=code),
        )
        if wait:
            proc.wait_for(r"listener ready on ")
        self.listeners[code] = (proc, port)
        return proc

    def web_start(self, index: int) -> Proc:
        port = free_port()
        proc = self.start_proc(
            f"web-{index}",
            [
                str(BIN / "gunicorn"),
                "pacs.wsgi",
                "--config",
                "python:pacs.gunicorn_conf",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(self.size.web_workers),
                "--threads",
                str(self.size.web_threads),
                "--access-logfile",
                "-",
            ],
            env=self.env(),
        )
        self.webs.append(port)
        return proc

    def web_wait(self, index: int, proc: Proc) -> None:
        """Until gunicorn listens and a worker has loaded Django (answers /health/live/)."""
        port = self.webs[index]
        proc.wait_for(r"Listening at: ")

        def live() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live/", timeout=5) as r:
                    return r.status == 200
            except OSError:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"web-{index} exited:\n{proc.text()[-3000:]}") from None
                return False

        wait_until(live, timeout=180, what=f"web-{index} live")

    def worker_args(self, group: str, queues: list[str], host: str) -> list[str]:
        """A worker as ``deploy/pacs-worker@.service`` starts it."""
        return [
            str(BIN / "celery"),
            "-A",
            "pacs",
            "worker",
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(self.size.concurrency),
            "--hostname",
            f"{group}@{host}-{self.run_id}",
            "--loglevel",
            "INFO",
        ]

    def host_start(self, host: str, *, wait: bool = True) -> list[Proc]:
        """A worker host: its processes in one process group (the host's, killed as a whole)."""
        kinds = {
            "ingest": ["ingest", "render"],
            "lifecycle": ["lifecycle", "preservation"],
            "front": ["portal", "publication", "research", "default"],
        }
        groups = {"alpha": ["ingest", "lifecycle"], "beta": ["front"]}[host]
        env = self.env()
        procs: list[Proc] = []
        for group in groups:
            queues = [self.queue if k == "default" else f"{self.queue}.{k}" for k in kinds[group]]
            proc = self.start_proc(
                f"{host}-{group}",
                self.worker_args(group, queues, host),
                env=env,
                group=procs[0].popen.pid if procs else None,
            )
            procs.append(proc)
        if host == "beta":
            procs.append(
                self.start_proc(
                    "beta-beat",
                    [str(BIN / "celery"), "-A", "pacs", "beat", "--loglevel", "INFO"],
                    env=env,
                    group=procs[0].popen.pid,
                )
            )
        self.hosts[host] = procs
        if wait:
            self.host_wait(host)
        return procs

    def host_wait(self, host: str) -> None:
        for proc in self.hosts[host]:
            if "beat" not in proc.name:
                proc.wait_for(r"ready\.", timeout=180)

    def start(self) -> None:
        self.var.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.s3_start()
        self.database_create()
        from bench.region.seed import FACILITIES

        self.queues = [self.queue] + [
            f"{self.queue}.{k}"
            for k in ("ingest", "render", "lifecycle", "preservation", "portal", "publication", "research")
        ]
        # Every process at once, as a region's hosts boot; then each waited for.
        listeners = [self.listener_start(code, free_port(), wait=False) for code, _name, _ae in FACILITIES]
        webs = [self.web_start(i) for i in range(2)]
        for host in ("alpha", "beta"):
            self.host_start(host, wait=False)
        for proc in listeners:
            proc.wait_for(r"listener ready on ", timeout=180)
        for i, proc in enumerate(webs):
            self.web_wait(i, proc)
        for host in ("alpha", "beta"):
            self.host_wait(host)

    def host_kill(self, host: str) -> None:
        """SIGKILL to the host's whole process group: the workers and their pool's children at once."""
        procs = self.hosts[host]
        os.killpg(procs[0].popen.pid, signal.SIGKILL)
        for proc in procs:
            proc.popen.wait(timeout=30)

    def stop(self, *, keep_store: bool = False) -> None:
        """Every process stopped as its unit stops it (SIGTERM), the rest of its group killed;
        the S3 server too unless ``keep_store`` (the verification reads it)."""
        procs = [p for p in self.procs if not (keep_store and p.name == "moto")]
        for proc in reversed(procs):
            proc.stop()
        for proc in procs:
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # -- observing

    def backlog(self) -> tuple[int, int]:
        """(messages waiting in this run's queues, messages delivered and not acknowledged)."""
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        waiting = sum(int(r.llen(q)) for q in self.queues)
        unacked = 0
        for raw in r.hvals("unacked"):
            try:
                _message, _exchange, routing_key = json.loads(raw)
            except ValueError:
                continue
            unacked += routing_key in self.queues
        return waiting, unacked

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return list(conn.execute(query, params).fetchall())

    def progress(self) -> dict[str, int]:
        (row,) = self.sql(
            """SELECT (SELECT count(*) FROM archive_instance),
                      (SELECT count(*) FROM archive_copy WHERE tier = %s AND verified_at IS NOT NULL),
                      (SELECT count(*) FROM archive_study WHERE post_ingest_pending),
                      (SELECT count(*) FROM archive_copyfailure),
                      (SELECT count(*) FROM archive_copy WHERE tier LIKE 'facility:%%'),
                      (SELECT count(*) FROM archive_fileremoval)""",
            (f"longterm:{SCOPE}",),
        )
        keys = ("instances", "migrated", "pending", "failures", "facility_copies", "removals")
        return dict(zip(keys, row, strict=True))

    def study_instances(self, study_uid: str) -> dict[str, str]:
        """The study's instances as the index records them: SOP Instance UID -> SHA-256."""
        return dict(
            self.sql(
                """SELECT i.sop_instance_uid, i.sha256 FROM archive_instance i
                   JOIN archive_series se ON se.id = i.series_id JOIN archive_study st ON st.id = se.study_id
                   WHERE st.study_instance_uid = %s""",
                (study_uid,),
            )
        )

    def facility_copies(self, study_uid: str) -> int:
        """How many copies of the study's instances the facility tiers hold now (0: only S3 has it)."""
        ((n,),) = self.sql(
            """SELECT count(*) FROM archive_copy c JOIN archive_instance i ON i.id = c.instance_id
               JOIN archive_series se ON se.id = i.series_id JOIN archive_study st ON st.id = se.study_id
               WHERE st.study_instance_uid = %s AND c.tier LIKE 'facility:%%'""",
            (study_uid,),
        )
        return int(n)

    def package_purge(self, package_pk: int) -> None:
        """What the purge sweep (``portal.downloads.packages_purge``) does to an expired package, at once:
        its file removed, its row purged; the next request of the study builds a new one."""
        for (path,) in self.sql(
            "UPDATE portal_downloadpackage SET status = 'purged' WHERE id = %s AND status = 'ready' RETURNING path",
            (package_pk,),
        ):
            if path:
                Path(path).unlink(missing_ok=True)


# --- the load ----------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the modalities were told, and what the readers received (shared by the threads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, str] = field(default_factory=dict)  # SOP UID -> study UID
    acked: dict[str, str] = field(default_factory=dict)  # SOP UID -> facility code
    studies: dict[str, list[str]] = field(default_factory=dict)  # study UID -> SOP UIDs acknowledged
    acked_bytes: dict[str, int] = field(default_factory=dict)
    downloaded: dict[str, set[str]] = field(default_factory=dict)  # SOP UID -> SHA-256 of what a reader got
    seeded: dict[str, str] = field(default_factory=dict)  # SOP UID -> study UID: the citizens' studies, imported
    problems: list[str] = field(default_factory=list)


_STORESCU_FILE = re.compile(r"^I: Sending file: (.+)$")
_STORESCU_OK = "I: Received Store Response (Success)"


def storescu_acknowledged(output: str) -> list[str]:
    """The files ``storescu -v`` was answered 0x0000 for (DCMTK prints "Success" only for it)."""
    done, current = [], None
    for line in output.splitlines():
        found = _STORESCU_FILE.match(line)
        if found:
            current = found.group(1)
        elif line.startswith(_STORESCU_OK) and current:
            done.append(current)
            current = None
    return done


def modality_run(box: Box, index: int, done: threading.Event, ledger: Ledger, stats: Stats, out: Path) -> None:
    """One modality: a study per association to its facility's listener, until ``done`` is set; what
    was not acknowledged is sent again (a listener restarting), for up to a minute after that."""
    from pydicom.uid import generate_uid

    from archive.sample_data import PatientInfo, write_study
    from bench.region.seed import FACILITIES, modality_ae

    code, _name, called = FACILITIES[index % len(FACILITIES)]
    calling = modality_ae(index)
    source = SOURCES[index % len(SOURCES)]
    pending: list[Path] = []
    n = 0
    retry_until = float("inf")
    while True:
        now = time.monotonic()
        if done.is_set() and retry_until == float("inf"):
            retry_until = now + 60
        if not pending:
            if done.is_set():
                return
            n += 1
            study_uid = generate_uid()
            pending = write_study(
                out / f"{calling}-{n}",
                patient=PatientInfo(patient_id=f"{calling}-{n % 7}", name=f"Paziente^{calling}"),
                source=source,
                series=1,
                instances_per_series=box.size.images_per_study,
                accession_number=f"{calling}{n:06d}",
                study_uid=study_uid,
            )
            with ledger.lock:
                for p in pending:
                    ledger.sent[p.stem] = study_uid
        elif now >= retry_until:
            with ledger.lock:
                ledger.problems.append(f"{calling}: {len(pending)} files never acknowledged")
            return
        port = box.listeners[code][1]
        try:
            sent = subprocess.run(
                ["storescu", "-v", "--no-halt", "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
                + [str(p) for p in pending],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
            output = sent.stdout + sent.stderr
        except subprocess.TimeoutExpired as exc:
            output = f"storescu timed out: {exc}"
        acked = set(storescu_acknowledged(output))
        if len(acked) < len(pending):
            with (box.logs / f"modality-{calling}.log").open("a") as fh:
                fh.write(f"--- {time.strftime('%H:%M:%S')} {len(pending) - len(acked)} not acknowledged\n{output}\n")
        with ledger.lock:
            for p in pending:
                if str(p) in acked:
                    uid = p.stem
                    ledger.acked[uid] = code
                    ledger.studies.setdefault(ledger.sent[uid], []).append(uid)
                    stats.stored[code] = stats.stored.get(code, 0) + 1
                    stats.stored_bytes[code] = stats.stored_bytes.get(code, 0) + p.stat().st_size
        left = [p for p in pending if str(p) not in acked]
        if left:
            stats.retried += len(left)
            time.sleep(0.5)  # a modality waits a little before trying again
        elif box.size.study_pause:
            done.wait(box.size.study_pause)
        pending = left


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        raise ValueError(f"no boundary in {content_type!r}")
    delimiter = b"--" + found.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload.removesuffix(b"\r\n"))
    return parts


def reader_run(box: Box, index: int, stop: threading.Event, ledger: Ledger, stats: Stats) -> None:
    """A reader: whole studies over WADO-RS, alternately from each web process, each checked complete."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    rng = random.Random(index)
    k = index
    while not stop.is_set():
        with ledger.lock:
            studies = list(ledger.studies.items())
        if not studies:
            time.sleep(0.2)
            continue
        study_uid, uids = rng.choice(studies)
        expected = set(uids)
        port = box.webs[k % len(box.webs)]
        k += 1
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/dicomweb/studies/{study_uid}",
            headers={
                "Accept": 'multipart/related; type="application/dicom"',
                "Authorization": f"Token {box.token}",
            },
        )
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = response.read()
                content_type = response.headers["Content-Type"]
        except (urllib.error.URLError, OSError) as exc:
            with ledger.lock:
                ledger.problems.append(f"download of {study_uid} from web {port}: {exc}")
            continue
        elapsed = time.perf_counter() - t0
        got: dict[str, str] = {}
        for part in multipart_parts(content_type, body):
            ds = dcmread(DicomBytesIO(part), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            got[str(ds.SOPInstanceUID)] = hashlib.sha256(part).hexdigest()
        with ledger.lock:
            stats.downloads += 1
            stats.download_instances += len(got)
            stats.download_bytes += len(body)
            stats.download_seconds += elapsed
            missing = expected - set(got)
            if missing:
                ledger.problems.append(f"download of {study_uid}: {len(missing)} acknowledged instances missing")
            for uid, digest in got.items():
                ledger.downloaded.setdefault(uid, set()).add(digest)


def package_check(body: bytes, expected: dict[str, str]) -> list[str]:
    """What is wrong with a citizen's DICOM package (a zip) against the index: every member's CRC
    (``testzip``), the DICOMDIR present and naming exactly the instance members, one member per
    instance of the study with the SHA-256 the index records for it (``expected``: UID -> SHA-256)."""
    from pydicom import dcmread

    try:
        zf = zipfile.ZipFile(io.BytesIO(body))
    except zipfile.BadZipFile as exc:
        return [f"not a zip ({len(body)} bytes): {exc}"]
    problems = []
    with zf:
        broken = zf.testzip()
        if broken is not None:
            problems.append(f"member {broken} fails its CRC")
        names = zf.namelist()
        members = [n for n in names if n.startswith("DICOM/")]  # portal.media.FILES_ROOT
        got: dict[str, str] = {}
        for name in members:
            data = zf.read(name)
            uid = str(
                dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
            )
            if uid in got:
                problems.append(f"{uid} in the zip twice")
            got[uid] = hashlib.sha256(data).hexdigest()
        if "DICOMDIR" not in names:
            problems.append("no DICOMDIR")
        else:
            directory = dcmread(io.BytesIO(zf.read("DICOMDIR")))
            listed = set()
            for record in directory.DirectoryRecordSequence:
                if "ReferencedFileID" in record:
                    parts = record.ReferencedFileID
                    listed.add("/".join([parts] if isinstance(parts, str) else parts))
            if listed != set(members):
                problems.append(f"the DICOMDIR lists {len(listed)} files, the zip holds {len(members)} instances")
    missing = expected.keys() - got.keys()
    if missing:
        problems.append(f"{len(missing)} of the study's {len(expected)} instances missing")
    if got.keys() - expected.keys():
        problems.append(f"{len(got.keys() - expected.keys())} instances not of the study")
    differ = [uid for uid in got.keys() & expected.keys() if got[uid] != expected[uid]]
    if differ:
        problems.append(f"{len(differ)} instances with other bytes than the index's, e.g. {differ[0]}")
    return problems


def citizen_run(
    box: Box, index: int, stop: threading.Event, ledger: Ledger, stats: Stats, abandon: threading.Event
) -> None:
    """A citizen: logs in to the portal of one web process, then asks for the DICOM package of the
    exam, polls its page until it is ready (zipped by host beta's ``front`` group, the ``portal``
    queue), downloads it and checks it (:func:`package_check`), again and again. Each package is
    purged after its download (:meth:`Box.package_purge`), so that each request builds a new one
    from whatever copies the lifecycle has left: the facility's, or S3's once they are evicted.

    After ``stop``, a citizen that has not yet asked while its study was on S3 only waits for the
    lifecycle (still migrating and evicting, the region draining) to evict it, up to
    ``drain_timeout``, and asks once more: every run builds a package from the long-term tier.
    ``abandon``: the run failed, stop at once."""
    import requests

    from bench.portal.citizen import citizen_login, citizen_session, package_ask, package_state

    citizen = box.citizens[index]
    base = f"http://127.0.0.1:{box.webs[index % len(box.webs)]}"
    who = f"citizen {index} (web {base.rpartition(':')[2]})"
    expected = box.study_instances(citizen["study_uid"])
    session = citizen_session()
    citizen_login(session, base, cf=citizen["codice_fiscale"], password=citizen["password"])
    from_s3 = False
    patience = float("inf")
    while True:
        on_s3_only = box.facility_copies(citizen["study_uid"]) == 0
        if stop.is_set():
            patience = min(patience, time.monotonic() + box.size.drain_timeout)
            if from_s3 or abandon.is_set() or time.monotonic() > patience:
                break
            if not on_s3_only:
                time.sleep(1.0)
                continue
        t0 = time.perf_counter()
        try:
            package_pk = package_ask(session, base, booking_pk=citizen["booking"], timeout=60)
            deadline = time.monotonic() + box.size.package_timeout
            state = package_state(session, base, package_pk)
            while state["status"] in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.2)
                state = package_state(session, base, package_pk)
            ready = time.perf_counter() - t0
            if state["status"] != "ready" or not state.get("download_url"):
                with ledger.lock:
                    ledger.problems.append(f"{who}: package {package_pk} not ready after {ready:.0f} s: {state}")
                time.sleep(1.0)
                continue
            response = session.get(base + state["download_url"], timeout=120)
            response.raise_for_status()
        except (requests.RequestException, RuntimeError) as exc:
            with ledger.lock:
                ledger.problems.append(f"{who}: {exc}")
            time.sleep(1.0)
            continue
        body = response.content
        wrong = package_check(body, expected)
        box.package_purge(package_pk)
        from_s3 = from_s3 or on_s3_only
        with ledger.lock:
            ledger.problems.extend(f"{who}: package {package_pk}: {p}" for p in wrong)
            stats.packages += 1
            stats.package_instances += len(expected)
            stats.package_bytes += len(body)
            stats.package_ready.append(ready)
            stats.packages_longterm += on_s3_only
        if box.size.citizen_pause:
            stop.wait(box.size.citizen_pause)


# --- the run -----------------------------------------------------------------------------


def _guarded(target: Any, ledger: Ledger) -> Any:
    """``target`` for a thread, whose exception becomes one of the run's problems (not a warning)."""

    def run(*args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:
            with ledger.lock:
                ledger.problems.append(f"{threading.current_thread().name} failed: {exc!r}")
            raise

    return run


def drained(box: Box) -> bool:
    waiting, unacked = box.backlog()
    if waiting or unacked:
        return False
    p = box.progress()
    return p["pending"] == 0 and p["migrated"] == p["instances"] and p["failures"] == 0


def region_run(size: Size, work: Path, *, log: Any = print) -> Outcome:
    """Start the box, load it, break it half-way, drain it, stop it and verify it."""
    box = Box(size, work)
    stats = Stats()
    ledger = Ledger()
    t_start = time.monotonic()
    try:
        box.start()
        for citizen in box.citizens:
            for uid in box.study_instances(citizen["study_uid"]):
                ledger.seeded[uid] = citizen["study_uid"]
        stats.seeded = len(ledger.seeded)
        log(f"box started in {time.monotonic() - t_start:.0f} s: database {box.db_name}, queues {box.queue}.*")
        run_load(box, size, work, ledger, stats, log=log)
        try:
            wait_until(lambda: drained(box), timeout=size.drain_timeout, what="the region drained", interval=0.5)
        except TimeoutError as exc:
            ledger.problems.append(f"{exc}: backlog {box.backlog()}, {box.progress()}")
        stats.final_drain_seconds = time.monotonic() - stats.sent_at
        log(f"drained {stats.final_drain_seconds:.1f} s after the last store")
        # The clock first (it queues sweeps for ever), then what it queued last is left to run.
        box.hosts["beta"][-1].stop()
        try:
            wait_until(lambda: drained(box), timeout=60, what="the sweeps queued last done", interval=0.5)
        except TimeoutError:
            pass  # verify() says what is left
        box.stop(keep_store=True)
        ledger.problems.extend(verify(box, ledger, stats))
        return Outcome(stats=stats, problems=ledger.problems, work=work)
    finally:
        box.stop()
        try:
            box.database_drop()
            box.broker_clean()
        except Exception as exc:  # the run's outcome matters more than the clean-up's
            log(f"could not clean up {box.db_name} and its queues: {exc}")


def run_load(box: Box, size: Size, work: Path, ledger: Ledger, stats: Stats, *, log: Any) -> None:
    files = work / "modalities"
    stop_readers = threading.Event()
    abandon = threading.Event()
    t0 = time.monotonic()
    stop_sending = threading.Event()
    modalities = [
        threading.Thread(
            target=_guarded(modality_run, ledger),
            args=(box, i, stop_sending, ledger, stats, files),
            name=f"modality-{i}",
        )
        for i in range(size.modalities)
    ]
    readers = [
        threading.Thread(
            target=_guarded(reader_run, ledger), args=(box, i, stop_readers, ledger, stats), name=f"reader-{i}"
        )
        for i in range(size.readers)
    ]
    citizens = [
        threading.Thread(
            target=_guarded(citizen_run, ledger),
            args=(box, i, stop_readers, ledger, stats, abandon),
            name=f"citizen-{i}",
        )
        for i in range(len(box.citizens))
    ]
    samples: list[tuple[float, int, int]] = []  # (time, backlog, migrated)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            waiting, unacked = box.backlog()
            try:
                migrated = box.progress()["migrated"]
            except Exception:
                migrated = samples[-1][2] if samples else 0
            samples.append((time.monotonic(), waiting + unacked, migrated))
            sampling.wait(0.5)

    sampler = threading.Thread(target=sample, name="sampler")
    for t in [*modalities, *readers, *citizens, sampler]:
        t.start()
    try:
        # Half-way: host alpha (ingest and lifecycle workers) lost at once, back a little later.
        time.sleep(max(0.0, t0 + size.send_seconds / 2 - time.monotonic()))
        killed = time.monotonic()
        box.host_kill("alpha")
        log(f"{time.monotonic() - t0:.0f} s: host alpha killed (SIGKILL to its process group)")
        time.sleep(size.worker_down_seconds)
        box.host_start("alpha")
        restarted = time.monotonic()
        log(f"{restarted - t0:.0f} s: host alpha restarted")
        # Then one listener restarted as its unit restarts it: SIGTERM, wait, start.
        from bench.region.seed import FACILITIES

        code = FACILITIES[0][0]
        proc, port = box.listeners[code]
        t_down = time.monotonic()
        proc.stop(timeout=90)
        box.listener_start(code, port)
        stats.listener_down_seconds = time.monotonic() - t_down
        log(f"{time.monotonic() - t0:.0f} s: listener {code} restarted ({stats.listener_down_seconds:.1f} s down)")
        # The faults happen while the modalities send: on a slow machine the sending lasts until
        # a few seconds after the listener is back, however long the restarts took.
        time.sleep(max(3.0, t0 + size.send_seconds - time.monotonic()))
        stop_sending.set()
        for t in modalities:
            t.join()
        stats.sent_at = time.monotonic()
        stats.send_seconds = stats.sent_at - t0
        log(f"{stats.send_seconds:.0f} s: modalities done, {len(ledger.acked)} instances acknowledged")
        stop_readers.set()
        for t in citizens:
            t.join()
        stats.citizen_seconds = time.monotonic() - t0
        if citizens:
            log(f"{stats.citizen_seconds:.0f} s: citizens done, {stats.packages_longterm} packages asked from S3 only")
    except BaseException:
        abandon.set()
        raise
    finally:
        stop_sending.set()
        stop_readers.set()
        for t in [*readers, *citizens]:
            t.join()
    # The kill's backlog: the first moment after the restart when every queue was empty.
    try:
        wait_until(
            lambda: sum(box.backlog()) == 0 and not box.progress()["removals"],
            timeout=size.drain_timeout,
            what="queues empty and no file removal pending",
            interval=0.5,
        )
    finally:
        sampling.set()
        sampler.join()
    # The kill's cost: from the restart until the backlog (the dead host's unacknowledged messages
    # included, back in their queues only after the visibility timeout) is down to its level before.
    before = [b for t, b, _ in samples if killed - 5 <= t < killed] or [0]
    recovered = [t for t, b, _ in samples if t >= restarted and b <= max(before)]
    stats.worker_drain_seconds = (recovered[0] - restarted) if recovered else None
    stats.backlog_peak = max((b for _, b, _ in samples), default=0)
    migrating = [(t, m) for t, _, m in samples if m > 0]
    if migrating:
        stats.migrate_seconds = migrating[-1][0] - migrating[0][0]


# --- verification ------------------------------------------------------------------------


def verify(box: Box, ledger: Ledger, stats: Stats) -> list[str]:
    """What the region holds against what it acknowledged (see the module docstring); the problems."""
    problems: list[str] = []
    counts = dict(box.sql("SELECT sop_instance_uid, count(*) FROM archive_instance GROUP BY sop_instance_uid"))
    stats.instances = len(counts)
    lost = [uid for uid in ledger.acked if uid not in counts]
    if lost:
        problems.append(f"{len(lost)} acknowledged instances not indexed, e.g. {lost[:3]}")
    twice = {uid: n for uid, n in counts.items() if n != 1}
    if twice:
        problems.append(f"{len(twice)} instances indexed more than once: {list(twice.items())[:3]}")
    foreign = [uid for uid in counts if uid not in ledger.sent and uid not in ledger.seeded]
    if foreign:
        problems.append(f"{len(foreign)} indexed instances no modality sent")
    lost_seeded = [uid for uid in ledger.seeded if uid not in counts]
    if lost_seeded:
        problems.append(f"{len(lost_seeded)} instances of the citizens' studies no longer indexed")

    sha = dict(box.sql("SELECT sop_instance_uid, sha256 FROM archive_instance"))
    copies = box.sql(
        """SELECT i.sop_instance_uid, c.tier, c.path, c.sha256, c.size, c.verified_at IS NOT NULL
           FROM archive_copy c JOIN archive_instance i ON i.id = c.instance_id"""
    )
    s3 = box.s3()
    facility_root = box.var / "tiers" / "facility"
    recorded: set[str] = set()
    longterm = set()
    bad: list[str] = []
    for uid, tier, path, copy_sha, size, verified in copies:
        kind, _, scope = tier.partition(":")
        if kind == "facility":
            file = facility_root / scope / path
            data = file.read_bytes() if file.exists() else None
            recorded.add(f"facility/{scope}/{path}")
        else:
            try:
                data = s3.get_object(Bucket=BUCKET, Key=f"{scope}/{path}")["Body"].read()
            except s3.exceptions.NoSuchKey:
                data = None
            recorded.add(f"s3/{scope}/{path}")
            if verified:
                longterm.add(uid)
        if data is None:
            bad.append(f"{tier} copy of {uid} missing")
        elif hashlib.sha256(data).hexdigest() != sha[uid] or copy_sha != sha[uid] or len(data) != size:
            bad.append(f"{tier} copy of {uid} differs from the index")
    stats.evicted = len(sha) - sum(1 for _u, tier, *_ in copies if tier.startswith("facility:"))
    if bad:
        problems.append(f"{len(bad)} copies not verified: {bad[:3]}")
    unmigrated = set(sha) - longterm
    if unmigrated:
        problems.append(f"{len(unmigrated)} instances without a verified long-term copy")

    # Half-written state: instance files or objects no copy records, temporary files left behind.
    on_disk = {
        f"facility/{p.relative_to(facility_root).as_posix()}"
        for p in facility_root.rglob("*")
        if p.is_file() and p.relative_to(facility_root).parts[1:2] == ("studies",)
    }
    on_s3 = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{SCOPE}/studies/"):
        on_s3.update(f"s3/{o['Key']}" for o in page.get("Contents", []))
    orphans = sorted((on_disk | on_s3) - recorded)
    if orphans:
        problems.append(f"{len(orphans)} files or objects no copy records: {orphans[:3]}")
    incoming = box.var / "incoming"
    leftovers = [p for p in incoming.rglob("*") if p.is_file()] if incoming.exists() else []
    if leftovers:
        problems.append(f"{len(leftovers)} temporary files left in {incoming}: {leftovers[:3]}")
    packages = box.var / "portal-packages"  # PACS_PORTAL_PACKAGE_DIR
    parts = list(packages.glob(".*.part")) if packages.exists() else []
    if parts:
        problems.append(f"{len(parts)} half-written packages left in {packages}: {parts[:3]}")

    waiting, unacked = box.backlog()
    if waiting or unacked:
        problems.append(f"queues not drained: {waiting} waiting, {unacked} unacknowledged")
    progress = box.progress()
    if progress["pending"]:
        problems.append(f"{progress['pending']} studies with post-ingest work pending")
    if progress["failures"]:
        problems.append(f"{progress['failures']} copy failures outstanding")
    if progress["removals"]:
        problems.append(f"{progress['removals']} file removals left pending")

    wrong = [uid for uid, digests in ledger.downloaded.items() if digests != {sha.get(uid)}]
    if wrong:
        problems.append(f"{len(wrong)} instances downloaded with other bytes than the index's")
    if not ledger.acked:
        problems.append("no instance was acknowledged")
    if not stats.downloads:
        problems.append("no study was downloaded")
    # Every package a citizen asked for was built: none left queued, running or failed.
    unready = box.sql("SELECT id, status, error FROM portal_downloadpackage WHERE status NOT IN ('ready', 'purged')")
    if unready:
        problems.append(f"{len(unready)} package requests never ready: {unready[:3]}")
    if box.citizens and not stats.packages:
        problems.append("no citizen's package was downloaded")
    elif box.citizens and not stats.packages_longterm:
        problems.append("no citizen's package was asked for while its study was on S3 only")
    return problems


@contextmanager
def work_dir(keep: Path | None = None) -> Iterator[Path]:
    """A temporary folder for the run, or ``keep`` (emptied first) when given."""
    if keep:
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        yield keep
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pacs-region-") as tmp:
        yield Path(tmp)
