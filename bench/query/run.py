"""Query benchmark: QIDO-RS and C-FIND latency (the WADO-RS retrieve: ``bench/retrieve/run.py``).

Runs against the archive ``bench/query/generate.py`` filled (100,000 studies,
~1,000,000 instances in PostgreSQL), through the real servers started here
as subprocesses: gunicorn (``pacs.wsgi``) and ``manage.py dicom_listener``.

* Latency, p50 and p95 over ``--repeat`` requests per query (after a
  warm-up), each with another value picked at random from the archive, the
  query kinds interleaved so that the machine's ups and downs fall on all:
  QIDO-RS over HTTP (``requests``, one keep-alive session, API token) and
  C-FIND (pynetdicom, Study Root, one association for all):
  by PatientID; by StudyDate range + ModalitiesInStudy=CT (QIDO limit=100);
  by PatientName wildcard (``ROSS*``, QIDO limit=100; ``ROSSI^MA*``; and
  ``*OSS*^MA*``, wildcards inside, QIDO limit=100);
  the series of one study. The median number of matches is printed with
  each, and the issue's goal (p95 < 15 ms for PatientID and series, < 50 ms
  for range and wildcard).
* The WADO-RS retrieve (MB/s against the floor of reading the same stored
  files, the gunicorn worker's peak RSS) moved to ``bench/retrieve/run.py``,
  issue 21's retrieve benchmark: one measurement, in one place.
* ``--explain``: EXPLAIN (ANALYZE, BUFFERS) of the SQL ``archive.query``
  runs for one value of each query kind.

Run: ``.venv/bin/python bench/query/generate.py`` once, then
``.venv/bin/python bench/query/run.py [--repeat N] [--explain]``.
This is a benchmark, not a test: it asserts nothing (``--strict`` only exits 1
when a query kind failed). ``--smoke`` runs every part once at its smallest, in
seconds, on the archive ``generate.py --smoke`` writes (200 studies): one round of
each query kind, no warm-up, one gunicorn worker, ``--sql 1``, ``--explain``, ``--strict``; the test suite
runs it (``tests/bench/test_benchmarks.py``) so that the benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

from bench.common import server_env  # noqa: E402

PYTHON = sys.executable
BIN = Path(PYTHON).parent
DEFAULT_URL = os.environ.get("BENCH_QUERY_DB_URL", "postgres://postgres@127.0.0.1:5432/pacs_bench_query")
CALLING_AE = "BENCHSCU"
FACILITY = "TS-CAT"
DICOM_JSON = "application/dicom+json"

# Return keys a workstation's study browser asks for (C-FIND; QIDO returns its defaults).
STUDY_KEYS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]
SERIES_KEYS = [
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
]


# --- servers ----------------------------------------------------------------------


def _wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 60) -> re.Match[str]:
    """Wait until the server's log has a line matching ``pattern`` (its readiness message)."""
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


@dataclass
class Servers:
    web: subprocess.Popen
    web_port: int
    dicom: subprocess.Popen
    dicom_port: int
    logs: Path

    def stop(self) -> None:
        for proc in (self.web, self.dicom):
            if proc.poll() is None:
                proc.terminate()
        for proc in (self.web, self.dicom):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def web_workers(self) -> list[int]:
        """The gunicorn master's children: the worker processes."""
        pid = self.web.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            children = []
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == pid:
                    children.append(int(stat.parent.name))
            return children


def servers_start(env: dict[str, str], logs: Path, *, workers: int, threads: int, checkout: Path = REPO) -> Servers:
    """gunicorn and the DICOM listener, run from ``checkout`` (another checkout's
    servers against the same archive: before and after a change)."""
    logs.mkdir(parents=True, exist_ok=True)
    web_log, dicom_log = logs / "gunicorn.log", logs / "dicom_listener.log"
    gunicorn = BIN / "gunicorn"
    web = subprocess.Popen(
        [str(gunicorn), "pacs.wsgi", "--bind", "127.0.0.1:0", "--workers", str(workers), "--threads", str(threads)],
        cwd=checkout,
        env=env,
        stdout=web_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    dicom = subprocess.Popen(
        [PYTHON, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0"],
        cwd=checkout,
        env=env,
        stdout=dicom_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        web_port = int(_wait_for_line(web_log, r"Listening at: http://127\.0\.0\.1:(\d+)", web).group(1))
        # gunicorn says it listens before its workers have loaded Django.
        _wait_for_line(web_log, r"Booting worker with pid", web)
        dicom_port = int(_wait_for_line(dicom_log, r"DICOM listener ready on [\d.]+:(\d+)", dicom).group(1))
    except BaseException:
        for proc in (web, dicom):
            proc.terminate()
            proc.wait()
        raise
    return Servers(web, web_port, dicom, dicom_port, logs)


# --- the archive's side -------------------------------------------------------------


def bench_accounts() -> tuple[str, str]:
    """A staff user with an API token and a query/retrieve node for the calling AE; (token, called AE)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from archive.api_tokens import api_token_issue
    from archive.models import Facility, RemoteNode

    facility = Facility.objects.get(code=FACILITY)
    user, _ = get_user_model().objects.get_or_create(username="bench-query", defaults={"is_staff": True})
    user.is_staff = True
    user.save()
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="archive",
            codename__in=[f"view_{m}" for m in ("patient", "study", "series", "instance")],
        )
    )
    token = api_token_issue(user=user)
    node: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 104,
        "description": "bench/query",
        "can_query": True,
        "can_retrieve": True,
    }
    # Since the access policy (archive.access) a node sees its facility's studies unless its
    # scope says more: the region's, as the bench's staff user does, so that every checkout
    # answers the same queries with the same matches.
    if any(f.name == "scope" for f in RemoteNode._meta.get_fields()):
        node["scope"] = "region"
    RemoteNode.objects.update_or_create(facility=facility, ae_title=CALLING_AE, defaults=node)
    return token.key, facility.ae_title


@dataclass
class Values:
    """Realistic query values, picked at random from the archive."""

    patient_ids: list[str]
    date_ranges: list[str]
    name_prefixes: list[str]  # ROSS*
    name_given: list[str]  # ROSSI^MA*
    name_inner: list[str]  # *OSS*^MA* (wildcards inside: no index answers it)
    study_uids: list[str]


def _cycle(items: list[Any], count: int) -> list[Any]:
    """``items`` repeated up to ``count`` (a small archive has fewer values than requests)."""
    if not items:
        raise RuntimeError("the archive has no studies to pick query values from")
    return (items * (count // len(items) + 1))[:count]


def values_pick(count: int, rng: random.Random) -> Values:
    from django.db import connection

    with connection.cursor() as c:
        # The same values from the same archive, run after run (before and after a change).
        c.execute("SELECT setseed(%s)", [rng.random() * 2 - 1])
        # Patients uniformly (not studies: that would favour the long tail's patients).
        c.execute(
            "SELECT dicom_patient_id FROM (SELECT DISTINCT dicom_patient_id FROM archive_study) p "
            "ORDER BY random() LIMIT %s",
            [count],
        )
        patient_ids = _cycle([r[0] for r in c.fetchall()], count)
        c.execute("SELECT count(*) FROM archive_study")
        # A sample of the rows (5 %, more in a small archive, where 5 % is too few).
        percent = min(100.0, max(5.0, 400.0 * count / max(1, c.fetchone()[0])))
        c.execute(
            "SELECT patient_name, study_instance_uid FROM archive_study TABLESAMPLE BERNOULLI (%s) REPEATABLE (%s) "
            "ORDER BY random() LIMIT %s",
            [percent, rng.randrange(1 << 30), count],
        )
        rows = _cycle(c.fetchall(), count)
        c.execute("SELECT min(study_date), max(study_date) FROM archive_study")
        first, last = c.fetchone()
    names = [r[0] for r in rows]
    span = (last - first).days
    ranges = []
    for _ in range(count):
        # A reporting list's window: from one day to a month.
        start = first + dt.timedelta(days=rng.randrange(span))
        end = start + dt.timedelta(days=rng.randint(0, 30))
        ranges.append(f"{start:%Y%m%d}-{end:%Y%m%d}")
    prefixes = []
    given = []
    inner = []
    for name in names:
        family, _, first_name = name.partition("^")
        prefixes.append(family[: rng.randint(3, 5)].rstrip() + "*")
        given.append(f"{family}^{first_name[:2]}*")
        inner.append(f"*{family[1:4]}*^{first_name[:2]}*")
    return Values(patient_ids, ranges, prefixes, given, inner, [r[1] for r in rows])


# --- latency ------------------------------------------------------------------------


@dataclass
class Timings:
    """Timings and match counts of one query kind."""

    label: str
    goal_ms: float | None
    every: int = 1  # run in one round of this many (the slowest kinds, so that a run stays short)
    seconds: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Untimed work after each timed request (the raw C-FIND client's decoding), and its seconds.
    after: Callable[[], float] | None = None
    after_seconds: list[float] = field(default_factory=list)
    # The serving process's CPU seconds so far (C-FIND: the listener's), read around each request.
    cpu: Callable[[], float] | None = None
    cpu_seconds: list[float] = field(default_factory=list)
    # The database backends' CPU seconds so far (C-FIND with --skip-qido), around each request.
    db_cpu: Callable[[], float] | None = None
    db_cpu_seconds: list[float] = field(default_factory=list)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> Callable[[], float]:
    """A probe of the process's CPU seconds so far, user and system, all its threads."""
    return lambda: _cpu_seconds(pid)


def backends_cpu() -> Callable[[], float]:
    """A probe of the CPU seconds so far of the PostgreSQL backends serving this
    database to others than this process (with ``--skip-qido``: the listener's),
    read from /proc (PostgreSQL on this machine), as a running total: each
    backend's growth since it was last seen, a new one's from its start (what a
    backend did between its last reading and its end is lost)."""
    from django.db import connection

    seen: dict[int, float] = {}
    total = 0.0

    def probe() -> float:
        nonlocal seen, total
        with connection.cursor() as c:
            c.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            pids = [r[0] for r in c.fetchall()]
        now: dict[int, float] = {}
        for pid in pids:
            try:
                now[pid] = _cpu_seconds(pid)
            except OSError:
                continue
            total += now[pid] - seen.get(pid, 0.0)
        seen = now
        return total

    return probe


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


class Qido:
    def __init__(self, port: int, token: str) -> None:
        import requests

        self.base = f"http://127.0.0.1:{port}/dicomweb"
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}", "Accept": DICOM_JSON})

    def get(self, path: str, params: dict[str, Any]) -> int:
        r = self.session.get(self.base + path, params=params, timeout=60)
        if r.status_code == 204:
            return 0
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code} {r.text[:200]}")
        return len(r.json())


def find_identifier(level: str, matching: dict[str, str], keys: list[str]) -> Any:
    """A C-FIND identifier: the level, each return key empty, each matching key's value."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for kw in keys:
        setattr(ds, kw, "")
    for kw, value in matching.items():
        setattr(ds, kw, value)
    return ds


class Cfind:
    def __init__(self, port: int, called_ae: str) -> None:
        from pynetdicom import _config
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        # pynetdicom's AE without its reactor race (issue 875), which made this client
        # time out on about one C-FIND in 240.
        from archive.dicomnet.fence import CheckedAE as AE

        # pynetdicom formats every identifier it receives for its debug log, logged or not:
        # the client's cost, not the archive's.
        _config.LOG_RESPONSE_IDENTIFIERS = False

        self.model = StudyRootQueryRetrieveInformationModelFind
        ae = AE(ae_title=CALLING_AE)
        ae.add_requested_context(self.model)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        self.ae = ae
        self.assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        if not self.assoc.is_established:
            raise RuntimeError(f"association to {called_ae} on port {port} was not established")
        # DCMTK's tools turn Nagle's algorithm off (TCP_NODELAY, their default); pynetdicom
        # does not, and a request written as two PDUs (command, identifier) then waits for
        # the peer's delayed ACK: 40 ms per query that no workstation pays.
        self.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def find(self, level: str, matching: dict[str, str], keys: list[str]) -> int:
        ds = find_identifier(level, matching, keys)
        n = 0
        for status, _identifier in self.assoc.send_c_find(ds, self.model):
            code = getattr(status, "Status", None)
            if code is None:
                raise RuntimeError("no response (association aborted or timed out)")
            if code in (0xFF00, 0xFF01):
                n += 1
            elif code != 0x0000:
                comment = getattr(status, "ErrorComment", "")
                if code == 0xA700 and n:  # more than PACS_QUERY_MAX_MATCHES: the matches sent are counted
                    return n
                raise RuntimeError(f"C-FIND status 0x{code:04X} {comment}")
        return n

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


class RawFind:
    """A minimal C-FIND SCU on a plain socket, so that the client does not dominate the
    measurement: one association (Study Root, Implicit VR Little Endian, the largest
    PDU the listener takes), the request written as one PDU, and the responses read
    as PDUs whose command sets are scanned for their Status only; the identifiers are
    kept as bytes. Timed from the request's write to the final response's last byte.
    ``decode_seconds`` is what decoding those identifiers with pydicom then costs
    (outside the timing): what a Python client such as pynetdicom's adds."""

    MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
    IMPLICIT = "1.2.840.10008.1.2"

    def __init__(self, port: int, called_ae: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.message_id = 0
        self.answers: list[bytes] = []
        self.sock.sendall(self._associate_rq(CALLING_AE, called_ae))
        pdu_type, body = self._read_pdu()
        if pdu_type != 0x02:
            raise RuntimeError(f"association refused (PDU type 0x{pdu_type:02X})")
        if not self._context_accepted(body):
            raise RuntimeError("Study Root FIND in Implicit VR Little Endian was not accepted")

    @staticmethod
    def _item(kind: int, data: bytes) -> bytes:
        return bytes([kind, 0]) + len(data).to_bytes(2, "big") + data

    def _associate_rq(self, calling: str, called: str) -> bytes:
        from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

        item = self._item
        context = item(0x20, b"\x01\0\0\0" + item(0x30, self.MODEL.encode()) + item(0x40, self.IMPLICIT.encode()))
        user = item(0x50, item(0x51, (0).to_bytes(4, "big")) + item(0x52, PYDICOM_IMPLEMENTATION_UID.encode()))
        body = (
            b"\0\x01\0\0"
            + called.encode().ljust(16)
            + calling.encode().ljust(16)
            + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1")
            + context
            + user
        )
        return bytes([0x01, 0]) + len(body).to_bytes(4, "big") + body

    @staticmethod
    def _context_accepted(body: bytes | bytearray) -> bool:
        at = 68  # past the fixed fields of an A-ASSOCIATE-AC
        while at + 4 <= len(body):
            kind, length = body[at], int.from_bytes(body[at + 2 : at + 4], "big")
            if kind == 0x21 and body[at + 4] == 1:
                return body[at + 6] == 0  # result: acceptance
            at += 4 + length
        return False

    def _read_exact(self, n: int) -> bytearray:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(1 << 20, n - len(self.buffer)))
            if not chunk:
                raise ConnectionError("the listener closed the connection")
            self.buffer += chunk
        data = self.buffer[:n]
        del self.buffer[:n]
        return data

    def _read_pdu(self) -> tuple[int, bytearray]:
        head = self._read_exact(6)
        return head[0], self._read_exact(int.from_bytes(head[2:6], "big"))

    @staticmethod
    def _command_fields(command: bytes | bytearray) -> dict[int, bytes]:
        """The elements of an implicit VR little endian command set, tag -> value bytes."""
        fields, at = {}, 0
        while at + 8 <= len(command):
            tag = int.from_bytes(command[at : at + 2], "little") << 16 | int.from_bytes(
                command[at + 2 : at + 4], "little"
            )
            length = int.from_bytes(command[at + 4 : at + 8], "little")
            fields[tag] = bytes(command[at + 8 : at + 8 + length])
            at += 8 + length
        return fields

    def find(self, level: str, matching: dict[str, str], keys: list[str]) -> int:
        from io import BytesIO

        from pynetdicom.dimse_messages import C_FIND_RQ
        from pynetdicom.dimse_primitives import C_FIND
        from pynetdicom.dsutils import encode

        ds = find_identifier(level, matching, keys)
        self.message_id = self.message_id % 65535 + 1
        req = C_FIND()
        req.MessageID = self.message_id
        req.AffectedSOPClassUID = self.MODEL
        req.Priority = 2
        req.Identifier = BytesIO(encode(ds, True, True))
        message = C_FIND_RQ()
        message.primitive_to_message(req)
        command = encode(message.command_set, True, True)
        identifier = req.Identifier.getvalue()
        pdvs = [
            (len(command) + 2).to_bytes(4, "big") + b"\x01\x03" + command,
            (len(identifier) + 2).to_bytes(4, "big") + b"\x01\x02" + identifier,
        ]
        body = b"".join(pdvs)
        self.sock.sendall(b"\x04\0" + len(body).to_bytes(4, "big") + body)
        answers: list[bytes] = []
        command_part, data_part = bytearray(), bytearray()
        status = None
        while True:
            pdu_type, body = self._read_pdu()
            if pdu_type != 0x04:
                raise RuntimeError(f"PDU type 0x{pdu_type:02X} during a C-FIND")
            at = 0
            while at < len(body):
                length = int.from_bytes(body[at : at + 4], "big")
                control = body[at + 5]
                value = body[at + 6 : at + 4 + length]
                at += 4 + length
                if control & 1:
                    command_part += value
                    if control & 2:
                        fields = self._command_fields(command_part)
                        command_part = bytearray()
                        status = int.from_bytes(fields.get(0x00000900, b"\xff\xff"), "little")
                        if status not in (0xFF00, 0xFF01):
                            comment = fields.get(0x00000902, b"").decode(errors="replace").strip()
                            self.answers = answers
                            if status == 0xA700 and answers:  # past PACS_QUERY_MAX_MATCHES: those sent count
                                return len(answers)
                            if status != 0x0000:
                                raise RuntimeError(f"C-FIND status 0x{status:04X} {comment}")
                            return len(answers)
                else:
                    data_part += value
                    if control & 2:
                        answers.append(bytes(data_part))
                        data_part = bytearray()

    def decode(self) -> float:
        """Decode the last answer's identifiers with pydicom (as pynetdicom's SCU does,
        without its per-response work); the seconds it took."""
        from io import BytesIO

        from pynetdicom.dsutils import decode

        start = time.perf_counter()
        for data in self.answers:
            ds = decode(BytesIO(data), True, True)
            for _elem in ds:  # pydicom converts raw elements when they are read
                pass
        return time.perf_counter() - start

    def close(self) -> None:
        try:
            self.sock.sendall(b"\x05\0\0\0\0\x04\0\0\0\0")  # A-RELEASE-RQ
            self._read_pdu()
        except OSError:
            pass
        self.sock.close()


def latency_run(
    kinds: list[tuple[Timings, Callable[[int], int]]], *, repeat: int, warmup: int, progress: bool = True
) -> None:
    """Call each kind's function with i = 0.. (the i-th value), interleaved; warm-up calls are not kept."""
    for i in range(warmup + repeat):
        for result, call in kinds:
            if i % result.every:
                continue
            if len(result.errors) >= 5:
                continue  # not working: say so once, do not hammer it
            cpu = result.cpu() if result.cpu is not None else 0.0
            db_cpu = result.db_cpu() if result.db_cpu is not None else 0.0
            start = time.perf_counter()
            try:
                n = call(i)
            except Exception as exc:
                result.errors.append(" ".join(f"{type(exc).__name__}: {exc}".split()))
                continue
            elapsed = time.perf_counter() - start
            if result.cpu is not None and i >= warmup:
                result.cpu_seconds.append(result.cpu() - cpu)
            if result.db_cpu is not None and i >= warmup:
                result.db_cpu_seconds.append(result.db_cpu() - db_cpu)
            after = result.after() if result.after is not None else None
            if i >= warmup:
                result.seconds.append(elapsed)
                result.matches.append(n)
                if after is not None:
                    result.after_seconds.append(after)
        if progress and (i + 1) % 50 == 0:
            print(f"  {i + 1}/{warmup + repeat} rounds", file=sys.stderr, flush=True)


def latency_print(title: str, results: list[Timings]) -> None:
    print(f"\n{title}")
    print(f"{'query':<52}{'n':>5}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}{'matches':>9}{'goal p95':>10}  verdict")
    for r in results:
        if not r.seconds:
            reason = r.errors[0] if r.errors else "not run"
            print(f"{r.label:<52}{'not measured: ' + reason[:160]}")
            continue
        ms = [s * 1000 for s in r.seconds]
        p50, p95 = _pct(ms, 50), _pct(ms, 95)
        goal = f"< {r.goal_ms:.0f} ms" if r.goal_ms else ""
        verdict = "" if r.goal_ms is None else ("ok" if p95 < r.goal_ms else "MISSED")
        med = statistics.median(r.matches)
        line = f"{r.label:<52}{len(ms):>5}{p50:>8.1f}{p95:>8.1f}{max(ms):>8.1f}{med:>9.0f}{goal:>10}  {verdict}"
        if r.cpu_seconds:
            # Clock ticks (10 ms): only the mean over many requests means anything.
            line += f"  listener CPU {statistics.mean(r.cpu_seconds) * 1000:.1f} ms/request"
        if r.db_cpu_seconds:
            line += f"  database CPU {statistics.mean(r.db_cpu_seconds) * 1000:.1f} ms/request"
        if r.after_seconds:
            after = [s * 1000 for s in r.after_seconds]
            line += f"  decode p50 {_pct(after, 50):.1f} / p95 {_pct(after, 95):.1f} ms"
        print(line)
        if r.errors:
            print(f"{'':<52}({len(r.errors)} failed: {r.errors[0][:120]})")


# --- EXPLAIN --------------------------------------------------------------------------


def _engine_options() -> dict[str, Any]:
    """What the engine needs besides the identifier: since the access policy
    (archive.access) it asks who is querying, the bench's staff user here."""
    from archive.query import query_values

    if "principal" not in inspect.signature(query_values).parameters:
        return {}
    from django.contrib.auth import get_user_model

    from archive import access

    return {"principal": access.principal_for_user(get_user_model().objects.get(username="bench-query"))}


def _engine_statements(
    level: str, matching: dict[str, str], limit: int | None, options: dict[str, Any]
) -> tuple[int, list[tuple[str, Any]]]:
    """Run one query through ``archive.query.query_run``: (matches, the statements it sent)."""
    from django.db import connection
    from pydicom.dataset import Dataset

    from archive.query import query_run

    captured: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        captured.append((sql, params))
        return execute(sql, params, many, context)

    ds = Dataset()
    for kw in STUDY_KEYS if level == "STUDY" else SERIES_KEYS:
        setattr(ds, kw, "")
    for kw, value in matching.items():
        setattr(ds, kw, value)
    with connection.execute_wrapper(capture):
        n = sum(1 for _ in query_run(ds, level=level, limit=limit, **options))
    return n, captured


def explain(queries: list[tuple[str, str, dict[str, str], int | None]]) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of every statement ``archive.query.query_run`` sends for each query."""
    from django.db import connection

    options = _engine_options()
    for label, level, matching, limit in queries:
        n, captured = _engine_statements(level, matching, limit, options)
        print(f"\n--- {label}: {matching} (limit {limit}), {n} matches")
        for sql, params in captured:
            with connection.cursor() as c:
                c.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                print("\n".join(r[0] for r in c.fetchall()))


def sql_run(kinds: list[tuple[Timings, Callable[[int], tuple[str, dict[str, str], int | None]]]], count: int) -> None:
    """The database's own time for each query kind: planning + execution of the statements
    the engine sends (EXPLAIN ANALYZE, timing per node off), for ``count`` values each.

    Apart from the clients, the servers' Python and the machine's other load, this
    is what the matching and the access policy's condition cost in the database."""
    from django.db import connection

    options = _engine_options()
    for i in range(count):
        for result, make in kinds:
            level, matching, limit = make(i)
            n, captured = _engine_statements(level, matching, limit, options)
            total = 0.0
            for sql, params in captured:
                with connection.cursor() as c:
                    c.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
                    plan = c.fetchone()[0]
                    plan = plan[0] if isinstance(plan, list) else plan
                    total += plan["Planning Time"] + plan["Execution Time"]
            result.seconds.append(total / 1000)
            result.matches.append(n)


# --- main ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--repeat", type=int, default=300, help="timed requests per query kind")
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests per query kind first")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=2, help="gunicorn threads per worker")
    parser.add_argument(
        "--skip-wado",
        action="store_true",
        help="no effect: the WADO-RS retrieve is measured by bench/retrieve/run.py (kept for recorded commands)",
    )
    parser.add_argument("--skip-latency", action="store_true", help="no servers, no QIDO-RS/C-FIND latency")
    parser.add_argument("--skip-qido", action="store_true", help="C-FIND latency only")
    parser.add_argument(
        "--servers-from",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="run gunicorn and the listener from another checkout (e.g. `git archive` of the commit before a change)",
    )
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the query behind each kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--find-client",
        choices=["raw", "pynetdicom", "both"],
        default="raw",
        help="C-FIND client: a minimal one on a socket (raw), pynetdicom's SCU, or both (interleaved)",
    )
    parser.add_argument(
        "--min-studies", type=int, default=1000, help="refuse a smaller archive (the test suite's smoke run: 100)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a query kind failed")
    parser.add_argument(
        "--smoke", action="store_true", help="every part once at its smallest, in seconds, --strict (the test suite)"
    )
    parser.add_argument(
        "--sql",
        type=int,
        default=0,
        metavar="N",
        help="also the database's time (EXPLAIN ANALYZE) for N values per kind",
    )
    args = parser.parse_args()
    if args.smoke:
        # Each query kind once (the kinds run one round in `every` run in round 0 too), one
        # worker, the database's time and its
        # plans for one value: every part of the benchmark, on generate.py --smoke's archive.
        args.repeat, args.warmup, args.workers = 1, 0, 1
        args.skip_latency = False
        args.sql, args.explain, args.strict, args.min_studies = 1, True, True, 100
        args.find_client = "both"

    name = urlparse(args.database_url).path.lstrip("/")
    if name == "test" or name.startswith("test_"):
        sys.exit(f"refusing database {name!r}: the test suites own test and test_*")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="pacs-bench-query-") as tmp:
        work = Path(tmp)
        env = server_env(args.database_url, work / "var")
        import django

        django.setup()
        from django.core.management import call_command

        from archive.models import Instance, Study

        call_command("migrate", verbosity=0, interactive=False)  # the checkout may have new migrations
        studies = Study.objects.count()
        if studies < args.min_studies:
            sys.exit(f"{name} holds {studies} studies: run bench/query/generate.py first")
        instances = Instance.objects.count()
        token, called_ae = bench_accounts()
        values = values_pick(args.repeat + args.warmup, rng)
        print(
            f"archive: {studies:,} studies, {instances:,} instances in {name}; "
            f"{len(values.patient_ids)} values per query kind",
            file=sys.stderr,
        )

        if args.explain:
            explain(
                [
                    ("PatientID", "STUDY", {"PatientID": values.patient_ids[0]}, None),
                    (
                        "StudyDate range + CT",
                        "STUDY",
                        {"StudyDate": values.date_ranges[0], "ModalitiesInStudy": "CT"},
                        100,
                    ),
                    ("PatientName prefix", "STUDY", {"PatientName": values.name_prefixes[0]}, 100),
                    ("PatientName family^given*", "STUDY", {"PatientName": values.name_given[0]}, None),
                    ("PatientName *inner*^given*", "STUDY", {"PatientName": values.name_inner[0]}, 100),
                    ("series of a study", "SERIES", {"StudyInstanceUID": values.study_uids[0]}, None),
                ]
            )

        if args.sql:
            v = values
            sql_results = [
                Timings("PatientID", None),
                Timings("StudyDate range + ModalitiesInStudy=CT, limit 100", None),
                Timings("PatientName=ROSS* (prefix), limit 100", None),
                Timings("PatientName=ROSSI^MA* (family^given*), up to 1001", None),
                Timings("PatientName=*OSS*^MA* (inner wildcards), limit 100", None),
                Timings("SERIES level, StudyInstanceUID=<uid>", None),
            ]
            sql_kinds: list[Callable[[int], tuple[str, dict[str, str], int | None]]] = [
                lambda i: ("STUDY", {"PatientID": v.patient_ids[i]}, 1001),
                lambda i: ("STUDY", {"StudyDate": v.date_ranges[i], "ModalitiesInStudy": "CT"}, 100),
                lambda i: ("STUDY", {"PatientName": v.name_prefixes[i]}, 100),
                lambda i: ("STUDY", {"PatientName": v.name_given[i]}, 1001),
                lambda i: ("STUDY", {"PatientName": v.name_inner[i]}, 100),
                lambda i: ("SERIES", {"StudyInstanceUID": v.study_uids[i]}, 1001),
            ]
            print("measuring the database's time of each query", file=sys.stderr, flush=True)
            sql_run(list(zip(sql_results, sql_kinds, strict=True)), min(args.sql, len(v.patient_ids)))
            latency_print(
                "In the database: planning + execution of the engine's statements (EXPLAIN ANALYZE), "
                "as QIDO-RS sends them",
                sql_results,
            )

        if args.skip_latency:
            return
        servers = servers_start(
            env, work / "logs", workers=args.workers, threads=args.threads, checkout=args.servers_from
        )
        try:
            print(
                f"gunicorn on :{servers.web_port} ({args.workers} workers x {args.threads} threads), "
                f"dicom_listener on :{servers.dicom_port}",
                file=sys.stderr,
                flush=True,
            )
            qido = Qido(servers.web_port, token)
            v = values
            qido_results = [
                Timings("PatientID", 15),
                Timings("StudyDate range + ModalitiesInStudy=CT, limit 100", 50),
                Timings("PatientName=ROSS* (prefix), limit 100", 50),
                Timings("PatientName=ROSSI^MA* (family^given*, no limit)", 50),
                Timings("PatientName=*OSS*^MA* (inner wildcards), limit 100", 50),
                Timings("series of one study (/studies/{uid}/series)", 15),
            ]
            qido_calls: list[Callable[[int], int]] = [
                lambda i: qido.get("/studies", {"PatientID": v.patient_ids[i]}),
                lambda i: qido.get(
                    "/studies", {"StudyDate": v.date_ranges[i], "ModalitiesInStudy": "CT", "limit": 100}
                ),
                lambda i: qido.get("/studies", {"PatientName": v.name_prefixes[i], "limit": 100}),
                lambda i: qido.get("/studies", {"PatientName": v.name_given[i]}),
                lambda i: qido.get("/studies", {"PatientName": v.name_inner[i], "limit": 100}),
                lambda i: qido.get(f"/studies/{v.study_uids[i]}/series", {}),
            ]
            if args.skip_qido:
                qido_results, qido_calls = [], []
            find_runs: list[tuple[str, list[Timings], list[Callable[[int], int]], Any]] = []
            clients = ["raw", "pynetdicom"] if args.find_client == "both" else [args.find_client]
            for client in clients:
                find_results = [
                    Timings("PatientID", 15),
                    Timings("StudyDate range + ModalitiesInStudy=CT (all)", 50),
                    Timings("PatientName=ROSS* (all, up to the maximum)", 50, every=5),
                    Timings("PatientName=ROSSI^MA* (family^given*)", 50),
                    Timings("PatientName=*OSS*^MA* (inner wildcards, all)", 50),
                    Timings("SERIES level, StudyInstanceUID=<uid>", 15),
                ]
                try:
                    find: RawFind | Cfind | None = (RawFind if client == "raw" else Cfind)(
                        servers.dicom_port, called_ae
                    )
                except Exception as exc:
                    find = None
                    for r in find_results:
                        r.errors.append(f"{type(exc).__name__}: {exc}")
                for r in find_results:
                    r.cpu = process_cpu(servers.dicom.pid)
                    if args.skip_qido:
                        r.db_cpu = backends_cpu()
                    if isinstance(find, RawFind):
                        r.after = find.decode

                def cfind(level: str, matching: dict[str, str], find: RawFind | Cfind | None = find) -> int:
                    if find is None:
                        raise RuntimeError("no association")
                    return find.find(level, matching, STUDY_KEYS if level == "STUDY" else SERIES_KEYS)

                find_calls: list[Callable[[int], int]] = [
                    lambda i, f=cfind: f("STUDY", {"PatientID": v.patient_ids[i]}),
                    lambda i, f=cfind: f("STUDY", {"StudyDate": v.date_ranges[i], "ModalitiesInStudy": "CT"}),
                    lambda i, f=cfind: f("STUDY", {"PatientName": v.name_prefixes[i]}),
                    lambda i, f=cfind: f("STUDY", {"PatientName": v.name_given[i]}),
                    lambda i, f=cfind: f("STUDY", {"PatientName": v.name_inner[i]}),
                    lambda i, f=cfind: f("SERIES", {"StudyInstanceUID": v.study_uids[i]}),
                ]
                find_runs.append((client, find_results, find_calls, find))
            print("measuring QIDO-RS and C-FIND latency", file=sys.stderr, flush=True)
            all_results = qido_results + [r for _, results, _, _ in find_runs for r in results]
            all_calls = qido_calls + [c for _, _, calls, _ in find_runs for c in calls]
            latency_run(list(zip(all_results, all_calls, strict=True)), repeat=args.repeat, warmup=args.warmup)
            for _, _, _, find in find_runs:
                if find is not None:
                    find.close()
            print(
                f"\nQuery benchmark: {studies:,} studies / {instances:,} instances on PostgreSQL; "
                f"n requests per query after {args.warmup} rounds of warm-up, each with another value "
                f"from the archive; matches = median per request"
            )
            if qido_results:
                latency_print(
                    f"QIDO-RS over HTTP (gunicorn, {args.workers}x{args.threads}, keep-alive, token)", qido_results
                )
            for client, find_results, _, _ in find_runs:
                title = {
                    "raw": "C-FIND (raw SCU: PDUs read, statuses scanned, from request to final response; "
                    "decode = pydicom decoding the identifiers afterwards, untimed)",
                    "pynetdicom": "C-FIND (pynetdicom SCU, decoding each response as it comes)",
                }[client]
                latency_print(f"{title}, Study Root, one association", find_results)
            failed = [r.label for r in all_results if r.errors]
        finally:
            servers.stop()
    if args.strict and failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
