"""Lifting the guards of the audit tables and the giornale, as their owner (or a
superuser) can: for the test suite's flush between tests, and for the tamper
tests, which act as an intruder holding the database would."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# The preservation's registry is guarded as the giornale is (preservation migration 0005).
PRESERVATION_TABLES = (
    "preservation_package",
    "preservation_packagefile",
    "preservation_volume",
    "preservation_discard",
    "preservation_discarditem",
    "preservation_fixityaudit",
    "preservation_preservationalert",
    "preservation_legalhold",
)
AUDIT_TABLES = ("archive_auditevent", "archive_auditeventpatient", "preservation_journalentry", *PRESERVATION_TABLES)


@contextmanager
def audit_guards_lifted(connection: Any, tables: Sequence[str] = AUDIT_TABLES) -> Iterator[None]:
    """Within this block the audit tables (or ``tables``) accept UPDATE, DELETE and TRUNCATE.

    PostgreSQL: the owner disables the tables' triggers (transactional: run it in
    a transaction and a failure leaves them enabled); the foreign keys deferred
    meanwhile are checked on leaving. SQLite: the triggers are dropped and then
    created again from their own SQL.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # ALTER TABLE refuses while deferred foreign-key checks are pending.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for table in tables:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            try:
                yield
            finally:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                for table in tables:
                    cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        elif connection.vendor == "sqlite":
            placeholders = ", ".join("%s" for _ in tables)
            cursor.execute(
                f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN ({placeholders})",
                list(tables),
            )
            triggers = cursor.fetchall()
            for name, _sql in triggers:
                cursor.execute(f'DROP TRIGGER "{name}"')
            try:
                yield
            finally:
                for _name, sql in triggers:
                    cursor.execute(sql)
        else:
            yield
