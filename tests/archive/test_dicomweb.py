"""DICOMweb through Django's test client: every status the service can answer, and what it changes."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from django.test import RequestFactory, override_settings
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from archive.dicomweb.media import parse_accept
from archive.dicomweb.stow import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_CONFLICT,
    FAILURE_SOP_CLASS_NOT_SUPPORTED,
    FAILURE_STUDY_MISMATCH,
    multipart_spool,
)
from archive.dicomweb.views import StudiesView
from archive.models import Copy, Instance, InstanceConflict, Study
from archive.sample_data import COMPRESSED, MR, SR, US_MULTIFRAME, PatientInfo, bundled_path, fresh_copy, write_study
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests import dicomweb_helpers as helpers
from tests.dicomweb_helpers import incoming_files, ingest_files, multipart_body, parse_multipart, tier_files, uids

# Fixtures (pytest finds them as names of this module).
reader, archivist, nobody = helpers.reader, helpers.archivist, helpers.nobody

DICOM_ACCEPT = 'multipart/related; type="application/dicom"'


@pytest.fixture
def stored(region, ct_study: list[Path]) -> list[Path]:
    ingest_files(ct_study, region.facility)
    return ct_study


def _study_url(path: Path, root: str = "/dicomweb") -> str:
    study, _series, _sop = uids(path)
    return f"{root}/studies/{study}"


def _instance_url(path: Path, root: str = "/dicomweb") -> str:
    study, series, sop = uids(path)
    return f"{root}/studies/{study}/series/{series}/instances/{sop}"


def _body(response) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(response.streaming_content) if response.streaming else response.content


# --- WADO-RS ---------------------------------------------------------------------------------------


def test_study_retrieve_sends_every_stored_file_byte_for_byte(client, stored, reader) -> None:
    response = client.get(_study_url(stored[0]), HTTP_ACCEPT=DICOM_ACCEPT, **reader.auth)
    assert response.status_code == 200
    assert response["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')
    parts = parse_multipart(response["Content-Type"], _body(response))
    originals = {uids(p)[2]: p.read_bytes() for p in stored}
    assert len(parts) == len(originals) == 6
    for headers, data in parts:
        sop = dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        assert data == originals[sop]
        assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
        assert headers["content-location"].endswith(f"/instances/{sop}")
        assert headers["content-location"].startswith("http://testserver/dicomweb/studies/")
    event = AuditEvent.objects.get(action="dicomweb.retrieve")
    assert event.outcome == AuditEvent.Outcome.SUCCESS
    assert event.user == reader.user and event.study == Study.objects.get()
    assert event.patient == Study.objects.get().patient and event.source == "127.0.0.1"
    assert event.detail["instances"] == 6 and event.detail["resource"] == "study"


def test_series_and_instance_retrieve(client, stored, reader) -> None:
    study, series, sop = uids(stored[0])
    response = client.get(f"/dicomweb/studies/{study}/series/{series}", **reader.auth)
    parts = parse_multipart(response["Content-Type"], _body(response))
    assert response.status_code == 200 and len(parts) == 3
    response = client.get(_instance_url(stored[0]), HTTP_ACCEPT=f"{DICOM_ACCEPT}; transfer-syntax=*", **reader.auth)
    ((_headers, data),) = parse_multipart(response["Content-Type"], _body(response))
    assert data == stored[0].read_bytes()


def test_a_transfer_syntax_the_archive_cannot_make_is_not_acceptable(client, stored, reader) -> None:
    # JPEG Lossless: the archive has no encoder for it.
    accept = f"{DICOM_ACCEPT}; transfer-syntax=1.2.840.10008.1.2.4.70"
    response = client.get(_study_url(stored[0]), HTTP_ACCEPT=accept, **reader.auth)
    assert response.status_code == 406
    assert "transfer-syntax=*" in response.json()["detail"]
    # JPEG Baseline is made for 8-bit images only: the 16-bit CT cannot be converted.
    accept = f"{DICOM_ACCEPT}; transfer-syntax=1.2.840.10008.1.2.4.50"
    response = client.get(_instance_url(stored[0]), HTTP_ACCEPT=accept, **reader.auth)
    assert response.status_code == 406 and "8-bit" in response.json()["detail"]
    response = client.get(_study_url(stored[0]), HTTP_ACCEPT="application/json", **reader.auth)
    assert response.status_code == 406
    # The stored transfer syntax, asked explicitly, is fine.
    accept = f"{DICOM_ACCEPT}; transfer-syntax=1.2.840.10008.1.2.1"
    assert client.get(_study_url(stored[0]), HTTP_ACCEPT=accept, **reader.auth).status_code == 200


@pytest.mark.parametrize(
    "source", ["MR_small_jp2klossless.dcm", "JPEG-lossy.dcm", US_MULTIFRAME, "MR_small_RLE.dcm", MR]
)
def test_instances_in_the_transfer_syntax_asked(client, region, reader, tmp_path, source: str) -> None:
    """Issue 19: another transfer syntax asked is made by transcoding (not a 406); ``*`` and no
    parameter give the stored bytes; the archived file is unchanged."""
    from tests.archive.test_transcode import reference_pixels

    files = write_study(tmp_path, patient=PatientInfo("TX1"), source=source, instances_per_series=1)
    ingest_files(files, region.facility)
    stored_bytes = files[0].read_bytes()
    stored_ts = str(dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    archived = [p for p in tier_files(region.facility.code) if p.read_bytes() == stored_bytes]
    assert archived
    url = _instance_url(files[0])
    for target in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"):
        response = client.get(url, HTTP_ACCEPT=f"{DICOM_ACCEPT}; transfer-syntax={target}", **reader.auth)
        assert response.status_code == 200, (target, response.content[:300])
        ((headers, data),) = parse_multipart(response["Content-Type"], _body(response))
        assert headers["content-type"] == f"application/dicom; transfer-syntax={target}"
        got = dcmread(io.BytesIO(data))
        assert got.file_meta.TransferSyntaxUID == target
        expected = reference_pixels(files[0])
        if stored_ts in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"):
            assert np.abs(got.pixel_array.astype(float) - expected).max() <= 1
        else:
            assert np.array_equal(got.pixel_array, expected), target
    # Two choices, in order of preference: the first the archive can make.
    accept = f"{DICOM_ACCEPT}; transfer-syntax=1.2.840.10008.1.2.4.70, {DICOM_ACCEPT}; transfer-syntax=*;q=0.5"
    response = client.get(url, HTTP_ACCEPT=accept, **reader.auth)
    ((headers, data),) = parse_multipart(response["Content-Type"], _body(response))
    if stored_ts != "1.2.840.10008.1.2.4.70":
        assert data == stored_bytes and headers["content-type"].endswith(stored_ts)
    for accept in (f"{DICOM_ACCEPT}; transfer-syntax=*", DICOM_ACCEPT):
        response = client.get(url, HTTP_ACCEPT=accept, **reader.auth)
        assert parse_multipart(response["Content-Type"], _body(response))[0][1] == stored_bytes
    assert all(p.read_bytes() == stored_bytes for p in archived)


def test_unknown_and_malformed_uids(client, stored, reader) -> None:
    study, series, sop = uids(stored[0])
    unknown = generate_uid()
    response = client.get(f"/dicomweb/studies/{unknown}", **reader.auth)
    assert response.status_code == 404 and unknown in response.json()["detail"]
    assert client.get(f"/dicomweb/studies/{study}/series/{unknown}", **reader.auth).status_code == 404
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{unknown}"
    assert client.get(url, **reader.auth).status_code == 404
    # An instance of another series of the same study is not under this series.
    other_series_sop = next(uids(p)[2] for p in stored if uids(p)[1] != series)
    assert (
        client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{other_series_sop}", **reader.auth).status_code
        == 404
    )
    response = client.get("/dicomweb/studies/1.2.abc", **reader.auth)
    assert response.status_code == 400 and "not a valid DICOM UID" in response.json()["detail"]
    assert client.get("/dicomweb/studies/01.2.3", **reader.auth).status_code == 400
    event = AuditEvent.objects.filter(action="dicomweb.retrieve").order_by("id").first()
    assert event.outcome == AuditEvent.Outcome.FAILURE and event.detail["error"]


def test_facility_root_serves_only_that_facility(client, stored, reader, region) -> None:
    own = client.get(_study_url(stored[0], "/dicomweb/TS-CAT"), **reader.auth)
    assert own.status_code == 200
    headers, _data = parse_multipart(own["Content-Type"], _body(own))[0]
    assert headers["content-location"].startswith("http://testserver/dicomweb/TS-CAT/studies/")
    other = client.get(_study_url(stored[0], "/dicomweb/GO-SG"), **reader.auth)
    assert other.status_code == 404 and "GO-SG" in other.json()["detail"]
    assert client.get(_study_url(stored[0], "/dicomweb/NOPE"), **reader.auth).status_code == 404


def test_anonymous_gets_401_and_is_audited(client, stored) -> None:
    response = client.get(_study_url(stored[0]))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token, Bearer"
    event = AuditEvent.objects.get(action="dicomweb.retrieve")
    assert event.outcome == AuditEvent.Outcome.DENIED and event.user is None
    assert client.get(_study_url(stored[0]), HTTP_AUTHORIZATION="Token not-a-token").status_code == 401


def test_user_without_permission_gets_403(client, stored, nobody) -> None:
    response = client.get(_study_url(stored[0]), **nobody.auth)
    assert response.status_code == 403
    event = AuditEvent.objects.get(action="dicomweb.retrieve")
    assert event.outcome == AuditEvent.Outcome.DENIED and event.user == nobody.user


def test_staff_session_works(client, stored, reader) -> None:
    client.force_login(reader.user)
    assert client.get(_study_url(stored[0])).status_code == 200


def test_unreadable_copies(client, stored, reader) -> None:
    missing = Instance.objects.get(sop_instance_uid=uids(stored[0])[2])
    copy = missing.copies.get()
    storage.absolute_path(copy.tier, copy.path).unlink()
    response = client.get(_instance_url(stored[0]), **reader.auth)
    assert response.status_code == 503 and "cannot be read" in response.json()["detail"]
    # In a study retrieve the unreadable instance is skipped, the others are sent.
    response = client.get(_study_url(stored[0]), **reader.auth)
    assert response.status_code == 200
    assert len(parse_multipart(response["Content-Type"], _body(response))) == 5


def test_metadata_is_dicom_json_with_bulk_data_uris(client, stored, reader) -> None:
    response = client.get(_study_url(stored[0]) + "/metadata", **reader.auth)
    assert response.status_code == 200 and response["Content-Type"] == "application/dicom+json"
    items = json.loads(_body(response))
    assert len(items) == 6
    by_sop = {item["00080018"]["Value"][0]: item for item in items}
    study, series, sop = uids(stored[0])
    item = by_sop[sop]
    original = dcmread(stored[0])
    restored = Dataset.from_json({k: v for k, v in item.items() if "BulkDataURI" not in v})
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "Rows", "Columns", "ImagePositionPatient"):
        assert restored[keyword].value == original[keyword].value, keyword
    pixel_uri = item["7FE00010"]["BulkDataURI"]
    assert pixel_uri == f"http://testserver{_instance_url(stored[0])}/bulkdata/7FE00010"
    assert item["7FE00010"]["vr"] == "OW"
    assert item["00083002"]["Value"] == ["1.2.840.10008.1.2.1"]
    assert item["00020010"]["Value"] == ["1.2.840.10008.1.2.1"]  # issue 19
    assert item["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    response = client.get(pixel_uri.removeprefix("http://testserver"), **reader.auth)
    ((headers, data),) = parse_multipart(response["Content-Type"], _body(response))
    assert data == original.PixelData and headers["content-type"].startswith("application/octet-stream")
    assert AuditEvent.objects.filter(action="dicomweb.metadata").count() == 1
    response = client.get(_study_url(stored[0]) + "/metadata", HTTP_ACCEPT="application/dicom", **reader.auth)
    assert response.status_code == 406


def test_big_endian_bulk_data_is_sent_little_endian(client, region, reader, tmp_path) -> None:
    files = write_study(
        tmp_path, patient=PatientInfo("BE1"), source=COMPRESSED["1.2.840.10008.1.2.2"], instances_per_series=1
    )
    ingest_files(files, region.facility)
    url = _instance_url(files[0])
    response = client.get(url + "/bulkdata/7FE00010", **reader.auth)
    ((_headers, data),) = parse_multipart(response["Content-Type"], _body(response))
    expected = dcmread(files[0]).pixel_array.astype("<u2").tobytes()
    assert data == expected


def test_native_frames(client, stored, reader) -> None:
    original = dcmread(stored[0])
    response = client.get(_instance_url(stored[0]) + "/frames/1", **reader.auth)
    assert response.status_code == 200
    assert response["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    ((headers, data),) = parse_multipart(response["Content-Type"], _body(response))
    assert data == original.PixelData
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    response = client.get(_instance_url(stored[0]) + "/frames/2", **reader.auth)
    assert response.status_code == 400 and "1 frame" in response.json()["detail"]
    assert client.get(_instance_url(stored[0]) + "/frames/x", **reader.auth).status_code == 400
    assert client.get(_instance_url(stored[0]) + "/frames/0", **reader.auth).status_code == 400


def test_compressed_multiframe_frames_are_the_original_bitstream(client, region, reader, tmp_path) -> None:
    files = write_study(tmp_path, patient=PatientInfo("US1"), source=US_MULTIFRAME, instances_per_series=1)
    ingest_files(files, region.facility)
    original = dcmread(files[0])
    expected = list(generate_frames(original.PixelData, number_of_frames=int(original.NumberOfFrames)))
    response = client.get(_instance_url(files[0]) + "/frames/1,5,30", **reader.auth)
    assert response.status_code == 200
    assert response["Content-Type"].startswith('multipart/related; type="image/jpeg"')
    parts = parse_multipart(response["Content-Type"], _body(response))
    assert [data for _h, data in parts] == [expected[0], expected[4], expected[29]]
    assert parts[0][0]["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    url = _instance_url(files[0])
    # Asked as octet-stream (PS3.18 8.7.3): the frames decoded, uncompressed, little endian.
    decoded = original.pixel_array
    for accept in (
        'multipart/related; type="application/octet-stream"',
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
    ):
        response = client.get(url + "/frames/1,30", HTTP_ACCEPT=accept, **reader.auth)
        assert response.status_code == 200 and 'type="application/octet-stream"' in response["Content-Type"]
        parts = parse_multipart(response["Content-Type"], _body(response))
        assert [h["content-type"] for h, _d in parts] == [
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        ] * 2
        assert [d for _h, d in parts] == [decoded[0].tobytes(), decoded[29].tobytes()]
    # OHIF's and Cornerstone's way: octet-stream, any transfer syntax: the stored bitstream, still
    # an octet-stream part, naming its transfer syntax (issue 19: it came as image/jpeg).
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    response = client.get(url + "/frames/2", HTTP_ACCEPT=accept, **reader.auth)
    assert response["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    ((headers, data),) = parse_multipart(response["Content-Type"], _body(response))
    assert data == expected[1]
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
    # A compressed media type named by the client: JPEG 2000 (its default, lossless) made from the decode.
    response = client.get(url + "/frames/3", HTTP_ACCEPT='multipart/related; type="image/jp2"', **reader.auth)
    assert response.status_code == 200 and response["Content-Type"].startswith('multipart/related; type="image/jp2"')
    ((headers, data),) = parse_multipart(response["Content-Type"], _body(response))
    assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    from pydicom.pixels import decompress as _unused  # noqa: F401  (the decoders are installed)

    from archive.dicom_transcode import file_transcode

    j2k = dcmread(io.BytesIO(file_transcode(files[0], ["1.2.840.10008.1.2.4.90"]).data))
    assert data == list(generate_frames(j2k.PixelData, number_of_frames=30))[2]
    # A media type the archive cannot make from it.
    response = client.get(url + "/frames/1", HTTP_ACCEPT='multipart/related; type="image/jpx"', **reader.auth)
    assert response.status_code == 406


def test_native_frames_asked_with_any_transfer_syntax(client, stored, reader) -> None:
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    response = client.get(_instance_url(stored[0]) + "/frames/1", HTTP_ACCEPT=accept, **reader.auth)
    ((headers, data),) = parse_multipart(response["Content-Type"], _body(response))
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert data == dcmread(stored[0]).PixelData
    # A native image asked as JPEG 2000 by name: encoded for the client (lossless).
    response = client.get(
        _instance_url(stored[0]) + "/frames/1", HTTP_ACCEPT='multipart/related; type="image/jp2"', **reader.auth
    )
    ((headers, data),) = parse_multipart(response["Content-Type"], _body(response))
    assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert data[:4] in (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0c")


def test_rendered_and_thumbnail(client, stored, reader) -> None:
    url = _instance_url(stored[0])
    response = client.get(url + "/rendered", **reader.auth)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (128, 128)
    response = client.get(url + "/rendered", HTTP_ACCEPT="image/png", **reader.auth)
    assert response["Content-Type"] == "image/png"
    png = np.asarray(Image.open(io.BytesIO(response.content)))
    # A window over the whole range differs from a narrow one (parameters reach the renderer).
    narrow = client.get(url + "/rendered?window=40,80", HTTP_ACCEPT="image/png", **reader.auth)
    assert not np.array_equal(png, np.asarray(Image.open(io.BytesIO(narrow.content))))
    small = client.get(url + "/rendered?viewport=64,64&quality=50", **reader.auth)
    assert Image.open(io.BytesIO(small.content)).size == (64, 64)
    assert client.get(url + "/rendered?quality=0", **reader.auth).status_code == 400
    assert client.get(url + "/rendered?window=1", **reader.auth).status_code == 400
    assert client.get(url + "/rendered", HTTP_ACCEPT="image/gif", **reader.auth).status_code == 406
    assert client.get(url + "/frames/1/rendered", **reader.auth).status_code == 200
    thumb = client.get(url + "/thumbnail", **reader.auth)
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    series_thumb = client.get(_study_url(stored[0]) + "/thumbnail", **reader.auth)
    assert series_thumb.status_code == 200 and series_thumb["Content-Type"] == "image/jpeg"
    study = client.get(_study_url(stored[0]) + "/rendered", **reader.auth)
    assert study.status_code == 200
    assert len(parse_multipart(study["Content-Type"], _body(study))) == 6


def test_an_object_without_pixels_cannot_be_rendered(client, region, reader, tmp_path) -> None:
    files = write_study(tmp_path, patient=PatientInfo("SR1"), source=SR, instances_per_series=1)
    ingest_files(files, region.facility)
    response = client.get(_instance_url(files[0]) + "/rendered", **reader.auth)
    assert response.status_code == 406 and "no pixel data" in response.json()["detail"]
    assert client.get(_instance_url(files[0]) + "/frames/1", **reader.auth).status_code == 404


# --- WADO-URI ----------------------------------------------------------------------------------------


def test_wado_uri(client, stored, reader) -> None:
    study, series, sop = uids(stored[0])
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    response = client.get(f"/dicomweb/wado?{query}&contentType=application/dicom", **reader.auth)
    assert response.status_code == 200 and response["Content-Type"] == "application/dicom"
    assert _body(response) == stored[0].read_bytes()
    response = client.get(f"/dicomweb/wado?{query}", **reader.auth)
    assert response["Content-Type"] == "image/jpeg"
    response = client.get(
        f"/dicomweb/wado?{query}&contentType=image/png&rows=32&columns=32&windowCenter=40&windowWidth=400",
        **reader.auth,
    )
    assert Image.open(io.BytesIO(response.content)).size == (32, 32)
    assert (
        client.get(f"/dicomweb/wado?studyUID={study}&seriesUID={series}&objectUID={sop}", **reader.auth).status_code
        == 400
    )
    response = client.get(
        f"/dicomweb/wado?requestType=WADO-RS&studyUID={study}&seriesUID={series}&objectUID={sop}", **reader.auth
    )
    assert response.status_code == 400 and "requestType" in response.json()["detail"]
    assert (
        client.get(f"/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series}", **reader.auth).status_code
        == 400
    )
    assert client.get(f"/dicomweb/wado?{query}&windowCenter=40", **reader.auth).status_code == 400
    assert client.get(f"/dicomweb/wado?{query.replace(sop, generate_uid())}", **reader.auth).status_code == 404
    assert client.get(f"/dicomweb/wado?{query}").status_code == 401


def test_wado_uri_in_the_transfer_syntax_asked(client, region, reader, tmp_path) -> None:
    files = write_study(
        tmp_path, patient=PatientInfo("TX2"), source=COMPRESSED["1.2.840.10008.1.2.4.90"], instances_per_series=1
    )
    ingest_files(files, region.facility)
    study, series, sop = uids(files[0])
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}&contentType=application/dicom"
    response = client.get(f"/dicomweb/wado?{query}&transferSyntax=1.2.840.10008.1.2.1", **reader.auth)
    assert response.status_code == 200 and response["Content-Type"] == "application/dicom"
    got = dcmread(io.BytesIO(_body(response)))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(got.pixel_array, dcmread(files[0]).pixel_array)
    response = client.get(f"/dicomweb/wado?{query}&transferSyntax=*", **reader.auth)
    assert _body(response) == files[0].read_bytes()
    response = client.get(f"/dicomweb/wado?{query}&transferSyntax=1.2.840.10008.1.2.4.70", **reader.auth)
    assert response.status_code == 406


# --- STOW-RS ----------------------------------------------------------------------------------------


def _stow(client, user, url: str, parts: list[bytes], **kwargs):  # type: ignore[no-untyped-def]
    boundary = "b0undary-7f3c"
    content_type = kwargs.pop("content_type", f'multipart/related; type="application/dicom"; boundary={boundary}')
    body = kwargs.pop("body", None) or multipart_body(parts, boundary=boundary)
    return client.generic(
        "POST", url, body, content_type=content_type, HTTP_ACCEPT="application/dicom+json", **user.auth, **kwargs
    )


def test_stow_stores_into_the_facility(client, region, archivist, ct_study) -> None:
    response = _stow(client, archivist, "/dicomweb/TS-CAT/studies", [p.read_bytes() for p in ct_study])
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom+json"
    result = Dataset.from_json(response.json())
    assert len(result.ReferencedSOPSequence) == 6 and "FailedSOPSequence" not in result
    study, series, sop = uids(ct_study[0])
    assert result.RetrieveURL == f"http://testserver/dicomweb/TS-CAT/studies/{study}"
    item = next(i for i in result.ReferencedSOPSequence if i.ReferencedSOPInstanceUID == sop)
    assert item.ReferencedSOPClassUID == dcmread(ct_study[0]).SOPClassUID
    assert item.RetrieveURL.endswith(f"/studies/{study}/series/{series}/instances/{sop}")
    assert Instance.objects.filter(facility=region.facility, calling_ae="").count() == 6
    for path in ct_study:
        copy = Copy.objects.get(instance__sop_instance_uid=uids(path)[2])
        assert storage.absolute_path(copy.tier, copy.path).read_bytes() == path.read_bytes()
    assert incoming_files() == []
    event = AuditEvent.objects.get(action="dicomweb.store")
    assert event.outcome == AuditEvent.Outcome.SUCCESS and event.study == Study.objects.get()
    assert event.detail["stored"] == 6 and event.user == archivist.user
    # The same again: duplicates are a success.
    again = _stow(client, archivist, f"/dicomweb/TS-CAT/studies/{study}", [p.read_bytes() for p in ct_study])
    assert again.status_code == 200 and Instance.objects.count() == 6


def test_stow_of_a_part_that_is_not_dicom_fails_and_stores_nothing(client, region, archivist) -> None:
    response = _stow(client, archivist, "/dicomweb/TS-CAT/studies", [b"this is not DICOM" * 20])
    assert response.status_code == 409
    result = Dataset.from_json(response.json())
    (failed,) = result.FailedSOPSequence
    assert failed.FailureReason == FAILURE_CANNOT_UNDERSTAND
    assert "ReferencedSOPSequence" not in result
    assert "C000" in response["Warning"] and "DICM" in response["Warning"]
    assert Instance.objects.count() == 0 and Study.objects.count() == 0
    assert tier_files("TS-CAT") == [] and incoming_files() == []
    event = AuditEvent.objects.get(action="dicomweb.store")
    assert event.outcome == AuditEvent.Outcome.FAILURE and event.detail["failed"] == 1


def test_stow_with_some_failures_is_202(client, region, archivist, ct_study, tmp_path) -> None:
    sr_other_study = write_study(tmp_path / "sr", patient=PatientInfo("X"), source=SR, instances_per_series=1)[0]
    parts = [ct_study[0].read_bytes(), b"garbage", sr_other_study.read_bytes()]
    study = uids(ct_study[0])[0]
    response = _stow(client, archivist, f"/dicomweb/TS-CAT/studies/{study}", parts)
    assert response.status_code == 202
    result = Dataset.from_json(response.json())
    assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [uids(ct_study[0])[2]]
    reasons = {i.ReferencedSOPInstanceUID: i.FailureReason for i in result.FailedSOPSequence}
    assert reasons == {"": FAILURE_CANNOT_UNDERSTAND, uids(sr_other_study)[2]: FAILURE_STUDY_MISMATCH}
    assert list(Instance.objects.values_list("sop_instance_uid", flat=True)) == [uids(ct_study[0])[2]]
    assert len(tier_files("TS-CAT")) == 1 and incoming_files() == []
    assert AuditEvent.objects.get(action="dicomweb.store").outcome == AuditEvent.Outcome.WARNING


def test_stow_of_a_non_storage_sop_class(client, region, archivist, tmp_path) -> None:
    ds = fresh_copy(MR, patient=PatientInfo("P1"), study_uid=generate_uid(), series_uid=generate_uid())
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND: not a storage class
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    response = _stow(client, archivist, "/dicomweb/TS-CAT/studies", [path.read_bytes()])
    assert response.status_code == 409
    (failed,) = Dataset.from_json(response.json()).FailedSOPSequence
    assert failed.FailureReason == FAILURE_SOP_CLASS_NOT_SUPPORTED
    assert failed.ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_stow_conflict_is_a_failure_not_a_stored_instance(client, region, archivist, ct_study) -> None:
    ingest_files(ct_study[:1], region.facility)
    ds = dcmread(ct_study[0])
    ds.SeriesDescription = "other bytes, same SOP Instance UID"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    response = _stow(client, archivist, "/dicomweb/TS-CAT/studies", [buf.getvalue()])
    assert response.status_code == 409
    result = Dataset.from_json(response.json())
    (item,) = result.FailedSOPSequence
    assert item.FailureReason == FAILURE_CONFLICT and item.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert "ReferencedSOPSequence" not in result
    assert InstanceConflict.objects.count() == 1 and Instance.objects.count() == 1


@override_settings(PACS_STOW_MAX_BYTES=50_000)
def test_stow_over_the_size_limit_is_413_and_stores_nothing(client, region, archivist, ct_study) -> None:
    response = _stow(client, archivist, "/dicomweb/TS-CAT/studies", [p.read_bytes() for p in ct_study[:2]])
    assert response.status_code == 413
    assert "PACS_STOW_MAX_BYTES" in response.json()["detail"]
    assert Instance.objects.count() == 0 and tier_files("TS-CAT") == [] and incoming_files() == []
    assert AuditEvent.objects.get(action="dicomweb.store").outcome == AuditEvent.Outcome.FAILURE


def _chunked_post(body: bytes, user, facility: str = "TS-CAT"):  # type: ignore[no-untyped-def]
    """A request as gunicorn hands over a chunked body: no Content-Length, input read to its end."""
    request = RequestFactory().generic("POST", f"/dicomweb/{facility}/studies", **user.auth)
    request.META.pop("CONTENT_LENGTH", None)
    request.META["CONTENT_TYPE"] = 'multipart/related; type="application/dicom"; boundary=b0undary-7f3c'
    request.META["wsgi.input"] = io.BytesIO(body)
    request.META["wsgi.input_terminated"] = True
    return StudiesView.as_view()(request, facility=facility)


def test_stow_chunked_body_is_read_to_its_end(region, archivist, ct_study) -> None:
    response = _chunked_post(multipart_body([p.read_bytes() for p in ct_study]), archivist)
    assert response.status_code == 200, response.content
    assert Instance.objects.count() == 6


@override_settings(PACS_STOW_MAX_BYTES=50_000)
def test_stow_chunked_body_over_the_limit_is_cut_while_reading(region, archivist, ct_study) -> None:
    response = _chunked_post(multipart_body([p.read_bytes() for p in ct_study]), archivist)
    assert response.status_code == 413
    assert Instance.objects.count() == 0 and tier_files("TS-CAT") == [] and incoming_files() == []


def test_stow_refuses_what_is_not_multipart_related_dicom(client, region, archivist, ct_study) -> None:
    data = ct_study[0].read_bytes()
    assert (
        _stow(client, archivist, "/dicomweb/TS-CAT/studies", [data], content_type="application/dicom").status_code
        == 415
    )
    metadata = 'multipart/related; type="application/dicom+json"; boundary=b0undary-7f3c'
    assert _stow(client, archivist, "/dicomweb/TS-CAT/studies", [data], content_type=metadata).status_code == 415
    no_boundary = 'multipart/related; type="application/dicom"'
    assert _stow(client, archivist, "/dicomweb/TS-CAT/studies", [data], content_type=no_boundary).status_code == 400
    # Declared multipart, but the body is not: no boundary anywhere.
    response = _stow(client, archivist, "/dicomweb/TS-CAT/studies", [], body=data)
    assert response.status_code == 400 and "boundary" in response.json()["detail"]
    # A multipart body with no parts.
    response = _stow(client, archivist, "/dicomweb/TS-CAT/studies", [], body=b"--b0undary-7f3c--\r\n")
    assert response.status_code == 400 and "no parts" in response.json()["detail"]
    # A body cut inside a part.
    cut = multipart_body([data])[:-30]
    assert _stow(client, archivist, "/dicomweb/TS-CAT/studies", [], body=cut).status_code == 400
    assert Instance.objects.count() == 0 and incoming_files() == []


def test_stow_at_the_regional_root_needs_a_configured_facility(client, region, archivist, ct_study) -> None:
    response = _stow(client, archivist, "/dicomweb/studies", [ct_study[0].read_bytes()])
    assert response.status_code == 400
    assert "/dicomweb/<facility code>/studies" in response.json()["detail"]
    with override_settings(PACS_DICOMWEB_STOW_FACILITY="GO-SG"):
        response = _stow(client, archivist, "/dicomweb/studies", [ct_study[0].read_bytes()])
    assert response.status_code == 200
    assert Instance.objects.get().facility == region.other_facility


def test_stow_needs_the_add_permission(client, region, reader, ct_study) -> None:
    response = _stow(client, reader, "/dicomweb/TS-CAT/studies", [ct_study[0].read_bytes()])
    assert response.status_code == 403
    assert Instance.objects.count() == 0
    assert AuditEvent.objects.get(action="dicomweb.store").outcome == AuditEvent.Outcome.DENIED


def test_multipart_spool_handles_a_boundary_split_across_reads(settings, tmp_path) -> None:
    parts = [bytes(range(256)) * 50, b"\r\n--b0undary-7f3 not quite", b""]
    body = b"preamble\r\n" + multipart_body(parts)
    stream = io.BytesIO(body)
    spooled = multipart_spool(
        lambda n: stream.read(7), boundary="b0undary-7f3c", default_type="application/dicom", max_bytes=10**6
    )
    try:
        assert [p.path.read_bytes() for p in spooled] == parts
    finally:
        for p in spooled:
            p.path.unlink()


def test_parse_accept_orders_by_quality() -> None:
    ranges = parse_accept(
        'image/png;q=0.5, multipart/related; type="application/dicom"; transfer-syntax=*, text/html;q=0'
    )
    assert [r.type for r in ranges] == ["multipart/related", "image/png"]
    assert ranges[0].params == {"type": "application/dicom", "transfer-syntax": "*"}


# --- CORS -------------------------------------------------------------------------------------------


@override_settings(CORS_ALLOWED_ORIGINS=["https://viewer.example.org"])
def test_cors_preflight_from_an_allowed_origin_only(client) -> None:
    def preflight(origin: str):  # type: ignore[no-untyped-def]
        return client.options(
            "/dicomweb/studies",
            HTTP_ORIGIN=origin,
            HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
            HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
        )

    allowed = preflight("https://viewer.example.org")
    assert allowed.status_code == 200
    assert allowed["Access-Control-Allow-Origin"] == "https://viewer.example.org"
    assert "authorization" in allowed["Access-Control-Allow-Headers"]
    other = preflight("https://evil.example.com")
    assert "Access-Control-Allow-Origin" not in other


def test_bundled_file_sanity() -> None:
    assert bundled_path(US_MULTIFRAME).exists()


# --- QIDO-RS ------------------------------------------------------------------------------------------


@pytest.fixture
def two_studies(region, tmp_path) -> dict[str, list[Path]]:
    import datetime as dt

    ct = write_study(
        tmp_path / "ct",
        patient=PatientInfo("MRN0001", name="Rossi^Mario"),
        series=2,
        instances_per_series=3,
        accession_number="ACC1",
        study_date=dt.date(2024, 3, 1),
        study_description="TC torace",
    )
    mr = write_study(
        tmp_path / "mr",
        patient=PatientInfo("MRN0002", name="Bianchi^Laura", sex="F"),
        source=MR,
        instances_per_series=2,
        accession_number="ACC2",
        study_date=dt.date(2025, 6, 1),
    )
    ingest_files(ct, region.facility)
    ingest_files(mr, region.other_facility)
    return {"ct": ct, "mr": mr}


def _search(client, user, url: str, **params):  # type: ignore[no-untyped-def]
    response = client.get(url, params, HTTP_ACCEPT="application/dicom+json", **user.auth)
    return response, (response.json() if response.status_code == 200 else None)


def test_qido_studies(client, two_studies, reader) -> None:
    response, results = _search(client, reader, "/dicomweb/studies")
    assert response.status_code == 200 and response["Content-Type"] == "application/dicom+json"
    assert len(results) == 2
    by_id = {r["00100020"]["Value"][0]: Dataset.from_json(r) for r in results}
    ct = by_id["MRN0001"]
    study_uid = uids(two_studies["ct"][0])[0]
    assert ct.StudyInstanceUID == study_uid
    assert ct.RetrieveURL == f"http://testserver/dicomweb/studies/{study_uid}"
    assert ct.NumberOfStudyRelatedSeries == 2 and ct.NumberOfStudyRelatedInstances == 6
    assert ct.ModalitiesInStudy == "CT" and ct.AccessionNumber == "ACC1" and str(ct.PatientName) == "Rossi^Mario"
    assert ct.StudyDate == "20240301" and "StudyDescription" not in ct
    event = AuditEvent.objects.get(action="dicomweb.search")
    assert event.detail["matches"] == 2 and event.user == reader.user


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientID": "MRN0001"}, ["MRN0001"]),
        ({"00100020": "MRN0002"}, ["MRN0002"]),
        ({"PatientName": "bianchi*"}, ["MRN0002"]),
        ({"StudyDate": "20250101-"}, ["MRN0002"]),
        ({"StudyDate": "20240101-20241231"}, ["MRN0001"]),
        ({"ModalitiesInStudy": "MR"}, ["MRN0002"]),
        ({"AccessionNumber": "ACC?"}, ["MRN0001", "MRN0002"]),
        ({"PatientID": "NOBODY"}, []),
    ],
)
def test_qido_study_matching(client, two_studies, reader, params, expected) -> None:
    response, results = _search(client, reader, "/dicomweb/studies", **params)
    assert response.status_code == 200
    assert sorted(r["00100020"]["Value"][0] for r in results) == expected


def test_qido_uid_list_includefield_limit_offset(client, two_studies, reader) -> None:
    ct_uid, mr_uid = uids(two_studies["ct"][0])[0], uids(two_studies["mr"][0])[0]
    _r, results = _search(client, reader, "/dicomweb/studies", StudyInstanceUID=f"{ct_uid},{mr_uid}")
    assert len(results) == 2
    _r, results = _search(client, reader, "/dicomweb/studies", includefield="StudyDescription,00081030")
    assert {"00081030"} <= set(results[0])
    _r, results = _search(client, reader, "/dicomweb/studies", includefield="all")
    assert "00101010" not in results[0] and "00081030" in results[0]
    _r, first = _search(client, reader, "/dicomweb/studies", limit=1)
    _r, second = _search(client, reader, "/dicomweb/studies", limit=1, offset=1)
    assert len(first) == len(second) == 1 and first != second
    # Newest first: the MR study of 2025.
    assert first[0]["00100020"]["Value"] == ["MRN0002"]


def test_qido_series_and_instances(client, two_studies, reader) -> None:
    study_uid, series_uid, _sop = uids(two_studies["ct"][0])
    _r, series = _search(client, reader, f"/dicomweb/studies/{study_uid}/series")
    assert len(series) == 2 and {s["00080060"]["Value"][0] for s in series} == {"CT"}
    assert "00100020" not in series[0]  # the study is fixed by the URL: no study attributes
    item = next(s for s in series if s["0020000E"]["Value"] == [series_uid])
    assert item["00201209"]["Value"] == [3]
    assert item["00081190"]["Value"] == [f"http://testserver/dicomweb/studies/{study_uid}/series/{series_uid}"]
    _r, all_series = _search(client, reader, "/dicomweb/series", Modality="MR")
    assert len(all_series) == 1 and all_series[0]["00100020"]["Value"] == ["MRN0002"]
    _r, instances = _search(client, reader, f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances")
    assert len(instances) == 3
    assert sorted(i["00200013"]["Value"][0] for i in instances) == [1, 2, 3]
    assert all(i["00081190"]["Value"][0].endswith(i["00080018"]["Value"][0]) for i in instances)
    _r, study_instances = _search(client, reader, f"/dicomweb/studies/{study_uid}/instances")
    assert len(study_instances) == 6 and "0020000E" in study_instances[0]
    _r, everything = _search(client, reader, "/dicomweb/instances", PatientID="MRN0002")
    assert len(everything) == 2


def test_qido_facility_scope(client, two_studies, reader) -> None:
    _r, results = _search(client, reader, "/dicomweb/GO-SG/studies")
    assert [r["00100020"]["Value"][0] for r in results] == ["MRN0002"]
    assert results[0]["00081190"]["Value"][0].startswith("http://testserver/dicomweb/GO-SG/studies/")


def test_qido_bad_queries_are_400(client, two_studies, reader) -> None:
    for params in (
        {"StudyDate": "20250101-2024"},
        {"NotAnAttribute": "x"},
        {"fuzzymatching": "maybe"},
        {"limit": "-1"},
        {"offset": "many"},
        {"00081110.00081150": "1.2"},
        {"SeriesNumber": "abc"},
    ):
        response, _ = _search(
            client, reader, "/dicomweb/studies" if "SeriesNumber" not in params else "/dicomweb/series", **params
        )
        assert response.status_code == 400, params
        assert response.json()["detail"]
    assert client.get("/dicomweb/studies/1.2.x/series", **reader.auth).status_code == 400
    assert client.get("/dicomweb/studies", HTTP_ACCEPT="application/dicom", **reader.auth).status_code == 406
    assert client.get("/dicomweb/studies").status_code == 401


@pytest.fixture
def searcher(db: None) -> helpers.ApiUser:
    """A reader who may see studies (the access policy asks for archive.view_study)."""
    return helpers.make_user("ricerca", "archive.view_instance", "archive.view_study")


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"offset": "99999999999999999999999"}, "offset must be at most 1000000"),
        ({"offset": str(2**63)}, "offset must be at most 1000000"),
        ({"offset": "1000001"}, "offset must be at most 1000000"),
        ({"offset": "-5"}, "offset cannot be negative"),
        ({"offset": "1_000"}, "offset must be a whole number"),
        ({"offset": "+3"}, "offset must be a whole number"),
        ({"offset": "9" * 5000}, "offset must be at most"),
        ({"limit": "-1"}, "limit cannot be negative"),
        ({"limit": "1e3"}, "limit must be a whole number"),
    ],
)
def test_qido_offset_or_limit_out_of_range_is_400(client, two_studies, searcher, params, detail) -> None:
    # An offset past the database's integer used to answer 500.
    response, _ = _search(client, searcher, "/dicomweb/studies", **params)
    assert response.status_code == 400
    assert detail in response.json()["detail"]


def test_qido_paging_at_the_edges(client, two_studies, searcher) -> None:
    response, results = _search(client, searcher, "/dicomweb/studies", offset="1000000")
    assert response.status_code in (200, 204) and not results
    # A limit past the maximum is served as the maximum (PS3.18 8.3.4.4), however large.
    response, results = _search(client, searcher, "/dicomweb/studies", limit="9" * 40)
    assert response.status_code == 200 and len(results) == 2
    response, results = _search(client, searcher, "/dicomweb/studies", limit="1", offset="0001")
    assert len(results) == 1 and results[0]["00100020"]["Value"] == ["MRN0001"]


@pytest.mark.parametrize(
    ("value", "refused"),
    [("*" * 50, ""), ("*A" * 25, "25 wildcards, at most 10"), ("*a" * 50, "more than 64 characters")],
)
def test_qido_with_fifty_stars_answers_or_is_refused_at_once(client, two_studies, searcher, value, refused) -> None:
    _search(client, searcher, "/dicomweb/studies", PatientID="MRN0001")  # the first request's imports
    elapsed = []
    for _ in range(3):  # the best of three: a busy machine's pause is not the query's cost
        start = time.monotonic()
        response, results = _search(client, searcher, "/dicomweb/studies", PatientName=value)
        elapsed.append(time.monotonic() - start)
    assert min(elapsed) < 0.1, elapsed
    if refused:
        assert response.status_code == 400 and refused in response.json()["detail"]
        assert response.json()["detail"].startswith("PatientName")
    else:
        assert response.status_code == 200 and len(results) == 2


@override_settings(PACS_QIDO_DEFAULT_LIMIT=1)
def test_qido_truncated_at_the_maximum_warns(client, two_studies, reader) -> None:
    response, results = _search(client, reader, "/dicomweb/studies")
    assert len(results) == 1
    assert "The number of results exceeded the maximum supported by the server" in response["Warning"]
    response, results = _search(client, reader, "/dicomweb/studies", PatientID="MRN0001")
    assert len(results) == 1 and "Warning" not in response


def test_retrieve_queries_do_not_grow_with_the_study(client, stored, reader, django_assert_max_num_queries) -> None:
    # Token, the principal (permissions, profile, emergency accesses, authored studies), facility
    # scope, study, instances with their copies, audit: not one query per instance.
    with django_assert_max_num_queries(15):
        response = client.get(_study_url(stored[0]), **reader.auth)
        assert len(parse_multipart(response["Content-Type"], _body(response))) == 6
    with django_assert_max_num_queries(15):
        response = client.get(_study_url(stored[0]) + "/metadata", **reader.auth)
        assert len(json.loads(_body(response))) == 6


def test_metadata_says_nearline_when_only_the_long_term_tier_holds_the_instance(client, stored, reader) -> None:
    instance = Instance.objects.get(sop_instance_uid=uids(stored[0])[2])
    copy = Copy.objects.get(instance=instance)
    source = storage.absolute_path(copy.tier, copy.path)
    target = storage.absolute_path("longterm:region", copy.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    Copy.objects.filter(pk=copy.pk).update(tier="longterm:region")
    response = client.get(_instance_url(stored[0]) + "/metadata", **reader.auth)
    assert response.status_code == 200
    (item,) = json.loads(_body(response))
    assert item["00080056"]["Value"] == ["NEARLINE"]
    items = json.loads(_body(client.get(_study_url(stored[0]) + "/metadata", **reader.auth)))
    assert sorted(i["00080056"]["Value"][0] for i in items) == ["NEARLINE"] + ["ONLINE"] * 5
