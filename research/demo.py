"""The research exports' part of the demo: a researcher, the data-protection officer, one project.

The accounts' passwords join the demo's others (``archive.demo``'s credentials
file, printed by ``demo_info``).
"""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction

from archive import demo

from . import services
from .models import DPO_GROUP, ExportProject

RESEARCH_GROUP = "Didattica e ricerca"
ACCOUNTS = [
    # username, first name, last name, group, and archive.view_study (the researcher sees studies)
    ("ricercatrice", "Elena", "Furlan", RESEARCH_GROUP, True),
    ("dpo", "Marco", "Bressan", DPO_GROUP, False),
]


def demo_load() -> None:
    User = get_user_model()
    creds = demo.demo_credentials()
    view_study = Permission.objects.get(content_type__app_label="archive", codename="view_study")
    with transaction.atomic():
        for username, first, last, group_name, sees_studies in ACCOUNTS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"first_name": first, "last_name": last, "is_staff": True}
            )
            user.groups.add(Group.objects.get(name=group_name))  # made by research's migration 0002
            if sees_studies:
                user.user_permissions.add(view_study)
            if created or username not in creds:
                creds[username] = secrets.token_urlsafe(12)
                user.set_password(creds[username])
                user.save()
        if not ExportProject.objects.filter(code="DID-TORACE").exists():
            services.project_create(
                user=User.objects.get(username="ricercatrice"),
                code="DID-TORACE",
                title="Casi di TC del torace per il corso di radiologia",
                purpose="Didattica: casi anonimi per le esercitazioni degli specializzandi.",
                retain_dates_modified=True,
                retain_patient_characteristics=True,
                clean_descriptors=True,
            )
    demo._save_credentials(creds)  # the one credentials file of the demo (archive.demo), 0600
