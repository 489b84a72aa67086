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

Both are set-based SQL over ranges of primary keys, each range in its own
transaction (the migration is not atomic: on PostgreSQL one transaction over
the whole table would hold its locks and every dead row until the end). Run
again after a crash, the fill does what is still missing.
"""

from django.db import migrations, models, transaction

_BATCH = 50_000


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


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("archive", "0025_dose_register"),
    ]

    operations = [
        # True for the rows there (without writing them), false for the rows to come.
        migrations.AddField(
            model_name="instance",
            name="migrated",
            field=models.BooleanField(db_default=True, verbose_name="nell'archivio a lungo termine"),
        ),
        migrations.AlterField(
            model_name="instance",
            name="migrated",
            field=models.BooleanField(default=False, db_default=False, verbose_name="nell'archivio a lungo termine"),
        ),
        migrations.AddField(
            model_name="copy",
            name="instance_received_at",
            field=models.DateTimeField(blank=True, null=True, verbose_name="istanza ricevuta il"),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name="copy",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("tier__startswith", "facility:"), _negated=True),
                    ("instance_received_at__isnull", False),
                    _connector="OR",
                ),
                name="copy_facility_received_at",
            ),
        ),
        migrations.AddIndex(
            model_name="instance",
            index=models.Index(
                condition=models.Q(("migrated", False)),
                fields=["received_at", "id"],
                name="instance_to_migrate",
            ),
        ),
        migrations.AddIndex(
            model_name="copy",
            index=models.Index(
                condition=models.Q(("tier__startswith", "facility:")),
                fields=["instance_received_at", "id"],
                name="copy_facility_by_received",
            ),
        ),
    ]
