"""The CUP's part of the demo region: the procedure catalogue, a modality room
per demo modality node at every facility, accession number prefixes, the
information text on online delivery, and a few bookings.

Called by ``manage.py load_demo`` after the archive's demo (archive/demo.py);
safe to run again: rows are found by their natural keys, and the demo
bookings by their external identifier.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from archive.models import Facility, Patient, Study

from . import services
from .models import (
    AccessionSequence,
    Booking,
    ConsentText,
    DistributionChoice,
    FacilityContact,
    Procedure,
    Station,
)

logger = logging.getLogger(__name__)

CATALOGUE = Path(__file__).resolve().parent / "data" / "procedures.csv"

# (AE title, room name, modality, slot minutes, where it is): the modality nodes
# archive/demo.py registers at every facility; their AE title is the ScheduledStationAETitle.
STATIONS = [
    ("CT01", "TC 1", "CT", 20, "Radiologia, piano terra, sala TC 1"),
    ("MR01", "RM 1", "MR", 30, "Radiologia, piano terra, sala RM (segua le indicazioni «Risonanza magnetica»)"),
    ("US01", "Ecografia 1", "US", 20, "Ambulatori di ecografia, primo piano"),
    ("NM01", "Medicina nucleare 1", "NM", 40, "Medicina nucleare, piano -1"),
]

# The demo's CUP numbers are made up (no Italian number has 000 after the area
# code): nobody calls a real desk from a printed demo receipt.
_CUP = {
    "ASUGI": ("040 000 4040", "dal lunedì al venerdì, 8:00–17:00"),
    "ASUFC": ("0432 000 432", "dal lunedì al venerdì, 7:30–18:00; sabato 8:00–12:00"),
    "ASFO": ("0434 000 434", "dal lunedì al venerdì, 8:00–16:00"),
}
# Where the demo hospitals are.
ADDRESSES = {
    "TS-CAT": "Strada di Fiume 447, 34149 Trieste",
    "TS-MAG": "Piazza dell'Ospitale 1, 34125 Trieste",
    "GO-SG": "Via Vittorio Veneto 171, 34170 Gorizia",
    "MO-SP": "Via Galvani 1, 34074 Monfalcone",
    "UD-SMM": "Piazzale Santa Maria della Misericordia 15, 33100 Udine",
    "SD-SA": "Viale Trento e Trieste 33, 33038 San Daniele del Friuli",
    "TO-SA": "Via Morgagni 18, 33028 Tolmezzo",
    "PN-SMA": "Via Montereale 24, 33170 Pordenone",
    "SV-SV": "Via Savorgnano 2, 33078 San Vito al Tagliamento",
    "SP-SP": "Via Raffaello 1, 33097 Spilimbergo",
}

CONSENT_VERSION = "2026-01"
CONSENT_TITLE = "Informativa sulla consegna online di referti e immagini (DPCM 8 agosto 2013, art. 3)"
CONSENT_BODY = """\
Gentile paziente,
su sua richiesta il referto firmato digitalmente e le immagini dell'esame possono esserle consegnati \
online, sul Fascicolo Sanitario Elettronico (FSE), invece che su CD da ritirare presso il presidio.

- La consegna online avviene solo con il suo consenso esplicito, che può revocare in ogni momento \
prima della pubblicazione del referto, tornando al ritiro del CD.
- Referto e immagini restano disponibili online per 45 giorni dalla pubblicazione (Garante per la \
protezione dei dati personali, Linee guida in tema di referti on-line, 2009); dopo tale periodo \
potrà chiederne copia al presidio.
- Potrà scaricare le immagini in qualità diagnostica (DICOM) o come JPEG, e vedere chi ha consultato \
i suoi dati.
- Il referto resta comunque disponibile in forma cartacea su richiesta.
"""


def _prefix(facility: Facility) -> str:
    """TS-CAT → TSCA: four letters or digits of the facility's code."""
    return "".join(c for c in facility.code if c.isalnum())[:4]


def demo_load() -> None:
    loaded = services.procedures_load_csv(CATALOGUE.read_text(encoding="utf-8"))
    with transaction.atomic():
        ConsentText.objects.get_or_create(
            version=CONSENT_VERSION,
            defaults={
                "title": CONSENT_TITLE,
                "body": CONSENT_BODY,
                "published_at": timezone.make_aware(dt.datetime(2026, 1, 1)),
            },
        )
        for facility in Facility.objects.select_related("authority"):
            AccessionSequence.objects.get_or_create(facility=facility, defaults={"prefix": _prefix(facility)})
            for ae, name, modality, minutes, location in STATIONS:
                station, _created = Station.objects.get_or_create(
                    facility=facility,
                    ae_title=ae,
                    defaults={
                        "name": name,
                        "modality": modality,
                        "slot_minutes": minutes,
                        "open_weekdays": "123456",
                        "location": location,
                    },
                )
                if not station.location:  # a demo loaded before rooms had a place
                    Station.objects.filter(pk=station.pk).update(location=location)
            phone, hours = _CUP.get(facility.authority.code, ("040 000 4040", ""))
            FacilityContact.objects.get_or_create(
                facility=facility,
                defaults={
                    "address": ADDRESSES.get(facility.code, facility.name),
                    "cup_phone": phone,
                    "cup_hours": hours,
                },
            )
    _demo_bookings()
    logger.info("CUP demo: %d procedures added, %d updated", loaded.created, loaded.updated)


# (patient's codice fiscale in archive/demo.py order, facility, station, procedure, days ahead, hour, delivery)
_UPCOMING = [
    (0, "TS-CAT", "CT01", "87.41.1", 1, 9, DistributionChoice.Delivery.ONLINE),
    (1, "UD-SMM", "MR01", "88.91.1", 2, 10, DistributionChoice.Delivery.CD),
    (2, "PN-SMA", "US01", "88.72.2", 1, 11, DistributionChoice.Delivery.ONLINE),
    (3, "GO-SG", "NM01", "92.18.6", 3, 8, DistributionChoice.Delivery.CD),
]


def _demo_bookings() -> None:
    from archive import demo as archive_demo

    people = [Patient.objects.filter(codice_fiscale=p.codice_fiscale).first() for p in archive_demo.PATIENTS]
    for n, (pi, facility_code, ae, code, days, hour, delivery) in enumerate(_UPCOMING):
        external_id = f"demo-{n}"
        patient = people[pi]
        if patient is None or Booking.objects.filter(external_id=external_id).exists():
            continue
        station = Station.objects.get(facility__code=facility_code, ae_title=ae)
        free: list[dt.datetime] = []
        for ahead in range(days, days + 7):  # the room's next open day
            day = timezone.localdate() + dt.timedelta(days=ahead)
            free = [s for s in services.station_free_slots(station=station, day=day) if s.hour >= hour]
            if free:
                break
        if not free:
            continue
        services.booking_create(
            patient=patient,
            procedure=Procedure.objects.get(code=code),
            station=station,
            scheduled_at=free[0],
            delivery=delivery,
            consent_given=delivery == DistributionChoice.Delivery.ONLINE,
            channel=Booking.Channel.AUTHORITY_CUP,
            user=None,
            recorded_by_name="demo",
            external_id=external_id,
            clinical_question="Controllo (prenotazione dimostrativa)",
        )
    _demo_performed_bookings()


# The bookings behind the demo's studies (archive/demo.py STUDIES, by index):
# (procedure, station, delivery, clinical question). The first keeps its external
# identifier "demo-done", by which earlier demos and the tests know it.
_PERFORMED = {
    0: (
        "87.41",
        "CT01",
        DistributionChoice.Delivery.ONLINE,
        "Dispnea da sforzo, fumatore: escludere lesioni polmonari.",
    ),
    1: ("87.41", "CT01", DistributionChoice.Delivery.ONLINE, "Controllo di nodulo polmonare noto."),
    2: ("88.91.1", "MR01", DistributionChoice.Delivery.ONLINE, "Cefalea persistente da tre mesi."),
    3: ("88.72.1", "US01", DistributionChoice.Delivery.ONLINE, "Soffio cardiaco di nuovo riscontro."),
    4: ("88.76.1", "US01", DistributionChoice.Delivery.ONLINE, "Dolore addominale ricorrente."),
    5: ("92.18.6", "NM01", DistributionChoice.Delivery.CD, "Dolore osseo diffuso: ricerca di localizzazioni."),
}
# Study 6 (Coren Elena, a child examined at Monfalcone under the hospital's local
# number, with no CUP booking: an emergency exam) has none on purpose. It is the
# reconciliation queue's one demo item: what an archivist does with a study that
# matches no booking (re-assign it to the patient once the CUP has registered her,
# or reject it). Every other demo study is tied to its booking by the matching.


def _demo_performed_bookings() -> None:
    """The bookings behind the demo studies, made before their studies are matched:
    the post-ingest matching links each to its study, so the demo shows performed
    exams and the reconciliation queue holds only its one deliberate item.

    Past appointments cannot be booked through the services (a date in the
    past is refused), so these rows are written directly.
    """
    from archive import demo as archive_demo

    for n, (code, ae, delivery, question) in _PERFORMED.items():
        external_id = "demo-done" if n == 0 else f"demo-done-{n}"
        accession = archive_demo.demo_accession_number(n)
        study = Study.objects.filter(accession_number=accession).select_related("patient", "facility").first()
        if study is None or study.patient.provisional or Booking.objects.filter(external_id=external_id).exists():
            continue
        station = Station.objects.get(facility=study.facility, ae_title=ae)
        day = study.study_date or timezone.localdate()
        with transaction.atomic():
            booking = Booking.objects.create(
                accession_number=study.accession_number,
                study_instance_uid=study.study_instance_uid,
                patient=study.patient,
                facility=study.facility,
                procedure=Procedure.objects.get(code=code),
                station=station,
                scheduled_at=timezone.make_aware(dt.datetime.combine(day, dt.time(8 + n))),
                channel=Booking.Channel.REGIONAL_CUP,
                external_id=external_id,
                clinical_question=question,
            )
            services._record_status(booking, Booking.Status.BOOKED, system="demo")
            online = delivery == DistributionChoice.Delivery.ONLINE
            services._choice_add(
                booking,
                delivery=delivery,
                consent_text=services.consent_text_current() if online else None,
                consent_given=online,
                channel=Booking.Channel.REGIONAL_CUP,
                user=None,
                recorded_by_name="demo",
            )
