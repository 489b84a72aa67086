"""The giornale records the seals of the audit chains; it now refuses every change.

PostgreSQL already refused UPDATE and DELETE (0002): TRUNCATE too. SQLite
already refused UPDATE: DELETE too (the test suite's flush lifts the guards
as the tables' owner would, ``tests/audit_helpers.py``).
"""

from __future__ import annotations

from django.db import migrations, models

PG_FORWARD = """
CREATE OR REPLACE TRIGGER preservation_journalentry_no_truncate BEFORE TRUNCATE ON preservation_journalentry
    FOR EACH STATEMENT EXECUTE FUNCTION preservation_journalentry_append_only();
"""
PG_BACKWARD = "DROP TRIGGER IF EXISTS preservation_journalentry_no_truncate ON preservation_journalentry;"
SQLITE_FORWARD = """
CREATE TRIGGER IF NOT EXISTS preservation_journalentry_no_delete BEFORE DELETE ON preservation_journalentry
BEGIN SELECT RAISE(ABORT, 'preservation_journalentry is append-only (DELETE refused)'); END
"""
SQLITE_BACKWARD = "DROP TRIGGER IF EXISTS preservation_journalentry_no_delete"


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FORWARD, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_FORWARD)


def backward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_BACKWARD, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("preservation", "0002_journal_append_only_retention_table")]

    operations = [
        migrations.AlterField(
            model_name="journalentry",
            name="event",
            field=models.CharField(
                choices=[
                    ("package", "pacchetto"),
                    ("volume", "volume"),
                    ("export", "esportazione"),
                    ("audit", "verifica di integrità"),
                    ("discard", "scarto"),
                    ("hold", "blocco legale"),
                    ("seal", "sigillo del registro degli accessi"),
                ],
                max_length=16,
                verbose_name="evento",
            ),
        ),
        migrations.RunPython(forward, backward),
    ]
