"""Finding archived objects: the one matching engine behind C-FIND, C-MOVE/C-GET and QIDO-RS.

A query is a DICOM identifier (C-FIND semantics, PS3.4 C.2.2.2): each
non-empty element is a matching key, each empty one a return key. The keys
the index knows are listed in ``ATTRIBUTES`` (keyword, the entity that owns
it, the model field, how it matches); each is matched in the database, never
in Python, so a query costs the same whatever the archive's size.

Matching follows PS3.4 C.2.2.2:

* single value: exact; Person Name (PN) keys ignore case and accents, as
  C.2.2.2.1 allows (the archive's documented behaviour, ``docs/matching.md``):
  ``nicolò^pàola``, ``NICOLO^PAOLA`` and ``Nicolò^Pàola`` find ``NICOLÒ^PÀOLA``.
  The stored name's search key (``archive.person_names``: NFKD, accents dropped,
  case-folded, ł/ø/æ/ß/đ/ı... by a table, ``^`` and ``=`` kept), written in an
  indexed column beside the name, is compared with the value's key, the same on
  SQLite and PostgreSQL; ``?`` is one character of the key (``ß`` is two);
* ``*`` and ``?`` wildcards in text values (AE, CS, LO, PN, SH, ...), matched by
  the database's LIKE (GLOB for case-sensitive keys on SQLite) with every other
  character literal: :class:`DicomMatch`. Repeated ``*`` are one; a value longer
  than its VR allows (PS3.5 6.2) or with more than PACS_QUERY_MAX_WILDCARDS
  wildcards is refused (:class:`QueryError`): a wildcard costs at most one
  pass over the rows it filters, never a backtracking regular expression's;
* ranges of dates and times: ``A-B``, ``A-`` and ``-B``;
* lists: several UIDs (``\\``-separated), or several values of a text key (any of them);
* universal matching: an empty value or ``*`` matches everything;
* ModalitiesInStudy matches when any of the study's modalities matches (with
  wildcards, one of its series' modalities).

C-FIND answers are written in the query's Specific Character Set when every
answer fits in it (:data:`ANSWER_CHARACTER_SETS`), otherwise in UTF-8.

Keys of a level below the query's (e.g. Modality in a STUDY query) match
when some series or instance below matches, as QIDO-RS allows; they return
no value at that level. Keys the index does not hold are returned empty.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.db.models import CharField, Count, Exists, Lookup, Max, OuterRef, Q, QuerySet, Sum, TextField
from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from kernel.errors import Invalid
from kernel.querycache import CompiledQuery, Slot, compiled

from . import access
from .dicom import raw_element
from .models import Facility, Instance, Series, Study
from .person_names import pn_search_key, text_search_key

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
_DEPTH = {PATIENT: 0, STUDY: 1, SERIES: 2, IMAGE: 3}
# The levels each information model has (PS3.4 C.6).
ROOT_LEVELS = {"patient": LEVELS, "study": LEVELS[1:]}

# Unique keys of each level (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE_KEYS = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}


class QueryError(Invalid):
    """A query or retrieve identifier the archive cannot run; the message says why.

    ``keyword``: the offending attribute, when there is one.
    """

    code = "identifier"

    def __init__(self, message: str, *, keyword: str = "") -> None:
        super().__init__(message)
        self.keyword = keyword


# How a key matches: text (wildcards, lists), pn (text, case-insensitive),
# uid (lists), date and time (ranges), int (single value), multi (a
# backslash-joined value in the index, any element matching), count (derived:
# returned, never matched).
TEXT, PN, UID, DATE, TIME, INT, MULTI, COUNT = "text", "pn", "uid", "date", "time", "int", "multi", "count"


@dataclass(frozen=True)
class Attr:
    keyword: str
    level: str  # the entity that owns it
    field: str  # on that entity's model (patient attributes live on Study)
    kind: str
    # PN: the field holding the name's search key (archive.person_names), beside
    # ``field`` on the same model; PN keys match it, ``field`` is what is returned.
    search: str = ""


ATTRIBUTES = {
    a.keyword: a
    for a in [
        Attr("PatientName", PATIENT, "patient_name", PN, search="patient_name_search"),
        Attr("PatientID", PATIENT, "dicom_patient_id", TEXT),
        Attr("IssuerOfPatientID", PATIENT, "issuer_of_patient_id", TEXT),
        Attr("PatientBirthDate", PATIENT, "patient_birth_date", DATE),
        Attr("PatientSex", PATIENT, "patient_sex", TEXT),
        Attr("NumberOfPatientRelatedStudies", PATIENT, "n_studies", COUNT),
        Attr("NumberOfPatientRelatedSeries", PATIENT, "n_series", COUNT),
        Attr("NumberOfPatientRelatedInstances", PATIENT, "n_instances", COUNT),
        Attr("StudyInstanceUID", STUDY, "study_instance_uid", UID),
        Attr("StudyDate", STUDY, "study_date", DATE),
        Attr("StudyTime", STUDY, "study_time", TIME),
        Attr("AccessionNumber", STUDY, "accession_number", TEXT),
        Attr("StudyID", STUDY, "study_id", TEXT),
        Attr("StudyDescription", STUDY, "study_description", TEXT),
        Attr("ReferringPhysicianName", STUDY, "referring_physician_name", PN, search="referring_physician_name_search"),
        Attr("ModalitiesInStudy", STUDY, "modalities_in_study", MULTI),
        Attr("NumberOfStudyRelatedSeries", STUDY, "number_of_series", COUNT),
        Attr("NumberOfStudyRelatedInstances", STUDY, "number_of_instances", COUNT),
        Attr("SeriesInstanceUID", SERIES, "series_instance_uid", UID),
        Attr("Modality", SERIES, "modality", TEXT),
        Attr("SeriesNumber", SERIES, "series_number", INT),
        Attr("SeriesDescription", SERIES, "series_description", TEXT),
        Attr("BodyPartExamined", SERIES, "body_part_examined", TEXT),
        Attr("NumberOfSeriesRelatedInstances", SERIES, "number_of_instances", COUNT),
        Attr("SOPInstanceUID", IMAGE, "sop_instance_uid", UID),
        Attr("SOPClassUID", IMAGE, "sop_class_uid", UID),
        Attr("InstanceNumber", IMAGE, "instance_number", INT),
        Attr("Rows", IMAGE, "rows", INT),
        Attr("Columns", IMAGE, "columns", INT),
        Attr("NumberOfFrames", IMAGE, "number_of_frames", INT),
    ]
}

# Path from each level's model to the model owning each entity's fields.
_PATHS = {
    PATIENT: {PATIENT: ""},
    STUDY: {PATIENT: "", STUDY: ""},
    SERIES: {PATIENT: "study__", STUDY: "study__", SERIES: ""},
    IMAGE: {PATIENT: "series__study__", STUDY: "series__study__", SERIES: "series__", IMAGE: ""},
}
# Answered without the index: every object the archive lists is on line.
_CONSTANTS = {"InstanceAvailability": "ONLINE"}
# Keys that describe the query itself, not an entity: never matched.
_IGNORED = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"}

# PS3.5 6.2: values of these VRs may carry * and ? wildcards.
_WILDCARD_KINDS = {TEXT, PN, MULTI}


# --- matching ------------------------------------------------------------------


def _values(raw: Any) -> list[str]:
    """The element's value(s) as strings; a backslash separates several."""
    if raw is None:
        return []
    if isinstance(raw, (list, tuple, MultiValue)):
        items = [str(v) for v in raw]
    else:
        items = str(raw).split("\\")
    return [v.strip() for v in items]


# --- wildcard matching: LIKE (GLOB) with every other character literal ------------------
#
# A wildcard value is matched by the database's LIKE (on SQLite, case-sensitive
# values by GLOB), never by a regular expression: a regex engine that backtracks
# took seconds for a dozen stars and never ended for twenty (issue 15). The value
# travels as a bound parameter, translated to the pattern syntax with every
# character but * and ? escaped, so "_", "%", "\\" and "[" match themselves.


def _like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern with ``\\`` as the escape character."""
    out = []
    for c in value:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def _glob_pattern(value: str) -> str:
    """A DICOM wildcard value as an SQLite GLOB pattern (``*`` and ``?`` are GLOB's own;
    ``[`` opens a character class there, so a literal one is written ``[[]``)."""
    return value.replace("[", "[[]")


def _sqlite_upper(connection: Any) -> str:
    """Register on this connection and name a Unicode-aware UPPER for SQLite, whose own
    UPPER and LIKE fold ASCII letters only. (Registering again is a few microseconds; the
    connection object keeps no attribute nor weak reference to remember it by.)"""
    connection.ensure_connection()
    connection.connection.create_function("pacs_upper", 1, _upper_or_none, deterministic=True)
    return "pacs_upper"


def _upper_or_none(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class DicomMatch(Lookup):
    """``field__dicom_match=value``: PS3.4 C.2.2.2.4 wildcard matching, case-sensitive.

    ``*`` matches any run of characters (none too), ``?`` exactly one, every other
    character itself. The value is the DICOM one; it is translated to the
    database's pattern syntax and sent as a parameter. A leading literal stem
    (``ROSS*``) keeps the index usable: on PostgreSQL by the ``varchar_pattern_ops``
    index Django adds to an indexed CharField, on SQLite by GLOB's own prefix rule.
    On PostgreSQL the patient name's search key also has a trigram index (migration
    0027, ``gin_trgm_ops``), which answers this very expression, ``(col)::text LIKE
    pattern ESCAPE '\\'``, with wildcards anywhere (``%oss%^ma%``): keep its form.
    """

    lookup_name = "dicom_match"
    prepare_rhs = False
    insensitive = False

    def get_db_prep_lookup(self, value: Any, connection: Any) -> tuple[str, list[str | int]]:
        value = str(value)
        if connection.vendor == "sqlite" and not self.insensitive:
            return "%s", [_glob_pattern(value)]
        return "%s", [_like_pattern(value)]

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        params = [*lhs_params, *rhs_params]
        escape = "ESCAPE '\\'"
        if connection.vendor == "sqlite":
            if not self.insensitive:
                return f"{lhs} GLOB {rhs}", params
            if not all(str(p).isascii() for p in rhs_params):
                # SQLite's LIKE ignores the case of ASCII letters only; a non-ASCII
                # pattern (ÒRSO) is compared in upper case on both sides, as the
                # regular expression did before (issue 19 brings Unicode matching).
                upper = _sqlite_upper(connection)
                return f"{upper}({lhs}) LIKE {upper}({rhs}) {escape}", params
            return f"{lhs} LIKE {rhs} {escape}", params
        if self.insensitive:
            # The expression of the name indexes (migration 0004): UPPER(col::text),
            # which answers a prefix pattern without a scan.
            return f"UPPER(({lhs})::text) LIKE UPPER({rhs}) {escape}", params
        return f"({lhs})::text LIKE {rhs} {escape}", params


class DicomIMatch(DicomMatch):
    """``field__dicom_imatch=value``: :class:`DicomMatch` ignoring case (person names,
    PS3.4 C.2.2.2.1 allows it): SQLite folds ASCII letters, PostgreSQL every letter."""

    lookup_name = "dicom_imatch"
    insensitive = True


CharField.register_lookup(DicomMatch)
CharField.register_lookup(DicomIMatch)
TextField.register_lookup(DicomMatch)
TextField.register_lookup(DicomIMatch)

# PS3.5 6.2: the longest value of each VR a wildcard key can have (PN: per
# component group, the groups separated by "=").
_VR_MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DS": 16, "IS": 12, "LO": 64, "PN": 64, "SH": 16, "ST": 1024}


@functools.lru_cache(maxsize=256)
def _vr_of(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return dictionary_VR(tag) if tag is not None else ""


def _wildcard_values(attr: Attr, values: list[str]) -> list[str]:
    """The values of a wildcard key, repeated ``*`` collapsed into one, after checking
    each value's length against its VR's and the wildcards against
    ``PACS_QUERY_MAX_WILDCARDS``. Raises :class:`QueryError`."""
    kw = attr.keyword
    vr = _vr_of(kw)
    longest = _VR_MAX_LENGTH.get(vr)
    if longest is not None:
        for value in values:
            parts = value.split("=") if vr == "PN" else [value]
            if any(len(part) > longest for part in parts):
                per = " per component group" if vr == "PN" else ""
                raise QueryError(f"{kw}: more than {longest} characters{per} ({vr})", keyword=kw)
    collapsed = [_STARS.sub("*", value) for value in values]
    wildcards = sum(value.count("*") + value.count("?") for value in collapsed)
    allowed = int(settings.PACS_QUERY_MAX_WILDCARDS)
    if wildcards > allowed:
        raise QueryError(f"{kw}: {wildcards} wildcards, at most {allowed}", keyword=kw)
    return collapsed


_STARS = re.compile(r"\*{2,}")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _pn_q(field: str, value: str, *, fuzzy: bool) -> Q:
    """A PN key on the name's search-key ``field``: the value folded as the stored
    names were (archive.person_names), then compared exactly, case-sensitively: the
    same on every database, an index for an exact value or a literal stem."""
    if fuzzy:
        # Fuzzy (QIDO-RS fuzzymatching=true): any part of the name.
        core = text_search_key(value.replace("*", "").replace("?", ""))
        return Q(**{f"{field}__contains": core})
    key = pn_search_key(value)
    if not _has_wildcard(key):
        return Q(**{field: key})
    return Q(**{f"{field}__dicom_match": key})


def _text_q(field: str, value: str, *, insensitive: bool, fuzzy: bool) -> Q:
    if fuzzy:
        # Fuzzy (QIDO-RS fuzzymatching=true): any part of the value, any case.
        core = value.replace("*", "").replace("?", "")
        return Q(**{f"{field}__icontains": core})
    i = "i" if insensitive else ""
    if not _has_wildcard(value):
        return Q(**{f"{field}__{i}exact": value})
    return Q(**{f"{field}__dicom_{i}match": value})


def _multi_q(field: str, value: str, *, study: str) -> Q:
    """One of the backslash-separated values stored in ``field`` is ``value``.

    A wildcard value is matched against the study's series (``study``: the path to
    the study, "" from the study itself): ModalitiesInStudy is the set of their
    modalities (PS3.4 C.6.2.1.2), and a pattern over the joined text would let
    ``C*R`` match ``CT\\SR``."""
    if _has_wildcard(value):
        ref = study[:-2] if study else "pk"
        return Q(Exists(Series.objects.filter(study=OuterRef(ref), modality__dicom_match=value)))
    return (
        Q(**{field: value})
        | Q(**{f"{field}__startswith": value + "\\"})
        | Q(**{f"{field}__endswith": "\\" + value})
        | Q(**{f"{field}__contains": "\\" + value + "\\"})
    )


def _parse_date(text: str, keyword: str) -> dt.date:
    text = text.strip()
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")  # ACR-NEMA style, still sent by old equipment
    try:
        if len(text) != 8 or not text.isdigit():
            raise ValueError
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise QueryError(f"{keyword}: {text!r} is not a date (YYYYMMDD)", keyword=keyword) from None


_TM_RE = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")


def _parse_time(text: str, keyword: str, *, upper: bool) -> str:
    """A TM value as comparable text; as an upper bound, the last instant it names
    ("12" is up to 12:59:59.999999)."""
    text = text.strip().replace(":", "")
    if not _TM_RE.match(text):
        raise QueryError(f"{keyword}: {text!r} is not a time (HHMMSS.FFFFFF)", keyword=keyword)
    if upper:
        whole, _, fraction = text.partition(".")
        text = whole + "595959"[len(whole) :] + "." + fraction.ljust(6, "9")
    return text


def _range(value: str, keyword: str) -> tuple[str, str]:
    if value.count("-") != 1:
        raise QueryError(f"{keyword}: {value!r} is not a value or a range (A-B, A-, -B)", keyword=keyword)
    low, high = (part.strip() for part in value.split("-"))
    if not low and not high:
        raise QueryError(f"{keyword}: an empty range", keyword=keyword)
    return low, high


def _date_q(field: str, value: str, keyword: str) -> Q:
    if "-" not in value:
        return Q(**{field: _parse_date(value, keyword)})
    low, high = _range(value, keyword)
    q = Q()
    lo = hi = None
    if low:
        lo = _parse_date(low, keyword)
        q &= Q(**{f"{field}__gte": lo})
    if high:
        hi = _parse_date(high, keyword)
        q &= Q(**{f"{field}__lte": hi})
    if lo and hi and lo > hi:
        raise QueryError(f"{keyword}: the range {value!r} ends before it starts", keyword=keyword)
    return q


def _time_q(field: str, value: str, keyword: str) -> Q:
    if "-" not in value:
        low = _parse_time(value, keyword, upper=False)
        return Q(**{f"{field}__gte": low, f"{field}__lte": _parse_time(value, keyword, upper=True)})
    low, high = _range(value, keyword)
    q = Q()
    if low:
        q &= Q(**{f"{field}__gte": _parse_time(low, keyword, upper=False)})
    if high:
        q &= Q(**{f"{field}__lte": _parse_time(high, keyword, upper=True)})
    return q


def attr_q(attr: Attr, field: str, raw: Any, *, fuzzy: bool) -> Q | None:
    """The condition for one matching key on ``field``; None for universal matching.

    Public for the Modality Worklist (``booking.worklist``), which matches its
    keys by the same rules on other models.
    """
    values = _values(raw)
    if attr.kind in _WILDCARD_KINDS:
        values = _wildcard_values(attr, values)
    if not any(values) or values == ["*"] and attr.kind in _WILDCARD_KINDS:
        return None
    kw = attr.keyword
    if attr.kind == COUNT:
        return None  # derived keys are returned, not matched
    if attr.kind == UID:
        from .dicom import is_valid_uid

        bad = [v for v in values if not is_valid_uid(v)]
        if bad:
            raise QueryError(f"{kw}: {bad[0]!r} is not a UID", keyword=kw)
        return Q(**{field: values[0]}) if len(values) == 1 else Q(**{f"{field}__in": values})
    if attr.kind in (DATE, TIME):
        if len(values) != 1:
            raise QueryError(f"{kw}: one date or one range, not a list", keyword=kw)
        make = _date_q if attr.kind == DATE else _time_q
        return make(field, values[0], kw)
    if attr.kind == INT:
        if len(values) != 1 or not re.fullmatch(r"[+-]?\d{1,10}", values[0]):
            raise QueryError(f"{kw}: {raw!r} is not an integer", keyword=kw)
        return Q(**{field: int(values[0])})
    q = Q()
    for value in values:
        if value in ("", "*") and attr.kind in _WILDCARD_KINDS:
            return None  # one universal value in a list matches everything
        if attr.kind == MULTI:
            q |= _multi_q(field, value, study=field[: len(field) - len(attr.field)])
        elif attr.kind == PN and attr.search:
            q |= _pn_q(field[: len(field) - len(attr.field)] + attr.search, value, fuzzy=fuzzy)
        else:
            q |= _text_q(field, value, insensitive=attr.kind == PN, fuzzy=fuzzy)
    return q


# --- the query -----------------------------------------------------------------


@dataclass
class Query:
    level: str
    matching: dict[str, Any]  # keyword -> raw value, non-empty
    returned: list[str]  # keywords, in the identifier's order


def query_parse(identifier: Dataset, *, level: str, root: str = "study") -> Query:
    """Split an identifier into matching and return keys, checking the level."""
    level = (level or "").strip().upper()
    if root not in ROOT_LEVELS:
        raise QueryError(f"unknown information model {root!r}")
    if level not in ROOT_LEVELS[root]:
        allowed = ", ".join(ROOT_LEVELS[root])
        raise QueryError(
            f"QueryRetrieveLevel {level!r} is not one of {allowed} in the {root} root model",
            keyword="QueryRetrieveLevel",
        )
    matching: dict[str, Any] = {}
    returned: list[str] = []
    for tag in identifier.keys():
        try:
            elem = identifier[tag]
        except Exception as exc:  # a raw value pydicom cannot convert (an IS that is not a number)
            keyword = keyword_for_tag(tag) or str(tag)
            raise QueryError(f"{keyword}: cannot read the value ({exc})", keyword=keyword) from exc
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if not keyword or keyword in _IGNORED or elem.tag.is_private or elem.tag.group == 0x0002:
            continue
        returned.append(keyword)
        if elem.VR == "SQ" or keyword not in ATTRIBUTES:
            continue  # not in the index: returned empty, never matched
        if elem.value not in (None, "", b"") and not (isinstance(elem.value, MultiValue) and not len(elem.value)):
            matching[keyword] = elem.value
    return Query(level=level, matching=matching, returned=returned)


@dataclass(frozen=True)
class _Condition:
    """One matching key's condition: on the rows' own level (``below`` None) or on a lower
    level's rows (``below``: that level), which some of them must match."""

    keyword: str
    below: str | None
    field: str  # the path of the key's column
    q: Q


def _conditions(query: Query, *, fuzzy: bool) -> list[_Condition]:
    """The conditions of ``query``'s matching keys, in the identifier's order; raises
    :class:`QueryError` on a bad value (before anything is read)."""
    level = query.level
    paths = _PATHS[level]
    conditions = []
    for keyword, raw in query.matching.items():
        attr = ATTRIBUTES[keyword]
        if level == PATIENT and attr.level != PATIENT:
            raise QueryError(f"{keyword} is not a PATIENT level key", keyword=keyword)
        # A key of a lower level: some series/instance below must match.
        below = None if attr.level in paths else attr.level
        field = attr.field if below else paths[attr.level] + attr.field
        q = attr_q(attr, field, raw, fuzzy=fuzzy)
        if q is not None:
            conditions.append(_Condition(keyword, below, field, q))
    return conditions


def _filtered(
    level: str, conditions: list[_Condition], *, facility: Facility | None, principal: access.Principal
) -> QuerySet:
    base: QuerySet = {
        PATIENT: Study.objects.all(),
        STUDY: Study.objects.all(),
        SERIES: Series.objects.all(),
        IMAGE: Instance.objects.all(),
    }[level]
    paths = _PATHS[level]
    below: dict[str, Q] = {}
    on_rows = Q()
    for condition in conditions:
        if condition.below is None:
            on_rows &= condition.q
        else:
            below[condition.below] = below.get(condition.below, Q()) & condition.q
    qs = base.filter(on_rows)
    if facility is not None:
        qs = qs.filter(**{paths.get(STUDY, "") + "facility": facility})
    # The access policy: a study the principal may not see is not in the archive for it.
    qs = qs.filter(access.visible_q(principal, paths.get(STUDY, "")))
    if below:
        qs = qs.filter(_below_exists(level, below))
    return qs


def _below_exists(level: str, below: dict[str, Q]) -> Q:
    series_q, image_q = below.get(SERIES), below.get(IMAGE)
    if level == SERIES:
        return Q(Exists(Instance.objects.filter(series=OuterRef("pk")).filter(image_q or Q())))
    # STUDY level: a series (with, if asked, an instance) that matches.
    series = Series.objects.filter(study=OuterRef("pk"))
    if series_q is not None:
        series = series.filter(series_q)
    if image_q is not None:
        series = series.filter(Exists(Instance.objects.filter(series=OuterRef("pk")).filter(image_q)))
    return Q(Exists(series))


_ORDER = {
    STUDY: ["-study_date", "-id"],
    SERIES: ["study_id", "series_number", "id"],
    IMAGE: ["series_id", "instance_number", "id"],
}

# The patient's primary key, from each level's rows (query_values(with_patient=True)).
_PATIENT_PK = {
    PATIENT: "p_patient_pk",
    STUDY: "patient_id",
    SERIES: "study__patient_id",
    IMAGE: "series__study__patient_id",
}

# Unique keys of the levels above, returned with each match (PS3.4 C.4.1.2.3.1).
_PARENT_KEYS = {
    PATIENT: ["PatientID"],
    STUDY: ["StudyInstanceUID"],
    SERIES: ["StudyInstanceUID", "SeriesInstanceUID"],
    IMAGE: ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
}


@dataclass(frozen=True)
class _Key:
    """How one returned keyword is written: its tag, VR, and where its value comes from."""

    keyword: str
    tag: int
    vr: str
    column: int | None  # index in the row; None: a constant or empty


def _value(key: _Key, row: tuple[Any, ...]) -> Any:
    """The key's value in ``row``, as DICOM text or number; None when empty."""
    value = row[key.column] if key.column is not None else _CONSTANTS.get(key.keyword)
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return _da(value)
    if key.vr == "CS" and isinstance(value, str) and "\\" in value:
        return value.split("\\")
    return value


@functools.lru_cache(maxsize=65536)
def _da(value: dt.date) -> str:
    # Kept: an answer of a thousand matches writes two thousand dates, most of them
    # seen before (study and birth dates repeat), and a lookup costs a fifth of the
    # formatting (itself a tenth of strftime's cost).
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


@functools.lru_cache(maxsize=65536)
def _da_bytes(value: dt.date) -> bytes:
    return _da(value).encode()


def query_values(
    identifier: Dataset,
    *,
    level: str,
    root: str = "study",
    fuzzy: bool = False,
    limit: int | None = None,
    offset: int = 0,
    facility: Facility | None = None,
    principal: access.Principal,
    with_patient: bool = False,
) -> tuple[list[_Key], Iterator[tuple[Any, ...]]]:
    """Run a C-FIND-style query: the returned keys, and one row per match.

    ``principal`` is who asks: only the studies it may see match (archive.access).
    ``with_patient``: each row ends with one more column, the primary key of
    the match's patient (for the audit log; at the PATIENT level, one of the
    patients the match groups), which no key refers to.

    The keys are the identifier's plus the unique keys of the level and the
    levels above it; :func:`query_run`, :func:`query_json` and
    :func:`query_encoded` write the rows as data sets, DICOM JSON or DICOM
    bytes. Raises :class:`QueryError` on a bad identifier (before any row is read).
    """
    keys, rows = _query_prepare(
        identifier,
        level=level,
        root=root,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
        facility=facility,
        principal=principal,
        with_patient=with_patient,
    )
    return keys, _rows_read(rows, bounded=limit is not None)


def _rows_read(rows: QuerySet | _Compiled, *, bounded: bool) -> Iterator[tuple[Any, ...]]:
    if isinstance(rows, _Compiled):
        return iter(rows.statement.rows(**rows.values))  # bounded, as only those are compiled
    if not bounded:
        return rows.iterator(chunk_size=500)
    # Bounded: fetched at once. (On PostgreSQL .iterator() declares a cursor, for
    # which the planner prefers a fast-start plan: the date index read backwards,
    # 50 ms where the name index takes 1 ms.)
    return iter(list(rows))


def _query_prepare(
    identifier: Dataset,
    *,
    level: str,
    root: str = "study",
    fuzzy: bool = False,
    limit: int | None = None,
    offset: int = 0,
    facility: Facility | None = None,
    principal: access.Principal,
    with_patient: bool = False,
) -> tuple[list[_Key], QuerySet | _Compiled]:
    """The returned keys and the (not yet run) rows of :func:`query_values`: a queryset,
    or, for a query whose every matching key is one exact value, the statement compiled
    for its shape (:func:`_exact_shape`) with this query's values."""
    query = query_parse(identifier, level=level, root=root)
    conditions = _conditions(query, fuzzy=fuzzy)
    keywords = list(dict.fromkeys([*_PARENT_KEYS[query.level], *query.returned]))
    fields: dict[str, str] = {}  # keyword -> values() path
    for kw in keywords:
        attr = ATTRIBUTES.get(kw)
        if attr is None or _DEPTH[attr.level] > _DEPTH[query.level]:
            continue
        if query.level == PATIENT:
            fields[kw] = "p_" + attr.field if attr.kind != COUNT else attr.field
        elif attr.level == PATIENT and attr.kind == COUNT:
            continue  # patient counts are answered at the PATIENT level only
        else:
            fields[kw] = _PATHS[query.level][attr.level] + attr.field
    paths = list(dict.fromkeys(fields.values()))
    columns = [*paths, _PATIENT_PK[query.level]] if with_patient else paths
    index = {path: i for i, path in enumerate(paths)}
    keys = []
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is not None:
            path = fields.get(kw)
            keys.append(_Key(kw, tag, dictionary_VR(tag), index[path] if path is not None else None))

    def rows_of(conditions: list[_Condition]) -> QuerySet:
        qs = _filtered(query.level, conditions, facility=facility, principal=principal)
        if query.level == PATIENT:
            qs = (
                qs.values("dicom_patient_id", "issuer_of_patient_id")
                .annotate(
                    p_patient_name=Max("patient_name"),
                    p_dicom_patient_id=Max("dicom_patient_id"),
                    p_issuer_of_patient_id=Max("issuer_of_patient_id"),
                    p_patient_birth_date=Max("patient_birth_date"),
                    p_patient_sex=Max("patient_sex"),
                    n_studies=Count("id"),
                    n_series=Sum("number_of_series"),
                    n_instances=Sum("number_of_instances"),
                )
                .order_by("dicom_patient_id", "issuer_of_patient_id")
            )
            if with_patient:
                qs = qs.annotate(p_patient_pk=Max("patient_id"))
        else:
            qs = qs.order_by(*_ORDER[query.level])
        rows = qs.values_list(*columns)
        if limit is not None:
            rows = rows[offset : offset + max(limit, 0)]
        elif offset:
            rows = rows[offset:]
        return rows

    shape = _exact_shape(conditions) if limit is not None and query.level != PATIENT else None
    if shape is None:
        return keys, rows_of(conditions)
    lookups, values = shape
    key = (
        "archive.query",
        query.level,
        lookups,
        tuple(columns),
        limit,
        offset,
        facility.pk if facility is not None else None,
        principal,
        access.policy_extension(),
    )

    def build(**stand_ins: str) -> QuerySet:
        return rows_of(
            [
                _Condition(c.keyword, c.below, c.field, Q(**{lookup: stand_ins[f"v{i}"]}))
                for i, (c, (_kw, _below, lookup)) in enumerate(zip(conditions, lookups, strict=True))
            ]
        )

    slots = [Slot(f"v{i}") for i in range(len(values))]
    try:
        statement = compiled(key, slots, build)
    except ValueError:  # a value the SQL does not carry as it is: built each time
        return keys, rows_of(conditions)
    return keys, _Compiled(statement, {f"v{i}": v for i, v in enumerate(values)})


def _exact_shape(
    conditions: list[_Condition],
) -> tuple[tuple[tuple[str, str | None, str], ...], list[str]] | None:
    """When every condition is one exact value on a column (a UID, a PatientID, an
    AccessionNumber), the query's shape (keyword, level below, lookup of each) and the
    values; None otherwise.

    Only ``exact``: its value is the statement's parameter as it is, where a wildcard's,
    a case-insensitive or a fuzzy match's is a pattern made from it, which a compiled
    statement cannot take (:mod:`kernel.querycache`)."""
    lookups, values = [], []
    for c in conditions:
        q = c.q
        if q.negated or len(q.children) != 1 or not isinstance(q.children[0], tuple):
            return None
        lookup, value = q.children[0]
        if lookup not in (c.field, c.field + "__exact") or not isinstance(value, str):
            return None
        lookups.append((c.keyword, c.below, lookup))
        values.append(value)
    return tuple(lookups), values


@dataclass
class _Compiled:
    """A compiled statement and this query's values: :func:`_rows_read` runs it."""

    statement: CompiledQuery
    values: dict[str, str]


def query_run(
    identifier: Dataset,
    *,
    level: str,
    encoding: tuple[bool, bool] | None = None,
    patients: list[int] | None = None,
    **options: Any,
) -> Iterator[Dataset]:
    """Run a C-FIND-style query; yield one identifier per match (the options of
    :func:`query_values`). Raises :class:`QueryError` before yielding.

    ``encoding``: (implicit VR, little endian) of the association the answers
    go out on; in little endian each answer comes already encoded, so that
    writing it costs a copy.

    The answers' character set (:func:`answer_character_set`): the query's
    SpecificCharacterSet when it is one of :data:`ANSWER_CHARACTER_SETS` and
    every answer's text can be written in it; otherwise, when the query named a
    character set or an answer is not ASCII, ISO_IR 192 (UTF-8); otherwise none
    (the default repertoire).

    ``patients``: a list to which the primary key of each yielded match's
    patient is appended, as it is yielded (for the audit log).
    """
    keys, rows = query_values(identifier, level=level, with_patient=patients is not None, **options)
    raw = encoding is not None and encoding[1]
    implicit = bool(encoding and encoding[0])
    asked = _query_character_set(identifier)
    charset, codec = "", "utf-8"
    if asked:
        # The answer is in one character set throughout: every row is read before
        # the first is sent (C-FIND asks with a limit: they are in memory already).
        fetched = list(rows)
        charset, codec = answer_character_set(asked, keys, fetched)
        rows = iter(fetched)

    def results() -> Iterator[Dataset]:
        for row in rows:
            ds = Dataset()
            text = False
            for key in keys:
                value = _value(key, row)
                if raw:
                    text = text or any(isinstance(v, str) and not v.isascii() for v in _as_list(value))
                    ds[key.tag] = raw_element(key.tag, key.vr, value, implicit=implicit, encoding=codec)
                    continue
                if value is not None and key.vr == "IS":
                    value = str(value)
                # The index holds checked values: pydicom's validation is skipped.
                ds[key.tag] = DataElement(key.tag, key.vr, value, validation_mode=config.IGNORE)
            if not raw:
                text = any(isinstance(e.value, str) and not e.value.isascii() for e in ds)
            answer = charset or ("ISO_IR 192" if text else "")
            if raw:
                if answer:
                    ds[_CHARSET] = raw_element(_CHARSET, "CS", answer, implicit=implicit)
                ds.set_original_encoding(implicit, True, ds._character_set)
            elif answer:
                ds.SpecificCharacterSet = answer
            if patients is not None:
                patients.append(row[-1])
            yield ds

    return results()


_CHARSET = 0x00080005

# The character sets a C-FIND answer may be written in besides the default
# repertoire, and Python's codec for each (pydicom's own table): UTF-8 and those
# of one term without code extensions. A query in any other (ISO 2022 code
# extensions, several terms) is answered in UTF-8.
ANSWER_CHARACTER_SETS: dict[str, str] = {
    "ISO_IR 100": "latin_1",  # Latin alphabet No. 1
    "ISO_IR 101": "iso8859_2",  # Latin alphabet No. 2
    "ISO_IR 109": "iso8859_3",  # Latin alphabet No. 3
    "ISO_IR 110": "iso8859_4",  # Latin alphabet No. 4
    "ISO_IR 144": "iso_ir_144",  # Cyrillic
    "ISO_IR 127": "iso_ir_127",  # Arabic
    "ISO_IR 126": "iso_ir_126",  # Greek
    "ISO_IR 138": "iso_ir_138",  # Hebrew
    "ISO_IR 148": "iso_ir_148",  # Latin alphabet No. 5
    "ISO_IR 166": "iso_ir_166",  # Thai
    "GB18030": "GB18030",
    "GBK": "GBK",
    "ISO_IR 192": "utf-8",
}
_UTF8 = "ISO_IR 192"


def _query_character_set(identifier: Dataset) -> list[str]:
    """The terms of the query's SpecificCharacterSet, none for the default repertoire."""
    value = identifier.get("SpecificCharacterSet")
    if value in (None, ""):
        return []
    terms = _values(value)
    return [] if terms in ([""], ["ISO_IR 6"]) else terms


def answer_character_set(asked: list[str], keys: list[_Key], rows: list[tuple[Any, ...]]) -> tuple[str, str]:
    """The character set of a query's answers and its Python codec: the query's
    (``asked``, its SpecificCharacterSet's terms) when it is one of
    :data:`ANSWER_CHARACTER_SETS` and every text of every answer can be written
    in it, otherwise ISO_IR 192 (UTF-8)."""
    term = asked[0] if len(asked) == 1 else ""
    codec = ANSWER_CHARACTER_SETS.get(term)
    if codec is None or term == _UTF8:
        return _UTF8, "utf-8"
    columns = [k.column for k in keys if k.column is not None]
    try:
        for row in rows:
            for column in columns:
                value = row[column]
                if isinstance(value, str) and not value.isascii():
                    value.encode(codec)
    except UnicodeEncodeError:
        return _UTF8, "utf-8"
    return term, codec


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- DICOM bytes straight from the rows (the C-FIND listener's fast road) -------------

# PS3.5 7.1.2: the VRs whose explicit-VR header has a 4-byte length.
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_NUMBER_FORMATS = {"US": "<H", "UL": "<L", "SS": "<h", "SL": "<l"}
# The VRs query_encoded writes; an identifier asking for a key of another VR (an
# ambiguous "US or SS", OB...) is answered by query_run. SQ only empty.
_ENCODED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI", "UC", "UR", "UT", "SQ"}
    | set(_NUMBER_FORMATS)
)
_PACK_H = struct.Struct("<H").pack
_PACK_L = struct.Struct("<L").pack


def _element_prefix(tag: int, vr: str, implicit: bool) -> tuple[bytes, bool]:
    """The bytes of an element's header before its length, and whether the length takes 4 bytes."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head, True
    if vr in _LONG_VRS:
        return head + vr.encode() + b"\0\0", True
    return head + vr.encode(), False


def _value_bytes(value: Any, vr: str, codec: str) -> bytes:
    """A value of the index (or a constant) as the element's bytes, padded to an even
    length, as :func:`archive.dicom.raw_element` writes it."""
    if value is None or value == "":
        return b""
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is not None:
        return struct.pack(fmt, int(value))
    if isinstance(value, dt.date):
        data = _da_bytes(value)
    else:
        data = (value if isinstance(value, str) else str(value)).encode(codec)
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


def element_bytes(tag: int, vr: str, value: Any, *, implicit: bool, codec: str) -> bytes:
    """One element, header and value, in little endian (explicit VR unless ``implicit``), its value
    padded as :func:`archive.dicom.raw_element` pads it; for the identifiers of
    :func:`query_encoded` and the listener's Part 10 header (``part10_header``)."""
    prefix, long = _element_prefix(tag, vr, implicit)
    data = _value_bytes(value, vr, codec)
    return prefix + (_PACK_L if long else _PACK_H)(len(data)) + data


def query_encoded(
    identifier: Dataset,
    *,
    level: str,
    implicit: bool,
    added: list[tuple[str, str]] | None = None,
    patients: list[int] | None = None,
    **options: Any,
) -> Encoded | None:
    """Run a C-FIND-style query; its answers give each match as its identifier's DICOM
    bytes (little endian, implicit or explicit VR), with the row it was written from.

    The bytes are those :func:`query_run` gives encoded by pydicom, byte for byte
    (``tests/archive/test_find_fast.py`` compares them): the same keys, values,
    padding and character set, written straight from the rows without a data set
    per match. ``added``: (keyword, value) of elements every answer carries besides
    the keys (the listener's QueryRetrieveLevel and RetrieveAETitle), text in the
    default repertoire. ``patients`` and the options: as :func:`query_run`.

    None, before the query runs, when a key has a VR this encoder does not
    write: the caller answers through :func:`query_run`. Raises
    :class:`QueryError` on a bad identifier, before anything is read.
    """
    keys, qs = _query_prepare(identifier, level=level, with_patient=patients is not None, **options)
    extra = {tag_for_keyword(kw): (kw, value) for kw, value in (added or [])}
    columns: list[tuple[int, str, int | None, Any]] = [
        (tag, dictionary_VR(tag), None, value) for tag, (_kw, value) in extra.items() if tag is not None
    ]
    for key in keys:
        if key.tag in extra:
            continue  # what the caller adds replaces the key, as on a data set
        constant = _CONSTANTS.get(key.keyword) if key.column is None else None
        columns.append((key.tag, key.vr, key.column, constant))
    for _tag, vr, column, constant in columns:
        if vr not in _ENCODED_VRS or (vr == "SQ" and (column is not None or constant is not None)):
            return None
    columns.sort(key=lambda c: c[0])
    rows = _rows_read(qs, bounded=options.get("limit") is not None)
    charset, codec = "", "utf-8"
    asked = _query_character_set(identifier)
    if asked:
        fetched = list(rows)  # one character set for every answer: all read first
        charset, codec = answer_character_set(asked, keys, fetched)
        rows = iter(fetched)
    answers = _encoded_rows(columns, rows, implicit=implicit, charset=charset, codec=codec, patients=patients)
    return Encoded(keys=keys, answers=answers)


@dataclass
class Encoded:
    """:func:`query_encoded`'s answers, and the keys their rows hold."""

    keys: list[_Key]
    answers: Iterator[tuple[bytes, tuple[Any, ...]]]

    def column(self, keyword: str) -> int | None:
        """The index in each row of ``keyword``'s value; None if the rows do not hold it."""
        return next((k.column for k in self.keys if k.keyword == keyword), None)


def _encoded_rows(
    columns: list[tuple[int, str, int | None, Any]],
    rows: Iterator[tuple[Any, ...]],
    *,
    implicit: bool,
    charset: str,
    codec: str,
    patients: list[int] | None,
) -> Iterator[tuple[bytes, tuple[Any, ...]]]:
    # The plan: the elements in tag order, those that do not depend on the row
    # encoded once; the character set's element (0008,0005) goes at ``split``.
    plan: list[bytes | tuple[int, bytes, bool, str]] = []
    split = 0
    for tag, vr, column, constant in columns:
        if tag < _CHARSET:
            split += 1
        if column is None:
            plan.append(element_bytes(tag, vr, constant, implicit=implicit, codec=codec))
        else:
            prefix, long = _element_prefix(tag, vr, implicit)
            plan.append((column, prefix, long, vr))
    charsets = {
        answer: element_bytes(_CHARSET, "CS", answer, implicit=implicit, codec="ascii") if answer else b""
        for answer in {charset, _UTF8, ""}
    }
    # Where the character set goes among the parts: each row element adds three.
    at = sum(1 if type(item) is bytes else 3 for item in plan[:split])
    numbers = _NUMBER_FORMATS
    for row in rows:
        text = False
        parts: list[bytes] = []
        for item in plan:
            if type(item) is bytes:
                parts.append(item)
                continue
            at_column, prefix, long, key_vr = cast(tuple[int, bytes, bool, str], item)
            value = row[at_column]
            if type(value) is str:
                if not text and not value.isascii():
                    text = True
                if key_vr in numbers or not value:
                    data = _value_bytes(value, key_vr, codec)
                else:
                    data = value.encode(codec)
                    if len(data) % 2:
                        data += b"\0" if key_vr == "UI" else b" "
            else:
                data = _value_bytes(value, key_vr, codec)
            parts.append(prefix)
            parts.append(_PACK_L(len(data)) if long else _PACK_H(len(data)))
            parts.append(data)
        answer = charset or (_UTF8 if text else "")
        if answer:
            parts.insert(at, charsets[answer])
        if patients is not None:
            patients.append(row[-1])
        yield b"".join(parts), row


_JSON_NUMBERS = frozenset({"IS", "US", "UL", "SS", "SL", "UV", "SV"})


def query_json(
    identifier: Dataset, *, level: str, patients: list[int] | None = None, **options: Any
) -> list[dict[str, Any]]:
    """Run a query and answer its matches in the DICOM JSON model (PS3.18 F.2),
    written straight from the rows (the options of :func:`query_values`).

    ``patients``: a list to which each match's patient primary key is appended,
    read by the same statement (for the audit event of the search)."""
    keys, rows = query_values(identifier, level=level, with_patient=patients is not None, **options)
    plan = [(f"{k.tag:08X}", k.vr, k.column, _CONSTANTS.get(k.keyword)) for k in keys]
    results = []
    for row in rows:
        if patients is not None:
            patients.append(row[-1])
        item: dict[str, Any] = {}
        for tag, vr, column, constant in plan:
            value = row[column] if column is not None else constant
            if value is None or value == "":
                item[tag] = {"vr": vr}
            elif vr == "PN":
                item[tag] = {"vr": vr, "Value": [{"Alphabetic": value}]}
            elif vr == "DA" and isinstance(value, dt.date):
                item[tag] = {"vr": vr, "Value": [_da(value)]}
            elif vr in _JSON_NUMBERS:
                item[tag] = {"vr": vr, "Value": [int(value)]}
            elif vr == "CS" and "\\" in value:
                item[tag] = {"vr": vr, "Value": value.split("\\")}
            else:
                item[tag] = {"vr": vr, "Value": [value]}
        results.append(item)
    return results


# --- retrieve -------------------------------------------------------------------


def retrieve_instances(
    identifier: Dataset,
    *,
    level: str,
    principal: access.Principal,
    root: str = "study",
    facility: Facility | None = None,
) -> QuerySet[Instance]:
    """The instances a C-MOVE/C-GET identifier designates (PS3.4 C.4.2.2.1, C.4.3.2.1).

    The identifier holds the unique key of its level (one value or a list)
    and may hold those of the levels above; other keys select nothing.
    """
    query = query_parse(identifier, level=level, root=root)
    unique = UNIQUE_KEYS[query.level]
    if unique not in query.matching:
        raise QueryError(f"a {query.level} retrieve needs {unique}", keyword=unique)
    # Only unique keys select what to send; other keys some SCUs add are ignored.
    keys = {UNIQUE_KEYS[lv] for lv in LEVELS if _DEPTH[lv] <= _DEPTH[query.level]}
    matching = {kw: value for kw, value in query.matching.items() if kw in keys}
    if "PatientID" in matching:
        value = _values(matching["PatientID"])
        if len(value) != 1 or "*" in value[0] or "?" in value[0]:
            raise QueryError("PatientID must be a single value in a retrieve", keyword="PatientID")
    query = Query(level=IMAGE, matching=matching, returned=[])
    qs = _filtered(IMAGE, _conditions(query, fuzzy=False), facility=facility, principal=principal)
    return qs.order_by("series__study_id", "series_id", "instance_number", "id")
