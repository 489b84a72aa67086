"""dicomweb-client (the reference Python DICOMweb client) against the archive over real HTTP.

The server is pytest-django's ``live_server`` (a real threaded WSGI server);
the client authenticates with an API token, as a viewer or a script would.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.test import override_settings
from PIL import Image
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from archive.models import Copy, Instance, Study
from archive.sample_data import COMPRESSED, US_MULTIFRAME, PatientInfo, write_study
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests import dicomweb_helpers as helpers
from tests.dicomweb_helpers import incoming_files, ingest_files, multipart_body, parse_multipart, tier_files, uids

reader, archivist = helpers.reader, helpers.archivist

pytestmark = pytest.mark.usefixtures("transactional_db")


@pytest.fixture(autouse=True)
def _public_url(live_server, settings) -> None:  # type: ignore[no-untyped-def]
    # dicomweb-client sends "Host: localhost" without the port: URLs in answers come from the setting.
    settings.PACS_PUBLIC_URL = live_server.url


def _client(live_server, user: helpers.ApiUser, root: str = "dicomweb/TS-CAT") -> DICOMwebClient:
    session = requests.Session()
    session.headers.update(user.header)
    return DICOMwebClient(url=f"{live_server.url}/{root}", session=session)


def _encoded(ds: Dataset) -> bytes:
    """The bytes dicomweb-client sends for a data set (it writes each one with dcmwrite)."""
    buf = io.BytesIO()
    dcmwrite(buf, ds)
    return buf.getvalue()


def _stored_bytes(sop_uid: str) -> bytes:
    copy = Copy.objects.get(instance__sop_instance_uid=sop_uid)
    return storage.absolute_path(copy.tier, copy.path).read_bytes()


@pytest.fixture
def study(region, ct_study: list[Path]) -> list[Path]:
    ingest_files(ct_study, region.facility)
    return ct_study


def test_store_instances_then_retrieve_them(live_server, region, archivist, ct_study) -> None:
    client = _client(live_server, archivist)
    datasets = [dcmread(p) for p in ct_study]
    result = client.store_instances(datasets)
    assert len(result.ReferencedSOPSequence) == 6 and "FailedSOPSequence" not in result
    study_uid = datasets[0].StudyInstanceUID
    assert result.RetrieveURL == f"{live_server.url}/dicomweb/TS-CAT/studies/{study_uid}"
    # Stored as sent, byte for byte.
    for ds in datasets:
        assert _stored_bytes(ds.SOPInstanceUID) == _encoded(ds)
    assert Instance.objects.filter(facility=region.facility).count() == 6
    retrieved = client.retrieve_study(study_uid)
    assert sorted(r.SOPInstanceUID for r in retrieved) == sorted(d.SOPInstanceUID for d in datasets)
    by_uid = {d.SOPInstanceUID: d for d in datasets}
    for ds in retrieved:
        assert ds == by_uid[ds.SOPInstanceUID]
    event = AuditEvent.objects.get(action="dicomweb.store")
    assert event.detail["stored"] == 6 and event.user == archivist.user


def test_retrieve_study_series_instance_byte_for_byte(live_server, study, reader) -> None:
    client = _client(live_server, reader)
    study_uid, series_uid, sop_uid = uids(study[0])
    originals = {uids(p)[2]: p for p in study}
    retrieved = client.retrieve_study(study_uid)
    assert {ds.SOPInstanceUID for ds in retrieved} == set(originals)
    for ds in retrieved:
        assert ds == dcmread(originals[ds.SOPInstanceUID])
    series = client.retrieve_series(study_uid, series_uid)
    assert len(series) == 3 and {ds.SeriesInstanceUID for ds in series} == {series_uid}
    instance = client.retrieve_instance(study_uid, series_uid, sop_uid)
    assert instance == dcmread(study[0])
    # The raw bytes, with a plain HTTP client.
    response = requests.get(
        f"{live_server.url}/dicomweb/studies/{study_uid}",
        headers={**reader.header, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=30,
    )
    assert response.status_code == 200
    parts = parse_multipart(response.headers["Content-Type"], response.content)
    assert sorted(data for _h, data in parts) == sorted(p.read_bytes() for p in study)


def test_metadata_and_bulk_data(live_server, study, reader) -> None:
    client = _client(live_server, reader)
    study_uid, series_uid, sop_uid = uids(study[0])
    assert len(client.retrieve_study_metadata(study_uid)) == 6
    assert len(client.retrieve_series_metadata(study_uid, series_uid)) == 3
    metadata = client.retrieve_instance_metadata(study_uid, series_uid, sop_uid)
    original = dcmread(study[0])
    ds = Dataset.from_json(metadata, bulk_data_uri_handler=lambda tag, vr, uri: None)
    for keyword in ("PatientID", "PatientName", "StudyDate", "Rows", "Columns", "PixelSpacing", "ImagePositionPatient"):
        assert ds[keyword].value == original[keyword].value, keyword
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert client.retrieve_bulkdata(uri) == [original.PixelData]


def test_native_frames(live_server, study, reader) -> None:
    client = _client(live_server, reader)
    study_uid, series_uid, sop_uid = uids(study[0])
    frames = client.retrieve_instance_frames(study_uid, series_uid, sop_uid, frame_numbers=[1])
    assert frames == [dcmread(study[0]).PixelData]


@pytest.mark.parametrize(
    "transfer_syntax",
    ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"],
)
def test_compressed_frames_are_the_stored_bitstream(live_server, region, reader, tmp_path, transfer_syntax) -> None:
    files = write_study(tmp_path, patient=PatientInfo("C1"), source=COMPRESSED[transfer_syntax], instances_per_series=1)
    ingest_files(files, region.facility)
    original = dcmread(files[0])
    expected = list(generate_frames(original.PixelData, number_of_frames=int(original.get("NumberOfFrames", 1))))
    client = _client(live_server, reader)
    study_uid, series_uid, sop_uid = uids(files[0])
    assert client.retrieve_instance_frames(study_uid, series_uid, sop_uid, frame_numbers=[1]) == expected[:1]
    # The instance itself comes back in its own transfer syntax.
    instance = client.retrieve_instance(study_uid, series_uid, sop_uid)
    assert instance.file_meta.TransferSyntaxUID == transfer_syntax


def test_multiframe_frames(live_server, region, reader, tmp_path) -> None:
    files = write_study(tmp_path, patient=PatientInfo("US1"), source=US_MULTIFRAME, instances_per_series=1)
    ingest_files(files, region.facility)
    original = dcmread(files[0])
    expected = list(generate_frames(original.PixelData, number_of_frames=int(original.NumberOfFrames)))
    client = _client(live_server, reader)
    frames = client.retrieve_instance_frames(*uids(files[0]), frame_numbers=[2, 7, 30])
    assert frames == [expected[1], expected[6], expected[29]]


def test_rendered(live_server, study, reader) -> None:
    client = _client(live_server, reader)
    study_uid, series_uid, sop_uid = uids(study[0])
    jpeg = client.retrieve_instance_rendered(study_uid, series_uid, sop_uid, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    png = client.retrieve_instance_rendered(
        study_uid, series_uid, sop_uid, media_types=("image/png",), params={"viewport": "64,64"}
    )
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (64, 64)
    frame = client.retrieve_instance_frames_rendered(study_uid, series_uid, sop_uid, frame_numbers=[1])
    assert Image.open(io.BytesIO(frame)).format == "JPEG"
    series = client.retrieve_series_rendered(study_uid, series_uid)
    assert series.startswith(b"--") and series.count(b"Content-Type: image/jpeg") == 3


def test_bad_requests(live_server, study, reader, archivist) -> None:
    client = _client(live_server, reader)
    study_uid, series_uid, _sop = uids(study[0])
    with pytest.raises(requests.HTTPError) as failure:
        client.retrieve_study(generate_uid())
    assert failure.value.response.status_code == 404
    anonymous = DICOMwebClient(url=f"{live_server.url}/dicomweb")
    with pytest.raises(requests.HTTPError) as failure:
        anonymous.retrieve_study(study_uid)
    assert failure.value.response.status_code == 401
    # A reader may not store.
    with pytest.raises(requests.HTTPError) as failure:
        client.store_instances([dcmread(study[0])])
    assert failure.value.response.status_code == 403


def test_stow_of_a_body_that_is_not_dicom(live_server, region, archivist) -> None:
    response = requests.post(
        f"{live_server.url}/dicomweb/TS-CAT/studies",
        data=multipart_body([b"\x00" * 300, b"not dicom either"]),
        headers={
            **archivist.header,
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary-7f3c',
            "Accept": "application/dicom+json",
        },
        timeout=30,
    )
    assert response.status_code == 409
    result = Dataset.from_json(response.json())
    assert [item.FailureReason for item in result.FailedSOPSequence] == [0xC000, 0xC000]
    assert Instance.objects.count() == 0 and Study.objects.count() == 0
    assert tier_files("TS-CAT") == [] and incoming_files() == []


@override_settings(PACS_STOW_MAX_BYTES=60_000)
def test_stow_over_the_limit(live_server, region, archivist, ct_study) -> None:
    client = _client(live_server, archivist)
    with pytest.raises(requests.HTTPError) as failure:
        client.store_instances([dcmread(p) for p in ct_study[:3]])
    assert failure.value.response.status_code == 413
    assert Instance.objects.count() == 0 and tier_files("TS-CAT") == [] and incoming_files() == []


def test_wado_uri(live_server, study, reader) -> None:
    study_uid, series_uid, sop_uid = uids(study[0])
    response = requests.get(
        f"{live_server.url}/dicomweb/wado",
        params={
            "requestType": "WADO",
            "studyUID": study_uid,
            "seriesUID": series_uid,
            "objectUID": sop_uid,
            "contentType": "application/dicom",
        },
        headers=reader.header,
        timeout=30,
    )
    assert response.status_code == 200 and response.content == study[0].read_bytes()


def test_search(live_server, region, reader, tmp_path) -> None:
    import datetime as dt

    ct = write_study(
        tmp_path / "ct",
        patient=PatientInfo("MRN0001", name="Rossi^Mario"),
        series=2,
        instances_per_series=3,
        study_date=dt.date(2024, 3, 1),
    )
    us = write_study(
        tmp_path / "us",
        patient=PatientInfo("MRN0002", name="Bianchi^Laura"),
        source=US_MULTIFRAME,
        instances_per_series=1,
        study_date=dt.date(2025, 6, 1),
    )
    ingest_files(ct + us, region.facility)
    client = _client(live_server, reader, root="dicomweb")
    studies = client.search_for_studies()
    assert len(studies) == 2
    found = client.search_for_studies(search_filters={"PatientID": "MRN0001"})
    (study,) = [Dataset.from_json(s) for s in found]
    ct_study, ct_series, ct_sop = uids(ct[0])
    assert study.StudyInstanceUID == ct_study and study.NumberOfStudyRelatedInstances == 6
    assert study.RetrieveURL == f"{live_server.url}/dicomweb/studies/{ct_study}"
    assert len(client.search_for_studies(search_filters={"PatientName": "ROSSI*"}, fuzzymatching=True)) == 1
    assert len(client.search_for_studies(search_filters={"StudyDate": "20250101-20251231"})) == 1
    assert len(client.search_for_studies(search_filters={"ModalitiesInStudy": "US"})) == 1
    with_fields = client.search_for_studies(fields=["StudyDescription"], limit=1, offset=1)
    assert len(with_fields) == 1 and "00081030" in with_fields[0]
    series = client.search_for_series(ct_study)
    assert len(series) == 2
    assert len(client.search_for_series(search_filters={"Modality": "US"})) == 1
    instances = client.search_for_instances(ct_study, ct_series)
    assert len(instances) == 3 and ct_sop in {i["00080018"]["Value"][0] for i in instances}
    (frames,) = client.search_for_instances(search_filters={"PatientID": "MRN0002"}, fields=["NumberOfFrames"])
    assert frames["00280008"]["Value"] == [30]
    # What a search finds, a retrieve gets.
    (instance,) = client.retrieve_series(ct_study, ct_series)[:1]
    assert instance.StudyInstanceUID == ct_study
    with pytest.raises(requests.HTTPError) as failure:
        client.search_for_studies(search_filters={"StudyDate": "2025-01-01"})
    assert failure.value.response.status_code == 400
