"""The preservation's tables refuse UPDATE and DELETE in the database itself.

Migration 0004 puts a trigger on each table (PostgreSQL and SQLite): what is
evidence never changes, and only what must change by design may -- a package
or a volume while it is being built, the bookkeeping of the audits
(``fixity_checked_at``), a package joining its volume once, a discard
moving along proposed -> approved/rejected -> executed, an alert being
acknowledged or seen again, a legal hold being released. No row is ever
deleted.

The approved discard is the only way out, and it needs no bypass: it removes
files, never rows, and the database lets a file's row be marked discarded
(``discarded_at``, from empty, nothing else) only while an *approved* discard
lists that file, so the discard's record (its items, hashes, approver) must
exist first and stays.

One exception, on SQLite only: ``manage.py flush`` (a test's teardown, a
developer's reset) empties every table with DELETE, where PostgreSQL uses
TRUNCATE, which row triggers do not see. The SQLite DELETE triggers ask
:func:`flush_allowed`, a function this app registers on each of its
connections, true only inside the flush command
(:func:`whole_database_flush`). Any other client (``sqlite3``, ``dbshell``)
lacks the function, so its DELETE fails too.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

SQLITE_FUNCTION = "preservation_flush_allowed"
_MIGRATION = "preservation.migrations.0004_preservation_tables_refuse_changes"

_flushing: contextvars.ContextVar[bool] = contextvars.ContextVar("preservation_flushing", default=False)


@contextmanager
def whole_database_flush() -> Iterator[None]:
    """While the whole database is emptied (``manage.py flush``), SQLite's DELETE triggers let it through."""
    token = _flushing.set(True)
    try:
        yield
    finally:
        _flushing.reset(token)


def flush_allowed() -> int:
    return 1 if _flushing.get() else 0


def sqlite_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: give SQLite connections the function the triggers ask."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(SQLITE_FUNCTION, 0, flush_allowed)


def sqlite_triggers_ensure(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """``post_migrate`` receiver: put back SQLite triggers a table rebuild dropped.

    SQLite alters a column by rebuilding the table, which drops its triggers;
    PostgreSQL keeps them. Nothing to do before migration 0004 has run.
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
    statements = importlib.import_module(_MIGRATION).sqlite_statements()
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        present = {row[0] for row in cursor.fetchall()}
        for table, creates in statements.items():
            for create in creates:
                name = create.split()[5]  # CREATE TRIGGER IF NOT EXISTS <name> ...
                if name not in present:
                    logger.warning("preservation: SQLite trigger %s on %s was missing, created again", name, table)
                    cursor.execute(create)
