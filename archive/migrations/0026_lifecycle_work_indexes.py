"""The lifecycle's work to do in indexes (docs/CAPACITY.md, "the lifecycle's two selections").

``Instance.migrated`` is true while an instance has a verified long-term copy,
and a partial index holds the instances where it is false (still to migrate);
``Copy.instance_received_at`` carries the instance's received time so that a
partial index of the facility copies (deleted when evicted) gives them in
received order. Each batch of the lifecycle is then a range scan of the rows
still due, whatever the archive's age.

Written for an archive of a hundred million instances, the fill writes only
the work to do, never the work done:

* ``migrated`` is added true for every row (on PostgreSQL a constant default
  is a change of the catalogue: no row is written), its default then becomes
  false for the rows to come, and the fill writes false only on the instances
  without a verified long-term copy (the last days' ones).
* ``instance_received_at`` is filled for the facility copies only (a year's
  worth at most: older ones are evicted); a long-term copy needs none.

The two columns (and the default's change) are one transaction: on PostgreSQL
each ALTER TABLE takes ACCESS EXCLUSIVE, so it is asked with a ``lock_timeout``
of a second and asked again until it has it (a transaction open on the table
would make it wait, and every read and write queue behind it), and a crash
leaves all three or none; run again after a crash, the migration finds the
columns there and goes on with the fill.

Both fills are set-based SQL over ranges of primary keys, each range in its own
transaction (the migration is not atomic: on PostgreSQL one transaction over
the whole table would hold its locks and every dead row until the end). Run
again after a crash, the fill does what is still missing.

On PostgreSQL the constraint and the two indexes are then made online, ingest
and retrieval going on meanwhile (the model's state is the plain AddConstraint
and AddIndex; other databases run those; going back drops the indexes
``CONCURRENTLY`` too):

* The constraint is added ``NOT VALID``: ACCESS EXCLUSIVE on ``archive_copy``
  for a change of the catalogue only. A transaction open on the table would
  make it wait, and every read and write queue behind it: it is asked with a
  ``lock_timeout`` of a second and asked again until it has it, so nothing
  waits longer. ``VALIDATE CONSTRAINT`` then reads every copy under SHARE
  UPDATE EXCLUSIVE, which reads and writes do not wait for (a plain ADD
  CONSTRAINT holds ACCESS EXCLUSIVE for the whole read: every retrieve and
  every ingest would wait for a scan of hundreds of millions of rows).
* Each index is built ``CONCURRENTLY`` (SHARE UPDATE EXCLUSIVE: writes go on,
  where a plain CREATE INDEX holds SHARE, which every INSERT waits for, for the
  whole build), the SQL Django's AddIndex makes with ``IF NOT EXISTS``. The build
  waits for the transactions already open on the table, and an invalid index
  left by a build that failed is dropped first, as 0027 does.
"""

import sys
import time

from django.db import OperationalError, migrations, models, transaction
from django.db.migrations.operations.base import Operation

_BATCH = 50_000
_LOCK_TIMEOUT = "1s"  # the longest a read or write of archive_copy waits behind the constraint's ACCESS EXCLUSIVE

RECEIVED_AT = models.CheckConstraint(
    condition=models.Q(
        models.Q(("tier__startswith", "facility:"), _negated=True),
        ("instance_received_at__isnull", False),
        _connector="OR",
    ),
    name="copy_facility_received_at",
)
TO_MIGRATE = models.Index(
    condition=models.Q(("migrated", False)),
    fields=["received_at", "id"],
    name="instance_to_migrate",
)
BY_RECEIVED = models.Index(
    condition=models.Q(("tier__startswith", "facility:")),
    fields=["instance_received_at", "id"],
    name="copy_facility_by_received",
)
WORK = [
    migrations.AddConstraint(model_name="copy", constraint=RECEIVED_AT),
    migrations.AddIndex(model_name="instance", index=TO_MIGRATE),
    migrations.AddIndex(model_name="copy", index=BY_RECEIVED),
]


def _ranges(cursor, table):
    cursor.execute(f"SELECT MIN(id), MAX(id) FROM {table}")
    low, high = cursor.fetchone()
    if low is None:
        return
    start = low - 1
    while start < high:
        yield start, start + _BATCH
        start += _BATCH


def fill(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        for low, high in list(_ranges(cursor, "archive_instance")):
            with transaction.atomic(using=connection.alias):
                cursor.execute(
                    "UPDATE archive_instance SET migrated = %s WHERE id > %s AND id <= %s AND migrated = %s "
                    "AND NOT EXISTS (SELECT 1 FROM archive_copy c WHERE c.instance_id = archive_instance.id "
                    "AND c.tier LIKE %s AND c.verified_at IS NOT NULL)",
                    [False, low, high, True, "longterm:%"],
                )
        for low, high in list(_ranges(cursor, "archive_copy")):
            with transaction.atomic(using=connection.alias):
                cursor.execute(
                    "UPDATE archive_copy SET instance_received_at = i.received_at FROM archive_instance i "
                    "WHERE i.id = archive_copy.instance_id AND archive_copy.id > %s AND archive_copy.id <= %s "
                    "AND archive_copy.tier LIKE %s AND archive_copy.instance_received_at IS NULL",
                    [low, high, "facility:%"],
                )


def _catalogue(schema_editor, sql, params):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _briefly(schema_editor, sql):
    """A change of the catalogue under ACCESS EXCLUSIVE, never queued for longer than _LOCK_TIMEOUT."""
    if schema_editor.collect_sql:  # sqlmigrate
        schema_editor.execute(sql, params=None)
        return
    _briefly_run(
        schema_editor, lambda: schema_editor.execute(sql, params=None), "archive_copy", "adding the constraint"
    )


def _briefly_run(schema_editor, change, tables, what):
    """``change()`` in one transaction whose locks are never queued for longer than _LOCK_TIMEOUT:
    on PostgreSQL's lock_not_available the transaction is rolled back and tried again every second."""
    told = False
    while True:
        try:
            with transaction.atomic(using=schema_editor.connection.alias):
                schema_editor.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'", params=None)
                change()
            return
        except OperationalError as error:
            if getattr(error.__cause__, "sqlstate", None) != "55P03":  # lock_not_available
                raise
        if not told:
            sys.stderr.write(
                f"A transaction open on {tables} for more than {_LOCK_TIMEOUT} (pg_stat_activity):"
                f" {what} again every second.\n"
            )
            told = True
        time.sleep(1)


class Briefly(Operation):
    """``operations`` (changes of tables' columns) as one: on PostgreSQL in one transaction,
    its locks never queued for longer than _LOCK_TIMEOUT (:func:`_briefly_run`), and nothing
    done when ``done`` (a table and a column the last of them adds) is there already: the
    migration is not atomic, so a crash after this transaction and before the migration is
    recorded leaves the columns made, and the next run goes on from there.
    Other databases run the operations as they are."""

    reversible = True

    def __init__(self, operations, done):
        self.operations = operations
        self.done = done

    def state_forwards(self, app_label, state):
        for operation in self.operations:
            operation.state_forwards(app_label, state)

    def _steps(self, app_label, from_state):
        state, steps = from_state, []
        for operation in self.operations:
            after = state.clone()
            operation.state_forwards(app_label, after)
            steps.append((operation, state, after))
            state = after
        return steps

    def _made(self, schema_editor):
        table, column = self.done
        with schema_editor.connection.cursor() as cursor:
            return column in {
                c.name for c in schema_editor.connection.introspection.get_table_description(cursor, table)
            }

    def _run(self, schema_editor, change, tables):
        if schema_editor.connection.vendor != "postgresql" or schema_editor.collect_sql:
            change()
        else:
            _briefly_run(schema_editor, change, tables, "changing its columns")

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not schema_editor.collect_sql and self._made(schema_editor):
            return
        steps = self._steps(app_label, from_state)

        def change():
            for operation, before, after in steps:
                operation.database_forwards(app_label, schema_editor, before, after)

        self._run(schema_editor, change, self._tables(app_label))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if not schema_editor.collect_sql and not self._made(schema_editor):
            return
        steps = self._steps(app_label, to_state)

        def change():
            for operation, before, after in reversed(steps):
                operation.database_backwards(app_label, schema_editor, after, before)

        self._run(schema_editor, change, self._tables(app_label))

    def _tables(self, app_label):
        return " and ".join(sorted({f"{app_label}_{operation.model_name_lower}" for operation in self.operations}))

    def describe(self):
        return "; ".join(operation.describe() for operation in self.operations) + " (one transaction)"


def online(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return  # NotOnPostgreSQL: the plain operations
    Copy, Instance = apps.get_model("archive", "Copy"), apps.get_model("archive", "Instance")
    table, name = Copy._meta.db_table, RECEIVED_AT.name
    if schema_editor.collect_sql or not _catalogue(
        schema_editor, "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s", [table, name]
    ):
        _briefly(schema_editor, f"{RECEIVED_AT.create_sql(Copy, schema_editor)} NOT VALID")
    quote = schema_editor.quote_name
    schema_editor.execute(f"ALTER TABLE {quote(table)} VALIDATE CONSTRAINT {quote(name)}", params=None)
    for model, index in ((Instance, TO_MIGRATE), (Copy, BY_RECEIVED)):
        if not schema_editor.collect_sql and _catalogue(
            schema_editor, "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [index.name]
        ) == (True,):
            # A concurrent build that failed half-way leaves an invalid index behind, which IF NOT EXISTS would keep.
            schema_editor.remove_index(model, index, concurrently=True)
        sql = str(index.create_sql(model, schema_editor, concurrently=True))
        schema_editor.execute(
            sql.replace("CREATE INDEX CONCURRENTLY ", "CREATE INDEX CONCURRENTLY IF NOT EXISTS ", 1), params=None
        )


def online_reverse(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    Copy, Instance = apps.get_model("archive", "Copy"), apps.get_model("archive", "Instance")
    for model, index in ((Copy, BY_RECEIVED), (Instance, TO_MIGRATE)):
        schema_editor.remove_index(model, index, concurrently=True)  # DROP INDEX CONCURRENTLY IF EXISTS
    _briefly(schema_editor, str(RECEIVED_AT.remove_sql(Copy, schema_editor)))


class NotOnPostgreSQL(Operation):
    """An operation's change of the database on the other databases (on PostgreSQL ``online`` makes it).

    Not a RunPython: SQLite adds a CHECK by rebuilding the table from the model's state, and a
    RunPython's historical models are those of the state before the constraint."""

    reversible = True

    def __init__(self, operation):
        self.operation = operation

    def state_forwards(self, app_label, state):
        self.operation.state_forwards(app_label, state)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            self.operation.database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            self.operation.database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self):
        return f"{self.operation.describe()} (not on PostgreSQL)"


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("archive", "0025_dose_register"),
    ]

    operations = [
        Briefly(
            [
                # True for the rows there (without writing them), false for the rows to come.
                migrations.AddField(
                    model_name="instance",
                    name="migrated",
                    field=models.BooleanField(db_default=True, verbose_name="nell'archivio a lungo termine"),
                ),
                migrations.AlterField(
                    model_name="instance",
                    name="migrated",
                    field=models.BooleanField(
                        default=False, db_default=False, verbose_name="nell'archivio a lungo termine"
                    ),
                ),
                migrations.AddField(
                    model_name="copy",
                    name="instance_received_at",
                    field=models.DateTimeField(blank=True, null=True, verbose_name="istanza ricevuta il"),
                ),
            ],
            done=("archive_copy", "instance_received_at"),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop, elidable=True),
        migrations.SeparateDatabaseAndState(
            state_operations=WORK,
            database_operations=[
                migrations.RunPython(online, online_reverse),
                *(NotOnPostgreSQL(operation) for operation in WORK),
            ],
        ),
    ]
