"""An index on the signing time of signed report versions.

The follow-up sweeps (the Encapsulated PDF, the booking *refertato*, the
portal's publication) look for the versions signed between the horizon and
the grace period ago; without it each run would read every signed report.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0015_audit_models_to_kernel"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="report",
            index=models.Index(
                condition=models.Q(("status", "signed")), fields=["signed_at"], name="report_signed_at"
            ),
        ),
    ]
