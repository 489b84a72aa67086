"""Modality Worklist (PS3.4 K): the CUP's bookings, as the modalities ask for them.

The listener (``archive.dicomnet.listener``) calls :func:`worklist_find` for each
Modality Worklist C-FIND; ``booking/apps.py`` registers it. Matching follows
PS3.4 K.6.1.2 and C.2.2.2 and runs in the database, through the rules
``archive.query`` applies to the archive's own queries:

* single value (person names without case nor accents, as ``archive.person_names``
  folds them: ``rossi^mario`` and ``NICOLO^PAOLA`` find ``NICOLÒ^PÀOLA``), ``*`` and ``?`` wildcards
  (matched by LIKE, bounded in number and length: a value over its VR's length
  or with more than PACS_QUERY_MAX_WILDCARDS wildcards is refused with 0xA900),
  lists of values, universal matching with an empty value or ``*``;
* date ranges ``A-B``, ``A-`` and ``-B`` on ScheduledProcedureStepStartDate,
  time ranges on ScheduledProcedureStepStartTime, both in local time (the
  modality's clock), matched independently (no combined date-time matching
  is negotiated).

The matching keys are the Scheduled Procedure Step's ScheduledStationAETitle,
Modality, start date and time, and the top-level PatientID, PatientName,
AccessionNumber and StudyInstanceUID; other keys are only returned. Only
bookings of the called facility that are still to be performed (booked,
arrived, or in progress: STARTED) are answered, in scheduled order; each
carries its priority class as RequestedProcedurePriority.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from archive.dicomnet.conformance import WorklistKey
from archive.models import Facility
from archive.query import DATE, PN, TEXT, TIME, UID, Attr, QueryError, attr_q

from .models import Booking

logger = logging.getLogger(__name__)

# The CUP catalogue's codes are local ones: a coding scheme designator starting
# with "99" is private to the issuer (PS3.3 8.2, PS3.16 8).
CODING_SCHEME_DESIGNATOR = "99FVG-CUP"

# A booking whose step a modality reported IN PROGRESS stays, STARTED: another
# modality sees it taken; a discontinued step puts it back to ARRIVED.
WORKLIST_STATUSES = (Booking.Status.BOOKED, Booking.Status.ARRIVED, Booking.Status.IN_PROGRESS)

# ScheduledProcedureStepStatus (PS3.3 C.4.10) of each booking status answered.
_SPS_STATUS: dict[str, str] = {
    Booking.Status.BOOKED: "SCHEDULED",
    Booking.Status.ARRIVED: "ARRIVED",
    Booking.Status.IN_PROGRESS: "STARTED",
}

# RequestedProcedurePriority (0040,1003; PS3.3 C.4.11, enumerated STAT, HIGH,
# ROUTINE, MEDIUM, LOW) of the prescription's priority class: U (within 72
# hours) is the modality's STAT, B (within 10 days) HIGH, D (deferred, within
# 30/60 days) MEDIUM and P (planned) ROUTINE, the ordinary work. LOW is not used:
# no class of the Italian prescription is below the planned one.
REQUESTED_PROCEDURE_PRIORITY: dict[str, str] = {
    Booking.Priority.URGENT: "STAT",
    Booking.Priority.SHORT: "HIGH",
    Booking.Priority.DEFERRED: "MEDIUM",
    Booking.Priority.PLANNED: "ROUTINE",
}

_SPS = "ScheduledProcedureStepSequence"

# Matching keys: keyword -> (how it matches, the Booking field or annotation).
_TOP_KEYS = {
    "PatientID": Attr("PatientID", "", "patient__codice_fiscale", TEXT),
    # Matched on the patient's FAMILY^GIVEN search key (archive.person_names).
    "PatientName": Attr("PatientName", "", "patient__name_search", PN, search="patient__name_search"),
    "AccessionNumber": Attr("AccessionNumber", "", "accession_number", TEXT),
    "StudyInstanceUID": Attr("StudyInstanceUID", "", "study_instance_uid", UID),
}
_SPS_KEYS = {
    "ScheduledStationAETitle": Attr("ScheduledStationAETitle", "", "station__ae_title", TEXT),
    "Modality": Attr("Modality", "", "station__modality", TEXT),
    "ScheduledProcedureStepStartDate": Attr("ScheduledProcedureStepStartDate", "", "scheduled_at__date", DATE),
}
_SPS_TIME = "ScheduledProcedureStepStartTime"

# Never matched nor returned as keys: they describe the query.
_IGNORED = {"SpecificCharacterSet", "QueryRetrieveLevel", "TimezoneOffsetFromUTC"}

# Maximum value lengths of the text VRs written (PS3.5 6.2).
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "UI": 64}


# --- the selector ---------------------------------------------------------------------


def worklist_bookings(*, facility: Facility, conditions: Q | None = None) -> QuerySet[Booking]:
    """The bookings the facility's worklist holds (still to be performed), in
    scheduled order, narrowed by ``conditions`` on :data:`_TOP_KEYS`/:data:`_SPS_KEYS` fields."""
    qs = Booking.objects.filter(facility=facility, status__in=WORKLIST_STATUSES).select_related(
        "patient", "procedure", "station"
    )
    if conditions is not None:
        qs = qs.filter(conditions)
    return qs.order_by("scheduled_at", "id")


# --- matching --------------------------------------------------------------------------


def _pn_value(raw: Any) -> Any:
    """A PN key's alphabetic group, without the empty components at its end
    ("ROSSI^MARIO^^^" is "ROSSI^MARIO")."""
    values = raw if isinstance(raw, (list, tuple, MultiValue)) else str(raw).split("\\")
    return [str(v).split("=")[0].rstrip("^") for v in values]


_TM_RE = re.compile(r"^([01]\d|2[0-3])(?:([0-5]\d)(?:([0-5]\d)(?:\.(\d{1,6}))?)?)?$")


def _time(text: str, *, upper: bool) -> dt.time:
    """A TM value; as an upper bound, the last instant it names ("12" is up to 12:59:59.999999)."""
    match = _TM_RE.match(text.strip().replace(":", ""))
    if match is None:
        raise QueryError(f"{_SPS_TIME}: {text.strip()!r} is not a time (HHMMSS.FFFFFF)", keyword=_SPS_TIME)
    hour, minute, second, fraction = match.groups()
    top = "59" if upper else "00"
    micro = int((fraction or "").ljust(6, "9" if upper else "0"))
    return dt.time(int(hour), int(minute or top), int(second or top), micro)


def _time_q(raw: Any) -> Q | None:
    """ScheduledProcedureStepStartTime: one time (the span it names) or a range, in local time."""
    value = str(raw).strip()
    if not value:
        return None
    if "\\" in value:
        raise QueryError(f"{_SPS_TIME}: one time or one range, not a list", keyword=_SPS_TIME)
    field = "scheduled_at__time"
    if "-" not in value:
        return Q(**{f"{field}__gte": _time(value, upper=False), f"{field}__lte": _time(value, upper=True)})
    if value.count("-") != 1 or value == "-":
        raise QueryError(f"{_SPS_TIME}: {value!r} is not a time or a range (A-B, A-, -B)", keyword=_SPS_TIME)
    low, high = (part.strip() for part in value.split("-"))
    q = Q()
    if low:
        q &= Q(**{f"{field}__gte": _time(low, upper=False)})
    if high:
        q &= Q(**{f"{field}__lte": _time(high, upper=True)})
    if low and high and _time(low, upper=False) > _time(high, upper=True):
        raise QueryError(f"{_SPS_TIME}: the range {value!r} ends before it starts", keyword=_SPS_TIME)
    return q


def _read(ds: Dataset, tag: Any) -> DataElement:
    try:
        return ds[tag]
    except Exception as exc:  # a raw value pydicom cannot convert
        keyword = keyword_for_tag(tag) or str(tag)
        raise QueryError(f"{keyword}: cannot read the value ({exc})", keyword=keyword) from exc


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == b"" or (isinstance(value, (list, MultiValue)) and not len(value))


def worklist_conditions(identifier: Dataset) -> Q:
    """The SQL conditions an identifier's matching keys make (PS3.4 K.6.1.2.2).

    Raises :class:`archive.query.QueryError` for a value that cannot be matched
    (a malformed date, a reversed range, several Scheduled Procedure Step items).
    """
    conditions = Q()

    def add(attr: Attr, raw: Any) -> None:
        nonlocal conditions
        if attr.kind == PN:
            raw = _pn_value(raw)
        q = attr_q(attr, attr.field, raw, fuzzy=False)
        if q is not None:
            conditions &= q

    for tag in identifier.keys():
        elem = _read(identifier, tag)
        if elem.keyword in _TOP_KEYS and not _is_empty(elem.value):
            add(_TOP_KEYS[elem.keyword], elem.value)
    if _SPS in identifier:
        items = _read(identifier, _tag(_SPS)).value or []
        if len(items) > 1:
            raise QueryError(f"{_SPS}: one item at most (PS3.4 C.2.2.2.6)", keyword=_SPS)
        for item in items:
            for tag in item.keys():
                elem = _read(item, tag)
                if _is_empty(elem.value):
                    continue
                if elem.keyword in _SPS_KEYS:
                    add(_SPS_KEYS[elem.keyword], elem.value)
                elif elem.keyword == _SPS_TIME:
                    q = _time_q(elem.value)
                    if q is not None:
                        conditions &= q
    return conditions


# --- the answers -------------------------------------------------------------------------


def _code_item(booking: Booking) -> Dataset:
    item = Dataset()
    item.CodeValue = booking.procedure.code
    item.CodingSchemeDesignator = CODING_SCHEME_DESIGNATOR
    item.CodeMeaning = booking.procedure.description[:64]
    return item


def _person_name(family: str, given: str) -> str:
    return f"{family}^{given}" if given else family


def _local(booking: Booking) -> dt.datetime:
    return timezone.localtime(booking.scheduled_at)


# Values of each key the worklist knows, from a booking; other keys are returned empty.
_TOP_VALUES: dict[str, Callable[[Booking], Any]] = {
    "PatientName": lambda b: _person_name(b.patient.family_name, b.patient.given_name),
    "PatientID": lambda b: b.patient.codice_fiscale or "",
    "IssuerOfPatientID": lambda b: settings.PACS_PATIENT_ID_ISSUER,
    "PatientBirthDate": lambda b: b.patient.birth_date.strftime("%Y%m%d") if b.patient.birth_date else "",
    "PatientSex": lambda b: b.patient.sex,
    "AccessionNumber": lambda b: b.accession_number,
    "StudyInstanceUID": lambda b: b.study_instance_uid,
    # One requested procedure per booking: its ID is the accession number (IHE SWF).
    "RequestedProcedureID": lambda b: b.accession_number,
    "RequestedProcedureDescription": lambda b: b.procedure.description,
    "RequestedProcedureCodeSequence": lambda b: [_code_item(b)],
    "ReferringPhysicianName": lambda b: b.referring_physician,
    "ReasonForTheRequestedProcedure": lambda b: b.clinical_question,
    "RequestedProcedurePriority": lambda b: REQUESTED_PROCEDURE_PRIORITY.get(b.priority, ""),
}
_SPS_VALUES: dict[str, Callable[[Booking], Any]] = {
    "ScheduledStationAETitle": lambda b: b.station.ae_title,
    "ScheduledStationName": lambda b: b.station.name,
    "ScheduledProcedureStepStartDate": lambda b: _local(b).strftime("%Y%m%d"),
    "ScheduledProcedureStepStartTime": lambda b: _local(b).strftime("%H%M%S"),
    "Modality": lambda b: b.station.modality,
    "ScheduledProcedureStepID": lambda b: b.accession_number,
    "ScheduledProcedureStepDescription": lambda b: b.procedure.description,
    "ScheduledProtocolCodeSequence": lambda b: [_code_item(b)],
    "ScheduledPerformingPhysicianName": lambda b: "",
    "ScheduledProcedureStepStatus": lambda b: _SPS_STATUS.get(b.status, ""),
}


def _element(tag: int, value: Any) -> DataElement:
    vr = dictionary_VR(tag).split(" or ")[0]
    if vr == "SQ":
        return DataElement(tag, vr, Sequence(value or []))
    if isinstance(value, str):
        if vr not in ("ST", "LT", "UT"):
            value = " ".join(value.split())  # no line breaks in a single-line VR
        value = value.replace("\\", "/")[: _MAX_LENGTH.get(vr, len(value))].rstrip()
    return DataElement(tag, vr, value if value not in (None, "") else None)


def _fill(ds: Dataset, requested: list[int], values: dict[str, Callable[[Booking], Any]], booking: Booking) -> None:
    for tag in requested:
        keyword = keyword_for_tag(tag)
        make = values.get(keyword)
        ds[tag] = _element(tag, make(booking) if make is not None else None)


def _sps_item(booking: Booking, requested: list[int] | None) -> Dataset:
    """The Scheduled Procedure Step item: the requested keys, or all of them
    when the SCU sent the sequence without an item (PS3.4 C.2.2.2.6)."""
    item = Dataset()
    if requested is None:
        for keyword, make in _SPS_VALUES.items():
            item[keyword] = _element(_tag(keyword), make(booking))
    else:
        _fill(item, requested, _SPS_VALUES, booking)
    return item


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


def _requested(ds: Dataset) -> list[int]:
    """The keys asked for: public ones, outside the command and file meta groups."""
    tags = []
    for tag in ds.keys():
        keyword = keyword_for_tag(tag)
        if not keyword or keyword in _IGNORED or tag.is_private or tag.group == 0x0002:
            continue
        tags.append(int(tag))
    return tags


def _has_non_ascii(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if any(_has_non_ascii(item) for item in elem.value):
                return True
        elif isinstance(elem.value, str) and not elem.value.isascii():
            return True
        elif elem.VR == "PN" and elem.value is not None and not str(elem.value).isascii():
            return True
    return False


def worklist_item(booking: Booking, identifier: Dataset) -> Dataset:
    """The worklist answer for one booking: every key the identifier asked for,
    zero-length where the booking has no value (PS3.4 C.2.2.1.2)."""
    ds = Dataset()
    sps_requested: list[int] | None = None
    if _SPS in identifier:
        items = identifier[_SPS].value or []
        sps_requested = _requested(items[0]) if items else None
    for tag in _requested(identifier):
        if keyword_for_tag(tag) == _SPS:
            ds[tag] = DataElement(tag, "SQ", Sequence([_sps_item(booking, sps_requested)]))
        else:
            _fill(ds, [tag], _TOP_VALUES, booking)
    if _has_non_ascii(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def worklist_find(identifier: Dataset, *, facility: Facility, calling_ae: str) -> Iterator[Dataset]:
    """Answer a Modality Worklist C-FIND from the facility's bookings.

    Parameters
    ----------
    identifier : pydicom.dataset.Dataset
        The C-FIND identifier: matching keys with values, return keys empty.
    facility : archive.models.Facility
        The facility that was called; only its bookings are answered.
    calling_ae : str
        The modality asking (for the log; matching is by the identifier's
        ScheduledStationAETitle, which a modality usually sets to its own).

    Raises
    ------
    archive.query.QueryError
        Before anything is yielded, when the identifier cannot be matched.
    """
    conditions = worklist_conditions(identifier)
    bookings = worklist_bookings(facility=facility, conditions=conditions)
    logger.debug("worklist query from %s at %s", calling_ae, facility.code)

    def items() -> Iterator[Dataset]:
        for booking in bookings.iterator(chunk_size=200):
            yield worklist_item(booking, identifier)

    return items()


def worklist_keys() -> list[WorklistKey]:
    """The keys this worklist matches and returns, for the conformance statement
    (``BookingConfig.ready`` registers it with :func:`archive.dicomnet.conformance.worklist_keys_register`)."""
    keys = [WorklistKey(keyword, "", attr.kind) for keyword, attr in _TOP_KEYS.items()]
    keys += [WorklistKey(keyword, "", None) for keyword in _TOP_VALUES if keyword not in _TOP_KEYS]
    keys += [WorklistKey(keyword, _SPS, attr.kind) for keyword, attr in _SPS_KEYS.items()]
    keys.append(WorklistKey(_SPS_TIME, _SPS, TIME))
    keys += [WorklistKey(k, _SPS, None) for k in _SPS_VALUES if k not in _SPS_KEYS and k != _SPS_TIME]
    return keys
