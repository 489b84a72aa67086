"""The chain of volumes is the truth (issue 22, finding 2).

The preservation tables refuse UPDATE and DELETE in the database (SQLite and
PostgreSQL), but for what changes by design; the approved discard is the
only way out and leaves its record. And whatever gets past the database --
its owner can take the triggers off -- the fixity audit finds by checking
each volume's signed index against the files on disk and the registry rows,
each index's link to the previous one, and the giornale: a registry row
deleted, an AIP file replaced, a whole volume removed are each found and named.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from preservation import fixity, retention
from preservation.models import (
    Discard,
    DiscardItem,
    FixityAudit,
    JournalEntry,
    LegalHold,
    Package,
    PackageFile,
    PreservationAlert,
    Volume,
)

from .conftest import Preserved, addendum_volume, as_owner, tier_root

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
FAR = dt.date(2100, 1, 1)


def refused(operation) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DatabaseError), transaction.atomic():
        operation()


def _alerts() -> dict[tuple[str, str], PreservationAlert]:
    return {(a.kind, a.path): a for a in PreservationAlert.objects.all()}


def _writable(path) -> None:  # type: ignore[no-untyped-def]
    path.chmod(0o644)


# --- the database refuses ---------------------------------------------------------------


def test_plain_orm_deletes_and_updates_are_refused(preserved: Preserved) -> None:
    package, volume = preserved.package, preserved.volume
    dicom = PackageFile.objects.filter(package=package, role=PackageFile.Role.DICOM).first()

    # The finding: one registry row deleted.
    refused(lambda: PackageFile.objects.filter(pk=dicom.pk).delete())
    refused(lambda: PackageFile.objects.filter(pk=dicom.pk).update(sha256="0" * 64))
    refused(lambda: PackageFile.objects.filter(pk=dicom.pk).update(discarded_at=timezone.now()))  # no discard
    refused(lambda: Package.objects.filter(pk=package.pk).delete())
    refused(lambda: Package.objects.filter(pk=package.pk).update(manifest_sha256="0" * 64))
    refused(lambda: Package.objects.filter(pk=package.pk).update(volume=None))
    refused(lambda: Package.objects.filter(pk=package.pk).update(status=Package.Status.BUILDING))
    refused(lambda: Volume.objects.filter(pk=volume.pk).delete())
    refused(lambda: Volume.objects.filter(pk=volume.pk).update(index_sha256="0" * 64))
    refused(lambda: Volume.objects.filter(pk=volume.pk).update(signer_name="CN=qualcun altro"))
    refused(lambda: JournalEntry.objects.all().delete())
    audit = fixity.fixity_audit()
    refused(lambda: FixityAudit.objects.filter(pk=audit.pk).update(failures=0))
    refused(lambda: FixityAudit.objects.filter(pk=audit.pk).delete())
    hold = retention.hold_place(user=preserved.officer, reason="contenzioso", study=preserved.rep.study)
    refused(lambda: LegalHold.objects.filter(pk=hold.pk).delete())
    refused(lambda: LegalHold.objects.filter(pk=hold.pk).update(reason="altro"))

    # What changes by design still does.
    assert Package.objects.filter(pk=package.pk).update(fixity_checked_at=timezone.now()) == 1
    assert Volume.objects.filter(pk=volume.pk).update(fixity_checked_at=timezone.now()) == 1
    retention.hold_release(hold=hold, user=preserved.officer)
    refused(lambda: LegalHold.objects.filter(pk=hold.pk).update(released_at=None))
    assert PackageFile.objects.filter(pk=dicom.pk, sha256=dicom.sha256).exists()


def test_the_approved_discard_is_the_only_way_out_and_its_record_stays(preserved: Preserved) -> None:
    discard = retention.discard_propose(today=FAR)
    items = list(discard.items.all())
    file_ids = [i.package_file_id for i in items]
    # Proposed is not approved: the rows cannot be marked discarded yet.
    refused(lambda: PackageFile.objects.filter(pk=file_ids[0]).update(discarded_at=timezone.now()))
    refused(lambda: DiscardItem.objects.filter(pk=items[0].pk).update(removed_at=timezone.now()))
    retention.discard_approve(discard=discard, user=preserved.officer)
    retention.discard_execute(discard=discard, user=preserved.officer)

    # The rows stay, marked; the record stays, and neither changes again.
    assert PackageFile.objects.filter(pk__in=file_ids, discarded_at__isnull=False).count() == len(file_ids)
    discard.refresh_from_db()
    assert discard.status == Discard.Status.EXECUTED and len(discard.record["files"]) == len(items)
    refused(lambda: Discard.objects.filter(pk=discard.pk).update(record={}))
    refused(lambda: Discard.objects.filter(pk=discard.pk).update(status=Discard.Status.PROPOSED))
    refused(lambda: Discard.objects.filter(pk=discard.pk).delete())
    refused(lambda: DiscardItem.objects.filter(pk=items[0].pk).delete())
    refused(lambda: PackageFile.objects.filter(pk=file_ids[0]).update(discarded_at=None))
    # The signed index still lists the discarded files: the audit knows why they are gone.
    assert fixity.fixity_audit().failures == 0


def test_a_whole_table_emptied_is_refused(preserved: Preserved) -> None:
    # A DELETE of every row (SQLite's flush), and on PostgreSQL a TRUNCATE: refused as any DELETE.
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # else TRUNCATE fails on the pending checks instead
            refused(lambda: cursor.execute("TRUNCATE preservation_packagefile CASCADE"))
        refused(lambda: cursor.execute("DELETE FROM preservation_packagefile"))
    assert PackageFile.objects.filter(package=preserved.package).count() == 17


def test_the_fixity_audit_reports_a_guard_taken_off(preserved: Preserved) -> None:
    from preservation import guard

    assert guard.guards_missing() == []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("ALTER TABLE preservation_packagefile DISABLE TRIGGER preservation_packagefile_guard")
            missing = "preservation_packagefile_guard"
        else:
            cursor.execute("DROP TRIGGER preservation_packagefile_guard_delete")
            missing = "preservation_packagefile_guard_delete"
    assert guard.guards_missing() == [missing]
    fixity.fixity_audit()
    alert = PreservationAlert.objects.get()
    assert (alert.kind, alert.path) == (PreservationAlert.Kind.GUARD, missing)


# --- the fixity audit finds and names what got past --------------------------------------


def test_a_deleted_registry_row_is_found(preserved: Preserved) -> None:
    dicom = PackageFile.objects.filter(package=preserved.package, role=PackageFile.Role.DICOM).first()
    assert fixity.fixity_audit().failures == 0
    with as_owner():
        PackageFile.objects.filter(pk=dicom.pk).delete()

    audit = fixity.fixity_audit()

    alert = _alerts()[(PreservationAlert.Kind.REGISTRY, dicom.path)]
    assert preserved.volume.identifier in alert.detail and "senza riga nel registro" in alert.detail
    assert dicom.sha256 in alert.detail  # the file on disk is still the signed one
    assert audit.failures == 1


def test_a_replaced_aip_file_is_found_even_with_its_row_changed(preserved: Preserved) -> None:
    dicom = PackageFile.objects.filter(package=preserved.package, role=PackageFile.Role.DICOM).first()
    path = tier_root() / dicom.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    _writable(path)
    path.write_bytes(bytes(data))
    new_sha = hashlib.sha256(data).hexdigest()

    fixity.fixity_audit()
    assert _alerts()[(PreservationAlert.Kind.DAMAGED, dicom.path)].detail.startswith(f"SHA-256 {new_sha}")

    # The registry row changed to match the new file (the database's owner, triggers off): the signed index still says.
    PreservationAlert.objects.update(acknowledged_at=timezone.now())
    with as_owner():
        PackageFile.objects.filter(pk=dicom.pk).update(sha256=new_sha)
    fixity.fixity_audit()
    open_alerts = {(a.kind, a.path): a for a in PreservationAlert.objects.filter(acknowledged_at__isnull=True)}
    assert set(open_alerts) == {
        (PreservationAlert.Kind.REGISTRY, dicom.path),  # the row against the index
        (PreservationAlert.Kind.DAMAGED, dicom.path),  # the file against the index
    }
    assert f"l'indice firmato di {preserved.volume.identifier} dice {dicom.sha256}" in (
        open_alerts[(PreservationAlert.Kind.DAMAGED, dicom.path)].detail
    )


def test_a_file_planted_in_a_package_is_found(preserved: Preserved) -> None:
    folder = tier_root() / preserved.package.path
    _writable(folder)
    (folder / "dicom" / "extra.dcm").write_bytes(b"not preserved")
    fixity.fixity_audit()
    assert (PreservationAlert.Kind.REGISTRY, f"{preserved.package.path}/dicom/extra.dcm") in _alerts()


def test_the_last_volume_removed_whole_is_found(preserved: Preserved) -> None:
    second = addendum_volume(preserved)
    second_package = Package.objects.get(volume=second)
    assert fixity.fixity_audit().failures == 0
    # Everything of it: its folder and its package's folder on disk, its rows in the registry.
    for relpath in (f"volumes/{second.identifier}", second_package.path):
        folder = tier_root() / relpath
        for p in folder.rglob("*"):
            _writable(p)
        shutil.rmtree(folder)
    with as_owner():
        PackageFile.objects.filter(package=second_package).delete()
        Package.objects.filter(pk=second_package.pk).delete()
        Volume.objects.filter(pk=second.pk).delete()

    audit = fixity.fixity_audit()

    alerts = _alerts()
    assert (PreservationAlert.Kind.CHAIN, f"volumes/{second.identifier}/") in alerts  # the giornale closed it
    assert (PreservationAlert.Kind.REGISTRY, f"aip/{second_package.identifier}/") in alerts
    assert audit.failures == 2


def test_a_volume_removed_from_the_registry_is_found_by_the_next_index_and_on_disk(preserved: Preserved) -> None:
    first = preserved.volume
    second = addendum_volume(preserved)
    with as_owner():
        Package.objects.filter(volume=first).update(volume=second)  # its packages hidden in the next volume
        Volume.objects.filter(pk=second.pk).update(previous=None)
        Volume.objects.filter(pk=first.pk).delete()

    fixity.fixity_audit()

    alerts = _alerts()
    chain = alerts[(PreservationAlert.Kind.CHAIN, second.index_path)]
    assert f"IdC-{first.identifier}" in chain.detail  # the signed index of the next volume names it
    assert (PreservationAlert.Kind.CHAIN, f"volumes/{first.identifier}/") in alerts  # the giornale closed it
    assert (PreservationAlert.Kind.REGISTRY, f"volumes/{first.identifier}/") in alerts  # its folder is on disk
    # The moved package's rows are not in the second volume's signed index.
    moved = PackageFile.objects.filter(package=preserved.package).first()
    assert (PreservationAlert.Kind.REGISTRY, moved.path) in alerts


def test_a_broken_link_between_indexes_is_found(preserved: Preserved) -> None:
    first = preserved.volume
    second = addendum_volume(preserved)
    # The first index replaced on disk and in the registry by another one: the second index fixed the old hash.
    index = tier_root() / first.index_path
    _writable(index)
    index.write_bytes(index.read_bytes().replace(b"</PIndex>", b"<!-- -->\n</PIndex>"))
    with as_owner():
        Volume.objects.filter(pk=first.pk).update(index_sha256=hashlib.sha256(index.read_bytes()).hexdigest())

    fixity.fixity_audit()

    alerts = _alerts()
    assert (PreservationAlert.Kind.SIGNATURE, first.signature_path) in alerts
    assert (PreservationAlert.Kind.CHAIN, second.index_path) in alerts
    assert first.index_sha256 in alerts[(PreservationAlert.Kind.CHAIN, second.index_path)].detail


def test_the_same_damage_is_one_alert_updated_each_night(preserved: Preserved) -> None:
    dicom = PackageFile.objects.filter(package=preserved.package, role=PackageFile.Role.DICOM).first()
    path = tier_root() / dicom.path
    _writable(path)
    path.write_bytes(b"rot")
    first = fixity.fixity_audit()
    second = fixity.fixity_audit(cycle_days=1)
    alert = PreservationAlert.objects.get()
    assert (alert.kind, alert.path, alert.count) == (PreservationAlert.Kind.DAMAGED, dicom.path, 2)
    assert alert.audit_id == second.pk and alert.last_seen_at >= alert.created_at
    assert first.failures == second.failures == 1
    # Once acknowledged, a damage still there is a new alert.
    PreservationAlert.objects.update(acknowledged_at=timezone.now())
    fixity.fixity_audit(cycle_days=1)
    assert PreservationAlert.objects.count() == 2


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="SQLite drops a table's triggers when a migration rebuilds it"
)
def test_a_trigger_a_migration_dropped_is_put_back(db: None) -> None:
    from preservation import guard

    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER preservation_volume_guard_update")
    assert guard.guards_missing() == ["preservation_volume_guard_update"]
    guard.sqlite_triggers_ensure(sender=None)  # post_migrate
    assert guard.guards_missing() == []
