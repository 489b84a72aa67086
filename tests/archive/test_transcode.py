"""Transcoding on the way out (archive.dicom_transcode): the module, and C-GET/C-MOVE to
pynetdicom peers that accept only Explicit VR Little Endian.

DCMTK's getscu/movescu/storescp doing the same: tests/interop/test_dcmtk_transcode.py.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes these names at run time
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from archive.dicom_transcode import TranscodeError, file_transcode, producible
from archive.ingest import instance_ingest
from archive.models import Copy, Instance, RemoteNode
from archive.rendering.transcoding import transcode_isolated
from archive.sample_data import PatientInfo, bundled_path, write_study
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests.conftest import free_port

GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove

# Every compressed file pydicom bundles whose pixel data its installed plugins decode
# (JPEG baseline, extended, lossless; JPEG-LS lossless and near-lossless; JPEG 2000 lossless
# and lossy; RLE: grey and colour, 8/16/32 bits, multi-frame), and the 12-bit JPEG
# Extended ones, which pydicom's GDCM plugin refuses (decoded with GDCM directly).
# Left out: SC_rgb_jpeg.dcm (implicit VR data under an explicit VR file meta: it can be
# written in Implicit VR Little Endian only), JPEG2000-embedded-sequence-delimiter.dcm
# (pydicom cannot decode it), UN_sequence.dcm (no pixel data).
BUNDLED_COMPRESSED = (
    "693_J2KI.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "JPEG-lossy.dcm",
    "JPGExtended.dcm",
    "JPEG2000.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_jpeg_no_color_transform.dcm",
    "SC_jpeg_no_color_transform_2.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "SC_rgb_dcmtk_+eb+cy+n1.dcm",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "SC_rgb_dcmtk_+eb+cy+s4.dcm",
    "SC_rgb_gdcm_KY.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_jls_lossy_sample.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_32bit.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "examples_jpeg2k.dcm",
    "examples_ybr_color.dcm",
    "rtdose_rle.dcm",
    "rtdose_rle_1frame.dcm",
)
# Stored in a lossy syntax: compared with a tolerance of one unit (another decoder may round otherwise).
LOSSY_FILES = frozenset(
    name
    for name in BUNDLED_COMPRESSED
    if dcmread(bundled_path(name), stop_before_pixels=True).file_meta.TransferSyntaxUID
    in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91")
)
TWELVE_BIT_JPEG = ("JPEG-lossy.dcm", "JPGExtended.dcm")


def reference_pixels(path: Path) -> np.ndarray:
    """pydicom's own decode of a stored file; for 12-bit JPEG Extended, which pydicom's
    installed plugins refuse, DCMTK's (dcmdjpeg), an independent decoder."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.4.51" or int(ds.BitsStored) == 8:
        return ds.pixel_array
    assert shutil.which("dcmdjpeg"), "DCMTK's dcmdjpeg is the reference decoder of 12-bit JPEG"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "decoded.dcm"
        subprocess.run(["dcmdjpeg", str(path), str(out)], check=True, capture_output=True, timeout=60)
        return dcmread(out).pixel_array


def _assert_pixels(got: Dataset, path: Path, name: str) -> None:
    expected = reference_pixels(path)
    actual = got.pixel_array
    assert actual.shape == expected.shape, name
    if name in LOSSY_FILES:
        assert np.abs(actual.astype(float) - expected.astype(float)).max() <= 1, name
    else:
        assert np.array_equal(actual, expected), name


# --- the module ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLED_COMPRESSED)
def test_every_bundled_compressed_file_to_explicit_little_endian(name: str) -> None:
    path = bundled_path(name)
    original = path.read_bytes()
    result = file_transcode(original, [ExplicitVRLittleEndian])
    assert result.changed and result.transfer_syntax == ExplicitVRLittleEndian
    got = dcmread(io.BytesIO(result.data))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.SOPInstanceUID == dcmread(path, stop_before_pixels=True).SOPInstanceUID
    _assert_pixels(got, path, name)
    assert path.read_bytes() == original


@pytest.mark.parametrize("target", [ImplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "SC_rgb_rle.dcm", "examples_ybr_color.dcm"])
def test_lossless_targets_keep_every_pixel(name: str, target: str) -> None:
    path = bundled_path(name)
    assert target in producible(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    result = file_transcode(path, [target])
    got = dcmread(io.BytesIO(result.data))
    assert result.transfer_syntax == target == got.file_meta.TransferSyntaxUID
    assert np.array_equal(got.pixel_array, dcmread(path).pixel_array)
    assert got.get("LossyImageCompression", "00") == dcmread(path).get("LossyImageCompression", "00")


def test_the_stored_syntax_first_gives_the_stored_bytes() -> None:
    path = bundled_path("MR_small_RLE.dcm")
    result = file_transcode(path, [RLELossless, ExplicitVRLittleEndian])
    assert not result.changed and result.data == path.read_bytes()


def test_lossy_only_when_asked() -> None:
    path = bundled_path("SC_rgb_rle.dcm")
    with pytest.raises(TranscodeError, match="cannot be given"):
        file_transcode(path, [JPEGBaseline8Bit, JPEG2000])
    result = file_transcode(path, [JPEGBaseline8Bit], lossy=True)
    got = dcmread(io.BytesIO(result.data))
    assert result.transfer_syntax == JPEGBaseline8Bit and got.LossyImageCompression == "01"
    assert "ISO_10918_1" in got.LossyImageCompressionMethod
    close = np.abs(got.pixel_array.astype(float) - dcmread(path).pixel_array).mean()
    assert close < 8
    # The next acceptable syntax when the first cannot be made for this image (16-bit: no JPEG Baseline).
    result = file_transcode(bundled_path("MR_small_RLE.dcm"), [JPEGBaseline8Bit, ExplicitVRLittleEndian], lossy=True)
    assert result.transfer_syntax == ExplicitVRLittleEndian


def test_no_pixel_data_is_given_uncompressed_only() -> None:
    path = bundled_path("test-SR.dcm")
    with pytest.raises(TranscodeError):
        file_transcode(path, [JPEG2000Lossless])
    assert file_transcode(path, [ImplicitVRLittleEndian]).transfer_syntax == ImplicitVRLittleEndian


def corrupt_jpeg2000(dest: Path, patient: PatientInfo, study_uid: str) -> Path:
    """A JPEG 2000 lossless image whose code stream is broken after its first markers."""
    (path,) = write_study(
        dest, patient=patient, source="MR_small_jp2klossless.dcm", study_uid=study_uid, instances_per_series=1
    )
    ds = dcmread(path)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00\x29" + bytes(range(256)) * 4])
    ds.save_as(path)
    return path


def test_a_corrupted_stream_is_a_clear_error(tmp_path: Path) -> None:
    path = corrupt_jpeg2000(tmp_path, PatientInfo("X1"), generate_uid())
    before = path.read_bytes()
    # GDCM aborts the process on this stream: decoding a stored file is done in a worker.
    with pytest.raises(TranscodeError, match="the conversion failed: the decoder crashed"):
        transcode_isolated(path, [ExplicitVRLittleEndian])
    assert path.read_bytes() == before


# --- C-GET and C-MOVE ---------------------------------------------------------------------------


@pytest.fixture
def compressed(region, tmp_path: Path) -> tuple[str, dict[str, tuple[str, Path]]]:  # type: ignore[no-untyped-def]
    """A study with one instance of each bundled compressed file at TS-CAT; WS may retrieve."""
    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )
    patient = PatientInfo(patient_id="MRN0077", name="VERDI^ANNA")
    study_uid = generate_uid()
    files: dict[str, tuple[str, Path]] = {}
    for n, name in enumerate(BUNDLED_COMPRESSED):
        (path,) = write_study(
            tmp_path / f"src{n}", patient=patient, source=name, study_uid=study_uid, instances_per_series=1
        )
        instance_ingest(path=path, facility=region.facility, owned=False)
        files[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = (name, path)
    return study_uid, files


def _stored_hashes() -> dict[str, str]:
    return {
        c.instance.sop_instance_uid: hashlib.sha256(storage.absolute_path(c.tier, c.path).read_bytes()).hexdigest()
        for c in Copy.objects.select_related("instance")
    }


def _sop_classes(files: dict[str, tuple[str, Path]]) -> list[str]:
    return sorted({str(dcmread(p, stop_before_pixels=True).SOPClassUID) for _n, p in files.values()})


def c_get_explicit_only(
    port: int, study_uid: str, sop_classes: list[str], syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)
) -> tuple[list[Dataset], dict, bool]:
    """A C-GET whose storage contexts offer ``syntaxes`` only (one context per SOP class)."""
    received: dict[str, Dataset] = {}

    def on_store(event):  # type: ignore[no-untyped-def]
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(event.request.AffectedSOPInstanceUID)] = ds
        return 0x0000

    ae = AE(ae_title="WS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(GET)
    for sop in sop_classes:
        ae.add_requested_context(sop, list(syntaxes))
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="TSCAT_PACS",
        ext_neg=[build_role(sop, scp_role=True) for sop in sop_classes],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study_uid
        responses = list(assoc.send_c_get(ds, GET))
    finally:
        assoc.release()
    final, identifier = responses[-1]
    final.identifier = identifier
    return [status for status, _ in responses], received, assoc.is_released


@pytest.mark.plain_too
def test_c_get_of_every_compressed_file_to_an_explicit_little_endian_only_scu(listener: int, compressed) -> None:  # type: ignore[no-untyped-def]
    study_uid, files = compressed
    hashes = _stored_hashes()
    statuses, received, released = c_get_explicit_only(listener, study_uid, _sop_classes(files))
    final = statuses[-1]
    assert released
    assert final.Status == 0x0000, final
    assert final.NumberOfCompletedSuboperations == len(files) and final.NumberOfFailedSuboperations == 0
    assert set(received) == set(files)
    for uid, (name, path) in files.items():
        got = received[uid]
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        _assert_pixels(got, path, name)
    assert _stored_hashes() == hashes  # the archive's files are not touched
    assert AuditEvent.objects.get(action="dicom.retrieve").detail["completed"] == len(files)


@pytest.mark.plain_too
def test_c_get_with_a_corrupted_stream_is_a_failed_sub_operation(listener: int, region, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )
    patient = PatientInfo(patient_id="MRN0078")
    study_uid = generate_uid()
    good = write_study(
        tmp_path / "good", patient=patient, source="MR_small_RLE.dcm", study_uid=study_uid, instances_per_series=2
    )
    bad = corrupt_jpeg2000(tmp_path / "bad", patient, study_uid)
    for path in [*good, bad]:
        instance_ingest(path=path, facility=region.facility, owned=False)
    bad_uid = str(dcmread(bad, stop_before_pixels=True).SOPInstanceUID)
    statuses, received, released = c_get_explicit_only(listener, study_uid, ["1.2.840.10008.5.1.4.1.1.4"])
    final = statuses[-1]
    assert released  # the association goes on and ends normally
    assert final.Status == 0xB000
    assert final.NumberOfFailedSuboperations == 1 and final.NumberOfCompletedSuboperations == 2
    assert bad_uid in final.identifier.FailedSOPInstanceUIDList
    assert set(received) == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in good}
    assert AuditEvent.objects.get(action="dicom.retrieve").detail["failed"] == 1
    assert Instance.objects.filter(sop_instance_uid=bad_uid).exists()


@pytest.fixture
def explicit_only_destination(region) -> Iterator[dict[str, Dataset]]:  # type: ignore[no-untyped-def]
    """A pynetdicom storage SCP, DEST, that accepts Explicit VR Little Endian only."""
    port = free_port()
    received: dict[str, Dataset] = {}
    lock = threading.Lock()

    def on_store(event):  # type: ignore[no-untyped-def]
        ds = event.dataset
        ds.file_meta = event.file_meta
        with lock:
            received[str(event.request.AffectedSOPInstanceUID)] = ds
        return 0x0000

    ae = AE(ae_title="DEST")
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None  # pynetdicom builds each with its SOP class
        ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None  # block=False returns the server
    RemoteNode.objects.create(
        facility=region.facility, ae_title="DEST", host="127.0.0.1", port=port, is_retrieve_destination=True
    )
    try:
        yield received
    finally:
        server.shutdown()


@pytest.mark.plain_too
def test_c_move_of_every_compressed_file_to_an_explicit_little_endian_only_scp(  # type: ignore[no-untyped-def]
    listener: int, compressed, explicit_only_destination
) -> None:
    study_uid, files = compressed
    ae = AE(ae_title="WS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(MOVE)
    assoc = ae.associate("127.0.0.1", listener, ae_title="TSCAT_PACS")
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study_uid
        responses = [status for status, _ in assoc.send_c_move(ds, "DEST", MOVE)]
    finally:
        assoc.release()
    assert responses[-1].Status == 0x0000 and responses[-1].NumberOfCompletedSuboperations == len(files)
    received = explicit_only_destination
    assert set(received) == set(files)
    for uid, (name, path) in files.items():
        assert received[uid].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        _assert_pixels(received[uid], path, name)


def test_c_get_storage_contexts_are_accepted_in_a_syntax_anything_can_be_sent_in(  # type: ignore[no-untyped-def]
    listener: int, region, tmp_path: Path
) -> None:
    """The C-GET SCU's storage contexts: of the syntaxes it proposes in one context, the
    listener accepts Explicit VR Little Endian when it is among them (every object can be
    sent in it), whatever the SCU's order; offered only JPEG 2000 lossless, the objects are
    encoded in it, losslessly (an archived JPEG 2000 one goes byte for byte)."""
    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )
    patient = PatientInfo(patient_id="MRN0080")
    study_uid = generate_uid()
    paths = [
        *write_study(
            tmp_path / "a", patient=patient, source="MR_small.dcm", study_uid=study_uid, instances_per_series=1
        ),
        *write_study(
            tmp_path / "b",
            patient=patient,
            source="MR_small_jp2klossless.dcm",
            study_uid=study_uid,
            instances_per_series=1,
        ),
        *write_study(
            tmp_path / "c", patient=patient, source="MR_small_RLE.dcm", study_uid=study_uid, instances_per_series=1
        ),
    ]
    for path in paths:
        instance_ingest(path=path, facility=region.facility, owned=False)
    by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
    mr = ["1.2.840.10008.5.1.4.1.1.4"]

    statuses, received, released = c_get_explicit_only(
        listener, study_uid, mr, ("1.2.840.10008.1.2.4.70", JPEG2000Lossless, ExplicitVRLittleEndian)
    )
    assert released and statuses[-1].Status == 0x0000 and len(received) == 3
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in received.values()} == {ExplicitVRLittleEndian}

    statuses, received, released = c_get_explicit_only(listener, study_uid, mr, (JPEG2000Lossless,))
    assert released and statuses[-1].Status == 0x0000 and len(received) == 3
    for uid, ds in received.items():
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
        original = dcmread(by_uid[uid])
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        if original.file_meta.TransferSyntaxUID == JPEG2000Lossless:
            assert ds.PixelData == original.PixelData  # sent as archived
