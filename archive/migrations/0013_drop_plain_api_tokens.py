"""Drop DRF's plain API tokens (``authtoken_token``): they were stored in clear, so
every copy of the database disclosed them. They are not converted into the hashed,
expiring tokens (django-rest-knox) that replace them: clients ask for a new one
at ``POST /api/token/``."""

from __future__ import annotations

from django.db import migrations


def forget_authtoken(apps, schema_editor) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    # Their permissions go with them (cascade): no group can be given "add token" any more.
    ContentType.objects.filter(app_label="authtoken").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0012_audit_chains"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunSQL("DROP TABLE IF EXISTS authtoken_token", reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL("DELETE FROM django_migrations WHERE app = 'authtoken'", reverse_sql=migrations.RunSQL.noop),
        migrations.RunPython(forget_authtoken, migrations.RunPython.noop),
    ]
