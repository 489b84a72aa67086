"""The preservation tables refuse UPDATE and DELETE in the database (issue 22).

One rule per table says which UPDATE is allowed by design (see
:mod:`preservation.guard`); every other UPDATE, every DELETE, and on
PostgreSQL every TRUNCATE, is refused, on PostgreSQL and SQLite, as the
giornale already is (0002, 0003). As there, the triggers stop the
application, not the tables' owner (README, "The database role"); the test
suite's flush lifts them as the owner would (``tests/audit_helpers.py``), and
the fixity audit reports a guard that is missing or disabled.

Not guarded: the retention table (RetentionClass), configuration the officer
edits in the admin by design -- a package file keeps the ``keep_until``
computed when it was archived, so editing the table changes no evidence, and
a class in use cannot be deleted (PROTECT).

The rules are written out here, not imported, so that this migration stays
what it was when later code changes.
"""

from __future__ import annotations

import re

from django.db import migrations

# SAME(col): the column is unchanged (null-safe). The condition is what an UPDATE may do.
RULES: dict[str, str] = {
    # Being built: anything but its identity. Archived or rejected: only the audit's
    # bookkeeping, and joining a volume once.
    "preservation_package": """
        (OLD.status = 'building' AND SAME(identifier) AND SAME(study_id) AND SAME(report_id))
        OR (OLD.status <> 'building'
            AND SAME(identifier) AND SAME(status) AND SAME(tier) AND SAME(path) AND SAME(manifest_sha256)
            AND SAME(created_at) AND SAME(heartbeat_at) AND SAME(archived_at) AND SAME(ingest_report)
            AND SAME(study_id) AND SAME(report_id)
            AND (SAME(volume_id) OR OLD.volume_id IS NULL))
    """,
    "preservation_volume": """
        (OLD.status = 'building' AND SAME(identifier) AND SAME(previous_id))
        OR (OLD.status <> 'building'
            AND SAME(identifier) AND SAME(status) AND SAME(tier) AND SAME(previous_id) AND SAME(created_at)
            AND SAME(heartbeat_at) AND SAME(closed_at) AND SAME(index_path) AND SAME(index_sha256)
            AND SAME(signature_path) AND SAME(signature_sha256) AND SAME(timestamp_path)
            AND SAME(timestamp_sha256) AND SAME(timestamp_time) AND SAME(signer_name))
    """,
    # Only marked discarded, once, while an approved discard lists the file.
    "preservation_packagefile": """
        SAME(package_id) AND SAME(role) AND SAME(name) AND SAME(path) AND SAME(mime_type) AND SAME(sha256)
        AND SAME(size) AND SAME(document_id) AND SAME(retention_class_id) AND SAME(keep_until)
        AND OLD.discarded_at IS NULL AND NEW.discarded_at IS NOT NULL
        AND EXISTS (
            SELECT 1 FROM preservation_discarditem di JOIN preservation_discard d ON d.id = di.discard_id
            WHERE di.package_file_id = OLD.id AND d.status = 'approved'
        )
    """,
    "preservation_discarditem": """
        SAME(discard_id) AND SAME(package_file_id) AND SAME(path) AND SAME(sha256) AND SAME(size)
        AND OLD.removed_at IS NULL AND NEW.removed_at IS NOT NULL
        AND EXISTS (SELECT 1 FROM preservation_discard d WHERE d.id = OLD.discard_id AND d.status = 'approved')
    """,
    # proposed -> approved or rejected (who and when), approved -> executed (the record); nothing after.
    "preservation_discard": """
        SAME(proposed_at) AND SAME(reason) AND (
            (SAME(status) AND SAME(approved_at) AND SAME(approved_by_id) AND SAME(executed_at)
                AND SAME(record) AND SAME(record_sha256))
            OR (OLD.status = 'proposed' AND NEW.status IN ('approved', 'rejected')
                AND SAME(executed_at) AND SAME(record) AND SAME(record_sha256))
            OR (OLD.status = 'approved' AND NEW.status = 'executed'
                AND SAME(approved_at) AND SAME(approved_by_id))
        )
    """,
    # An audit writes its counts while it runs; a finished one is history.
    "preservation_fixityaudit": "OLD.finished_at IS NULL AND SAME(started_at)",
    # Acknowledged, or seen again (count, last seen, detail): never another object or kind.
    "preservation_preservationalert": """
        SAME(kind) AND SAME(path) AND SAME(created_at) AND SAME(package_id) AND SAME(volume_id)
    """,
    # Released once: what was held, why, by whom, stays.
    "preservation_legalhold": """
        SAME(patient_id) AND SAME(study_id) AND SAME(reason) AND SAME(placed_at) AND SAME(placed_by_id)
        AND (OLD.released_at IS NULL OR (SAME(released_at) AND SAME(released_by_id)))
    """,
}


def _condition(rule: str, vendor: str) -> str:
    same = r"NEW.\1 IS NOT DISTINCT FROM OLD.\1" if vendor == "postgresql" else r"NEW.\1 IS OLD.\1"
    return " ".join(re.sub(r"SAME\((\w+)\)", same, rule).split())


def _pg_forward(table: str, rule: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {table}_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION '{table}: % refused (preservation evidence is never removed; a discard marks files)', TG_OP;
    END IF;
    IF NOT ({_condition(rule, "postgresql")}) THEN
        RAISE EXCEPTION '{table}: UPDATE refused (preservation evidence is not changed)';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER {table}_guard BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {table}_guard();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_guard();
"""


def _pg_backward(table: str) -> str:
    return (
        f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}; "
        f"DROP TRIGGER IF EXISTS {table}_guard ON {table}; DROP FUNCTION IF EXISTS {table}_guard();"
    )


def _sqlite_forward(table: str, rule: str) -> list[str]:
    return [
        f"""CREATE TRIGGER IF NOT EXISTS {table}_guard_delete BEFORE DELETE ON {table}
BEGIN
    SELECT RAISE(ABORT, '{table}: DELETE refused (preservation evidence is never removed)');
END""",
        f"""CREATE TRIGGER IF NOT EXISTS {table}_guard_update BEFORE UPDATE ON {table}
WHEN NOT ({_condition(rule, "sqlite")})
BEGIN
    SELECT RAISE(ABORT, '{table}: UPDATE refused (preservation evidence is not changed)');
END""",
    ]


def guard_names(vendor: str) -> list[str]:
    """The triggers this migration creates on ``vendor`` (the fixity audit checks they are there and enabled)."""
    if vendor == "postgresql":
        return [name for table in RULES for name in (f"{table}_guard", f"{table}_no_truncate")]
    if vendor == "sqlite":
        return [name for table in RULES for name in (f"{table}_guard_delete", f"{table}_guard_update")]
    return []


def sqlite_statements() -> dict[str, list[str]]:
    """Each guarded table's SQLite triggers (``CREATE TRIGGER IF NOT EXISTS``).

    SQLite drops a table's triggers when a later migration rebuilds the table
    (how it alters a column): :func:`preservation.guard.sqlite_triggers_ensure`
    runs these again after every migrate.
    """
    return {table: _sqlite_forward(table, rule) for table, rule in RULES.items()}


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for table, rule in RULES.items():
            schema_editor.execute(_pg_forward(table, rule), params=None)
    elif vendor == "sqlite":
        for statements in sqlite_statements().values():
            for statement in statements:
                schema_editor.execute(statement)


def backward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for table in RULES:
        if vendor == "postgresql":
            schema_editor.execute(_pg_backward(table), params=None)
        elif vendor == "sqlite":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_guard_delete")
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_guard_update")


class Migration(migrations.Migration):
    dependencies = [("preservation", "0004_alert_count_registry_chain")]
    operations = [migrations.RunPython(forward, backward)]
