"""Indexes for query/retrieve (C-FIND, QIDO-RS)."""

from django.db import migrations, models

# Names match case-insensitively (PS3.4 C.2.2.2.1 allows it): Django's
# ``istartswith`` on PostgreSQL is ``UPPER(col::text) LIKE UPPER('ROSS%')``,
# which only an expression index with text_pattern_ops answers without a
# scan. SQLite has no such index; its LIKE is case-insensitive anyway.
_PG_NAME_INDEXES = [
    ("study_patient_name_upper", "archive_study", "patient_name"),
    ("study_referring_upper", "archive_study", "referring_physician_name"),
]


def create_pg_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table, column in _PG_NAME_INDEXES:
        schema_editor.execute(
            f'CREATE INDEX IF NOT EXISTS {name} ON {table} ((UPPER("{column}"::text)) text_pattern_ops)'
        )


def drop_pg_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _table, _column in _PG_NAME_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0003_italian_labels"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="study",
            index=models.Index(fields=["study_date", "id"], name="study_date_id"),
        ),
        migrations.RunPython(create_pg_indexes, drop_pg_indexes),
    ]
