"""The giornale is append-only; the preservation tier is write-once: nothing is
overwritten or removed there outside an approved discard."""

from __future__ import annotations

import hashlib
import io
import shutil

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction

from archive.storage import tiers as storage
from preservation import journal, retention, vault
from preservation.models import Discard, DiscardItem, JournalEntry, PackageFile
from tests.audit_helpers import audit_guards_lifted

from .conftest import Preserved, tier_root

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
TIER = "preservation:region"


def test_the_giornale_is_append_only_and_chained(db: None) -> None:
    first = journal.journal_record(event="package", action="package.archive", object_id="PdA-1", system="test")
    journal.journal_record(event="volume", action="volume.close", object_id="VOL-1", system="test")
    assert journal.journal_verify().ok and journal.journal_verify().checked == 2
    first.detail = {"changed": True}
    with pytest.raises(ValidationError):
        first.save()
    with pytest.raises(ValidationError):
        first.delete()
    # The database refuses it too, not only the model.
    with pytest.raises(DatabaseError), transaction.atomic():
        JournalEntry.objects.filter(pk=first.pk).update(action="package.forged")
    with pytest.raises(DatabaseError), transaction.atomic():
        JournalEntry.objects.filter(pk=first.pk)._raw_delete(JournalEntry.objects.db)
    # Whoever lifts the guards as the table's owner: the chain shows it.
    with audit_guards_lifted(connection), connection.cursor() as cursor:
        cursor.execute("DELETE FROM preservation_journalentry WHERE id = %s", [first.pk])
    check = journal.journal_verify()
    assert not check.ok and "removed" in check.reason


def test_an_object_is_never_overwritten(preserved: Preserved, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = PackageFile.objects.filter(package=preserved.package, role=PackageFile.Role.DICOM).first()
    original = (tier_root() / f.path).read_bytes()
    other = tmp_path / "other.dcm"
    other.write_bytes(b"not the same bytes")
    with pytest.raises(vault.WriteOnceError):
        vault.put_file(f.path, other, sha256=hashlib.sha256(other.read_bytes()).hexdigest())
    same = tmp_path / "same.dcm"
    same.write_bytes(original)
    assert vault.put_file(f.path, same, sha256=f.sha256) is False  # identical: found, not rewritten
    with pytest.raises(storage.WriteOnceViolation):
        storage.copy_replace(io.BytesIO(b"x"), TIER, f.path, sha256=hashlib.sha256(b"x").hexdigest())
    # A whole package folder cannot be published again with other content.
    with pytest.raises(vault.WriteOnceError):
        vault.publish_folder(
            preserved.package.path,
            [vault.StagedFile("PdA.xml", other, hashlib.sha256(b"not the same bytes").hexdigest())],
        )
    assert (tier_root() / f.path).read_bytes() == original


def test_an_object_is_never_removed_outside_an_approved_discard(preserved: Preserved) -> None:
    f = PackageFile.objects.filter(package=preserved.package, role=PackageFile.Role.DICOM).first()
    with pytest.raises(storage.WriteOnceViolation):
        storage.copy_remove(TIER, f.path)
    with pytest.raises(storage.StorageError):
        storage.remove_file(TIER, f.path)
    # A discard that is only proposed (or was rejected) removes nothing.
    discard = Discard.objects.create(reason="prova")
    item = DiscardItem.objects.create(discard=discard, package_file=f, path=f.path, sha256=f.sha256, size=f.size)
    with pytest.raises(vault.WriteOnceError):
        vault.discard_file(item=item)
    with pytest.raises(retention.RetentionError):
        retention.discard_execute(discard=discard, user=preserved.officer)
    retention.discard_reject(discard=discard, user=preserved.officer)
    with pytest.raises(vault.WriteOnceError):
        vault.discard_file(item=item)
    assert (tier_root() / f.path).exists()
    assert hashlib.sha256((tier_root() / f.path).read_bytes()).hexdigest() == f.sha256
    assert JournalEntry.objects.filter(action="discard.execute", outcome="denied").exists()
