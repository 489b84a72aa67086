"""Preservation volumes: archived packages grouped under one SInCRO index,
signed (detached CAdES) with the preservation officer's key and time-stamped
(RFC 3161).

:func:`volume_close` first finishes a volume a dead worker left half-closed
(its heartbeat lease stale, :mod:`kernel.leases`), else claims the archived
packages without a volume (a conditional update per package, so two closers
never share one). It writes the index, its signature and its time stamp, and
publishes the three in one step under ``volumes/<ID>/`` in the write-once
tier; the row is marked closed last.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from archive.reporting import signing
from archive.storage import tiers as storage
from kernel import leases
from kernel.errors import PacsError, Unavailable

from . import signer, sincro, timestamp, vault
from .journal import journal_record
from .models import JournalEntry, Package, PackageFile, Volume

logger = logging.getLogger(__name__)

SYSTEM = "preservation.volume_close"
INDEX, SIGNATURE, TIMESTAMP = "index.xml", "index.xml.p7m", "index.xml.tsr"
STALE = dt.timedelta(minutes=10)


class VolumeError(Unavailable):
    """A volume could not be closed now (no signer key, no time-stamp authority)."""

    code = "volume"


class _NothingClaimed(PacsError):
    code = "nothing_claimed"


def signer_user() -> object:
    try:
        return signer.officer_user()
    except signer.SignerError as exc:
        raise VolumeError(exc.message) from exc


def volume_close(*, max_packages: int | None = None, stale_after: dt.timedelta = STALE) -> Volume | None:
    """Close one volume: a half-closed one first, else a new one of the packages without a volume.

    Returns the closed volume, or None when there was nothing to close.
    """
    now = timezone.now()
    building = Volume.objects.filter(status=Volume.Status.BUILDING)
    leftover = leases.leases_stale(building, stale_after=stale_after, now=now).first()
    if leftover is not None and leases.lease_claim(building.filter(pk=leftover.pk), stale_after=stale_after, now=now):
        return _finish(leftover)
    limit = max_packages or settings.PACS_PRESERVATION_VOLUME_MAX_PACKAGES
    candidates = list(
        Package.objects.filter(status=Package.Status.ARCHIVED, volume__isnull=True)
        .order_by("archived_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    if not candidates:
        return None
    previous = Volume.objects.filter(status=Volume.Status.CLOSED).order_by("-closed_at", "-pk").first()
    try:
        with transaction.atomic():
            volume = Volume.objects.create(
                identifier=f"VOL-{timezone.localdate():%Y%m%d}-{uuid.uuid4().hex[:12]}",
                tier=vault.tier(),
                previous=previous,
                heartbeat_at=now,
            )
            if not Package.objects.filter(pk__in=candidates, volume__isnull=True).update(volume=volume):
                # Another closer took them all: the empty volume row goes with
                # the rollback (the database refuses a DELETE on volumes).
                raise _NothingClaimed
    except _NothingClaimed:
        return None
    return _finish(volume)


def _finish(volume: Volume) -> Volume:
    prefix = f"volumes/{volume.identifier}"
    if vault.folder_exists(prefix):
        # A worker published the folder and died before recording it: the
        # rename made it whole, so it is recorded as it is.
        found = {name: vault.read_bytes(f"{prefix}/{name}") for name in (INDEX, SIGNATURE, TIMESTAMP)}
        files = {name: content for name, content in found.items() if content is not None}
        if len(files) < len(found):
            raise VolumeError(f"{prefix} exists without all its files")
        return _record(volume, prefix, files)
    vault.staging_clean(prefix)
    try:
        index = _index(volume, signer_name=signer.officer_name())
        data = sincro.index_xml(index)
        signature = signer.officer_sign(data)
    except signer.SignerError as exc:
        raise VolumeError(exc.message) from exc
    try:
        tsr = timestamp.timestamp_obtain(data)
        stamp = timestamp.timestamp_verify(
            data=data, tsr=tsr, ca_pem=signing.ca_certificate_pem(), trusted_tsa_pem=timestamp.trusted_tsa_pem()
        )
    except (timestamp.TimestampError, signing.SigningError) as exc:
        raise VolumeError(str(exc)) from exc
    if not stamp.ok:
        # Published, it could never be verified: the volume stays open for the next run.
        raise VolumeError(f"the time stamp of {volume.identifier} is not accepted: {stamp.reason}")
    files = {INDEX: data, SIGNATURE: signature, TIMESTAMP: tsr}
    # Signing and the TSA may have been slow: still alive, before publishing.
    leases.lease_renew(Volume.objects.filter(pk=volume.pk, status=Volume.Status.BUILDING))
    workdir = storage.incoming_dir() / f"vol-{volume.identifier}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(mode=storage.DIR_MODE)
    try:
        staged = []
        for name, content in files.items():
            path = Path(workdir) / name
            storage.write_private_file(path, content)
            staged.append(vault.StagedFile(name, path, hashlib.sha256(content).hexdigest()))
        vault.publish_folder(prefix, staged, last=INDEX)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _record(volume, prefix, files)


def _index(volume: Volume, *, signer_name: str) -> sincro.Index:
    previous = volume.previous
    index = sincro.Index(
        id=f"IdC-{volume.identifier}",
        volume_id=volume.identifier,
        previous_id=f"IdC-{previous.identifier}" if previous else "",
        previous_path=previous.index_path if previous else "",
        previous_sha256=previous.index_sha256 if previous else "",
        created=timezone.now(),
        submitter=settings.PACS_PRESERVATION_SUBMITTER,
        holder=settings.PACS_PRESERVATION_HOLDER,
        signer=signer_name,
    )
    for package in volume.packages.order_by("pk"):
        files = list(package.files.order_by("name"))
        manifest = next((f for f in files if f.name == "PdA.xml"), None)
        index.groups.append(
            sincro.IndexGroup(
                label=package.identifier,
                files=[
                    sincro.IndexFile(
                        id=f"{package.identifier}/{f.name}", path=f.path, format=f.mime_type, sha256=f.sha256
                    )
                    for f in files
                ],
                manifest_path=manifest.path if manifest else "",
                manifest_sha256=manifest.sha256 if manifest else "",
            )
        )
    return index


def _record(volume: Volume, prefix: str, files: dict[str, bytes]) -> Volume:
    check = timestamp.timestamp_verify(
        data=files[INDEX],
        tsr=files[TIMESTAMP],
        ca_pem=signing.ca_certificate_pem(),
        trusted_tsa_pem=timestamp.trusted_tsa_pem(),
    )
    sig = signer.officer_verify(data=files[INDEX], signature=files[SIGNATURE])
    updated = Volume.objects.filter(pk=volume.pk, status=Volume.Status.BUILDING).update(
        status=Volume.Status.CLOSED,
        closed_at=timezone.now(),
        index_path=f"{prefix}/{INDEX}",
        index_sha256=hashlib.sha256(files[INDEX]).hexdigest(),
        signature_path=f"{prefix}/{SIGNATURE}",
        signature_sha256=hashlib.sha256(files[SIGNATURE]).hexdigest(),
        timestamp_path=f"{prefix}/{TIMESTAMP}",
        timestamp_sha256=hashlib.sha256(files[TIMESTAMP]).hexdigest(),
        timestamp_time=check.time,
        signer_name=sig.signer,
    )
    volume.refresh_from_db()
    if updated:
        journal_record(
            event=JournalEntry.Event.VOLUME,
            action="volume.close",
            object_id=volume.identifier,
            system=SYSTEM,
            detail={
                "packages": volume.packages.count(),
                "files": PackageFile.objects.filter(package__volume=volume).count(),
                "index_sha256": volume.index_sha256,
                "signature_ok": sig.ok,
                "signer": sig.signer,
                "signer_role": sig.role,
                "timestamp_ok": check.ok,
                "timestamp": check.time.isoformat() if check.time else "",
            },
        )
    return volume
