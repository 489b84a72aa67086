"""Synthetic studies made from the DICOM files bundled inside the pydicom wheel.

For the demo region, the tests and the benchmarks. Each copy gets fresh
UIDs; nothing is ever downloaded (pydicom would fetch files it does not
bundle, so only bundled ones are looked up).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

# Bundled files, by what they are good for.
CT = "CT_small.dcm"  # CT, explicit VR little endian, 128x128x16 bit
MR = "MR_small.dcm"  # MR, explicit VR little endian
US_MULTIFRAME = "examples_ybr_color.dcm"  # US cine, 30 frames, JPEG baseline, YBR_FULL_422
US_PALETTE = "examples_palette.dcm"  # US, PALETTE COLOR
NM = "JPEG-lossy.dcm"  # NM, JPEG extended (12 bit)
SR = "test-SR.dcm"  # a structured report: no pixels
COMPRESSED = {
    "1.2.840.10008.1.2.4.50": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "JPEG-lossy.dcm",  # JPEG extended
    "1.2.840.10008.1.2.4.70": "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "JPEG2000.dcm",  # JPEG 2000
    "1.2.840.10008.1.2.5": "MR_small_RLE.dcm",  # RLE lossless
    "1.2.840.10008.1.2.1.99": "image_dfl.dcm",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2": "MR_small_bigendian.dcm",  # explicit VR big endian
    "1.2.840.10008.1.2": "MR_small_implicit.dcm",  # implicit VR little endian
}


def bundled_path(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if not path:
        raise FileNotFoundError(f"{name} is not bundled with this pydicom")
    return Path(str(path))


def bundled_dataset(name: str) -> Dataset:
    return dcmread(bundled_path(name))


@dataclass
class PatientInfo:
    patient_id: str
    name: str = "Rossi^Mario"
    birth_date: str = "19700101"
    sex: str = "M"
    issuer: str = ""


def fresh_copy(
    source: str | Dataset,
    *,
    patient: PatientInfo,
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = 1,
    accession_number: str = "",
    study_date: dt.date | None = None,
    study_description: str | None = None,
    series_description: str | None = None,
    modality: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """A copy of a bundled file (or of a dataset) as one instance of the given study and series."""
    ds = bundled_dataset(source) if isinstance(source, str) else source.copy()
    sop_uid = sop_uid or generate_uid()
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient.patient_id
    ds.PatientName = patient.name
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    if patient.issuer:
        ds.IssuerOfPatientID = patient.issuer
    ds.InstanceNumber = instance_number
    ds.SeriesNumber = series_number
    ds.AccessionNumber = accession_number
    date = study_date or dt.date.today()
    ds.StudyDate = date.strftime("%Y%m%d")
    ds.StudyTime = ds.get("StudyTime") or "090000"
    if study_description is not None:
        ds.StudyDescription = study_description
    if series_description is not None:
        ds.SeriesDescription = series_description
    if modality is not None:
        ds.Modality = modality
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    return ds


def write_study(
    dest: Path,
    *,
    patient: PatientInfo,
    source: str = CT,
    series: int = 1,
    instances_per_series: int = 10,
    study_uid: str | None = None,
    **kwargs: Any,
) -> list[Path]:
    """Write one study of ``series`` x ``instances_per_series`` fresh copies into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    template = bundled_dataset(source)
    paths = []
    for s in range(1, series + 1):
        series_uid = generate_uid()
        for i in range(1, instances_per_series + 1):
            ds = fresh_copy(
                template,
                patient=patient,
                study_uid=study_uid,
                series_uid=series_uid,
                instance_number=i,
                series_number=s,
                **kwargs,
            )
            path = dest / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


# The rejection titles of IHE IOCM (PS3.16 CID 7010): archive.rejection.TITLES.
REJECTION_MEANINGS = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


def rejection_note(
    referenced: list[Dataset],
    *,
    code: str = "113001",
    study_uid: str | None = None,
    patient: PatientInfo | None = None,
    sop_uid: str | None = None,
) -> Dataset:
    """A Key Object Selection Document titled with a rejection code (IHE IOCM) that names
    ``referenced`` (headers of archived or yet-to-arrive instances), with fresh UIDs.

    It belongs to the study (and patient) of the first referenced instance unless
    ``study_uid``/``patient`` say otherwise (to build a note the archive must refuse).
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    first = referenced[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.59")
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID = study_uid or first.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "KO"
    ds.SeriesNumber = 999
    ds.InstanceNumber = 1
    if patient is not None:
        ds.PatientID, ds.PatientName = patient.patient_id, patient.name
        ds.PatientBirthDate, ds.PatientSex = patient.birth_date, patient.sex
    else:
        for keyword in ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex"):
            if keyword in first:
                setattr(ds, keyword, first.get(keyword))
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        setattr(ds, keyword, first.get(keyword, ""))
    now = dt.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Manufacturer = "PACS regionale (test)"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = code, "DCM"
    title.CodeMeaning = REJECTION_MEANINGS.get(code, "Of Interest")
    ds.ConceptNameCodeSequence = Sequence([title])
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = Sequence([template])
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    content = []
    by_study: dict[str, dict[str, list[Dataset]]] = {}
    for ref in referenced:
        by_study.setdefault(str(ref.StudyInstanceUID), {}).setdefault(str(ref.SeriesInstanceUID), []).append(ref)
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        sop = Dataset()
        sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = ref.SOPClassUID, ref.SOPInstanceUID
        item.ReferencedSOPSequence = Sequence([sop])
        content.append(item)
    ds.ContentSequence = Sequence(content)
    evidence = []
    for study, series_map in by_study.items():
        study_item = Dataset()
        study_item.StudyInstanceUID = study
        series_items = []
        for series, refs in series_map.items():
            series_item = Dataset()
            series_item.SeriesInstanceUID = series
            sops = []
            for ref in refs:
                sop = Dataset()
                sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = ref.SOPClassUID, ref.SOPInstanceUID
                sops.append(sop)
            series_item.ReferencedSOPSequence = Sequence(sops)
            series_items.append(series_item)
        study_item.ReferencedSeriesSequence = Sequence(series_items)
        evidence.append(study_item)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence(evidence)
    return ds
