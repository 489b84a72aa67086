"""Where stored objects lie: the one module that touches the tiers' files.

Tiers are named ``"<kind>:<scope>"`` and resolved through Django's
``STORAGES`` alias of their kind:

- ``facility:<FACILITY CODE>``: a facility's short-term store, always a local
  filesystem (``STORAGES["facility"]``), one folder per facility;
- ``longterm:region`` or ``longterm:<AUTHORITY CODE>``: the long-term archive,
  regional or one per health authority (``STORAGES["longterm"]``);
- ``preservation:region`` (``STORAGES["preservation"]``).

Long-term and preservation tiers are a local filesystem by default and an
S3-compatible object store (django-storages' ``S3Storage``) in production;
there the tier's scope is a key prefix (``<scope>/<relpath>``).

A file enters a filesystem tier only complete and durable: it is written to a
temporary file, fsynced, then linked under its final name (which carries its
SHA-256, so a name is never reused for other bytes) and the directory entry is
fsynced. An object store is written whole by one PUT. A copy made by the
lifecycle (:func:`copy_store`) is read back and its SHA-256 checked before
the caller records it as verified.

Files in a filesystem tier, in the incoming folder and in every folder this
module creates are the service account's alone: files 0600 (``FILE_MODE``),
folders 0700 (``DIR_MODE``), whatever the process umask (which
``pacs.settings`` sets to 077 as well).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import io
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages

if TYPE_CHECKING:
    from _typeshed import SupportsRead
from kernel.errors import Unavailable

logger = logging.getLogger(__name__)

FACILITY = "facility"
LONGTERM = "longterm"
PRESERVATION = "preservation"
TIER_KINDS = (FACILITY, LONGTERM, PRESERVATION)
REGION = "region"
_SCOPE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_CHUNK = 1024 * 1024
# Patient data: readable and writable by the service account only.
FILE_MODE = 0o600
DIR_MODE = 0o700


class StorageError(Unavailable):
    """A tier could not be read or written.

    Unavailable (a store that is down or full now), so the tasks that meet it retry,
    as they did before the error base: the subclasses too, whatever their cause."""

    code = "storage"


class StorageFull(StorageError):
    """The tier has no space (or quota) left."""

    code = "storage_full"


class CopyMismatch(StorageError):
    """A copy's bytes do not have the SHA-256 they must have."""

    code = "copy_mismatch"


class SourceMismatch(CopyMismatch):
    """The bytes to be copied do not have the SHA-256 they must have: nothing was stored."""

    code = "source_mismatch"


def facility_tier(facility_code: str) -> str:
    return f"{FACILITY}:{facility_code}"


def longterm_tier(scope: str) -> str:
    """``longterm:region`` or ``longterm:<AUTHORITY CODE>``."""
    return f"{LONGTERM}:{scope}"


def tier_kind(tier: str) -> str:
    return tier.partition(":")[0]


def _parse_tier(tier: str) -> tuple[str, str]:
    kind, _, scope = tier.partition(":")
    if kind not in TIER_KINDS or not _SCOPE.match(scope):
        raise StorageError(f"unknown tier {tier!r}")
    return kind, scope


def _backend(kind: str) -> Any:
    try:
        return storages[kind]
    except Exception as exc:  # InvalidStorageError, an S3 backend without its settings
        raise StorageError(f"tier kind {kind!r} is not configured: {exc}") from exc


def tier_is_local(tier: str) -> bool:
    """True when ``tier`` is a folder of the local filesystem (else an object store)."""
    kind, _ = _parse_tier(tier)
    return isinstance(_backend(kind), FileSystemStorage)


def _tier_root(tier: str) -> Path:
    kind, scope = _parse_tier(tier)
    storage = _backend(kind)
    if not isinstance(storage, FileSystemStorage):
        if kind == FACILITY:
            raise StorageError("the facility tier must be a local filesystem (STORAGES['facility'])")
        raise StorageError(f"tier {tier!r} is not a local filesystem")
    return Path(storage.location) / scope


@dataclasses.dataclass(frozen=True)
class TierSpace:
    """The filesystem a local tier lies on, in bytes (shared with whatever else is on it)."""

    total: int
    used: int
    free: int

    @property
    def free_percent(self) -> int:
        return int(self.free * 100 / self.total) if self.total else 0


def tier_space(tier: str) -> TierSpace | None:
    """Size and free space of the filesystem holding ``tier``; None for an object
    store, whose free space cannot be measured from here.

    A tier folder not made yet (no copy so far) is measured where it will be made:
    its nearest existing parent. Raises :class:`StorageError` for a tier that is
    not configured or a filesystem that cannot be read.
    """
    kind, scope = _parse_tier(tier)
    storage = _backend(kind)
    if not isinstance(storage, FileSystemStorage):
        return None
    path = Path(storage.location) / scope
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        raise _storage_error(exc, f"measuring {tier}") from exc
    return TierSpace(total=usage.total, used=usage.used, free=usage.free)


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


REPORT_EXTENSIONS = ("pdf", "p7m", "xml")  # the PDF/A-3, its CAdES signature, its CDA


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
    """This process's folder for files being received (``<incoming>/<host>.<pid>``).

    One folder per process, so a process starting up can remove what a dead
    one left behind without touching the files another live one is writing.
    The incoming folder is shared by the hosts of a region (docs/DEPLOYMENT.md):
    the host's name keeps one host's pids apart from another's, and a host
    judges only its own processes alive or dead.
    """
    path = incoming_dir_of(os.getpid())
    if not path.is_dir():
        _makedirs_durable(path)
    return path


def incoming_dir_of(pid: int) -> Path:
    """The incoming folder of this host's process ``pid`` (:func:`incoming_dir`)."""
    return Path(settings.PACS_INCOMING_DIR) / f"{_host()}.{pid}"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


def incoming_clean_stray(*, own: bool = True) -> int:
    """Remove the incoming folders of processes that no longer run, and the temporary files
    they were writing into the tiers (:func:`_tier_temp`); return how many files went.

    ``own``: this process's folder too (at start-up: a dead process that had the same pid).
    Only this host's folders: another host's processes are that host's to judge.
    """
    root = Path(settings.PACS_INCOMING_DIR)
    if not root.is_dir():
        return 0
    removed = 0
    mine = f"{_host()}."
    for entry in root.iterdir():
        # This host's processes' folders (and a bare pid: a folder made before the host was named).
        number = entry.name[len(mine) :] if entry.name.startswith(mine) else entry.name
        if not entry.is_dir() or not number.isdigit():
            continue
        pid = int(number)
        if pid == os.getpid():
            if own:
                removed += _clean_folder(entry)
        elif not _pid_alive(pid):
            removed += _clean_folder(entry)
            shutil.rmtree(entry, ignore_errors=True)
    if removed:
        logger.warning("removed %d stray temporary files from %s and the tiers", removed, root)
    return removed


def _clean_folder(folder: Path) -> int:
    removed = 0
    for p in folder.iterdir():
        if p.is_symlink() and p.name.endswith(_TIER_TEMP_MARK):
            # A temporary file in a tier (its target), whose copy never finished: only a
            # name _tier_temp gives is removed, whatever the link says.
            target = os.readlink(p)
            if _TIER_TEMP_NAME.fullmatch(os.path.basename(target)):
                with contextlib.suppress(OSError):
                    os.unlink(target)
                    removed += 1
            p.unlink(missing_ok=True)
        elif p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


_TIER_TEMP_MARK = ".tier-temp"
_TIER_TEMP_NAME = re.compile(r"\.[0-9a-f]{32}\.part")


@contextlib.contextmanager
def _tier_temp(folder: Path) -> Iterator[tuple[int, str]]:
    """A new temporary file in ``folder`` of a tier, as ``(fd, path)``: beside its final name,
    so that linking or renaming it there is atomic.

    On leaving, the name is removed if the caller did not rename the file (a file linked to
    its final name stays there). A symbolic link to it in this process's incoming folder
    marks it while it is written, made before the file and removed last: a process killed
    meanwhile leaves the link, and the clean-up of a dead process's folder
    (:func:`incoming_clean_stray`, at a listener's or a worker's start and in each lifecycle
    pass) removes the file it points to. Walking the tiers for such files is not an option.
    """
    name = f".{uuid.uuid4().hex}.part"
    tmp = str(folder / name)
    marker = incoming_dir() / f"{name}{_TIER_TEMP_MARK}"
    os.symlink(tmp, marker)
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        yield fd, tmp
    finally:
        with contextlib.suppress(OSError):  # FileNotFoundError once renamed
            os.unlink(tmp)
        marker.unlink(missing_ok=True)


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


def copy_to_incoming(src: SupportsRead[bytes]) -> Path:
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
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
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
    """Create ``path`` and its missing parents (mode 0700), fsyncing each new entry's parent."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
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
        # Whoever created the temporary file (the DIMSE spool opens its own),
        # the stored file is the service account's only.
        os.chmod(tmp_path, FILE_MODE)
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
    _refuse_preservation(tier, "remove")
    try:
        absolute_path(tier, relpath).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _storage_error(exc, f"removing {relpath}") from exc
    return True


def _copy_across(src: Path, final: Path) -> bool:
    with _tier_temp(final.parent) as (fd, tmp):
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False


def stored_size(tier: str, relpath: str) -> int | None:
    """The size of a stored file; None when it is not there."""
    if not tier_is_local(tier):
        head = _s3_head(tier, relpath)
        return None if head is None else int(head["ContentLength"])
    try:
        return absolute_path(tier, relpath).stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _storage_error(exc, f"reading {relpath}") from exc


def open_copy(tier: str, relpath: str) -> BinaryIO | None:
    """Open a stored file for reading; None when it is not there.

    An object of an object store is downloaded into an anonymous temporary
    file in the incoming folder (readers seek: pydicom, zip writers), which
    vanishes when closed.
    """
    if not tier_is_local(tier):
        return _s3_download(tier, relpath)
    try:
        return open(absolute_path(tier, relpath), "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _storage_error(exc, f"reading {relpath}") from exc


def copy_sha256(tier: str, relpath: str) -> str | None:
    """Read a stored copy whole and return its SHA-256; None when it is not there."""
    if not tier_is_local(tier):
        return _s3_read_sha256(tier, relpath)
    fh = open_copy(tier, relpath)
    if fh is None:
        return None
    try:
        with fh:
            return file_sha256(fh)
    except OSError as exc:
        raise _storage_error(exc, f"reading {relpath}") from exc


def copy_store(
    src: BinaryIO,
    tier: str,
    relpath: str,
    *,
    sha256: str,
    batch: SyncBatch | None = None,
    replace_damaged: bool = False,
) -> bool:
    """Store the bytes of ``src`` at ``relpath`` in ``tier``, read them back and check their SHA-256.

    Returns True when this call wrote the copy, False when identical content
    was already there (a name carries its hash: a copy left by a worker that
    died before recording it is adopted, not written again).

    An existing file or object with other bytes is replaced only with
    ``replace_damaged``, which the caller gives when no verified copy is
    recorded there (a leftover cut short by a crash, a copy the fixity audit
    took out of service); otherwise it raises :class:`CopyMismatch`.

    With ``batch``, the file and its folder are not fsynced here but noted
    in it: the caller makes the whole batch durable at once
    (:meth:`SyncBatch.sync`) before it records the batch's copies.

    Raises
    ------
    SourceMismatch
        The source does not have ``sha256``: nothing was stored.
    CopyMismatch
        The copy read back does not have ``sha256``.
    StorageFull, StorageError
        The tier cannot be written or read now.
    """
    _check_sha256(sha256)
    local = tier_is_local(tier)
    existing = copy_sha256(tier, relpath) if local else _s3_existing_sha256(tier, relpath)
    if existing == sha256:
        if batch is not None and local:
            final = absolute_path(tier, relpath)
            batch.add(final, final.parent)
        return False
    if existing is not None and not replace_damaged:
        raise CopyMismatch(f"{tier}:{relpath} exists with SHA-256 {existing}")
    if existing is not None:
        logger.warning("replacing %s:%s, left with SHA-256 %s", tier, relpath, existing)
    if local:
        # Read back and checked inside, before the file takes its name.
        return _fs_store(src, tier, relpath, sha256=sha256, replace=existing is not None, batch=batch)
    created = _s3_store(src, tier, relpath, sha256=sha256)
    back = copy_sha256(tier, relpath)
    if back != sha256:
        raise CopyMismatch(f"{tier}:{relpath} read back with SHA-256 {back}, expected {sha256}")
    return created


def copy_replace(src: BinaryIO, tier: str, relpath: str, *, sha256: str) -> None:
    """Replace a copy found damaged (or missing) by the bytes of ``src``, then read it back.

    Only the fixity audit repairs through this: ``src`` is a verified copy
    and its hash is checked before anything is replaced.
    """
    _check_sha256(sha256)
    _refuse_preservation(tier, "replace")
    if tier_is_local(tier):
        _fs_store(src, tier, relpath, sha256=sha256, replace=True)
    else:
        _s3_store(src, tier, relpath, sha256=sha256)
    back = copy_sha256(tier, relpath)
    if back != sha256:
        raise CopyMismatch(f"{tier}:{relpath} read back with SHA-256 {back} after repair")


def copy_remove(tier: str, relpath: str) -> bool:
    """Remove a released copy's file; False when it was not there.

    Only the lifecycle calls this, after the copy's row is gone in a
    transaction that saw another verified copy.
    """
    _refuse_preservation(tier, "remove")
    if not tier_is_local(tier):
        return _s3_delete(tier, relpath)
    try:
        absolute_path(tier, relpath).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _storage_error(exc, f"removing {relpath}") from exc
    return True


class WriteOnceViolation(StorageError):
    """An object of the preservation tier was to be replaced or removed outside the discard procedure."""

    code = "write_once"


def _refuse_preservation(tier: str, doing: str) -> None:
    # The preservation tier is write-once (conservazione a norma): nothing
    # there is replaced, repaired in place or released by the lifecycle.
    if tier_kind(tier) == PRESERVATION:
        raise WriteOnceViolation(f"refusing to {doing} an object of the write-once tier {tier}")


def discard_remove(tier: str, relpath: str) -> bool:
    """Remove an object of the preservation tier; False when it was not there.

    Only the discard procedure calls this (``preservation.vault.discard_file``),
    after it checked that an officer approved the discard of this very object.
    """
    if tier_kind(tier) != PRESERVATION:
        raise StorageError(f"discard_remove is for the preservation tier, not {tier}")
    if not tier_is_local(tier):
        return _s3_delete(tier, relpath)
    path = absolute_path(tier, relpath)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _storage_error(exc, f"removing {relpath}") from exc
    _fsync_dir(path.parent)
    return True


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``path`` (created 0600, or truncated) with ``data``: for files a package or an
    export is assembled from, which are not stored in a tier but hold patient data."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise _storage_error(exc, f"writing {path.name}") from exc


def open_private_file(path: Path) -> BinaryIO:
    """``open(path, "wb")`` with mode 0600 for a new file."""
    try:
        return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb")
    except OSError as exc:
        raise _storage_error(exc, f"creating {path.name}") from exc


def fsync_dir(path: Path) -> None:
    """Make a folder's new entries durable."""
    try:
        _fsync_dir(path)
    except OSError as exc:
        raise _storage_error(exc, f"syncing {path}") from exc


def makedirs_durable(path: Path) -> None:
    """Create a folder and its missing parents (mode 0700), each new entry made durable."""
    try:
        _makedirs_durable(path)
    except OSError as exc:
        raise _storage_error(exc, f"creating {path}") from exc


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()


class SyncBatch:
    """Files and folders written by a batch of copies, made durable together.

    One ``syncfs(2)`` per filesystem flushes every file and directory entry
    the batch wrote there, instead of two fsyncs per file; where syncfs is
    missing, each file and each folder is fsynced. Thread-safe.
    """

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.dirs: set[Path] = set()
        self._lock = threading.Lock()

    def add(self, file: Path, folder: Path) -> None:
        with self._lock:
            self.files.append(file)
            self.dirs.add(folder)

    def sync(self) -> None:
        try:
            if _syncfs is not None and self._syncfs():
                return
            for file in self.files:
                fd = os.open(file, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for folder in sorted(self.dirs):
                _fsync_dir(folder)
        except OSError as exc:
            raise _storage_error(exc, "syncing a batch of copies") from exc

    def _syncfs(self) -> bool:
        by_device: dict[int, Path] = {}
        for folder in self.dirs:
            by_device.setdefault(os.stat(folder).st_dev, folder)
        for folder in by_device.values():
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    if err == errno.ENOSYS:
                        return False
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
        return True


def _fs_store(
    src: BinaryIO, tier: str, relpath: str, *, sha256: str, replace: bool, batch: SyncBatch | None = None
) -> bool:
    final = absolute_path(tier, relpath)
    try:
        _makedirs_durable(final.parent)
        # The temporary file sits beside its final name: same filesystem, so
        # linking it is atomic whatever filesystem the incoming folder is on.
        with _tier_temp(final.parent) as (fd, tmp):
            with os.fdopen(fd, "w+b") as out:
                _copy_into(src, out)
                # Read back what the tier holds and check it before it takes its
                # name; only when it is wrong is the source hashed, to say whose
                # fault it is (one SHA-256 pass in the usual case).
                out.seek(0)
                got = file_sha256(out)
                if got != sha256:
                    source = _source_sha256(src)
                    if source is not None and source != sha256:
                        raise SourceMismatch(f"the source of {relpath} has SHA-256 {source}")
                    raise CopyMismatch(f"{tier}:{relpath} read back with SHA-256 {got}, expected {sha256}")
                if batch is None:
                    os.fsync(out.fileno())
            if replace:
                os.replace(tmp, final)
                created = True
            elif batch is not None:
                # In a lifecycle batch no verified copy is recorded at this name
                # (else nothing would be copied), and these bytes have the hash
                # the name carries: renaming over a file a concurrent run just
                # made replaces it with the same bytes. One step less than link
                # and unlink.
                created = not final.exists()
                os.replace(tmp, final)
            else:
                try:
                    os.link(tmp, final)
                    created = True
                except FileExistsError:
                    created = False
        if batch is None:
            _fsync_dir(final.parent)
        else:
            batch.add(final, final.parent)
        return created
    except OSError as exc:
        raise _storage_error(exc, f"storing {relpath} in {tier}") from exc


def _copy_into(src: BinaryIO, out: BinaryIO) -> None:
    """Copy ``src`` from its start into ``out``: in the kernel (sendfile) when ``src`` is a file."""
    try:
        in_fd = src.fileno()
        size = os.fstat(in_fd).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        shutil.copyfileobj(src, out, _CHUNK)
        out.flush()
        return
    out.flush()
    offset = 0
    try:
        while offset < size:
            sent = os.sendfile(out.fileno(), in_fd, offset, size - offset)
            if sent == 0:
                break
            offset += sent
    except OSError as exc:
        if offset or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        src.seek(0)
        shutil.copyfileobj(src, out, _CHUNK)
        out.flush()
        return
    out.seek(0, os.SEEK_END)


def _source_sha256(src: BinaryIO) -> str | None:
    try:
        src.seek(0)
        return file_sha256(src)
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


# --- object stores (django-storages S3Storage) --------------------------------


@dataclasses.dataclass(frozen=True)
class _S3Object:
    client: Any
    bucket: str
    key: str


def _s3_object(tier: str, relpath: str) -> _S3Object:
    kind, scope = _parse_tier(tier)
    rel = Path(relpath)
    if rel.is_absolute() or ".." in rel.parts:
        raise StorageError(f"path {relpath!r} is outside tier {tier!r}")
    backend = _backend(kind)
    key = f"{scope}/{relpath}"
    location = (getattr(backend, "location", "") or "").strip("/")
    if location:
        key = f"{location}/{key}"
    try:
        # The low-level client of django-storages' per-thread connection (the
        # lifecycle copies from several threads; clients are thread-safe, and
        # cheaper per object than resources).
        return _S3Object(client=backend.connection.meta.client, bucket=backend.bucket_name, key=key)
    except Exception as exc:
        raise _s3_error(exc, f"opening {tier}") from exc


def _s3_error(exc: BaseException, doing: str) -> StorageError:
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    if code in ("QuotaExceeded", "XMinioStorageFull", "InsufficientStorage"):
        return StorageFull(f"the object store is full while {doing}")
    return StorageError(f"{type(exc).__name__}: {exc} while {doing}")


def _s3_missing(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    return str(response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound")


def _s3_head(tier: str, relpath: str) -> dict[str, Any] | None:
    obj = _s3_object(tier, relpath)
    try:
        return obj.client.head_object(Bucket=obj.bucket, Key=obj.key)
    except Exception as exc:
        if _s3_missing(exc):
            return None
        raise _s3_error(exc, f"looking up {relpath}") from exc


def _s3_existing_sha256(tier: str, relpath: str) -> str | None:
    """The SHA-256 of an existing object, None when there is none (a HEAD first: no body to
    download in the usual case, where the object is new)."""
    if _s3_head(tier, relpath) is None:
        return None
    return _s3_read_sha256(tier, relpath)


def _s3_body(tier: str, relpath: str) -> Any:
    obj = _s3_object(tier, relpath)
    try:
        return obj.client.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
    except Exception as exc:
        if _s3_missing(exc):
            return None
        raise _s3_error(exc, f"reading {relpath}") from exc


def _s3_download(tier: str, relpath: str) -> BinaryIO | None:
    body = _s3_body(tier, relpath)
    if body is None:
        return None
    fh = tempfile.TemporaryFile(dir=incoming_dir())
    try:
        for chunk in body.iter_chunks(_CHUNK):
            fh.write(chunk)
        fh.seek(0)
    except OSError as exc:
        fh.close()
        raise _storage_error(exc, f"downloading {relpath}") from exc
    except Exception as exc:
        fh.close()
        raise _s3_error(exc, f"downloading {relpath}") from exc
    return fh


def _s3_read_sha256(tier: str, relpath: str) -> str | None:
    body = _s3_body(tier, relpath)
    if body is None:
        return None
    digest = hashlib.sha256()
    try:
        for chunk in body.iter_chunks(_CHUNK):
            digest.update(chunk)
    except Exception as exc:
        raise _s3_error(exc, f"reading {relpath}") from exc
    finally:
        body.close()
    return digest.hexdigest()


# Objects up to this size go up in one PUT from memory; bigger ones in parts.
_S3_SINGLE_PUT = 64 * 1024 * 1024


def _s3_store(src: BinaryIO, tier: str, relpath: str, *, sha256: str) -> bool:
    obj = _s3_object(tier, relpath)
    # The source is hashed before anything is sent: bytes that are not what
    # the name says never reach the store.
    spool = tempfile.SpooledTemporaryFile(max_size=_S3_SINGLE_PUT, dir=str(incoming_dir()))
    with spool:
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                digest.update(chunk)
                spool.write(chunk)
                size += len(chunk)
        except OSError as exc:
            raise _storage_error(exc, f"reading the source of {relpath}") from exc
        if digest.hexdigest() != sha256:
            raise SourceMismatch(f"the source of {relpath} has SHA-256 {digest.hexdigest()}")
        spool.seek(0)
        try:
            if size <= _S3_SINGLE_PUT:
                obj.client.put_object(
                    Bucket=obj.bucket, Key=obj.key, Body=spool.read(), ContentType="application/octet-stream"
                )
            else:
                obj.client.upload_fileobj(
                    spool, obj.bucket, obj.key, ExtraArgs={"ContentType": "application/octet-stream"}
                )
        except Exception as exc:
            raise _s3_error(exc, f"storing {relpath}") from exc
    return True


def _s3_delete(tier: str, relpath: str) -> bool:
    if _s3_head(tier, relpath) is None:
        return False
    obj = _s3_object(tier, relpath)
    try:
        obj.client.delete_object(Bucket=obj.bucket, Key=obj.key)
    except Exception as exc:
        raise _s3_error(exc, f"removing {relpath}") from exc
    return True


def file_sha256(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: fh.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


PROBE_DIR = ".health"


def tier_probe(tier: str) -> None:
    """Write a small object to ``tier``, read it back, remove it: the readiness check's probe.

    It lies under :data:`PROBE_DIR` (``.health/<random>``), never a name an
    instance could have, and is removed even from the write-once preservation
    tier: it was never a preserved object. Raises :class:`StorageError` when the
    tier cannot be written, read back with the same bytes, or cleaned.
    """
    data = uuid.uuid4().bytes
    relpath = f"{PROBE_DIR}/{uuid.uuid4().hex}"
    if tier_is_local(tier):
        path = _tier_root(tier) / relpath
        try:
            path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            write_new_file(path, data)
            try:
                back = path.read_bytes()
            finally:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise _storage_error(exc, "probing the tier") from exc
    else:
        obj = _s3_object(tier, relpath)
        try:
            obj.client.put_object(Bucket=obj.bucket, Key=obj.key, Body=data)
            try:
                back = obj.client.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read()
            finally:
                obj.client.delete_object(Bucket=obj.bucket, Key=obj.key)
        except Exception as exc:
            raise _s3_error(exc, "probing the tier") from exc
    if back != data:
        raise StorageError(f"tier {tier} read back other bytes than it was given")
