"""Ingest checks (issue 19, point 6): the SOP class against the presentation context,
pixel data against its geometry, and what C-STORE (pynetdicom, DCMTK) and STOW-RS answer."""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from archive.dicom import DicomRejected, read_part10
from archive.dicomweb.native_xml import NATIVE_DICOM_NS
from archive.dicomweb.stow import FAILURE_CANNOT_UNDERSTAND, FAILURE_CONFLICT
from archive.models import Instance, InstanceConflict, Study
from archive.sample_data import CT, US_MULTIFRAME, PatientInfo, bundled_path, fresh_copy
from tests import dicomweb_helpers as helpers
from tests.dicom_client import send_files
from tests.dicomweb_helpers import incoming_files, ingest_files, multipart_body, tier_files

archivist = helpers.archivist


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _ct(patient: PatientInfo | None = None) -> Dataset:
    return fresh_copy(CT, patient=patient or PatientInfo("P1"), study_uid=generate_uid(), series_uid=generate_uid())


# --- the checks (archive.dicom.read_part10) ---------------------------------------------------------


def test_short_native_pixel_data_is_refused_with_its_geometry() -> None:
    ds = _ct()
    ds.PixelData = ds.PixelData[:1000]
    with pytest.raises(DicomRejected) as info:
        read_part10(_bytes(ds))
    assert info.value.code == "invalid"
    assert info.value.message.startswith("Pixel Data too short: 1000 of 32768 bytes (128x128x1, 16-bit, 1 frame)")


def test_frames_samples_and_bit_packing_count() -> None:
    ds = _ct()
    ds.NumberOfFrames = 2  # 2 x 128 x 128 x 2 bytes needed, one frame's worth there
    with pytest.raises(DicomRejected, match="32768 of 65536 bytes .*2 frames"):
        read_part10(_bytes(ds))
    ds = _ct()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = b"\0" * (128 * 128 // 8)  # bit-packed: exactly enough
    read_part10(_bytes(ds))
    ds.PixelData = b"\0" * (128 * 128 // 8 - 2)
    with pytest.raises(DicomRejected, match="2046 of 2048 bytes"):
        read_part10(_bytes(ds))
    # YBR_FULL_422 uncompressed: two samples' worth per pixel (PS3.3 C.7.6.3.1.2).
    read_part10(bundled_path("SC_ybr_full_422_uncompressed.dcm").read_bytes())


def test_float_pixel_data_is_checked_too() -> None:
    ds = _ct()
    del ds.PixelData
    ds.BitsAllocated = 32
    ds.FloatPixelData = b"\0" * (128 * 128 * 4 - 4)
    with pytest.raises(DicomRejected, match="Float Pixel Data too short"):
        read_part10(_bytes(ds))


def test_encapsulated_pixel_data_needs_a_fragment_per_frame_and_a_sane_offset_table() -> None:
    source = dcmread(bundled_path(US_MULTIFRAME))
    frames = list(generate_frames(source.PixelData, number_of_frames=int(source.NumberOfFrames)))
    ds = fresh_copy(source, patient=PatientInfo("P1"), study_uid=generate_uid(), series_uid=generate_uid())
    ds.PixelData = encapsulate(frames[:-1], has_bot=True)  # one frame missing
    ds["PixelData"].is_undefined_length = True
    ds.NumberOfFrames = len(frames)
    with pytest.raises(DicomRejected, match="29 fragment"):
        read_part10(_bytes(ds))
    ds.PixelData = encapsulate(frames, has_bot=True)
    read_part10(_bytes(ds))
    table = bytearray(ds.PixelData)
    table[12:16] = (5).to_bytes(4, "little")  # the second frame's offset into the first fragment
    ds.PixelData = bytes(table)
    with pytest.raises(DicomRejected, match="Basic Offset Table"):
        read_part10(_bytes(ds))


def _bundled_files() -> list[Path]:
    # The wheel's own folder: get_testdata_files() would also try to download pydicom-data's.
    return sorted(p for p in (Path(pydicom.__file__).parent / "data" / "test_files").rglob("*") if p.is_file())


def test_no_bundled_file_is_refused_for_its_pixels() -> None:
    # Every file pydicom ships: what was accepted stays accepted (no false refusal).
    refused = []
    for path in _bundled_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                read_part10(path.read_bytes())
            except DicomRejected as exc:
                if "Pixel" in exc.message or "fragment" in exc.message:
                    refused.append((path.name, exc.message))
    assert refused == []


# --- C-STORE ----------------------------------------------------------------------------------------


def _nothing_stored() -> None:
    assert not Instance.objects.exists() and not Study.objects.exists()
    assert tier_files("TS-CAT") == [] and incoming_files() == []


def test_pynetdicom_store_on_another_sop_class_context_is_a900(listener: int) -> None:
    ds = _ct()
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", listener, ae_title="TSCAT_PACS")
    assert assoc.is_established
    try:
        mr_context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == MRImageStorage)
        req = C_STORE()
        req.MessageID = 1
        req.AffectedSOPClassUID = CTImageStorage
        req.AffectedSOPInstanceUID = ds.SOPInstanceUID
        req.Priority = 2
        req.DataSet = io.BytesIO(_dataset_bytes(ds))
        # As send_c_store does: pause the reactor, or it may take the response for itself.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        try:
            assert mr_context.context_id is not None
            assoc.dimse.send_msg(req, mr_context.context_id)
            _cx, rsp = assoc.dimse.get_msg(True)
        finally:
            assoc._reactor_checkpoint.set()
    finally:
        assoc.release()
    assert isinstance(rsp, C_STORE) and rsp.Status == 0xA900
    assert str(rsp.ErrorComment).startswith("CT Image Storage sent on the MR Image Storage context")
    _nothing_stored()


def _dataset_bytes(ds: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    clean = Dataset(ds)
    clean.file_meta = ds.file_meta
    write_dataset(out, clean)
    return out.getvalue()


def test_pynetdicom_short_pixels_and_other_instance(listener: int, tmp_path: Path) -> None:
    short = _ct()
    short.PixelData = short.PixelData[:1000]
    other = _ct()
    other.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # sent as Affected SOP Instance UID
    paths = []
    for name, ds in (("short", short), ("other", other)):
        paths.append(tmp_path / f"{name}.dcm")
        ds.save_as(paths[-1], enforce_file_format=False)
    report = send_files(listener, paths)
    statuses = list(report.statuses.values())
    assert statuses == [0xC000, 0xA900]
    comments = list(report.comments.values())
    assert comments[0].startswith("Pixel Data too short: 1000 of 32768 bytes")
    assert comments[1].startswith("SOP Instance mismatch")
    _nothing_stored()


def _dcmtk(tool: str, port: int, path: Path) -> str:
    aet = "STORESCU" if tool == "storescu" else "DCMSEND"
    done = subprocess.run(
        [tool, "-v", "-aet", aet, "-aec", "TSCAT_PACS", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TCP_NODELAY="1"),  # DOMAIN.md: DCMTK on loopback
        timeout=120,
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize("tool", ["storescu", "dcmsend"])
def test_dcmtk_short_pixel_data_is_cannot_understand(listener: int, tmp_path: Path, tool: str) -> None:
    ds = _ct()
    ds.PixelData = ds.PixelData[:1000]
    path = tmp_path / "short.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert re.search(r"Received (Store|C-STORE) Response \(Error: CannotUnderstand\)", _dcmtk(tool, listener, path))
    _nothing_stored()


def test_dcmsend_data_set_on_another_context_is_a900(listener: int, tmp_path: Path) -> None:
    # The file meta says CT, the data set MR: dcmsend proposes CT from the meta and sends
    # the MR data set (Affected SOP Class MR) on the CT context.
    ds = _ct()
    ds.SOPClassUID = MRImageStorage
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)
    out = _dcmtk("dcmsend", listener, path)
    assert "Received C-STORE Response (Error: DataSetDoesNotMatchSOPClass)" in out
    _nothing_stored()


# --- STOW-RS ----------------------------------------------------------------------------------------

_STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary-7f3c'


def _stow(client, user, parts: list[bytes], accept: str = "application/dicom+json"):  # type: ignore[no-untyped-def]
    body = multipart_body(parts, boundary="b0undary-7f3c")
    return client.generic(
        "POST", "/dicomweb/TS-CAT/studies", body, content_type=_STOW_TYPE, HTTP_ACCEPT=accept, **user.auth
    )


def test_stow_short_pixels_fail_and_store_nothing(client, region, archivist) -> None:  # type: ignore[no-untyped-def]
    ds = _ct()
    ds.PixelData = ds.PixelData[:1000]
    response = _stow(client, archivist, [_bytes(ds)])
    assert response.status_code == 409
    (failed,) = Dataset.from_json(response.json()).FailedSOPSequence
    assert failed.FailureReason == FAILURE_CANNOT_UNDERSTAND and failed.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert "Pixel Data too short" in response["Warning"]
    _nothing_stored()


def _conflicting(region, tmp_path: Path) -> tuple[bytes, bytes, Dataset]:  # type: ignore[no-untyped-def]
    archived = _ct()
    path = tmp_path / "archived.dcm"
    path.write_bytes(_bytes(archived))
    ingest_files([path], region.facility)
    archived.SeriesDescription = "other bytes, same SOP Instance UID"
    return _bytes(archived), _bytes(_ct()), archived


def test_stow_conflict_is_failed_202_with_a_stored_one_409_alone(client, region, archivist, tmp_path) -> None:  # type: ignore[no-untyped-def]
    conflict, good, archived = _conflicting(region, tmp_path)
    response = _stow(client, archivist, [conflict, good])
    assert response.status_code == 202
    result = Dataset.from_json(response.json())
    (failed,) = result.FailedSOPSequence
    assert failed.FailureReason == FAILURE_CONFLICT and failed.ReferencedSOPInstanceUID == archived.SOPInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] != [archived.SOPInstanceUID]
    assert len(result.ReferencedSOPSequence) == 1
    assert InstanceConflict.objects.count() == 1 and Instance.objects.count() == 2
    again = _stow(client, archivist, [conflict])
    assert again.status_code == 409 and "ReferencedSOPSequence" not in again.json()


def _xml_values(node: ET.Element, keyword: str) -> list[str]:
    ns = {"n": NATIVE_DICOM_NS}
    attribute = node.find(f"n:DicomAttribute[@keyword='{keyword}']", ns)
    assert attribute is not None, keyword
    return [v.text or "" for v in attribute.findall("n:Value", ns)]


def test_stow_answers_native_dicom_xml_when_asked(client, region, archivist, tmp_path) -> None:  # type: ignore[no-untyped-def]
    conflict, good, archived = _conflicting(region, tmp_path)
    response = _stow(client, archivist, [conflict, good], accept="application/dicom+xml")
    assert response.status_code == 202 and response["Content-Type"] == "application/dicom+xml"
    assert response.content.startswith(b"<?xml")
    root = ET.fromstring(response.content)
    ns = {"n": NATIVE_DICOM_NS}
    assert root.tag == f"{{{NATIVE_DICOM_NS}}}NativeDicomModel"
    assert root.get("{http://www.w3.org/XML/1998/namespace}space") == "preserve"
    tags = [a.get("tag") or "" for a in root.findall("n:DicomAttribute", ns)]
    assert tags == sorted(tags) and all(len(t) == 8 for t in tags)
    failed = root.find("n:DicomAttribute[@keyword='FailedSOPSequence']", ns)
    assert failed is not None and failed.get("vr") == "SQ" and failed.get("tag") == "00081198"
    (item,) = failed.findall("n:Item", ns)
    assert item.get("number") == "1"
    assert _xml_values(item, "ReferencedSOPInstanceUID") == [archived.SOPInstanceUID]
    assert _xml_values(item, "FailureReason") == [str(FAILURE_CONFLICT)]
    referenced = root.find("n:DicomAttribute[@keyword='ReferencedSOPSequence']", ns)
    assert referenced is not None
    (stored,) = referenced.findall("n:Item", ns)
    assert _xml_values(stored, "RetrieveURL")[0].startswith("http://testserver/dicomweb/TS-CAT/studies/")


def test_stow_with_an_answer_it_cannot_give_is_406_and_stores_nothing(client, region, archivist) -> None:  # type: ignore[no-untyped-def]
    response = _stow(client, archivist, [_bytes(_ct())], accept="text/html")
    assert response.status_code == 406
    _nothing_stored()
    # JSON stays the default.
    assert _stow(client, archivist, [_bytes(_ct())], accept="*/*")["Content-Type"] == "application/dicom+json"


def test_native_xml_writes_every_kind_of_value() -> None:
    from pydicom.sequence import Sequence

    from archive.dicomweb.native_xml import dataset_to_native_xml

    ds = Dataset()
    ds.PatientName = "Rossi^Mario^^Dott.=ロッシ^マリオ"
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.Rows = 512
    ds.FrameIncrementPointer = 0x00181063
    ds.StudyDescription = "TC\x01torace & <addome>"
    ds.add_new(0x00091010, "OB", b"\x00\xff")
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.AccessionNumber = ""
    root = ET.fromstring(dataset_to_native_xml(ds))
    ns = {"n": NATIVE_DICOM_NS}

    def attribute(tag: str) -> ET.Element:
        found = root.find(f"n:DicomAttribute[@tag='{tag}']", ns)
        assert found is not None, tag
        return found

    name = attribute("00100010").find("n:PersonName[@number='1']", ns)
    assert name is not None
    assert [e.text for e in name.findall("n:Alphabetic/*", ns)] == ["Rossi", "Mario", "Dott."]
    assert name.find("n:Alphabetic/n:NamePrefix", ns) is not None
    assert name.find("n:Ideographic/n:FamilyName", ns).text == "ロッシ"  # type: ignore[union-attr]
    assert [(v.get("number"), v.text) for v in attribute("00080008").findall("n:Value", ns)] == [
        ("1", "ORIGINAL"),
        ("2", None),
        ("3", "AXIAL"),
    ]
    assert attribute("00280010").find("n:Value", ns).text == "512"  # type: ignore[union-attr]
    assert attribute("00280009").find("n:Value", ns).text == "00181063"  # type: ignore[union-attr]
    assert attribute("00081030").find("n:Value", ns).text == "TC\ufffdtorace & <addome>"  # type: ignore[union-attr]
    private = attribute("00091010")
    assert private.get("privateCreator") == "ACME 1.0" and private.get("keyword") is None
    assert private.find("n:InlineBinary", ns).text == "AP8="  # type: ignore[union-attr]
    assert [i.get("number") for i in attribute("00081140").findall("n:Item", ns)] == ["1"]
    assert list(attribute("00080050")) == []  # empty: no Value
