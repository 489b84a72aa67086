"""The audit log's models move to the kernel app (``kernel.models``): state only.

The tables (``archive_auditevent``, ``archive_auditeventpatient``), their
indexes, constraints and the triggers of 0002 and 0012 stay as they are: no
statement runs here. ``kernel`` 0001 takes the models into its state and moves
their content types (and so their permissions) to the kernel.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0014_copy_failures_alert_count"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="AuditEventPatient"),
                migrations.DeleteModel(name="AuditEvent"),
            ],
            database_operations=[],
        ),
    ]
