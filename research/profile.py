"""The PS3.15 Basic Application Level Confidentiality Profile, applied to one dataset.

Why dicom-anonymizer: of the kept libraries it is the one that carries the
standard's table itself, as data, per edition (2023, 2024b, 2026c), with its
action codes (D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*). ``dicognito``
anonymises by its own choice of elements (names, IDs, dates, UIDs, addresses)
and does not encode Table E.1-1; ``deid`` applies recipes (its default
``deid.dicom`` is its authors' list, not the table's actions) and brings
matplotlib with it. None of the three encodes the options' columns.

No ORM here: :func:`dataset_deidentify` takes a pydicom dataset and the
project's choices (:class:`Choices`) and changes the dataset in place.

Which attribute gets which action (D, Z, X, U and their combinations) is
PS3.15 Table E.1-1 as the ``dicom-anonymizer`` library (KitwareMedical)
encodes it, edition 2026c (:data:`TABLE_EDITION`); its action functions do the
D/Z/X work. The library applies its table to the top level only and replaces
UIDs with random ones in a process-wide dictionary, so this module walks the
whole dataset itself (every sequence item, at any depth) and replaces UIDs
with a keyed hash of the project's secret (:func:`uid_for`): the same
original UID gives the same new UID in every export of one project, so
references between instances (and between two exports) hold.

The options (PS3.15 E.3) change the action of some attributes. No library
encodes their columns of Table E.1-1, so the few attributes each option
keeps are named here (:data:`DEVICE_IDENTITY`, :data:`PATIENT_CHARACTERISTICS`,
:data:`DESCRIPTORS`); for *Retain Longitudinal Temporal Information with
Modified Dates* every date of the table (VR DA or DT) is shifted by the
patient's offset instead, which is what the option's column says ("C") for
all of them. Private attributes are removed (Retain Safe Private is not
offered: it needs the safe private attributes of each vendor, PS3.15 Table E.3.10-1).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dicomanonymizer import simpledicomanonymizer as library
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

TABLE_EDITION = "dicomfields_2026c"

# The library's categories (PS3.15 Table E.1-1's action codes) and what each does.
ACTIONS: dict[str, Callable[[Dataset, Any], None]] = {
    "D_TAGS": library.replace,
    "Z_TAGS": library.empty,
    "X_TAGS": library.delete,
    "U_TAGS": library.replace_UID,  # never called: UIDs go through uid_for
    "Z_D_TAGS": library.empty_or_replace,
    "X_Z_TAGS": library.delete_or_empty,
    "X_D_TAGS": library.delete_or_replace,
    "X_Z_D_TAGS": library.delete_or_empty_or_replace,
    "X_Z_U_STAR_TAGS": library.delete_or_empty_or_replace_UID,
}
CODES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def _table() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    database = dicom_anonymization_database_selector(TABLE_EDITION)
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category in ACTIONS:
        for entry in database[category]:
            if len(entry) == 2:
                exact[int(Tag(entry[0], entry[1]))] = category
            else:
                group, element, group_mask, element_mask = entry
                masked.append((group, element, group_mask, element_mask, category))
    return exact, masked


TABLE, TABLE_MASKED = _table()


def table_category(tag: BaseTag | int) -> str | None:
    """The library's category of ``tag`` in Table E.1-1 (``"X_TAGS"``...), or None when it is not listed."""
    tag = Tag(tag)
    found = TABLE.get(int(tag))
    if found is not None:
        return found
    for group, element, group_mask, element_mask, category in TABLE_MASKED:
        if tag.group & group_mask == group & group_mask and tag.element & element_mask == element & element_mask:
            return category
    return None


def table_code(tag: BaseTag | int) -> str | None:
    """The action code of ``tag`` in Table E.1-1 (``"X"``, ``"Z/D"``...), None when not listed."""
    category = table_category(tag)
    return CODES[category] if category else None


# The attributes an option keeps ("K") or cleans ("C") in its column of Table E.1-1.
DEVICE_IDENTITY = frozenset(
    {
        "StationName",
        "DeviceSerialNumber",
        "DeviceUID",
        "DeviceID",
        "DeviceLabel",
        "DeviceDescription",
        "DetectorID",
        "GantryID",
        "PlateID",
        "CassetteID",
        "GeneratorID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "ScheduledStationAETitle",
        "ScheduledStationName",
        "SourceSerialNumber",
        "ManufacturerDeviceIdentifier",
        "ManufacturerDeviceClassUID",
        "UDISequence",
        "UniqueDeviceIdentifier",
    }
)
PATIENT_CHARACTERISTICS = frozenset(
    {
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "EthnicGroup",
        "SmokingStatus",
        "PregnancyStatus",
        "PatientSexNeutered",
        "SexParametersForClinicalUseCategorySequence",
    }
)
DESCRIPTORS = frozenset(
    {
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "ImageComments",
        "AcquisitionComments",
        "DerivationDescription",
        "RequestedProcedureDescription",
        "PerformedProcedureStepDescription",
        "ScheduledProcedureStepDescription",
        "ContrastBolusAgent",
        "AdditionalPatientHistory",
        "AdmittingDiagnosesDescription",
        "ReasonForStudy",
        "RequestedContrastAgent",
        "VisitComments",
    }
)
_DATE_VRS = ("DA", "DT")
# The option's column leaves the birth date and time out: they are removed as the table says.
_BIRTH = frozenset({"PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar"})

# PS3.16 CID 7050 "De-identification Method": one code per option applied.
METHOD_BASIC = ("113100", "Basic Application Confidentiality Profile")
METHOD_CODES = {
    "retain_dates_modified": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
}


@dataclass(frozen=True)
class Choices:
    """What one export project chose, and what it knows of one patient."""

    secret: bytes
    pseudonym: str
    date_shift_days: int = 0
    retain_dates_modified: bool = False
    retain_device_identity: bool = False
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = False
    clean_pixel_data: bool = False  # this instance's pixels were cleaned (pixels_clean)
    # What identifies the patient, removed from descriptors the Clean Descriptors option keeps.
    identifying_words: tuple[str, ...] = ()

    def applied(self) -> list[str]:
        return [name for name in METHOD_CODES if getattr(self, name)]


def uid_for(uid: str, *, secret: bytes) -> str:
    """The project's UID for ``uid``: ``2.25.`` and a keyed hash (PS3.5 B.2: a UUID-derived UID).

    Deterministic per project (same secret, same answer) so that every reference
    between instances, and between two exports of one project, still holds;
    without the secret the original cannot be recovered nor confirmed.
    """
    digest = hmac.new(secret, uid.strip().encode(), hashlib.sha256).digest()[:16]
    value = int.from_bytes(digest, "big") >> 6  # 122 bits, as a version-4 UUID has
    return f"2.25.{value}"


def _date_shift(value: str, vr: str, days: int) -> str:
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return ""
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    shifted = (day + dt.timedelta(days=days)).strftime("%Y%m%d")
    return shifted + (value[8:] if vr == "DT" else "")


def _shift_element(elem: DataElement, days: int) -> None:
    values = elem.value if elem.VM > 1 else [elem.value]
    shifted = [_date_shift(str(v), elem.VR, days) for v in values if v not in (None, "")]
    elem.value = shifted if len(shifted) > 1 else (shifted[0] if shifted else "")


def _clean_text(text: str, words: Iterable[str]) -> str:
    """``text`` without the patient's identifying words and without anything shaped like a date or a number
    long enough to be an identifier (PS3.15 E.3.5: "cleaned" of identifying information)."""
    for word in sorted({w for w in words if len(w) >= 2}, key=len, reverse=True):
        text = re.sub(re.escape(word), "", text, flags=re.IGNORECASE)
    text = re.sub(r"\d[\d./-]{4,}\d", "", text)
    return " ".join(text.split())


def _keyword(tag: BaseTag) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag)


def _kept_by_option(keyword: str, choices: Choices) -> bool:
    return (choices.retain_device_identity and keyword in DEVICE_IDENTITY) or (
        choices.retain_patient_characteristics and keyword in PATIENT_CHARACTERISTICS
    )


def _uids_replace(elem: DataElement, secret: bytes) -> None:
    if elem.value in (None, ""):
        return
    if elem.VM > 1:
        elem.value = [uid_for(str(v), secret=secret) for v in elem.value]
    else:
        elem.value = uid_for(str(elem.value), secret=secret)


def _walk(ds: Dataset, choices: Choices) -> None:
    for tag in list(ds.keys()):
        elem = ds[tag]  # __getitem__ decodes a raw element, so its VR is known
        if tag.is_private:
            del ds[tag]
            continue
        category = table_category(tag)
        keyword = _keyword(tag)
        if category is None or _kept_by_option(keyword, choices):
            pass
        elif choices.clean_descriptors and keyword in DESCRIPTORS and elem.VR != "SQ":
            if elem.value not in (None, ""):
                elem.value = _clean_text(str(elem.value), choices.identifying_words)
        elif choices.retain_dates_modified and elem.VR in _DATE_VRS and keyword not in _BIRTH:
            _shift_element(elem, choices.date_shift_days)
        elif choices.retain_dates_modified and elem.VR == "TM" and keyword not in _BIRTH:
            pass  # whole days are shifted: the time of day is kept, so intervals within a day hold
        elif elem.VR == "UI":
            _uids_replace(elem, choices.secret)
        elif category == "X_Z_U_STAR_TAGS" and elem.VR == "SQ":
            pass  # the references are kept; the UIDs inside are replaced by the walk below
        else:
            try:
                ACTIONS[category](ds, tag)
            except NotImplementedError:
                del ds[tag]  # a VR the library has no dummy for (AT, OF, SV...): removing it is always safe
        if tag in ds and ds[tag].VR == "SQ" and ds[tag].value:
            for item in ds[tag].value:
                _walk(item, choices)


def dataset_deidentify(ds: Dataset, choices: Choices) -> Dataset:
    """De-identify ``ds`` in place with the Basic Profile and ``choices``' options; return it.

    The patient gets the project's pseudonym as PatientName and PatientID (the
    D action allows any dummy value), and the dataset says what was done
    (PatientIdentityRemoved, DeidentificationMethod and its code sequence,
    PS3.15 E.1.1 items 5-6).
    """
    _walk(ds, choices)
    ds.PatientName = choices.pseudonym
    ds.PatientID = choices.pseudonym
    ds.PatientIdentityRemoved = "YES"
    if "LongitudinalTemporalInformationModified" in ds or choices.retain_dates_modified:
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if choices.retain_dates_modified else "REMOVED"
    applied = [METHOD_BASIC] + [METHOD_CODES[name] for name in choices.applied()]
    if choices.clean_pixel_data:
        ds.BurnedInAnnotation = "NO"
    ds.DeidentificationMethod = "; ".join(meaning for _code, meaning in applied)[:64]
    codes = []
    for value, meaning in applied:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        new_meta = FileMetaDataset()
        new_meta.TransferSyntaxUID = meta.TransferSyntaxUID
        new_meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
        new_meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
        ds.file_meta = new_meta
    return ds


# --- burned-in annotation (PS3.15 E.1.1 item 10, E.3.1) -------------------------

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame classes 7.1 - 7.4
_ENCAPSULATED = "1.2.840.10008.5.1.4.1.1.104."  # PDF, CDA, STL, OBJ, MTL
_VIDEO = ("1.2.840.10008.5.1.4.1.1.77.1.1.1", "1.2.840.10008.5.1.4.1.1.77.1.2.1", "1.2.840.10008.5.1.4.1.1.77.1.4.1")


def burned_in_reason(ds: Dataset) -> str | None:
    """Why the pixels (or the document) of ``ds`` may show identifying text, or None.

    Burned In Annotation YES says so; NO is believed. Where it is not stated, the
    modality or the SOP class decides where text is usual: ultrasound, secondary
    captures, XA/RF screen captures (derived or secondary images), video, and
    encapsulated documents (a PDF is its own text). The reasons are codes the
    export's summary translates.
    """
    stated = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if stated == "YES":
        return "stated"
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class.startswith(_ENCAPSULATED):
        return "document"
    if stated == "NO":
        return None
    modality = str(ds.get("Modality", "")).upper()
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        return "secondary_capture"
    if modality == "US" or sop_class.startswith("1.2.840.10008.5.1.4.1.1.6."):
        return "ultrasound"
    if sop_class in _VIDEO:
        return "video"
    if modality in ("XA", "RF") and ({"SECONDARY", "DERIVED", "SCREEN SAVE"} & set(image_type)):
        return "screen_capture"
    return None


# --- Clean Pixel Data (PS3.15 E.3.1): blanking the regions a project configured -----


@dataclass(frozen=True)
class PixelRegion:
    """Where a kind of image carries its text: the boxes (x, y, width, height) to blank in every
    frame of the images of ``modality`` with exactly ``columns`` x ``rows`` pixels (a vendor's
    screen layout is fixed per size, as CTP's pixel anonymizer scripts assume)."""

    modality: str
    columns: int
    rows: int
    boxes: tuple[tuple[int, int, int, int], ...]

    def matches(self, ds: Dataset) -> bool:
        return (
            str(ds.get("Modality", "")).upper() == self.modality.upper()
            and int(ds.get("Rows", 0)) == self.rows
            and int(ds.get("Columns", 0)) == self.columns
        )


CLEANABLE = frozenset({"stated", "secondary_capture", "ultrasound", "screen_capture"})


class PixelCleanError(Exception):
    """The pixels cannot be cleaned here (no decoder, a layout pydicom cannot rewrite)."""


def pixels_clean(ds: Dataset, region: PixelRegion) -> None:
    """Blank ``region``'s boxes in every frame of ``ds`` and say so (Burned In Annotation NO).

    Compressed pixel data is decoded first (pydicom's decoders; the result is
    written uncompressed, colour as RGB): blanking compressed data in place is
    not possible. Big-endian data is refused rather than rewritten.

    Raises
    ------
    PixelCleanError
        The pixel data cannot be decoded or written back.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_little_endian:
        raise PixelCleanError(f"transfer syntax {syntax} not supported for cleaning")
    try:
        if syntax.is_compressed:
            ds.decompress()
        pixels = ds.pixel_array.copy()
    except Exception as exc:  # pydicom raises several kinds for a missing or failing decoder
        raise PixelCleanError(f"pixel data cannot be decoded: {exc}") from exc
    blank = pixels.max() if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1" else 0
    frames = int(ds.get("NumberOfFrames", 1) or 1) > 1
    for x, y, width, height in region.boxes:
        if frames:
            pixels[:, y : y + height, x : x + width] = blank
        else:
            pixels[y : y + height, x : x + width] = blank
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds.BurnedInAnnotation = "NO"
