"""The SQLite trigger of 0009 (a signed report refuses UPDATE), put back after a
migration that rebuilds ``archive_report``.

SQLite adds a column with a default by rebuilding the table, and a rebuilt table
loses its triggers; PostgreSQL adds columns in place and keeps its own. Every
migration that adds or alters a column of ``archive_report`` ends with
``migrations.RunPython(sqlite_trigger_restore, migrations.RunPython.noop)``.
(The migration loader skips this module: its name starts with an underscore.)
"""

from __future__ import annotations

SQLITE_TRIGGER = """
CREATE TRIGGER archive_report_signed_immutable BEFORE UPDATE ON archive_report
WHEN OLD.status = 'signed'
BEGIN
    SELECT RAISE(ABORT, 'archive_report: a signed report cannot be changed (UPDATE refused)');
END;
"""


def sqlite_trigger_restore(apps, schema_editor):  # noqa: ARG001 (RunPython's signature)
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS archive_report_signed_immutable;")
        schema_editor.execute(SQLITE_TRIGGER)
