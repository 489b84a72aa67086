"""The audit log: one append-only, hash-chained row per access to patient data."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from .models import AuditEvent

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from .models import Patient, Study

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Any constant: PostgreSQL's advisory lock that serialises the chain's tail.
_CHAIN_LOCK_KEY = 0x50414353  # "PACS"


def _row_hash(event: AuditEvent) -> str:
    payload = {
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
        "prev_hash": event.prev_hash,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def audit_record(
    *,
    action: str,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    user: AbstractBaseUser | None = None,
    ae_title: str = "",
    system: str = "",
    patient: Patient | None = None,
    study: Study | None = None,
    study_instance_uid: str = "",
    source: str = "",
    detail: dict[str, Any] | None = None,
    patients: Iterable[int | None] | None = None,
) -> AuditEvent:
    """Append one event to the chain and return it.

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
        ``PACS_AUDIT_MAX_PATIENTS`` kept, the total counted).
    """
    if study is not None and patient is None:
        patient = study.patient
    if patients is not None:
        detail = {**(detail or {}), **patients_detail(patients)}
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Two writers must not both chain onto the same tail.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
        # SQLite: the IMMEDIATE transaction already holds the database's write lock.
        tail = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        event = AuditEvent(
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
            prev_hash=tail or GENESIS_HASH,
        )
        event.hash = _row_hash(event)
        event.save()
    return event


def patients_detail(patients: Iterable[int | None]) -> dict[str, Any]:
    """The patients a search returned, bounded: ``{"patients": [ids...], "patients_total": n}``."""
    seen = list(dict.fromkeys(int(p) for p in patients if p is not None))
    return {"patients": seen[: settings.PACS_AUDIT_MAX_PATIENTS], "patients_total": len(seen)}


@dataclass
class ChainReport:
    checked: int
    broken_at: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def chain_verify(rows: Iterable[Any], row_hash: Callable[[Any], str]) -> ChainReport:
    """Walk a hash chain in order (``rows`` with ``pk``, ``prev_hash`` and
    ``hash``); report the first row that does not fit. Also used by the
    preservation log (``preservation.journal``)."""
    prev = GENESIS_HASH
    checked = 0
    for row in rows:
        if row.prev_hash != prev:
            return ChainReport(checked, row.pk, "its prev_hash does not match the previous row (a row removed?)")
        if row_hash(row) != row.hash:
            return ChainReport(checked, row.pk, "its content does not match its hash (a row changed?)")
        prev = row.hash
        checked += 1
    return ChainReport(checked, None)


def audit_chain_verify() -> ChainReport:
    """Recompute every row's hash in order; report the first row that does not fit."""
    return chain_verify(AuditEvent.objects.order_by("id").iterator(chunk_size=2000), _row_hash)
