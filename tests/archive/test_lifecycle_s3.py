"""The long-term tier on an S3-compatible object store: a moto server the test
starts on 127.0.0.1, reached over HTTP by django-storages and boto3."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest

from archive.models import Copy, StorageAlert
from archive.storage import lifecycle, retrieve
from archive.storage import tiers as storage
from tests.conftest import Region, S3Server

from .lifecycle_helpers import copy_file, ingest_files, read_sha256, tiers_of

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

REGION_TIER = "longterm:region"


@pytest.fixture
def s3_longterm(settings, s3_server: S3Server) -> S3Server:  # type: ignore[no-untyped-def]
    settings.STORAGES = {**settings.STORAGES, "longterm": s3_server.storage_settings()}
    settings.PACS_EVICT_AFTER_DAYS = 5
    return s3_server


@pytest.fixture
def old_study(region: Region, ct_study: list[Path]):  # type: ignore[no-untyped-def]
    return ingest_files(ct_study, region.facility, age_days=10)


def _client(server: S3Server):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _keys(server: S3Server) -> set[str]:
    listing = _client(server).list_objects_v2(Bucket=server.bucket)
    return {o["Key"] for o in listing.get("Contents", [])}


def test_migrate_evict_and_read_back_from_the_object_store(s3_longterm: S3Server, old_study) -> None:  # type: ignore[no-untyped-def]
    assert not storage.tier_is_local(REGION_TIER)
    facility_files = [copy_file(Copy.objects.get(instance=i)) for i in old_study]
    result = lifecycle.lifecycle_run()
    assert (result.migrated, result.evicted, result.failed) == (6, 6, 0)
    keys = _keys(s3_longterm)
    assert len(keys) == 6 and all(k.startswith("region/studies/") for k in keys)
    assert not any(p.exists() for p in facility_files)
    for instance in old_study:
        assert tiers_of(instance, verified=False) == {REGION_TIER}
        assert read_sha256(instance) == instance.sha256
    # Senders that need a file name get a spooled local copy, removed afterwards.
    instance = retrieve.instances_with_copies(type(old_study[0]).objects.filter(pk=old_study[0].pk)).get()
    with retrieve.instance_file(instance) as path:
        assert path.stat().st_size == instance.size
    assert not path.exists()
    # Recalled into the facility tier from the object store.
    assert lifecycle.instance_recall(instance_pk=instance.pk) is True
    assert tiers_of(instance) == {"facility:TS-CAT", REGION_TIER}


def test_an_existing_object_is_adopted_or_replaced_when_unrecorded(s3_longterm: S3Server, old_study) -> None:  # type: ignore[no-untyped-def]
    good, bad = old_study[0], old_study[1]
    client = _client(s3_longterm)
    good_rel = Copy.objects.get(instance=good).path
    client.put_object(
        Bucket=s3_longterm.bucket,
        Key=f"region/{good_rel}",
        Body=copy_file(Copy.objects.get(instance=good)).read_bytes(),
    )
    before = client.head_object(Bucket=s3_longterm.bucket, Key=f"region/{good_rel}")["ETag"]
    bad_rel = Copy.objects.get(instance=bad).path
    client.put_object(Bucket=s3_longterm.bucket, Key=f"region/{bad_rel}", Body=b"not the image")
    # A verified copy is never overwritten by copy_store.
    with open(copy_file(Copy.objects.get(instance=bad)), "rb") as fh, pytest.raises(storage.CopyMismatch):
        storage.copy_store(fh, REGION_TIER, bad_rel, sha256=bad.sha256)
    # The lifecycle adopts the good leftover and replaces the damaged one (no row records either).
    assert lifecycle.migrate_batch().migrated == 6
    assert client.head_object(Bucket=s3_longterm.bucket, Key=f"region/{good_rel}")["ETag"] == before
    assert storage.copy_sha256(REGION_TIER, bad_rel) == bad.sha256


def test_fixity_repairs_a_damaged_object(s3_longterm: S3Server, old_study) -> None:  # type: ignore[no-untyped-def]
    lifecycle.lifecycle_run()
    lifecycle.instance_recall(instance_pk=old_study[0].pk)
    damaged = Copy.objects.get(instance=old_study[0], tier=REGION_TIER)
    _client(s3_longterm).put_object(Bucket=s3_longterm.bucket, Key=f"region/{damaged.path}", Body=b"bit rot")
    lost = Copy.objects.get(instance=old_study[1], tier=REGION_TIER)
    _client(s3_longterm).put_object(Bucket=s3_longterm.bucket, Key=f"region/{lost.path}", Body=b"bit rot")
    run = lifecycle.fixity_audit(cycle_days=1, sample=0)
    assert (run.checked, run.damaged, run.repaired) == (7, 2, 1)
    assert storage.copy_sha256(damaged.tier, damaged.path) == old_study[0].sha256
    assert StorageAlert.objects.get(repaired=True).tier == REGION_TIER
    # The other one had no other copy: alerted, out of service, never deleted.
    alert = StorageAlert.objects.get(repaired=False)
    assert alert.kind == StorageAlert.Kind.UNREPAIRABLE and alert.instance_id == old_study[1].pk
    lost.refresh_from_db()
    assert lost.verified_at is None
    assert f"region/{lost.path}" in _keys(s3_longterm)


def test_the_store_down_during_a_run_loses_nothing(s3_longterm: S3Server, old_study, settings) -> None:  # type: ignore[no-untyped-def]
    settings.STORAGES = {
        **settings.STORAGES,
        "longterm": s3_longterm.storage_settings(connect_timeout=0.5, read_timeout=0.5),
    }
    lifecycle.instance_migrate(instance_pk=old_study[0].pk)  # one done while the store was up
    s3_longterm.pause()
    try:
        started = time.monotonic()
        result = lifecycle.lifecycle_run()
        took = time.monotonic() - started
        assert result.migrated == 0 and result.evicted == 0 and result.failed >= 1
        assert took < 30, "a store that does not answer must not hold the worker"
        # Nothing was evicted (not even the instance whose copy was verified
        # before: its copy cannot be checked now), and every instance reads.
        for instance in old_study:
            assert "facility:TS-CAT" in tiers_of(instance)
            assert read_sha256(instance) == instance.sha256
    finally:
        s3_longterm.resume()
    result = lifecycle.lifecycle_run()
    assert (result.migrated, result.evicted, result.failed) == (5, 6, 0)
    for instance in old_study:
        assert tiers_of(instance) == {REGION_TIER}
        assert read_sha256(instance) == instance.sha256


def test_scope_switch_on_the_object_store(s3_longterm: S3Server, old_study, settings) -> None:  # type: ignore[no-untyped-def]
    lifecycle.lifecycle_run()
    settings.PACS_LONG_TERM_SCOPE = "authority"
    migration = lifecycle.scope_migration_step(limit=4)
    assert (migration.total, migration.released) == (6, 4)
    migration = lifecycle.scope_migration_step(limit=4)
    assert migration.finished_at is not None and migration.released == 6
    keys = _keys(s3_longterm)
    assert len(keys) == 6 and all(k.startswith("ASUGI/studies/") for k in keys)
    for instance in old_study:
        assert read_sha256(instance) == instance.sha256
