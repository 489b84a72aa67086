"""Keyed, per-writer audit chains; the patients a search returned; the database refuses changes.

Rows already written keep ``chain=""``: the unkeyed SHA-256 chain in id order,
verified as before (``kernel.audit``). No row is rewritten.

The database guards (triggers), after this migration:

- PostgreSQL: UPDATE, DELETE and TRUNCATE of ``archive_auditevent`` and
  ``archive_auditeventpatient`` refused; an INSERT without a chain refused
  (no new unkeyed row). Only a superuser (``session_replication_role``) or the
  tables' owner (``ALTER TABLE ... DISABLE TRIGGER``, ``DROP TRIGGER``) can
  lift them: the application runs as neither (README, *The audit log*).
- SQLite: the same for UPDATE, DELETE (SQLite has no TRUNCATE: ``DELETE``
  without ``WHERE`` fires the trigger) and the INSERT without a chain. SQLite
  drops a table's triggers when a migration rebuilds the table, as the
  AddField below does: they are (re)created at the end.
"""

from __future__ import annotations

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

PG_FORWARD = """
CREATE OR REPLACE FUNCTION archive_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION archive_auditevent_keyed_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'archive_auditevent: an event without a chain (unkeyed) refused';
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER archive_auditevent_no_update BEFORE UPDATE OR DELETE ON archive_auditevent
    FOR EACH ROW EXECUTE FUNCTION archive_auditevent_append_only();
CREATE OR REPLACE TRIGGER archive_auditevent_no_truncate BEFORE TRUNCATE ON archive_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION archive_auditevent_append_only();
CREATE OR REPLACE TRIGGER archive_auditevent_keyed_only BEFORE INSERT ON archive_auditevent
    FOR EACH ROW WHEN (NEW.chain = '') EXECUTE FUNCTION archive_auditevent_keyed_only();
CREATE OR REPLACE TRIGGER archive_auditeventpatient_no_update BEFORE UPDATE OR DELETE ON archive_auditeventpatient
    FOR EACH ROW EXECUTE FUNCTION archive_auditevent_append_only();
CREATE OR REPLACE TRIGGER archive_auditeventpatient_no_truncate BEFORE TRUNCATE ON archive_auditeventpatient
    FOR EACH STATEMENT EXECUTE FUNCTION archive_auditevent_append_only();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS archive_auditevent_no_truncate ON archive_auditevent;
DROP TRIGGER IF EXISTS archive_auditevent_keyed_only ON archive_auditevent;
DROP TRIGGER IF EXISTS archive_auditeventpatient_no_update ON archive_auditeventpatient;
DROP TRIGGER IF EXISTS archive_auditeventpatient_no_truncate ON archive_auditeventpatient;
DROP FUNCTION IF EXISTS archive_auditevent_keyed_only();
"""
SQLITE_FORWARD = [
    """CREATE TRIGGER IF NOT EXISTS archive_auditevent_no_update BEFORE UPDATE ON archive_auditevent
BEGIN SELECT RAISE(ABORT, 'archive_auditevent is append-only (UPDATE refused)'); END""",
    """CREATE TRIGGER IF NOT EXISTS archive_auditevent_no_delete BEFORE DELETE ON archive_auditevent
BEGIN SELECT RAISE(ABORT, 'archive_auditevent is append-only (DELETE refused)'); END""",
    """CREATE TRIGGER IF NOT EXISTS archive_auditevent_keyed_only BEFORE INSERT ON archive_auditevent
WHEN NEW.chain = ''
BEGIN SELECT RAISE(ABORT, 'archive_auditevent: an event without a chain (unkeyed) refused'); END""",
    """CREATE TRIGGER IF NOT EXISTS archive_auditeventpatient_no_update BEFORE UPDATE ON archive_auditeventpatient
BEGIN SELECT RAISE(ABORT, 'archive_auditeventpatient is append-only (UPDATE refused)'); END""",
    """CREATE TRIGGER IF NOT EXISTS archive_auditeventpatient_no_delete BEFORE DELETE ON archive_auditeventpatient
BEGIN SELECT RAISE(ABORT, 'archive_auditeventpatient is append-only (DELETE refused)'); END""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS archive_auditevent_no_delete",
    "DROP TRIGGER IF EXISTS archive_auditevent_keyed_only",
    "DROP TRIGGER IF EXISTS archive_auditeventpatient_no_update",
    "DROP TRIGGER IF EXISTS archive_auditeventpatient_no_delete",
]


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FORWARD, params=None)
    elif vendor == "sqlite":
        for sql in SQLITE_FORWARD:
            schema_editor.execute(sql)


def backward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_BACKWARD, params=None)
    elif vendor == "sqlite":
        for sql in SQLITE_BACKWARD:
            schema_editor.execute(sql)


def backward_last(apps, schema_editor):
    """Reversed last: SQLite's table rebuilds dropped 0002's trigger; put it back."""
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(SQLITE_FORWARD[0])


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0011_remotenode_trust"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(migrations.RunPython.noop, backward_last),
        migrations.CreateModel(
            name="AuditEventPatient",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
            ],
            options={
                "verbose_name": "paziente in un risultato di ricerca",
                "verbose_name_plural": "pazienti nei risultati di ricerca",
            },
        ),
        migrations.AddField(
            model_name="auditevent",
            name="chain",
            field=models.CharField(blank=True, default="", max_length=32, verbose_name="catena"),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="key_id",
            field=models.CharField(blank=True, default="", max_length=16, verbose_name="chiave"),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="seq",
            field=models.PositiveBigIntegerField(blank=True, null=True, verbose_name="numero nella catena"),
        ),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(fields=("chain", "seq"), name="audit_chain_seq"),
        ),
        migrations.AddField(
            model_name="auditeventpatient",
            name="event",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="patient_links",
                to="archive.auditevent",
                verbose_name="evento",
            ),
        ),
        migrations.AddField(
            model_name="auditeventpatient",
            name="patient",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="archive.patient",
                verbose_name="paziente",
            ),
        ),
        migrations.AddConstraint(
            model_name="auditeventpatient",
            constraint=models.UniqueConstraint(fields=("patient", "event"), name="audit_patient_event"),
        ),
        migrations.RunPython(forward, backward),
    ]
