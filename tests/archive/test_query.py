"""The matching engine behind C-FIND, C-MOVE/C-GET and QIDO-RS (PS3.4 C.2.2.2)."""

from __future__ import annotations

import datetime as dt
import time
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import decode, encode

from archive import sample_data
from archive.access import SYSTEM, Kind, Principal
from archive.dicomweb.media import DicomwebError
from archive.dicomweb.scope import Scope, study_get
from archive.models import Instance, Patient, Series, Study
from archive.query import QueryError, query_json, query_run, retrieve_instances
from archive.sample_data import PatientInfo, write_study
from kernel import querycache
from kernel.querycache import compiled_forget
from tests.access_helpers import hide
from tests.dicomweb_helpers import ingest_files


@dataclass
class Archive:
    a: str  # ROSSI^MARIO, CT, 2019-05-10 10:15, 2 series x 2
    b: str  # ROSSI^MARIA, MR, 2020-06-01 16:40, 1 series x 3
    c: str  # BIANCHI^LUCA, CT + SR, 2021-01-15, Gorizia


@pytest.fixture
def archive(region, tmp_path: Path) -> Archive:  # type: ignore[no-untyped-def]
    mario = PatientInfo(patient_id="MRN0001", name="ROSSI^MARIO", birth_date="19560312", sex="M")
    maria = PatientInfo(patient_id="MRN0002", name="ROSSI^MARIA", birth_date="19601010", sex="F")
    luca = PatientInfo(patient_id="MRN0003", name="BIANCHI^LUCA", birth_date="19800101", sex="M")
    a = write_study(
        tmp_path / "a",
        patient=mario,
        series=2,
        instances_per_series=2,
        accession_number="ACC1",
        study_date=dt.date(2019, 5, 10),
        extra={"StudyTime": "101500"},
    )
    b = write_study(
        tmp_path / "b",
        patient=maria,
        source=sample_data.MR,
        instances_per_series=3,
        accession_number="ACC2",
        study_date=dt.date(2020, 6, 1),
        extra={"StudyTime": "164000"},
    )
    c_uid = "1.2.826.0.1.3680043.8.498.1"
    c = write_study(
        tmp_path / "c",
        patient=luca,
        study_uid=c_uid,
        instances_per_series=1,
        accession_number="ACC3",
        study_date=dt.date(2021, 1, 15),
    )
    c += write_study(
        tmp_path / "c-sr",
        patient=luca,
        source=sample_data.SR,
        study_uid=c_uid,
        instances_per_series=1,
        accession_number="ACC3",
        study_date=dt.date(2021, 1, 15),
    )
    ingest_files(a, region.facility)
    ingest_files(b, region.facility)
    ingest_files(c, region.other_facility)
    return Archive(a=_study_uid(a), b=_study_uid(b), c=c_uid)


def _study_uid(paths: list[Path]) -> str:
    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def identifier(**keys: object) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        # Wildcards and ranges are not valid values of their VRs: the engine checks them.
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def find(level: str = "STUDY", **keys: object) -> list[Dataset]:
    return list(query_run(identifier(**keys), level=level, principal=SYSTEM))


def uids(results: list[Dataset], keyword: str = "StudyInstanceUID") -> set[str]:
    return {str(r.get(keyword)) for r in results}


def test_single_value_matching_is_exact(archive: Archive) -> None:
    assert uids(find(PatientID="MRN0001", StudyInstanceUID="")) == {archive.a}
    assert find(PatientID="MRN000") == []


def test_universal_matching_returns_everything(archive: Archive) -> None:
    assert uids(find(PatientID="")) == {archive.a, archive.b, archive.c}
    assert uids(find(PatientName="*")) == {archive.a, archive.b, archive.c}


def test_wildcards_and_names_ignore_case(archive: Archive) -> None:
    assert uids(find(PatientName="ROSSI*")) == {archive.a, archive.b}
    assert uids(find(PatientName="rossi^mari?")) == {archive.a, archive.b}
    assert uids(find(PatientName="*LUCA")) == {archive.c}
    assert uids(find(PatientName="ROSSI^MARI?")) == {archive.a, archive.b}
    # Not a PN: case matters.
    assert find(AccessionNumber="acc1") == []
    assert uids(find(AccessionNumber="ACC?")) == {archive.a, archive.b, archive.c}


def test_date_ranges_closed_and_open(archive: Archive) -> None:
    assert uids(find(StudyDate="20190101-20201231")) == {archive.a, archive.b}
    assert uids(find(StudyDate="20200601-")) == {archive.b, archive.c}
    assert uids(find(StudyDate="-20190510")) == {archive.a}
    assert uids(find(StudyDate="20210115")) == {archive.c}
    assert uids(find(PatientBirthDate="19500101-19591231")) == {archive.a}


def test_time_ranges(archive: Archive) -> None:
    assert uids(find(StudyTime="1000-1100")) == {archive.a}
    assert uids(find(StudyTime="16")) == {archive.b}
    assert uids(find(StudyTime="1600-")) == {archive.b}


@pytest.mark.parametrize(
    "keys",
    [
        {"StudyDate": "20201231-20190101"},
        {"StudyDate": "2019-01-01"},
        {"StudyDate": "20191301"},
        {"StudyDate": "-"},
        {"StudyTime": "2500"},
        {"StudyInstanceUID": "1.2.abc"},
        {"SeriesNumber": "one"},
    ],
)
def test_bad_values_are_refused(archive: Archive, keys: dict[str, str]) -> None:
    # As they arrive over the network: raw, converted only when the engine reads them.
    ds = Dataset()
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        ds[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), len(value), value.encode(), 0, False, True)
    with pytest.raises(QueryError) as exc:
        list(query_run(ds, level="STUDY", principal=SYSTEM))
    assert next(iter(keys)) in str(exc.value)


def test_uid_lists(archive: Archive) -> None:
    assert uids(find(StudyInstanceUID=[archive.a, archive.c])) == {archive.a, archive.c}
    assert uids(find(StudyInstanceUID=f"{archive.b}\\{archive.c}")) == {archive.b, archive.c}


def test_modalities_in_study_matches_any_modality(archive: Archive) -> None:
    results = find(ModalitiesInStudy="CT")
    assert uids(results) == {archive.a, archive.c}
    assert uids(find(ModalitiesInStudy="SR")) == {archive.c}
    assert uids(find(ModalitiesInStudy=["MR", "SR"])) == {archive.b, archive.c}
    # Returned as the list it is.
    (c,) = find(StudyInstanceUID=archive.c, ModalitiesInStudy="")
    assert sorted(c.ModalitiesInStudy) == ["CT", "SR"]


def test_a_series_key_in_a_study_query_matches_through_the_series(archive: Archive) -> None:
    assert uids(find(Modality="MR")) == {archive.b}


def test_derived_counts_and_unknown_keys(archive: Archive) -> None:
    (a,) = find(
        StudyInstanceUID=archive.a,
        NumberOfStudyRelatedSeries=None,
        NumberOfStudyRelatedInstances=None,
        PatientName="",
        StudyDate="",
        PatientComments="",
        InstanceAvailability="",
    )
    assert a.NumberOfStudyRelatedSeries == 2
    assert a.NumberOfStudyRelatedInstances == 4
    assert str(a.PatientName) == "ROSSI^MARIO"
    assert a.StudyDate == "20190510"
    assert "PatientComments" in a and not a.PatientComments
    assert a.InstanceAvailability == "ONLINE"


def test_series_and_image_levels(archive: Archive) -> None:
    series = list(
        query_run(
            identifier(StudyInstanceUID=archive.a, SeriesInstanceUID="", NumberOfSeriesRelatedInstances=None),
            level="SERIES",
            principal=SYSTEM,
        )
    )
    assert len(series) == 2 and all(s.NumberOfSeriesRelatedInstances == 2 for s in series)
    assert [s.StudyInstanceUID for s in series] == [archive.a, archive.a]
    images = list(
        query_run(
            identifier(SeriesInstanceUID=series[0].SeriesInstanceUID, SOPInstanceUID="", Rows=None),
            level="IMAGE",
            principal=SYSTEM,
        )
    )
    assert len(images) == 2 and all(i.Rows == 128 for i in images)
    assert {i.SeriesInstanceUID for i in images} == {series[0].SeriesInstanceUID}


def test_patient_level_in_the_patient_root_model(archive: Archive) -> None:
    found = list(
        query_run(
            identifier(PatientName="ROSSI*", PatientID="", NumberOfPatientRelatedStudies=None),
            level="PATIENT",
            root="patient",
            principal=SYSTEM,
        )
    )
    assert {(str(p.PatientID), p.NumberOfPatientRelatedStudies) for p in found} == {("MRN0001", 1), ("MRN0002", 1)}
    with pytest.raises(QueryError):
        list(query_run(identifier(PatientID=""), level="PATIENT", principal=SYSTEM, root="study"))
    with pytest.raises(QueryError):
        list(query_run(identifier(PatientID=""), level="FRAME", principal=SYSTEM))


def test_limit_offset_and_facility_scope(archive: Archive, region) -> None:  # type: ignore[no-untyped-def]
    # Newest first.
    everything = [str(r.StudyInstanceUID) for r in find(StudyInstanceUID="")]
    assert everything == [archive.c, archive.b, archive.a]
    page = [
        str(r.StudyInstanceUID)
        for r in query_run(identifier(StudyInstanceUID=""), level="STUDY", principal=SYSTEM, limit=1, offset=1)
    ]
    assert page == [archive.b]
    scoped = query_run(identifier(StudyInstanceUID=""), level="STUDY", principal=SYSTEM, facility=region.other_facility)
    assert uids(list(scoped)) == {archive.c}


def test_fuzzy_matching_finds_a_name_part(archive: Archive) -> None:
    assert uids(list(query_run(identifier(PatientName="mari"), level="STUDY", principal=SYSTEM, fuzzy=True))) == {
        archive.a,
        archive.b,
    }


def test_retrieve_selects_by_unique_keys(archive: Archive) -> None:
    assert retrieve_instances(identifier(StudyInstanceUID=archive.a), level="STUDY", principal=SYSTEM).count() == 4
    assert (
        retrieve_instances(identifier(StudyInstanceUID=[archive.a, archive.b]), level="STUDY", principal=SYSTEM).count()
        == 7
    )
    # Other keys some SCUs add are ignored.
    assert (
        retrieve_instances(
            identifier(StudyInstanceUID=archive.b, PatientName="X"), level="STUDY", principal=SYSTEM
        ).count()
        == 3
    )
    with pytest.raises(QueryError, match="StudyInstanceUID"):
        retrieve_instances(identifier(PatientName="ROSSI*"), level="STUDY", principal=SYSTEM)
    assert (
        retrieve_instances(identifier(PatientID="MRN0003"), level="PATIENT", principal=SYSTEM, root="patient").count()
        == 2
    )
    with pytest.raises(QueryError, match="single value"):
        retrieve_instances(identifier(PatientID="MRN*"), level="PATIENT", principal=SYSTEM, root="patient")


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_json_answers_are_the_data_sets_in_dicom_json(archive: Archive, level: str) -> None:
    keys = dict(
        PatientName="",
        PatientBirthDate="",
        StudyDate="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedInstances=None,
        StudyInstanceUID="",
        PatientComments="",
        InstanceAvailability="",
    )
    if level != "STUDY":
        keys.update(SeriesInstanceUID="", SeriesNumber=None, Modality="")
    if level == "IMAGE":
        keys.update(SOPInstanceUID="", Rows=None, InstanceNumber=None)
    as_json = query_json(identifier(**keys), level=level, principal=SYSTEM)
    as_datasets = [ds.to_json_dict() for ds in query_run(identifier(**keys), level=level, principal=SYSTEM)]
    assert len(as_json) == len(as_datasets) > 0
    assert as_json == as_datasets


@pytest.mark.parametrize("implicit", [True, False])
def test_answers_encoded_in_advance_read_back_as_the_data_sets(archive: Archive, region, implicit: bool) -> None:  # type: ignore[no-untyped-def]
    Study.objects.create(
        study_instance_uid="1.2.826.0.1.3680043.8.498.77",
        patient=Patient.objects.create(provisional=True),
        facility=region.facility,
        patient_name="DELL'ÒRSO^NICOLÒ",
        dicom_patient_id="MRN0077",
        study_date=dt.date(2022, 2, 2),
    )
    keys = dict(PatientName="", StudyDate="", ModalitiesInStudy="", StudyInstanceUID="", PatientComments="")
    keys.update(NumberOfStudyRelatedInstances=None, InstanceAvailability="")
    plain = [ds.to_json_dict() for ds in query_run(identifier(**keys), level="STUDY", principal=SYSTEM)]
    encoded = [
        decode(BytesIO(encode(ds, implicit, True)), implicit, True).to_json_dict()
        for ds in query_run(identifier(**keys), level="STUDY", principal=SYSTEM, encoding=(implicit, True))
    ]
    for item in encoded:
        item.pop("00080005", None)
    for item in plain:
        item.pop("00080005", None)
    assert encoded == plain and len(plain) == 4
    (nicolo,) = [
        d
        for d in query_run(identifier(**keys), level="STUDY", principal=SYSTEM, encoding=(implicit, True))
        if d.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.77"
    ]
    assert nicolo.SpecificCharacterSet == "ISO_IR 192"
    assert str(decode(BytesIO(encode(nicolo, implicit, True)), implicit, True).PatientName) == "DELL'ÒRSO^NICOLÒ"


# --- wildcards: LIKE/GLOB with literals escaped, bounded (issue 15) ------------------------


def _study(region, uid: str, **fields: object) -> Study:  # type: ignore[no-untyped-def]
    return Study.objects.create(
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.9{uid}",
        patient=Patient.objects.create(provisional=True),
        facility=region.facility,
        study_date=dt.date(2023, 3, 3),
        **fields,
    )


def test_repeated_stars_are_one(archive: Archive) -> None:
    assert uids(find(PatientName="ROSSI****")) == {archive.a, archive.b}
    assert uids(find(PatientName="**R*****A")) == {archive.b}
    # Fifty stars are one: universal matching.
    assert uids(find(PatientName="*" * 50)) == {archive.a, archive.b, archive.c}


def test_question_mark_matches_exactly_one_character(archive: Archive) -> None:
    assert uids(find(PatientName="ROSSI^MARI?")) == {archive.a, archive.b}
    assert find(PatientName="ROSSI^MAR?") == []
    assert find(PatientName="ROSSI^MARIO?") == []
    assert uids(find(PatientName="?OSSI^MARI?")) == {archive.a, archive.b}
    assert uids(find(AccessionNumber="ACC?")) == {archive.a, archive.b, archive.c}
    assert find(AccessionNumber="ACC??") == []
    assert uids(find(PatientName="R?SS*O")) == {archive.a}


def test_wildcards_inside_a_value(archive: Archive) -> None:
    assert uids(find(PatientName="*SSI^*IA")) == {archive.b}
    assert uids(find(PatientName="R*^M*O")) == {archive.a}
    assert uids(find(StudyDescription="*")) == {archive.a, archive.b, archive.c}


def test_only_person_names_ignore_case_with_wildcards(archive: Archive) -> None:
    assert uids(find(PatientName="rossi^m*")) == {archive.a, archive.b}
    assert uids(find(PatientName="*i^mari?")) == {archive.a, archive.b}
    assert find(AccessionNumber="acc*") == []
    assert find(AccessionNumber="*cc1") == []
    assert uids(find(AccessionNumber="*C1")) == {archive.a}


def test_percent_underscore_backslash_and_bracket_are_literals(archive: Archive, region) -> None:  # type: ignore[no-untyped-def]
    percent = _study(region, "1", patient_name="D%ANGELO^X", accession_number="50%OFF")
    other = _study(region, "2", patient_name="DXANGELO^X", accession_number="50XOFF")
    under = _study(region, "3", patient_name="DE_LUCA^Y", accession_number="A_B")
    _study(region, "4", patient_name="DEXLUCA^Y", accession_number="AXB")
    bracket = _study(region, "5", accession_number="A[1]")
    _study(region, "9", accession_number="A1X")  # what GLOB's class [1] would match
    assert uids(find(PatientName="d%a*")) == {percent.study_instance_uid}
    assert uids(find(AccessionNumber="50%*")) == {percent.study_instance_uid}
    assert uids(find(AccessionNumber="*0%O?F")) == {percent.study_instance_uid}
    assert uids(find(AccessionNumber="50?OFF")) == {percent.study_instance_uid, other.study_instance_uid}
    assert uids(find(PatientName="de_*")) == {under.study_instance_uid}
    assert uids(find(AccessionNumber="A_*")) == {under.study_instance_uid}
    assert uids(find(AccessionNumber="A[1]*")) == {bracket.study_instance_uid}
    assert uids(find(AccessionNumber="A?1]")) == {bracket.study_instance_uid}
    assert uids(find(AccessionNumber="A[1*")) == {bracket.study_instance_uid}
    # A backslash separates values in DICOM, so it reaches the lookup only from code:
    # there too it is a literal, not LIKE's escape character.
    slash = _study(region, "6", study_description="X\\YZ%")
    assert list(Study.objects.filter(study_description__dicom_match="X\\Y*")) == [slash]
    assert list(Study.objects.filter(study_description__dicom_imatch="x\\y?%")) == [slash]
    assert not Study.objects.filter(study_description__dicom_match="X\\Y_*").exists()


def test_modalities_in_study_with_wildcards_match_one_modality(archive: Archive) -> None:
    assert uids(find(ModalitiesInStudy="C*")) == {archive.a, archive.c}
    assert uids(find(ModalitiesInStudy="*R")) == {archive.b, archive.c}
    assert uids(find(ModalitiesInStudy="?R")) == {archive.b, archive.c}
    assert uids(find(ModalitiesInStudy="S?")) == {archive.c}
    # Not across two modalities: CT\SR holds no modality C*R.
    assert find(ModalitiesInStudy="C*R") == []
    assert find(ModalitiesInStudy="?") == []
    assert uids(find(ModalitiesInStudy=["M?", "S*"])) == {archive.b, archive.c}
    assert uids(find(ModalitiesInStudy=["MR", "S*"])) == {archive.b, archive.c}
    # From the series level too: the series of the studies that hold an SR.
    series = list(query_run(identifier(ModalitiesInStudy="S?", SeriesInstanceUID=""), level="SERIES", principal=SYSTEM))
    assert {str(s.StudyInstanceUID) for s in series} == {archive.c} and len(series) == 2
    images = list(query_run(identifier(ModalitiesInStudy="?R", SOPInstanceUID=""), level="IMAGE", principal=SYSTEM))
    assert {str(i.StudyInstanceUID) for i in images} == {archive.b, archive.c} and len(images) == 5


def test_accented_names_keep_matching_with_wildcards(archive: Archive, region) -> None:  # type: ignore[no-untyped-def]
    # Names match without case nor accents (issue 19; tests/archive/test_unicode_matching.py).
    orso = _study(region, "7", patient_name="DELL'ÒRSO^NICOLÒ")
    assert uids(find(PatientName="*òrso*")) == {orso.study_instance_uid}
    assert uids(find(PatientName="dell'òrso^nic*")) == {orso.study_instance_uid}
    assert uids(find(PatientName="*ÒRSO^NICOL?")) == {orso.study_instance_uid}
    assert uids(find(PatientName="*ORSO*")) == {orso.study_instance_uid}
    assert uids(find(PatientName="*ORSA*")) == set()


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        ({"PatientName": "*A" * 11}, "11 wildcards, at most 10"),
        ({"PatientName": "R?SS?^M?R??*" * 2}, "wildcards"),
        ({"PatientName": ["A*B*C*D*E*", "F*G*H*I*J*K*"]}, "11 wildcards"),
        ({"PatientName": "A" * 65}, "more than 64 characters per component group"),
        ({"PatientName": "A" * 64 + "=" + "B" * 65}, "per component group"),
        ({"AccessionNumber": "A" * 17}, "more than 16 characters (SH)"),
        ({"PatientID": "*" * 65}, "more than 64 characters (LO)"),
        ({"ModalitiesInStudy": "CT\\" + "M" * 17}, "more than 16 characters (CS)"),
        ({"Modality": "*?" * 6}, "wildcards"),
    ],
)
def test_too_many_wildcards_or_too_long_a_value_is_refused(archive: Archive, keys: dict, reason: str) -> None:
    with pytest.raises(QueryError) as exc:
        find(**keys)
    assert reason in str(exc.value)
    assert str(exc.value).startswith(next(iter(keys)))
    assert len(str(exc.value)) <= 64  # it travels as the C-FIND's ErrorComment (LO)


def test_values_at_the_limits_are_answered(archive: Archive, settings) -> None:  # type: ignore[no-untyped-def]
    assert find(PatientName="A" * 64 + "=" + "B" * 64) == []
    assert find(PatientName="A*" * 10) == []
    assert find(AccessionNumber="A" * 16) == []
    settings.PACS_QUERY_MAX_WILDCARDS = 2
    assert uids(find(PatientName="R*^*")) == {archive.a, archive.b}
    with pytest.raises(QueryError, match="3 wildcards, at most 2"):
        find(PatientName="R*^M*O*")


def test_a_pattern_that_defeats_backtracking_is_answered_at_once(archive: Archive, region) -> None:  # type: ignore[no-untyped-def]
    # With one ".*" per star, this pattern against a long run of A's never ended.
    _study(region, "8", patient_name="A" * 64, study_description="A" * 64)
    pattern = "*A" * 9 + "*B"
    for keys in ({"PatientName": pattern}, {"StudyDescription": pattern}):
        start = time.monotonic()
        assert find(**keys) == []
        assert time.monotonic() - start < 0.5, keys


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("*" * 50, ""),
        ("*A" * 25, "25 wildcards, at most 10"),
        ("*A" * 50, "more than 64 characters"),
        ("*A" * 9 + "*B", ""),
    ],
)
@pytest.mark.filterwarnings("ignore:The PN component length")
def test_a_c_find_with_fifty_stars_answers_or_is_refused_at_once(
    listener: int, archive: Archive, region, value, refused
) -> None:  # type: ignore[no-untyped-def]
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    _study(region, "8", patient_name="A" * 64)
    ae = AE(ae_title="VIEWER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", listener, ae_title="TSCAT_PACS")
    assert assoc.is_established

    def c_find(name: str) -> tuple[int, list[Dataset], Dataset]:
        ds = identifier(QueryRetrieveLevel="STUDY", PatientName=name, StudyInstanceUID="")
        found, final = [], None
        for status, answer in assoc.send_c_find(ds, FIND):
            assert status is not None, "no response"
            if status.Status in (0xFF00, 0xFF01):
                found.append(answer)
            else:
                final = status
        return final.Status, found, final

    try:
        c_find("ROSSI*")  # the first request's imports
        elapsed = []
        for _ in range(3):  # the best of three: a busy machine's pause is not the query's cost
            start = time.monotonic()
            status, found, final = c_find(value)
            elapsed.append(time.monotonic() - start)
    finally:
        assoc.release()
    assert min(elapsed) < 0.1, elapsed
    if refused:
        assert status == 0xA900 and refused in final.ErrorComment
    else:
        assert status == 0x0000
        expected = {archive.a, archive.b} | {s.study_instance_uid for s in Study.objects.filter(patient_name="A" * 64)}
        assert uids(found) == (expected if value.startswith("**") else set())


# --- exact keys: one compiled statement per shape (kernel.querycache) ---------------------------


def answers(level: str, keys: dict[str, str], principal: Principal = SYSTEM, limit: int | None = 100) -> list[tuple]:
    """Each match's returned keys, in the engine's order (``limit=None``: built each time)."""
    found = query_run(identifier(**keys), level=level, principal=principal, limit=limit)
    return [tuple(str(e.value) for e in ds) for ds in found]


def test_exact_keys_answer_from_a_statement_compiled_once_per_shape(archive: Archive, region) -> None:  # type: ignore[no-untyped-def]
    a_series = sorted(
        Series.objects.filter(study__study_instance_uid=archive.a).values_list("series_instance_uid", flat=True)
    )
    a_sop = Instance.objects.filter(series__series_instance_uid=a_series[0]).values_list("sop_instance_uid", flat=True)[
        0
    ]
    under = _study(region, "3", accession_number="A_B")  # "_" and "%": literals in an exact match
    _study(region, "4", accession_number="AXB")
    _study(region, "5", accession_number="A%")
    cases = [
        ("STUDY", {"PatientID": "MRN0001", "StudyInstanceUID": "", "PatientName": "", "StudyDate": ""}),
        ("STUDY", {"PatientID": "MRN0002", "StudyInstanceUID": "", "PatientName": "", "StudyDate": ""}),
        ("STUDY", {"AccessionNumber": "ACC3", "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": ""}),
        ("STUDY", {"AccessionNumber": "A_B", "StudyInstanceUID": ""}),
        ("STUDY", {"AccessionNumber": "A%", "StudyInstanceUID": ""}),
        ("STUDY", {"StudyInstanceUID": archive.c, "ModalitiesInStudy": ""}),
        ("STUDY", {"SeriesInstanceUID": a_series[1], "StudyInstanceUID": ""}),  # through the series
        ("STUDY", {"PatientID": "MRN0001", "AccessionNumber": "ACC2"}),  # none
        ("SERIES", {"StudyInstanceUID": archive.a, "SeriesInstanceUID": "", "Modality": ""}),
        ("SERIES", {"StudyInstanceUID": archive.b, "SeriesInstanceUID": "", "Modality": ""}),
        ("IMAGE", {"SeriesInstanceUID": a_series[0], "SOPInstanceUID": "", "InstanceNumber": ""}),
        ("IMAGE", {"SOPInstanceUID": a_sop}),
    ]
    compiled_forget()
    for level, keys in cases:
        built = answers(level, keys, limit=None)
        before = len(querycache._cache)
        first = answers(level, keys)
        after = len(querycache._cache)
        again = answers(level, keys)
        assert first == again == built, (level, keys)
        assert len(querycache._cache) == after and after - before in (0, 1)
    # The same shape with other values is the same statement (two PatientIDs, two accession
    # numbers, two studies' series).
    assert len(querycache._cache) == len(cases) - 3
    assert {row[-1] for row in answers("STUDY", {"AccessionNumber": "A_B", "StudyInstanceUID": ""})} == {
        under.study_instance_uid
    }
    assert answers("STUDY", {"PatientID": "MRN0009", "StudyInstanceUID": ""}) == []


def test_a_wildcard_a_range_or_a_list_is_built_each_time(archive: Archive) -> None:
    compiled_forget()
    for keys in (
        {"PatientID": "MRN000*"},
        {"PatientName": "ROSSI^MARIO"},  # a person's name: any case
        {"StudyDate": "20190101-20201231"},
        {"StudyInstanceUID": f"{archive.a}\\{archive.b}"},
        {"ModalitiesInStudy": "CT"},
    ):
        assert answers("STUDY", {**keys, "StudyInstanceUID": keys.get("StudyInstanceUID", "")})
    assert not querycache._cache


def test_each_principal_has_its_own_statement(archive: Archive, region) -> None:  # type: ignore[no-untyped-def]
    c = Study.objects.get(study_instance_uid=archive.c)
    luca, mario = c.patient_id, Study.objects.get(study_instance_uid=archive.a).patient_id
    keys = {"StudyInstanceUID": archive.c, "AccessionNumber": ""}  # (0008,0050) and (0020,000D)

    def found_by_query(principal: Principal) -> bool:
        found = answers("STUDY", keys, principal)
        assert found in ([], [("ACC3", archive.c)])
        return bool(found)

    def found_by_url(principal: Principal) -> bool:  # DICOMweb's /studies/{uid}/...
        try:
            return study_get(Scope(facility=None, base_url="", principal=principal), archive.c).pk == c.pk
        except DicomwebError as exc:
            assert exc.status == 404
            return False

    # Pairs of principals that differ in what they may see of study c, Gorizia's: by facility;
    # then, once its patient hid it, a citizen's own against another's, and a professional
    # with an emergency access for the patient against one without.
    nodes = (
        Principal(kind=Kind.NODE, name="gorizia", facility_id=region.other_facility.pk),
        Principal(kind=Kind.NODE, name="trieste", facility_id=region.facility.pk),
    )
    hidden = [
        (
            Principal(kind=Kind.CITIZEN, name="luca", patient_ids=frozenset({luca})),
            Principal(kind=Kind.CITIZEN, name="mario", patient_ids=frozenset({mario})),
        ),
        (
            Principal(kind=Kind.STAFF, name="with an emergency access", user_id=1, patient_ids=frozenset({luca})),
            Principal(kind=Kind.STAFF, name="without", user_id=1),
        ),
    ]
    for pairs in ([nodes], hidden):
        if pairs is hidden:
            hide(c)
        # Whoever asks first, the one who may not see the study does not find it.
        for sees, blind in pairs:
            for found in (found_by_query, found_by_url):
                compiled_forget()
                assert (found(sees), found(blind)) == (True, False)
                compiled_forget()
                assert (found(blind), found(sees)) == (False, True)
                assert len(querycache._cache) == 2
