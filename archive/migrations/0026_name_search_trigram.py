"""A trigram index on the patient name's search key (PostgreSQL only): C-FIND and QIDO-RS
values with a wildcard inside (``*OSS*^MA*``, the database's ``LIKE '%oss%^ma%'``)
and QIDO-RS ``fuzzymatching`` on names (``LIKE '%oss%'``) read it instead of every
study's name.

The B-tree indexes of the search column answer an exact value or a literal
beginning (``ROSSI^MA*``) only. ``pg_trgm``'s GIN operator class answers LIKE with
any wildcards, for the pattern the engine already sends (``archive.query.DicomMatch``:
the column as text, ``LIKE`` with ``ESCAPE '\\'``, case-sensitive on the key, which is
already folded); the rows it proposes are checked against the pattern again, so the
answers are the same. A pattern with no run of three literal characters (``*A*^M*``)
gives the index nothing to look up; the planner then reads the study date index as
before.

``fastupdate`` is off: ingestion rewrites the study's row on every instance
(counters, ``last_received_at``), and with the pending list on every such write
adds to a list that each query reads whole, until a write or autovacuum pays for
merging it. Off, each write puts its trigrams in the index at once (measured with
ingestion's own statements, bench/query/README.md).

``CREATE EXTENSION pg_trgm`` needs a superuser or, since PostgreSQL 13 (it is a
trusted extension), a role with CREATE on the database: the owner who runs
``migrate`` (README, "The database role"). When it is there already (a superuser
created it), nothing more is asked. Going back drops the index and leaves the
extension: other objects may use it, and dropping it needs its owner.

Not in the model's state (``Meta.indexes``), as 0004 did for its expression
indexes: SQLite has no GIN, and it rebuilds a table with every index of the state
when a later migration alters a column.
"""

from django.db import migrations

INDEX = "study_patient_name_search_trgm"


def trigram_index_create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    schema_editor.execute(
        f'CREATE INDEX IF NOT EXISTS {INDEX} ON archive_study USING gin ("patient_name_search" gin_trgm_ops) '
        "WITH (fastupdate = off)"
    )


def trigram_index_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("archive", "0025_dose_register")]

    operations = [migrations.RunPython(trigram_index_create, trigram_index_drop)]
