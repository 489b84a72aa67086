"""The audit log is append-only in the database itself, not only in the model.

PostgreSQL refuses UPDATE and DELETE on its rows. SQLite refuses UPDATE; it
cannot tell a test's table flush from tampering, so a deleted row there shows
only as a break in the hash chain.
"""

from __future__ import annotations

from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION archive_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'archive_auditevent is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER archive_auditevent_no_update BEFORE UPDATE OR DELETE ON archive_auditevent
    FOR EACH ROW EXECUTE FUNCTION archive_auditevent_append_only();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS archive_auditevent_no_update ON archive_auditevent;
DROP FUNCTION IF EXISTS archive_auditevent_append_only();
"""
SQLITE_FORWARD = """
CREATE TRIGGER archive_auditevent_no_update BEFORE UPDATE ON archive_auditevent
BEGIN
    SELECT RAISE(ABORT, 'archive_auditevent is append-only (UPDATE refused)');
END;
"""
SQLITE_BACKWARD = "DROP TRIGGER IF EXISTS archive_auditevent_no_update;"


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
    dependencies = [("archive", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
