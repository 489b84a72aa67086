"""Heartbeat leases: a worker claims a row, renews the row's heartbeat while it
works, and another may take the row over once the heartbeat is stale.

Three kinds of work are held this way: a preservation package being built
(``preservation.packages``), a volume being closed (``preservation.volumes``)
and a citizen's zip being written (``portal.downloads``). The holder is whoever
last wrote the row's heartbeat (``heartbeat_at``); one that stopped writing it
for ``stale_after`` is presumed dead (a killed worker, a lost machine), and
the next claimer takes the work over from where the row says it is. Each
caller keeps its own stale time, and makes the first claim itself when it
creates the row with a fresh heartbeat.

A claim is one conditional UPDATE checked for exactly one row, as
healthchecks' ``sendalerts`` does: nothing is locked while the work runs and
nobody asks the broker what is running. Of two claimers racing for a row the
database lets one in (PostgreSQL re-checks the WHERE clause on the row the
winner wrote; SQLite writes one at a time) and the other sees 0 rows.

A renewal is not conditional: a holder that was silent past the stale time
and taken over goes on to the end, and the work's last step, conditional on
the row's state (a package still ``building``, a volume not yet closed),
lets only one of the two record the result.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

HEARTBEAT = "heartbeat_at"


def stale_q(*, stale_after: dt.timedelta, now: dt.datetime, field: str = HEARTBEAT) -> Q:
    """The rows whose holder is presumed dead: no heartbeat, or none for ``stale_after``."""
    return Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__lte": now - stale_after})


def leases_stale(
    rows: QuerySet[Any], *, stale_after: dt.timedelta, now: dt.datetime | None = None, field: str = HEARTBEAT
) -> QuerySet[Any]:
    """Those of ``rows`` whose holder is presumed dead (to be claimed one by one with :func:`lease_claim`)."""
    return rows.filter(stale_q(stale_after=stale_after, now=now or timezone.now(), field=field))


def lease_claim(
    rows: QuerySet[Any],
    *,
    stale_after: dt.timedelta,
    free: Q | None = None,
    now: dt.datetime | None = None,
    field: str = HEARTBEAT,
    **values: Any,
) -> bool:
    """Claim the one row of ``rows`` when nobody holds it: True when this caller holds it now.

    Parameters
    ----------
    rows : QuerySet
        The row (by primary key) in the states its work may be claimed in, e.g.
        a package still ``building``.
    stale_after : timedelta
        How long a holder may be silent before the row is taken from it.
    free : Q, optional
        The rows nobody holds whatever their heartbeat (a zip still queued):
        claimed without waiting for staleness.
    now : datetime, optional
        The claim's time, written as the heartbeat (and by the caller wherever
        else it wants the same instant, e.g. ``started_at``).
    **values
        Written with the heartbeat in the same UPDATE (a status, a counter reset).
    """
    now = now or timezone.now()
    claimable = stale_q(stale_after=stale_after, now=now, field=field)
    if free is not None:
        claimable = free | claimable
    return rows.filter(claimable).update(**{field: now}, **values) == 1


def lease_renew(rows: QuerySet[Any], *, field: str = HEARTBEAT, **values: Any) -> int:
    """Renew the heartbeat of ``rows`` (the row this worker holds), with ``values``
    written in the same UPDATE (progress); how many rows."""
    return rows.update(**{field: timezone.now()}, **values)
