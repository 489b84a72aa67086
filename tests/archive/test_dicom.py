from __future__ import annotations

import io

import pytest
from pydicom.uid import generate_uid

from archive.dicom import DicomRejected, is_valid_uid, read_part10
from archive.sample_data import COMPRESSED, CT, SR, PatientInfo, bundled_path, fresh_copy


def _bytes_of(ds, *, enforce: bool = True) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    if not enforce:
        # Write what is there, however broken: preamble, prefix, meta as given, data set.
        ds.preamble = b"\0" * 128
    ds.save_as(buf, enforce_file_format=enforce)
    return buf.getvalue()


def _read(data: bytes, **kwargs):  # type: ignore[no-untyped-def]
    return read_part10(data, **kwargs)


def _copy(name: str = CT, **kwargs):  # type: ignore[no-untyped-def]
    return fresh_copy(
        name,
        patient=PatientInfo(patient_id="P1"),
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        **kwargs,
    )


@pytest.mark.parametrize(
    "value,ok",
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("1.2.3", True),
        ("0.1", True),
        ("1.2.03", False),  # leading zero
        ("1..2", False),
        ("1.2.", False),
        ("../../etc/passwd", False),
        ("1.2.3/../4", False),
        ("1.2.3\x00", False),
        ("1." + "2" * 63, False),  # 65 characters
        ("", False),
        ("1", False),
    ],
)
def test_uid_syntax(value: str, ok: bool) -> None:
    assert is_valid_uid(value) is ok


@pytest.mark.parametrize("ts,name", sorted(COMPRESSED.items()))
def test_every_accepted_transfer_syntax_reads_and_walks(ts: str, name: str) -> None:
    data = _bytes_of(_copy(name))
    header = _read(data)
    assert header.transfer_syntax_uid == ts


@pytest.mark.parametrize("name", [CT, *COMPRESSED.values()])
def test_truncated_file_is_rejected_wherever_it_is_cut(name: str) -> None:
    data = _bytes_of(_copy(name))
    for cut in (len(data) - 7, len(data) // 2, 400):
        with pytest.raises(DicomRejected):
            _read(data[:cut])


def test_pydicom_truncated_sample_is_rejected() -> None:
    data = bundled_path("MR_truncated.dcm").read_bytes()
    with pytest.raises(DicomRejected, match="truncated"):
        _read(data)


def test_missing_sop_instance_uid_is_rejected() -> None:
    ds = _copy()
    del ds.SOPInstanceUID
    with pytest.raises(DicomRejected, match="SOPInstanceUID is missing"):
        _read(_bytes_of(ds, enforce=False))


def test_uid_with_path_characters_is_rejected() -> None:
    ds = _copy()
    ds.SeriesInstanceUID = "1.2.3/../../../etc"
    with pytest.raises(DicomRejected, match="not a valid DICOM UID"):
        _read(_bytes_of(ds))


def test_empty_dataset_and_empty_file_are_rejected() -> None:
    with pytest.raises(DicomRejected, match="empty"):
        _read(b"")
    ds = _copy()
    for tag in list(ds.keys()):
        del ds[tag]
    with pytest.raises(DicomRejected, match="empty"):
        _read(_bytes_of(ds, enforce=False))


def test_not_dicom_is_rejected() -> None:
    with pytest.raises(DicomRejected, match="not a DICOM Part 10 file"):
        _read(b"hello world" * 50)


def test_non_storage_sop_class_is_rejected() -> None:
    ds = _copy()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model - FIND
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    with pytest.raises(DicomRejected, match="not a storage SOP class") as info:
        _read(_bytes_of(ds))
    assert info.value.kind == "not_storage"


def test_dataset_must_match_the_request() -> None:
    ds = _copy()
    data = _bytes_of(ds)
    with pytest.raises(DicomRejected) as info:
        _read(data, expected_sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
    assert info.value.kind == "sop_class_mismatch"
    with pytest.raises(DicomRejected, match="differs from the request"):
        _read(data, expected_sop_instance_uid=generate_uid())


def test_header_fields_for_the_index() -> None:
    ds = _copy(accession_number="ACC42", series_description="Torace", modality="CT")
    header = _read(_bytes_of(ds))
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.patient["dicom_patient_id"] == "P1"
    assert header.patient["patient_name"] == "Rossi^Mario"
    assert str(header.patient["patient_birth_date"]) == "1970-01-01"
    assert header.study["accession_number"] == "ACC42"
    assert header.series["modality"] == "CT"
    assert header.series["series_description"] == "Torace"
    assert header.instance["rows"] == 128 and header.instance["columns"] == 128


def test_structured_report_without_pixels_is_accepted() -> None:
    header = _read(_bytes_of(_copy(SR)))
    assert header.instance["rows"] is None


@pytest.mark.parametrize(
    "charset,name",
    [
        ("ISO_IR 100", "Zanè^Lucìa"),
        ("ISO_IR 192", "Šuštar^Žiga"),
        ("ISO_IR 192", "山田^太郎"),
    ],
)
def test_names_are_decoded_in_the_data_set_character_set(charset: str, name: str) -> None:
    ds = _copy()
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = "Ecografia è ù"
    header = _read(_bytes_of(ds))
    assert header.patient["patient_name"] == name
    assert header.study["study_description"] == "Ecografia è ù"


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_binary_and_text_values_in_every_encoding(name: str) -> None:
    from pydicom import dcmread

    ds = _copy(name)
    header = _read(_bytes_of(ds))
    again = dcmread(io.BytesIO(_bytes_of(ds)))
    assert header.instance["rows"] == again.Rows and header.instance["columns"] == again.Columns
    assert header.sop_instance_uid == again.SOPInstanceUID
    assert header.patient["patient_name"] == str(again.PatientName)
