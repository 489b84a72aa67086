"""The preservation tier's only door: write-once publication and the discard.

An archival package or a volume is published as a folder: on a filesystem
tier it is written whole under ``.staging/`` in the tier, fsynced, and renamed
to its final name in one step, so a worker killed meanwhile leaves nothing
under the final name (the next run removes its stale staging folder and
starts again). On an object store, where there is no rename, each object is
written once (an existing object with other bytes is refused) and the
package's manifest goes last; the database row marks completion last in
both cases.

Nothing here replaces an object; an object is removed only by
:func:`discard_file`, for an item of a discard an officer approved.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.conf import settings

from archive.storage import tiers as storage
from kernel.errors import PacsError

from .models import Discard, DiscardItem

logger = logging.getLogger(__name__)

STAGING = ".staging"


class VaultError(PacsError):
    """The preservation tier refused or failed an operation."""

    code = "vault"


class WriteOnceError(VaultError):
    """An object exists with other content, or a removal was not authorised by an approved discard."""

    code = "write_once"


@dataclass(frozen=True)
class StagedFile:
    """A file to publish: ``name`` inside the folder, its local ``source`` and its SHA-256."""

    name: str
    source: Path
    sha256: str


def tier() -> str:
    return str(settings.PACS_PRESERVATION_TIER)


def _check_name(name: str) -> None:
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or ".." in parts or any(p.startswith(".") for p in parts):
        raise VaultError(f"refusing the name {name!r}")


def folder_exists(prefix: str) -> bool:
    if storage.tier_is_local(tier()):
        return storage.absolute_path(tier(), prefix).is_dir()
    return False


def publish_folder(prefix: str, files: list[StagedFile], *, last: str | None = None) -> bool:
    """Publish ``files`` under ``prefix`` in the preservation tier, write-once.

    Returns True when this call published them, False when the same files
    (same names and hashes) were already there (a run that died after the
    rename, before recording it). Raises :class:`WriteOnceError` when
    something else is there.
    """
    _check_name(prefix)
    for f in files:
        _check_name(f.name)
    if storage.tier_is_local(tier()):
        return _publish_local(prefix, files)
    ordered = sorted(files, key=lambda f: f.name == last)
    created = False
    for f in ordered:
        with open(f.source, "rb") as fh:
            try:
                created |= storage.copy_store(fh, tier(), f"{prefix}/{f.name}", sha256=f.sha256)
            except storage.CopyMismatch as exc:
                raise WriteOnceError(str(exc)) from exc
    return created


def _publish_local(prefix: str, files: list[StagedFile]) -> bool:
    final = storage.absolute_path(tier(), prefix)
    if final.exists():
        _adopt(final, files)
        return False
    staging_root = storage.absolute_path(tier(), STAGING)
    storage.makedirs_durable(staging_root)
    staging = Path(tempfile.mkdtemp(dir=staging_root, prefix=f"{prefix.replace('/', '_')}."))
    try:
        dirs = {staging}
        for f in files:
            target = staging / f.name
            if target.parent not in dirs:
                storage.makedirs_durable(target.parent)
                dirs.add(target.parent)
            digest = hashlib.sha256()
            with (
                open(f.source, "rb") as src,
                os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out,
            ):
                for chunk in iter(lambda: src.read(1024 * 1024), b""):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != f.sha256:
                raise VaultError(f"{f.name}: the staged copy has SHA-256 {digest.hexdigest()}, expected {f.sha256}")
            os.chmod(target, 0o400)  # write-once: not even the owner writes it
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            storage.fsync_dir(d)
        storage.makedirs_durable(final.parent)
        try:
            # One rename: the folder appears complete or not at all.
            os.rename(staging, final)
        except OSError as exc:
            if final.exists():
                _adopt(final, files)
                return False
            raise VaultError(f"publishing {prefix}: {exc}") from exc
        storage.fsync_dir(final.parent)
        return True
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _adopt(final: Path, files: list[StagedFile]) -> None:
    present = {str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()}
    wanted = {f.name for f in files}
    if present != wanted:
        raise WriteOnceError(f"{final.name} already exists with other files")
    for f in files:
        with open(final / f.name, "rb") as fh:
            if storage.file_sha256(fh) != f.sha256:
                raise WriteOnceError(f"{final.name}/{f.name} already exists with other content")


def put_file(relpath: str, source: Path, *, sha256: str) -> bool:
    """Write one object once (True), or find it there with the same bytes (False)."""
    _check_name(relpath)
    with open(source, "rb") as fh:
        try:
            return storage.copy_store(fh, tier(), relpath, sha256=sha256)
        except storage.CopyMismatch as exc:
            raise WriteOnceError(str(exc)) from exc


def staging_clean(prefix: str) -> int:
    """Remove what dead runs left in the staging area for ``prefix``; returns how many folders."""
    if not storage.tier_is_local(tier()):
        return 0
    root = storage.absolute_path(tier(), STAGING)
    if not root.is_dir():
        return 0
    removed = 0
    for entry in root.glob(f"{prefix.replace('/', '_')}.*"):
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def read_bytes(relpath: str) -> bytes | None:
    fh = storage.open_copy(tier(), relpath)
    if fh is None:
        return None
    with fh:
        return fh.read()


def file_sha256(relpath: str) -> str | None:
    return storage.copy_sha256(tier(), relpath)


def discard_file(*, item: DiscardItem) -> bool:
    """Remove the object of one item of an approved discard; refuse anything else.

    The discard's state is read again from the database: an object goes
    only while its discard is approved (not merely proposed, not rejected).
    """
    fresh = DiscardItem.objects.select_related("discard", "package_file").filter(pk=item.pk).first()
    if fresh is None or fresh.discard.status != Discard.Status.APPROVED:
        raise WriteOnceError("a discard must be approved before anything is removed from the preservation tier")
    if fresh.path != fresh.package_file.path:
        raise WriteOnceError(f"discard item {fresh.pk} does not name its file")
    path = storage.absolute_path(tier(), fresh.path) if storage.tier_is_local(tier()) else None
    if path is not None and path.exists():
        os.chmod(path, storage.FILE_MODE)
    return storage.discard_remove(tier(), fresh.path)


def new_identifier(kind: str) -> str:
    return f"{kind}-{uuid.uuid4()}"
