"""Removing a copy's file after its row is gone, without orphans and without racing a writer.

A released copy (``lifecycle.copy_release``) and a purged instance
(``rejection.rejection_purge``) lose their rows in one transaction; their files
can only go after it commits. A process killed in between used to leave a file
that no row records. Now the same transaction writes a :class:`FileRemoval` for
each file (:func:`removals_note`); after the commit :func:`removals_finish`
removes the files and their rows, and what a killed process left is finished by
the lifecycle's pass (:func:`removals_sweep`).

The paths are deterministic (UIDs and content hash), so a writer can put a file
back where a removal is pending: a recall of an evicted copy, the same image
sent again. Both sides take the removal's row before touching the file:

* the remover deletes the row first and removes the file inside that
  transaction, only if no copy or rendition row records the path;
* a writer deletes the rows for its paths (:func:`removals_cancel`) before it
  writes, or, if it found the file already there (an ingest of the same bytes),
  before it records it, and then checks that the file is still there.

Deleting a row waits for the other side's transaction on that row (PostgreSQL's
row lock; SQLite lets one writer at a time), so whichever comes second sees the
other's outcome: a file put back is never removed, and a file removed is never
recorded as a copy. A path is cancelled even where no removal is pending: the
writer cannot know without the same statement.

One meeting is not closed: a purged instance's image sent again, as a new
instance, in the moment between the purge's commit and its removal. The ingest
found the file in place and has not committed its row, so the remover's check of
the copy rows does not see it. Only a rejected instance's purge leads there (a
released copy's instance still exists: the same image is a duplicate, handled
above), and such an instance is withdrawn on arrival, its rejection standing;
the fixity audit reports its missing file.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from archive.models import Copy, FileRemoval, Rendition
from archive.storage import tiers as storage

logger = logging.getLogger(__name__)


def removals_note(files: Iterable[tuple[str, str, bool]], *, instance_id: int | None) -> list[int]:
    """Record the files ``(tier, path, is_copy)`` to remove; call it in the transaction that deletes their rows."""
    assert transaction.get_connection().in_atomic_block, "a removal is noted with the deletion of its row"
    rows = FileRemoval.objects.bulk_create(
        [FileRemoval(tier=tier, path=path, is_copy=is_copy, instance_id=instance_id) for tier, path, is_copy in files]
    )
    return [r.pk for r in rows]  # set by the INSERT's RETURNING (PostgreSQL, SQLite 3.35+)


def removal_finish(pk: int) -> bool:
    """Remove one noted file and its row; True when the file was removed now.

    Raises
    ------
    storage.StorageError
        The file could not be removed: the row stays, for the next sweep.
    """
    with transaction.atomic():
        removal = FileRemoval.objects.filter(pk=pk).first()
        if removal is None or not FileRemoval.objects.filter(pk=pk).delete()[0]:
            return False  # finished, or cancelled by a writer, meanwhile
        recorded = Q(tier=removal.tier, path=removal.path)
        if Copy.objects.filter(recorded).exists() or Rendition.objects.filter(recorded).exists():
            logger.info("%s is recorded again: kept", removal)
            return False
        # Inside the transaction: a writer cancelling this path waits for it, then
        # finds the file gone (and writes it again) rather than recording it.
        if removal.is_copy:
            return storage.copy_remove(removal.tier, removal.path)
        return storage.remove_file(removal.tier, removal.path)


def removals_finish(pks: Iterable[int]) -> int:
    """:func:`removal_finish` each; a file that cannot be removed now is logged and left to the sweep."""
    removed = 0
    for pk in pks:
        try:
            removed += removal_finish(pk)
        except storage.StorageError as exc:
            logger.warning("file removal #%s left for the next pass: %s", pk, exc)
    return removed


def removals_sweep(*, now: dt.datetime | None = None, limit: int = 1000) -> int:
    """Finish the removals older than ``PACS_FILE_REMOVAL_GRACE_SECONDS``, left by a killed
    process (the lifecycle's pass leaves a younger one to the process that noted it); returns
    how many files went."""
    before = (now or timezone.now()) - dt.timedelta(seconds=settings.PACS_FILE_REMOVAL_GRACE_SECONDS)
    pks = list(FileRemoval.objects.filter(created_at__lt=before).order_by("pk").values_list("pk", flat=True)[:limit])
    return removals_finish(pks)


def removals_cancel(paths: Iterable[tuple[str, str]]) -> int:
    """Cancel the pending removals of ``(tier, path)`` before writing there; returns how many were pending.

    In its own transaction unless the caller's: once it returns, no remover
    touches these paths (a remover in progress has finished first).
    """
    by_tier: dict[str, list[str]] = {}
    for tier, path in paths:
        by_tier.setdefault(tier, []).append(path)
    if not by_tier:
        return 0
    match = Q()
    for tier, tier_paths in by_tier.items():
        match |= Q(tier=tier, path__in=tier_paths)
    return FileRemoval.objects.filter(match).delete()[0]
