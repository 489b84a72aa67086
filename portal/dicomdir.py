"""The DICOMDIR's directory records (PS3.3 Annex F.5), by the archive's own rules where pydicom's differ.

pydicom's recorders (:data:`pydicom.fileset.DIRECTORY_RECORDERS`) make most records
as F.5 lists them; three copy too much:

* SR DOCUMENT (F.5.23) and KEY OBJECT DOC (F.5.24): pydicom copies the root's whole
  Content Sequence (the document's content tree); the record's Content Sequence
  holds "all, and only" the root's HAS CONCEPT MOD items, each with its
  Relationship Type and the Document Content Macro (Table C.17-5), without
  their own children. SR DOCUMENT's Verification DateTime (1C, required when
  VERIFIED) is "the most recent of the Verifying Observer Sequence", which
  pydicom looks for at the top level, where an SR never has it.
* PRESENTATION (F.5.19): the Referenced Series Sequence and the Blending Sequence
  are copied whole; a record keeps the series and the images they reference
  (Image SOP Instance Reference Macro, Table 10-3).

Every leaf record carries the instance's Specific Character Set when it has one
(F.3.2.2, 1C in every F.5 table: a record's text is in its character set).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

logger = logging.getLogger(__name__)

HAS_CONCEPT_MOD = "HAS CONCEPT MOD"

# PS3.3 Table C.17-5 Document Content Macro, with the value macros it includes
# (Text, DateTime, Date, Time, Person Name, UID, Numeric Measurement, Code, Composite
# and Image references, Spatial and Temporal coordinates, Container, Table).
DOCUMENT_CONTENT_KEYWORDS = frozenset(
    {
        "ValueType",
        "ConceptNameCodeSequence",
        "TextValue",
        "DateTime",
        "Date",
        "Time",
        "PersonName",
        "UID",
        "MeasuredValueSequence",
        "NumericValueQualifierCodeSequence",
        "ConceptCodeSequence",
        "ReferencedSOPSequence",
        "GraphicData",
        "GraphicType",
        "PixelOriginInterpretation",
        "FiducialUID",
        "ReferencedFrameOfReferenceUID",
        "TemporalRangeType",
        "ReferencedSamplePositions",
        "ReferencedTimeOffsets",
        "ReferencedDateTime",
        "ContinuityOfContent",
        "ContentTemplateSequence",
        "NumberOfTableRows",
        "NumberOfTableColumns",
        "TableRowDefinitionSequence",
        "TableColumnDefinitionSequence",
        "CellValuesSequence",
    }
)
# Table 10-3 Image SOP Instance Reference Macro.
_IMAGE_REFERENCE_KEYWORDS = (
    "ReferencedSOPClassUID",
    "ReferencedSOPInstanceUID",
    "ReferencedFrameNumber",
    "ReferencedSegmentNumber",
)


def _require(ds: Dataset, keywords: Iterable[str]) -> None:
    for keyword in keywords:
        if keyword not in ds or ds[keyword].VM == 0:
            raise ValueError(f"the instance's {keyword} is missing or empty")


def concept_modifiers(ds: Dataset) -> list[Dataset]:
    """The root's HAS CONCEPT MOD items as F.5.23/F.5.24 allow them in a record."""
    items = []
    for item in ds.get("ContentSequence") or []:
        if str(item.get("RelationshipType", "")).strip() != HAS_CONCEPT_MOD:
            continue
        kept = Dataset()
        kept.RelationshipType = HAS_CONCEPT_MOD
        for element in item:
            if element.keyword in DOCUMENT_CONTENT_KEYWORDS:
                kept.add(copy.deepcopy(element))
        items.append(kept)
    return items


def _document_title(ds: Dataset) -> Sequence:
    # "Only a single Item shall be included in this Sequence."
    return Sequence([copy.deepcopy(ds.ConceptNameCodeSequence[0])])


def _latest_verification(ds: Dataset) -> str | None:
    times = [
        str(i.VerificationDateTime) for i in ds.get("VerifyingObserverSequence") or [] if i.get("VerificationDateTime")
    ]
    if not times and ds.get("VerificationDateTime"):
        times = [str(ds.VerificationDateTime)]
    # DT values of one document compare as text once cut to the same precision.
    return max(times, key=lambda t: t[:14].ljust(14, "0")) if times else None


def sr_document_record(ds: Dataset) -> Dataset:
    """An SR DOCUMENT record (PS3.3 F.5.23) from the document's header."""
    _require(
        ds,
        [
            "InstanceNumber",
            "CompletionFlag",
            "VerificationFlag",
            "ContentDate",
            "ContentTime",
            "ConceptNameCodeSequence",
        ],
    )
    record = Dataset()
    record.InstanceNumber = ds.InstanceNumber
    record.CompletionFlag = ds.CompletionFlag
    record.VerificationFlag = ds.VerificationFlag
    record.ContentDate = ds.ContentDate
    record.ContentTime = ds.ContentTime
    if str(ds.VerificationFlag).strip() == "VERIFIED":
        latest = _latest_verification(ds)
        if latest is None:
            raise ValueError("a VERIFIED document without a Verification DateTime")
        record.VerificationDateTime = latest
    record.ConceptNameCodeSequence = _document_title(ds)
    modifiers = concept_modifiers(ds)
    if modifiers:
        record.ContentSequence = modifiers
    return record


def key_object_record(ds: Dataset) -> Dataset:
    """A KEY OBJECT DOC record (PS3.3 F.5.24)."""
    _require(ds, ["InstanceNumber", "ContentDate", "ContentTime", "ConceptNameCodeSequence"])
    record = Dataset()
    record.ContentDate = ds.ContentDate
    record.ContentTime = ds.ContentTime
    record.InstanceNumber = ds.InstanceNumber
    record.ConceptNameCodeSequence = _document_title(ds)
    modifiers = concept_modifiers(ds)
    if modifiers:
        record.ContentSequence = modifiers
    return record


def _image_references(items: Iterable[Dataset]) -> Sequence:
    kept = []
    for item in items:
        reference = Dataset()
        for keyword in _IMAGE_REFERENCE_KEYWORDS:
            if keyword in item:
                reference.add(copy.deepcopy(item[keyword]))
        kept.append(reference)
    return Sequence(kept)


def _series_references(items: Iterable[Dataset]) -> Sequence:
    kept = []
    for item in items:
        series = Dataset()
        series.SeriesInstanceUID = item.SeriesInstanceUID
        series.ReferencedImageSequence = _image_references(item.get("ReferencedImageSequence") or [])
        kept.append(series)
    return Sequence(kept)


def presentation_record(ds: Dataset) -> Dataset:
    """A PRESENTATION record (PS3.3 F.5.19): pydicom's, its references cut to what F.5.19 lists."""
    from pydicom.fileset import DIRECTORY_RECORDERS

    record = DIRECTORY_RECORDERS["PRESENTATION"](ds)
    if "ReferencedSeriesSequence" in record:
        record.ReferencedSeriesSequence = _series_references(ds.ReferencedSeriesSequence)
    if "BlendingSequence" in record:
        blending = []
        for item in ds.BlendingSequence:
            kept = Dataset()
            kept.StudyInstanceUID = item.StudyInstanceUID
            kept.ReferencedSeriesSequence = _series_references(item.get("ReferencedSeriesSequence") or [])
            blending.append(kept)
        record.BlendingSequence = Sequence(blending)
    return record


_OWN_RECORDERS = {
    "SR DOCUMENT": sr_document_record,
    "KEY OBJECT DOC": key_object_record,
    "PRESENTATION": presentation_record,
}


def directory_record(kind: str, header: Dataset) -> Dataset:
    """The keys of a ``kind`` record (PS3.3 F.5) for the instance whose ``header`` is given.

    Raises ValueError, KeyError or AttributeError (as pydicom's recorders) when the
    instance lacks a Type 1 key of its record.
    """
    from pydicom.fileset import DIRECTORY_RECORDERS

    recorder = _OWN_RECORDERS.get(kind) or DIRECTORY_RECORDERS[kind]
    record = recorder(header)
    if "SpecificCharacterSet" in header:
        record.SpecificCharacterSet = header.SpecificCharacterSet
    return record
