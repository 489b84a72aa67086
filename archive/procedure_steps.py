"""Modality Performed Procedure Steps (PS3.4 F): the rules of N-CREATE and N-SET.

A modality creates a step IN PROGRESS when it starts an exam, sets it (more
series, dose, end time) while it works, and sets it COMPLETED or DISCONTINUED
at the end; after that the step may no longer be changed (PS3.4 F.7.2.2).
The order of work of each change:

1. the attribute list is checked against Table F.7.2-1 (Type 1 present with
   a value, Type 2 present, attributes an N-SET may not touch left alone,
   values of the right form) and, when the step reaches its final state,
   against the final-state requirements (F.7.2.2.2);
2. the step is written in one transaction (an N-SET holds the row), the
   columns the pages read derived from the whole data set;
3. ``archive.signals.procedure_step_changed`` is sent on commit: the booking
   app reacts (in a task) without the archive importing it.

A refused change raises :class:`StepError` before anything is written; its
``code`` is what the DIMSE edge (``archive.dicomnet.mpps``) answers with.

No pynetdicom here: the attribute lists are pydicom data sets.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from archive.dicom import is_valid_uid
from archive.models import Facility, Patient, PatientIdentifier, PerformedProcedureStep, Study
from archive.signals import procedure_step_changed
from kernel.codice_fiscale import is_valid_codice_fiscale, normalize_codice_fiscale
from kernel.errors import PacsError

logger = logging.getLogger(__name__)

IN_PROGRESS = PerformedProcedureStep.Status.IN_PROGRESS
COMPLETED = PerformedProcedureStep.Status.COMPLETED
DISCONTINUED = PerformedProcedureStep.Status.DISCONTINUED

# PS3.4 Table F.7.2-1, the N-CREATE column (SCU requirement): 1 present with a
# value, 2 present (maybe empty). Type 3 and the conditional ones are not checked.
CREATE_REQUIRED: dict[str, int] = {
    # Performed Procedure Step Relationship
    "ScheduledStepAttributesSequence": 1,
    "PatientName": 2,
    "PatientID": 2,
    "PatientBirthDate": 2,
    "PatientSex": 2,
    "ReferencedPatientSequence": 2,
    # Performed Procedure Step Information
    "PerformedProcedureStepID": 1,
    "PerformedStationAETitle": 1,
    "PerformedStationName": 2,
    "PerformedLocation": 2,
    "PerformedProcedureStepStartDate": 1,
    "PerformedProcedureStepStartTime": 1,
    "PerformedProcedureStepStatus": 1,
    "PerformedProcedureStepDescription": 2,
    "PerformedProcedureTypeDescription": 2,
    "ProcedureCodeSequence": 2,
    "PerformedProcedureStepEndDate": 2,
    "PerformedProcedureStepEndTime": 2,
    # Image Acquisition Results
    "Modality": 1,
    "StudyID": 2,
    "PerformedProtocolCodeSequence": 2,
    "PerformedSeriesSequence": 2,
}
# An item of the Scheduled Step Attributes Sequence (N-CREATE).
SCHEDULED_ITEM_REQUIRED: dict[str, int] = {
    "StudyInstanceUID": 1,
    "ReferencedStudySequence": 2,
    "AccessionNumber": 2,
    "RequestedProcedureID": 2,
    "RequestedProcedureDescription": 2,
    "ScheduledProcedureStepID": 2,
    "ScheduledProcedureStepDescription": 2,
    "ScheduledProtocolCodeSequence": 2,
}
# An item of the Performed Series Sequence (N-CREATE and N-SET alike).
SERIES_ITEM_REQUIRED: dict[str, int] = {
    "PerformingPhysicianName": 2,
    "ProtocolName": 1,
    "OperatorsName": 2,
    "SeriesInstanceUID": 1,
    "SeriesDescription": 2,
    "RetrieveAETitle": 2,
    "ReferencedImageSequence": 2,
    "ReferencedNonImageCompositeSOPInstanceSequence": 2,
}
# "Not allowed" in the N-SET column of Table F.7.2-1: who, what and when the step began.
SET_NOT_ALLOWED = frozenset(
    {
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
        "StudyID",
    }
)
# The Radiation Dose module of the step (PS3.3 C.4.16), kept on the step's
# ``dose``; CTDIvol is not part of it but some CT modalities send it.
DOSE_KEYWORDS = (
    "AnatomicStructureSpaceOrRegionSequence",
    "TotalTimeOfFluoroscopy",
    "TotalNumberOfExposures",
    "DistanceSourceToDetector",
    "DistanceSourceToEntrance",
    "EntranceDose",
    "EntranceDoseInmGy",
    "ExposedArea",
    "ImageAndFluoroscopyAreaDoseProduct",
    "CommentsOnRadiationDose",
    "ExposureDoseSequence",
    "CTDIvol",
)


class StepError(PacsError):
    """A create or set refused; ``code`` names the kind (the DIMSE edge's table),
    ``keywords`` the attributes at fault."""

    code = "mpps_processing"

    def __init__(self, message: str, *, code: str, keywords: tuple[str, ...] = ()) -> None:
        super().__init__(message, code=code)
        self.keywords = keywords


@dataclass(frozen=True)
class StepChange:
    """A step as a create or set left it, and what it was before."""

    step: PerformedProcedureStep
    previous_status: str  # "" for a create


# --- checks -----------------------------------------------------------------------------


def _empty(elem: DataElement) -> bool:
    value = elem.value
    return value is None or value == "" or value == b"" or (isinstance(value, (list, Sequence)) and not len(value))


def _read(ds: Dataset, keyword: str) -> DataElement | None:
    try:
        return ds[keyword] if keyword in ds else None
    except Exception as exc:  # a raw value pydicom cannot convert
        raise StepError(f"{keyword}: cannot read the value", code="mpps_invalid_value", keywords=(keyword,)) from exc


def _check_required(ds: Dataset, required: dict[str, int], *, where: str = "") -> None:
    missing = [k for k in required if k not in ds]
    if missing:
        raise StepError(f"missing {where}{', '.join(missing)}", code="mpps_missing_attribute", keywords=tuple(missing))
    empty = [k for k, kind in required.items() if kind == 1 and _empty(_read(ds, k))]  # type: ignore[arg-type]
    if empty:
        raise StepError(f"no value for {where}{', '.join(empty)}", code="mpps_missing_value", keywords=tuple(empty))


def _check_items(ds: Dataset, keyword: str, required: dict[str, int]) -> None:
    elem = _read(ds, keyword)
    for item in (elem.value if elem is not None and elem.value else []) or []:
        _check_required(item, required, where=f"{keyword} item: ")


def _date(value: str, keyword: str) -> dt.date:
    try:
        return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        raise StepError(f"{keyword}: {value!r} is not a date", code="mpps_invalid_value", keywords=(keyword,)) from None


def _time(value: str, keyword: str) -> dt.time:
    text = value.strip().replace(":", "").split(".")[0]
    formats = {2: "%H", 4: "%H%M", 6: "%H%M%S"}
    try:
        return dt.datetime.strptime(text, formats[len(text)]).time()
    except (KeyError, ValueError):
        raise StepError(f"{keyword}: {value!r} is not a time", code="mpps_invalid_value", keywords=(keyword,)) from None


def _moment(ds: Dataset, date_keyword: str, time_keyword: str) -> dt.datetime | None:
    """The local date and time of two DA/TM attributes as an aware datetime; None when empty."""
    day, hour = ds.get(date_keyword, ""), ds.get(time_keyword, "")
    if not day and not hour:
        return None
    if not day or not hour:
        missing = date_keyword if not day else time_keyword
        raise StepError(f"{missing}: no value", code="mpps_missing_value", keywords=(missing,))
    return timezone.make_aware(dt.datetime.combine(_date(str(day), date_keyword), _time(str(hour), time_keyword)))


def _check_uids(ds: Dataset) -> None:
    """Every UI value of the data set, its items' included, is a valid UID."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _check_uids(item)
        elif elem.VR == "UI" and not _empty(elem):
            values = elem.value if isinstance(elem.value, (list, tuple)) else [elem.value]
            for value in values:
                if not is_valid_uid(str(value)):
                    raise StepError(
                        f"{elem.keyword}: {str(value)[:40]!r} is not a UID",
                        code="mpps_invalid_value",
                        keywords=(elem.keyword,),
                    )


def _check_values(ds: Dataset) -> None:
    """Dates, times and UIDs of the form their VR requires (0x0106 otherwise)."""
    try:
        for elem in ds:
            if elem.VR == "DA" and not _empty(elem):
                _date(str(elem.value), elem.keyword)
            elif elem.VR == "TM" and not _empty(elem):
                _time(str(elem.value), elem.keyword)
        _check_uids(ds)
    except StepError:
        raise
    except Exception as exc:  # pydicom could not convert a value
        raise StepError(f"cannot read the attributes: {exc}"[:120], code="mpps_invalid_value") from exc


def _status_of(ds: Dataset) -> str:
    return str(ds.get("PerformedProcedureStepStatus", "") or "").strip().upper()


def check_final_state(ds: Dataset) -> None:
    """The final-state requirements (PS3.4 F.7.2.2.2) of a step set COMPLETED or
    DISCONTINUED: it has an end date and time; a completed one names at least one
    performed series (each with its Type 1 values). A discontinued step may have
    performed nothing."""
    for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"):
        if keyword not in ds or _empty(ds[keyword]):
            raise StepError(
                f"{keyword} must have a value to end the step", code="mpps_missing_value", keywords=(keyword,)
            )
    series = ds.get("PerformedSeriesSequence") or []
    if _status_of(ds) == COMPLETED and not len(series):
        raise StepError(
            "a COMPLETED step names its performed series (PerformedSeriesSequence)",
            code="mpps_missing_value",
            keywords=("PerformedSeriesSequence",),
        )
    _check_items(ds, "PerformedSeriesSequence", SERIES_ITEM_REQUIRED)


def check_create(ds: Dataset) -> None:
    """Table F.7.2-1's N-CREATE rules; raises :class:`StepError`."""
    _check_required(ds, CREATE_REQUIRED)
    _check_items(ds, "ScheduledStepAttributesSequence", SCHEDULED_ITEM_REQUIRED)
    _check_items(ds, "PerformedSeriesSequence", SERIES_ITEM_REQUIRED)
    _check_values(ds)
    status = _status_of(ds)
    if status != IN_PROGRESS:
        raise StepError(
            f"PerformedProcedureStepStatus: a step is created IN PROGRESS, not {status!r}",
            code="mpps_invalid_value",
            keywords=("PerformedProcedureStepStatus",),
        )
    _moment(ds, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime")


def check_set(modifications: Dataset) -> None:
    """Table F.7.2-1's N-SET rules for the modification list alone; raises :class:`StepError`."""
    refused = [elem.keyword or str(elem.tag) for elem in modifications if elem.keyword in SET_NOT_ALLOWED]
    if refused:
        raise StepError(
            f"an N-SET may not change {', '.join(refused)}", code="mpps_not_allowed", keywords=tuple(refused)
        )
    _check_items(modifications, "PerformedSeriesSequence", SERIES_ITEM_REQUIRED)
    _check_values(modifications)
    if "PerformedProcedureStepStatus" in modifications:
        status = _status_of(modifications)
        if status not in PerformedProcedureStep.Status.values:
            raise StepError(
                f"PerformedProcedureStepStatus: {status!r} is not IN PROGRESS, COMPLETED or DISCONTINUED",
                code="mpps_invalid_value",
                keywords=("PerformedProcedureStepStatus",),
            )


# --- what the columns say -------------------------------------------------------------


def _text(ds: Dataset, keyword: str, length: int) -> str:
    value = ds.get(keyword, "")
    return ("" if value is None else str(value)).strip()[:length]


def _plain(value: Any) -> Any:
    """A value as JSON can keep it: sequences as lists of {keyword: value}."""
    if isinstance(value, Sequence):
        return [{e.keyword or str(e.tag): _plain(e.value) for e in item} for item in value]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (int, float, str)):
        return value
    return str(value)


def _performed_series(ds: Dataset) -> list[dict[str, Any]]:
    answer = []
    for item in ds.get("PerformedSeriesSequence") or []:
        instances = [
            [str(ref.get("ReferencedSOPClassUID", "")), str(ref.get("ReferencedSOPInstanceUID", ""))]
            for keyword in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence")
            for ref in item.get(keyword) or []
        ]
        answer.append(
            {
                "series_instance_uid": _text(item, "SeriesInstanceUID", 64),
                "series_description": _text(item, "SeriesDescription", 64),
                "protocol_name": _text(item, "ProtocolName", 64),
                "operators": _text(item, "OperatorsName", 256),
                "images": len(instances),
                "instances": instances,
            }
        )
    return answer


# PS3.16 CID 9300 "Procedure Discontinuation Reasons" (DCM), in the words of the CUP desk:
# the reason is kept as the desk reads it, with its code; a code not listed keeps the
# modality's own Code Meaning.
DISCONTINUATION_REASONS_IT = {
    "110500": "annullato dal medico",
    "110501": "guasto dell'apparecchiatura",
    "110502": "prestazione richiesta errata",
    "110503": "allergia al mezzo di contrasto",
    "110504": "decesso del paziente",
    "110505": "il paziente ha rifiutato di proseguire",
    "110506": "paziente trasferito per terapia o intervento",
    "110507": "il paziente non si è presentato",
    "110508": "paziente in gravidanza",
    "110509": "cambio di prestazione per la corretta tariffazione",
    "110510": "richiesta duplicata",
    "110511": "annullato dal reparto",
    "110512": "lato richiesto errato",
    "110513": "interrotto per motivo non specificato",
    "110514": "voce della worklist scelta per errore",
    "110515": "le condizioni del paziente non hanno permesso di proseguire",
    "110516": "cambio di apparecchiatura",
    "110521": "oggetti formattati in modo errato",
    "110522": "tipi di oggetto non supportati",
    "110523": "insieme di oggetti incompleto",
    "110524": "guasto del supporto",
    "110526": "risorsa assegnata ad altro",
    "110527": "risorsa inadeguata",
    "110528": "passo interrotto e riprogrammato",
    "110529": "passo interrotto, riprogrammazione consigliata",
}


def _discontinuation_reason(ds: Dataset) -> str:
    items = ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence") or []
    reasons = []
    for item in items:
        meaning, code = _text(item, "CodeMeaning", 64), _text(item, "CodeValue", 16)
        if code and _text(item, "CodingSchemeDesignator", 16) == "DCM":
            meaning = DISCONTINUATION_REASONS_IT.get(code, meaning)
        reasons.append(f"{meaning} ({code})" if meaning and code else meaning or code)
    return "; ".join(r for r in reasons if r)[:200]


def patient_for(facility: Facility, ds: Dataset) -> Patient | None:
    """The patient the step names: a facility's known PatientID, or a codice fiscale
    (what the worklist hands out); None when neither is known. Nothing is created."""
    pid = _text(ds, "PatientID", 64)
    if not pid:
        return None
    issuer = _text(ds, "IssuerOfPatientID", 64)
    known = PatientIdentifier.objects.filter(facility=facility, dicom_patient_id=pid, issuer=issuer).first()
    if known is not None:
        return known.patient
    cf = normalize_codice_fiscale(pid)
    if is_valid_codice_fiscale(cf):
        return Patient.objects.filter(codice_fiscale=cf).first()
    return None


def _columns(step: PerformedProcedureStep, ds: Dataset) -> None:
    """Fill the step's columns from its whole data set."""
    scheduled = []
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        scheduled.append(
            {
                "accession_number": _text(item, "AccessionNumber", 16),
                "scheduled_step_id": _text(item, "ScheduledProcedureStepID", 16),
                "requested_procedure_id": _text(item, "RequestedProcedureID", 16),
                "study_instance_uid": _text(item, "StudyInstanceUID", 64),
            }
        )
    step.scheduled_steps = scheduled
    first = scheduled[0] if scheduled else {}
    step.accession_number = first.get("accession_number", "")
    step.scheduled_step_id = first.get("scheduled_step_id", "")
    step.study_instance_uid = first.get("study_instance_uid", "")
    step.patient_name = _text(ds, "PatientName", 256)
    step.dicom_patient_id = _text(ds, "PatientID", 64)
    step.step_id = _text(ds, "PerformedProcedureStepID", 16)
    step.station_ae_title = _text(ds, "PerformedStationAETitle", 16)
    step.station_name = _text(ds, "PerformedStationName", 16)
    step.modality = _text(ds, "Modality", 16)
    step.description = _text(ds, "PerformedProcedureStepDescription", 64)
    step.status = _status_of(ds)
    step.started_at = _moment(ds, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime")
    step.ended_at = _moment(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")
    step.discontinuation_reason = _discontinuation_reason(ds)
    step.comments = _text(ds, "CommentsOnThePerformedProcedureStep", 10240)
    step.performed_series = _performed_series(ds)
    step.dose = {k: _plain(ds[k].value) for k in DOSE_KEYWORDS if k in ds and not _empty(ds[k])}
    kept = Dataset()
    for elem in ds:
        if elem.tag.group > 0x0002:
            kept.add(elem)
    # The JSON holds Unicode strings: the character set the modality used is no longer theirs.
    kept.SpecificCharacterSet = "ISO_IR 192"
    step.attributes = kept.to_json_dict()


def _on_commit(step: PerformedProcedureStep) -> None:
    pk = step.pk
    transaction.on_commit(lambda: procedure_step_changed.send(sender=PerformedProcedureStep, step_pk=pk))


# --- services ---------------------------------------------------------------------------


def step_create(
    *, facility: Facility, calling_ae: str, sop_instance_uid: str, attributes: Dataset
) -> PerformedProcedureStep:
    """Record a new step IN PROGRESS (N-CREATE).

    Raises
    ------
    StepError
        ``mpps_missing_attribute``, ``mpps_missing_value``, ``mpps_invalid_value``
        (Table F.7.2-1), ``mpps_invalid_instance`` (not a UID), ``mpps_duplicate``
        (a step with this SOP Instance UID exists). Nothing is written.
    """
    if not is_valid_uid(sop_instance_uid):
        raise StepError(f"{sop_instance_uid[:40]!r} is not a SOP Instance UID", code="mpps_invalid_instance")
    check_create(attributes)
    step = PerformedProcedureStep(sop_instance_uid=sop_instance_uid, facility=facility, calling_ae=calling_ae[:16])
    _columns(step, attributes)
    step.patient = patient_for(facility, attributes)
    duplicate = StepError(f"a step {sop_instance_uid} exists already", code="mpps_duplicate")
    if PerformedProcedureStep.objects.filter(sop_instance_uid=sop_instance_uid).exists():
        raise duplicate
    try:
        with transaction.atomic():
            step.save()
            _on_commit(step)
    except IntegrityError:
        raise duplicate from None  # the same N-CREATE twice at once: the unique index let one in
    logger.info("MPPS %s created by %s for %s", sop_instance_uid, calling_ae, step.accession_number or "no accession")
    return step


def step_set(*, facility: Facility, sop_instance_uid: str, modifications: Dataset) -> StepChange:
    """Apply an N-SET to a step IN PROGRESS of ``facility``.

    The modification list replaces the attributes it names (a sequence whole, as
    PS3.4 F.7.2.2 says); a step set COMPLETED or DISCONTINUED must then meet the
    final-state requirements.

    Raises
    ------
    StepError
        ``mpps_unknown`` (no such step at this facility), ``mpps_final`` (the step
        is completed or discontinued: it may no longer be updated),
        ``mpps_not_allowed``, ``mpps_missing_value``, ``mpps_invalid_value``.
        Nothing is written.
    """
    check_set(modifications)
    with transaction.atomic():
        step = (
            PerformedProcedureStep.objects.select_for_update()
            .filter(sop_instance_uid=sop_instance_uid, facility=facility)
            .first()
        )
        if step is None:
            raise StepError(f"no step {sop_instance_uid[:64]} here", code="mpps_unknown")
        if step.is_final():
            raise StepError(f"the step is {step.status}: it may no longer be updated", code="mpps_final", keywords=())
        merged = Dataset.from_json(step.attributes)
        for elem in modifications:
            if elem.tag.group > 0x0002 and elem.tag != Tag("SpecificCharacterSet"):
                merged[elem.tag] = elem
        if _status_of(merged) != IN_PROGRESS:
            check_final_state(merged)
        previous = step.status
        _columns(step, merged)
        step.save()
        _on_commit(step)
    logger.info("MPPS %s set %s (was %s)", sop_instance_uid, step.status, previous)
    return StepChange(step=step, previous_status=previous)


# --- selectors ----------------------------------------------------------------------------


def steps_for_studies(studies: Iterable[Study]) -> dict[int, list[PerformedProcedureStep]]:
    """{study pk: its steps, newest first} for the studies that have some: a step
    names its study by the Study Instance UID the worklist gave, or (a modality
    that made its own) by the accession number at the study's facility."""
    studies = list(studies)
    if not studies:
        return {}
    by_uid = {s.study_instance_uid: s.pk for s in studies}
    by_accession = {(s.facility_id, s.accession_number): s.pk for s in studies if s.accession_number}
    condition = Q(study_instance_uid__in=list(by_uid))
    if by_accession:
        condition |= Q(accession_number__in=[acc for _f, acc in by_accession])
    answer: dict[int, list[PerformedProcedureStep]] = {}
    for step in PerformedProcedureStep.objects.filter(condition).order_by("-created_at", "-id"):
        pk = by_uid.get(step.study_instance_uid) or by_accession.get((step.facility_id, step.accession_number))
        if pk is not None:
            answer.setdefault(pk, []).append(step)
    return answer
