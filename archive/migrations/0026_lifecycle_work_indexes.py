"""The lifecycle's work to do in indexes (docs/CAPACITY.md, "the lifecycle's two selections").

``Instance.migrated_at`` is set while an instance has a verified long-term
copy, and a partial index holds the instances where it is NULL (still to
migrate); ``Copy.instance_received_at`` carries the instance's received time
so that a partial index of the facility copies (deleted when evicted) gives
them in received order. Each batch of the lifecycle is then a range scan of
the rows still due, whatever the archive's age.

The fill is set-based SQL over ranges of primary keys, each range in its own
transaction (the migration is not atomic: on PostgreSQL a hundred million
rows in one transaction would hold every lock and all the dead rows until
the end). Run again after a crash, it fills what is still missing.
"""

from django.db import migrations, models, transaction

_BATCH = 50_000
_LONGTERM = "longterm:%"


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
                    "UPDATE archive_instance SET migrated_at = lt.since FROM ("
                    " SELECT instance_id, MIN(created_at) AS since FROM archive_copy"
                    " WHERE instance_id > %s AND instance_id <= %s AND tier LIKE %s AND verified_at IS NOT NULL"
                    " GROUP BY instance_id) AS lt "
                    "WHERE archive_instance.id = lt.instance_id AND archive_instance.migrated_at IS NULL",
                    [low, high, _LONGTERM],
                )
        for low, high in list(_ranges(cursor, "archive_copy")):
            with transaction.atomic(using=connection.alias):
                cursor.execute(
                    "UPDATE archive_copy SET instance_received_at = i.received_at FROM archive_instance i "
                    "WHERE i.id = archive_copy.instance_id AND archive_copy.id > %s AND archive_copy.id <= %s "
                    "AND archive_copy.instance_received_at IS NULL",
                    [low, high],
                )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("archive", "0025_dose_register"),
    ]

    operations = [
        migrations.AddField(
            model_name="instance",
            name="migrated_at",
            field=models.DateTimeField(blank=True, null=True, verbose_name="nell'archivio a lungo termine dal"),
        ),
        migrations.AddField(
            model_name="copy",
            name="instance_received_at",
            field=models.DateTimeField(null=True, verbose_name="istanza ricevuta il"),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="copy",
            name="instance_received_at",
            field=models.DateTimeField(verbose_name="istanza ricevuta il"),
        ),
        migrations.AddIndex(
            model_name="instance",
            index=models.Index(
                condition=models.Q(("migrated_at__isnull", True)),
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
