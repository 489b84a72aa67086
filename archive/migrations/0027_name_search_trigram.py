"""A trigram index on the patient name's search key (PostgreSQL only): C-FIND and QIDO-RS
values with a wildcard inside (``*OSS*^MA*``, the database's ``LIKE '%oss%^ma%'``)
and QIDO-RS ``fuzzymatching`` on names (``LIKE '%oss%'``) read it instead of every
study's name.

The B-tree indexes of the search column answer an exact value or a literal
beginning (``ROSSI^MA*``) only. ``pg_trgm``'s GIN operator class answers LIKE with
any wildcards, for the pattern the engine already sends (``archive.query.DicomMatch``:
the column as text, ``LIKE`` with ``ESCAPE '\\'``, case-sensitive on the key, which is
already folded); the rows it proposes are checked against the pattern again, so the
answers are the same. A pattern whose literal parts are too short or too common to
narrow the names (``*A*^M*``) is costed as such, and the planner reads the study
date index as before.

``fastupdate`` is off: ingestion rewrites the study's row on every instance
(counters, ``last_received_at``), and with the pending list on every such write
adds to a list that each query reads whole, until a write or autovacuum pays for
merging it. Off, each write puts its trigrams in the index at once: about 0.1 ms of
the database's CPU per image (README, "A trigram index for wildcards inside a name").

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
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [INDEX])
        row = cursor.fetchone()
    if row is not None and not row[0]:
        # A concurrent build that failed half-way leaves an invalid index behind,
        # which IF NOT EXISTS would keep.
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON archive_study "
        'USING gin ("patient_name_search" gin_trgm_ops) WITH (fastupdate = off)'
    )


def trigram_index_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY runs outside a transaction, and ingestion goes on
    # writing studies while it does (a plain CREATE INDEX would hold their writes for
    # the whole build: seconds at 100,000 studies, minutes at the region's millions).
    atomic = False
    dependencies = [("archive", "0026_lifecycle_work_indexes")]

    operations = [migrations.RunPython(trigram_index_create, trigram_index_drop)]
