"""Where stored objects lie: the one module that touches the tiers' files.

Tiers are named ``"<kind>:<scope>"`` (today ``facility:<CODE>``) and resolved
through Django's ``STORAGES`` aliases. A file enters a tier only complete and
durable: it is written to a temporary file in the incoming folder, fsynced,
then linked under its final name (which carries its SHA-256, so a name is
never reused for other bytes) and the directory entry is fsynced.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages

logger = logging.getLogger(__name__)

FACILITY = "facility"
_CHUNK = 1024 * 1024


class StorageError(Exception):
    """A tier could not be read or written."""


class StorageFull(StorageError):
    """The tier has no space (or quota) left."""


def facility_tier(facility_code: str) -> str:
    return f"{FACILITY}:{facility_code}"


def _tier_root(tier: str) -> Path:
    kind, _, scope = tier.partition(":")
    if kind != FACILITY or not scope or "/" in scope or scope in {".", ".."}:
        raise StorageError(f"unknown tier {tier!r}")
    storage = storages[FACILITY]
    if not isinstance(storage, FileSystemStorage):
        raise StorageError("the facility tier must be a local filesystem (STORAGES['facility'])")
    return Path(storage.location) / scope


def instance_relpath(*, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
    """The path of an instance inside a tier, from checked UIDs and the content hash only.

    The UIDs have passed :func:`archive.dicom.is_valid_uid` (digits and dots),
    so nothing taken from the data set can climb out of the tier.
    """
    _check_uids(study_uid, series_uid, sop_uid)
    bucket = hashlib.sha256(study_uid.encode("ascii")).hexdigest()[:2]
    return f"studies/{bucket}/{study_uid}/{series_uid}/{sop_uid}.{sha256}.dcm"


def _check_uids(*uids: str) -> None:
    for uid in uids:
        if not uid or not all(c.isdigit() or c == "." for c in uid) or uid.startswith("."):
            raise StorageError(f"refusing to build a path from {uid!r}")


def _check_sha256(sha256: str) -> None:
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise StorageError(f"refusing to build a path from {sha256!r}")


DERIVED_KINDS = ("preview", "thumbnail")
DERIVED_EXTENSIONS = ("jpg", "png")


def derived_relpath(
    *, study_uid: str, series_uid: str, sop_uid: str, frame: int, kind: str, sha256: str, extension: str
) -> str:
    """The path of an object derived from an instance (a preview, a thumbnail) inside a tier.

    Built like :func:`instance_relpath` from checked UIDs and the derived
    content's hash, plus a frame number and a kind and extension from fixed
    lists, under ``derived/`` so that nothing derived is mistaken for an
    instance. Identical bytes get the same name, so a file is never replaced.
    """
    _check_uids(study_uid, series_uid, sop_uid)
    _check_sha256(sha256)
    if kind not in DERIVED_KINDS or extension not in DERIVED_EXTENSIONS or type(frame) is not int or frame < 1:
        raise StorageError(f"refusing to build a derived path for {kind!r}, {extension!r}, frame {frame!r}")
    bucket = hashlib.sha256(study_uid.encode("ascii")).hexdigest()[:2]
    return f"derived/{bucket}/{study_uid}/{series_uid}/{sop_uid}/{frame}.{kind}.{sha256}.{extension}"


REPORT_EXTENSIONS = ("pdf", "p7m")


def report_relpath(*, study_uid: str, version: int, sha256: str, extension: str) -> str:
    """The path of a signed report's file (its PDF, its detached signature) inside a tier.

    The content hash is in the name, as for instances: a path is never reused
    for other bytes, and a report's files are written once.
    """
    _check_uids(study_uid)
    _check_sha256(sha256)
    if extension not in REPORT_EXTENSIONS or type(version) is not int or version < 1:
        raise StorageError(f"refusing to build a report path for {extension!r}, version {version!r}")
    bucket = hashlib.sha256(study_uid.encode("ascii")).hexdigest()[:2]
    return f"reports/{bucket}/{study_uid}/v{version}.{sha256}.{extension}"


def absolute_path(tier: str, relpath: str) -> Path:
    rel = Path(relpath)
    if rel.is_absolute() or ".." in rel.parts:
        raise StorageError(f"path {relpath!r} is outside tier {tier!r}")
    return _tier_root(tier) / rel


def incoming_dir() -> Path:
    """This process's folder for files being received (``<incoming>/<pid>``).

    One folder per process, so a process starting up can remove what a dead
    one left behind without touching the files another live one is writing.
    """
    path = Path(settings.PACS_INCOMING_DIR) / str(os.getpid())
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
    return path


def incoming_clean_stray() -> int:
    """Remove the incoming folders of processes that no longer run; return how many files went."""
    root = Path(settings.PACS_INCOMING_DIR)
    if not root.is_dir():
        return 0
    removed = 0
    for entry in root.iterdir():
        if not entry.is_dir() or not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if pid == os.getpid():
            files = [p for p in entry.iterdir() if p.is_file()]
            for p in files:
                p.unlink(missing_ok=True)
            removed += len(files)
            continue
        removed += sum(1 for p in entry.rglob("*") if p.is_file())
        shutil.rmtree(entry, ignore_errors=True)
    if removed:
        logger.warning("removed %d stray temporary files from %s", removed, root)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_incoming_file() -> tuple[BinaryIO, Path]:
    """An open temporary file in this process's incoming folder."""
    fd, name = tempfile.mkstemp(dir=incoming_dir(), suffix=".part")
    return os.fdopen(fd, "w+b"), Path(name)


def copy_to_incoming(src: BinaryIO) -> Path:
    """Copy a stream into a new incoming file (flushed, not yet fsynced); return its path."""
    fh, path = new_incoming_file()
    try:
        with fh:
            shutil.copyfileobj(src, fh, _CHUNK)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise _storage_error(exc, "writing an incoming file") from exc
    except BaseException:
        # The source failed (a corrupt zip member, Ctrl-C): no partial file stays.
        path.unlink(missing_ok=True)
        raise
    return path


def write_new_file(path: Path, data: bytes | bytearray) -> None:
    """Create ``path`` (which must not exist) holding ``data``, fsynced; nothing stays on failure."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise _storage_error(exc, f"creating {path.name}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise _storage_error(exc, f"writing {path.name}") from exc


def _storage_error(exc: OSError, doing: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left while {doing}")
    return StorageError(f"{exc.strerror or exc} while {doing}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path) -> None:
    """Create ``path`` and its missing parents, fsyncing each new entry's parent."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


def place_file(tmp_path: Path, tier: str, relpath: str) -> bool:
    """Make the fsynced temporary file ``tmp_path`` durable at ``relpath`` in ``tier``.

    The temporary file is consumed. Returns True when this call created the
    file, False when identical content (same name, so same SHA-256) was already
    there; an existing file is never replaced.
    """
    final = absolute_path(tier, relpath)
    try:
        _makedirs_durable(final.parent)
        try:
            os.link(tmp_path, final)
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            # The incoming folder is on another filesystem: copy, fsync, link.
            created = _copy_across(tmp_path, final)
        if created:
            _fsync_dir(final.parent)
    except OSError as exc:
        raise _storage_error(exc, f"storing {relpath}") from exc
    finally:
        tmp_path.unlink(missing_ok=True)
    return created


def place_bytes(data: bytes, tier: str, relpath: str) -> bool:
    """Store ``data`` durably at ``relpath`` in ``tier`` the way instances are
    stored (temporary file in the incoming folder, fsync, :func:`place_file`).

    Returns True when this call created the file, False when it was there.
    """
    tmp_path = incoming_dir() / f"{uuid.uuid4().hex}.part"
    write_new_file(tmp_path, data)
    return place_file(tmp_path, tier, relpath)


def remove_file(tier: str, relpath: str) -> bool:
    """Remove a stored file that is known to be damaged; False when it was not there.

    Only for derived objects, which can be made again: an instance's copy is
    released by the lifecycle, never through this.
    """
    if not relpath.startswith("derived/"):
        raise StorageError(f"refusing to remove {relpath!r}: not a derived object")
    try:
        absolute_path(tier, relpath).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _storage_error(exc, f"removing {relpath}") from exc
    return True


def _copy_across(src: Path, final: Path) -> bool:
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)


def stored_size(tier: str, relpath: str) -> int | None:
    """The size of a stored file; None when it is not there."""
    try:
        return absolute_path(tier, relpath).stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _storage_error(exc, f"reading {relpath}") from exc


def open_copy(tier: str, relpath: str) -> BinaryIO | None:
    """Open a stored file for reading; None when it is not there."""
    try:
        return open(absolute_path(tier, relpath), "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _storage_error(exc, f"reading {relpath}") from exc


def file_sha256(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: fh.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()
