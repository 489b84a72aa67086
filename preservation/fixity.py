"""The preservation fixity audit: the chain of signed volume indexes is the truth.

Each night, for every closed volume:

* its index, signature and time stamp are read and compared with the hashes
  the registry recorded; the signature must verify and come from a
  preservation officer (:mod:`preservation.signer`), the time stamp from an
  accepted TSA (``PACS_TSA_CERTIFICATES``);
* its index's link to the previous volume (``PIndexSource``: the previous
  index's ID, path and SHA-256) must match the registry's ``previous`` and the
  previous index on disk;
* every file its index lists must have its registry row with the same hash
  (a deleted row is named; a discarded file is covered by its discard), and
  every row of its packages must be in the index.

The registry's database guards (:mod:`preservation.guard`) must be in place
and enabled. Then the volumes the giornale says were closed and the packages it says were
archived must be in the registry, and every volume folder on disk must be a
registered volume: a whole volume removed is found from either side. Last,
tonight's share of the packages (each at least once per
``PACS_PRESERVATION_FIXITY_CYCLE_DAYS``, least recently checked first) is
re-read, each file compared with its row and with its signed index entry.

Each mismatch becomes a :class:`~preservation.models.PreservationAlert`
shown in the admin, one per object and kind: the same mismatch found again
updates its alert (count, last seen) instead of adding another. Nothing is
repaired in place (the tier is write-once): the officer restores from the
archive or a DIP under the manual's procedure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from archive.reporting import signing
from archive.storage import tiers as storage

from . import guard, signer, sincro, timestamp, vault
from .journal import journal_record
from .models import FixityAudit, JournalEntry, Package, PackageFile, PreservationAlert, Volume

logger = logging.getLogger(__name__)

SYSTEM = "preservation.fixity_audit"


def _alert(
    audit: FixityAudit,
    kind: str,
    *,
    path: str,
    detail: str,
    package: Package | None = None,
    volume: Volume | None = None,
) -> None:
    """Raise an alert, or update the open one for the same object and kind (count, last seen)."""
    detail = detail[:2000]
    PreservationAlert.raise_or_update(
        damage={"kind": kind, "path": path, "package": package, "volume": volume}, detail=detail, audit=audit
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


@dataclass
class _Truth:
    """What the signed indexes say, gathered while the volumes are checked."""

    files: dict[str, tuple[str, Volume]] = field(default_factory=dict)  # path -> (SHA-256 in the index, volume)
    index_sha256: dict[str, str] = field(default_factory=dict)  # index path -> SHA-256 of the file read tonight


def fixity_audit(*, cycle_days: int | None = None) -> FixityAudit:
    now = timezone.now()
    cycle = cycle_days or settings.PACS_PRESERVATION_FIXITY_CYCLE_DAYS
    audit = FixityAudit.objects.create()
    try:
        ca = signing.ca_certificate_pem()
    except signing.SigningError as exc:
        ca = b""
        logger.error("preservation fixity: %s", exc.message)
    try:
        tsas: bytes | None = timestamp.trusted_tsa_pem()
    except timestamp.TimestampError as exc:
        tsas = b""  # no TSA accepted: every time stamp fails, and says why
        logger.error("preservation fixity: %s", exc)
    for name in guard.guards_missing():
        _alert(
            audit,
            PreservationAlert.Kind.GUARD,
            path=name,
            detail="il trigger che protegge il registro manca o è disattivato: il database accetta modifiche",
        )
    truth = _Truth()
    closed = list(Volume.objects.filter(status=Volume.Status.CLOSED).select_related("previous").order_by("pk"))
    for volume in closed:
        audit.volumes_checked += 1
        index = _volume_check(audit, volume, ca, tsas, truth)
        if index is not None:
            _link_check(audit, volume, index, truth)
            _registry_check(audit, volume, index, truth)
        Volume.objects.filter(pk=volume.pk).update(fixity_checked_at=now)
    _ends_check(audit, closed)
    for package in packages_due(now=now, cycle_days=cycle):
        _package_check(audit, package, truth)
        Package.objects.filter(pk=package.pk).update(fixity_checked_at=now)
        audit.packages_checked += 1
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


class _Target(TypedDict, total=False):
    """What a read file belongs to, for its alert."""

    package: Package
    volume: Volume


def _read(audit: FixityAudit, path: str, **target: Unpack[_Target]) -> bytes | None:
    audit.files_checked += 1
    try:
        data = vault.read_bytes(path)
    except storage.StorageError as exc:
        _alert(audit, PreservationAlert.Kind.UNREADABLE, path=path, detail=str(exc), **target)
        return None
    if data is None:
        _alert(audit, PreservationAlert.Kind.MISSING, path=path, detail="", **target)
    return data


def _volume_check(
    audit: FixityAudit, volume: Volume, ca: bytes, tsas: bytes | None, truth: _Truth
) -> sincro.Index | None:
    """The volume's three files against the registry, its signature (and signer's role), its time stamp."""
    contents: dict[str, bytes] = {}
    for path, expected in (
        (volume.index_path, volume.index_sha256),
        (volume.signature_path, volume.signature_sha256),
        (volume.timestamp_path, volume.timestamp_sha256),
    ):
        data = _read(audit, path, volume=volume)
        if data is None:
            return None
        sha = hashlib.sha256(data).hexdigest()
        if sha != expected:
            _alert(
                audit, PreservationAlert.Kind.DAMAGED, path=path, detail=f"SHA-256 diverso da {expected}", volume=volume
            )
        contents[path] = data
    index = contents[volume.index_path]
    truth.index_sha256[volume.index_path] = hashlib.sha256(index).hexdigest()
    check = signer.officer_verify(data=index, signature=contents[volume.signature_path], ca_pem=ca or None)
    if not check.ok:
        _alert(audit, PreservationAlert.Kind.SIGNATURE, path=volume.signature_path, detail=check.reason, volume=volume)
    ts = timestamp.timestamp_verify(data=index, tsr=contents[volume.timestamp_path], ca_pem=ca, trusted_tsa_pem=tsas)
    if not ts.ok:
        _alert(audit, PreservationAlert.Kind.TIMESTAMP, path=volume.timestamp_path, detail=ts.reason, volume=volume)
    if not check.ok:
        return None  # an index nobody vouches for is no truth to check the registry against
    try:
        parsed = sincro.index_parse(index)
    except ValueError as exc:
        _alert(audit, PreservationAlert.Kind.DAMAGED, path=volume.index_path, detail=str(exc), volume=volume)
        return None
    if parsed.volume_id != volume.identifier:
        _alert(
            audit,
            PreservationAlert.Kind.CHAIN,
            path=volume.index_path,
            detail=f"l'indice firmato è del volume {parsed.volume_id}, non di {volume.identifier}",
            volume=volume,
        )
        return None
    for f in parsed.files():
        truth.files[f.path] = (f.sha256, volume)
    return parsed


def _link_check(audit: FixityAudit, volume: Volume, index: sincro.Index, truth: _Truth) -> None:
    """The signed index's link to the previous volume, against the registry and the previous index on disk."""
    previous = volume.previous
    if previous is None:
        if index.previous_id:
            _alert(
                audit,
                PreservationAlert.Kind.CHAIN,
                path=volume.index_path,
                detail=f"l'indice firmato segue {index.previous_id}, che il registro non collega a questo volume",
                volume=volume,
            )
        return
    expected = (f"IdC-{previous.identifier}", previous.index_path, previous.index_sha256)
    found = (index.previous_id, index.previous_path, index.previous_sha256)
    if found != expected:
        _alert(
            audit,
            PreservationAlert.Kind.CHAIN,
            path=volume.index_path,
            detail=f"l'indice firmato segue {found[0] or 'nessun volume'} ({found[2] or '-'}), "
            f"il registro {expected[0]} ({expected[2]})",
            volume=volume,
        )
        return
    on_disk = truth.index_sha256.get(previous.index_path)
    if on_disk is None and previous.status == Volume.Status.CLOSED:
        return  # the previous index was not readable: its own alert says so
    if on_disk != index.previous_sha256:
        _alert(
            audit,
            PreservationAlert.Kind.CHAIN,
            path=previous.index_path,
            detail=f"l'indice di {volume.identifier} lo fissa con SHA-256 {index.previous_sha256}, "
            f"sul disco è {on_disk or 'assente'}",
            volume=previous,
        )


def _registry_check(audit: FixityAudit, volume: Volume, index: sincro.Index, truth: _Truth) -> None:
    """Every file the signed index lists has its registry row (same hash), and every row is in the index."""
    rows = {f.path: f for f in PackageFile.objects.filter(package__volume=volume).select_related("package")}
    listed = {f.path: f for f in index.files()}
    for path, entry in listed.items():
        row = rows.get(path)
        if row is None:
            data = vault.read_bytes(path) if path else None
            on_disk = "assente" if data is None else hashlib.sha256(data).hexdigest()
            _alert(
                audit,
                PreservationAlert.Kind.REGISTRY,
                path=path,
                detail=f"elencato con SHA-256 {entry.sha256} nell'indice firmato di {volume.identifier}, "
                f"ma senza riga nel registro (sul disco: {on_disk})",
                volume=volume,
            )
        elif row.sha256 != entry.sha256:
            _alert(
                audit,
                PreservationAlert.Kind.REGISTRY,
                path=path,
                detail=f"il registro dice SHA-256 {row.sha256}, l'indice firmato di {volume.identifier} {entry.sha256}",
                package=row.package,
                volume=volume,
            )
    for path, row in rows.items():
        if path not in listed:
            _alert(
                audit,
                PreservationAlert.Kind.REGISTRY,
                path=path,
                detail=f"nel registro come file del volume {volume.identifier}, ma non nel suo indice firmato",
                package=row.package,
                volume=volume,
            )


def _ends_check(audit: FixityAudit, closed: list[Volume]) -> None:
    """Volumes and packages the giornale recorded, and volume folders on disk, that the registry lacks."""
    registered = {v.identifier for v in Volume.objects.all()}
    for action, known, kind, path, detail in (
        (
            "volume.close",
            registered,
            PreservationAlert.Kind.CHAIN,
            "volumes/{}/",
            "il giornale ne registra la chiusura, ma il volume manca dal registro",
        ),
        (
            "package.archive",
            set(Package.objects.values_list("identifier", flat=True)),
            PreservationAlert.Kind.REGISTRY,
            "aip/{}/",
            "il giornale ne registra l'archiviazione, ma il pacchetto manca dal registro",
        ),
    ):
        journal = JournalEntry.objects.filter(action=action, outcome="success").values_list("object_id", flat=True)
        for identifier in sorted(set(journal) - known):
            _alert(audit, kind, path=path.format(identifier), detail=detail)
    if storage.tier_is_local(vault.tier()):
        root = storage.absolute_path(vault.tier(), "volumes")
        if root.is_dir():
            for folder in sorted(p.name for p in root.iterdir() if p.is_dir()):
                if folder not in registered:
                    _alert(
                        audit,
                        PreservationAlert.Kind.REGISTRY,
                        path=f"volumes/{folder}/",
                        detail="cartella di volume sul disco che il registro non conosce",
                    )


def _package_check(audit: FixityAudit, package: Package, truth: _Truth) -> None:
    """Each file of the package re-read: against its row, and against its entry in the signed index."""
    rows = list(package.files.order_by("name"))
    for f in rows:
        if f.discarded_at is not None:
            continue
        audit.files_checked += 1
        try:
            sha = vault.file_sha256(f.path)
        except storage.StorageError as exc:
            _alert(audit, PreservationAlert.Kind.UNREADABLE, path=f.path, detail=str(exc), package=package)
            continue
        if sha is None:
            _alert(audit, PreservationAlert.Kind.MISSING, path=f.path, detail="", package=package)
            continue
        if sha != f.sha256:
            _alert(
                audit,
                PreservationAlert.Kind.DAMAGED,
                path=f.path,
                detail=f"SHA-256 {sha}, atteso {f.sha256}",
                package=package,
            )
            continue
        entry = truth.files.get(f.path)
        if entry is not None and entry[0] != sha:
            # The file and its row agree with each other, not with what was signed: both were replaced.
            _alert(
                audit,
                PreservationAlert.Kind.DAMAGED,
                path=f.path,
                detail=f"SHA-256 {sha}, l'indice firmato di {entry[1].identifier} dice {entry[0]}",
                package=package,
            )
    if package.path and storage.tier_is_local(vault.tier()):
        folder = storage.absolute_path(vault.tier(), package.path)
        known = {f.path for f in rows} | set(truth.files)  # a file only the index lists has its own alert
        if folder.is_dir():
            for p in sorted(folder.rglob("*")):
                rel = f"{package.path}/{p.relative_to(folder).as_posix()}"
                if p.is_file() and rel not in known:
                    _alert(
                        audit,
                        PreservationAlert.Kind.REGISTRY,
                        path=rel,
                        detail="file nel pacchetto sul disco che il registro non conosce",
                        package=package,
                    )
