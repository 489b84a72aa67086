"""Person-name search keys (issue 19): PN matching without case or accents, the same
on SQLite and PostgreSQL (``archive.person_names``).

Adds the indexed search columns, fills them for the rows already there, and on
PostgreSQL drops the ``UPPER(name)`` expression indexes of 0004, which nothing
reads any more (PN keys match the search columns), and gives the search columns
the finer statistics 0005 gave those indexes, for the same reason: a rare
surname prefix must not send a query with a limit down the date index. (The
new target takes effect at the next ANALYZE, which autovacuum runs after the
fill's updates; an ANALYZE here, in the migration's transaction, would still
sample with the old one.)
"""

from django.db import migrations, models

from archive.person_names import pn_search_key

_BATCH = 2000

_OLD_PG_INDEXES = [
    ("study_patient_name_upper", "archive_study", "patient_name"),
    ("study_referring_upper", "archive_study", "referring_physician_name"),
]
_SEARCH_COLUMNS = ("patient_name_search", "referring_physician_name_search")


def _batches(queryset, fields):
    last = 0
    while True:
        rows = list(queryset.filter(pk__gt=last).order_by("pk").only("pk", *fields)[:_BATCH])
        if not rows:
            return
        yield rows
        last = rows[-1].pk


def fill_search_keys(apps, schema_editor):
    db = schema_editor.connection.alias
    Study = apps.get_model("archive", "Study")
    Patient = apps.get_model("archive", "Patient")
    for rows in _batches(Study.objects.using(db), ["patient_name", "referring_physician_name"]):
        for study in rows:
            study.patient_name_search = pn_search_key(study.patient_name)
            study.referring_physician_name_search = pn_search_key(study.referring_physician_name)
        Study.objects.using(db).bulk_update(rows, list(_SEARCH_COLUMNS))
    for rows in _batches(Patient.objects.using(db), ["family_name", "given_name"]):
        for patient in rows:
            patient.name_search = pn_search_key(f"{patient.family_name}^{patient.given_name}")
        Patient.objects.using(db).bulk_update(rows, ["name_search"])


def pg_indexes_switch(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _table, _column in _OLD_PG_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
    for column in _SEARCH_COLUMNS:
        schema_editor.execute(f'ALTER TABLE archive_study ALTER COLUMN "{column}" SET STATISTICS 1000')


def pg_indexes_back(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table, column in _OLD_PG_INDEXES:
        schema_editor.execute(
            f'CREATE INDEX IF NOT EXISTS {name} ON {table} ((UPPER("{column}"::text)) text_pattern_ops)'
        )
        schema_editor.execute(f"ALTER INDEX {name} ALTER COLUMN 1 SET STATISTICS 1000")


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0021_mpps"),
    ]

    operations = [
        migrations.AddField(
            model_name="patient",
            name="name_search",
            field=models.CharField(blank=True, db_index=True, editable=False, max_length=512),
        ),
        migrations.AddField(
            model_name="study",
            name="patient_name_search",
            field=models.CharField(blank=True, db_index=True, editable=False, max_length=512),
        ),
        migrations.AddField(
            model_name="study",
            name="referring_physician_name_search",
            field=models.CharField(blank=True, db_index=True, editable=False, max_length=512),
        ),
        migrations.RunPython(fill_search_keys, migrations.RunPython.noop),
        migrations.RunPython(pg_indexes_switch, pg_indexes_back),
    ]
