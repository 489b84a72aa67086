"""Post-ingest work in a real Celery worker process."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.dispatch import receiver
from django.utils import timezone

from archive.ingest import instance_ingest, study_post_ingest
from archive.models import Study
from archive.signals import study_instances_received
from archive.tasks import post_ingest_sweep
from tests.conftest import wait_until
from tests.dicom_client import send_files


@pytest.mark.slow
def test_stored_study_is_marked_updated_by_the_worker(
    start_listener_process, celery_worker, region, ct_study: list[Path]
) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process()
    report = send_files(listener.port, ct_study)
    assert set(report.statuses.values()) == {0}
    study = wait_until(
        lambda: Study.objects.filter(post_ingest_pending=False, post_ingest_at__isnull=False).first(),
        timeout=60,
        what="post-ingest task run by the worker",
    )
    assert study.post_ingest_at >= study.last_received_at


@pytest.mark.slow
def test_the_sweep_queues_work_left_pending(celery_worker, region, ct_study: list[Path]) -> None:  # type: ignore[no-untyped-def]
    # A study whose task was never queued (the broker was down at commit time).
    for path in ct_study:
        instance_ingest(path=path, facility=region.facility, owned=False)
    Study.objects.update(post_ingest_pending=True, last_received_at=timezone.now() - dt.timedelta(minutes=10))
    assert post_ingest_sweep.delay(60.0)
    wait_until(lambda: Study.objects.filter(post_ingest_pending=False).exists(), timeout=60, what="swept")


def test_post_ingest_sends_the_signal_once_and_clears_the_flag(db, region, ct_study: list[Path]) -> None:  # type: ignore[no-untyped-def]
    for path in ct_study:
        instance_ingest(path=path, facility=region.facility, owned=False)
    study = Study.objects.get()
    calls: list[int] = []

    @receiver(study_instances_received)
    def count(sender, study_pk, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(study_pk)

    try:
        assert study_post_ingest(study_pk=study.pk) is True
        assert study_post_ingest(study_pk=study.pk) is False  # nothing owed any more
    finally:
        study_instances_received.disconnect(count)
    assert calls == [study.pk]
    study.refresh_from_db()
    assert not study.post_ingest_pending and study.post_ingest_at is not None


def test_arrivals_during_the_work_make_it_run_again(db, region, ct_study: list[Path]) -> None:  # type: ignore[no-untyped-def]
    instance_ingest(path=ct_study[0], facility=region.facility, owned=False)
    study = Study.objects.get()
    rounds: list[int] = []

    def late_arrival(sender, study_pk, **kwargs):  # type: ignore[no-untyped-def]
        rounds.append(study_pk)
        if len(rounds) == 1:  # an instance commits while the first round works
            instance_ingest(path=ct_study[1], facility=region.facility, owned=False)

    study_instances_received.connect(late_arrival)
    try:
        study_post_ingest(study_pk=study.pk)
    finally:
        study_instances_received.disconnect(late_arrival)
    assert len(rounds) == 2
    study.refresh_from_db()
    assert not study.post_ingest_pending and study.number_of_instances == 2
