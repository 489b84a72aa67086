"""The portal's part of the demo: a login for every demo patient with a codice fiscale.

Passwords are generated the first time and kept with the staff's in
``var/demo-credentials.json`` (under the codice fiscale); ``demo_info`` prints
them. Safe to run again.
"""

from __future__ import annotations

from archive import demo as archive_demo
from archive.models import Facility, Patient

from .accounts import citizen_account_create, demo_password
from .models import CdPickup, CitizenAccount

# Where each demo facility hands over the CD of an exam delivered on CD (portal.exams.cd_pickup).
CD_PICKUP = {
    "TS-CAT": ("Sportello ritiro referti, piano terra, ingresso principale", "dal lunedì al venerdì, 8–13", 1),
    "UD-SMM": ("Sportello referti della Radiologia, padiglione 1, piano terra", "dal lunedì al venerdì, 8–15", 1),
    "GO-SG": ("Sportello unico referti, atrio principale", "dal lunedì al venerdì, 8–13", 1),
    "PN-SMA": ("Ufficio cartelle cliniche e referti, piano terra", "dal lunedì al sabato, 8–12", 2),
}


def cd_pickup_demo_load() -> None:
    for code, (place, hours, days) in CD_PICKUP.items():
        facility = Facility.objects.filter(code=code).first()
        if facility is not None:
            CdPickup.objects.get_or_create(
                facility=facility, defaults={"place": place, "hours": hours, "days_after_signing": days}
            )


def demo_load() -> None:
    cd_pickup_demo_load()
    creds = archive_demo.demo_credentials()
    changed = False
    for person in archive_demo.PATIENTS:
        cf = person.codice_fiscale
        if not cf or not Patient.objects.filter(codice_fiscale=cf).exists():
            continue
        account = CitizenAccount.objects.filter(codice_fiscale=cf).select_related("user").first()
        password = creds.get(cf) or demo_password()
        if account is None:
            citizen_account_create(codice_fiscale=cf, password=password)
        elif not account.user.check_password(password):
            account.user.set_password(password)
            account.user.save(update_fields=["password"])
        if creds.get(cf) != password:
            creds[cf] = password
            changed = True
    if changed:
        archive_demo._save_credentials(creds)
