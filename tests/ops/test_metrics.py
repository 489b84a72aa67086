"""``/metrics`` (pacs.ops.metrics): restricted, and the archive's own figures equal the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from archive.ingest import STORED, instance_ingest
from archive.models import Instance, StorageAlert
from archive.sample_data import PatientInfo, write_study
from preservation.models import PreservationAlert


def _families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _scrape(**extra: str) -> tuple[int, str]:
    response = Client().get("/metrics", **extra)
    return response.status_code, response.content.decode()


def test_refused_from_an_address_not_allowed(db: None) -> None:
    assert _scrape(REMOTE_ADDR="203.0.113.9")[0] == 403
    assert _scrape(REMOTE_ADDR="127.0.0.1")[0] == 200
    assert _scrape(REMOTE_ADDR="::1")[0] == 200


def test_refused_without_the_token_when_one_is_set(db: None, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token_file = tmp_path / "metrics-token"
    token_file.write_text("s3cret-token\n")
    settings.PACS_METRICS_TOKEN_FILE = str(token_file)
    settings.PACS_METRICS_ALLOWED_IPS = []  # any address, with the token
    assert _scrape(REMOTE_ADDR="203.0.113.9")[0] == 403
    assert _scrape(REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer wrong")[0] == 403
    assert _scrape(REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Basic s3cret-token")[0] == 403
    status, text = _scrape(REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert status == 200 and "pacs_instances_stored" in text


def test_per_facility_counts_equal_the_database(region, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for facility, n in ((region.facility, 3), (region.other_facility, 2)):
        patient = PatientInfo(patient_id=f"MRN-{facility.code}", name="Rossi^Mario", birth_date="19700101", sex="M")
        for path in write_study(tmp_path / facility.code, patient=patient, instances_per_series=n):
            assert instance_ingest(path=path, facility=facility, owned=False).outcome == STORED
    StorageAlert.objects.create(kind=StorageAlert.Kind.MISSING, tier="facility:TS-CAT", path="x", detail="test")
    status, text = _scrape(REMOTE_ADDR="127.0.0.1")
    assert status == 200
    found = _families(text)
    for code in ("TS-CAT", "GO-SG"):
        rows = Instance.objects.filter(facility__code=code)
        assert found["pacs_instances_stored"][(("facility", code),)] == rows.count()
        assert found["pacs_instances_stored_bytes"][(("facility", code),)] == sum(r.size for r in rows)
    assert found["pacs_instances_stored"][(("facility", "TS-CAT"),)] == 3
    assert found["pacs_storage_alerts_open"][()] == 1
    assert found["pacs_preservation_alerts_open"][()] == PreservationAlert.objects.count() == 0
    assert found["pacs_lifecycle_backlog_instances"][()] == 0  # nothing is past its policy yet
    # django-prometheus' own families are there too.
    assert any(name.startswith("django_http_requests") for name in found)
    # No patient datum in the text.
    assert "MRN-" not in text and "Rossi" not in text


@pytest.mark.django_db
def test_queue_lengths_are_skipped_for_the_filesystem_broker(settings) -> None:  # type: ignore[no-untyped-def]
    from pacs.ops.metrics import queue_lengths

    # The embedded default (make run); CI runs the suite on Redis, so it is set here.
    settings.CELERY_BROKER_URL = "filesystem://"
    assert queue_lengths() == {}


@pytest.mark.django_db
def test_queue_lengths_are_read_from_redis(settings) -> None:  # type: ignore[no-untyped-def]
    import redis
    from celery import current_app

    from pacs.ops.metrics import queue_lengths

    # A database of the machine's Redis (127.0.0.1, as CI's) that no other test uses.
    url = "redis://127.0.0.1:6379/13"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings.CELERY_BROKER_URL = url
    names = sorted({q.name for q in (current_app.conf.task_queues or ())} or {current_app.conf.task_default_queue})
    try:
        client.delete(*names)
        client.rpush(names[0], "a", "b")
        lengths = queue_lengths()
        assert set(lengths) == set(names)
        assert lengths[names[0]] == 2 and sum(lengths.values()) == 2
    finally:
        client.delete(*names)
        client.close()
