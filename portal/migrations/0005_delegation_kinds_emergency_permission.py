"""Delegations: the guardian and the administrator of support become two kinds.

The old kind "tutore" meant "tutore o amministratore di sostegno". Its rows
become "amministratore di sostegno", the kind with fewer powers (it does not
revoke the consent in the delegator's name): which one a row was cannot be
told from the data, and a real guardian losing a power is put right at the
desk, while an administrator gaining one would take a choice from a person
who can make it. The desk registers a real guardian again as "tutore".

The demo's radiologists ("Radiologi") get ``portal.emergency_access``, the
permission migration 0004 created; archivists, the CUP and the preservation
officer do not.
"""

from django.db import migrations, models

EMERGENCY_GROUPS = ("Radiologi",)


def _guardian_to_support(apps, schema_editor):
    Delegation = apps.get_model("portal", "Delegation")
    Delegation.objects.filter(kind="tutore").update(kind="sostegno")


def _support_to_guardian(apps, schema_editor):
    Delegation = apps.get_model("portal", "Delegation")
    Delegation.objects.filter(kind="sostegno").update(kind="tutore")


def _grant_emergency_access(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    groups = list(Group.objects.filter(name__in=EMERGENCY_GROUPS))
    if not groups:
        return  # no demo loaded: the permission is created after migrating, given by an administrator
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    content_type, _ = ContentType.objects.get_or_create(app_label="portal", model="emergencyaccess")
    permission, _ = Permission.objects.get_or_create(
        content_type=content_type,
        codename="emergency_access",
        defaults={"name": "Può chiedere un accesso in emergenza (solo personale clinico)"},
    )
    for group in groups:
        group.permissions.add(permission)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("portal", "0004_emergency_access_per_patient"),
    ]

    operations = [
        migrations.AlterField(
            model_name="delegation",
            name="kind",
            field=models.CharField(
                choices=[
                    ("genitore", "genitore di un minore"),
                    ("tutore", "tutore (minore senza genitori o persona interdetta)"),
                    ("sostegno", "amministratore di sostegno"),
                    ("altro", "altro delegato (consultazione e download)"),
                ],
                max_length=16,
                verbose_name="tipo",
            ),
        ),
        migrations.RunPython(_guardian_to_support, _support_to_guardian),
        migrations.RunPython(_grant_emergency_access, migrations.RunPython.noop),
    ]
