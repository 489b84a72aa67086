"""The audit log: one append-only row per access to patient data, in keyed chains.

Evidence, not only a log:

- **Keyed.** Each row carries an HMAC-SHA256 of its content and of the previous
  row's HMAC, under a key kept outside the database (``PACS_AUDIT_KEY_FILE``).
  Whoever holds only the database cannot re-link the rows after removing or
  changing one: the verifier recomputes every HMAC.
- **One chain per writer.** A chain is held by one thread of one process at a
  time, from its first event in a transaction until that transaction commits;
  its tail lives in memory, so writers neither read the tail from the
  database nor wait for each other. A chain whose writer's transaction rolled
  back (or whose commit hook did not run) is abandoned: the next event starts
  a new chain, so a chain never depends on a row that may not exist. A new
  process (or a forked child) starts new chains; a crashed one leaves chains
  that end where its last commit did, each still verifiable.
- **Sealed.** The head of every chain (its last ``seq`` and HMAC) is sealed
  periodically elsewhere (``preservation.audit_seal``: the giornale, with an
  RFC 3161 time stamp), so even a holder of the database *and* the key cannot
  rewrite what a seal covers. The archive does not import preservation: it
  gives the heads (:func:`audit_chain_heads`) and takes the seals back for
  verification through :func:`seal_source_register`.
- **Refused by the database.** UPDATE, DELETE and TRUNCATE are refused by
  triggers (migrations 0002 and 0012); the README names the role to run as.

Rows written before keying (``chain=""``) form the legacy chain: in id order,
unkeyed SHA-256, verified as before and sealed (count and last hash) by the
first seal; no new one can be written (the database refuses it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.db.models.sql import InsertQuery
from django.utils import timezone

from kernel import hashchain
from kernel.models import AuditEvent, AuditEventPatient

from .errors import PacsError

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

logger = logging.getLogger(__name__)


# What the audit reads of an archive's patient and study, so that the kernel
# names no app's model (the rows' foreign keys name them by reference).
class Patient(Protocol):
    pk: Any


class Study(Protocol):
    pk: Any
    patient: Any
    study_instance_uid: str


GENESIS_HASH = hashchain.GENESIS_HASH
LEGACY_CHAIN = ""
MIN_KEY_BYTES = 32

# The triggers the migrations install: the verifier reports any that is gone
# or disabled (SQLite drops a table's triggers when a migration rebuilds it).
GUARDS = {
    "postgresql": [
        "archive_auditevent_no_update",
        "archive_auditevent_no_truncate",
        "archive_auditevent_keyed_only",
        "archive_auditeventpatient_no_update",
        "archive_auditeventpatient_no_truncate",
    ],
    "sqlite": [
        "archive_auditevent_no_update",
        "archive_auditevent_no_delete",
        "archive_auditevent_keyed_only",
        "archive_auditeventpatient_no_update",
        "archive_auditeventpatient_no_delete",
    ],
}


# --- the key ------------------------------------------------------------------------


class AuditKeyError(PacsError):
    """The audit key cannot be read (or made): nothing can be audited, so nothing is served."""

    code = "audit_key"


@dataclass(frozen=True)
class AuditKey:
    id: str
    secret: bytes = field(repr=False)


def key_path() -> Path:
    """The current key's file: ``PACS_AUDIT_KEY_FILE``, else ``PACS_VAR_DIR/audit.key``."""
    return Path(settings.PACS_AUDIT_KEY_FILE or Path(settings.VAR_DIR) / "audit.key").resolve()


def key_may_be_generated(path: Path) -> bool:
    """A missing key is generated only under PACS_VAR_DIR (the demo, ``make run``,
    the tests): a file named elsewhere is a mounted secret, and its absence a
    misconfiguration, not a reason to invent a key nobody else holds."""
    return path.resolve().is_relative_to(Path(settings.VAR_DIR).resolve())


def _key_id(secret: bytes) -> str:
    # Names the key without revealing anything useful about it.
    return hmac.new(secret, b"pacs-audit-key-id", hashlib.sha256).hexdigest()[:16]


def _key_generate(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            # A link is atomic and refuses an existing name: two processes
            # starting together end with one key, never a half-written one.
            os.link(tmp, path)
            logger.warning("audit key generated in %s (demo and tests only: set PACS_AUDIT_KEY_FILE)", path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def key_read(path: Path, *, generate: bool = False) -> AuditKey:
    """The key in ``path`` (its bytes, surrounding whitespace stripped), generated first if asked and absent.

    Raises
    ------
    AuditKeyError
        The file is missing (and not to be generated), unreadable, or shorter
        than ``MIN_KEY_BYTES``.
    """
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        if not generate:
            raise AuditKeyError(f"the audit key file {path} does not exist") from None
        try:
            _key_generate(path)
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise AuditKeyError(f"the audit key file {path} cannot be created: {exc}") from exc
    except OSError as exc:
        raise AuditKeyError(f"the audit key file {path} cannot be read: {exc}") from exc
    if len(secret) < MIN_KEY_BYTES:
        raise AuditKeyError(f"the audit key in {path} is shorter than {MIN_KEY_BYTES} bytes")
    return AuditKey(_key_id(secret), secret)


_keys: dict[Path, AuditKey] = {}


def audit_key() -> AuditKey:
    """The key new chains are written with (read once per process and path)."""
    path = key_path()
    key = _keys.get(path)
    if key is None:
        key = _keys[path] = key_read(path, generate=key_may_be_generated(path))
    return key


def audit_keys() -> dict[str, AuditKey]:
    """Every key the verifier holds, by id: the current one and those of earlier rotations."""
    keys = {}
    for name in settings.PACS_AUDIT_PREVIOUS_KEY_FILES:
        key = key_read(Path(name))
        keys[key.id] = key
    current = audit_key()
    keys[current.id] = current
    return keys


# --- the rows' HMAC -------------------------------------------------------------------


def _content(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at.isoformat(),
        "user_id": event.user_id,
        "username": event.username,
        "ae_title": event.ae_title,
        "system": event.system,
        "action": event.action,
        "outcome": event.outcome,
        "patient_id": event.patient_id,
        "study_id": event.study_id,
        "study_instance_uid": event.study_instance_uid,
        "source": event.source,
        "detail": event.detail,
    }


def row_mac(event: AuditEvent, secret: bytes) -> str:
    """HMAC-SHA256 of a keyed row: its content, its place (chain, seq, key) and the previous HMAC."""
    place = {"chain": event.chain, "seq": event.seq, "key_id": event.key_id}
    return hashchain.link_hash({**_content(event), **place}, prev_hash=event.prev_hash, key=secret)


def legacy_row_hash(event: AuditEvent) -> str:
    """SHA-256 of a row written before keying (``chain=""``), as it was computed then."""
    return hashchain.link_hash(_content(event), prev_hash=event.prev_hash)


# --- the chains of this process ----------------------------------------------------------


class _Chain:
    """A chain's tail as this process knows it: committed, and tentative in the holder's transaction."""

    def __init__(self, key: AuditKey) -> None:
        self.id = uuid.uuid4().hex
        self.key = key
        self.seq = 0
        self.hash = GENESIS_HASH
        # (seq, hash, commit hook) of the last row written in the holder's open transaction.
        self.tentative: tuple[int, str, Callable[[], None]] | None = None
        self.abandoned = False


class _Pool:
    """Chains free to be held; replaced (not emptied) when forgotten, so that a lease
    of an earlier pool can tell and never return its chain here."""

    def __init__(self) -> None:
        # Reentrant: a lease's finalizer may run in a garbage collection that
        # starts while this thread holds the lock.
        self.lock = threading.RLock()
        self.free: list[_Chain] = []


_pool = _Pool()
_local = threading.local()


def _give_back(chain: _Chain, pool: _Pool) -> None:
    if chain.abandoned or chain.tentative is not None or pool is not _pool:
        return
    with pool.lock:
        pool.free.append(chain)


class _Lease:
    """One thread's hold on a chain. Given back when everything the thread wrote there
    is committed, or when the thread ends (its finalizer: the thread-local goes)."""

    def __init__(self, chain: _Chain, pool: _Pool) -> None:
        self.chain = chain
        self.pool = pool
        self.release = weakref.finalize(self, _give_back, chain, pool)


def audit_chains_forget() -> None:
    """Forget this process's chains: the next event starts a new chain.

    Called in a forked child (two processes must never continue one chain)
    and by the test suite after it empties the database.
    """
    global _pool, _local
    _pool = _Pool()
    _local = threading.local()


os.register_at_fork(after_in_child=audit_chains_forget)


def _in_this_transaction(hook: Callable[[], None]) -> bool:
    """Whether ``hook`` still waits for the current transaction's commit.

    Django drops the hooks of a rolled-back transaction or savepoint (the
    latest ones), so the last row's hook being there means every earlier
    tentative row of the chain is still in the transaction too.
    """
    if not connection.in_atomic_block:
        return False
    return any(entry[1] is hook for entry in reversed(connection.run_on_commit))


def _abandon(lease: _Lease) -> None:
    lease.chain.abandoned = True
    lease.release()
    if getattr(_local, "lease", None) is lease:
        _local.lease = None


def _lease() -> _Lease:
    lease: _Lease | None = getattr(_local, "lease", None)
    if lease is not None:
        tentative = lease.chain.tentative
        if lease.pool is not _pool or (tentative is not None and not _in_this_transaction(tentative[2])):
            # Rolled back, or committed with its hook lost: which rows exist is
            # unknown here, so this chain ends with what it has committed.
            _abandon(lease)
            lease = None
    if lease is None:
        with _pool.lock:
            chain = _pool.free.pop() if _pool.free else None
        lease = _Lease(chain or _Chain(audit_key()), _pool)
        _local.lease = lease
    return lease


def _commit_hook(lease: _Lease, seq: int, mac: str) -> Callable[[], None]:
    def committed() -> None:
        chain = lease.chain
        if seq > chain.seq:
            chain.seq, chain.hash = seq, mac
        if chain.tentative is not None and chain.tentative[0] <= seq:
            chain.tentative = None
            if getattr(_local, "lease", None) is lease:
                _local.lease = None
                lease.release()

    return committed


# --- writing ---------------------------------------------------------------------------------


def audit_record(
    *,
    action: str,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    user: User | AnonymousUser | None = None,
    ae_title: str = "",
    system: str = "",
    patient: Patient | None = None,
    study: Study | None = None,
    study_instance_uid: str = "",
    source: str = "",
    detail: dict[str, Any] | None = None,
    patients: Iterable[int | None] | None = None,
) -> AuditEvent:
    """Append one event to this thread's chain and return it.

    The row is written in the caller's transaction (it is committed, or rolled
    back, with what it records); outside one, its INSERT commits by itself before
    this returns.

    Parameters
    ----------
    action : str
        What was done, dotted: ``dicom.store``, ``admin.instance.header``.
    user, ae_title, system
        Who: a logged-in user, a DICOM peer, or a named background process.
    patient, study
        Whose data; the study's patient is taken when only the study is given.
    source : str
        From where: the client's address.
    patients : iterable of patient ids
        Every patient a search returned (deduplicated, the first
        ``PACS_AUDIT_MAX_PATIENTS`` kept in ``detail["patients"]`` and in
        :class:`~kernel.models.AuditEventPatient`, the total counted), so that
        each of them finds the search in their access log.

    Raises
    ------
    AuditKeyError
        The audit key cannot be read: the caller's work must not go on unaudited.
    """
    if study is not None and patient is None:
        patient = study.patient
    if patients is not None:
        detail = {**(detail or {}), **patients_detail(patients)}
    event = AuditEvent(  # type: ignore[misc]  # patient, study: archive's rows, seen here through Protocols
        at=timezone.now(),
        user=user if user is not None and user.is_authenticated else None,
        username=(user.get_username() if user is not None and user.is_authenticated else ""),
        ae_title=ae_title,
        system=system,
        action=action,
        outcome=outcome,
        patient=patient,
        study=study,
        study_instance_uid=study_instance_uid or (study.study_instance_uid if study is not None else ""),
        source=source[:255],
        detail=json.loads(json.dumps(detail or {}, default=str)),
    )
    try:
        return _append(event)
    except IntegrityError:
        # Only a wrong idea of a chain's tail collides on (chain, seq): that
        # chain ends here. Outside a transaction the event goes to a new one;
        # inside, the caller's transaction is spoilt and fails with it.
        _abandon(_lease())
        if connection.in_atomic_block:
            raise
        return _append(event)


def _append(event: AuditEvent) -> AuditEvent:
    lease = _lease()
    chain = lease.chain
    seq, prev = (chain.tentative[0], chain.tentative[1]) if chain.tentative else (chain.seq, chain.hash)
    event.pk = None
    event.chain, event.seq, event.key_id, event.prev_hash = chain.id, seq + 1, chain.key.id, prev
    event.hash = row_mac(event, chain.key.secret)
    links = event.detail.get("patients") or []
    if not connection.in_atomic_block and (not links or connection.vendor == "postgresql"):
        # Outside any transaction (a DICOMweb answer's or a C-FIND's one event): one statement
        # that commits by itself, as durably as a COMMIT (synchronous_commit), in one round trip
        # instead of BEGIN, INSERT, INSERT, COMMIT; with the patients a search returned, the
        # event and its links in one INSERT ... (PostgreSQL's data-modifying WITH: both or
        # neither). Tentative until it returns: if it raises, the row may or may not exist (an
        # answer lost with the connection), and the next event abandons this chain (_lease).
        hook = _commit_hook(lease, event.seq, event.hash)
        chain.tentative = (event.seq, event.hash, hook)
        if links:
            _insert_with_links(event, links)
        else:
            event.save(force_insert=True)
        hook()
        return event
    # No savepoint inside the caller's transaction: two round trips per event
    # saved, and a failure here fails the caller's work, as it must.
    with transaction.atomic(savepoint=False):
        event.save(force_insert=True)
        if links:
            AuditEventPatient.objects.bulk_create(AuditEventPatient(event=event, patient_id=pk) for pk in links)
        hook = _commit_hook(lease, event.seq, event.hash)
        chain.tentative = (event.seq, event.hash, hook)
        # robust: a failing hook registered before ours must not leave this chain held.
        transaction.on_commit(hook, robust=True)
    return event


def _insert_with_links(event: AuditEvent, links: list[int]) -> None:
    """INSERT ``event`` and its patient links in one statement (PostgreSQL), outside a
    transaction: the statement is its own. The event's columns are those ``save`` writes,
    prepared by Django's own insert compiler."""
    meta = AuditEvent._meta
    query = InsertQuery(AuditEvent)
    query.insert_values([f for f in meta.local_concrete_fields if f is not meta.pk], [event])
    compiler = query.get_compiler(connection=connection)
    compiler.returning_fields = [meta.pk]
    [(insert, params)] = compiler.as_sql()
    qn = connection.ops.quote_name
    link = AuditEventPatient._meta
    sql = (
        f"WITH e AS ({insert}), l AS ("
        f"INSERT INTO {qn(link.db_table)} ({qn(link.get_field('event').column)}, "
        f"{qn(link.get_field('patient').column)}) SELECT e.{qn(meta.pk.column)}, p "
        f"FROM e CROSS JOIN unnest(%s::bigint[]) AS p) SELECT {qn(meta.pk.column)} FROM e"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, list(links)])
        [(pk,)] = cursor.fetchall()
    event.pk = pk
    event._state.adding, event._state.db = False, connection.alias


def patients_detail(patients: Iterable[int | None]) -> dict[str, Any]:
    """The patients a search returned, bounded: ``{"patients": [ids...], "patients_total": n}``."""
    seen = list(dict.fromkeys(int(p) for p in patients if p is not None))
    return {"patients": seen[: settings.PACS_AUDIT_MAX_PATIENTS], "patients_total": len(seen)}


# --- chain heads and seals ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChainHead:
    """The last row of a chain: for the legacy chain ``seq`` is its number of rows."""

    chain: str
    seq: int
    hash: str
    event_id: int
    key_id: str
    at: datetime


def audit_chain_heads(*, since: datetime | None = None) -> list[ChainHead]:
    """The head of every chain that has an event at or after ``since`` (every chain, the
    legacy one included, when ``since`` is None), ordered by chain."""
    events = AuditEvent.objects.exclude(chain=LEGACY_CHAIN)
    if since is not None:
        chains = set(events.filter(at__gte=since).values_list("chain", flat=True).distinct())
        events = events.filter(chain__in=chains)
    tails = dict(events.values_list("chain").annotate(last=Max("seq")).values_list("chain", "last"))
    heads = []
    names = sorted(tails)
    for i in range(0, len(names), 200):
        batch = names[i : i + 200]
        rows = AuditEvent.objects.filter(chain__in=batch, seq__in={tails[c] for c in batch})
        for row in rows.only("chain", "seq", "hash", "key_id", "at"):
            if tails[row.chain] == row.seq:
                heads.append(ChainHead(row.chain, row.seq, row.hash, row.pk, row.key_id, row.at))
    if since is None:
        legacy = AuditEvent.objects.filter(chain=LEGACY_CHAIN)
        last = legacy.order_by("-id").only("hash", "at").first()
        if last is not None:
            heads.append(ChainHead(LEGACY_CHAIN, legacy.count(), last.hash, last.pk, "", last.at))
    return sorted(heads, key=lambda h: h.chain)


@dataclass(frozen=True)
class AuditProblem:
    """Where verification fails and what is wrong there."""

    reason: str
    chain: str | None = None
    seq: int | None = None
    event_id: int | None = None
    seal: str = ""

    def __str__(self) -> str:
        where = []
        if self.seal:
            where.append(self.seal)
        if self.chain is not None:
            where.append(f"chain {self.chain or '(legacy)'}")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        if self.event_id is not None:
            where.append(f"event #{self.event_id}")
        return f"{', '.join(where) or 'audit log'}: {self.reason}"


@dataclass(frozen=True)
class SealClaim:
    """What one seal says of one chain: it had ``seq`` rows (legacy: that many), the last
    being ``event_id`` with ``hash``."""

    seal: str
    chain: str
    seq: int
    hash: str
    event_id: int


@dataclass
class SealSet:
    """Every seal, as read (and checked on its own: time stamp, order) by whoever keeps them."""

    claims: list[SealClaim] = field(default_factory=list)
    problems: list[AuditProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a failure
    seals: int = 0
    last: datetime | None = None


SealSource = Callable[[], SealSet]
_seal_source: SealSource | None = None


def seal_source_register(source: SealSource | None) -> None:
    """Install who keeps the seals (``preservation.apps.ready``); None removes it."""
    global _seal_source
    _seal_source = source


# --- verification ------------------------------------------------------------------------


@dataclass
class AuditReport:
    events: int = 0
    chains: int = 0
    legacy: int = 0
    seals: int = 0
    seals_checked: bool = False
    last_seal: datetime | None = None
    unsealed: int = 0  # events after the last seal of their chain
    problems: list[AuditProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit_verify() -> AuditReport:
    """Verify every chain row by row, the patient links, each seal against the chains, and the guards.

    A row is reported where it fails: a missing ``seq``, a ``prev_hash`` that is
    not the previous row's HMAC, an HMAC that does not match its content (a
    change, or a re-hash without the key), a key this verifier does not hold,
    links that differ from the patients the row records, a head a seal
    covered that is gone or different.
    """
    report = AuditReport()
    keys = audit_keys()
    heads: dict[str, tuple[int, str, int]] = {}  # chain -> (seq, hash, event id) as found
    report.legacy, first_keyed = _verify_legacy(report, heads)
    _verify_keyed(report, keys, heads)
    if first_keyed is not None:
        for row in AuditEvent.objects.filter(chain=LEGACY_CHAIN, id__gt=first_keyed).only("id"):
            report.problems.append(
                AuditProblem("an unkeyed (legacy) row after keyed rows began", LEGACY_CHAIN, None, row.pk)
            )
    if _seal_source is not None:
        seals = _seal_source()
        report.seals_checked, report.seals, report.last_seal = True, seals.seals, seals.last
        report.problems.extend(seals.problems)
        report.notes.extend(seals.notes)
        _verify_claims(report, seals.claims, heads)
    report.problems.extend(_verify_guards())
    return report


def _batches(rows: Iterable[AuditEvent], size: int = 2000) -> Iterator[list[AuditEvent]]:
    batch: list[AuditEvent] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _links(batch: list[AuditEvent]) -> dict[int, set[int]]:
    links: dict[int, set[int]] = {}
    pairs = AuditEventPatient.objects.filter(event_id__in=[r.pk for r in batch]).values_list("event_id", "patient_id")
    for event_id, patient_id in pairs:
        links.setdefault(event_id, set()).add(patient_id)
    return links


def _check_links(report: AuditReport, row: AuditEvent, links: dict[int, set[int]]) -> None:
    recorded = row.detail.get("patients") if isinstance(row.detail, dict) else None
    if set(recorded or []) != links.get(row.pk, set()):
        report.problems.append(
            AuditProblem(
                "its patient links differ from the patients it records (a link removed or added)",
                row.chain,
                row.seq,
                row.pk,
            )
        )


def _verify_legacy(report: AuditReport, heads: dict[str, tuple[int, str, int]]) -> tuple[int, int | None]:
    rows = AuditEvent.objects.filter(chain=LEGACY_CHAIN).order_by("id").iterator(chunk_size=2000)
    walk = hashchain.ChainWalk(legacy_row_hash)
    count, last = 0, None
    for row in rows:
        link = walk.step(row)
        count += 1
        if not link.prev_ok:
            report.problems.append(
                AuditProblem(
                    "its prev_hash is not the previous row's hash (a row removed?)", LEGACY_CHAIN, None, row.pk
                )
            )
        if not link.hash_ok:
            report.problems.append(
                AuditProblem("its content does not match its hash (a row changed?)", LEGACY_CHAIN, None, row.pk)
            )
        # No links to compare: legacy rows were written before the link table.
        last = row
    if last is not None:
        heads[LEGACY_CHAIN] = (count, last.hash, last.pk)
        report.chains += 1
    report.events += count
    first = AuditEvent.objects.exclude(chain=LEGACY_CHAIN).order_by("id").values_list("id", flat=True).first()
    return count, first


def _verify_keyed(report: AuditReport, keys: dict[str, AuditKey], heads: dict[str, tuple[int, str, int]]) -> None:
    def row_hash(row: AuditEvent) -> str | None:
        key = keys.get(row.key_id)
        return row_mac(row, key.secret) if key is not None else None

    rows = AuditEvent.objects.exclude(chain=LEGACY_CHAIN).order_by("chain", "seq").iterator(chunk_size=2000)
    walk = hashchain.ChainWalk(row_hash, chain_of=lambda row: row.chain, seq_of=lambda row: int(row.seq or 0))
    for batch in _batches(rows):
        links = _links(batch)
        for row in batch:
            link = walk.step(row)
            seq = int(row.seq or 0)

            def problem(reason: str, row: AuditEvent = row, seq: int = seq) -> None:
                report.problems.append(AuditProblem(reason, row.chain, seq, row.pk))

            report.events += 1
            if link.starts_chain:
                report.chains += 1
            last_seq, last_pk = (int(link.previous.seq or 0), link.previous.pk) if link.previous else (0, 0)
            if link.missing is not None:
                first, end = link.missing
                missing = f"seq {first}" if first == end else f"seq {first} to {end}"
                after = f"between event #{last_pk} (seq {last_seq}) and this one" if last_pk else "before this row"
                problem(f"{missing} missing {after} (rows removed?)")
            elif not link.prev_ok:
                before = f"the HMAC of seq {last_seq} (event #{last_pk})" if last_pk else "the genesis hash"
                problem(f"its prev_hash is not {before}: rows re-linked?")
            if link.hash_ok is None:
                problem(f"written with key {row.key_id!r}, which this verifier does not hold")
            elif not link.hash_ok:
                problem("its content does not match its HMAC (changed, or re-hashed without the key)")
            _check_links(report, row, links)
            heads[row.chain] = (seq, row.hash, row.pk)


def _verify_claims(report: AuditReport, claims: list[SealClaim], heads: dict[str, tuple[int, str, int]]) -> None:
    sealed: dict[str, int] = {}
    keyed = [c for c in claims if c.chain != LEGACY_CHAIN]
    found: dict[tuple[str, int], AuditEvent] = {}
    row: AuditEvent | None
    wanted = sorted({(c.chain, c.seq) for c in keyed})
    for i in range(0, len(wanted), 200):
        batch = wanted[i : i + 200]
        rows = AuditEvent.objects.filter(chain__in={c for c, _ in batch}, seq__in={s for _, s in batch})
        for row in rows.only("chain", "seq", "hash"):
            found[(row.chain, int(row.seq or 0))] = row
    for claim in claims:
        sealed[claim.chain] = max(sealed.get(claim.chain, 0), claim.seq)
        head = heads.get(claim.chain)
        if claim.chain == LEGACY_CHAIN:
            row = AuditEvent.objects.filter(pk=claim.event_id, chain=LEGACY_CHAIN).only("hash").first()
            count = AuditEvent.objects.filter(chain=LEGACY_CHAIN, id__lte=claim.event_id).count()
            if row is None or row.hash != claim.hash or count != claim.seq:
                report.problems.append(
                    AuditProblem(
                        f"sealed with {claim.seq} rows ending with event #{claim.event_id}, "
                        f"now {count} rows up to it{'' if row is not None else ' and that row is gone'}"
                        f"{'' if row is None or row.hash == claim.hash else ' and its hash differs'}",
                        LEGACY_CHAIN,
                        None,
                        claim.event_id,
                        claim.seal,
                    )
                )
            continue
        row = found.get((claim.chain, claim.seq))
        if head is None:
            report.problems.append(
                AuditProblem(
                    f"sealed with {claim.seq} rows, but the chain is gone (every row removed)",
                    claim.chain,
                    claim.seq,
                    claim.event_id,
                    claim.seal,
                )
            )
        elif row is None and head[0] < claim.seq:
            report.problems.append(
                AuditProblem(
                    f"sealed up to seq {claim.seq} (event #{claim.event_id}), but the chain now ends at seq "
                    f"{head[0]} (event #{head[2]}): its tail was removed",
                    claim.chain,
                    claim.seq,
                    claim.event_id,
                    claim.seal,
                )
            )
        elif row is None:
            report.problems.append(
                AuditProblem("the row this seal covers is missing", claim.chain, claim.seq, claim.event_id, claim.seal)
            )
        elif row.hash != claim.hash:
            report.problems.append(
                AuditProblem(
                    "its HMAC differs from the sealed one (the chain was rewritten up to here)",
                    claim.chain,
                    claim.seq,
                    row.pk,
                    claim.seal,
                )
            )
    for chain, (seq, _hash, _pk) in heads.items():
        if chain != LEGACY_CHAIN:
            report.unsealed += max(0, seq - sealed.get(chain, 0))


def triggers_missing(expected: Iterable[str], *, using: Any = None) -> list[str]:
    """Which of the ``expected`` database triggers are missing or disabled on ``using``
    (a connection; the default one when None). The guards of the audit tables, the
    giornale and the preservation registry are all checked this way."""
    conn = using if using is not None else connection
    expected = list(expected)
    if not expected:
        return []
    with conn.cursor() as cursor:
        if conn.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        else:
            cursor.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D'")
        present = {name for (name,) in cursor.fetchall()}
    return [name for name in expected if name not in present]


def _verify_guards() -> list[AuditProblem]:
    return [
        AuditProblem(f"the database guard {name} is missing or disabled: the audit tables accept changes")
        for name in triggers_missing(GUARDS.get(connection.vendor) or [])
    ]
