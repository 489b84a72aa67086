"""The giornale is append-only in the database itself (as archive's audit log),
and the retention table starts with the classes the law sets.

PostgreSQL refuses UPDATE and DELETE on the giornale; SQLite refuses UPDATE
(it cannot tell a test's table flush from tampering, so a deleted row there
shows only as a break in the hash chain).
"""

from __future__ import annotations

from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION preservation_journalentry_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'preservation_journalentry is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER preservation_journalentry_no_update BEFORE UPDATE OR DELETE ON preservation_journalentry
    FOR EACH ROW EXECUTE FUNCTION preservation_journalentry_append_only();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS preservation_journalentry_no_update ON preservation_journalentry;
DROP FUNCTION IF EXISTS preservation_journalentry_append_only();
"""
SQLITE_FORWARD = """
CREATE TRIGGER preservation_journalentry_no_update BEFORE UPDATE ON preservation_journalentry
BEGIN
    SELECT RAISE(ABORT, 'preservation_journalentry is append-only (UPDATE refused)');
END;
"""
SQLITE_BACKWARD = "DROP TRIGGER IF EXISTS preservation_journalentry_no_update;"

RETENTION = [
    (
        "REFERTI",
        "Referti e documentazione clinica",
        "report",
        None,
        "Circolare del Ministero della Sanità 900.2/2.7/190 del 19 dicembre 1986: senza limite di tempo",
    ),
    (
        "IMMAGINI",
        "Immagini diagnostiche",
        "image",
        10,
        "DM 14 febbraio 1997: almeno dieci anni",
    ),
    (
        "METADATI",
        "Metadati e indici dei pacchetti",
        "metadata",
        None,
        "Seguono il documento più longevo del pacchetto (il referto): senza limite di tempo",
    ),
]


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FORWARD, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_FORWARD)
    RetentionClass = apps.get_model("preservation", "RetentionClass")
    for code, name, doc_type, years, basis in RETENTION:
        RetentionClass.objects.get_or_create(
            code=code, defaults={"name": name, "document_type": doc_type, "years": years, "legal_basis": basis}
        )


def backward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_BACKWARD, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("preservation", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
