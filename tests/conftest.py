"""Shared fixtures: a small region, DICOM listeners (in-process and as real
processes), a real Celery worker, and DICOM files made from pydicom's bundle."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

from archive.models import Facility, HealthAuthority, RemoteNode
from archive.sample_data import PatientInfo, write_study

if TYPE_CHECKING:  # a type only: importing tests.dicom_client sets pynetdicom's options
    from tests.dicom_client import SendReport

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Passwords hashed in this process take 1,000 PBKDF2 rounds, not Django's million (a third of a
    second each, hundreds of seconds over the suite). The rounds are written in the hash, so any
    process the tests start, with the production settings, still checks these passwords (and
    rehashes them at their next login, as it would after an upgrade)."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    PBKDF2PasswordHasher.iterations = 1_000


@dataclass
class Region:
    authority: HealthAuthority
    facility: Facility
    other_facility: Facility


@pytest.fixture
def region(db: None) -> Region:
    asugi = HealthAuthority.objects.create(code="ASUGI", name="Azienda sanitaria universitaria Giuliano Isontina")
    cattinara = Facility.objects.create(
        code="TS-CAT", name="Ospedale di Cattinara", authority=asugi, ae_title="TSCAT_PACS", dicom_port=11112
    )
    gorizia = Facility.objects.create(
        code="GO-SG", name="Ospedale di Gorizia", authority=asugi, ae_title="GORIZIA_PACS", dicom_port=11113
    )
    for ae in ("STORESCU", "DCMSEND", "MODALITY", "CT01"):
        RemoteNode.objects.create(
            facility=cattinara, ae_title=ae, host="127.0.0.1", port=104, can_store=True, can_worklist=ae == "CT01"
        )
    # DCMTK findscu's default AE title, reading the worklist only.
    RemoteNode.objects.create(facility=cattinara, ae_title="FINDSCU", host="127.0.0.1", port=104, can_worklist=True)
    RemoteNode.objects.create(facility=cattinara, ae_title="VIEWER", host="127.0.0.1", port=104, can_query=True)
    RemoteNode.objects.create(facility=gorizia, ae_title="STORESCU", host="127.0.0.1", port=104, can_store=True)
    return Region(authority=asugi, facility=cattinara, other_facility=gorizia)


@pytest.fixture
def patient() -> PatientInfo:
    return PatientInfo(patient_id="MRN0001", name="Rossi^Mario", birth_date="19700101", sex="M")


@pytest.fixture
def ct_study(tmp_path: Path, patient: PatientInfo) -> list[Path]:
    """One CT study: 2 series of 3 instances."""
    return write_study(tmp_path / "ct", patient=patient, series=2, instances_per_series=3, accession_number="ACC1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


def process_stop(proc: subprocess.Popen, *, timeout: float = 30.0) -> None:  # type: ignore[type-arg]
    """SIGTERM, then SIGKILL if the process is still there after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def database_url() -> str:
    """The test database, as a URL for processes the tests start."""
    s = connection.settings_dict
    if s["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{s['NAME']}"
    auth = quote(s.get("USER") or "")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"])
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{s['NAME']}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``plain_too`` runs twice: with the listener's fast paths
    (``PACS_DICOM_FAST_PATHS``, the default) and with pynetdicom's own behaviour."""
    if metafunc.definition.get_closest_marker("plain_too") is None:
        return
    if "dicom_fast_paths" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: plain_too needs the dicom_fast_paths fixture")
    metafunc.parametrize("dicom_fast_paths", [True, False], ids=["fast", "plain"], indirect=True)


@pytest.fixture
def dicom_fast_paths(request: pytest.FixtureRequest, settings) -> bool:  # type: ignore[no-untyped-def]
    """PACS_DICOM_FAST_PATHS for the listeners the test starts, in-process or as
    processes: on, and off as well for a test marked ``plain_too``."""
    fast = bool(getattr(request, "param", True))
    settings.PACS_DICOM_FAST_PATHS = fast
    return fast


@pytest.fixture
def process_env(transactional_db: None, dicom_fast_paths: bool) -> dict[str, str]:
    """Environment for the listener and worker processes: same settings, the test database."""
    env = dict(os.environ)
    env["PACS_DICOM_FAST_PATHS"] = "1" if dicom_fast_paths else "0"
    env["DATABASE_URL"] = database_url()
    env["PACS_VAR_DIR"] = str(settings.VAR_DIR)
    env["SECRET_KEY"] = settings.SECRET_KEY
    env["PYTHONUNBUFFERED"] = "1"
    env["TCP_NODELAY"] = "1"  # DCMTK 3.6.7 on loopback crawls without it (Nagle)
    return env


@dataclass
class ListenerProcess:
    port: int
    proc: subprocess.Popen
    log_path: Path
    stopped: bool = field(default=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tls_port(self) -> int:
        """The DICOM TLS port the listener bound (``--tls-port 0``), as its log says."""
        found = re.search(r"DICOM TLS on [^\s]+:(\d+) ", self.log())
        assert found, self.log()
        return int(found.group(1))

    def send_and_signal(self, files: list[Path], *, after: int, sig: int) -> tuple[SendReport, list[str]]:
        """Send ``files`` on one association, signalling the listener once ``after`` of them
        were acknowledged with success; the report and the acknowledged UIDs, in order."""
        from tests.dicom_client import send_files

        acked: list[str] = []

        def on_status(uid: str, status: int) -> None:
            if status == 0:
                acked.append(uid)
            if len(acked) == after:
                self.proc.send_signal(sig)

        return send_files(self.port, files, on_status=on_status), acked

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stopped = True


@pytest.fixture
def start_listener_process(process_env: dict[str, str], tmp_path: Path) -> Iterator:
    """Start ``manage.py dicom_listener`` as a real process; stopped at teardown."""
    started: list[ListenerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ListenerProcess:
        # Port 0: the kernel picks a free port at bind time (no race with
        # another process taking a port chosen beforehand); the log says which.
        log_path = tmp_path / f"listener-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=REPO,
            env={**process_env, **(env or {})},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        listener = ListenerProcess(port=0, proc=proc, log_path=log_path)
        started.append(listener)
        # Not a test connection to the port: it would hold an association slot
        # until the ACSE timeout. The listener says when it is bound.
        try:
            wait_until(lambda: "listener ready" in listener.log() or proc.poll() is not None, what="listener")
        except TimeoutError:
            raise RuntimeError(f"listener did not start:\n{listener.log()}") from None
        if proc.poll() is not None:
            raise RuntimeError(f"listener exited:\n{listener.log()}")
        ready = re.search(r"listener ready on [^\s]+:(\d+),", listener.log())
        assert ready, listener.log()
        listener.port = int(ready.group(1))
        return listener

    yield start
    for listener in started:
        if listener.proc.poll() is None:
            listener.proc.kill()
            listener.proc.wait(timeout=30)


@pytest.fixture
def listener(transactional_db: None, region: Region, dicom_fast_paths: bool) -> Iterator[int]:
    """An in-process listener serving every facility; yields its port."""
    from archive.dicomnet.listener import start_listener, stop_listener

    server = start_listener(host="127.0.0.1", port=0)
    try:
        yield int(server.server_address[1])
    finally:
        stop_listener(server, grace=0.0)


@contextmanager
def worker_process(
    process_env: dict[str, str], log_path: Path, queues: list[str], *, purge: bool = True
) -> Iterator[subprocess.Popen]:
    """A real Celery worker process consuming ``queues`` (this session's), every queue emptied first.

    Tasks that earlier tests queued (a booking's prefetch, a recall) refer to
    rows those tests' rollback removed.
    """
    from pacs.celery import app as celery_app

    if purge:
        with celery_app.connection_for_write() as conn:
            for queue in settings.PACS_TASK_QUEUES.values():
                conn.default_channel.queue_declare(queue=queue)
                conn.default_channel.queue_purge(queue)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pacs",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--queues",
            ",".join(queues),
        ],
        cwd=REPO,
        env=process_env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: b"ready." in log_path.read_bytes() or proc.poll() is not None, timeout=60, what="worker ready"
        )
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log_path.read_text()}")
        yield proc
    finally:
        process_stop(proc)


@pytest.fixture
def celery_worker(process_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A real Celery worker process consuming every queue of this session (each kind's, kernel.tasknames.QUEUES)."""
    with worker_process(process_env, tmp_path / "worker.log", list(settings.PACS_TASK_QUEUES.values())) as proc:
        yield proc


@dataclass
class Enqueued:
    """The Celery messages a test sent, kept instead of sent; :meth:`run` runs them here, as a worker would."""

    messages: list[tuple[str, tuple, dict]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _args, _kwargs in self.messages]

    def run(self, *names: str) -> list[object]:
        """Run, in order, the kept tasks named (every one when none is named) and those they queue; their results.

        Each is taken off the list first, so a task that raises is not run again
        by the next call unless the test queues it again (a redelivery).
        """
        from pacs.celery import app

        results: list[object] = []
        while True:
            due = [m for m in self.messages if not names or m[0] in names]
            if not due:
                return results
            name, args, kwargs = due[0]
            self.messages.remove(due[0])
            results.append(app.tasks[name].apply(args=args, kwargs=kwargs, throw=True).get())


@contextmanager
def tasks_kept() -> Iterator[Enqueued]:
    """Keep every message sent to the broker (``delay``, ``apply_async``, ``send_task``) for the caller to run."""
    from celery import Celery
    from celery.result import AsyncResult

    kept = Enqueued()

    def send_task(
        self: Celery, name: str, args: tuple | list | None = None, kwargs: dict | None = None, **options: object
    ) -> AsyncResult:
        kept.messages.append((name, tuple(args or ()), dict(kwargs or {})))
        return AsyncResult(f"kept-{len(kept.messages)}", app=self)

    with mock.patch.object(Celery, "send_task", send_task):
        yield kept


@contextmanager
def broker_down() -> Iterator[list[str]]:
    """The broker refuses every message, as when it is down; yields the names of the tasks lost."""
    from celery import Celery
    from kombu.exceptions import OperationalError

    lost: list[str] = []

    def send_task(self: Celery, name: str, *args: object, **kwargs: object) -> None:
        lost.append(name)
        raise OperationalError("[Errno 111] Connection refused")

    with mock.patch.object(Celery, "send_task", send_task):
        yield lost


@pytest.fixture
def enqueued() -> Iterator[Enqueued]:
    """The test's broker messages, kept (:func:`tasks_kept`)."""
    with tasks_kept() as kept:
        yield kept


@pytest.fixture(scope="session", autouse=True)
def _audit_flush_allowed() -> Iterator[None]:
    """The database refuses to empty the audit tables; the flush between
    transactional tests lifts the guards as their owner would, and this
    process's chains start again with the emptied database.

    On PostgreSQL the flush deletes the rows instead of Django's TRUNCATE of every
    table: a TRUNCATE gives each table (and each index) a new file, about a second
    for the whole schema even when a test wrote to three tables, after each of the
    hundreds of transactional tests. The end is the same, every table empty and no
    sequence reset (a flush that resets them, or cascades, is still Django's). The
    foreign keys are deferred, so the order does not matter; the triggers that guard
    a table against DELETE and not against TRUNCATE (a signed report, the append-only
    booking logs) are lifted for the flush as the audit tables' are."""
    from django.db.backends.base.operations import BaseDatabaseOperations
    from django.db.backends.postgresql.operations import DatabaseOperations as PostgresOperations

    from kernel.audit import audit_chains_forget
    from tests.audit_helpers import AUDIT_TABLES, audit_guards_lifted

    original = BaseDatabaseOperations.execute_sql_flush
    original_sql_flush = PostgresOperations.sql_flush

    def sql_flush(
        self: PostgresOperations,
        style: Any,
        tables: list[str],
        *,
        reset_sequences: bool = False,
        allow_cascade: bool = False,
    ) -> list[str]:
        if reset_sequences or allow_cascade:
            return original_sql_flush(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        return [f"DELETE FROM {self.quote_name(table)};" for table in tables]

    def execute_sql_flush(self: BaseDatabaseOperations, sql_list: list[str]) -> None:
        from django.db import transaction

        connection = self.connection
        deleting = connection.vendor == "postgresql" and any(sql.startswith("DELETE ") for sql in sql_list)
        with transaction.atomic(using=connection.alias):
            tables: tuple[str, ...] = AUDIT_TABLES
            if deleting:
                with connection.cursor() as cursor:  # every table a trigger guards, the audit's among them
                    cursor.execute("SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal")
                    tables = tuple(sorted({t for (t,) in cursor.fetchall()} | set(AUDIT_TABLES)))
            with audit_guards_lifted(connection, tables):
                if deleting:
                    with connection.cursor() as cursor:
                        # Checked on leaving the guards, on empty tables: the order of the DELETEs is free.
                        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
                original(self, sql_list)
        audit_chains_forget()

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush  # type: ignore[method-assign]
    PostgresOperations.sql_flush = sql_flush  # type: ignore[method-assign]
    yield
    BaseDatabaseOperations.execute_sql_flush = original  # type: ignore[method-assign]
    PostgresOperations.sql_flush = original_sql_flush  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _italian_first() -> Iterator[None]:
    """Each test starts in the default language: a request in English (the
    language switch, an Accept-Language header) leaves English active in the
    thread that served it, here the test's own."""
    from django.utils import translation

    translation.activate(settings.LANGUAGE_CODE)
    yield
    translation.activate(settings.LANGUAGE_CODE)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The process umask of a host that lets everyone read (022), for the length of a test:
    the archive's own files must stay 0600 and its folders 0700 all the same."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def assert_private(root: Path, *, file_mode: int = 0o600) -> int:
    """Every folder under ``root`` (itself included) is 0700 and every file ``file_mode``;
    returns how many files were checked."""
    import stat

    wrong = []
    files = 0
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = 0o700 if path.is_dir() else file_mode
        files += not path.is_dir()
        if mode != expected:
            wrong.append(f"{path.relative_to(root)}: {oct(mode)}, not {oct(expected)}")
    assert not wrong, wrong
    return files


@contextmanager
def render_workers_busy(seconds: float) -> Iterator[None]:
    """Every worker of this process's render pool (size ``PACS_RENDER_WORKERS``) busy
    sleeping ``seconds`` in the context; on the way out, waits for them and checks that
    each finished undisturbed."""
    import threading

    from archive.rendering import isolated

    answers: list[object] = []

    def sleep() -> None:
        try:
            answers.append(isolated.run_isolated(time.sleep, seconds, timeout=seconds + 10))
        except Exception as exc:
            answers.append(exc)

    size = isolated.limits().workers
    threads = [threading.Thread(target=sleep) for _ in range(size)]
    for thread in threads:
        thread.start()
    try:
        wait_until(
            lambda: isolated._current is not None and isolated._current.slots._value == 0,  # type: ignore[attr-defined]
            what="every render worker busy",
        )
        yield
    finally:
        for thread in threads:
            thread.join()
    assert answers == [None] * size, answers


@pytest.fixture(autouse=True)
def _render_slots_given_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """No test leaves a slot of this process's render pool taken: one never given back
    makes every later render in the process wait (archive.rendering.isolated)."""
    from archive.rendering import isolated

    yield
    pool = isolated._current
    if pool is None or pool.pid != os.getpid():
        return
    deadline = time.monotonic() + 10
    while pool.slots._value < pool.size and time.monotonic() < deadline:  # type: ignore[attr-defined]  # a live server thread may still be rendering
        time.sleep(0.05)
    taken = pool.size - pool.slots._value  # type: ignore[attr-defined]
    assert taken == 0, f"{request.node.nodeid} left {taken} render slot(s) taken"


@pytest.fixture(autouse=True)
def _empty_tiers() -> Iterator[None]:
    """Each test starts with empty tiers and incoming folders, as its database starts empty."""
    import shutil

    yield
    paths = [Path(settings.PACS_FACILITY_TIER_DIR), Path(settings.PACS_INCOMING_DIR)]
    for alias in ("longterm", "preservation"):
        location = settings.STORAGES.get(alias, {}).get("OPTIONS", {}).get("location")
        if location:
            paths.append(Path(location))
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class S3Server:
    """A moto S3 server in its own process, on 127.0.0.1 (a real HTTP server, not a boto3 mock)."""

    endpoint: str
    bucket: str
    proc: subprocess.Popen

    def env(self) -> dict[str, str]:
        return {
            "PACS_LONGTERM_S3_BUCKET": self.bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_S3_REGION_NAME": "us-east-1",
        }

    def storage_settings(self, **client: float) -> dict:
        from botocore.config import Config

        return {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": self.bucket,
                "endpoint_url": self.endpoint,
                "access_key": "testing",
                "secret_key": "testing",
                "region_name": "us-east-1",
                "file_overwrite": False,
                "client_config": Config(
                    connect_timeout=client.get("connect_timeout", 2.0),
                    read_timeout=client.get("read_timeout", 5.0),
                    retries={"max_attempts": 1, "mode": "standard"},
                    s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            },
        }

    def pause(self) -> None:
        """The store stops answering (connections hang until the client's timeout)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is in requirements-test.txt")
    import boto3

    port = free_port()
    log = tmp_path / "moto.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )

    def accepting() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited:\n{log.read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(accepting, timeout=60, what="moto server")
        server = S3Server(endpoint=f"http://127.0.0.1:{port}", bucket="pacs-longterm", proc=proc)
        boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=server.bucket)
        yield server
    finally:
        proc.send_signal(signal.SIGCONT)
        process_stop(proc, timeout=10)
