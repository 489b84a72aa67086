"""Fixtures of the CUP tests: a catalogue, stations, a consent text, a patient
with a real codice fiscale, and a booking on tomorrow's first free slot."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from django.utils import timezone

from archive.models import Patient, Study
from booking import matching, services
from booking.models import AccessionSequence, Booking, ConsentText, DistributionChoice, Procedure, Station
from tests.conftest import Region
from tests.dicomweb_helpers import ApiUser, make_user

# Rossi Mario, born in Trieste on 12 March 1956: python-codicefiscale's encoding.
MARIO_CF = "RSSMRA56C12L424P"
# Bianchi Laura, born in Udine on 2 July 1972.
LAURA_CF = "BNCLRA72L42L483A"


@dataclass
class Cup:
    region: Region
    ct: Procedure
    mr: Procedure
    ct_station: Station
    mr_station: Station
    other_ct_station: Station  # at the other facility
    consent: ConsentText
    mario: Patient
    laura: Patient
    operator: ApiUser

    def next_slot(self, station: Station | None = None, *, days: int = 1) -> dt.datetime:
        station = station or self.ct_station
        day = timezone.localdate() + dt.timedelta(days=days)
        return services.station_free_slots(station=station, day=day)[0]

    def book(
        self,
        patient: Patient | None = None,
        *,
        delivery: str = DistributionChoice.Delivery.ONLINE,
        station: Station | None = None,
        when: dt.datetime | None = None,
        **kwargs: object,
    ) -> Booking:
        station = station or self.ct_station
        procedure = self.ct if station.modality == "CT" else self.mr
        return services.booking_create(
            patient=patient or self.mario,
            procedure=procedure,
            station=station,
            scheduled_at=when or self.next_slot(station),
            delivery=delivery,
            consent_given=delivery == DistributionChoice.Delivery.ONLINE,
            channel=Booking.Channel.AUTHORITY_CUP,
            user=self.operator.user,
            **kwargs,  # type: ignore[arg-type]
        )


CUP_PERMS = (
    "archive.view_patient",
    "archive.add_patient",
    "archive.view_facility",
    "booking.view_booking",
    "booking.add_booking",
    "booking.change_booking",
    "booking.view_procedure",
)


@pytest.fixture
def cup(region: Region) -> Cup:
    ct = Procedure.objects.create(code="87.41", description="TC torace senza mdc", modality="CT", body_part="CHEST")
    mr = Procedure.objects.create(code="88.91.1", description="RM encefalo", modality="MR", body_part="HEAD")
    ct_station = Station.objects.create(facility=region.facility, ae_title="CT01", name="TC 1", modality="CT")
    mr_station = Station.objects.create(
        facility=region.facility, ae_title="MR01", name="RM 1", modality="MR", slot_minutes=30
    )
    other = Station.objects.create(facility=region.other_facility, ae_title="CTGO", name="TC Gorizia", modality="CT")
    AccessionSequence.objects.create(facility=region.facility, prefix="TSC")
    AccessionSequence.objects.create(facility=region.other_facility, prefix="GOS")
    consent = ConsentText.objects.create(
        version="2026-01",
        title="Informativa sulla consegna online di referti e immagini",
        body="Il referto e le immagini saranno disponibili sul Fascicolo Sanitario Elettronico per 45 giorni.",
        published_at=timezone.now() - dt.timedelta(days=30),
    )
    mario = Patient.objects.create(
        codice_fiscale=MARIO_CF, family_name="ROSSI", given_name="MARIO", birth_date=dt.date(1956, 3, 12), sex="M"
    )
    laura = Patient.objects.create(
        codice_fiscale=LAURA_CF, family_name="BIANCHI", given_name="LAURA", birth_date=dt.date(1972, 7, 2), sex="F"
    )
    operator = make_user("operatore", *CUP_PERMS, staff=False)
    return Cup(region, ct, mr, ct_station, mr_station, other, consent, mario, laura, operator)


def linked_booking(cup: Cup, study: Study, **kwargs: object) -> Booking:
    """A booking of the study's patient, tied to the study by the matching (status performed)."""
    booking = cup.book(**kwargs)
    Study.objects.filter(pk=study.pk).update(accession_number=booking.accession_number)
    outcome = matching.study_match(study_pk=study.pk)
    # A test with a real Celery worker may see the study's own matching task (queued when it
    # was stored) link it first, once the accession number is there: the same link.
    assert (outcome.result, outcome.booking_pk) in (("linked", booking.pk), ("already_linked", booking.pk)), outcome
    booking.refresh_from_db()
    assert booking.status == Booking.Status.PERFORMED
    return booking
