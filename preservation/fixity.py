"""The preservation fixity audit: every AIP's files re-read and their SHA-256
compared at least once per ``PACS_PRESERVATION_FIXITY_CYCLE_DAYS`` (a share of
the packages each night, the least recently checked first), and every closed
volume's index, signature and time stamp verified. Each mismatch becomes a
:class:`~preservation.models.PreservationAlert` shown in the admin; nothing is
repaired in place (the tier is write-once): the officer restores from the
archive or a DIP under the manual's procedure."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from archive import signing, storage

from . import timestamp, vault
from .journal import journal_record
from .models import FixityAudit, JournalEntry, Package, PreservationAlert, Volume

logger = logging.getLogger(__name__)

SYSTEM = "preservation.fixity_audit"


def _alert(audit: FixityAudit, kind: str, *, path: str, detail: str, package=None, volume=None) -> None:  # type: ignore[no-untyped-def]
    PreservationAlert.objects.create(
        audit=audit, kind=kind, path=path, detail=detail[:2000], package=package, volume=volume
    )
    audit.failures += 1
    logger.error("preservation fixity: %s %s: %s", kind, path, detail)


def packages_due(*, now: dt.datetime, cycle_days: int) -> list[Package]:
    """Tonight's share: the overdue packages, and at least 1/cycle of all, least recently checked first."""
    archived = Package.objects.filter(status=Package.Status.ARCHIVED)
    total = archived.count()
    overdue = archived.filter(
        Q(fixity_checked_at__isnull=True) | Q(fixity_checked_at__lte=now - dt.timedelta(days=cycle_days))
    )
    limit = max(overdue.count(), math.ceil(total / max(cycle_days, 1)))
    return list(archived.order_by(F("fixity_checked_at").asc(nulls_first=True), "pk")[:limit])


def fixity_audit(*, cycle_days: int | None = None) -> FixityAudit:
    now = timezone.now()
    cycle = cycle_days or settings.PACS_PRESERVATION_FIXITY_CYCLE_DAYS
    audit = FixityAudit.objects.create()
    for package in packages_due(now=now, cycle_days=cycle):
        for f in package.files.filter(discarded_at__isnull=True).order_by("name"):
            audit.files_checked += 1
            try:
                sha = vault.file_sha256(f.path)
            except storage.StorageError as exc:
                _alert(audit, PreservationAlert.Kind.UNREADABLE, path=f.path, detail=str(exc), package=package)
                continue
            if sha is None:
                _alert(audit, PreservationAlert.Kind.MISSING, path=f.path, detail="", package=package)
            elif sha != f.sha256:
                _alert(
                    audit,
                    PreservationAlert.Kind.DAMAGED,
                    path=f.path,
                    detail=f"SHA-256 {sha}, atteso {f.sha256}",
                    package=package,
                )
        Package.objects.filter(pk=package.pk).update(fixity_checked_at=now)
        audit.packages_checked += 1
    try:
        ca = signing.ca_certificate_pem()
    except signing.SigningError as exc:
        ca = b""
        logger.error("preservation fixity: %s", exc.message)
    for volume in Volume.objects.filter(status=Volume.Status.CLOSED).order_by("pk"):
        audit.volumes_checked += 1
        _volume_check(audit, volume, ca)
        Volume.objects.filter(pk=volume.pk).update(fixity_checked_at=now)
    audit.finished_at = timezone.now()
    audit.save()
    journal_record(
        event=JournalEntry.Event.AUDIT,
        action="fixity.audit",
        object_id=str(audit.pk),
        outcome="success" if audit.failures == 0 else "failure",
        system=SYSTEM,
        detail={
            "packages": audit.packages_checked,
            "files": audit.files_checked,
            "volumes": audit.volumes_checked,
            "failures": audit.failures,
        },
    )
    return audit


def _volume_check(audit: FixityAudit, volume: Volume, ca: bytes) -> None:
    contents: dict[str, bytes] = {}
    for path, expected in (
        (volume.index_path, volume.index_sha256),
        (volume.signature_path, volume.signature_sha256),
        (volume.timestamp_path, volume.timestamp_sha256),
    ):
        audit.files_checked += 1
        try:
            data = vault.read_bytes(path)
        except storage.StorageError as exc:
            _alert(audit, PreservationAlert.Kind.UNREADABLE, path=path, detail=str(exc), volume=volume)
            return
        if data is None:
            _alert(audit, PreservationAlert.Kind.MISSING, path=path, detail="", volume=volume)
            return
        if hashlib.sha256(data).hexdigest() != expected:
            _alert(
                audit, PreservationAlert.Kind.DAMAGED, path=path, detail=f"SHA-256 diverso da {expected}", volume=volume
            )
        contents[path] = data
    index = contents[volume.index_path]
    check = signing.cades_verify_detached(data=index, signature=contents[volume.signature_path], ca_pem=ca or None)
    if not check.ok:
        _alert(audit, PreservationAlert.Kind.SIGNATURE, path=volume.signature_path, detail=check.reason, volume=volume)
    ts = timestamp.timestamp_verify(data=index, tsr=contents[volume.timestamp_path], ca_pem=ca)
    if not ts.ok:
        _alert(audit, PreservationAlert.Kind.TIMESTAMP, path=volume.timestamp_path, detail=ts.reason, volume=volume)
