"""Emergency accesses are asked for a patient, by holders of portal.emergency_access.

The rows recorded per study get that study's patient.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _patient_from_study(apps, schema_editor):
    EmergencyAccess = apps.get_model("portal", "EmergencyAccess")
    for row in EmergencyAccess.objects.filter(patient__isnull=True).select_related("study"):
        row.patient_id = row.study.patient_id
        row.save(update_fields=["patient"])


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0011_remotenode_trust"),
        ("portal", "0003_package_without_zip_hash"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="emergencyaccess",
            options={
                "ordering": ["-at"],
                "permissions": [("emergency_access", "Può chiedere un accesso in emergenza (solo personale clinico)")],
                "verbose_name": "accesso in emergenza",
                "verbose_name_plural": "accessi in emergenza",
            },
        ),
        migrations.AddField(
            model_name="emergencyaccess",
            name="patient",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="emergency_accesses",
                to="archive.patient",
                verbose_name="paziente",
            ),
        ),
        migrations.RunPython(_patient_from_study, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="emergencyaccess",
            name="patient",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="emergency_accesses",
                to="archive.patient",
                verbose_name="paziente",
            ),
        ),
        migrations.AlterField(
            model_name="emergencyaccess",
            name="study",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="emergency_accesses",
                to="archive.study",
                verbose_name="studio",
            ),
        ),
        migrations.AddIndex(
            model_name="emergencyaccess",
            index=models.Index(fields=["user", "at"], name="emergency_by_user"),
        ),
    ]
