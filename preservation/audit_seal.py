"""Seals of the audit log: the head of every audit chain, in the giornale, time-stamped.

Every ``PACS_AUDIT_SEAL_SECONDS`` (Celery beat, :func:`audit_seal`) the heads
of the audit chains (``kernel.audit.audit_chain_heads``: each chain's last
``seq`` and HMAC) are written into a seal document, time-stamped by the
project's RFC 3161 authority (``preservation.timestamp``) and recorded in the
giornale (event ``seal``). A seal names the digest of the seal before it, so
removing one from the middle shows; its time stamp, bound to its date, cannot
be made again later for an earlier date. Whoever holds the database, even
with the audit key, therefore cannot rewrite or cut what a seal covers:
``manage.py verify_audit_chain`` checks every seal against the chains
(:func:`audit_seals_read`, registered with ``kernel.audit`` at start-up).

A seal covers every chain the first time, then the chains with an event since
``LOOKBACK`` before the previous seal (an event committed late, by a
transaction open longer than that, is covered when its chain next writes).

A seal whose time stamp could not be obtained (the TSA down) is recorded
anyway, without it: the next stamped seal names its digest, so it is anchored
in time by that one; the verifier notes it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
from typing import Any

from django.db import connection

from archive.reporting import signing
from kernel import audit, hashchain

from . import timestamp
from .journal import journal_record, journal_verify
from .models import JournalEntry

logger = logging.getLogger(__name__)

SEAL_KIND = "pacs-audit-seal"
ACTION = "audit.seal"
SYSTEM = "preservation.audit_seal"
LOOKBACK = dt.timedelta(hours=1)
# A time stamp is asked for right after its seal is made: one much later was
# asked for afterwards, by someone re-making the seal.
TIMESTAMP_TOLERANCE = dt.timedelta(minutes=10)


def seal_bytes(document: dict[str, Any]) -> bytes:
    """The bytes a seal's digest and time stamp are computed over: the canonical JSON of
    the chains' rows (a seal holds only strings and numbers, which it writes alike)."""
    return hashchain.canonical(document)


def _seals() -> Any:
    return JournalEntry.objects.filter(event=JournalEntry.Event.SEAL, action=ACTION)


def audit_seal() -> JournalEntry:
    """Seal the head of every audit chain (changed since the previous seal) into the giornale.

    The heads are read and the time stamp asked for outside any transaction;
    the giornale entry is one append.
    """
    previous = _seals().order_by("-id").first()
    now = dt.datetime.now(dt.UTC)
    since = None
    if previous is not None:
        since = dt.datetime.fromisoformat(previous.detail["seal"]["at"]) - LOOKBACK
    heads = audit.audit_chain_heads(since=since)
    document = {
        "kind": SEAL_KIND,
        "version": 1,
        "at": now.isoformat(),
        "previous": previous.detail["sha256"] if previous is not None else "",
        "since": since.isoformat() if since is not None else "",
        "chains": [
            {"chain": h.chain, "seq": h.seq, "hash": h.hash, "event": h.event_id, "key_id": h.key_id} for h in heads
        ],
    }
    data = seal_bytes(document)
    detail: dict[str, Any] = {"seal": document, "sha256": hashlib.sha256(data).hexdigest()}
    try:
        tsr = timestamp.timestamp_obtain(data)
    except timestamp.TimestampError as exc:
        logger.error("audit seal without a time stamp: %s", exc)
        detail.update(tsr="", timestamp="", timestamp_error=str(exc))
    else:
        check = timestamp.timestamp_verify(data=data, tsr=tsr, ca_pem=_ca_pem(), tsa_pem=None)
        detail.update(
            tsr=base64.b64encode(tsr).decode(),
            timestamp=check.time.isoformat() if check.time else "",
            timestamp_error="" if check.ok else check.reason,
        )
    return journal_record(
        event=JournalEntry.Event.SEAL,
        action=ACTION,
        object_id=detail["sha256"],
        outcome="success" if detail["tsr"] and not detail["timestamp_error"] else "warning",
        system=SYSTEM,
        detail=detail,
    )


# The giornale's triggers (migrations 0002, 0003): the seals are only as safe as they.
GUARDS = {
    "postgresql": ["preservation_journalentry_no_update", "preservation_journalentry_no_truncate"],
    "sqlite": ["preservation_journalentry_no_update", "preservation_journalentry_no_delete"],
}


def _guards_missing() -> list[audit.AuditProblem]:
    return [
        audit.AuditProblem(f"the database guard {name} is missing or disabled: the giornale accepts changes")
        for name in audit.triggers_missing(GUARDS.get(connection.vendor, []))
    ]


def _ca_pem() -> bytes:
    try:
        return signing.ca_certificate_pem()
    except signing.SigningError:
        return b""


def audit_seals_read() -> audit.SealSet:
    """Every seal in the giornale, each checked on its own (digest, order, time stamp),
    with what it claims of the chains for ``kernel.audit.audit_verify`` to compare."""
    result = audit.SealSet()
    ca_pem = _ca_pem()
    digests: set[str] = set()
    for entry in _seals().order_by("id").iterator():
        label = f"seal #{entry.pk} of the giornale ({entry.at:%Y-%m-%d %H:%M})"
        document = entry.detail.get("seal") or {}
        data = seal_bytes(document)
        digest = hashlib.sha256(data).hexdigest()
        result.seals += 1
        result.last = entry.at

        def problem(reason: str, label: str = label) -> None:
            result.problems.append(audit.AuditProblem(reason, seal=label))

        if document.get("kind") != SEAL_KIND or digest != entry.detail.get("sha256"):
            problem("its document does not match its digest (the seal was changed)")
        if document.get("previous"):
            if document["previous"] not in digests:
                problem("it follows a seal that is not in the giornale before it (a seal removed?)")
        elif digests:
            problem("it claims to be the first seal, but seals precede it")
        digests.add(digest)
        tsr = entry.detail.get("tsr") or ""
        if not tsr:
            result.notes.append(
                f"{label}: not time-stamped ({entry.detail.get('timestamp_error') or 'no time stamp'}); "
                "the next time-stamped seal anchors it"
            )
        else:
            check = timestamp.timestamp_verify(data=data, tsr=base64.b64decode(tsr), ca_pem=ca_pem, tsa_pem=None)
            sealed_at = dt.datetime.fromisoformat(document["at"])
            if not check.ok:
                problem(f"its time stamp does not verify: {check.reason}")
            elif check.time is not None and abs(check.time - sealed_at) > TIMESTAMP_TOLERANCE:
                problem(
                    f"time-stamped at {check.time:%Y-%m-%d %H:%M:%S}, far from its date {sealed_at:%Y-%m-%d %H:%M:%S} "
                    "(stamped afterwards?)"
                )
        for head in document.get("chains") or []:
            result.claims.append(
                audit.SealClaim(
                    seal=label, chain=head["chain"], seq=head["seq"], hash=head["hash"], event_id=head["event"]
                )
            )
    result.problems.extend(_guards_missing())
    journal = journal_verify()
    if not journal.ok:
        result.problems.append(
            audit.AuditProblem(
                f"the giornale's own chain is broken at entry #{journal.broken_at}: {journal.reason}",
                seal="giornale",
            )
        )
    return result
