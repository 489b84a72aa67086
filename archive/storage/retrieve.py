"""Reading archived objects back: which copy to read, and opening it.

Every reader (C-MOVE, C-GET, WADO, portal downloads, rendering) goes through
:func:`instance_open`, which takes the nearest verified copy: the facility
tiers first (the instance's own facility before the others), then the
others in the order ``TIER_PREFERENCE`` gives. A copy whose file is missing
or unreadable is skipped (and logged) and the next verified one is tried,
so one damaged store does not make an object unreadable while another
verified copy exists.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import DateTimeField, JSONField, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from archive.models import Copy, Instance, Series
from archive.storage import tiers as storage
from kernel import tasknames
from kernel.errors import Unavailable

logger = logging.getLogger(__name__)

# Lower is nearer: the facility tiers, then the long-term archive, then preservation.
TIER_PREFERENCE = {storage.FACILITY: 0, storage.LONGTERM: 1, storage.PRESERVATION: 2}


class NotAvailable(Unavailable):
    """No verified copy of the instance can be read now; ``reason`` says why, without the UID."""

    code = "not_available"

    def __init__(self, sop_instance_uid: str, reason: str) -> None:
        super().__init__(f"{sop_instance_uid}: {reason}")
        self.sop_instance_uid = sop_instance_uid
        self.reason = reason


def _rank(copy: Copy, own_tier: str) -> tuple[int, int, int]:
    kind = copy.tier.partition(":")[0]
    return (TIER_PREFERENCE.get(kind, 9), 0 if copy.tier == own_tier else 1, copy.pk)


def copies_nearest_first(instance: Instance) -> list[Copy]:
    """The instance's verified copies, nearest first (from the prefetch cache when
    the queryset came through :func:`instances_with_copies`)."""
    own = storage.facility_tier(instance.facility.code) if instance.facility_id else ""
    return sorted((c for c in instance.copies.all() if c.verified_at is not None), key=lambda c: _rank(c, own))


def instance_open(instance: Instance) -> BinaryIO:
    """Open the nearest readable verified copy of ``instance`` (a binary file, to close)."""
    candidates = copies_nearest_first(instance)
    tried: set[int] = set()
    for attempt in range(2):
        for copy in candidates:
            tried.add(copy.pk)
            try:
                fh = storage.open_copy(copy.tier, copy.path)
            except storage.StorageError as exc:
                logger.error("copy %s of %s unreadable: %s", copy, instance.sop_instance_uid, exc)
                continue
            if fh is None:
                if attempt == 0 and not Copy.objects.filter(pk=copy.pk).exists():
                    # Released by the lifecycle since the list was read: not an error.
                    logger.info("copy %s of %s was released meanwhile", copy, instance.sop_instance_uid)
                else:
                    logger.error("copy %s of %s is missing from its tier", copy, instance.sop_instance_uid)
                continue
            if storage.tier_kind(copy.tier) != storage.FACILITY:
                _recall_soon(instance)
            return fh
        # The copies were listed before the lifecycle moved the instance (a
        # scope migration, an eviction behind a new copy): look again, once.
        own = storage.facility_tier(instance.facility.code) if instance.facility_id else ""
        fresh = Copy.objects.filter(instance_id=instance.pk, verified_at__isnull=False).exclude(pk__in=tried)
        candidates = sorted(fresh, key=lambda c: _rank(c, own))
        if not candidates:
            break
    if not tried:
        raise NotAvailable(instance.sop_instance_uid, "no verified copy")
    raise NotAvailable(instance.sop_instance_uid, "no verified copy can be read")


def _recall_soon(instance: Instance) -> None:
    """A read served from the long-term tier: bring the study back into its facility's tier
    (once per study and hour, by a Celery task: the reader does not wait)."""
    if not settings.PACS_RECALL_ON_READ or not instance.facility_id:
        return
    key = f"recall:{instance.series_id}:{instance.facility_id}"
    study_id = None
    try:
        if not cache.add(key, 1, timeout=3600):
            return
        study_id = Series.objects.filter(pk=instance.series_id).values_list("study_id", flat=True).first()
        if study_id is None:
            return
        keep_until = timezone.now() + dt.timedelta(days=settings.PACS_RECALL_KEEP_DAYS)
        current_app.send_task(tasknames.STUDIES_RECALL, args=[[study_id], instance.facility_id, keep_until.isoformat()])
    except Exception:
        # Recalling is an optimisation: the read itself has succeeded.
        logger.exception("could not queue the recall of study #%s", study_id)


def instances_with_copies(queryset: QuerySet[Instance]) -> QuerySet[Instance]:
    """``queryset`` made ready for :func:`instance_open`: no query per instance."""
    return queryset.select_related("facility").prefetch_related("copies")


COPIES = "pacs_copies"  # the annotation copies_annotation() puts on an instance


def copies_annotation() -> RawSQL:
    """The instance's copies, every column, as a JSON array of arrays: a correlated subquery
    for the query that reads the instance (``annotate(**{COPIES: copies_annotation()})``), so
    that one round trip brings both; :func:`copies_from_annotation` then gives them to the
    instance as :func:`instances_with_copies`'s prefetch does."""
    q = connection.ops.quote_name
    columns = ", ".join(f"c.{q(f.column)}" for f in Copy._meta.concrete_fields)
    postgresql = connection.vendor == "postgresql"
    aggregate, array = ("JSONB_AGG", "JSONB_BUILD_ARRAY") if postgresql else ("JSON_GROUP_ARRAY", "JSON_ARRAY")
    instance = f"{q(Instance._meta.db_table)}.{q(Instance._meta.pk.column)}"
    sql = (
        f"SELECT {aggregate}({array}({columns})) FROM {q(Copy._meta.db_table)} c "
        f"WHERE c.{q(Copy._meta.get_field('instance').column)} = {instance}"
    )
    return RawSQL(sql, [], output_field=JSONField())


def copies_from_annotation(instance: Instance) -> None:
    """Give ``instance`` the copies :func:`copies_annotation` brought with it, as
    :func:`instances_with_copies`'s prefetch does (the same rows, as models)."""
    rows = getattr(instance, COPIES) or []  # NULL on PostgreSQL when there is none
    fields = Copy._meta.concrete_fields
    names = [f.attname for f in fields]
    moments = [i for i, f in enumerate(fields) if isinstance(f, DateTimeField)]
    copies = []
    for row in sorted(rows, key=lambda r: r[0]):
        for i in moments:
            if row[i] is not None:
                moment = parse_datetime(row[i])
                # SQLite keeps UTC without an offset; PostgreSQL's JSON writes it.
                row[i] = moment if moment is None or moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        copies.append(Copy.from_db(instance._state.db, names, row))
    _copies_set(instance, copies)


def _copies_set(instance: Instance, copies: list[Copy]) -> None:
    field = Copy._meta.get_field("instance")
    for copy in copies:
        field.set_cached_value(copy, instance)
    cached = instance.copies.get_queryset()
    cached._result_cache = copies
    cached._prefetch_done = True  # type: ignore[attr-defined]  # as Django's prefetch marks it
    if not hasattr(instance, "_prefetched_objects_cache"):
        instance._prefetched_objects_cache = {}  # type: ignore[attr-defined]  # Django's prefetch sets it the same way
    instance._prefetched_objects_cache["copies"] = cached  # type: ignore[attr-defined]


@contextmanager
def instance_file(instance: Instance, *, held: bool = False) -> Iterator[Path]:
    """A local file name for the nearest readable verified copy, for senders that
    need a name rather than a stream (pynetdicom sends a file from disk without
    decoding it). A copy that is not a local file is spooled to the incoming
    folder and removed afterwards.

    ``held``: the name is read in this process only, while the context lasts
    (a DIMSE sub-operation). The lifecycle may release the copy (unlink its
    file) between the choice and the read; the file is then kept open and
    named by its descriptor (Linux's ``/proc/self/fd``), whose inode outlives
    the unlink, so a released copy is still read whole.
    """
    fh = instance_open(instance)
    name = getattr(fh, "name", None)
    if isinstance(name, str) and os.path.isfile(name):
        if held:
            with fh:
                by_descriptor = Path(f"/proc/self/fd/{fh.fileno()}")
                yield by_descriptor if by_descriptor.exists() else Path(name)
            return
        fh.close()
        yield Path(name)
        return
    with fh:
        path = storage.copy_to_incoming(fh)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


# --- many instances at once (a study's retrieve) ------------------------------------------


@dataclass(frozen=True, slots=True)
class CopyRef:
    """A verified copy as one row of :func:`copies_ranked` (no model instance)."""

    pk: int
    tier: str
    path: str
    size: int


def copies_ranked(own_tiers: dict[int, str], among: QuerySet[Instance] | None = None) -> dict[int, list[CopyRef]]:
    """The verified copies of the instances ``own_tiers`` names (instance pk -> its facility's
    tier, or ``""``), nearest first as :func:`copies_nearest_first` ranks them: one query for
    them all, rows rather than models (a study of small instances is read in milliseconds).
    ``among``: the query that selected those instances, sent as a subquery instead of their
    primary keys."""
    found: dict[int, list[tuple[tuple[int, int, int], CopyRef]]] = {pk: [] for pk in own_tiers}
    wanted = Copy.objects.filter(verified_at__isnull=False)
    if among is not None:
        wanted = wanted.filter(instance_id__in=among.order_by().values("pk"))
    else:
        wanted = wanted.filter(instance_id__in=list(own_tiers))
    rows = wanted.values_list("instance_id", "pk", "tier", "path", "size")
    for instance_id, pk, tier, path, size in rows.iterator(chunk_size=2000):
        if instance_id not in found:  # arrived since the instances were read: not in this answer
            continue
        kind = tier.partition(":")[0]
        rank = (TIER_PREFERENCE.get(kind, 9), 0 if tier == own_tiers[instance_id] else 1, pk)
        found[instance_id].append((rank, CopyRef(pk, tier, path, size)))
    return {pk: [ref for _, ref in sorted(refs, key=lambda r: r[0])] for pk, refs in found.items()}


class LocalOpener:
    """Opens the nearest copy straight from the local filesystem when it is in a facility tier.

    For a reader of many instances: each tier's folder is looked up once, and a
    copy's path is joined as text (``pathlib`` cost more than the read of a
    small file).
    """

    def __init__(self) -> None:
        self._roots: dict[str, str | None] = {}

    def _root(self, tier: str) -> str | None:
        if tier not in self._roots:
            root = None
            try:
                if storage.tier_kind(tier) == storage.FACILITY and storage.tier_is_local(tier):
                    root = os.fspath(storage.absolute_path(tier, "."))
            except storage.StorageError:
                root = None
            self._roots[tier] = root
        return self._roots[tier]

    def open(self, copies: list[CopyRef]) -> BinaryIO | None:
        """The nearest copy, unbuffered (the caller reads it in large blocks); None when that
        copy is elsewhere (an object store, the long-term tier: a read there recalls the
        study) or cannot be opened now: the caller then goes through :func:`instance_open`,
        which handles every case."""
        if not copies:
            return None
        nearest = copies[0]
        root = self._root(nearest.tier)
        relpath = nearest.path
        if root is None or relpath.startswith("/") or ".." in relpath.split("/"):
            return None
        try:
            return open(os.path.join(root, relpath), "rb", buffering=0)
        except OSError:
            return None
