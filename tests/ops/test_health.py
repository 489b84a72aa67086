"""Liveness and readiness (pacs.ops.health): 200 when all is well, 503 naming what is not.

Real checks throughout: the test database, the embedded filesystem broker and
a Redis address where none listens, the facility tiers' folders, a real DICOM
listener answering (or not) the C-ECHO."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from archive.storage import tiers as storage
from tests.conftest import free_port


@pytest.fixture
def well(settings, region):  # type: ignore[no-untyped-def]
    """Readiness with no worker expected and no listener checked, unless a test asks."""
    settings.PACS_HEALTH_CELERY_WORKERS = False
    settings.PACS_HEALTH_DICOM_LISTENER = False
    return region


def _ready(client: Client | None = None, **extra: Any) -> tuple[int, dict[str, Any]]:
    response = (client or Client()).get("/health/ready/", **extra)
    return response.status_code, json.loads(response.content)


def test_liveness_answers_without_asking_anything(db: None) -> None:
    response = Client().get("/health/live/")
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
def test_ready_when_all_is_well_names_every_tier(well) -> None:  # type: ignore[no-untyped-def]
    status, body = _ready()
    assert status == 200, body
    assert body["status"] == "ok"
    assert body["checks"] == {
        "database": "OK",
        "broker": "OK",
        "tier:facility:GO-SG": "OK",
        "tier:facility:TS-CAT": "OK",
        "tier:longterm:region": "OK",
        "tier:preservation:region": "OK",
    }
    # The probes leave nothing behind in the tiers.
    root = storage.absolute_path(storage.facility_tier("TS-CAT"), ".")
    assert not [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.django_db(transaction=True)
def test_an_unwritable_tier_is_named_and_reveals_no_path(well, settings) -> None:  # type: ignore[no-untyped-def]
    # The tier's folder is a file: nothing can be written under it, even by root.
    root = Path(settings.PACS_FACILITY_TIER_DIR) / "TS-CAT"
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_bytes(b"not a folder")
    status, body = _ready()
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["tier:facility:TS-CAT"] != "OK"
    assert body["checks"]["tier:facility:GO-SG"] == "OK"
    assert body["checks"]["database"] == "OK"
    text = json.dumps(body)
    assert str(settings.PACS_FACILITY_TIER_DIR) not in text and "/" not in text.replace("\\/", "")


@pytest.mark.django_db(transaction=True)
def test_a_redis_broker_that_is_down_is_named(well, settings) -> None:  # type: ignore[no-untyped-def]
    port = free_port()  # nothing listens there
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{port}/0"
    status, body = _ready()
    assert status == 503
    assert body["checks"]["broker"] == "broker unavailable"
    assert str(port) not in json.dumps(body)


@pytest.mark.django_db(transaction=True)
def test_a_filesystem_broker_without_its_folder_is_named(well, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.CELERY_BROKER_URL = "filesystem://"  # the embedded default; CI runs the suite on Redis
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "data_folder_in": str(tmp_path / "gone"),
    }
    status, body = _ready()
    assert status == 503
    assert body["checks"]["broker"] == "broker unavailable"


def test_a_live_redis_broker_is_ready(well, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        from tests.conftest import wait_until

        settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{port}/0"
        import redis

        wait_until(lambda: _pings(redis.Redis(port=port)), timeout=10, what="redis")
        status, body = _ready()
        assert body["checks"]["broker"] == "OK", body
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.mark.slow
def test_the_listener_answers_the_echo_and_a_stopped_one_is_named(listener: int, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_HEALTH_CELERY_WORKERS = False
    settings.PACS_HEALTH_DICOM_LISTENER = True
    settings.PACS_HEALTH_DICOM_CALLING_AE = "STORESCU"  # a node of TS-CAT from 127.0.0.1 (tests.conftest.region)
    settings.PACS_HEALTH_DICOM_CALLED_AE = "TSCAT_PACS"
    settings.PACS_DICOM_HOST = "127.0.0.1"
    settings.PACS_DICOM_PORT = listener
    status, body = _ready()
    assert status == 200, body
    assert body["checks"]["dicom_listener"] == "OK"

    settings.PACS_DICOM_PORT = free_port()  # no listener there
    status, body = _ready()
    assert status == 503
    assert body["checks"]["dicom_listener"] != "OK"
    assert "TSCAT_PACS" not in json.dumps(body) and str(settings.PACS_DICOM_PORT) not in json.dumps(body)


@pytest.mark.django_db(transaction=True)
def test_an_unknown_calling_ae_fails_the_echo(listener: int, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_HEALTH_CELERY_WORKERS = False
    settings.PACS_HEALTH_DICOM_CALLING_AE = "NOBODY"
    settings.PACS_HEALTH_DICOM_CALLED_AE = "TSCAT_PACS"
    settings.PACS_DICOM_HOST = "127.0.0.1"
    settings.PACS_DICOM_PORT = listener
    status, body = _ready()
    assert status == 503
    assert body["checks"]["dicom_listener"] != "OK"


@pytest.mark.django_db(transaction=True)
def test_no_worker_answering_is_named_when_workers_are_expected(well, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_HEALTH_CELERY_WORKERS = True
    settings.PACS_HEALTH_CELERY_TIMEOUT = 0.5
    status, body = _ready()
    assert status == 503
    assert body["checks"]["celery_workers"] == "no Celery worker answers"


@pytest.mark.django_db(transaction=True)
def test_restricted_readiness_takes_the_metrics_gate(well, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_HEALTH_RESTRICTED = True
    assert _ready(REMOTE_ADDR="203.0.113.9")[0] == 403
    assert _ready(REMOTE_ADDR="127.0.0.1")[0] == 200
    # Liveness stays public.
    assert Client().get("/health/live/", REMOTE_ADDR="203.0.113.9").status_code == 200


@pytest.fixture
def s3_longterm(settings, s3_server):  # type: ignore[no-untyped-def]
    settings.STORAGES = {**settings.STORAGES, "longterm": s3_server.storage_settings(connect_timeout=1, read_timeout=1)}
    return s3_server


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_object_store_tier_is_probed_and_named_when_it_is_down(well, s3_longterm) -> None:  # type: ignore[no-untyped-def]
    import boto3

    status, body = _ready()
    assert status == 200, body
    assert body["checks"]["tier:longterm:region"] == "OK"
    client = boto3.client(
        "s3",
        endpoint_url=s3_longterm.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    # The probe left no object behind.
    assert client.list_objects_v2(Bucket=s3_longterm.bucket).get("KeyCount", 0) == 0

    s3_longterm.proc.terminate()
    s3_longterm.proc.wait(10)
    status, body = _ready()
    assert status == 503
    assert body["checks"]["tier:longterm:region"] == "not writable or readable"
    assert s3_longterm.endpoint not in json.dumps(body)
