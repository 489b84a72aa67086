"""The preservation log (giornale della conservazione): one append-only,
hash-chained row per package, volume, export, audit, hold, discard and seal.

One chain in id order, in plain SHA-256 (:mod:`kernel.hashchain`, as the
audit log's rows from before keying were).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from kernel.hashchain import GENESIS_HASH, ChainReport, chain_verify, link_hash

from .models import JournalEntry

logger = logging.getLogger(__name__)

_CHAIN_LOCK_KEY = 0x50524553  # "PRES": PostgreSQL advisory lock serialising the chain's tail


def _row_hash(entry: JournalEntry) -> str:
    content = {
        "at": entry.at.isoformat(),
        "event": entry.event,
        "action": entry.action,
        "outcome": entry.outcome,
        "object_id": entry.object_id,
        "username": entry.username,
        "system": entry.system,
        "detail": entry.detail,
    }
    return link_hash(content, prev_hash=entry.prev_hash)


def journal_record(
    *,
    event: str,
    action: str,
    object_id: str = "",
    outcome: str = "success",
    user: Any = None,
    system: str = "",
    detail: dict[str, Any] | None = None,
) -> JournalEntry:
    """Append one entry to the giornale and return it."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
        tail = JournalEntry.objects.order_by("-id").values_list("hash", flat=True).first()
        entry = JournalEntry(
            at=timezone.now(),
            event=event,
            action=action,
            outcome=outcome,
            object_id=object_id[:64],
            username=user.get_username() if user is not None and getattr(user, "is_authenticated", False) else "",
            system=system,
            detail=json.loads(json.dumps(detail or {}, default=str)),
            prev_hash=tail or GENESIS_HASH,
        )
        entry.hash = _row_hash(entry)
        entry.save()
    return entry


def journal_verify() -> ChainReport:
    """Recompute the chain in order; the first entry that does not fit breaks it."""
    return chain_verify(JournalEntry.objects.order_by("id").iterator(chunk_size=2000), _row_hash)
