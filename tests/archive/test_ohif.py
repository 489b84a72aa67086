"""OHIF (v3) on another origin, reading /dicomweb/ with a Bearer token: the queries it makes on
opening a study, replayed, and each answer checked against what OHIF and Cornerstone read.

Where each request comes from (OHIF/Viewers and cornerstonejs/cornerstone3D, as of 2025):

- ``extensions/default/src/DicomWebDataSource/qido.js``, ``mapParams``: the study search,
  ``StudyInstanceUID`` of the study opened, ``limit=101``, ``offset=0``,
  ``fuzzymatching=false`` and ``includefield=00081030,00080060,00080090,00100030``;
  ``processResults`` reads 0020000D, 00080020, 00080030, 00080050, 00100020, 00100010,
  00100030, 00201208, 00081030, 00080060/00080061 (``getModalities``) and 00080090.
- same file, ``seriesInStudy``: ``/studies/{uid}/series?includefield=0008103E,00080021``;
  ``processSeriesResults`` reads 0020000D, 0020000E, 00080060, 00200011, 00080021,
  00201209 and 0008103E. ``wado/retrieveMetadataLoaderAsync.js`` (the default,
  ``enableStudyLazyLoad``) first lists the series with no parameters at all, then asks
  each series' metadata (``retrieveSeriesMetadata``).
- ``DicomWebDataSource/index.ts``: the metadata of each instance, naturalized; its
  ``BulkDataURI`` values are kept (``fixBulkDataURI`` leaves absolute URLs alone) and
  ``NumberOfFrames`` makes one image id per frame:
  ``wadors:{wadoRoot}/studies/{s}/series/{se}/instances/{i}/frames/{n}``.
- cornerstone3D ``packages/dicomImageLoader/src/imageLoader/wadors/loadImage.ts``: a frame
  is asked with ``multipart/related; type=application/octet-stream; transfer-syntax=*``;
  OHIF's ``platform/core/src/utils/generateAcceptHeader.ts`` quotes it by default
  (``type="application/octet-stream"; transfer-syntax="*"``).
  ``wadors/extractMultipart.ts`` finds the boundary from the body's first line, the part's
  ``Content-Type:`` (exactly so spelled) and its ``transfer-syntax`` (the decoder), and the
  pixels up to the CRLF before the next boundary; ``wadors/metaData/metaDataProvider.ts``
  takes the transfer syntax of the metadata from 00020010 or, "the recommended way",
  00083002 AvailableTransferSyntaxUID.
- ``platform/docs/.../deployment/authorization.md``: a token given to the viewer (``?token=``
  or the OIDC login) is sent as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.test import Client, override_settings
from knox.models import AuthToken
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.ingest import instance_ingest
from archive.models import Instance, Study
from archive.sample_data import COMPRESSED, CT, PatientInfo, bundled_path, write_study
from kernel.models import AuditEvent
from tests.access_helpers import BIANCHI_CF, Scene, hide
from tests.access_helpers import scene as scene  # noqa: F401  (the shared fixture)
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the scene's)

OHIF_ORIGIN = "https://ohif.asugi.example.it"
DICOM_JSON = "application/dicom+json"
# qido.js mapParams: the return keys OHIF asks of a study search.
STUDY_INCLUDEFIELD = "00081030,00080060,00080090,00100030"
# qido.js seriesInStudy: the return keys OHIF asks of a series search.
SERIES_INCLUDEFIELD = "0008103E,00080021"
# The Accept headers of a frame: cornerstone's loadImage.ts default, OHIF's generateAcceptHeader
# (quoted), and the uncompressed default (no transfer-syntax: Explicit VR Little Endian, PS3.18 8.7.3.5.2).
FRAME_ACCEPTS = (
    "multipart/related; type=application/octet-stream; transfer-syntax=*",
    'multipart/related; type="application/octet-stream"; transfer-syntax="*"',
    'multipart/related; type="application/octet-stream"',
    # docs/ohif/app-config.js's acceptHeader
    'multipart/related; type="application/octet-stream"; transfer-syntax=*',
)
# PS3.18 F.2: the value representations a DICOM JSON attribute may carry.
_VRS = set(
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)


@dataclass
class Viewer:
    """OHIF in a browser on OHIF_ORIGIN, with a token from /api/token/."""

    client: Client
    token: str
    log: list[str] = field(default_factory=list)

    def get(self, url: str, accept: str, **params: str) -> Any:
        response = self.client.get(
            url, params, HTTP_ACCEPT=accept, HTTP_AUTHORIZATION=f"Bearer {self.token}", HTTP_ORIGIN=OHIF_ORIGIN
        )
        self.log.append(url)
        # Every answer readable by the page on the other origin (django-cors-headers).
        assert response["Access-Control-Allow-Origin"] == OHIF_ORIGIN, url
        return response


def _viewer(user: object) -> Viewer:
    _token, key = AuthToken.objects.create(user=user)
    return Viewer(Client(), key)


def _body(response: Any) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def _dicom_json(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, (response.status_code, _body(response)[:300])
    assert response["Content-Type"] == DICOM_JSON
    items = json.loads(_body(response))
    assert isinstance(items, list)
    for item in items:
        _check_json_model(item)
    return items


def _check_json_model(item: dict[str, Any]) -> None:
    """PS3.18 F.2: keys are 8 upper-case hex digits; each attribute has a vr and at most one of
    Value (a list), BulkDataURI or InlineBinary; PN values are objects, SQ values data sets."""
    for tag, attr in item.items():
        assert len(tag) == 8 and tag == tag.upper() and int(tag, 16) >= 0, tag
        assert attr["vr"] in _VRS, (tag, attr)
        assert len({"Value", "BulkDataURI", "InlineBinary"} & set(attr)) <= 1, (tag, attr)
        if "Value" in attr:
            assert isinstance(attr["Value"], list) and attr["Value"], (tag, attr)
            if attr["vr"] == "PN":
                assert all(
                    isinstance(v, dict) and set(v) <= {"Alphabetic", "Ideographic", "Phonetic"} for v in attr["Value"]
                )
            if attr["vr"] == "SQ":
                for sub in attr["Value"]:
                    _check_json_model(sub)
            if attr["vr"] in ("US", "UL", "SS", "SL", "IS", "DS", "FL", "FD"):
                assert all(isinstance(v, int | float) or v is None for v in attr["Value"]), (tag, attr)


def _value(item: dict[str, Any], tag: str) -> Any:
    """As OHIF's DICOMWeb.getString reads it: the first value, or None."""
    return (item.get(tag, {}).get("Value") or [None])[0]


def _extract_multipart(body: bytes) -> tuple[str, bytes]:
    """cornerstone3D wadors/extractMultipart.ts, in Python: the first part's content type and bytes."""
    token = body.index(b"\r\n\r\n")
    header = body[:token].decode("latin-1").split("\r\n")
    boundary = next(line for line in header if line.startswith("--"))
    content_type = next(line[13:].strip() for line in header if line.startswith("Content-Type:"))
    offset = token + 4
    end = body.index(boundary.encode("latin-1"), offset)  # the terminal boundary must be there
    return content_type, body[offset : end - 2]


def _part_param(content_type: str, name: str) -> str | None:
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.lower() == name:
            return value.strip('"')
    return None


def ohif_open_study(viewer: Viewer, study_uid: str, *, root: str = "/dicomweb") -> dict[str, Any]:
    """The requests OHIF v3 makes on opening ``study_uid``, each answer checked; what it loaded."""
    # 1. The study (qido.js mapParams), as the study list and the viewer's header read it.
    studies = _dicom_json(
        viewer.get(
            f"{root}/studies",
            DICOM_JSON,
            StudyInstanceUID=study_uid,
            limit="101",
            offset="0",
            fuzzymatching="false",
            includefield=STUDY_INCLUDEFIELD,
        )
    )
    if not studies:
        return {"studies": [], "series": [], "instances": []}
    (study,) = studies
    assert _value(study, "0020000D") == study_uid
    for tag in ("00080020", "00080030", "00080050", "00100020", "00100010", "00100030", "00081030", "00080090"):
        assert tag in study, tag  # present, if empty: OHIF reads each one
    assert isinstance(_value(study, "00201208"), int) and _value(study, "00201208") > 0  # Number(...) of instances
    assert study["00080061"]["Value"], "ModalitiesInStudy: OHIF's getModalities falls back on it"
    # OHIF's DICOMWeb.getModalities (before its guard for "the DICOM server we are using") calls
    # Modality.Value.indexOf when Modality is there: a series attribute asked of a study is left out.
    assert "00080060" not in study or study["00080060"].get("Value"), study.get("00080060")
    assert "Alphabetic" in _value(study, "00100010")
    assert study["00081190"]["Value"][0].endswith(f"/studies/{study_uid}")

    # 2. The series: first as retrieveMetadataLoaderAsync lists them (no parameters), then as
    # the study browser does (qido.js seriesInStudy).
    plain = _dicom_json(viewer.get(f"{root}/studies/{study_uid}/series", DICOM_JSON))
    series = _dicom_json(viewer.get(f"{root}/studies/{study_uid}/series", DICOM_JSON, includefield=SERIES_INCLUDEFIELD))
    assert {_value(s, "0020000E") for s in plain} == {_value(s, "0020000E") for s in series}
    for s in series:
        for tag in ("0020000E", "00080060", "00200011", "00201209", "0008103E", "00080021"):
            assert tag in s, tag
        assert _value(s, "00080060") and isinstance(_value(s, "00201209"), int)
        assert _value(s, "00200011") is None or isinstance(_value(s, "00200011"), int)

    # 3. Each series' metadata, and 4. the first frame of each instance, as Cornerstone asks it.
    instances: list[dict[str, Any]] = []
    for s in series:
        series_uid = _value(s, "0020000E")
        items = _dicom_json(viewer.get(f"{root}/studies/{study_uid}/series/{series_uid}/metadata", DICOM_JSON))
        assert len(items) == _value(s, "00201209")
        for item in items:
            assert (_value(item, "0020000D"), _value(item, "0020000E")) == (study_uid, series_uid)
            for tag in ("00080016", "00080018", "00280010", "00280011", "00280100", "00280002", "00280004"):
                assert _value(item, tag) is not None, tag
            pixel = item["7FE00010"]
            assert pixel["vr"] in ("OB", "OW") and "Value" not in pixel and "InlineBinary" not in pixel
            assert pixel["BulkDataURI"].startswith("http://testserver/dicomweb/studies/")  # absolute: used as is
            # The transfer syntax for Cornerstone's decoder: 00020010 first, then 00083002 (issue 19).
            assert _value(item, "00083002"), "AvailableTransferSyntaxUID"
            assert _value(item, "00020010") == _value(item, "00083002"), "TransferSyntaxUID"
            frames = int(_value(item, "00280008") or 1)
            image_url = f"{root}/studies/{study_uid}/series/{series_uid}/instances/{_value(item, '00080018')}"
            for accept in FRAME_ACCEPTS:
                _check_frame(viewer, f"{image_url}/frames/1", accept, item)
            if frames > 1:
                _check_frame(viewer, f"{image_url}/frames/{frames}", FRAME_ACCEPTS[0], item)
            instances.append(item)
    return {"studies": studies, "series": series, "instances": instances}


def _check_frame(viewer: Viewer, url: str, accept: str, item: dict[str, Any]) -> None:
    response = viewer.get(url, accept)
    assert response.status_code == 200, (url, accept, _body(response)[:300])
    outer = response["Content-Type"]
    assert outer.startswith("multipart/related;") and _part_param(outer, "boundary"), outer
    body = _body(response)
    assert body.startswith(b"--" + _part_param(outer, "boundary").encode() + b"\r\n")
    content_type, pixels = _extract_multipart(body)
    # Native pixels: octet-stream, little endian, the transfer syntax named for the decoder.
    assert content_type.split(";")[0] == "application/octet-stream", content_type
    assert _part_param(content_type, "transfer-syntax") == ExplicitVRLittleEndian, content_type
    rows, columns = _value(item, "00280010"), _value(item, "00280011")
    samples, bits = _value(item, "00280002"), _value(item, "00280100")
    assert len(pixels) == rows * columns * samples * bits // 8, (url, len(pixels))


@pytest.fixture
def multiframe(scene: Scene, tmp_path: Path) -> Study:
    """A native three-frame instance (a CT slice repeated, each frame a different value) in
    Bianchi's study: OHIF makes one image per frame from NumberOfFrames."""
    ds = dcmread(bundled_path(CT))
    base = ds.pixel_array
    frames = np.stack([base, base + 1, base + 2]).astype(base.dtype)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.StudyInstanceUID = scene.bianchi.study_instance_uid
    ds.PatientID = scene.bianchi.dicom_patient_id
    ds.PatientName = scene.bianchi.patient_name
    ds.PatientBirthDate = "19720702"
    ds.PatientSex = "F"
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesNumber = 9
    path = tmp_path / "multiframe.dcm"
    ds.save_as(path, enforce_file_format=True)
    instance_ingest(path=path, facility=scene.rep.region.facility, owned=False, calling_ae="CT01")
    return Study.objects.get(pk=scene.bianchi.pk)


@override_settings(CORS_ALLOWED_ORIGINS=[OHIF_ORIGIN])
def test_ohif_opens_a_study_with_a_bearer_token(scene: Scene) -> None:
    viewer = _viewer(scene.radiologist)
    uid = scene.rossi.study_instance_uid
    loaded = ohif_open_study(viewer, uid)
    assert len(loaded["series"]) == 2 and len(loaded["instances"]) == scene.rossi.number_of_instances == 6
    (study,) = loaded["studies"]
    assert _value(study, "00081030") == scene.rossi.study_description
    assert study["00080061"]["Value"] == ["CT"]
    # Every request audited, under the token's user, as with a session.
    events = AuditEvent.objects.filter(user=scene.radiologist, action__startswith="dicomweb.")
    assert events.count() == len(viewer.log)
    assert set(events.values_list("outcome", flat=True)) == {AuditEvent.Outcome.SUCCESS}
    assert events.filter(action="dicomweb.retrieve", study=scene.rossi).exists()


@override_settings(CORS_ALLOWED_ORIGINS=[OHIF_ORIGIN])
def test_ohif_opens_a_multiframe_instance_frame_by_frame(scene: Scene, multiframe: Study) -> None:
    viewer = _viewer(scene.radiologist)
    loaded = ohif_open_study(viewer, multiframe.study_instance_uid)
    [item] = [i for i in loaded["instances"] if _value(i, "00280008") is not None]
    assert int(_value(item, "00280008")) == 3
    instance = Instance.objects.get(sop_instance_uid=_value(item, "00080018"))
    url = (
        f"/dicomweb/studies/{multiframe.study_instance_uid}/series/{instance.series.series_instance_uid}"
        f"/instances/{instance.sop_instance_uid}"
    )
    original = dcmread(bundled_path(CT)).pixel_array
    for n in (1, 2, 3):
        _type, pixels = _extract_multipart(_body(viewer.get(f"{url}/frames/{n}", FRAME_ACCEPTS[0])))
        frame = np.frombuffer(pixels, dtype=original.dtype.newbyteorder("<")).reshape(original.shape)
        assert (frame == original + (n - 1)).all(), n


@override_settings(CORS_ALLOWED_ORIGINS=[OHIF_ORIGIN])
def test_ohif_includefield_all_is_answered(scene: Scene) -> None:
    """OHIF's comment in mapParams offers includefield=all for servers that want it."""
    viewer = _viewer(scene.radiologist)
    uid = scene.rossi.study_instance_uid
    [study] = _dicom_json(viewer.get("/dicomweb/studies", DICOM_JSON, StudyInstanceUID=uid, includefield="all"))
    assert _value(study, "00081030") == scene.rossi.study_description and _value(study, "00201206") == 2
    series = _dicom_json(viewer.get(f"/dicomweb/studies/{uid}/series", DICOM_JSON, includefield="all"))
    assert all(_value(s, "0008103E") is not None or "0008103E" in s for s in series) and len(series) == 2


@override_settings(CORS_ALLOWED_ORIGINS=[OHIF_ORIGIN])
def test_ohif_does_not_see_a_hidden_study_as_the_session_does_not(scene: Scene) -> None:
    viewer = _viewer(scene.rep.colleague)
    session = Client()
    session.force_login(scene.rep.colleague)  # type: ignore[arg-type]
    uid = scene.rossi.study_instance_uid
    series_uid = scene.rossi.series.order_by("series_number").values_list("series_instance_uid", flat=True)[0]
    assert ohif_open_study(viewer, uid)["instances"]

    hide(scene.rossi)

    assert ohif_open_study(viewer, uid) == {"studies": [], "series": [], "instances": []}
    for url in (f"/dicomweb/studies/{uid}/series", f"/dicomweb/studies/{uid}/series/{series_uid}/metadata"):
        with_token = viewer.get(url, DICOM_JSON)
        with_session = session.get(url, HTTP_ACCEPT=DICOM_JSON)
        assert with_token.status_code == with_session.status_code, url
        assert _body(with_token) == _body(with_session), url
    assert viewer.get(f"/dicomweb/studies/{uid}/series/{series_uid}/metadata", DICOM_JSON).status_code == 404
    listed = _dicom_json(viewer.get("/dicomweb/studies", DICOM_JSON, includefield=STUDY_INCLUDEFIELD))
    assert uid not in {_value(s, "0020000D") for s in listed}
    assert scene.bianchi.study_instance_uid in {_value(s, "0020000D") for s in listed}


@override_settings(CORS_ALLOWED_ORIGINS=[OHIF_ORIGIN])
def test_ohif_of_another_authority_finds_nothing(scene: Scene) -> None:
    viewer = _viewer(scene.foreign)  # ASUFC: the Rossi study is ASUGI's
    uid = scene.rossi.study_instance_uid
    assert ohif_open_study(viewer, uid) == {"studies": [], "series": [], "instances": []}
    instance = Instance.objects.filter(series__study=scene.rossi).select_related("series").first()
    assert instance is not None
    url = f"/dicomweb/studies/{uid}/series/{instance.series.series_instance_uid}/instances/{instance.sop_instance_uid}"
    assert viewer.get(f"{url}/frames/1", FRAME_ACCEPTS[0]).status_code == 404
    assert viewer.get(f"{url}/metadata", DICOM_JSON).status_code == 404
    # Its own authority's study opens.
    assert ohif_open_study(viewer, scene.verdi.study_instance_uid)["instances"]


# --- CORS: OHIF on another origin ------------------------------------------------------------------


@override_settings(CORS_ALLOWED_ORIGINS=[OHIF_ORIGIN])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_cors_preflight_allows_ohifs_headers(client: Client, db: None, method: str) -> None:
    url = "/dicomweb/studies" if method == "GET" else "/api/token/"
    response = client.options(
        url,
        HTTP_ORIGIN=OHIF_ORIGIN,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, accept, content-type",
    )
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == OHIF_ORIGIN
    allowed = {h.strip().lower() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "accept", "content-type"} <= allowed
    assert method in response["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response  # a Bearer token, not cookies


@override_settings(CORS_ALLOWED_ORIGINS=[OHIF_ORIGIN])
def test_cors_answers_only_the_configured_origin_and_only_on_dicomweb_and_the_api(scene: Scene) -> None:
    _token, key = AuthToken.objects.create(user=scene.radiologist)
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}", "HTTP_ACCEPT": DICOM_JSON}
    ours = client.get("/dicomweb/studies", HTTP_ORIGIN=OHIF_ORIGIN, **auth)
    assert ours.status_code == 200 and ours["Access-Control-Allow-Origin"] == OHIF_ORIGIN
    assert "Content-Type" in ours["Access-Control-Expose-Headers"]
    assert "origin" in ours["Vary"].lower()
    other = client.get("/dicomweb/studies", HTTP_ORIGIN="https://evil.example.com", **auth)
    assert "Access-Control-Allow-Origin" not in other
    # A refusal is readable by OHIF too (it shows the 401 instead of a network error).
    refused = client.get("/dicomweb/studies", HTTP_ORIGIN=OHIF_ORIGIN, HTTP_AUTHORIZATION="Bearer nope")
    assert refused.status_code == 401 and refused["Access-Control-Allow-Origin"] == OHIF_ORIGIN
    # The staff and citizen pages are not for other origins.
    for url in ("/", "/refertazione/", "/fse/", "/admin/login/"):
        page = client.options(
            url,
            HTTP_ORIGIN=OHIF_ORIGIN,
            HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
            HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
        )
        assert "Access-Control-Allow-Origin" not in page, url


def test_no_origin_is_allowed_unless_configured(client: Client, db: None) -> None:
    response = client.options(
        "/dicomweb/studies",
        HTTP_ORIGIN=OHIF_ORIGIN,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
    )
    assert "Access-Control-Allow-Origin" not in response


@override_settings(CORS_ALLOWED_ORIGINS=[OHIF_ORIGIN])
@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"])
def test_ohif_gets_compressed_frames_named_for_its_decoder(scene: Scene, tmp_path: Path, transfer_syntax: str) -> None:
    """A compressed study: each frame comes as stored, its part naming the transfer syntax,
    from which Cornerstone's loadImage.ts picks the decoder.

    Asked as application/octet-stream with transfer-syntax=*, the part stays an
    application/octet-stream part (issue 19; PS3.18 8.7.3), with the stored bitstream; the
    metadata names the stored syntax in 00020010 as well as 00083002."""
    source = COMPRESSED.get(transfer_syntax)
    if source is None:
        pytest.skip(f"no bundled file in {transfer_syntax}")
    files = write_study(
        tmp_path / "c", patient=PatientInfo(BIANCHI_CF, name="BIANCHI^LAURA"), source=source, instances_per_series=1
    )
    for path in files:
        instance_ingest(path=path, facility=scene.rep.region.facility, owned=False, calling_ae="CT01")
    stored = dcmread(files[0])
    viewer = _viewer(scene.radiologist)
    study_uid, series_uid, sop = str(stored.StudyInstanceUID), str(stored.SeriesInstanceUID), str(stored.SOPInstanceUID)
    [item] = _dicom_json(viewer.get(f"/dicomweb/studies/{study_uid}/series/{series_uid}/metadata", DICOM_JSON))
    assert _value(item, "00083002") == transfer_syntax
    assert _value(item, "00020010") == transfer_syntax
    first = next(generate_frames(stored.PixelData, number_of_frames=int(stored.get("NumberOfFrames", 1) or 1)))
    url = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop}/frames/1"
    for accept in (*FRAME_ACCEPTS[:2], FRAME_ACCEPTS[3]):
        response = viewer.get(url, accept)
        assert response.status_code == 200, (accept, _body(response)[:300])
        content_type, data = _extract_multipart(_body(response))
        assert _part_param(content_type, "transfer-syntax") == transfer_syntax, content_type
        assert content_type.split(";")[0].strip() == "application/octet-stream", content_type
        assert data == first


@override_settings(CORS_ALLOWED_ORIGINS=[OHIF_ORIGIN])
def test_ohif_wado_uri_with_a_bearer_token(scene: Scene) -> None:
    """imageRendering other than wadors: OHIF's getImageId makes a WADO-URI image id on wadoUriRoot."""
    viewer = _viewer(scene.radiologist)
    instance = Instance.objects.filter(series__study=scene.rossi).select_related("series").first()
    assert instance is not None
    response = viewer.get(
        "/dicomweb/wado",
        "*/*",
        requestType="WADO",
        studyUID=scene.rossi.study_instance_uid,
        seriesUID=instance.series.series_instance_uid,
        objectUID=instance.sop_instance_uid,
        contentType="application/dicom",
    )
    assert response.status_code == 200 and response["Content-Type"] == "application/dicom"
    assert dcmread(BytesIO(_body(response))).SOPInstanceUID == instance.sop_instance_uid
    hide(scene.rossi)
    assert (
        viewer.get(
            "/dicomweb/wado",
            "*/*",
            requestType="WADO",
            studyUID=scene.rossi.study_instance_uid,
            seriesUID=instance.series.series_instance_uid,
            objectUID=instance.sop_instance_uid,
            contentType="application/dicom",
        ).status_code
        == 404
    )


def test_the_documented_ohif_configuration_is_the_one_replayed() -> None:
    """docs/ohif/app-config.js asks what the replay above checks, and is valid JavaScript."""
    path = Path(__file__).resolve().parents[2] / "docs" / "ohif" / "app-config.js"
    text = path.read_text()

    def setting(name: str) -> str:
        found = re.search(rf"^\s*{name}: (.+?),(\s*//.*)?$", text, re.MULTILINE)
        assert found, name
        return found.group(1)

    assert setting("qidoRoot").rstrip("'").endswith("/dicomweb")
    assert setting("wadoRoot").rstrip("'").endswith("/dicomweb")
    assert setting("wadoUriRoot").rstrip("'").endswith("/dicomweb/wado")
    assert setting("imageRendering") == "'wadors'"
    assert setting("qidoSupportsIncludeField") == "true"
    assert setting("acceptHeader") == f"[{FRAME_ACCEPTS[3]!r}]"
    assert "?token=" in text and "PACS_CORS_ALLOWED_ORIGINS" in text
    node = shutil.which("node")
    if node:
        subprocess.run([node, "--check", str(path)], check=True, capture_output=True)
