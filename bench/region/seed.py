"""The region in a box's starting rows: run by ``harness.py`` in a process of its own
(``python -m bench.region.seed``) against the fresh database, after ``migrate``.

Three facilities of one health authority, each with its own AE title; the
modalities registered as storage nodes of their facility (the listener refuses
unknown calling AE titles, as production does); a reader with an API token for
the downloads; the CUP's catalogue and rooms (``booking.demo.demo_load``); the
citizens, each with a portal login (codice fiscale and password) and one exam
whose study (``--images`` CT images, fresh UIDs) is imported into its
facility's tier here, before any other process starts, and whose booking is
reported, its report signed and published on line (``bench/portal/citizen.py``,
as the portal benchmarks make theirs); and the audit key, generated once here
so that the processes started next share it instead of racing to make it.
Prints one JSON line: ``{"token": ..., "citizens": [{"codice_fiscale", "password",
"booking", "study_uid", "facility"}, ...]}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

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
CITIZEN_PASSWORD = "region-Fse-2026"  # every citizen's; the box's own database, dropped at the end


def modality_ae(index: int) -> str:
    return f"MOD{index + 1:02d}"


def citizen_person(index: int) -> tuple[str, str, str, dt.date, str]:
    """The ``index``-th citizen: (family, given, sex, birth date, birthplace), distinct codici fiscali."""
    from bench.query.generate import BIRTHPLACES, FEMALE_NAMES, MALE_NAMES, SURNAMES

    sex = "MF"[index % 2]
    given = (MALE_NAMES if sex == "M" else FEMALE_NAMES)[index % 20]
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=397 * index)
    return SURNAMES[index % len(SURNAMES)], given, sex, birth, BIRTHPLACES[index % len(BIRTHPLACES)]


def citizens_seed(*, citizens: int, images: int) -> list[dict[str, Any]]:
    """The citizens, each with an exam on line whose study is imported now (see the module docstring)."""
    from django.core.management import call_command
    from django.utils import timezone

    from archive import sample_data
    from archive.models import Study
    from bench.portal.citizen import booking_ensure, citizen_ensure
    from booking.demo import demo_load

    demo_load()  # the catalogue, the consent text, each facility's rooms (no demo patients here: no bookings)
    year_ago = timezone.now().replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=365)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pacs-region-seed-") as tmp:
        for i in range(citizens):
            person = citizen_person(i)
            family, given, sex, birth, _place = person
            patient, cf = citizen_ensure(person, password=CITIZEN_PASSWORD)
            code = FACILITIES[i % len(FACILITIES)][0]
            accession = f"CIT{i + 1:06d}"
            folder = Path(tmp) / accession
            sample_data.write_study(
                folder,
                patient=sample_data.PatientInfo(
                    patient_id=cf, name=f"{family}^{given}", birth_date=birth.strftime("%Y%m%d"), sex=sex
                ),
                source=sample_data.CT,
                instances_per_series=images,
                accession_number=accession,
                study_description="TC torace (region in a box)",
            )
            # Its summary kept off stdout, whose last line is this seed's answer; a rejected file raises.
            call_command("import_dicom", str(folder), facility=code, no_progress=True, stdout=io.StringIO())
            study = Study.objects.get(accession_number=accession, facility__code=code)
            booking = booking_ensure(
                study, patient, accession=accession, scheduled_at=year_ago - dt.timedelta(hours=i), by="bench/region"
            )
            rows.append(
                {
                    "codice_fiscale": cf,
                    "password": CITIZEN_PASSWORD,
                    "booking": booking.pk,
                    "study_uid": study.study_instance_uid,
                    "facility": code,
                }
            )
    return rows


def seed(*, modalities: int, citizens: int = 0, images: int = 4) -> dict[str, Any]:
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
    return {"token": key, "citizens": citizens_seed(citizens=citizens, images=images)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modalities", type=int)
    parser.add_argument("--citizens", type=int, default=0)
    parser.add_argument("--images", type=int, default=4, help="images in each citizen's study")
    args = parser.parse_args()
    print(json.dumps(seed(modalities=args.modalities, citizens=args.citizens, images=args.images)))
