from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction

from archive.audit import GENESIS_HASH, audit_chain_verify, audit_record
from archive.models import AuditEvent, Patient


def test_events_are_chained(db: None) -> None:
    first = audit_record(action="test.one", system="pytest")
    second = audit_record(action="test.two", system="pytest", detail={"n": 2})
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    report = audit_chain_verify()
    assert report.ok and report.checked == 2


def test_events_cannot_be_changed_or_deleted_through_the_model(db: None) -> None:
    event = audit_record(action="test.one", system="pytest")
    event.action = "test.other"
    with pytest.raises(ValidationError):
        event.save()
    with pytest.raises(ValidationError):
        event.delete()


def test_the_database_refuses_updates(db: None) -> None:
    audit_record(action="test.one", system="pytest")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.update(action="tampered")
    assert AuditEvent.objects.get().action == "test.one"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite cannot refuse DELETE and still let tests flush")
def test_postgresql_refuses_deletes(db: None) -> None:
    audit_record(action="test.one", system="pytest")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.all()._raw_delete(AuditEvent.objects.db)
    assert AuditEvent.objects.count() == 1


def test_tampering_shows_in_the_chain(db: None) -> None:
    patient = Patient.objects.create(codice_fiscale="RSSMRA85T10A562S")
    for i in range(3):
        audit_record(action=f"test.{i}", system="pytest", patient=patient)
    middle = AuditEvent.objects.order_by("id")[1]
    # Bypass the model and the trigger as an intruder with raw access would.
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("DROP TRIGGER archive_auditevent_no_update")
        else:
            cursor.execute("ALTER TABLE archive_auditevent DISABLE TRIGGER archive_auditevent_no_update")
        cursor.execute("UPDATE archive_auditevent SET action = 'test.rewritten' WHERE id = %s", [middle.pk])
    report = audit_chain_verify()
    assert not report.ok and report.broken_at == middle.pk


def test_verify_command(db: None) -> None:
    from io import StringIO

    from django.core.management import call_command

    audit_record(action="test.one", system="pytest")
    out = StringIO()
    call_command("verify_audit_chain", stdout=out)
    assert "intact: 1 events" in out.getvalue()
