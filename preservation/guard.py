"""The preservation's tables refuse UPDATE and DELETE in the database itself.

Migration 0005 puts a trigger on each table (PostgreSQL and SQLite; on
PostgreSQL TRUNCATE too): what is evidence never changes, and only what must
change by design may -- a package or a volume while it is being built, the
bookkeeping of the audits (``fixity_checked_at``), a package joining its
volume once, a discard moving along proposed -> approved/rejected ->
executed, an alert being acknowledged or seen again, a legal hold being
released. No row is ever deleted.

The approved discard is the only way out, and it needs no bypass: it removes
files, never rows, and the database lets a file's row be marked discarded
(``discarded_at``, from empty, nothing else) only while an *approved* discard
lists that file, so the discard's record (its items, hashes, approver) exists
first and stays.

As for the giornale (migrations 0002, 0003), the triggers stop the
application, not the tables' owner, who can disable or drop them (README,
"The database role"): the fixity audit reports each guard that is missing or
disabled (:func:`guards_missing`), and finds what was changed meanwhile from
the signed volume indexes.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from django.db import connection as default_connection

from kernel.audit import triggers_missing

logger = logging.getLogger(__name__)

_MIGRATION = "preservation.migrations.0005_preservation_tables_refuse_changes"


def _migration() -> Any:
    return importlib.import_module(_MIGRATION)


def guards_missing(connection: Any = default_connection) -> list[str]:
    """The names of the registry's triggers that are missing or disabled (none on other databases)."""
    return triggers_missing(_migration().guard_names(connection.vendor) or [], using=connection)


def sqlite_triggers_ensure(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """``post_migrate`` receiver: put back SQLite triggers a table rebuild dropped.

    SQLite alters a column by rebuilding the table, which drops its triggers;
    PostgreSQL keeps them. Nothing to do before migration 0005 has run.
    """
    from django.db import connections
    from django.db.migrations.recorder import MigrationRecorder

    connection = connections[using]
    if connection.vendor != "sqlite":
        return
    if (
        not MigrationRecorder(connection)
        .migration_qs.filter(app="preservation", name=_MIGRATION.rsplit(".", 1)[1])
        .exists()
    ):
        return
    statements = _migration().sqlite_statements()
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        present = {row[0] for row in cursor.fetchall()}
        for table, creates in statements.items():
            for create in creates:
                name = create.split()[5]  # CREATE TRIGGER IF NOT EXISTS <name> ...
                if name not in present:
                    logger.warning("preservation: SQLite trigger %s on %s was missing, created again", name, table)
                    cursor.execute(create)
