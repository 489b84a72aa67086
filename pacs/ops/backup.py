"""Backup and restore of one installation: the database, the tiers' files, the keys.

A backup is a folder (``manage.py backup <dir>``):

``database.dump``
    ``pg_dump -Fc`` of the database (taken first: a file written after it is an
    orphan on restore, never a row without its file... except a copy the
    lifecycle evicts meanwhile, which the verification names; run it with beat
    stopped for a quiet copy, docs/DEPLOYMENT.md).
``tiers/<kind>/``
    each tier kept in a folder (the facility tier, and the long-term and
    preservation tiers when they are folders); a tier on S3 is not copied
    (``manifest.json`` says so): the bucket's versioning and replication are
    its backup.
``keys/``
    the audit log's key and its previous keys, the signing folder
    (``PACS_SIGNING_DIR``: the radiologists' and the preservation officer's
    keys and certificates, the TSA's), ``SECRET_KEY``'s generated file.
``config/``
    the files and folders named with ``--config`` (``/etc/pacs``: the
    environment files and the secrets they name).
``manifest.json``
    the SHA-256 and size of every file above, written last.

``manage.py restore <dir> <folder> --database-url URL`` checks every file
against the manifest, restores the dump into a NEW database (created; one
that exists is refused) and the files into a NEW folder (one that holds
anything is refused), writes ``<folder>/restore.env`` (the environment that
runs the archive on what was restored), then runs ``manage.py restore_verify``
under it: every copy in a folder tier and every signed report's files
against the SHA-256 in the index, every instance with at least one such copy,
the audit chains (``verify_audit_chain``'s checks) and the giornale. Any
mismatch fails, naming what does not match.

The backup holds the keys: keep it as the keys are kept (encrypted at rest,
off the machine, its own access list).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dj_database_url
from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages
from django.db import connection

from kernel.errors import PacsError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DUMP = "database.dump"
FORMAT = 1
TIER_KINDS = ("facility", "longterm", "preservation")
CHUNK = 1 << 20


class BackupError(PacsError):
    """A backup or restore that cannot go on; the message says why."""

    code = "backup"


def _sha256_copy(src: Path, dst: Path | None) -> tuple[str, int]:
    """SHA-256 and size of ``src``, copied to ``dst`` on the same read when given."""
    digest = hashlib.sha256()
    size = 0
    out = None
    if dst is not None:
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = dst.open("xb")
    try:
        with src.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    return digest.hexdigest(), size


def file_sha256(path: Path) -> str:
    return _sha256_copy(path, None)[0]


def _tree_copy(src: Path, dst: Path, name: str, files: dict[str, dict[str, Any]], root: Path) -> None:
    """Copy every regular file under ``src`` to ``dst``, recording each in ``files``."""
    if src.is_file():
        digest, size = _sha256_copy(src, dst)
        files[str(dst.relative_to(root))] = {"sha256": digest, "size": size}
        return
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        target = dst / path.relative_to(src)
        digest, size = _sha256_copy(path, target)
        files[str(target.relative_to(root))] = {"sha256": digest, "size": size}
    logger.info("backup: %s copied", name)


def _libpq_env(url_or_settings: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Connection options for pg_dump/pg_restore, the password in the environment."""
    s = url_or_settings
    args = ["--host", str(s.get("HOST") or "127.0.0.1"), "--port", str(s.get("PORT") or 5432)]
    if s.get("USER"):
        args += ["--username", str(s["USER"])]
    env = dict(os.environ)
    if s.get("PASSWORD"):
        env["PGPASSWORD"] = str(s["PASSWORD"])
    return args, env


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def _tier_folders() -> dict[str, Path | None]:
    """Each tier kind's folder; None for one on S3."""
    found: dict[str, Path | None] = {}
    for kind in TIER_KINDS:
        storage = storages[kind]
        found[kind] = Path(storage.location) if isinstance(storage, FileSystemStorage) else None
    return found


def key_sources() -> dict[str, Path]:
    """The keys' files and folders, by their name in the backup."""
    from kernel import audit

    found: dict[str, Path] = {"audit.key": audit.key_path()}
    for n, previous in enumerate(settings.PACS_AUDIT_PREVIOUS_KEY_FILES):
        found[f"audit-previous/{n}-{Path(previous).name}"] = Path(previous)
    found["pki"] = Path(settings.PACS_SIGNING_DIR)
    tsa = Path(settings.PACS_TSA_DIR)
    if not tsa.is_relative_to(Path(settings.PACS_SIGNING_DIR)):
        found["tsa"] = tsa
    generated = Path(settings.VAR_DIR) / "secret_key"
    if generated.is_file():
        found["secret_key"] = generated
    return found


def backup_make(target: Path, *, config: list[Path] | None = None) -> dict[str, Any]:
    """Write a backup into ``target`` (new or empty); return its manifest.

    Raises
    ------
    BackupError
        The database is not PostgreSQL, ``pg_dump`` failed, ``target`` holds
        files, a key named by the settings is missing.
    """
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise BackupError("the backup needs PostgreSQL (pg_dump); this installation runs on " + str(db["ENGINE"]))
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty: a backup goes into a new folder")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    args, env = _libpq_env(db)
    _run(["pg_dump", "-Fc", "--no-owner", "--file", str(target / DUMP), *args, str(db["NAME"])], env, "pg_dump")
    digest, size = _sha256_copy(target / DUMP, None)
    files[DUMP] = {"sha256": digest, "size": size}
    tiers: dict[str, str] = {}
    for kind, folder in _tier_folders().items():
        if folder is None:
            tiers[kind] = "s3: not copied (bucket versioning and replication)"
            continue
        tiers[kind] = f"tiers/{kind}"
        if folder.is_dir():
            _tree_copy(folder, target / "tiers" / kind, f"tier {kind}", files, target)
    keys: dict[str, str] = {}
    for name, source in key_sources().items():
        if not source.exists():
            if name == "pki":
                continue  # no signing yet (a fresh installation)
            raise BackupError(f"the key {name} ({source}) is missing")
        keys[name] = str(source)
        _tree_copy(source, target / "keys" / name, f"key {name}", files, target)
    configs: dict[str, str] = {}
    for source in config or []:
        if not source.exists():
            raise BackupError(f"--config {source} does not exist")
        name = source.name or "root"
        configs[name] = str(source)
        _tree_copy(source, target / "config" / name, f"config {name}", files, target)
    manifest = {
        "format": FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "database": {"dump": DUMP, "name": str(db["NAME"])},
        "tiers": tiers,
        "keys": keys,
        "config": configs,
        "files": files,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def manifest_read(source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source / MANIFEST} cannot be read: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{source} is a backup of format {manifest.get('format')!r}, not {FORMAT}")
    return dict(manifest)


def manifest_check(source: Path) -> list[str]:
    """Every file of the backup against its manifest: the problems (empty: intact)."""
    manifest = manifest_read(source)
    problems = []
    for name, expected in sorted(manifest["files"].items()):
        path = source / name
        if not path.is_file():
            problems.append(f"{name}: missing from the backup")
        elif file_sha256(path) != expected["sha256"]:
            problems.append(f"{name}: SHA-256 differs from the manifest")
    listed = set(manifest["files"]) | {MANIFEST}
    extra = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    problems += [f"{name}: not in the manifest" for name in extra if name not in listed]
    return problems


def restore_env(folder: Path, database_url: str, manifest: dict[str, Any]) -> dict[str, str]:
    """The environment that runs the archive on a restore in ``folder``."""
    env = {
        "DATABASE_URL": database_url,
        "PACS_VAR_DIR": str(folder / "var"),
        "PACS_FACILITY_TIER_DIR": str(folder / "tiers" / "facility"),
        "PACS_INCOMING_DIR": str(folder / "var" / "incoming"),
        "PACS_AUDIT_KEY_FILE": str(folder / "keys" / "audit.key"),
        "PACS_AUDIT_PREVIOUS_KEY_FILES": ",".join(
            str(folder / "keys" / name) for name in sorted(manifest["keys"]) if name.startswith("audit-previous/")
        ),
        "PACS_SIGNING_DIR": str(folder / "keys" / "pki"),
        "PACS_TSA_DIR": str(folder / "keys" / ("tsa" if "tsa" in manifest["keys"] else "pki/tsa")),
    }
    for kind in ("longterm", "preservation"):
        if manifest["tiers"][kind].startswith("tiers/"):
            env[f"PACS_{kind.upper()}_TIER_DIR"] = str(folder / "tiers" / kind)
    if "secret_key" in manifest["keys"]:
        env["SECRET_KEY_FILE"] = str(folder / "keys" / "secret_key")
    return env


def restore(source: Path, folder: Path, *, database_url: str) -> dict[str, str]:
    """Restore the backup in ``source`` into a new database and a new folder; the environment to run on it.

    Raises
    ------
    BackupError
        A file of the backup differs from its manifest (nothing is restored),
        the database exists already, the folder holds files, pg_restore failed.
    """
    manifest = manifest_read(source)
    problems = manifest_check(source)
    if problems:
        raise BackupError("the backup does not match its manifest: " + "; ".join(problems[:20]))
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty: a restore goes into a new folder")
    target = dj_database_url.parse(database_url)
    if target["ENGINE"] != "django.db.backends.postgresql":
        raise BackupError(f"{database_url!r} is not a PostgreSQL database URL")
    _database_create(target)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    args, env = _libpq_env(target)
    _run(
        ["pg_restore", "--no-owner", "--exit-on-error", "--dbname", str(target["NAME"]), *args, str(source / DUMP)],
        env,
        "pg_restore",
    )
    for name in manifest["files"]:
        if name == DUMP:
            continue
        relative = Path(name)
        if relative.parts[0] not in ("tiers", "keys", "config"):
            raise BackupError(f"{name}: not a place a backup writes")
        dst = folder / relative
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(source / relative, dst)
        os.chmod(dst, 0o600)
    (folder / "var").mkdir(mode=0o700, exist_ok=True)
    environment = restore_env(folder, database_url, manifest)
    (folder / "restore.env").write_text("".join(f"{k}={v}\n" for k, v in sorted(environment.items())))
    return environment


def _database_create(target: Mapping[str, Any]) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        dbname="postgres",
        host=str(target.get("HOST") or "127.0.0.1"),
        port=int(target.get("PORT") or 5432),
        user=target.get("USER") or None,
        password=target.get("PASSWORD") or None,
        autocommit=True,
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [target["NAME"]]).fetchone()
        if exists:
            raise BackupError(f"the database {target['NAME']} exists: a restore goes into a new database")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(target["NAME"]))))


def verify_in(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``manage.py restore_verify`` in a process running on the restore (its own settings)."""
    env = dict(os.environ)
    # A NAME_FILE wins over NAME in the settings (env_secret): the original's must not.
    env.pop("DATABASE_URL_FILE", None)
    if "SECRET_KEY_FILE" in environment:
        env.pop("SECRET_KEY", None)
    env.update(environment)
    manage = Path(settings.BASE_DIR) / "manage.py"
    return subprocess.run(
        [sys.executable, str(manage), "restore_verify"], env=env, capture_output=True, text=True, timeout=3600
    )


@dataclass
class VerifyReport:
    instances: int = 0
    copies_checked: int = 0
    copies_elsewhere: int = 0  # on S3: not read here
    reports_checked: int = 0
    audit_events: int = 0
    journal_entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def restore_verify() -> VerifyReport:
    """Check the archive this process runs on: files against the index, the audit chains, the giornale."""
    from archive.models import Copy, Instance, Report
    from archive.storage import tiers
    from kernel.audit import audit_verify
    from preservation.journal import journal_verify

    report = VerifyReport()
    verified: set[int] = set()
    instances = dict(Instance.all_objects.values_list("pk", "sha256"))
    report.instances = len(instances)
    for copy in Copy.objects.order_by("pk").iterator(chunk_size=2000):
        if not tiers.tier_is_local(copy.tier):
            report.copies_elsewhere += 1
            verified.add(copy.instance_id)  # its store's versioning answers for it
            continue
        path = tiers.absolute_path(copy.tier, copy.path)
        report.copies_checked += 1
        if not path.is_file():
            report.problems.append(f"copy {copy.tier} {copy.path}: file missing")
            continue
        digest = file_sha256(path)
        if digest != copy.sha256 or digest != instances.get(copy.instance_id):
            report.problems.append(f"copy {copy.tier} {copy.path}: SHA-256 {digest} is not the index's {copy.sha256}")
            continue
        verified.add(copy.instance_id)
    for pk in sorted(set(instances) - verified):
        report.problems.append(f"instance #{pk}: no copy matches its SHA-256")
    for row in Report.objects.exclude(pdf_sha256="").order_by("pk"):
        for kind in ("pdf", "signature", "cda"):
            relpath, expected = getattr(row, f"{kind}_path"), getattr(row, f"{kind}_sha256")
            if not relpath or not expected or not tiers.tier_is_local(row.tier):
                continue
            path = tiers.absolute_path(row.tier, relpath)
            if not path.is_file():
                report.problems.append(f"report #{row.pk} {kind}: file missing")
            elif file_sha256(path) != expected:
                report.problems.append(f"report #{row.pk} {kind}: SHA-256 is not the index's")
        report.reports_checked += 1
    audit = audit_verify()
    report.audit_events = audit.events
    report.problems += [f"audit: {problem}" for problem in audit.problems]
    journal = journal_verify()
    report.journal_entries = journal.checked
    if not journal.ok:
        report.problems.append(f"giornale: broken at entry #{journal.broken_at}: {journal.reason}")
    return report
