"""The storage lifecycle: copies to the long-term tier, evictions, recalls, the
scope migration and the fixity audit.

Every step works on one instance (or one copy) and is idempotent: it looks at
what exists and does only what is missing, so a batch cut short by a killed
worker or an unreachable store is finished by the next run, and two runs
overlapping do the same work twice, never harm. A copy is recorded as
verified only after it was read back from its tier with the right SHA-256,
and a copy is released (row, then file) only in a transaction that sees
another verified copy, so no instance ever loses its last verified copy.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, Expression, F, OuterRef, Q, Sum, Value
from django.db.models.functions import Concat
from django.utils import timezone

from archive import access, removals
from archive.models import (
    Copy,
    CopyFailure,
    Facility,
    FileRemoval,
    FixityRun,
    Instance,
    LifecyclePolicy,
    ScopeMigration,
    StorageAlert,
    Study,
)
from archive.storage import retrieve
from archive.storage import tiers as storage
from kernel.errors import Unavailable

logger = logging.getLogger(__name__)

# A run stops early after this many storage failures in a row: the store is
# down, and waiting for each timeout would only hold the worker.
_MAX_FAILURES_IN_A_ROW = 5


class LifecycleError(Unavailable):
    """A lifecycle step could not be done now (the next run tries again)."""

    code = "lifecycle"


class SourceDamaged(retrieve.NotAvailable):
    """Every verified copy of the instance was read and is damaged or missing: the object's
    trouble, not a store's. Retried with backoff; it does not stop the run."""

    code = "source_damaged"


# --- copies that fail ------------------------------------------------------------------


def _retry_delay(attempts: int) -> dt.timedelta:
    base = max(1, settings.PACS_LIFECYCLE_RETRY_SECONDS)
    seconds = min(base * 2 ** min(max(attempts - 1, 0), 30), max(base, settings.PACS_LIFECYCLE_RETRY_MAX_SECONDS))
    return dt.timedelta(seconds=seconds)


def copy_failure_record(*, instance_pk: int, step: str, tier: str, error: Exception) -> CopyFailure:
    """Record one failed attempt: attempts, last error, and when to try again.

    A damaged source (:class:`SourceDamaged`) is tried again after an
    exponential backoff and skipped in the queue until then; any other
    failure (a store that does not answer) keeps the object's place, since
    the run stops and the next one tries again.
    """
    now = timezone.now()
    damaged = isinstance(error, SourceDamaged)
    for _attempt in range(2):
        try:
            with transaction.atomic():
                row, _created = CopyFailure.objects.select_for_update().get_or_create(
                    instance_id=instance_pk,
                    step=step,
                    defaults={"tier": tier, "first_failed_at": now, "last_failed_at": now, "next_try_at": now},
                )
                row.attempts += 1
                row.tier = tier
                row.last_failed_at = now
                row.last_error = str(error)[:2000]
                row.damaged = damaged
                row.next_try_at = now + _retry_delay(row.attempts) if damaged else now
                row.save()
                return row
        except IntegrityError:
            continue  # another run created it at the same moment: update it
    raise LifecycleError(f"copy failure of instance {instance_pk} not recorded")


def _failures_clear(*, instance_pks: list[int], step: str) -> None:
    if instance_pks:
        CopyFailure.objects.filter(instance_id__in=instance_pks, step=step).delete()


def _waiting(step: str, now: dt.datetime, field: str = "pk") -> Exists:
    """Instances (through ``field``) with a failure of ``step`` not due for another try yet."""
    return Exists(CopyFailure.objects.filter(instance=OuterRef(field), step=step, next_try_at__gt=now))


def copies_stuck(*, limit: int = 100) -> list[CopyFailure]:
    """The failures on record, damaged sources first, with their instance."""
    return list(CopyFailure.objects.select_related("instance").order_by("-damaged", "next_try_at", "pk")[:limit])


# --- where the long-term copies go --------------------------------------------------


def longterm_scope_for(facility: Facility) -> str:
    """``region``, or the facility's health authority code when ``PACS_LONG_TERM_SCOPE`` is ``authority``."""
    if settings.PACS_LONG_TERM_SCOPE == "authority":
        return facility.authority.code
    return storage.REGION


def longterm_tier_for(facility: Facility) -> str:
    return storage.longterm_tier(longterm_scope_for(facility))


# --- policies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    migrate_after: dt.timedelta
    evict_after: dt.timedelta


def policy_for(*, facility_id: int | None, modality: str, policies: list[LifecyclePolicy] | None = None) -> Policy:
    """The most specific policy: facility and modality, facility, modality, then the settings."""
    rows = list(LifecyclePolicy.objects.all()) if policies is None else policies
    for want_facility, want_modality in (
        (facility_id, modality),
        (facility_id, ""),
        (None, modality),
    ):
        for row in rows:
            if row.facility_id == want_facility and row.modality == want_modality:
                return Policy(dt.timedelta(days=row.migrate_after_days), dt.timedelta(days=row.evict_after_days))
    return Policy(
        dt.timedelta(days=settings.PACS_MIGRATE_AFTER_DAYS), dt.timedelta(days=settings.PACS_EVICT_AFTER_DAYS)
    )


def _due(which: str, now: dt.datetime, *, instance: str = "") -> tuple[Q, dt.datetime | None]:
    """Instances older than their policy's ``migrate_after`` or ``evict_after``, and the
    latest ``received_at`` any of them can have (None: no facility, nothing is due).

    One condition per facility and per modality that has its own policy, and
    one for the facility's other modalities: a handful of terms, whatever the
    number of instances. ``instance`` is the path to the instance (``instance__``
    from a copy). The bound is the condition's too, said once so that the
    database reads the range of its index up to it and no further.
    """
    rows = list(LifecyclePolicy.objects.all())
    special = {r.modality for r in rows if r.modality}
    condition = Q(pk__in=[])
    latest: dt.datetime | None = None

    def term(facility_id: int, modality: str) -> Q:
        nonlocal latest
        policy = policy_for(facility_id=facility_id, modality=modality, policies=rows)
        before = now - (policy.migrate_after if which == "migrate" else policy.evict_after)
        latest = before if latest is None else max(latest, before)
        return Q(**{f"{instance}facility_id": facility_id, f"{instance}received_at__lte": before})

    for facility_id in Facility.objects.values_list("pk", flat=True):
        for modality in special:
            condition |= term(facility_id, modality) & Q(**{f"{instance}series__modality": modality})
        condition |= term(facility_id, "") & ~Q(**{f"{instance}series__modality__in": special})
    return condition, latest


# --- what is migrated ------------------------------------------------------------------


def _longterm_verified() -> Exists:
    """A verified copy in a long-term tier of the instance of the outer query."""
    return Exists(
        Copy.objects.filter(instance=OuterRef("pk"), tier__startswith=f"{storage.LONGTERM}:", verified_at__isnull=False)
    )


def instances_migrated_sync(*, instance_pks: Iterable[int]) -> None:
    """Set ``Instance.migrated`` of these instances when they have a verified long-term
    copy, clear it when they have none, from the copies as they are now.

    Called in the transaction that recorded, released, or found damaged a long-term
    copy, after that change, so that the flag (and the partial index the lifecycle
    finds its work in, :func:`instances_to_migrate`) changes with the copies. The
    instance rows are locked first (after the copies: the order of every caller), so
    that the statements below, taking a new snapshot, see a copy another transaction
    recorded or released while this one waited.
    """
    pks = sorted(set(instance_pks))
    if not pks:
        return
    list(Instance.all_objects.select_for_update().filter(pk__in=pks).order_by("pk").values_list("pk", flat=True))
    rows = Instance.all_objects.filter(pk__in=pks)
    rows.filter(migrated=False).filter(_longterm_verified()).update(migrated=True)
    rows.filter(migrated=True).filter(~_longterm_verified()).update(migrated=False)


def _is_longterm(tier: str) -> bool:
    return storage.tier_kind(tier) == storage.LONGTERM


# --- copying ---------------------------------------------------------------------------


def _instance(instance_pk: int) -> Instance:
    # all_objects: an instance a rejection note withdrew (IOCM), and the note itself
    # (kept for ever), move between tiers like any other until their purge.
    return (
        Instance.all_objects.select_related("facility__authority", "series__study")
        .prefetch_related("copies")
        .get(pk=instance_pk)
    )


def _relpath(instance: Instance) -> str:
    return storage.instance_relpath(
        study_uid=instance.series.study.study_instance_uid,
        series_uid=instance.series.series_instance_uid,
        sop_uid=instance.sop_instance_uid,
        sha256=instance.sha256,
    )


def copy_make(*, instance: Instance, tier: str, keep_until: dt.datetime | None = None) -> bool:
    """Copy ``instance`` into ``tier`` from its nearest verified copy, read it back, record it verified.

    Returns False when a verified copy was already there (its ``keep_until``
    is extended if asked). A copy written by a run that died before recording
    it is found by its name and adopted after the same check.

    Raises
    ------
    storage.StorageError
        A tier could not be read or written; nothing was recorded.
    retrieve.NotAvailable
        No verified copy can be read now.
    """
    existing = next((c for c in instance.copies.all() if c.tier == tier), None)
    if existing is not None and existing.verified_at is not None:
        if keep_until is not None and (existing.keep_until is None or existing.keep_until < keep_until):
            Copy.objects.filter(pk=existing.pk).update(keep_until=keep_until)
        return False
    removals.removals_cancel([(tier, _target_path(instance, tier))])
    relpath = _copy_bytes(instance, tier, batch=None)
    _record(instance, tier, relpath, keep_until=keep_until)
    return True


def _target_path(instance: Instance, tier: str) -> str:
    """Where a copy of ``instance`` goes in ``tier``: the path of a row left unverified, else the usual one."""
    existing = next((c for c in instance.copies.all() if c.tier == tier), None)
    return existing.path if existing is not None else _relpath(instance)


def _copy_bytes(instance: Instance, tier: str, *, batch: storage.SyncBatch | None) -> str:
    """The input/output of :func:`copy_make`, no database access (the copies are prefetched): returns the path.

    The caller has cancelled any removal pending at that path (:func:`removals.removals_cancel`).
    """
    relpath = _target_path(instance, tier)
    sources = [c for c in retrieve.copies_nearest_first(instance) if c.tier != tier]
    if not sources:
        raise SourceDamaged(instance.sop_instance_uid, "no verified copy to copy from")
    problems: list[str] = []
    unreachable = False
    for source in sources:
        try:
            fh = storage.open_copy(source.tier, source.path)
        except storage.StorageError as exc:
            # This source's store is unreachable: the next verified copy may do.
            logger.warning("copying %s: source %s unreadable: %s", instance.sop_instance_uid, source, exc)
            unreachable = True
            problems.append(f"{source.tier}: unreachable")
            continue
        if fh is None:
            logger.error("copy %s of %s is missing from its tier", source, instance.sop_instance_uid)
            problems.append(f"{source.tier}: missing")
            continue
        try:
            with fh:
                # No verified copy is recorded there (else nothing would be
                # copied): bytes left there by a crash are not a copy.
                storage.copy_store(fh, tier, relpath, sha256=instance.sha256, batch=batch, replace_damaged=True)
        except storage.SourceMismatch as exc:
            # A damaged source: the fixity audit repairs it; try the next one.
            logger.error("copying %s to %s: %s", instance.sop_instance_uid, tier, exc)
            problems.append(f"{source.tier}: damaged (SHA-256 differs)")
            continue
        return relpath
    reason = "no verified copy could be read (" + "; ".join(problems) + ")"
    if unreachable:
        raise retrieve.NotAvailable(instance.sop_instance_uid, reason)
    raise SourceDamaged(instance.sop_instance_uid, reason)


def _record(instance: Instance, tier: str, relpath: str, *, keep_until: dt.datetime | None = None) -> None:
    defaults: dict[str, Any] = {
        "path": relpath,
        "sha256": instance.sha256,
        "size": instance.size,
        "verified_at": timezone.now(),
        "instance_received_at": instance.received_at,
    }
    if keep_until is not None:
        defaults["keep_until"] = keep_until
    try:
        with transaction.atomic():
            Copy.objects.update_or_create(instance=instance, tier=tier, defaults=defaults)
            if _is_longterm(tier):
                instances_migrated_sync(instance_pks=[instance.pk])
    except IntegrityError:
        # Another run recorded the same copy first.
        logger.info("copy of %s in %s recorded concurrently", instance.sop_instance_uid, tier)


def copies_make(*, instance_pks: list[int], threads: int | None = None) -> tuple[int, list[tuple[int, Exception]]]:
    """:func:`copy_make` into each instance's long-term tier for many instances at once.

    The copies are made by a few threads (the input/output of one object
    overlaps another's), made durable together (one syncfs per filesystem),
    and recorded verified in one transaction, only after all that is durable. Returns how many were copied, and the failures.
    """
    threads = threads or settings.PACS_LIFECYCLE_THREADS
    instances = list(
        Instance.all_objects.filter(pk__in=instance_pks)
        .select_related("facility__authority", "series__study")
        .prefetch_related("copies")
        .order_by("pk")
    )
    work = []
    for instance in instances:
        tier = longterm_tier_for(instance.facility)
        if not any(c.tier == tier and c.verified_at is not None for c in instance.copies.all()):
            work.append((instance, tier))
    # The evicted copy of a recalled instance may still be waiting for its file's removal.
    removals.removals_cancel((tier, _target_path(instance, tier)) for instance, tier in work)
    batch = storage.SyncBatch()
    done: list[tuple[Instance, str, str]] = []
    failures: list[tuple[int, Exception]] = []

    def one(item: tuple[Instance, str]) -> tuple[Instance, str, str | Exception]:
        instance, tier = item
        try:
            return instance, tier, _copy_bytes(instance, tier, batch=batch)
        except (storage.StorageError, retrieve.NotAvailable) as exc:
            return instance, tier, exc

    if threads > 1 and len(work) > 1:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lifecycle") as pool:
            outcomes = list(pool.map(one, work))
    else:
        outcomes = [one(item) for item in work]
    for instance, tier, outcome in outcomes:
        if isinstance(outcome, Exception):
            failures.append((instance.pk, outcome))
        else:
            done.append((instance, tier, outcome))
    batch.sync()
    if done:
        _record_many(done)
    return len(done), failures


def _record_many(done: list[tuple[Instance, str, str]]) -> None:
    """Record verified copies in one transaction: new rows in bulk, leftover unverified rows updated."""
    now = timezone.now()
    with transaction.atomic():
        existing = {
            (c.instance_id, c.tier): c
            for c in Copy.objects.select_for_update().filter(
                instance__in=[i for i, _, _ in done], tier__in={t for _, t, _ in done}
            )
        }
        new = []
        for instance, tier, relpath in done:
            row = existing.get((instance.pk, tier))
            if row is not None:
                Copy.objects.filter(pk=row.pk).update(
                    path=relpath, sha256=instance.sha256, size=instance.size, verified_at=now
                )
            else:
                new.append(
                    Copy(
                        instance=instance,
                        tier=tier,
                        path=relpath,
                        sha256=instance.sha256,
                        size=instance.size,
                        verified_at=now,
                        instance_received_at=instance.received_at,
                    )
                )
        # A row another run recorded meanwhile is the same copy: skipped.
        Copy.objects.bulk_create(new, ignore_conflicts=True)
        instances_migrated_sync(instance_pks=[i.pk for i, tier, _ in done if _is_longterm(tier)])


def instance_migrate(*, instance_pk: int) -> bool:
    """Copy an instance to its long-term tier (for the current scope) and verify it; True when copied now."""
    instance = _instance(instance_pk)
    return copy_make(instance=instance, tier=longterm_tier_for(instance.facility))


def copy_release(*, copy_pk: int, keeper_tier: str | None = None, keeper_kind: str | None = None) -> bool:
    """Release (delete) a copy, only while another verified copy exists.

    The other copy must be verified, in ``keeper_tier`` (or a tier of kind
    ``keeper_kind``), and present in its tier with its size (checked before
    the transaction: slow input/output stays outside). In the transaction the
    instance's copy rows are locked and the keeper is looked at again, so a
    concurrent release cannot take it away; the row is deleted there, with a
    removal of its file noted, and the file goes after the commit
    (:mod:`archive.removals`: a crash in between leaves the removal to
    the next pass, not an orphan file). Returns True when released.
    """
    copy = Copy.objects.filter(pk=copy_pk).first()
    if copy is None:
        return False
    candidates = Copy.objects.filter(instance_id=copy.instance_id, verified_at__isnull=False).exclude(pk=copy.pk)
    if keeper_tier is not None:
        candidates = candidates.filter(tier=keeper_tier)
    if keeper_kind is not None:
        candidates = candidates.filter(tier__startswith=f"{keeper_kind}:")
    keeper = None
    for other in candidates:
        try:
            if storage.stored_size(other.tier, other.path) == other.size:
                keeper = other
                break
        except storage.StorageError as exc:
            logger.warning("cannot check copy %s before releasing %s: %s", other, copy, exc)
    if keeper is None:
        return False
    now = timezone.now()
    with transaction.atomic():
        rows = {r.pk: r for r in Copy.objects.select_for_update().filter(instance_id=copy.instance_id).order_by("pk")}
        mine = rows.get(copy.pk)
        if mine is None:
            return False
        if mine.keep_until is not None and mine.keep_until > now and storage.tier_kind(mine.tier) == storage.FACILITY:
            return False
        locked_keeper = rows.get(keeper.pk)
        if locked_keeper is None or locked_keeper.verified_at is None:
            return False
        mine.delete()
        pending = removals.removals_note([(mine.tier, mine.path, True)], instance_id=mine.instance_id)
        if _is_longterm(mine.tier):
            instances_migrated_sync(instance_pks=[mine.instance_id])
    removals.removals_finish(pending)
    return True


# --- batches ---------------------------------------------------------------------------


def instances_to_migrate(*, now: dt.datetime | None = None, limit: int | None = None) -> list[int]:
    """Instances past their ``migrate_after`` without a verified long-term copy, oldest first.

    An instance whose long-term copy lies in the other scope's tier is the
    scope migration's work (:func:`scope_migration_step`), not this.
    """
    now = now or timezone.now()
    due, latest = _due("migrate", now)
    if latest is None:
        return []
    # migrated false: no verified long-term copy (instances_migrated_sync). The
    # partial index of those rows, read in received order up to the latest due
    # moment, holds only the instances still to migrate, whatever the archive's age.
    qs = (
        Instance.all_objects.filter(migrated=False, received_at__lte=latest)
        .filter(due)
        .filter(~_waiting(CopyFailure.Step.MIGRATE, now))
        .order_by("received_at", "pk")
        .values_list("pk", flat=True)
    )
    return list(qs[: limit or settings.PACS_LIFECYCLE_BATCH])


def copies_to_evict(*, now: dt.datetime | None = None, limit: int | None = None) -> list[int]:
    """Facility copies of instances past their ``evict_after`` that a verified long-term copy backs."""
    now = now or timezone.now()
    due, latest = _due("evict", now, instance="instance__")
    if latest is None:
        return []
    # The partial index of the facility copies (evicted ones are deleted) in their
    # instance's received order, up to the latest due moment; backed: the instance
    # has a verified long-term copy (Instance.migrated, instances_migrated_sync).
    qs = (
        Copy.objects.filter(tier__startswith=f"{storage.FACILITY}:", instance_received_at__lte=latest)
        .filter(due)
        .filter(Q(keep_until__isnull=True) | Q(keep_until__lte=now))
        .filter(instance__migrated=True)
        .order_by("instance_received_at", "pk")
        .values_list("pk", flat=True)
    )
    return list(qs[: limit or settings.PACS_LIFECYCLE_BATCH])


@dataclass
class RunResult:
    migrated: int = 0
    evicted: int = 0
    failed: int = 0
    scope_copied: int = 0
    scope_released: int = 0
    removed: int = 0  # files whose removal a killed process left, removed now (removals_sweep)
    skipped: bool = False  # another pass was running (lifecycle_run)
    errors: list[str] = field(default_factory=list)
    # (instance pk, step) of each failure: a run that only fails what failed before moves nothing.
    failed_objects: set[tuple[int, str]] = field(default_factory=set)


def migrate_batch(
    *, now: dt.datetime | None = None, limit: int | None = None, result: RunResult | None = None
) -> RunResult:
    result = result or RunResult()
    pks = instances_to_migrate(now=now, limit=limit)
    chunk = max(1, settings.PACS_LIFECYCLE_CHUNK)
    for i in range(0, len(pks), chunk):
        part = pks[i : i + chunk]
        copied, failures = copies_make(instance_pks=part)
        result.migrated += copied
        failed = {pk for pk, _exc in failures}
        _failures_clear(instance_pks=[pk for pk in part if pk not in failed], step=CopyFailure.Step.MIGRATE)
        for pk, exc in failures:
            logger.warning("instance #%s not migrated: %s", pk, exc)
            copy_failure_record(instance_pk=pk, step=CopyFailure.Step.MIGRATE, tier=_target_tier(pk), error=exc)
            result.failed += 1
            result.errors.append(f"#{pk}: {exc}")
            result.failed_objects.add((pk, CopyFailure.Step.MIGRATE))
        store_failures = [exc for _pk, exc in failures if not isinstance(exc, SourceDamaged)]
        if store_failures and not copied:
            # Nothing of a whole chunk went through and a store did not answer:
            # it is down, and waiting for each timeout would only hold the
            # worker. (Damaged objects alone never stop the run: they wait
            # for their next try and the rest moves on.)
            logger.error("migration stopped: a whole chunk failed (%s)", store_failures[0])
            break
    return result


def _target_tier(instance_pk: int) -> str:
    instance = Instance.all_objects.select_related("facility__authority").filter(pk=instance_pk).first()
    return longterm_tier_for(instance.facility) if instance is not None else ""


def evict_batch(
    *, now: dt.datetime | None = None, limit: int | None = None, result: RunResult | None = None
) -> RunResult:
    result = result or RunResult()
    in_a_row = 0
    for pk in copies_to_evict(now=now, limit=limit):
        try:
            released = copy_release(copy_pk=pk, keeper_kind=storage.LONGTERM)
        except storage.StorageError as exc:
            released = False
            logger.warning("copy #%s not evicted: %s", pk, exc)
        if released:
            result.evicted += 1
            in_a_row = 0
        else:
            in_a_row += 1
            if in_a_row >= _MAX_FAILURES_IN_A_ROW * 4:
                # The long-term store cannot be checked: the copies stay.
                logger.error("eviction stopped: %d copies in a row could not be released", in_a_row)
                break
    return result


# PostgreSQL advisory lock key of the lifecycle pass ("LIFE").
_RUN_LOCK_KEY = 0x4C494645


@contextmanager
def _run_claimed() -> Iterator[bool]:
    """Whether this process holds the lifecycle pass: one at a time in the region.

    Two passes at once (a pass longer than beat's period, a manual
    ``lifecycle run`` beside beat's) would each copy the same due instances to
    the long-term tier, and the later one, finding the copies it meant to
    evict already gone, stopped its eviction with a false "could not be
    released" error. On PostgreSQL a session advisory lock, taken without
    waiting: the server releases it when the holder's connection ends, so a
    worker killed mid-pass never leaves it held. SQLite (one machine, the demo)
    takes no lock.
    """
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_RUN_LOCK_KEY])
        claimed = bool(cursor.fetchone()[0])
    try:
        yield claimed
    finally:
        if claimed:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_RUN_LOCK_KEY])


def lifecycle_run(*, now: dt.datetime | None = None, limit: int | None = None) -> RunResult:
    """One lifecycle pass: migrate what is due, evict what is backed, advance the scope migration.

    Returns a result with ``skipped`` set, having done nothing, while another
    pass runs (:func:`_run_claimed`): the running one does the work.
    """
    with _run_claimed() as claimed:
        if not claimed:
            logger.info("lifecycle pass skipped: another one is running")
            return RunResult(skipped=True)
        result = migrate_batch(now=now, limit=limit)
        scope_migration_step(limit=limit, result=result)
        evict_batch(now=now, limit=limit, result=result)
        result.removed = removals.removals_sweep(now=now)
        # What a worker of this host killed mid-copy left: its temporary files in the tiers.
        storage.incoming_clean_stray(own=False)
        return result


# --- recall and prefetch ---------------------------------------------------------------


def instance_recall(
    *, instance_pk: int, facility: Facility | None = None, keep_until: dt.datetime | None = None
) -> bool:
    """Bring an instance back into a facility tier (its own by default), kept until ``keep_until``."""
    instance = _instance(instance_pk)
    target = facility or instance.facility
    keep_until = keep_until or timezone.now() + dt.timedelta(days=settings.PACS_RECALL_KEEP_DAYS)
    return copy_make(instance=instance, tier=storage.facility_tier(target.code), keep_until=keep_until)


@dataclass
class RecallResult:
    studies: int = 0
    instances: int = 0
    recalled: int = 0
    failed: int = 0


def studies_recall(*, study_pks: list[int], facility: Facility, keep_until: dt.datetime) -> RecallResult:
    result = RecallResult(studies=len(study_pks))
    for pk in Instance.objects.filter(series__study__in=study_pks).order_by("pk").values_list("pk", flat=True):
        result.instances += 1
        try:
            if instance_recall(instance_pk=pk, facility=facility, keep_until=keep_until):
                result.recalled += 1
        except (storage.StorageError, retrieve.NotAvailable) as exc:
            logger.warning("instance #%s not recalled to %s: %s", pk, facility.code, exc)
            result.failed += 1
    return result


def prior_studies(
    *, patient_pk: int, modality: str, body_part: str, before: dt.date, years: int | None = None
) -> list[int]:
    """The patient's studies a radiologist will want beside a new one: same modality or body part, last N years."""
    years = settings.PACS_PREFETCH_YEARS if years is None else years
    since = before - dt.timedelta(days=round(365.25 * years))
    match = Q(pk__in=[])
    if modality:
        match |= Q(series__modality__iexact=modality)
    if body_part:
        match |= Q(series__body_part_examined__iexact=body_part) | Q(study_description__icontains=body_part)
    return list(
        Study.objects.filter(patient_id=patient_pk, study_date__gte=since, study_date__lte=before)
        .filter(match)
        .order_by("-study_date", "pk")
        .values_list("pk", flat=True)
        .distinct()
    )


def priors_prefetch(
    *,
    patient_pk: int,
    facility: Facility,
    modality: str,
    body_part: str,
    appointment: dt.datetime,
    years: int | None = None,
) -> RecallResult:
    """Recall a patient's relevant prior studies into ``facility``'s tier before an appointment.

    Called by the booking side (on booking and on the day); the archive knows
    nothing of bookings. The recalled copies are kept until
    ``PACS_RECALL_KEEP_DAYS`` after the appointment.
    """
    studies = prior_studies(
        patient_pk=patient_pk, modality=modality, body_part=body_part, before=appointment.date(), years=years
    )
    keep_until = appointment + dt.timedelta(days=settings.PACS_RECALL_KEEP_DAYS)
    return studies_recall(study_pks=studies, facility=facility, keep_until=keep_until)


# --- scope migration -------------------------------------------------------------------


def scope_stale_copies() -> Any:
    """Long-term copies that do not lie in their instance's long-term tier for the current scope."""
    target: Expression
    if settings.PACS_LONG_TERM_SCOPE == "authority":
        target = Concat(Value(f"{storage.LONGTERM}:"), F("instance__facility__authority__code"))
    else:
        target = Value(storage.longterm_tier(storage.REGION))
    return (
        Copy.objects.filter(tier__startswith=f"{storage.LONGTERM}:")
        .annotate(target_tier=target)
        .exclude(tier=F("target_tier"))
    )


def scope_migration_step(*, limit: int | None = None, result: RunResult | None = None) -> ScopeMigration | None:
    """Advance the move of the long-term archive to the scope ``PACS_LONG_TERM_SCOPE`` names.

    Each old-scope copy is copied (from the nearest verified copy) into the
    instance's new long-term tier, verified, recorded, and only then released.
    Readers keep reading whichever verified copy exists at each moment.
    """
    result = result or RunResult()
    scope = settings.PACS_LONG_TERM_SCOPE
    current = ScopeMigration.objects.filter(finished_at__isnull=True).first()
    pending = scope_stale_copies()
    if not pending.exists():
        if current is not None:
            ScopeMigration.objects.filter(pk=current.pk).update(finished_at=timezone.now())
            current.refresh_from_db()
        return current
    if current is not None and current.target_scope != scope:
        ScopeMigration.objects.filter(pk=current.pk).update(
            finished_at=timezone.now(), last_error=f"superseded by scope {scope}"
        )
        current = None
    if current is None:
        current = ScopeMigration.objects.create(target_scope=scope, total=pending.count())
        logger.warning("long-term scope is now %r: migrating %d copies", scope, current.total)
    copied = released = failures = 0
    last_error = ""
    in_a_row = 0
    movable = pending.exclude(_waiting(CopyFailure.Step.SCOPE, timezone.now(), "instance"))
    for copy_pk, instance_pk in list(
        movable.order_by("pk").values_list("pk", "instance_id")[: limit or settings.PACS_LIFECYCLE_BATCH]
    ):
        target = ""
        try:
            instance = _instance(instance_pk)
            target = longterm_tier_for(instance.facility)
            if copy_make(instance=instance, tier=target):
                copied += 1
            if copy_release(copy_pk=copy_pk, keeper_tier=target):
                released += 1
            _failures_clear(instance_pks=[instance_pk], step=CopyFailure.Step.SCOPE)
            in_a_row = 0
        except (storage.StorageError, retrieve.NotAvailable) as exc:
            logger.warning("scope migration of copy #%s: %s", copy_pk, exc)
            copy_failure_record(instance_pk=instance_pk, step=CopyFailure.Step.SCOPE, tier=target, error=exc)
            result.failed_objects.add((instance_pk, CopyFailure.Step.SCOPE))
            failures += 1
            last_error = str(exc)
            if isinstance(exc, SourceDamaged):
                continue  # this object's trouble: it waits for its next try, the rest moves on
            in_a_row += 1
            if in_a_row >= _MAX_FAILURES_IN_A_ROW:
                break
    updates: dict[str, Any] = {
        "copied": F("copied") + copied,
        "released": F("released") + released,
        "failures": F("failures") + failures,
    }
    if last_error:
        updates["last_error"] = last_error[:2000]
    if not pending.exists():
        updates["finished_at"] = timezone.now()
    ScopeMigration.objects.filter(pk=current.pk).update(**updates)
    current.refresh_from_db()
    result.scope_copied += copied
    result.scope_released += released
    result.failed += failures
    return current


# --- fixity ----------------------------------------------------------------------------


def copies_for_fixity(*, sample: int | None = None, cycle_days: int | None = None) -> list[int]:
    """Tonight's copies: the least recently verified share of the cycle, plus a random sample."""
    sample = settings.PACS_FIXITY_SAMPLE if sample is None else sample
    cycle_days = settings.PACS_FIXITY_CYCLE_DAYS if cycle_days is None else cycle_days
    total = Copy.objects.count()
    share = math.ceil(total / max(cycle_days, 1))
    oldest = list(
        Copy.objects.order_by(F("verified_at").asc(nulls_first=True), "pk").values_list("pk", flat=True)[:share]
    )
    extra = list(Copy.objects.exclude(pk__in=oldest).order_by("?").values_list("pk", flat=True)[:sample])
    return oldest + extra


def fixity_audit(*, sample: int | None = None, cycle_days: int | None = None) -> FixityRun:
    """Re-read copies, compare their SHA-256, repair a damaged one from a verified one, raise alerts."""
    run = FixityRun.objects.create()
    for pk in copies_for_fixity(sample=sample, cycle_days=cycle_days):
        copy_check(copy_pk=pk, run=run)
    FixityRun.objects.filter(pk=run.pk).update(finished_at=timezone.now())
    run.refresh_from_db()
    return run


def copy_check(*, copy_pk: int, run: FixityRun | None = None) -> str:
    """Re-read one copy; repair it when damaged or missing. Returns ``ok``, ``repaired``,
    ``damaged`` (not repaired) or ``unreadable`` (the tier cannot be read now: no verdict)."""
    copy = Copy.objects.select_related("instance").filter(pk=copy_pk).first()
    if copy is None:
        return "gone"
    instance = copy.instance
    counts: dict[str, int] = {"checked": 1}
    try:
        actual = storage.copy_sha256(copy.tier, copy.path)
    except storage.StorageError as exc:
        logger.warning("fixity: %s unreadable now: %s", copy, exc)
        counts["unreadable"] = 1
        _count(run, counts)
        return "unreadable"
    if actual == instance.sha256 == copy.sha256:
        with transaction.atomic():
            Copy.objects.filter(pk=copy.pk).update(verified_at=timezone.now())
            if _is_longterm(copy.tier):
                instances_migrated_sync(instance_pks=[instance.pk])
        counts["ok"] = 1
        _count(run, counts)
        return "ok"
    counts["damaged"] = 1
    kind = StorageAlert.Kind.MISSING if actual is None else StorageAlert.Kind.DAMAGED
    detail = "file missing" if actual is None else f"SHA-256 {actual}, expected {instance.sha256}"
    logger.error("fixity: copy %s of %s is damaged: %s", copy, instance.sop_instance_uid, detail)
    # Readers stop taking it at once; it becomes verified again only once repaired
    # (and a long-term copy no longer counts as the instance's migration meanwhile).
    with transaction.atomic():
        Copy.objects.filter(pk=copy.pk).update(verified_at=None)
        if _is_longterm(copy.tier):
            instances_migrated_sync(instance_pks=[instance.pk])
    repaired_from = _repair(copy, instance)
    if repaired_from:
        counts["repaired"] = 1
        detail += f"; repaired from {repaired_from}"
    else:
        others = Copy.objects.filter(instance=instance, verified_at__isnull=False).exclude(pk=copy.pk)
        if not others.exists():
            kind = StorageAlert.Kind.UNREPAIRABLE
        detail += "; not repaired"
    _alert(copy, instance, run=run, kind=kind, detail=detail, repaired=bool(repaired_from))
    _count(run, counts)
    return "repaired" if repaired_from else "damaged"


def _alert(copy: Copy, instance: Instance, *, run: FixityRun | None, kind: str, detail: str, repaired: bool) -> None:
    """One open alert per copy: found again, it is updated (count, last seen), not repeated."""
    StorageAlert.raise_or_update(
        damage={"tier": copy.tier, "path": copy.path},
        kind=kind,
        instance=instance,
        fixity_run=run,
        detail=detail,
        repaired=repaired,
    )


def _repair(copy: Copy, instance: Instance) -> str:
    fresh = _instance(instance.pk)
    for source in retrieve.copies_nearest_first(fresh):
        if source.pk == copy.pk:
            continue
        try:
            fh = storage.open_copy(source.tier, source.path)
            if fh is None:
                continue
            with fh:
                storage.copy_replace(fh, copy.tier, copy.path, sha256=instance.sha256)
        except storage.StorageError as exc:
            logger.warning("fixity: repairing %s from %s failed: %s", copy, source, exc)
            continue
        with transaction.atomic():
            Copy.objects.filter(pk=copy.pk).update(verified_at=timezone.now(), sha256=instance.sha256)
            if _is_longterm(copy.tier):
                instances_migrated_sync(instance_pks=[instance.pk])
        return str(source)
    return ""


def _count(run: FixityRun | None, counts: dict[str, int]) -> None:
    if run is not None:
        FixityRun.objects.filter(pk=run.pk).update(**{k: F(k) + v for k, v in counts.items()})


# --- the staff view --------------------------------------------------------------------


def storage_summary(*, principal: access.Principal = access.SYSTEM) -> dict[str, Any]:
    """Objects and bytes per tier and per facility, the backlog, the fixity results and open alerts.

    The alerts and the stuck copies name their instances: only those of studies ``principal``
    may see are listed and counted (archive.access); the totals are sums of bytes and objects.
    """
    now = timezone.now()
    instance_seen = access.any_q(Q(instance__isnull=True), access.visible_q(principal, "instance__series__study__"))
    alerts = StorageAlert.objects.filter(instance_seen).unacknowledged()
    failures = CopyFailure.objects.filter(access.visible_q(principal, "instance__series__study__"))
    tiers = list(
        Copy.objects.values("tier")
        .annotate(objects=Count("pk"), bytes=Sum("size"))  # type: ignore[no-redef]  # a row's key, not the manager
        .order_by("tier")
    )
    per_facility = list(
        Copy.objects.values("instance__facility__code", "tier")
        .annotate(objects=Count("pk"), bytes=Sum("size"))  # type: ignore[no-redef]  # a row's key, not the manager
        .order_by("instance__facility__code", "tier")
    )
    return {
        "scope": settings.PACS_LONG_TERM_SCOPE,
        "tiers": tiers,
        "per_facility": per_facility,
        "to_migrate": len(instances_to_migrate(now=now, limit=100000)),
        "to_evict": len(copies_to_evict(now=now, limit=100000)),
        "scope_stale": scope_stale_copies().count(),
        "migration": ScopeMigration.objects.first(),
        "fixity_runs": list(FixityRun.objects.all()[:5]),
        "alerts": list(alerts.select_related("instance")[:50]),
        "unverified": Copy.objects.filter(verified_at__isnull=True).count(),
        "removals_pending": FileRemoval.objects.count(),  # files of released copies not removed yet
        "stuck": list(failures.select_related("instance").order_by("-damaged", "next_try_at", "pk")[:50]),
        "stuck_count": failures.count(),
    }
