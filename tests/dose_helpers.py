"""Studies with dose information, for the exposure tests (and the CDA's).

- :func:`ct_rdsr`: an X-Ray Radiation Dose SR of a CT (TID 10011), built from
  scratch with plain pydicom data sets (not with the library that reads it) and
  fresh UIDs: one CT Acquisition container per irradiation event with its Mean
  CTDIvol and DLP, and the CT Accumulated Dose Data's DLP total.
- :func:`write_ct_study_with_rdsr`: a CT study (pydicom's bundled CT_small.dcm)
  and its RDSR in the same study, written as files to ingest.
- :func:`dx_image` and :func:`nm_image`: bundled images with the dose
  attributes added (DAP and entrance dose; the radiopharmaceutical sequence).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from archive.sample_data import CT, MR, NM, PatientInfo, fresh_copy, write_study

XRAY_RDSR = "1.2.840.10008.5.1.4.1.1.88.67"
RADIOPHARMACEUTICAL_RDSR = "1.2.840.10008.5.1.4.1.1.88.68"


@dataclass(frozen=True)
class CtEvent:
    label: str  # the Acquisition Protocol
    ctdivol_mgy: float
    dlp_mgycm: float


# Two events with known figures: CTDIvol max 8.2 mGy, DLP total 412.5 mGy·cm.
CT_EVENTS = (CtEvent("Torace", 8.2, 206.3), CtEvent("Addome", 7.5, 206.2))
CT_DLP_TOTAL = 412.5


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _named(value_type: str, relationship: str, concept: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = DicomSequence([concept])
    return item


def container(concept: Dataset, children: Sequence[Dataset], relationship: str = "CONTAINS") -> Dataset:
    item = _named("CONTAINER", relationship, concept)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = DicomSequence(list(children))
    return item


def num(concept: Dataset, value: float, unit: Dataset, relationship: str = "CONTAINS") -> Dataset:
    item = _named("NUM", relationship, concept)
    measured = Dataset()
    measured.NumericValue = f"{value:g}"
    measured.MeasurementUnitsCodeSequence = DicomSequence([unit])
    item.MeasuredValueSequence = DicomSequence([measured])
    return item


def text(concept: Dataset, value: str, relationship: str = "CONTAINS") -> Dataset:
    item = _named("TEXT", relationship, concept)
    item.TextValue = value
    return item


def coded(concept: Dataset, value: Dataset, relationship: str = "CONTAINS") -> Dataset:
    item = _named("CODE", relationship, concept)
    item.ConceptCodeSequence = DicomSequence([value])
    return item


def uidref(concept: Dataset, value: str, relationship: str = "CONTAINS") -> Dataset:
    item = _named("UIDREF", relationship, concept)
    item.UID = value
    return item


MGY = code("mGy", "UCUM", "mGy")
MGYCM = code("mGy.cm", "UCUM", "mGy.cm")
GYM2 = code("Gy.m2", "UCUM", "Gy.m2")
GY = code("Gy", "UCUM", "Gy")
MBQ = code("MBq", "UCUM", "MBq")


def _sr_dataset(
    *,
    sop_class: str,
    patient: PatientInfo,
    study_uid: str,
    accession_number: str,
    study_date: dt.date,
    title: Dataset,
    content: list[Dataset],
    modality: str = "SR",
) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = "090000"
    ds.AccessionNumber = accession_number
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 999
    ds.SeriesDescription = "Dose Report"
    ds.Manufacturer = "Test"
    ds.InstanceNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = "093000"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([title])
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "10001" if sop_class == XRAY_RDSR else "10021"
    ds.ContentTemplateSequence = DicomSequence([template])
    ds.ContentSequence = DicomSequence(content)
    return ds


def ct_rdsr(
    *,
    patient: PatientInfo,
    study_uid: str,
    accession_number: str = "",
    study_date: dt.date | None = None,
    events: Sequence[CtEvent] = CT_EVENTS,
    dlp_total: float | None = CT_DLP_TOTAL,
) -> Dataset:
    """An X-Ray Radiation Dose SR of a CT with ``events`` (TID 10011)."""
    content = [
        coded(
            code("121058", "DCM", "Procedure reported"),
            code("77477000", "SCT", "Computed Tomography X-Ray"),
            "HAS CONCEPT MOD",
        ),
    ]
    if dlp_total is not None:
        content.append(
            container(
                code("113811", "DCM", "CT Accumulated Dose Data"),
                [
                    num(
                        code("113812", "DCM", "Total Number of Irradiation Events"),
                        len(events),
                        code("{events}", "UCUM", "events"),
                    ),
                    num(code("113813", "DCM", "CT Dose Length Product Total"), dlp_total, MGYCM),
                ],
            )
        )
    for event in events:
        content.append(
            container(
                code("113819", "DCM", "CT Acquisition"),
                [
                    text(code("125203", "DCM", "Acquisition Protocol"), event.label),
                    coded(code("123014", "DCM", "Target Region"), code("51185008", "SCT", "Chest")),
                    coded(code("113820", "DCM", "CT Acquisition Type"), code("116152004", "SCT", "Spiral Acquisition")),
                    uidref(code("113769", "DCM", "Irradiation Event UID"), generate_uid()),
                    container(
                        code("113829", "DCM", "CT Dose"),
                        [
                            num(code("113830", "DCM", "Mean CTDIvol"), event.ctdivol_mgy, MGY),
                            num(code("113838", "DCM", "DLP"), event.dlp_mgycm, MGYCM),
                        ],
                    ),
                ],
            )
        )
    return _sr_dataset(
        sop_class=XRAY_RDSR,
        patient=patient,
        study_uid=study_uid,
        accession_number=accession_number,
        study_date=study_date or dt.date.today(),
        title=code("113701", "DCM", "X-Ray Radiation Dose Report"),
        content=content,
    )


def projection_rdsr(
    *, patient: PatientInfo, study_uid: str, dap_gym2: float, dose_rp_gy: float, accession_number: str = ""
) -> Dataset:
    """An X-Ray Radiation Dose SR of a projection exam (TID 10001/10002), DAP in Gy·m² as modalities write it."""
    content = [
        container(
            code("113702", "DCM", "Accumulated X-Ray Dose Data"),
            [
                container(
                    code("113704", "DCM", "Accumulated Projection X-Ray Dose"),
                    [
                        num(code("113722", "DCM", "Dose Area Product Total"), dap_gym2, GYM2),
                        num(code("113725", "DCM", "Dose (RP) Total"), dose_rp_gy, GY),
                    ],
                )
            ],
        )
    ]
    return _sr_dataset(
        sop_class=XRAY_RDSR,
        patient=patient,
        study_uid=study_uid,
        accession_number=accession_number,
        study_date=dt.date.today(),
        title=code("113701", "DCM", "X-Ray Radiation Dose Report"),
        content=content,
    )


def nm_rdsr(*, patient: PatientInfo, study_uid: str, activity_mbq: float, agent: str) -> Dataset:
    """A Radiopharmaceutical Radiation Dose SR (TID 10021) with one administration."""
    content = [
        container(
            code("113502", "DCM", "Radiopharmaceutical Administration"),
            [
                coded(code("349358000", "SCT", "Radiopharmaceutical agent"), code("35321007", "SCT", agent)),
                num(code("113507", "DCM", "Administered activity"), activity_mbq, MBQ),
            ],
        )
    ]
    return _sr_dataset(
        sop_class=RADIOPHARMACEUTICAL_RDSR,
        patient=patient,
        study_uid=study_uid,
        accession_number="",
        study_date=dt.date.today(),
        title=code("113500", "DCM", "Radiopharmaceutical Radiation Dose Report"),
        content=content,
    )


def save(ds: Dataset, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_study_with_rdsr(
    dest: Path,
    *,
    patient: PatientInfo,
    accession_number: str = "",
    series: int = 2,
    instances_per_series: int = 2,
    events: Sequence[CtEvent] = CT_EVENTS,
    dlp_total: float | None = CT_DLP_TOTAL,
    ctdivol_in_images: float | None = None,
) -> list[Path]:
    """A CT study (bundled CT_small.dcm copies) and its RDSR: the files to ingest, the RDSR last.

    ``ctdivol_in_images``: also write CTDIvol (0018,9345) in every image (the RDSR must win over it).
    """
    study_uid = generate_uid()
    extra = {"CTDIvol": ctdivol_in_images} if ctdivol_in_images is not None else None
    files = write_study(
        dest,
        patient=patient,
        source=CT,
        series=series,
        instances_per_series=instances_per_series,
        study_uid=study_uid,
        accession_number=accession_number,
        extra=extra,
    )
    rdsr = ct_rdsr(
        patient=patient, study_uid=study_uid, accession_number=accession_number, events=events, dlp_total=dlp_total
    )
    return [*files, save(rdsr, dest)]


def write_ct_study_without_rdsr(
    dest: Path, *, patient: PatientInfo, ctdivol: float, accession_number: str = "", series: int = 2
) -> list[Path]:
    """A CT study whose images carry CTDIvol (0018,9345) and no RDSR: the images' fallback."""
    return write_study(
        dest,
        patient=patient,
        source=CT,
        series=series,
        instances_per_series=2,
        accession_number=accession_number,
        extra={"CTDIvol": ctdivol},
    )


def dx_image(
    *, patient: PatientInfo, study_uid: str, series_uid: str, dap_dgycm2: float, entrance_mgy: float, number: int = 1
) -> Dataset:
    """A projection radiograph (bundled CT_small.dcm as DX) with its DAP (dGy·cm²) and entrance dose (mGy)."""
    ds = fresh_copy(
        CT,
        patient=patient,
        study_uid=study_uid,
        series_uid=series_uid,
        instance_number=number,
        modality="DX",
        series_description="Torace PA",
    )
    ds.ImageAndFluoroscopyAreaDoseProduct = dap_dgycm2
    ds.EntranceDoseInmGy = entrance_mgy
    return ds


def nm_image(*, patient: PatientInfo, study_uid: str, activity_mbq: float, agent: str = "Tc99m MDP") -> Dataset:
    """A nuclear medicine image (bundled JPEG-lossy.dcm, NM) with the Radiopharmaceutical Information Sequence."""
    ds = fresh_copy(NM, patient=patient, study_uid=study_uid, series_uid=generate_uid(), modality="NM")
    info = Dataset()
    info.Radiopharmaceutical = agent
    info.RadionuclideTotalDose = activity_mbq
    nuclide = code("C-163A8", "SRT", "^99m^Technetium")
    info.RadionuclideCodeSequence = DicomSequence([nuclide])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([info])
    return ds


def mr_study(dest: Path, *, patient: PatientInfo) -> list[Path]:
    """An MR study: no ionising radiation, no exposure section."""
    return write_study(dest, patient=patient, source=MR, series=1, instances_per_series=1)
