"""A signed report never changes and is never deleted, in the database itself.

PostgreSQL refuses UPDATE and DELETE of a row whose status is "signed" (the
draft → signed transition is an UPDATE of a draft row, so it passes).
SQLite refuses the UPDATE; a DELETE there is also what a test's table flush
does, so it is refused by the model (and by the PROTECT foreign keys) only.
"""

from __future__ import annotations

from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION archive_report_signed_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'archive_report: a signed report cannot be changed or deleted (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER archive_report_signed_immutable BEFORE UPDATE OR DELETE ON archive_report
    FOR EACH ROW WHEN (OLD.status = 'signed') EXECUTE FUNCTION archive_report_signed_immutable();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS archive_report_signed_immutable ON archive_report;
DROP FUNCTION IF EXISTS archive_report_signed_immutable();
"""
SQLITE_FORWARD = """
CREATE TRIGGER archive_report_signed_immutable BEFORE UPDATE ON archive_report
WHEN OLD.status = 'signed'
BEGIN
    SELECT RAISE(ABORT, 'archive_report: a signed report cannot be changed (UPDATE refused)');
END;
"""
SQLITE_BACKWARD = "DROP TRIGGER IF EXISTS archive_report_signed_immutable;"


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
    dependencies = [("archive", "0008_reports")]
    operations = [migrations.RunPython(forward, backward)]
