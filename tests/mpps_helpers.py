"""A modality's Modality Performed Procedure Step SCU for the tests: pynetdicom
over a real association (DCMTK has no MPPS SCU), and the attribute lists of
PS3.4 Table F.7.2-1 a modality sends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.association import Association

from archive.dicomnet.fence import CheckedAE as AE  # pynetdicom issue 875: fence row 6

MPPS = "1.2.840.10008.3.1.2.3.3"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def create_attributes(
    *,
    accession: str = "ACC1",
    sps_id: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "RSSMRA56C12L424P",
    patient_name: str = "ROSSI^MARIO",
    station: str = "CT01",
    **overrides: Any,
) -> Dataset:
    """An N-CREATE attribute list: every Type 1 and 2 attribute, status IN PROGRESS."""
    ds = Dataset()
    item = Dataset()
    item.StudyInstanceUID = study_uid or generate_uid()
    item.ReferencedStudySequence = []
    item.AccessionNumber = accession
    item.RequestedProcedureID = accession
    item.RequestedProcedureDescription = "TC torace senza mdc"
    item.ScheduledProcedureStepID = accession if sps_id is None else sps_id
    item.ScheduledProcedureStepDescription = "TC torace senza mdc"
    item.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19560312"
    ds.PatientSex = "M"
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS0001"
    ds.PerformedStationAETitle = station
    ds.PerformedStationName = "TC 1"
    ds.PerformedLocation = "Radiologia"
    ds.PerformedProcedureStepStartDate = "20261205"
    ds.PerformedProcedureStepStartTime = "081500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "TC TORACE"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds


def series_item(*, images: int = 2, series_uid: str | None = None) -> Dataset:
    item = Dataset()
    item.PerformingPhysicianName = ""
    item.ProtocolName = "TORACE STANDARD"
    item.OperatorsName = "TSRM^ANNA"
    item.SeriesInstanceUID = series_uid or generate_uid()
    item.SeriesDescription = "TORACE 1.25"
    item.RetrieveAETitle = ""
    refs = []
    for _ in range(images):
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT_IMAGE
        ref.ReferencedSOPInstanceUID = generate_uid()
        refs.append(ref)
    item.ReferencedImageSequence = refs
    item.ReferencedNonImageCompositeSOPInstanceSequence = []
    return item


def completed_attributes(*, status: str = "COMPLETED", series: int = 1, **overrides: Any) -> Dataset:
    """An N-SET that ends the step: end date and time, the series performed, the dose."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261205"
    ds.PerformedProcedureStepEndTime = "083000"
    ds.PerformedSeriesSequence = [series_item() for _ in range(series)]
    ds.TotalTimeOfFluoroscopy = 0
    ds.TotalNumberOfExposures = 2
    ds.CommentsOnRadiationDose = "CTDIvol 7.2 mGy, DLP 310 mGy·cm"
    dose = Dataset()
    dose.KVP = 120
    dose.XRayTubeCurrentInuA = 200000
    ds.ExposureDoseSequence = [dose]
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds


def discontinued_attributes(*, code: str = "110514", meaning: str = "Incorrect worklist entry selected") -> Dataset:
    ds = completed_attributes(status="DISCONTINUED", series=0)
    reason = Dataset()
    reason.CodeValue = code
    reason.CodingSchemeDesignator = "DCM"
    reason.CodeMeaning = meaning
    ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
    return ds


@contextmanager
def mpps_association(port: int, *, calling_ae: str = "CT01", called_ae: str = "TSCAT_PACS") -> Iterator[Association]:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def n_create(assoc: Association, ds: Dataset, uid: str | None = None) -> tuple[Dataset, str]:
    uid = uid or generate_uid()
    status, _attrs = assoc.send_n_create(ds, MPPS, uid)
    assert status is not None, "no response"
    return status, uid


def n_set(assoc: Association, ds: Dataset, uid: str) -> Dataset:
    status, _attrs = assoc.send_n_set(ds, MPPS, uid)
    assert status is not None, "no response"
    return status
