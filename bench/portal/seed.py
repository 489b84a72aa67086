"""Portal benchmark data: 10,000 citizens with accounts and 50,000 booked exams in PostgreSQL.

Rows are written with ``bulk_create`` (one statement per thousand rows), not
through the services: ``citizen_account_create`` hashes a password per
account (PBKDF2, about 0.3 s each) and ``booking_create`` checks slots one by
one. Every row is one the services could have written:

* the demo region (``archive.demo.demo_region_load``) and the CUP's
  catalogue, stations and information text (``booking.demo.demo_load``);
* 10,000 identified patients with valid codici fiscali, each with a
  ``CitizenAccount`` and a user whose username is the codice fiscale; all
  share one password, hashed once (:data:`PASSWORD`);
* 50,000 bookings, one to a dozen per citizen (a long tail), at the
  stations of the procedure's modality, in every status: about 8% booked in
  the coming weeks, 5% cancelled, 7% performed and awaiting the report, 80%
  reported; a third of the past ones in the last 60 days, so that many are
  still on line (``PACS_PORTAL_AVAILABILITY_DAYS``, 45);
* a study (one series, no instance files) for every performed or reported
  booking, a signed report for every reported one (a few with a signed
  addendum or correction as version 2), the booking's distribution choice
  (70% online with the information text, the rest CD; append-only, so
  inserted only), and a ``Publication`` per signed version of an online
  booking, as ``portal.publication.report_publish`` makes them (a
  correction withdraws the version before it).

It writes ``var/bench/portal/citizens.json``: a sample of citizens (the
password, their codice fiscale and the primary keys of their bookings) for
the locust users to log in as.

Run: ``.venv/bin/python bench/portal/seed.py [--citizens N] [--exams N] [--reset]``.
The database (default ``pacs_bench_portal`` on 127.0.0.1) is created and
migrated when missing; ``--reset`` drops it first. A database that already
holds bookings is left alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

from bench.query.generate import (  # noqa: E402  (after the path is set)
    BIRTHPLACES,
    FEMALE_NAMES,
    MALE_NAMES,
    SURNAMES,
    _codice_fiscale,
    database_prepare,
)

DEFAULT_URL = os.environ.get("BENCH_PORTAL_DB_URL", "postgres://postgres@127.0.0.1:5432/pacs_bench_portal")
WORK_DIR = REPO / "var" / "bench" / "portal"
CITIZENS_FILE = WORK_DIR / "citizens.json"
PASSWORD = "bench-portal-Fse-2026"  # every seeded citizen's; a benchmark database, never a real one
UID_ROOT = "1.2.826.0.1.3680043.8.498.78"  # pydicom's root + a branch of our own (bench/query has .77)
BATCH = 1000
SAMPLE = 2000  # citizens listed in citizens.json
MODALITIES = ("CT", "MR", "US", "NM")  # the demo stations' (booking.demo.STATIONS)


def _uid(*parts: int) -> str:
    return ".".join([UID_ROOT, *map(str, parts)])


def _sha(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def seed(*, citizens: int, exams: int, seed_value: int, citizens_file: Path = CITIZENS_FILE) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import connection, transaction
    from django.utils import timezone

    from archive.demo import demo_region_load
    from archive.models import Facility, Patient, Report, Series, Study
    from booking.demo import demo_load as booking_demo_load
    from booking.models import Booking, ConsentText, DistributionChoice, Procedure, Station
    from portal.models import CitizenAccount, Publication

    User = get_user_model()
    if Booking.objects.exists():
        sys.exit(f"the database already holds {Booking.objects.count():,} bookings; use --reset to seed it anew")
    t0 = time.perf_counter()
    demo_region_load()
    booking_demo_load()  # no demo bookings: their patients are not in this database
    consent = ConsentText.objects.order_by("-published_at").first()
    facilities = list(Facility.objects.order_by("pk"))
    stations: dict[tuple[int, str], list[Station]] = {}
    for st in Station.objects.filter(active=True):
        stations.setdefault((st.facility_id, st.modality), []).append(st)
    procedures = {m: list(Procedure.objects.filter(modality=m, active=True)) for m in MODALITIES}
    radiologist, _ = User.objects.get_or_create(
        username="bench-radiologo", defaults={"first_name": "Stefano", "last_name": "Cossutta", "is_staff": True}
    )
    print(f"region and catalogue loaded ({time.perf_counter() - t0:.1f} s)", flush=True)

    rng = random.Random(seed_value)
    now = timezone.now()
    hashed = make_password(PASSWORD)  # once: PBKDF2 per row would take an hour

    # --- citizens ----------------------------------------------------------------
    people: list[tuple[str, str, str, str, dt.date]] = []  # cf, family, given, sex, birth
    seen: set[str] = set()
    surname_weights = [1 / (i + 3) for i in range(len(SURNAMES))]
    while len(people) < citizens:
        sex = rng.choice("MF")
        given = rng.choice(MALE_NAMES if sex == "M" else FEMALE_NAMES)
        family = rng.choices(SURNAMES, surname_weights)[0]
        birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(365 * 88))
        cf = _codice_fiscale(family, given, sex, birth, rng.choice(BIRTHPLACES))
        if cf not in seen:
            seen.add(cf)
            people.append((cf, family, given, sex, birth))

    with transaction.atomic():
        new_patients = [
            Patient(codice_fiscale=cf, family_name=family, given_name=given, sex=sex, birth_date=birth)
            for cf, family, given, sex, birth in people
        ]
        for patient in new_patients:
            patient.search_names_fill()  # bulk_create does not call save()
        patients = Patient.objects.bulk_create(new_patients, batch_size=BATCH)
        users = User.objects.bulk_create(
            [
                User(username=cf, password=hashed, first_name=given.title(), last_name=family.title())
                for cf, family, given, _, _ in people
            ],
            batch_size=BATCH,
        )
        CitizenAccount.objects.bulk_create(
            [CitizenAccount(user=u, codice_fiscale=u.username) for u in users], batch_size=BATCH
        )
    t_people = time.perf_counter()
    print(f"{len(patients):,} patients, users and citizen accounts ({t_people - t0:.1f} s)", flush=True)

    # --- bookings and what follows them ------------------------------------------------
    # One exam per citizen at least, the rest to a long tail (follow-ups of a dozen exams).
    weights = [rng.paretovariate(2.0) for _ in patients]
    owners = list(patients) + rng.choices(patients, weights, k=max(0, exams - len(patients)))
    rng.shuffle(owners)
    used_slots: set[tuple[int, dt.datetime]] = set()
    bookings: list[Booking] = []
    plans: list[tuple[str, dt.datetime, str, int]] = []  # status, when, delivery, report versions
    for n, patient in enumerate(owners, start=1):
        modality = rng.choices(MODALITIES, (40, 25, 30, 5))[0]
        facility = rng.choice(facilities)
        station = rng.choice(stations[(facility.pk, modality)])
        roll = rng.random()
        if roll < 0.08:
            status, days = Booking.Status.BOOKED, -rng.uniform(1, 60)
        elif roll < 0.13:
            status, days = Booking.Status.CANCELLED, rng.uniform(-30, 700)
        elif roll < 0.20:
            status, days = Booking.Status.PERFORMED, rng.uniform(0.5, 20)
        else:
            status = Booking.Status.REPORTED
            days = rng.uniform(1, 60) if rng.random() < 0.33 else rng.uniform(60, 1100)
        # A slot of the station's day: whole slots from 8:00, never taken twice (booking_slot_taken).
        day = (now - dt.timedelta(days=days)).date()
        while True:
            minute = 8 * 60 + station.slot_minutes * rng.randrange(600 // station.slot_minutes)
            when = timezone.make_aware(dt.datetime.combine(day, dt.time(minute // 60, minute % 60)))
            if (station.pk, when) not in used_slots:
                used_slots.add((station.pk, when))
                break
            day -= dt.timedelta(days=1)
        delivery = DistributionChoice.Delivery.ONLINE if rng.random() < 0.7 else DistributionChoice.Delivery.CD
        versions = 0
        if status == Booking.Status.REPORTED:
            versions = 2 if rng.random() < 0.04 else 1
        prefix = facility.code.replace("-", "")[:4]
        bookings.append(
            Booking(
                accession_number=f"{prefix}{n:08d}",
                study_instance_uid=_uid(1, n),
                patient=patient,
                facility=facility,
                procedure=rng.choice(procedures[modality]),
                station=station,
                scheduled_at=when,
                priority=rng.choices("PDBU", (60, 20, 15, 5))[0],
                referring_physician=f"{rng.choice(SURNAMES)}^{rng.choice(MALE_NAMES + FEMALE_NAMES)}",
                channel=rng.choice(list(Booking.Channel.values)),
                status=status,
            )
        )
        plans.append((status, when, delivery, versions))

    with transaction.atomic():
        Booking.objects.bulk_create(bookings, batch_size=BATCH)
        choices = []
        for b, (_status, when, delivery, _v) in zip(bookings, plans, strict=True):
            online = delivery == DistributionChoice.Delivery.ONLINE
            choices.append(
                DistributionChoice(
                    booking=b,
                    version=1,
                    delivery=delivery,
                    consent_text=consent if online else None,
                    channel=b.channel,
                    recorded_by_name="bench/portal",
                    recorded_at=when - dt.timedelta(days=7),
                )
            )
        DistributionChoice.objects.bulk_create(choices, batch_size=BATCH)

        studies: list[Study] = []
        studied: list[tuple[Booking, tuple[str, dt.datetime, str, int]]] = []
        for b, plan in zip(bookings, plans, strict=True):
            if plan[0] not in (Booking.Status.PERFORMED, Booking.Status.REPORTED):
                continue
            p = b.patient
            count = rng.choice((1, 2, 4, 30, 120, 300)) if b.procedure.modality != "US" else rng.randint(1, 40)
            when = timezone.localtime(plan[1])
            studies.append(
                Study(
                    study_instance_uid=b.study_instance_uid,
                    patient=p,
                    facility=b.facility,
                    patient_name=f"{p.family_name}^{p.given_name}",
                    dicom_patient_id=p.codice_fiscale or "",
                    patient_birth_date=p.birth_date,
                    patient_sex=p.sex,
                    study_date=when.date(),
                    study_time=when.strftime("%H%M%S"),
                    accession_number=b.accession_number,
                    study_description=b.procedure.description[:64],
                    priority=b.priority,
                    referring_physician_name=b.referring_physician,
                    modalities_in_study=b.procedure.modality,
                    number_of_series=1,
                    number_of_instances=count,
                    last_received_at=plan[1] + dt.timedelta(minutes=20),
                    post_ingest_at=plan[1] + dt.timedelta(minutes=22),
                )
            )
            studied.append((b, plan))
        for study in studies:
            study.search_names_fill()  # bulk_create does not call save()
        Study.objects.bulk_create(studies, batch_size=BATCH)
        Series.objects.bulk_create(
            [
                Series(
                    series_instance_uid=s.study_instance_uid + ".1",
                    study=s,
                    modality=s.modalities_in_study,
                    series_number=1,
                    series_description=s.study_description,
                    number_of_instances=s.number_of_instances,
                )
                for s in studies
            ],
            batch_size=BATCH,
        )
        # The study on its booking: an UPDATE per booking would be 40,000 statements; one UPDATE ... FROM.
        with connection.cursor() as c:
            c.execute(
                "UPDATE booking_booking b SET study_id = s.id FROM archive_study s "
                "WHERE s.study_instance_uid = b.study_instance_uid"
            )

        reports: list[Report] = []
        report_of: list[tuple[Booking, str, int]] = []  # booking, delivery, version
        for (b, (_status, when, delivery, versions)), s in zip(studied, studies, strict=True):
            previous = None
            for version in range(1, versions + 1):
                signed_at = when + dt.timedelta(days=rng.uniform(0.2, 3) + (version - 1) * 2)
                kind = Report.Kind.ORIGINAL
                if version > 1:
                    kind = rng.choice((Report.Kind.ADDENDUM, Report.Kind.CORRECTION))
                pdf_sha = _sha("pdf", s.study_instance_uid, version)
                relpath = f"reports/{pdf_sha[:2]}/{s.study_instance_uid}/v{version}.{pdf_sha}"
                report = Report(
                    study=s,
                    version=version,
                    previous=previous,
                    kind=kind,
                    status=Report.Status.SIGNED,
                    author=radiologist,
                    clinical_question=b.clinical_question,
                    technique=f"{b.procedure.description}.",
                    findings="Non alterazioni di rilievo nei limiti della metodica.",
                    conclusion="Reperto nella norma.",
                    signed_at=signed_at,
                    signer_name="Stefano Cossutta",
                    tier=f"facility:{b.facility.code}",
                    pdf_path=relpath + ".pdf",
                    pdf_sha256=pdf_sha,
                    pdf_size=48_000 + version * 1000,
                    signature_path=relpath + ".pdf.p7m",
                    signature_sha256=_sha("p7m", s.study_instance_uid, version),
                )
                # previous must be saved first: versions are created one level at a time below.
                reports.append(report)
                report_of.append((b, delivery, version))
                previous = report
        # Version 1 first, then version 2 (its "previous" has a primary key by then).
        first = [r for r in reports if r.version == 1]
        Report.objects.bulk_create(first, batch_size=BATCH)
        for r in reports:
            if r.previous is not None:
                r.previous_id = r.previous.pk
        Report.objects.bulk_create([r for r in reports if r.version > 1], batch_size=BATCH)

        days_online = dt.timedelta(days=45)
        publications = []
        corrected = {
            b.pk
            for r, (b, _d, _v) in zip(reports, report_of, strict=True)
            if r.kind == Report.Kind.CORRECTION and r.version > 1
        }
        for r, (b, delivery, version) in zip(reports, report_of, strict=True):
            if delivery != DistributionChoice.Delivery.ONLINE:
                continue
            assert r.signed_at is not None
            withdrawn = b.pk in corrected and version == 1
            publications.append(
                Publication(
                    booking=b,
                    report=r,
                    published_at=r.signed_at,
                    available_until=r.signed_at + days_online,
                    withdrawn_at=r.signed_at + dt.timedelta(days=2) if withdrawn else None,
                    withdrawn_reason=Publication.WithdrawnReason.SUPERSEDED if withdrawn else "",
                )
            )
        Publication.objects.bulk_create(publications, batch_size=BATCH)
    t_exams = time.perf_counter()
    live = sum(1 for p in publications if p.withdrawn_at is None and p.available_until > now)
    print(
        f"{len(bookings):,} bookings, {len(studies):,} studies, {len(reports):,} signed reports, "
        f"{len(publications):,} publications ({live:,} live) ({t_exams - t_people:.1f} s)",
        flush=True,
    )
    with connection.cursor() as c:
        c.execute("VACUUM (ANALYZE)")
    print(f"VACUUM ANALYZE ({time.perf_counter() - t_exams:.1f} s)", flush=True)
    citizens_write(rng, citizens_file)
    print(f"seeded in {time.perf_counter() - t0:.0f} s", flush=True)


def citizens_write(rng: random.Random | None = None, path: Path = CITIZENS_FILE) -> list[dict[str, object]]:
    """A sample of citizens for the locust users: codice fiscale and their bookings' keys, in ``path``."""
    from booking.models import Booking
    from portal.models import CitizenAccount

    rng = rng or random.Random(1)
    cfs = list(CitizenAccount.objects.values_list("codice_fiscale", flat=True).order_by("pk"))
    picked = sorted(rng.sample(cfs, min(SAMPLE, len(cfs))))
    by_cf: dict[str, list[int]] = {cf: [] for cf in picked}
    for pk, cf in Booking.objects.filter(patient__codice_fiscale__in=picked).values_list(
        "pk", "patient__codice_fiscale"
    ):
        by_cf[cf].append(pk)
    rows: list[dict[str, object]] = [{"codice_fiscale": cf, "bookings": sorted(pks)} for cf, pks in by_cf.items()]
    rng.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"password": PASSWORD, "citizens": rows}, indent=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--citizens", type=int, default=10_000)
    parser.add_argument("--exams", type=int, default=50_000)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--reset", action="store_true", help="drop and recreate the database first")
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args()
    if not urlparse(args.database_url).scheme.startswith("postgres"):
        sys.exit("this benchmark needs PostgreSQL (a postgres:// URL)")

    t0 = time.perf_counter()
    database_prepare(args.database_url, reset=args.reset)
    os.environ["DATABASE_URL"] = args.database_url
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    # Settings create their var folder (secret key, cache): the benchmark's own, not the checkout's.
    os.environ.setdefault("PACS_VAR_DIR", str(WORK_DIR / "var"))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    print(f"migrated ({time.perf_counter() - t0:.1f} s)", flush=True)
    seed(citizens=args.citizens, exams=args.exams, seed_value=args.seed)


if __name__ == "__main__":
    main()
