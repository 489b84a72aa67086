"""``/metrics`` (pacs.ops.metrics): restricted, and the archive's own figures equal the database."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from archive.ingest import STORED, instance_ingest
from archive.models import FileRemoval, Instance, StorageAlert
from archive.sample_data import PatientInfo, write_study
from preservation.models import PreservationAlert
from tests.conftest import wait_until


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
    assert found["pacs_file_removals_pending"][()] == 0
    FileRemoval.objects.create(tier="facility:TS-CAT", path="studies/x.dcm", instance_id=None)
    assert _families(_scrape(REMOTE_ADDR="127.0.0.1")[1])["pacs_file_removals_pending"][()] == 1
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


# --- several gunicorn workers: one figure (pacs.gunicorn_conf) ------------------------------

LIVE = "/health/live/"


class _Gunicorn:
    """gunicorn as the Procfile runs it (the project's configuration; two workers) on a free port,
    started as the benchmarks start it (``bench.portal.run.web_start``)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        from bench.portal.run import web_start

        self.web = web_start(env, logs, workers=2, threads=2)
        wait_until(lambda: len(self.workers()) == 2, what="two workers", timeout=60)

    def warm(self, metrics_dir: Path) -> int:
        """Requests to the liveness view, four at a time, until both workers have counted some (each
        writes its own file); returns how many were sent. The kernel hands a connection to whichever
        worker accepts first, and one worker can take a long run of them: 20 in a row once did."""
        sent = 0
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(4) as pool:
            while True:
                list(pool.map(lambda _: self.get(LIVE), range(8)))
                sent += 8
                expected = {f"counter_{pid}.db" for pid in self.workers()}
                if {p.name for p in metrics_dir.glob("counter_*.db")} == expected:
                    return sent
                assert time.monotonic() < deadline, f"after {sent} requests, not both workers had counted one"

    def workers(self) -> list[int]:
        return self.web.workers()

    def get(self, path: str) -> str:
        # A new connection each time: the kernel hands it to either worker.
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web.port}{path}", timeout=30) as response:
            return str(response.read().decode())

    def live_count(self) -> float:
        """Requests to the liveness view answered 200, as /metrics says (summed over the workers)."""
        families = _families(self.get("/metrics"))
        return sum(
            value
            for labels, value in families.get("django_http_responses_total_by_status_view_method_total", {}).items()
            if dict(labels).get("view") == "health-live" and dict(labels).get("status") == "200"
        )

    def stop(self) -> None:
        self.web.stop()


@pytest.mark.django_db(transaction=True)
def test_gunicorn_workers_are_added_up_and_a_dead_worker_keeps_its_counts(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    env = {**process_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    web = _Gunicorn(env, tmp_path / "gunicorn-1")
    try:
        sent = web.warm(metrics_dir)
        for _ in range(30):
            web.get(LIVE)
        # Both workers counted requests, and every scrape, whichever worker answers it, gives the
        # sum: the warm-up requests and these 30.
        pids = web.workers()
        assert [web.live_count() for _ in range(8)] == [sent + 30.0] * 8

        # A worker killed: gunicorn replaces it, and its counts stay in the sum.
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: len(web.workers()) == 2 and pids[0] not in web.workers(), what="a new worker")
        web.get(LIVE)
        assert [web.live_count() for _ in range(4)] == [sent + 31.0] * 4
    finally:
        web.stop()

    # A new start forgets the earlier run's values.
    web = _Gunicorn(env, tmp_path / "gunicorn-2")
    try:
        for _ in range(5):
            web.get(LIVE)
        assert web.live_count() == 5.0
    finally:
        web.stop()
