"""The demo region: Friuli Venezia Giulia's three health authorities, some of their
hospitals, a staff account for every role (the radiologists with their health
authority and a signing key and certificate from the demo's own CA), and studies
made from pydicom's bundle.

Loading is idempotent: the demo's UIDs are derived from fixed seeds, so a second
load finds every instance already archived, and the accounts keep the
passwords generated the first time (kept in ``var/demo-credentials.json``,
never committed).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Literal

from codicefiscale import codicefiscale
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from pydicom.uid import generate_uid

from kernel.audit import audit_record

from . import sample_data
from .ingest import IngestError, instance_ingest
from .models import Facility, HealthAuthority, Instance, RemoteNode, ReportPhrase, ReportTemplate, StaffProfile

logger = logging.getLogger(__name__)

AUTHORITIES = [
    ("ASUGI", "Azienda sanitaria universitaria Giuliano Isontina"),
    ("ASUFC", "Azienda sanitaria universitaria Friuli Centrale"),
    ("ASFO", "Azienda sanitaria Friuli Occidentale"),
]
# (authority, code, name, AE title)
FACILITIES = [
    ("ASUGI", "TS-CAT", "Ospedale di Cattinara, Trieste", "TSCAT_PACS"),
    ("ASUGI", "TS-MAG", "Ospedale Maggiore, Trieste", "TSMAG_PACS"),
    ("ASUGI", "GO-SG", "Ospedale San Giovanni di Dio, Gorizia", "GORIZIA_PACS"),
    ("ASUGI", "MO-SP", "Ospedale San Polo, Monfalcone", "MONFALC_PACS"),
    ("ASUFC", "UD-SMM", "Ospedale Santa Maria della Misericordia, Udine", "UDINE_PACS"),
    ("ASUFC", "SD-SA", "Ospedale Sant'Antonio, San Daniele del Friuli", "SANDANI_PACS"),
    ("ASUFC", "TO-SA", "Ospedale Sant'Antonio Abate, Tolmezzo", "TOLMEZZO_PACS"),
    ("ASFO", "PN-SMA", "Ospedale Santa Maria degli Angeli, Pordenone", "PORDENONE_PACS"),
    ("ASFO", "SV-SV", "Ospedale di San Vito al Tagliamento", "SANVITO_PACS"),
    ("ASFO", "SP-SP", "Ospedale di Spilimbergo", "SPILIMB_PACS"),
]
# Peers every demo facility knows: its modalities, a reporting workstation, and
# the AE titles DCMTK's tools use by default, so that a newcomer's first
# `storescu` works. All call from 127.0.0.1 (their host, no other address).
# Scopes: a node sees its own facility's studies (the default), except the
# reporting workstation, which reports for the whole health authority (its
# radiologists read the studies of every facility of the authority).
NODES: list[tuple[str, str, dict[str, Any]]] = [
    ("CT01", "Tomografo computerizzato", dict(can_store=True, can_worklist=True)),
    ("MR01", "Risonanza magnetica", dict(can_store=True, can_worklist=True)),
    ("US01", "Ecografo", dict(can_store=True, can_worklist=True)),
    ("NM01", "Gamma camera", dict(can_store=True, can_worklist=True)),
    (
        "RADWS",
        "Stazione di refertazione",
        dict(can_query=True, can_retrieve=True, is_retrieve_destination=True, scope=RemoteNode.Scope.AUTHORITY),
    ),
    ("STORESCU", "DCMTK storescu", dict(can_store=True)),
    ("DCMSEND", "DCMTK dcmsend", dict(can_store=True)),
    ("ECHOSCU", "DCMTK echoscu", dict(can_store=True)),
    ("FINDSCU", "DCMTK findscu", dict(can_query=True, can_worklist=True)),
    ("GETSCU", "DCMTK getscu", dict(can_query=True, can_retrieve=True)),
    # movescu receives its own C-MOVE on port 11120 (movescu +P 11120 -aem MOVESCU).
    ("MOVESCU", "DCMTK movescu", dict(can_query=True, can_retrieve=True, is_retrieve_destination=True, port=11120)),
]

# Roles: (group, permissions as "app.codename")
_VIEW_ARCHIVE = [f"archive.view_{m}" for m in ("patient", "patientidentifier", "study", "series", "instance", "copy")]
ROLES = {
    "Archivisti": [
        *_VIEW_ARCHIVE,
        "archive.view_healthauthority",
        "archive.view_facility",
        "archive.view_remotenode",
        "archive.add_remotenode",
        "archive.change_remotenode",
        "archive.view_instanceconflict",
        "archive.change_instanceconflict",
        "kernel.view_auditevent",
        "archive.change_patient",
        "archive.add_instance",  # STOW-RS
        # Studies that arrived without a matching booking: link, re-assign, reject.
        "booking.view_booking",
        "booking.view_reconciliation",
        "booking.reconcile_study",
        # The portal's rows in the admin, to answer a citizen who cannot log in or download.
        "portal.view_citizenaccount",
        "portal.view_downloadpackage",
    ],
    "Radiologi": [
        *_VIEW_ARCHIVE,
        "archive.view_report",
        "archive.add_report",
        "archive.change_report",
        "archive.sign_report",
        # Break-glass to a patient's hidden (oscurati) studies: clinicians only, never
        # archivists, the CUP or the preservation officer.
        "portal.emergency_access",
    ],
    "Operatori CUP": [
        "archive.view_patient",
        "archive.add_patient",
        "archive.view_facility",
        "booking.view_booking",
        "booking.add_booking",
        "booking.change_booking",
        "booking.view_procedure",
        "booking.view_station",
        "portal.add_delegation",  # the delegations desk (/fse/sportello/deleghe/)
        "portal.change_delegation",
        "portal.view_cdmedium",  # the CDs to burn (/cup/cd/): download and "consegnato"
        "portal.deliver_cdmedium",
    ],
    # An external CUP system that books through the REST API with its token.
    "Sistemi CUP esterni": [
        "archive.view_patient",
        "archive.add_patient",
        "booking.view_booking",
        "booking.add_booking",
        "booking.change_booking",
        "booking.view_procedure",
        "booking.view_station",
    ],
    "Responsabili della conservazione": [*_VIEW_ARCHIVE, "kernel.view_auditevent", "archive.view_instanceconflict"],
    # A department's head keeps the report templates of their health authority (the admin).
    "Primari": [
        "archive.view_reporttemplate",
        "archive.add_reporttemplate",
        "archive.change_reporttemplate",
        "archive.delete_reporttemplate",
    ],
}
# Who also heads the department (a second group beside their role's).
DEPARTMENT_HEADS = {"radiologo": "Primari"}
# Where the demo's radiologists work: each opens only the studies of their health
# authority (archive.reporting.services.studies_accessible), so both sides of the rule show.
STAFF_AUTHORITIES = {"radiologo": "ASUGI", "radiologa": "ASUFC"}
# The radiologists' codici fiscali (made up, valid): the CDA of a signed report names its
# author and signer by them (ERRORE-19/31), or the FSE does not take it.
STAFF_FISCAL_CODES = {"radiologo": "CSSSFN70A01L424Y", "radiologa": "DGNCHR78H55L483I"}
# How citizens read each demo person in their access log (StaffProfile.title, .role).
STAFF_TITLES = {
    "radiologo": ("Dott.", "radiologo"),
    "radiologa": ("Dott.ssa", "radiologa"),
    "cup": ("", "operatore CUP"),
    "archivista": ("", "archivista"),
    "conservatore": ("", "responsabile della conservazione"),
}
# (username, first name, last name, group or None for the superuser, role shown)
ACCOUNTS = [
    ("admin", "Amministratore", "di sistema", None, "amministratore (tutti i permessi)"),
    ("archivista", "Paola", "Vidali", "Archivisti", "archivista"),
    ("radiologo", "Stefano", "Cossutta", "Radiologi", "radiologo"),
    ("radiologa", "Chiara", "Degano", "Radiologi", "radiologa"),
    ("cup", "Luca", "Tomasin", "Operatori CUP", "operatore CUP"),
    ("cup-regionale", "CUP", "regionale", "Sistemi CUP esterni", "sistema CUP esterno (API /api/cup/, token)"),
    ("conservatore", "Anna", "Zorzut", "Responsabili della conservazione", "responsabile della conservazione"),
]
# Service accounts: used by another system through the API with a token, never by a
# person. Not staff: their password, kept in that system's configuration, must not
# open the admin site.
SERVICE_ACCOUNTS = frozenset({"cup-regionale"})


@dataclass(frozen=True)
class DemoPatient:
    family: str
    given: str
    sex: Literal["M", "F"]
    birth: dt.date
    birthplace: str
    dicom_id: str | None = None  # None: the codice fiscale is the DICOM PatientID

    @property
    def codice_fiscale(self) -> str:
        return str(codicefiscale.encode(self.family, self.given, self.sex, self.birth.isoformat(), self.birthplace))


PATIENTS = [
    DemoPatient("Rossi", "Mario", "M", dt.date(1956, 3, 12), "Trieste"),
    DemoPatient("Bianchi", "Laura", "F", dt.date(1972, 7, 2), "Udine"),
    DemoPatient("Zanetti", "Giulia", "F", dt.date(1990, 11, 23), "Pordenone"),
    DemoPatient("Furlan", "Marco", "M", dt.date(1948, 1, 30), "Gorizia"),
    # A local hospital number only: arrives as a provisional patient to reconcile
    # (her study is the demo's one deliberate reconciliation item: booking/demo.py).
    DemoPatient("Coren", "Elena", "F", dt.date(2015, 5, 5), "Monfalcone", dicom_id="MO-0042117"),
]

# (patient index, facility, calling AE, source file, series x instances, years ago, description, modality)
STUDIES = [
    (0, "TS-CAT", "CT01", sample_data.CT, (2, 6), 0, "TC torace senza mdc", None),
    (0, "TS-CAT", "CT01", sample_data.CT, (1, 6), 2, "TC torace (precedente)", None),
    (1, "UD-SMM", "MR01", sample_data.MR, (2, 5), 0, "RM encefalo", None),
    (2, "PN-SMA", "US01", sample_data.US_MULTIFRAME, (1, 1), 0, "Ecocardiogramma", None),
    (2, "PN-SMA", "US01", sample_data.US_PALETTE, (1, 1), 0, "Ecografia addome", None),
    (3, "GO-SG", "NM01", sample_data.NM, (1, 2), 0, "Scintigrafia ossea", "NM"),
    (4, "MO-SP", "CT01", sample_data.CT, (1, 4), 0, "TC cranio", None),
]


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["pacs-demo", *map(str, parts)])


def credentials_path() -> Path:
    return Path(settings.VAR_DIR) / "demo-credentials.json"


def demo_credentials() -> dict[str, str]:
    try:
        return dict(json.loads(credentials_path().read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def _save_credentials(creds: dict[str, str]) -> None:
    path = credentials_path()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds, fh, indent=2)
    os.replace(tmp, path)


def demo_region_load() -> None:
    with transaction.atomic():
        authorities = {
            code: HealthAuthority.objects.update_or_create(code=code, defaults={"name": name})[0]
            for code, name in AUTHORITIES
        }
        for i, (auth, code, name, ae) in enumerate(FACILITIES):
            facility, _ = Facility.objects.update_or_create(
                code=code,
                defaults={
                    "name": name,
                    "authority": authorities[auth],
                    "ae_title": ae,
                    "dicom_port": settings.PACS_DICOM_PORT + 1 + i,
                },
            )
            for node_ae, description, rights in NODES:
                RemoteNode.objects.update_or_create(
                    facility=facility,
                    ae_title=node_ae,
                    defaults={"host": "127.0.0.1", "port": 104, "description": description, **rights},
                )


def demo_accounts_load() -> dict[str, str]:
    User = get_user_model()
    creds = demo_credentials()
    group_name: str | None  # a role's group; None for the superuser's account
    with transaction.atomic():
        for group_name, perms in ROLES.items():
            group, _ = Group.objects.get_or_create(name=group_name)
            wanted = []
            for perm in perms:
                app, codename = perm.split(".")
                wanted.append(Permission.objects.get(content_type__app_label=app, codename=codename))
            group.permissions.set(wanted)
        for username, first, last, group_name, _role in ACCOUNTS:
            staff = username not in SERVICE_ACCOUNTS
            user, created = User.objects.get_or_create(
                username=username, defaults={"first_name": first, "last_name": last, "is_staff": staff}
            )
            if group_name is None:
                user.is_superuser = True
            else:
                groups = [group_name, *([DEPARTMENT_HEADS[username]] if username in DEPARTMENT_HEADS else [])]
                user.groups.set(Group.objects.filter(name__in=groups))
            if created or username not in creds:
                creds[username] = secrets.token_urlsafe(12)
                user.set_password(creds[username])
            user.is_staff = staff
            user.save()
        authority_names = dict(AUTHORITIES)
        for username, code in STAFF_AUTHORITIES.items():
            authority, _ = HealthAuthority.objects.get_or_create(code=code, defaults={"name": authority_names[code]})
            # Created once: what an administrator changed later (cross-authority, TOTP) stays.
            StaffProfile.objects.get_or_create(
                user=User.objects.get(username=username), defaults={"authority": authority}
            )
        for username, (title, role) in STAFF_TITLES.items():
            # Without an authority a profile restricts nothing (as no profile); a title set
            # by an administrator stays.
            profile, _ = StaffProfile.objects.get_or_create(user=User.objects.get(username=username))
            if not profile.title and not profile.role:
                profile.title, profile.role = title, role
                profile.save(update_fields=["title", "role"])
            if username in STAFF_FISCAL_CODES and not profile.codice_fiscale:
                profile.codice_fiscale = STAFF_FISCAL_CODES[username]
                profile.save(update_fields=["codice_fiscale"])
    _save_credentials(creds)
    # Their signing keys and certificates, under the demo's own CA; existing ones are kept.
    from archive.reporting import signing

    signing.demo_pki_create(users=list(User.objects.filter(groups__name="Radiologi").distinct().order_by("username")))
    demo_report_texts_load()
    return creds


# The demo's report templates, by authority and catalogue code (booking/data/procedures.csv).
REPORT_TEMPLATES = [
    (
        "ASUGI",
        "87.41",
        "TC torace standard",
        {
            "technique": "Esame TC del torace eseguito senza mezzo di contrasto, con ricostruzioni a strato sottile "
            "con filtro per parenchima e per mediastino.",
            "findings": "Non addensamenti parenchimali in atto. Non noduli polmonari sospetti.\n\n"
            "Non versamento pleurico né pericardico. Non linfoadenomegalie mediastiniche o ilari.",
            "conclusion": "Quadro TC del torace nei limiti della norma.",
        },
    ),
    (
        "ASUGI",
        "87.41",
        "TC torace controllo nodulo",
        {
            "technique": "Esame TC del torace a bassa dose senza mezzo di contrasto, confrontato con il precedente.",
            "findings": "Il nodulo noto è invariato per dimensioni e morfologia rispetto al controllo precedente.",
            "conclusion": "Nodulo polmonare stabile.",
        },
    ),
    (
        "ASUGI",
        "88.91.1",
        "RM encefalo standard",
        {
            "technique": "Esame RM dell'encefalo con sequenze T1, T2, FLAIR e diffusione, senza mezzo di contrasto.",
            "findings": "Sistema ventricolare in asse, di dimensioni nella norma. Non alterazioni di segnale "
            "del parenchima cerebrale. Non restrizioni della diffusione.",
            "conclusion": "Non alterazioni RM dell'encefalo.",
        },
    ),
    (
        "ASUFC",
        "87.41",
        "TC torace standard",
        {
            "technique": "TC del torace senza mezzo di contrasto.",
            "findings": "Parenchima polmonare normoespanso, senza addensamenti.",
            "conclusion": "Nei limiti della norma.",
        },
    ),
]
# The demo radiologists' own standard phrases.
REPORT_PHRASES = {
    "radiologo": [
        ("Confronto precedente", "Rispetto al precedente esame non si apprezzano variazioni significative."),
        ("Non versamento", "Non versamento pleurico."),
        ("Follow-up", "Si consiglia controllo a 12 mesi."),
    ],
    "radiologa": [("Non versamento", "Non versamento pleurico.")],
}


def demo_report_texts_load() -> None:
    """The demo's report templates and phrases; a text someone changed is kept."""
    User = get_user_model()
    with transaction.atomic():
        for code, procedure, name, sections in REPORT_TEMPLATES:
            authority = HealthAuthority.objects.filter(code=code).first()
            if authority is not None:
                ReportTemplate.objects.get_or_create(
                    authority=authority, procedure_code=procedure, name=name, defaults=sections
                )
        for username, phrases in REPORT_PHRASES.items():
            owner = User.objects.filter(username=username).first()
            for title, text in phrases:
                if owner is not None:
                    ReportPhrase.objects.get_or_create(owner=owner, title=title, defaults={"text": text})


# Fixed dates: the demo's bytes never change, so a reload finds the same objects.
DEMO_DATE = dt.date(2026, 11, 2)


def demo_accession_number(n: int) -> str:
    """The accession number of the ``n``-th demo study (``STUDIES`` order): TSCAT240000..."""
    facility_code = STUDIES[n][1]
    return f"{facility_code.replace('-', '')}{240000 + n:06d}"[:16]


def demo_studies_load() -> tuple[int, int]:
    """Ingest the demo studies; returns (stored, already there)."""
    stored = existing = 0
    with TemporaryDirectory() as tmp:
        for n, (pi, facility_code, calling_ae, source, (n_series, n_inst), years, description, modality) in enumerate(
            STUDIES
        ):
            person = PATIENTS[pi]
            patient = sample_data.PatientInfo(
                patient_id=person.dicom_id or person.codice_fiscale,
                name=f"{person.family.upper()}^{person.given.upper()}",
                birth_date=person.birth.strftime("%Y%m%d"),
                sex=person.sex,
            )
            facility = Facility.objects.get(code=facility_code)
            template = sample_data.bundled_dataset(source)
            study_uid = _uid("study", n)
            for s in range(1, n_series + 1):
                for i in range(1, n_inst + 1):
                    sop_uid = _uid("instance", n, s, i)
                    if Instance.objects.filter(sop_instance_uid=sop_uid).exists():
                        existing += 1
                        continue
                    ds = sample_data.fresh_copy(
                        template,
                        patient=patient,
                        study_uid=study_uid,
                        series_uid=_uid("series", n, s),
                        sop_uid=sop_uid,
                        instance_number=i,
                        series_number=s,
                        accession_number=demo_accession_number(n),
                        study_date=DEMO_DATE.replace(year=DEMO_DATE.year - years),
                        study_description=description,
                        series_description=f"{description}, serie {s}",
                        modality=modality,
                        extra={"InstitutionName": facility.name[:64]},
                    )
                    path = Path(tmp) / f"{n}-{s}-{i}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    try:
                        result = instance_ingest(path=path, facility=facility, owned=True, calling_ae=calling_ae)
                    except IngestError as exc:
                        logger.error("demo instance refused: %s", exc.message)
                        continue
                    if result.outcome == "stored":
                        stored += 1
                    else:
                        existing += 1
    if stored:
        audit_record(action="demo.load", system="load_demo", detail={"stored": stored})
    return stored, existing
