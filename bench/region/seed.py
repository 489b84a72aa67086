"""The region in a box's starting rows: run by ``harness.py`` in a process of its own
(``python -m bench.region.seed``) against the fresh database, after ``migrate``.

Three facilities of one health authority, each with its own AE title; the
modalities registered as storage nodes of their facility (the listener refuses
unknown calling AE titles, as production does); a reader with an API token for
the downloads; and the audit key, generated once here so that the processes
started next share it instead of racing to make it. Prints one JSON line:
``{"token": ...}``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

# (code, name, AE title): the facilities the region's three listeners serve, one each.
FACILITIES = (
    ("TS-CAT", "Ospedale di Cattinara", "TSCAT_PACS"),
    ("GO-SG", "Ospedale di Gorizia", "GORIZIA_PACS"),
    ("MON-SP", "Ospedale di Monfalcone", "MONFAL_PACS"),
)
READER_PERMISSIONS = ("archive.view_study", "archive.view_instance")


def modality_ae(index: int) -> str:
    return f"MOD{index + 1:02d}"


def seed(*, modalities: int) -> dict[str, str]:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from knox.models import AuthToken

    from archive.models import Facility, HealthAuthority, RemoteNode
    from kernel.audit import audit_key

    audit_key()
    authority = HealthAuthority.objects.create(code="ASUGI", name="Azienda sanitaria universitaria Giuliano Isontina")
    facilities = [
        Facility.objects.create(code=code, name=name, authority=authority, ae_title=ae, dicom_port=11112)
        for code, name, ae in FACILITIES
    ]
    for i in range(modalities):
        RemoteNode.objects.create(
            facility=facilities[i % len(facilities)],
            ae_title=modality_ae(i),
            host="127.0.0.1",
            port=104,
            can_store=True,
        )
    user = get_user_model().objects.create_user(username="region-reader", password=os.urandom(16).hex(), is_staff=True)
    for perm in READER_PERMISSIONS:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    _token, key = AuthToken.objects.create(user=user)
    return {"token": key}


if __name__ == "__main__":
    print(json.dumps(seed(modalities=int(sys.argv[1]))))
