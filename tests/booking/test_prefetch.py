"""Prefetch: a booking recalls the patient's relevant priors into the booking
facility's tier before the appointment (on booking, and by the daily sweep)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.utils import timezone

from archive.models import Copy, Instance, Study
from archive.sample_data import MR, PatientInfo, write_study
from archive.storage import lifecycle
from booking import services, tasks
from booking.models import Booking
from tests.archive.lifecycle_helpers import ingest_files, read_sha256, tiers_of

from .conftest import Cup

pytestmark = pytest.mark.django_db


def _prior(cup: Cup, tmp_path: Path, name: str, *, years_ago: float, **kwargs: object) -> list[Instance]:
    info = PatientInfo(patient_id="MRN0001", name="Rossi^Mario", birth_date="19560312", sex="M")
    date = timezone.localdate() - dt.timedelta(days=round(365 * years_ago))
    files = write_study(tmp_path / name, patient=info, series=1, instances_per_series=2, study_date=date, **kwargs)
    instances = ingest_files(files, cup.region.facility, age_days=365 * years_ago + 1)
    Study.objects.filter(series__instances__in=instances).update(patient=cup.mario)
    return instances


@pytest.fixture
def priors(cup: Cup, tmp_path: Path, settings) -> dict[str, list[Instance]]:  # type: ignore[no-untyped-def]
    settings.PACS_PREFETCH_YEARS = 5
    made = {
        "ct_2y": _prior(cup, tmp_path, "ct2", years_ago=2),
        "ct_8y": _prior(cup, tmp_path, "ct8", years_ago=8),
        "mr_1y": _prior(cup, tmp_path, "mr1", years_ago=1, source=MR, extra={"BodyPartExamined": "HEAD"}),
    }
    result = lifecycle.lifecycle_run()
    assert result.evicted == 6 and result.failed == 0
    return made


def test_a_booking_recalls_the_same_modality_priors_into_its_facility(  # type: ignore[no-untyped-def]
    cup: Cup, priors, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    queued: list[int] = []
    monkeypatch.setattr(services, "booking_prefetch_enqueue", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        booking = cup.book()  # a CT tomorrow
    assert queued == [booking.pk]

    result = tasks.booking_prefetch(booking.pk)
    assert result == {"studies": 1, "instances": 2, "recalled": 2, "failed": 0}
    for instance in priors["ct_2y"]:
        assert tiers_of(instance) == {"facility:TS-CAT", "longterm:region"}
        copy = Copy.objects.get(instance=instance, tier="facility:TS-CAT")
        assert copy.keep_until >= booking.scheduled_at + dt.timedelta(days=29)
        assert read_sha256(instance) == instance.sha256
    for instance in priors["ct_8y"] + priors["mr_1y"]:
        assert tiers_of(instance) == {"longterm:region"}
    # Run twice (the day's sweep after the booking's own): nothing more to do.
    assert tasks.booking_prefetch(booking.pk)["recalled"] == 0
    # The lifecycle keeps the recalled copies until after the appointment.
    assert lifecycle.lifecycle_run().evicted == 0


def test_the_body_part_brings_priors_of_another_modality_to_the_other_facility(cup: Cup, priors) -> None:  # type: ignore[no-untyped-def]
    booking = cup.book(station=cup.mr_station)
    booking.procedure.body_part = "HEAD"
    booking.procedure.modality = "XX"
    booking.procedure.save()
    Booking.objects.filter(pk=booking.pk).update(facility=cup.region.other_facility)
    result = tasks.booking_prefetch(booking.pk)
    assert result["recalled"] == 2
    for instance in priors["mr_1y"]:
        assert tiers_of(instance) == {"facility:GO-SG", "longterm:region"}


def test_the_daily_sweep_queues_the_bookings_of_the_next_days(cup: Cup, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_PREFETCH_DAYS_AHEAD = 2
    monkeypatch.setattr(services, "booking_prefetch_enqueue", lambda pk: None)
    soon = cup.book()
    later = cup.book(when=cup.next_slot(days=10))
    cancelled = cup.book(station=cup.mr_station)
    Booking.objects.filter(pk=cancelled.pk).update(status=Booking.Status.CANCELLED)
    queued: list[int] = []
    monkeypatch.setattr(tasks.booking_prefetch, "delay", queued.append)
    assert tasks.bookings_prefetch() == 1
    assert queued == [soon.pk] and later.pk not in queued
