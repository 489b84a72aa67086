"""The two roles of the research exports, as groups an administrator gives to people.

"Responsabile protezione dati" (the DPO) reads the key table and the projects'
secrets (``research.view_pseudonymkey``, ``research.view_projectsecret``) and
the projects and exports; nobody else but a superuser does. "Didattica e
ricerca" creates projects and requests exports; it sees studies only with
``archive.view_study`` and through the access policy, given separately.
"""

from django.db import migrations

GROUPS = {
    "Responsabile protezione dati": [
        ("pseudonymkey", "view_pseudonymkey"),
        ("projectsecret", "view_projectsecret"),
        ("exportproject", "view_exportproject"),
        ("export", "view_export"),
    ],
    "Didattica e ricerca": [
        ("exportproject", "view_exportproject"),
        ("exportproject", "add_exportproject"),
        ("export", "view_export"),
        ("export", "add_export"),
    ],
}
NAMES = {"view": "Can view", "add": "Can add"}


def _groups_create(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        for model, codename in perms:
            content_type, _ = ContentType.objects.get_or_create(app_label="research", model=model)
            permission, _ = Permission.objects.get_or_create(
                content_type=content_type,
                codename=codename,
                defaults={"name": f"{NAMES[codename.split('_')[0]]} {model}"},
            )
            group.permissions.add(permission)


def _groups_remove(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("research", "0001_initial"),
    ]

    operations = [migrations.RunPython(_groups_create, _groups_remove)]
