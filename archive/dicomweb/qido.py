"""QIDO-RS (PS3.18 10.6): searches through :func:`archive.query.query_json`, the engine C-FIND uses."""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from pydicom.dataset import Dataset

from .media import DicomwebError
from .scope import Scope, check_uid

# PS3.18 Table 6.7.1-2, -2a, -2b: what each level returns when no includefield asks for more.
QIDO_DEFAULTS = {
    "STUDY": [
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ],
    "SERIES": [
        "Modality",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
    ],
    "IMAGE": [
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ],
}
# Query parameters that are not attributes (PS3.18 8.3.4).
_QIDO_CONTROL = {"includefield", "limit", "offset", "fuzzymatching", "accept", "charset", "format"}


@dataclass
class QidoResult:
    items: list[dict[str, Any]]
    truncated: bool
    level: str
    patients: list[int]  # the patient of each item, in order (for the audit event)


def _keyword_of(name: str) -> str:
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise DicomwebError(400, f"tag {name} is not an attribute this archive can query")
        return keyword
    if "." in name:
        raise DicomwebError(400, f"{name[:80]!r}: sequence attribute paths are not supported")
    if tag_for_keyword(name) is None:
        raise DicomwebError(400, f"{name[:80]!r} is not a DICOM attribute keyword or tag")
    return name


def _qido_int(query: Any, name: str, *, maximum: int | None = None) -> int | None:
    """A paging parameter: a whole number from 0, at most ``maximum`` when one is given.

    Beyond it 400, never a database error (an offset past the database's integer
    answered 500). A limit has no maximum here: past PACS_QIDO_MAX_LIMIT it is
    served as that maximum with a Warning (PS3.18 8.3.4.4), see :func:`qido_page_size`."""
    text = query.get(name)
    if text is None or text == "":
        return None
    text = text.strip()
    if text.startswith("-") and text[1:].isdigit():
        raise DicomwebError(400, f"{name} cannot be negative")
    # Digits only: int() would take "+5" and "5_000", and refuse thousands of digits.
    if not (text.isascii() and text.isdigit()):
        raise DicomwebError(400, f"{name} must be a whole number")
    digits = text.lstrip("0") or "0"
    value = int(digits) if len(digits) <= 18 else sys.maxsize
    if maximum is not None and value > maximum:
        raise DicomwebError(400, f"{name} must be at most {maximum}: narrow the query instead")
    return value


def qido_page_size(limit: int | None) -> tuple[int, bool]:
    """How many results one answer holds, and whether the server chose it (not the client).

    Without ``limit`` the page is PACS_QIDO_DEFAULT_LIMIT; a ``limit`` past
    PACS_QIDO_MAX_LIMIT is served as that maximum. In both cases the server cut
    the answer, so when more matched it says so (PS3.18 8.3.4.4, the Warning
    header); a ``limit`` within the maximum is the client's own page and is
    answered without one, as the standard asks."""
    maximum = max(1, int(settings.PACS_QIDO_MAX_LIMIT))
    if limit is None:
        return min(max(1, int(settings.PACS_QIDO_DEFAULT_LIMIT)), maximum), True
    if limit > maximum:
        return maximum, True
    return limit, False


def qido_search(
    scope: Scope,
    query: Any,
    *,
    level: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> QidoResult:
    """A QIDO-RS search (PS3.18 10.6) through :func:`archive.query.query_run`, the engine C-FIND uses.

    ``query`` is the request's query parameters (a QueryDict). Matching keys
    are given by keyword or tag; ``includefield`` (repeatable, comma lists,
    ``all``) adds return keys; ``limit`` and ``offset`` page; without a
    limit PACS_QIDO_DEFAULT_LIMIT results are returned, at most PACS_QIDO_MAX_LIMIT,
    and ``truncated`` says when the server cut an answer that had more.
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from ..query import ATTRIBUTES, QueryError, query_json

    # The levels above the searched one come along when the URL does not fix them (PS3.18 10.6.3.3.1).
    if level == "STUDY":
        groups = ["STUDY"]
    elif level == "SERIES":
        groups = ["SERIES"] if study_uid else ["STUDY", "SERIES"]
    else:
        groups = ["IMAGE"] if series_uid else ["SERIES", "IMAGE"] if study_uid else ["STUDY", "SERIES", "IMAGE"]
    returned = [keyword for group in groups for keyword in QIDO_DEFAULTS[group]]
    for value in query.getlist("includefield"):
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name.lower() == "all":
                depth = ["PATIENT", "STUDY", "SERIES", "IMAGE"]
                allowed = depth[: depth.index(level) + 1]
                returned += [kw for kw, attr in ATTRIBUTES.items() if attr.level in allowed]
            else:
                returned.append(_keyword_of(name))
    # An attribute of a level below the searched one has no one value here (a study's
    # series each have their Modality): it is left out, not sent empty. OHIF asks for
    # Modality in every study search (qido.js mapParams), and its DICOMWeb.getModalities
    # failed on an empty one ({"vr": "CS"} has no Value list) until it added a guard
    # for "the DICOM server we are using"; clients read ModalitiesInStudy.
    depth = ["PATIENT", "STUDY", "SERIES", "IMAGE"]
    returned = [
        kw for kw in returned if kw not in ATTRIBUTES or depth.index(ATTRIBUTES[kw].level) <= depth.index(level)
    ]
    matching: dict[str, str] = {}
    for name in query.keys():
        if name.lower() in _QIDO_CONTROL:
            continue
        values = [v for v in query.getlist(name) if v != ""]
        if not values:
            continue
        keyword = _keyword_of(name)
        value = "\\".join(values)
        attr = ATTRIBUTES.get(keyword)
        if attr is not None and attr.kind == "uid":
            value = value.replace(",", "\\")  # PS3.18 8.3.4.1: a UID list may be comma-separated
        matching[keyword] = value
    if study_uid is not None:
        matching["StudyInstanceUID"] = check_uid(study_uid, "StudyInstanceUID")
    if series_uid is not None:
        matching["SeriesInstanceUID"] = check_uid(series_uid, "SeriesInstanceUID")
    fuzzy_text = (query.get("fuzzymatching") or "false").lower()
    if fuzzy_text not in ("true", "false"):
        raise DicomwebError(400, "fuzzymatching is true or false")
    limit = _qido_int(query, "limit")
    offset = _qido_int(query, "offset", maximum=settings.PACS_QUERY_MAX_OFFSET) or 0
    wanted, capped = qido_page_size(limit)

    identifier = Dataset()
    with warnings.catch_warnings():
        # Ranges and wildcards are not valid DA/TM/... values; the query engine checks each key itself.
        warnings.simplefilter("ignore", UserWarning)
        for keyword in dict.fromkeys([*returned, *matching]):
            tag = tag_for_keyword(keyword)
            if tag is None:
                continue
            try:
                identifier.add_new(tag, dictionary_VR(tag), matching.get(keyword))
            except Exception as exc:
                raise DicomwebError(400, f"{keyword}: {exc}") from None
    patients: list[int] = []
    try:
        found = query_json(
            identifier,
            level=level,
            fuzzy=fuzzy_text == "true",
            limit=wanted + 1 if capped else wanted,
            offset=offset,
            facility=scope.facility,
            principal=scope.principal,
            patients=patients,
        )
    except QueryError as exc:
        raise DicomwebError(400, str(exc)) from None
    truncated = capped and len(found) > wanted
    items = []
    for data in found[:wanted]:
        url = _qido_retrieve_url(scope, data, level)
        if url:
            data["00081190"] = {"vr": "UR", "Value": [url]}
        items.append(dict(sorted(data.items())))
    return QidoResult(items=items, truncated=truncated, level=level, patients=patients[:wanted])


def _qido_retrieve_url(scope: Scope, data: dict[str, Any], level: str) -> str:
    def uid(tag: str) -> str:
        return str((data.get(tag, {}).get("Value") or [""])[0])

    study = uid("0020000D")
    if not study:
        return ""
    if level == "STUDY":
        return scope.study_url(study)
    series = uid("0020000E")
    if level == "SERIES":
        return scope.series_url(study, series)
    return scope.instance_url(study, series, uid("00080018"))
