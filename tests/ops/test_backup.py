"""The backup and restore drill (pacs.ops.backup) at small size: a study ingested, a report
signed, the audit chains sealed into the giornale; backed up (pg_dump, the tiers, the keys);
restored into a NEW PostgreSQL database and a NEW folder and verified there by a process
running on the restore; then one byte of a restored file changed, and the verification fails.

Real PostgreSQL, pg_dump and pg_restore: skipped only where they are not."""

from __future__ import annotations

import json
import secrets
import shutil
from io import StringIO
from pathlib import Path

import psycopg
import pytest
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.db import connection

from archive.models import Copy, Instance
from archive.storage import tiers
from pacs.ops import backup
from preservation import audit_seal, timestamp
from preservation.models import JournalEntry
from tests.conftest import database_url
from tests.reporting_helpers import Reporting, reporting, signed_report  # noqa: F401  # the fixture

pytestmark = pytest.mark.skipif(
    not (shutil.which("pg_dump") and shutil.which("pg_restore")), reason="pg_dump/pg_restore not installed"
)


def _drop(name: str) -> None:
    s = connection.settings_dict
    with psycopg.connect(
        dbname="postgres",
        host=s.get("HOST") or "127.0.0.1",
        port=s.get("PORT") or 5432,
        user=s.get("USER") or None,
        password=s.get("PASSWORD") or None,
        autocommit=True,
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _restored(folder: Path, tier: str, relpath: str) -> Path:
    """Where the restore put a file of a folder tier."""
    original = tiers.absolute_path(tier, relpath)
    kind = tiers.tier_kind(tier)
    return folder / "tiers" / kind / original.relative_to(storages[kind].location)


@pytest.fixture
def new_database() -> object:
    if connection.vendor != "postgresql":
        pytest.skip("the backup needs PostgreSQL")
    name = f"{connection.settings_dict['NAME']}_restore_{secrets.token_hex(4)}"
    url = database_url().rsplit("/", 1)[0] + "/" + name
    try:
        yield name, url
    finally:
        _drop(name)


@pytest.mark.django_db(transaction=True)
def test_backup_restore_verify_and_a_changed_byte_fails(
    reporting: Reporting,  # noqa: F811
    new_database: tuple[str, str],
    tmp_path: Path,
    enqueued: object,
) -> None:
    signed = signed_report(reporting)
    timestamp.tsa_demo_create()
    audit_seal.audit_seal()  # the chains' heads into the giornale, time-stamped
    instances = Instance.all_objects.count()
    assert instances == 6 and JournalEntry.objects.count() >= 1

    target = tmp_path / "backup"
    out = StringIO()
    call_command("backup", str(target), stdout=out)
    manifest = json.loads((target / "manifest.json").read_text())
    for copy in Copy.objects.all():
        assert any(name.endswith(copy.path) for name in manifest["files"]), copy.path
    assert "keys/audit.key" in manifest["files"]
    assert any(name.startswith("keys/pki/") for name in manifest["files"])
    assert backup.manifest_check(target) == []

    name, url = new_database
    folder = tmp_path / "restored"
    out = StringIO()
    call_command("restore", str(target), str(folder), database_url=url, stdout=out)
    text = out.getvalue()
    assert f"restore verified: {instances} instances, {instances} copies read" in text, text
    assert "1 signed reports" in text and "giornale entries" in text

    # The new database is a copy, the original untouched.
    with psycopg.connect(url.replace("postgres://", "postgresql://")) as conn:
        rows = conn.execute("SELECT sha256 FROM archive_instance ORDER BY sha256").fetchall()
    assert [r[0] for r in rows] == sorted(Instance.all_objects.values_list("sha256", flat=True))

    environment = dict(line.split("=", 1) for line in (folder / "restore.env").read_text().splitlines() if "=" in line)
    assert environment["DATABASE_URL"] == url

    # One byte of one restored instance file changed: the verification names it and fails.
    copy = Copy.objects.order_by("pk").first()
    assert copy is not None
    restored = _restored(folder, copy.tier, copy.path)
    original = restored.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    restored.write_bytes(bytes(data))
    done = backup.verify_in(environment)
    assert done.returncode != 0
    assert copy.path in done.stderr and "SHA-256" in done.stderr, done.stderr

    # And a signed report's PDF.
    restored.write_bytes(original)
    assert backup.verify_in(environment).returncode == 0
    pdf = _restored(folder, signed.tier, signed.pdf_path)
    pdf.write_bytes(pdf.read_bytes() + b"\n")
    done = backup.verify_in(environment)
    assert done.returncode != 0 and f"report #{signed.pk} pdf" in done.stderr, done.stderr


@pytest.mark.django_db(transaction=True)
def test_a_damaged_backup_or_a_used_target_is_refused_before_anything(
    reporting: Reporting,  # noqa: F811
    new_database: tuple[str, str],
    tmp_path: Path,
) -> None:
    target = tmp_path / "backup"
    call_command("backup", str(target), stdout=StringIO())
    with pytest.raises(CommandError, match="not empty"):
        call_command("backup", str(target), stdout=StringIO())
    name, url = new_database

    # A restore into the database the archive runs on (it exists) is refused.
    used = tmp_path / "used"
    with pytest.raises(CommandError, match="exists"):
        call_command("restore", str(target), str(used), database_url=database_url(), stdout=StringIO())

    # One byte of the backup changed: nothing is restored, the file is named.
    victim = next(p for p in sorted((target / "tiers").rglob("*")) if p.is_file())
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    folder = tmp_path / "restored"
    with pytest.raises(CommandError, match=str(victim.relative_to(target))):
        call_command("restore", str(target), str(folder), database_url=url, stdout=StringIO())
    assert not folder.exists()
    with psycopg.connect(database_url().rsplit("/", 1)[0].replace("postgres://", "postgresql://") + "/postgres") as c:
        assert c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None
