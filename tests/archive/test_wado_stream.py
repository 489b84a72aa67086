"""WADO-RS retrieve of whole instances written in large blocks (issue 21): the parts are the stored
files byte for byte whichever tier holds them, in few writes and a bounded number of queries."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom import dcmread

from archive.dicomweb import wado
from archive.models import Copy, Instance
from archive.storage import lifecycle
from archive.storage import tiers as storage
from tests import dicomweb_helpers as helpers
from tests.conftest import Region, S3Server
from tests.dicomweb_helpers import parse_multipart, uids

from .lifecycle_helpers import ingest_files as ingest_aged
from .lifecycle_helpers import tiers_of

pytestmark = pytest.mark.django_db
reader = helpers.reader
DICOM_ACCEPT = 'multipart/related; type="application/dicom"'


@pytest.fixture
def stored(region: Region, ct_study: list[Path]) -> list[Path]:
    helpers.ingest_files(ct_study, region.facility)
    return ct_study


def _study_url(path: Path) -> str:
    return f"/dicomweb/studies/{uids(path)[0]}"


def _parts_by_sop(response) -> dict[str, tuple[dict[str, str], bytes]]:  # type: ignore[no-untyped-def]
    parts = parse_multipart(response["Content-Type"], b"".join(response.streaming_content))
    return {str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID): (h, data) for h, data in parts}


def _assert_stored_files(response, files: list[Path]) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 200
    parts = _parts_by_sop(response)
    assert set(parts) == {uids(p)[2] for p in files}
    for path in files:
        headers, data = parts[uids(path)[2]]
        assert data == path.read_bytes()
        assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
        assert headers["content-location"].endswith("/instances/" + uids(path)[2])


def test_small_instances_go_out_in_one_block(client, stored, reader) -> None:  # type: ignore[no-untyped-def]
    response = client.get(_study_url(stored[0]), HTTP_ACCEPT=DICOM_ACCEPT, **reader.auth)
    chunks = list(response.streaming_content)
    # Six files of 39 KB and their part headers: one write, not one (or two) per file.
    assert len(chunks) == 1
    parts = parse_multipart(response["Content-Type"], b"".join(chunks))
    assert sorted(d for _h, d in parts) == sorted(p.read_bytes() for p in stored)


def test_parts_cut_across_blocks_are_the_stored_files(client, stored, reader, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Blocks smaller than a file and than a part's headers' distance to a block's end.
    for block in (4096, 1000, 39_000):
        monkeypatch.setattr(wado, "STREAM_BLOCK", block)
        response = client.get(_study_url(stored[0]), HTTP_ACCEPT=DICOM_ACCEPT, **reader.auth)
        chunks = list(response.streaming_content)
        assert all(len(c) <= block for c in chunks) and len(chunks) > 6
        response.streaming_content = iter(chunks)
        _assert_stored_files(response, stored)


def test_the_queries_do_not_grow_with_the_study(client, stored, reader) -> None:  # type: ignore[no-untyped-def]
    study, series, sop = uids(stored[0])
    counts = {}
    for label, url in (
        ("study", f"/dicomweb/studies/{study}"),
        ("series", f"/dicomweb/studies/{study}/series/{series}"),
        ("instance", f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"),
    ):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, HTTP_ACCEPT=DICOM_ACCEPT, **reader.auth)
            body = b"".join(response.streaming_content)
        assert response.status_code == 200 and body
        counts[label] = len(queries.captured_queries)
    # The study (6 instances) costs no more than one instance; the series' extra query is its existence.
    assert counts["study"] == counts["instance"]
    assert counts["series"] == counts["study"] + 1


def test_copies_outside_the_facility_tier_are_read_too(client, settings, region, ct_study, reader) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_EVICT_AFTER_DAYS = 5
    instances = ingest_aged(ct_study, region.facility, age_days=10)
    lifecycle.lifecycle_run()
    assert all(tiers_of(i) == {"longterm:region"} for i in instances)  # migrated, evicted from the facility
    response = client.get(_study_url(ct_study[0]), HTTP_ACCEPT=DICOM_ACCEPT, **reader.auth)
    _assert_stored_files(response, ct_study)
    # A facility copy missing from its folder: its other verified copy is read.
    instance = instances[0]
    Copy.objects.filter(instance=instance).update(tier="facility:TS-CAT")  # recorded there, absent from the folder
    response = client.get(_study_url(ct_study[0]), HTTP_ACCEPT=DICOM_ACCEPT, **reader.auth)
    _assert_stored_files(response, [p for p in ct_study if uids(p)[2] != instance.sop_instance_uid])


def test_an_instance_without_a_readable_copy_is_skipped(client, stored, reader) -> None:  # type: ignore[no-untyped-def]
    gone = Instance.objects.get(sop_instance_uid=uids(stored[1])[2])
    for copy in gone.copies.all():
        storage.absolute_path(copy.tier, copy.path).unlink()
    response = client.get(_study_url(stored[0]), HTTP_ACCEPT=DICOM_ACCEPT, **reader.auth)
    _assert_stored_files(response, [p for p in stored if p != stored[1]])
    # Nothing readable at all: 503, not an empty body.
    for instance in Instance.objects.all():
        for copy in instance.copies.all():
            storage.absolute_path(copy.tier, copy.path).unlink(missing_ok=True)
    response = client.get(_study_url(stored[0]), HTTP_ACCEPT=DICOM_ACCEPT, **reader.auth)
    assert response.status_code == 503 and response["Retry-After"] == "60"


@pytest.mark.slow
def test_copies_in_an_object_store_are_read(client, settings, region, ct_study, reader, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    settings.STORAGES = {**settings.STORAGES, "longterm": s3_server.storage_settings()}
    settings.PACS_EVICT_AFTER_DAYS = 5
    instances = ingest_aged(ct_study, region.facility, age_days=10)
    result = lifecycle.lifecycle_run()
    assert (result.migrated, result.evicted) == (6, 6)
    assert all(tiers_of(i) == {"longterm:region"} for i in instances)
    response = client.get(_study_url(ct_study[0]), HTTP_ACCEPT=DICOM_ACCEPT, **reader.auth)
    _assert_stored_files(response, ct_study)
