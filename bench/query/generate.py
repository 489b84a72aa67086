"""Query benchmark data: an archive of 100,000 studies / ~1,000,000 instances in PostgreSQL.

Rows are generated here and written with PostgreSQL COPY (psycopg 3), not
through ingestion: ingesting a million instances would take hours, and the
query benchmark needs the index only. Every row looks like one ingestion
writes (facility, regional patient and its PatientIdentifier, counters on
study and series, a verified facility-tier Copy per instance with the path
``storage.instance_relpath`` gives); the files themselves do not exist.

The archive: the demo region's ten facilities (``archive.demo``); about 0.4
patients per study, most identified by a valid codice fiscale, a quarter
provisional with a hospital number; a long tail of patients with many
studies; studies over the last 15 years (more recent years busier), three
series each, modalities CT/MR/US/CR/MG/NM with some structured reports
(ModalitiesInStudy ``CT\\SR``).

Run: ``.venv/bin/python bench/query/generate.py [--studies N] [--database-url URL] [--reset]``.
The database (default ``pacs_bench_query`` on 127.0.0.1, not ``pacs_bench``,
which ``bench/ingest`` drops) is created and migrated when missing; ``--reset``
drops it first. A database that already holds studies is left alone.
``--smoke`` writes 200 studies, for ``run.py --smoke`` (the test suite's run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

DEFAULT_URL = os.environ.get("BENCH_QUERY_DB_URL", "postgres://postgres@127.0.0.1:5432/pacs_bench_query")
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"  # pydicom's root + a branch of our own
UTC = dt.UTC

# --- what the archive holds ---------------------------------------------------

SURNAMES = [
    s.replace("_", " ")  # multi-word surnames ("DE LUCA") are written with "_" in the list below
    for s in (
        "ROSSI RUSSO FERRARI ESPOSITO BIANCHI ROMANO COLOMBO RICCI MARINO GRECO BRUNO GALLO CONTI DE_LUCA "
        "MANCINI COSTA GIORDANO RIZZO LOMBARDI MORETTI BARBIERI FONTANA SANTORO MARIANI RINALDI CARUSO FERRARA "
        "GALLI MARTINI LEONE LONGO GENTILE MARTINELLI VITALE LOMBARDO SERRA COPPOLA DE_SANTIS D'ANGELO MARCHETTI "
        "PARISI VILLA CONTE FERRO FABBRI BIANCO MARINI GRASSO VALENTINI MESSINA SALA DE_ANGELIS GATTI PELLEGRINI "
        "PALUMBO SANNA FARINA RIZZI MONTI CATTANEO MORELLI AMATO SILVESTRI MAZZA TESTA GRASSI PELLEGRINO CARBONE "
        "GIULIANI BENEDETTI BARONE ROSSETTI CAPUTO MONTANARI GUERRA PALMIERI BERNARDI MARTINO FIORE DE_ROSA "
        "FERRETTI BELLINI BASILE RIVA DONATI PIRAS VITALI BATTAGLIA SARTORI NERI COSTANTINI MILANI PAGANO "
        "RUGGIERO SORRENTINO D'AMICO ORLANDO NEGRI ROSSO ROSSINI FURLAN ZANETTI COSSUTTA DEGANO TOMASIN VIDALI "
        "ZORZUT PERTOLDI ZULIANI DEL_FABBRO MICHELUTTI CANCIANI PITTINI BERTOSSI DI_BERNARDO SCHIAVON"
    ).split()
]
MALE_NAMES = (
    "MARIO GIUSEPPE GIOVANNI ANTONIO LUIGI FRANCESCO ANGELO VINCENZO PIETRO SALVATORE CARLO FRANCO DOMENICO "
    "BRUNO PAOLO MICHELE GIORGIO ALDO SERGIO LUCIANO MARCO ANDREA STEFANO ALESSANDRO LUCA MATTEO LORENZO "
    "DAVIDE SIMONE FEDERICO RICCARDO GABRIELE TOMMASO NICOLA FABIO ROBERTO MASSIMO CLAUDIO ENRICO DANIELE"
).split()
FEMALE_NAMES = (
    "MARIA ANNA GIUSEPPINA ROSA ANGELA GIOVANNA TERESA LUCIA CARMELA CATERINA FRANCESCA ANNAMARIA ANTONIETTA "
    "CARLA ELENA CONCETTA RITA MARGHERITA FRANCA PAOLA LAURA GIULIA CHIARA SARA MARTINA FEDERICA VALENTINA "
    "SILVIA ALESSIA ELISA ROBERTA MONICA CRISTINA BARBARA DANIELA SIMONA ELEONORA SOFIA AURORA GIORGIA"
).split()
BIRTHPLACES = ["L424", "L424", "L483", "L483", "G888", "E098", "F356", "L195", "H816", "I904", "L736", "F839"]
# The demo facilities' share of the region's studies (the three hubs take most).
FACILITY_WEIGHTS = {
    "TS-CAT": 20,
    "TS-MAG": 6,
    "GO-SG": 7,
    "MO-SP": 5,
    "UD-SMM": 24,
    "SD-SA": 4,
    "TO-SA": 3,
    "PN-SMA": 18,
    "SV-SV": 5,
    "SP-SP": 3,
}

# Studies the patient hid (oscuramento); a fifth of them shown again later.
CONCEALED_SHARE = 0.01

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@dataclass(frozen=True)
class Kind:
    """How the objects of one modality look in the index."""

    modality: str
    sop_class_uid: str
    rows: int | None
    columns: int | None
    frames: int | None
    transfer_syntax_uid: str
    size: int  # typical bytes per object
    ae: str


@dataclass(frozen=True)
class Profile:
    """A kind of study: its image kind, how its three series are sized, what it is called."""

    kind: Kind
    weight: float
    sizes: Callable[[random.Random], list[int]]
    descriptions: list[tuple[str, str]]  # (StudyDescription, BodyPartExamined)
    series_descriptions: list[str]
    sr_share: float  # studies whose third series is a structured report


CT = Kind("CT", "1.2.840.10008.5.1.4.1.1.2", 512, 512, None, EXPLICIT_LE, 526_000, "CT01")
MR = Kind("MR", "1.2.840.10008.5.1.4.1.1.4", 256, 256, None, EXPLICIT_LE, 134_000, "MR01")
US = Kind("US", "1.2.840.10008.5.1.4.1.1.6.1", 600, 800, None, JPEG_BASELINE, 95_000, "US01")
US_CINE = Kind("US", "1.2.840.10008.5.1.4.1.1.3.1", 600, 800, 60, JPEG_BASELINE, 4_100_000, "US01")
CR = Kind("CR", "1.2.840.10008.5.1.4.1.1.1", 2500, 2048, None, JPEG_LOSSLESS, 4_300_000, "CR01")
MG = Kind("MG", "1.2.840.10008.5.1.4.1.1.1.2", 4096, 3328, None, JPEG_LOSSLESS, 11_000_000, "MG01")
NM = Kind("NM", "1.2.840.10008.5.1.4.1.1.20", 128, 128, 64, EXPLICIT_LE, 2_100_000, "NM01")
SR = Kind("SR", "1.2.840.10008.5.1.4.1.1.88.22", None, None, None, EXPLICIT_LE, 9_000, "")

PROFILES = [
    Profile(
        CT,
        30,
        lambda r: [1, r.randint(3, 13), r.randint(3, 13)],
        [
            ("TC TORACE", "CHEST"),
            ("TC ADDOME COMPLETO", "ABDOMEN"),
            ("TC ENCEFALO", "HEAD"),
            ("ANGIO-TC AORTA", "CHEST"),
            ("TC TORACE-ADDOME CON MDC", "CHESTABDOMEN"),
        ],
        ["Scout", "Assiale 5 mm", "Assiale 1.25 mm"],
        0.3,
    ),
    Profile(
        MR,
        20,
        lambda r: [r.randint(2, 9), r.randint(2, 9), r.randint(2, 9)],
        [
            ("RM ENCEFALO", "HEAD"),
            ("RM GINOCCHIO DX", "KNEE"),
            ("RM COLONNA LOMBARE", "LSPINE"),
            ("RM ADDOME SUPERIORE", "ABDOMEN"),
            ("RM SPALLA SX", "SHOULDER"),
        ],
        ["T1 SAG", "T2 AX", "FLAIR COR"],
        0.2,
    ),
    Profile(
        US,
        15,
        lambda r: [r.randint(1, 4), r.randint(1, 4), r.randint(1, 4)],
        [("ECOGRAFIA ADDOME COMPLETO", "ABDOMEN"), ("ECO TIROIDE", "NECK"), ("ECOCARDIOGRAMMA", "HEART")],
        ["B-mode", "Doppler", "Misure"],
        0.3,
    ),
    Profile(
        CR,
        20,
        lambda r: [1, 1, 1],
        [("RX TORACE 2P", "CHEST"), ("RX GINOCCHIO", "KNEE"), ("RX BACINO", "PELVIS"), ("RX RACHIDE", "SPINE")],
        ["PA", "LL", "Dettaglio"],
        0.0,
    ),
    Profile(
        MG,
        8,
        lambda r: [2, 2, 1],
        [("MAMMOGRAFIA BILATERALE", "BREAST"), ("MAMMOGRAFIA DI SCREENING", "BREAST")],
        ["Dx CC/MLO", "Sx CC/MLO", "Dettaglio"],
        0.5,
    ),
    Profile(
        NM,
        7,
        lambda r: [r.randint(1, 3), r.randint(1, 3), r.randint(1, 3)],
        [
            ("SCINTIGRAFIA OSSEA", "WHOLEBODY"),
            ("SCINTIGRAFIA TIROIDEA", "THYROID"),
            ("SCINTIGRAFIA MIOCARDICA", "HEART"),
        ],
        ["Statica", "Dinamica", "Tomo"],
        0.2,
    ),
]


@dataclass
class PatientRow:
    pk: int
    family: str
    given: str
    sex: str
    birth: dt.date
    codice_fiscale: str | None
    home: int  # facility pk
    local_id: str | None  # a provisional patient's hospital number


@dataclass(frozen=True)
class SeriesRow:
    """What the instance and copy passes need of one series (they run over it twice)."""

    pk: int
    uid: str
    study_uid: str
    bucket: str
    count: int
    kind: Kind
    facility: int
    tier: str
    received: dt.datetime
    first_instance: int


# --- the database -------------------------------------------------------------


def _admin_connect(url: str) -> Any:
    import psycopg

    p = urlparse(url)
    return psycopg.connect(
        host=p.hostname or "127.0.0.1",
        port=p.port or 5432,
        user=p.username or "postgres",
        password=p.password,
        dbname="postgres",
        autocommit=True,
    )


def database_prepare(url: str, *, reset: bool) -> None:
    """Create the database when missing (after dropping it with ``reset``)."""
    from psycopg import sql

    name = urlparse(url).path.lstrip("/")
    if not name or name == "test" or name.startswith("test_"):
        sys.exit(f"refusing database {name!r}: the test suites own test and test_*")
    with _admin_connect(url) as conn:
        if reset:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            from bench.common import database_template

            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            template = database_template()
            if template:
                create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(create)
            print(f"created database {name}")


def _column_default(field: Any, now: dt.datetime) -> Any:
    """What ``field`` holds when a row does not say: its default, NULL, or the empty text.

    The benchmark writes rows with COPY, past the ORM: a column added to a model
    later gets its model default here instead of breaking the COPY (a NOT NULL
    column without a default stops the run with its name)."""
    from django.db import models

    if field.has_default():
        return field.get_default()
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return now
    if field.null:
        return None
    if isinstance(field, (models.CharField, models.TextField)) and field.blank:
        return ""
    raise SystemExit(
        f"generate.py writes no value for {field.model.__name__}.{field.name} (NOT NULL, no default): add it"
    )


def _copy(cursor: Any, model: Any, fields: list[str], rows: Iterator[tuple[Any, ...]]) -> int:
    """COPY ``rows`` into ``model``'s table (columns from the model's metadata); return the count.

    The model's other columns get their defaults (:func:`_column_default`)."""
    from django.db import connection

    q = connection.ops.quote_name
    given = [model._meta.get_field(f) for f in fields]
    now = dt.datetime.now(UTC)
    rest = [f for f in model._meta.concrete_fields if f not in given and not f.primary_key]
    filler = tuple(_column_default(f, now) for f in rest)
    columns = ", ".join(q(f.column) for f in [*given, *rest])
    n = 0
    with cursor.copy(f"COPY {q(model._meta.db_table)} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row + filler)
            n += 1
    return n


# --- generation ---------------------------------------------------------------


def _codice_fiscale(family: str, given: str, sex: str, birth: dt.date, place: str) -> str:
    from codicefiscale import codicefiscale as cf

    day = birth.day + (40 if sex == "F" else 0)
    born = f"{birth.year % 100:02d}{'ABCDEHLMPRST'[birth.month - 1]}{day:02d}"
    code = cf.encode_lastname(family) + cf.encode_firstname(given) + born + place
    return code + cf.encode_cin(code)


def _patients(rng: random.Random, count: int, facilities: list[tuple[int, str]]) -> list[PatientRow]:
    # A Zipf-like share per surname: ROSSI is common, SCHIAVON rare.
    surname_weights = [1 / (i + 3) for i in range(len(SURNAMES))]
    fac_pks = [pk for pk, _ in facilities]
    fac_weights = [FACILITY_WEIGHTS.get(code, 5) for _, code in facilities]
    prefixes = {pk: code.replace("-", "") for pk, code in facilities}
    seen: set[str] = set()
    patients = []
    for pk in range(1, count + 1):
        sex = rng.choice("MF")
        given = rng.choice(MALE_NAMES if sex == "M" else FEMALE_NAMES)
        family = rng.choices(SURNAMES, surname_weights)[0]
        home = rng.choices(fac_pks, fac_weights)[0]
        while True:
            birth = dt.date(1925, 1, 1) + dt.timedelta(days=rng.randrange(365 * 85))
            cf = _codice_fiscale(family, given, sex, birth, rng.choice(BIRTHPLACES))
            if cf not in seen:  # omocodia is real, but a fresh birth date is simpler
                break
        seen.add(cf)
        if rng.random() < 0.25:
            patients.append(PatientRow(pk, family, given, sex, birth, None, home, f"{prefixes[home]}{pk:08d}"))
        else:
            patients.append(PatientRow(pk, family, given, sex, birth, cf, home, None))
    return patients


def _study_owners(rng: random.Random, patients: list[PatientRow], studies: int) -> list[PatientRow]:
    """One study at least per patient, the rest to a long tail (a few follow-ups of dozens of exams)."""
    owners = list(patients[:studies])
    weights = [rng.paretovariate(2.5) for _ in patients]
    owners += rng.choices(patients, weights, k=max(0, studies - len(patients)))
    rng.shuffle(owners)
    return owners


def _study_date(rng: random.Random, first: dt.date, days: int) -> dt.datetime:
    # Density grows linearly over the years (the archive fills faster now); working hours.
    day = first + dt.timedelta(days=int(days * rng.random() ** 0.5))
    if day.weekday() >= 5 and rng.random() < 0.7:
        day -= dt.timedelta(days=day.weekday() - 4)
    return dt.datetime(day.year, day.month, day.day, rng.randint(7, 19), rng.randrange(60), rng.randrange(60))


def _uid(*parts: int) -> str:
    return ".".join([UID_ROOT, *map(str, parts)])


def _instance_values(s: SeriesRow, i: int) -> tuple[str, str, int, dt.datetime]:
    """One instance's UID, SHA-256, size and receipt time: derived, so that both passes agree."""
    sop_uid = f"{s.uid}.{i + 1}"
    sha = hashlib.sha256(sop_uid.encode("ascii")).hexdigest()
    size = s.kind.size + (int(sha[:6], 16) % 4096) - 2048
    return sop_uid, sha, size, s.received + dt.timedelta(milliseconds=150 * i)


def generate(*, studies: int, seed: int) -> None:
    from django.db import connection, transaction

    from archive.demo import demo_region_load
    from archive.models import Copy, Facility, Instance, Patient, PatientIdentifier, Series, Study
    from archive.person_names import pn_search_key
    from archive.storage import tiers as storage
    from portal.models import Concealment

    if Study.objects.exists():
        sys.exit(f"the database already holds {Study.objects.count():,} studies; use --reset to generate it anew")
    demo_region_load()
    facilities = list(Facility.objects.order_by("pk").values_list("pk", "code"))
    fac_pks = [pk for pk, _ in facilities]
    fac_weights = [FACILITY_WEIGHTS.get(code, 5) for _, code in facilities]
    fac_code = dict(facilities)
    rng = random.Random(seed)
    t0 = time.perf_counter()

    patients = _patients(rng, max(1, round(studies * 0.4)), facilities)
    owners = _study_owners(rng, patients, studies)
    today = dt.date.today()
    first_day = today.replace(year=today.year - 15)
    days = (today - first_day).days
    profile_weights = [p.weight for p in PROFILES]
    now = dt.datetime.now(UTC)

    identifiers: dict[tuple[int, str], int] = {}  # (facility, PatientID) -> patient
    study_rows: list[tuple[Any, ...]] = []
    series_rows: list[SeriesRow] = []
    series_extra: list[tuple[Any, ...]] = []  # modality, number, description, body part
    instance_pk = 1
    for n, patient in enumerate(owners, start=1):
        facility = patient.home if patient.local_id or rng.random() < 0.8 else rng.choices(fac_pks, fac_weights)[0]
        pid = patient.local_id or patient.codice_fiscale or ""
        identifiers[(facility, pid)] = patient.pk
        profile = rng.choices(PROFILES, profile_weights)[0]
        if profile.kind is MG and patient.sex == "M":
            profile = PROFILES[3]  # CR
        when = _study_date(rng, first_day, days)
        received = when.replace(tzinfo=UTC) + dt.timedelta(minutes=rng.randint(5, 40))
        study_uid = _uid(1, n)
        bucket = hashlib.sha256(study_uid.encode("ascii")).hexdigest()[:2]
        description, body_part = rng.choice(profile.descriptions)
        sizes = profile.sizes(rng)
        with_sr = rng.random() < profile.sr_share
        kind = profile.kind
        if kind is US and rng.random() < 0.3:
            kind = US_CINE
        modalities = [profile.kind.modality]
        for number, count in enumerate(sizes, start=1):
            series_kind = SR if with_sr and number == len(sizes) else kind
            if series_kind is SR:
                count = 1
                sizes[-1] = 1
                modalities.append("SR")
            series_pk = len(series_rows) + 1
            series_rows.append(
                SeriesRow(
                    pk=series_pk,
                    uid=_uid(2, n, number),
                    study_uid=study_uid,
                    bucket=bucket,
                    count=count,
                    kind=series_kind,
                    facility=facility,
                    tier=storage.facility_tier(fac_code[facility]),
                    received=received,
                    first_instance=instance_pk,
                )
            )
            series_extra.append(
                (
                    series_kind.modality,
                    number,
                    "Referto strutturato" if series_kind is SR else profile.series_descriptions[number - 1],
                    "" if series_kind is SR else body_part,
                    n,
                )
            )
            instance_pk += count
        referring = rng.choice(SURNAMES) + "^" + rng.choice(MALE_NAMES + FEMALE_NAMES)
        study_rows.append(
            (
                n,
                study_uid,
                patient.pk,
                facility,
                f"{patient.family}^{patient.given}",
                pid,
                "",
                patient.birth,
                patient.sex,
                when.date(),
                when.strftime("%H%M%S"),
                f"{fac_code[facility].replace('-', '')}{n:08d}"[:16],
                str(n % 100000),
                description,
                referring,
                "\\".join(modalities),
                len(sizes),
                sum(sizes),
                received,
                received + dt.timedelta(seconds=30),
                False,
                received + dt.timedelta(minutes=2),
            )
        )
    instances = instance_pk - 1
    # Oscuramento: a citizen hid about one study in a hundred, and showed some again
    # (drawn apart, so that the rest of the archive is the same with or without them).
    hide = random.Random(seed + 1)
    concealment_rows = []
    for study in study_rows:
        if hide.random() < CONCEALED_SHARE:
            hidden = dt.datetime.combine(study[9], dt.time(12), UTC) + dt.timedelta(days=hide.randint(1, 400))
            revealed = hidden + dt.timedelta(days=30) if hide.random() < 0.2 else None
            concealment_rows.append((len(concealment_rows) + 1, study[2], study[0], hidden, revealed))
    t_gen = time.perf_counter()
    print(
        f"generated {len(patients):,} patients, {len(study_rows):,} studies, {len(series_rows):,} series, "
        f"{instances:,} instances in memory ({t_gen - t0:.1f} s)",
        flush=True,
    )

    connection.ensure_connection()
    pg = connection.connection
    timings: dict[str, float] = {}
    with transaction.atomic(), pg.cursor() as cur:
        cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
        cur.execute("SET LOCAL synchronous_commit = off")

        def timed(label: str, model: Any, fields: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
            t = time.perf_counter()
            count = _copy(cur, model, fields, rows)
            timings[label] = time.perf_counter() - t
            print(f"  COPY {label}: {count:,} rows in {timings[label]:.1f} s", flush=True)

        timed(
            "patients",
            Patient,
            [
                "id",
                "codice_fiscale",
                "family_name",
                "given_name",
                "birth_date",
                "sex",
                "provisional",
                "created_at",
                "name_search",
            ],
            (
                (
                    p.pk,
                    p.codice_fiscale,
                    p.family,
                    p.given,
                    p.birth,
                    p.sex,
                    p.codice_fiscale is None,
                    now,
                    pn_search_key(f"{p.family}^{p.given}"),
                )
                for p in patients
            ),
        )
        timed(
            "patient identifiers",
            PatientIdentifier,
            ["id", "facility", "dicom_patient_id", "issuer", "patient"],
            ((i, fac, pid, "", patient) for i, ((fac, pid), patient) in enumerate(identifiers.items(), start=1)),
        )
        timed(
            "studies",
            Study,
            [
                "id",
                "study_instance_uid",
                "patient",
                "facility",
                "patient_name",
                "dicom_patient_id",
                "issuer_of_patient_id",
                "patient_birth_date",
                "patient_sex",
                "study_date",
                "study_time",
                "accession_number",
                "study_id",
                "study_description",
                "referring_physician_name",
                "modalities_in_study",
                "number_of_series",
                "number_of_instances",
                "created_at",
                "last_received_at",
                "post_ingest_pending",
                "post_ingest_at",
                "patient_name_search",
                "referring_physician_name_search",
            ],
            # The names' search keys, as Study.save() writes them.
            (row + (pn_search_key(row[4]), pn_search_key(row[14])) for row in study_rows),
        )
        timed(
            "series",
            Series,
            [
                "id",
                "series_instance_uid",
                "study",
                "modality",
                "series_number",
                "series_description",
                "body_part_examined",
                "number_of_instances",
                "created_at",
            ],
            (
                (s.pk, s.uid, extra[4], extra[0], extra[1], extra[2], extra[3], s.count, s.received)
                for s, extra in zip(series_rows, series_extra, strict=True)
            ),
        )

        timed(
            "concealments",
            Concealment,
            ["id", "patient", "study", "hidden_at", "revealed_at"],
            iter(concealment_rows),
        )

        def instance_rows() -> Iterator[tuple[Any, ...]]:
            for s in series_rows:
                k = s.kind
                for i in range(s.count):
                    sop_uid, sha, size, received = _instance_values(s, i)
                    yield (
                        s.first_instance + i,
                        sop_uid,
                        s.pk,
                        k.sop_class_uid,
                        i + 1,
                        k.rows,
                        k.columns,
                        k.frames,
                        k.transfer_syntax_uid,
                        size,
                        sha,
                        s.facility,
                        k.ae,
                        received,
                    )

        timed(
            "instances",
            Instance,
            [
                "id",
                "sop_instance_uid",
                "series",
                "sop_class_uid",
                "instance_number",
                "rows",
                "columns",
                "number_of_frames",
                "transfer_syntax_uid",
                "size",
                "sha256",
                "facility",
                "calling_ae",
                "received_at",
            ],
            instance_rows(),
        )

        def copy_rows() -> Iterator[tuple[Any, ...]]:
            for s in series_rows:
                prefix = f"studies/{s.bucket}/{s.study_uid}/{s.uid}/"
                for i in range(s.count):
                    sop_uid, sha, size, received = _instance_values(s, i)
                    yield (
                        s.first_instance + i,
                        s.first_instance + i,
                        s.tier,
                        f"{prefix}{sop_uid}.{sha}.dcm",
                        sha,
                        size,
                        received,
                        received,
                        received,
                    )

        # The path layout is the archive's own, checked once rather than rebuilt per row.
        s0 = series_rows[0]
        uid0, sha0, _, _ = _instance_values(s0, 0)
        expected = storage.instance_relpath(study_uid=s0.study_uid, series_uid=s0.uid, sop_uid=uid0, sha256=sha0)
        assert next(copy_rows())[3] == expected, "the copy path layout drifted from storage.instance_relpath"
        timed(
            "copies",
            Copy,
            ["id", "instance", "tier", "path", "sha256", "size", "created_at", "verified_at", "instance_received_at"],
            copy_rows(),
        )
        # Identity columns continue after the rows written with explicit keys.
        for model in (Patient, PatientIdentifier, Study, Series, Instance, Copy, Concealment):
            table = model._meta.db_table
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    t_copy = time.perf_counter()
    print(f"COPY done, committed ({t_copy - t_gen:.1f} s)", flush=True)
    with connection.cursor() as c:
        c.execute("VACUUM (ANALYZE)")
    t_end = time.perf_counter()
    print(f"VACUUM ANALYZE ({t_end - t_copy:.1f} s)")
    with connection.cursor() as c:
        c.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        size = c.fetchone()[0]
    print(
        f"\n{len(study_rows):,} studies, {len(series_rows):,} series, {instances:,} instances, "
        f"{len(patients):,} patients in {t_end - t0:.0f} s (database {size})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--reset", action="store_true", help="drop and recreate the database first")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--smoke", action="store_true", help="200 studies: run.py --smoke's archive (the test suite)")
    args = parser.parse_args()
    if args.smoke:
        # Small, yet with a couple of concealed studies and patients of several studies.
        args.studies = 200
    if not urlparse(args.database_url).scheme.startswith("postgres"):
        sys.exit("this benchmark needs PostgreSQL (a postgres:// URL)")

    t0 = time.perf_counter()
    database_prepare(args.database_url, reset=args.reset)
    os.environ["DATABASE_URL"] = args.database_url
    # Settings create their var folder (secret key, cache): a throw-away one, not the checkout's.
    with tempfile.TemporaryDirectory(prefix="pacs-bench-query-gen-") as var:
        os.environ.setdefault("PACS_VAR_DIR", var)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        print(f"migrated ({time.perf_counter() - t0:.1f} s)", flush=True)
        generate(studies=args.studies, seed=args.seed)


if __name__ == "__main__":
    main()
