"""The profile alone (no database): the library's table, the burned-in rules, the UIDs, the SR."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from archive.sample_data import CT, SR, US_PALETTE, bundled_dataset
from research import profile

SECONDARY_CAPTURE_FILE = "SC_rgb_jpeg_dcmtk.dcm"


def test_the_table_is_the_librarys_and_names_the_obvious_attributes() -> None:
    codes = {
        keyword: profile.table_code(_tag(keyword))
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "InstitutionName",
            "ReferringPhysicianName",
            "AccessionNumber",
            "StudyID",
            "OperatorsName",
            "StudyDate",
            "StationName",
            "SOPInstanceUID",
            "StudyInstanceUID",
            "ReferencedSOPInstanceUID",
        )
    }
    assert all(codes.values()), codes
    assert codes["SOPInstanceUID"] == codes["StudyInstanceUID"] == "U"
    assert len(profile.TABLE) > 500  # Table E.1-1 has some 600 rows
    assert profile.table_code(_tag("Rows")) is None and profile.table_code(_tag("Modality")) is None
    # A repeating group (overlays 60xx) is matched by its mask.
    assert profile.table_code(0x60024000) == profile.table_code(0x60004000) is not None


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None
    return int(tag)


def test_burned_in_annotation_is_flagged_by_the_attribute_then_by_modality_and_sop_class() -> None:
    ct = bundled_dataset(CT)
    assert profile.burned_in_reason(ct) is None
    ct.BurnedInAnnotation = "YES"
    assert profile.burned_in_reason(ct) == "stated"

    us = bundled_dataset(US_PALETTE)
    assert profile.burned_in_reason(us) == "ultrasound"
    us.BurnedInAnnotation = "NO"  # stated NO is believed
    assert profile.burned_in_reason(us) is None

    assert profile.burned_in_reason(bundled_dataset(SECONDARY_CAPTURE_FILE)) == "secondary_capture"

    xa = bundled_dataset(CT)
    xa.Modality, xa.SOPClassUID = "XA", "1.2.840.10008.5.1.4.1.1.12.1"
    assert profile.burned_in_reason(xa) is None  # an acquired XA image
    xa.ImageType = ["DERIVED", "SECONDARY"]
    assert profile.burned_in_reason(xa) == "screen_capture"

    pdf = Dataset()
    pdf.SOPClassUID, pdf.Modality = "1.2.840.10008.5.1.4.1.1.104.1", "DOC"
    pdf.BurnedInAnnotation = "NO"  # a document is its own text, whatever it says
    assert profile.burned_in_reason(pdf) == "document"
    assert profile.burned_in_reason(bundled_dataset(SR)) is None  # its text goes with the profile (Content Sequence: D)


def test_uids_are_the_same_within_a_project_and_differ_across_projects() -> None:
    uid = generate_uid()
    one = profile.uid_for(uid, secret=b"progetto-uno")
    assert one == profile.uid_for(uid, secret=b"progetto-uno")
    assert one != profile.uid_for(uid, secret=b"progetto-due")
    assert one.startswith("2.25.") and len(one) <= 64 and int(one[5:]) < 2**128


def test_a_structured_report_keeps_no_text_of_its_content() -> None:
    sr = bundled_dataset(SR)
    texts = {str(e.value) for e in sr.iterall() if e.VR in ("UT", "LT", "ST", "PN") and e.value}
    assert texts
    profile.dataset_deidentify(sr, profile.Choices(secret=b"x", pseudonym="RIC-00001"))
    left = {str(e.value) for e in sr.iterall() if e.VR in ("UT", "LT", "ST", "PN") and e.value}
    assert not texts & left
    assert str(sr.PatientName) == "RIC-00001"
