"""Person names matched without case nor accents (issue 19, ``archive.person_names``),
and C-FIND answered in the character set of the query when the answers fit in it.

Studies of five patients are ingested (fresh copies of pydicom's CT) and queried over
real associations to the in-process listener, with pynetdicom and DCMTK's findscu, and
through QIDO-RS. Run on SQLite and on PostgreSQL (DATABASE_URL=...): the answers must be
the same, since the database compares search keys written by the archive, not its own
idea of case.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from archive.ingest import instance_ingest
from archive.models import Patient, RemoteNode, Study
from archive.patients import study_patient_assign
from archive.person_names import SPECIAL_LETTERS, pn_search_key, text_search_key
from archive.sample_data import PatientInfo, write_study
from kernel.models import AuditEvent
from tests import dicomweb_helpers as helpers

FIND = StudyRootQueryRetrieveInformationModelFind
reader = helpers.reader

NAMES = {
    "NICOLO": "NICOLÒ^PÀOLA",
    "MULLER": "MÜLLER^HANS",
    "ZOLW": "ŻÓŁW^JAN",
    "ODEGARD": "Ødegård^Åse",
    "STRAUSS": "STRAUß^X",
}
PATIENT_NAME = 0x00100010


# --- the search key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NICOLÒ^PÀOLA", "nicolo^paola"),
        ("nicolò^pàola", "nicolo^paola"),
        ("MÜLLER^HANS", "muller^hans"),
        ("ŻÓŁW^JAN", "zolw^jan"),
        ("Ødegård^Åse", "odegard^ase"),
        ("STRAUß^X", "strauss^x"),
        ("STRAUẞ^X", "strauss^x"),  # capital sharp s
        ("ÆRØ^ŒDIPE", "aero^oedipe"),
        ("ĐOKOVIĆ^NOVAK", "dokovic^novak"),
        ("YILDIRIM^IŞIL", "yildirim^isil"),
        ("YILDIRIM^İPEK", "yildirim^ipek"),  # dotted capital I: i + combining dot, dropped
        ("ÞÓRSDÓTTIR^GUÐRÚN", "thorsdottir^gudrun"),
        ("ROSSI^MARIO^^^", "rossi^mario"),  # empty components at the end are not there (PS3.5 6.2.1)
        (" ROSSI ^ MARIO ", "rossi^mario"),
        ("ROSSI^MARIO==", "rossi^mario"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "yamada^tarou=山田^太郎=やまだ^たろう"),  # groups kept
        ("ｶﾞｸ", "ガク"),  # NFKD: half-width kana are the full-width ones; the voicing mark stays
        ("MÜLL*^?ANS", "mull*^?ans"),  # wildcards pass unchanged
        ("", ""),
    ],
)
def test_the_search_key_of_a_name(name: str, key: str) -> None:
    assert pn_search_key(name) == key


def test_every_special_letter_and_its_capital_fold_to_the_table() -> None:
    for letter, base in SPECIAL_LETTERS.items():
        assert pn_search_key(letter) == base
        if letter.upper() != letter and len(letter.upper()) == 1:
            assert pn_search_key(letter.upper()) == base, letter.upper()
        assert base.isascii()


def test_a_fuzzy_key_keeps_no_structure_to_fold() -> None:
    assert text_search_key(" Nicolò ") == "nicolo"
    assert text_search_key("ØDEG") == "odeg"


# --- the archive --------------------------------------------------------------------------------


@dataclass
class Archive:
    studies: dict[str, str]  # NAMES key -> StudyInstanceUID


@pytest.fixture
def archive(region, tmp_path: Path) -> Archive:  # type: ignore[no-untyped-def]
    """One CT study of each of NAMES at TS-CAT; WS may query."""
    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )
    studies = {}
    for i, (key, name) in enumerate(NAMES.items()):
        paths = write_study(
            tmp_path / key,
            patient=PatientInfo(patient_id=f"MRN{i:04d}", name=name),
            instances_per_series=1,
            study_date=dt.date(2024, 3, 1 + i),
            extra={
                "SpecificCharacterSet": "ISO_IR 192",
                "ReferringPhysicianName": "ÈRCOLANI^DOTT" if key == "NICOLO" else "ROSSI^DOTT",
            },
        )
        for path in paths:
            instance_ingest(path=path, facility=region.facility, owned=False)
        studies[key] = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    return Archive(studies=studies)


def c_find(
    port: int,
    *,
    charset: str | None = "ISO_IR 192",
    transfer_syntax: str | None = None,
    **keys: object,
) -> tuple[list[Dataset], Dataset]:
    """A Study Root C-FIND at the STUDY level from WS; the answers and the final status."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    if "PatientName" not in keys:
        ds.PatientName = ""
    ae = AE(ae_title="WS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(FIND, [transfer_syntax] if transfer_syntax else None)
    assoc = ae.associate("127.0.0.1", port, ae_title="TSCAT_PACS")
    assert assoc.is_established
    try:
        results: list[Dataset] = []
        final = None
        for status, identifier in assoc.send_c_find(ds, FIND):
            assert status is not None, "no response"
            if status.Status in (0xFF00, 0xFF01):
                results.append(identifier)  # type: ignore[arg-type]
            else:
                final = status
        assert final is not None
        return results, final
    finally:
        assoc.release()


QUERIES = [
    ("nicolò^pàola", {"NICOLO"}),
    ("NICOLÒ^PÀOLA", {"NICOLO"}),
    ("nicolo^paola", {"NICOLO"}),
    ("Nicolo^Paola^^^", {"NICOLO"}),
    ("nicol*", {"NICOLO"}),
    ("müller*", {"MULLER"}),
    ("mull*", {"MULLER"}),
    ("MULLER^HANS", {"MULLER"}),
    ("?üller^hans", {"MULLER"}),
    ("żółw*", {"ZOLW"}),
    ("zolw^jan", {"ZOLW"}),
    ("ŻÓŁW^JAN", {"ZOLW"}),
    ("*^jan", {"ZOLW"}),
    ("odegard^ase", {"ODEGARD"}),
    ("ØDEGÅRD*", {"ODEGARD"}),
    ("ødegård^åse", {"ODEGARD"}),
    ("strauss^x", {"STRAUSS"}),
    ("strauß*", {"STRAUSS"}),
    ("STRAU??^X", {"STRAUSS"}),  # ß is ss in the key: two characters
    ("*ll*", {"MULLER"}),
    ("*o*^*a*", {"NICOLO", "ODEGARD", "ZOLW"}),
    ("müller", set()),  # exact: the whole name
    ("mueller*", set()),  # no transliteration beyond the table
    ("nicolo^paolo", set()),
]


@pytest.mark.plain_too
@pytest.mark.parametrize(("key", "expected"), QUERIES)
def test_cfind_matches_names_without_case_or_accents(
    listener: int, archive: Archive, key: str, expected: set[str]
) -> None:
    found, final = c_find(listener, PatientName=key)
    assert final.Status == 0x0000
    assert {str(ds.StudyInstanceUID) for ds in found} == {archive.studies[k] for k in expected}


def test_referring_physician_name_matches_the_same_way(listener: int, archive: Archive) -> None:
    found, _final = c_find(listener, ReferringPhysicianName="ercolani*")
    assert [str(ds.StudyInstanceUID) for ds in found] == [archive.studies["NICOLO"]]
    assert str(found[0].PatientName) == "NICOLÒ^PÀOLA"


# --- the answer's character set -----------------------------------------------------------------


@pytest.mark.plain_too
def test_a_latin1_query_is_answered_in_latin1(listener: int, archive: Archive) -> None:
    found, final = c_find(listener, charset="ISO_IR 100", PatientName="Müller*")
    assert final.Status == 0x0000
    (answer,) = found
    assert answer.SpecificCharacterSet == "ISO_IR 100"
    # Read in the declared character set: UTF-8 bytes would read "MÃ\x9cLLER" here.
    assert str(answer.PatientName) == "MÜLLER^HANS"
    # The archive read the key in the query's character set.
    event = AuditEvent.objects.filter(action="dicom.query").latest("pk")
    assert event.detail["keys"]["PatientName"] == "Müller*"


@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_every_transfer_syntax_writes_the_query_character_set(
    listener: int, archive: Archive, transfer_syntax: str
) -> None:
    found, _final = c_find(listener, charset="ISO_IR 100", transfer_syntax=transfer_syntax, PatientName="ødeg*")
    (answer,) = found
    assert answer.SpecificCharacterSet == "ISO_IR 100"
    assert str(answer.PatientName) == "Ødegård^Åse"


def test_answers_that_do_not_fit_the_query_character_set_are_in_utf8(listener: int, archive: Archive) -> None:
    # All five patients: ŻÓŁW has letters Latin-1 does not have, so every answer is UTF-8.
    found, final = c_find(listener, charset="ISO_IR 100", PatientName="*")
    assert final.Status == 0x0000 and len(found) == 5
    assert {answer.SpecificCharacterSet for answer in found} == {"ISO_IR 192"}
    assert {str(answer.PatientName) for answer in found} == set(NAMES.values())


def test_a_latin2_query_gets_the_polish_name_in_latin2(listener: int, archive: Archive) -> None:
    found, _final = c_find(listener, charset="ISO_IR 101", PatientName="zolw*")
    (answer,) = found
    assert answer.SpecificCharacterSet == "ISO_IR 101"
    assert str(answer.PatientName) == "ŻÓŁW^JAN"


def test_a_query_in_the_default_repertoire_gets_utf8_only_for_non_ascii_answers(
    listener: int, archive: Archive
) -> None:
    found, _final = c_find(listener, charset=None, PatientName="strauss*")
    (answer,) = found
    assert answer.SpecificCharacterSet == "ISO_IR 192" and str(answer.PatientName) == "STRAUß^X"
    found, _final = c_find(listener, charset=None, PatientID="MRN0001", PatientName="")
    (answer,) = found
    assert answer.SpecificCharacterSet == "ISO_IR 192" and str(answer.PatientName) == "MÜLLER^HANS"


def test_an_ascii_answer_to_a_latin1_query_says_latin1(listener: int, archive: Archive, region, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for path in write_study(
        tmp_path / "plain", patient=PatientInfo("MRN9", name="BIANCHI^LAURA"), instances_per_series=1
    ):
        instance_ingest(path=path, facility=region.facility, owned=False)
    found, _final = c_find(listener, charset="ISO_IR 100", PatientName="bianchi*")
    (answer,) = found
    assert answer.SpecificCharacterSet == "ISO_IR 100" and str(answer.PatientName) == "BIANCHI^LAURA"


# --- DCMTK's findscu ----------------------------------------------------------------------------


def _findscu(port: int, out: Path, *keys: bytes) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("findscu") is None:  # `make test` installs DCMTK; never skip silently in CI
        pytest.fail("DCMTK is not installed: run `make test` (apt-get install dcmtk)", pytrace=False)
    out.mkdir()
    args: list[bytes] = [b"findscu", b"-S", b"-d", b"-aet", b"WS", b"-aec", b"TSCAT_PACS", b"-X", b"-od", bytes(out)]
    args += [b"-k", b"QueryRetrieveLevel=STUDY", b"-k", b"StudyInstanceUID"]
    for key in keys:
        args += [b"-k", key]
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK 3.6.7 on loopback crawls without it (Nagle)
    result = subprocess.run([*args, b"127.0.0.1", str(port).encode()], env=env, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def _answers(out: Path) -> list[Dataset]:
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_with_a_latin1_key_is_answered_in_latin1(listener: int, archive: Archive, tmp_path: Path) -> None:
    # findscu sends a -k value's bytes as they are: here Latin-1, as the character set says.
    result = _findscu(
        listener,
        tmp_path / "latin1",
        b"SpecificCharacterSet=ISO_IR 100",
        b"PatientName=" + "müller*".encode("latin-1"),
    )
    # What findscu sent (its debug dump of the request): the Latin-1 bytes, declared.
    log = result.stdout + result.stderr
    assert b"ISO_IR 100" in log and b"m\xfcller*" in log
    (answer,) = _answers(tmp_path / "latin1")
    assert answer.StudyInstanceUID == archive.studies["MULLER"]
    assert answer.SpecificCharacterSet == "ISO_IR 100"
    assert answer.get_item(PATIENT_NAME).value.rstrip(b" ") == "MÜLLER^HANS".encode("latin-1")


def test_findscu_with_utf8_and_ascii_keys(listener: int, archive: Archive, tmp_path: Path) -> None:
    _findscu(listener, tmp_path / "utf8", b"SpecificCharacterSet=ISO_IR 192", "PatientName=żółw*".encode())
    (answer,) = _answers(tmp_path / "utf8")
    assert answer.StudyInstanceUID == archive.studies["ZOLW"] and answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "ŻÓŁW^JAN"
    # No character set, an unaccented key: found, answered in UTF-8 since the name is not ASCII.
    _findscu(listener, tmp_path / "ascii", b"PatientName=nicolo^paola")
    (answer,) = _answers(tmp_path / "ascii")
    assert answer.StudyInstanceUID == archive.studies["NICOLO"] and answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "NICOLÒ^PÀOLA"


def test_findscu_latin1_query_over_a_polish_name_gets_utf8(listener: int, archive: Archive, tmp_path: Path) -> None:
    _findscu(listener, tmp_path / "all", b"SpecificCharacterSet=ISO_IR 100", b"PatientName=*")
    answers = _answers(tmp_path / "all")
    assert len(answers) == 5 and {a.SpecificCharacterSet for a in answers} == {"ISO_IR 192"}
    assert {str(a.PatientName) for a in answers} == set(NAMES.values())


# --- QIDO-RS ------------------------------------------------------------------------------------


def _qido(client, user, **params: str) -> list[str]:  # type: ignore[no-untyped-def]
    response = client.get("/dicomweb/studies", params, HTTP_ACCEPT="application/dicom+json", **user.auth)
    assert response.status_code == 200, response.content
    assert "charset" not in response["Content-Type"] or "utf-8" in response["Content-Type"].lower()
    return [item["0020000D"]["Value"][0] for item in response.json()]


@pytest.mark.parametrize(("key", "expected"), QUERIES)
def test_qido_matches_names_without_case_or_accents(client, archive: Archive, reader, key: str, expected) -> None:  # type: ignore[no-untyped-def]
    assert set(_qido(client, reader, PatientName=key)) == {archive.studies[k] for k in expected}


@pytest.mark.parametrize(
    ("key", "expected"),
    [("nicolò", {"NICOLO"}), ("NICOLO", {"NICOLO"}), ("olw", {"ZOLW"}), ("ødegard", {"ODEGARD"}), ("ß", {"STRAUSS"})],
)
def test_qido_fuzzy_matching_finds_part_of_a_name(client, archive: Archive, reader, key: str, expected) -> None:  # type: ignore[no-untyped-def]
    found = _qido(client, reader, PatientName=key, fuzzymatching="true")
    assert set(found) == {archive.studies[k] for k in expected}


def test_qido_answers_the_name_as_stored_in_utf8_json(client, archive: Archive, reader) -> None:  # type: ignore[no-untyped-def]
    response = client.get(
        "/dicomweb/studies", {"PatientName": "zolw*"}, HTTP_ACCEPT="application/dicom+json", **reader.auth
    )
    (item,) = response.json()
    assert item["00100010"]["Value"] == [{"Alphabetic": "ŻÓŁW^JAN"}]
    assert "ŻÓŁW^JAN".encode() in response.content or b"\\u017b" in response.content


# --- the search keys follow every change of a name ----------------------------------------------


def test_a_study_put_under_another_patient_matches_by_the_new_name(listener: int, archive: Archive) -> None:
    patient = Patient.objects.create(codice_fiscale="RSSMRA56C12L424X", family_name="Ñúñez", given_name="Íñigo")
    study = Study.objects.get(study_instance_uid=archive.studies["STRAUSS"])
    study_patient_assign(study=study, patient=patient, user=None, reason="test")
    found, _final = c_find(listener, PatientName="nunez^inigo")
    assert [str(ds.StudyInstanceUID) for ds in found] == [archive.studies["STRAUSS"]]
    assert c_find(listener, PatientName="strauss*")[0] == []


def test_a_name_edited_and_saved_is_searched_by_its_new_key(db, region) -> None:  # type: ignore[no-untyped-def]
    patient = Patient.objects.create(provisional=True, family_name="ROSSI", given_name="MARIO")
    assert patient.name_search == "rossi^mario"
    patient.family_name = "Rossì"
    patient.save(update_fields=["family_name"])
    assert Patient.objects.get(pk=patient.pk).name_search == "rossi^mario"
    patient.given_name = "Mària Luísa"
    patient.save(update_fields=["given_name"])
    assert Patient.objects.get(pk=patient.pk).name_search == "rossi^maria luisa"
    study = Study.objects.create(
        study_instance_uid="1.2.3.4", patient=patient, facility=region.facility, patient_name="A^B"
    )
    study.patient_name = "ÀBÈ^ČĆ"
    study.referring_physician_name = "Łukasz^Dr"
    study.save(update_fields=["patient_name", "referring_physician_name"])
    row = Study.objects.get(pk=study.pk)
    assert (row.patient_name_search, row.referring_physician_name_search) == ("abe^cc", "lukasz^dr")


def test_a_study_saved_with_a_corrected_name_is_searched_by_it(archive: Archive) -> None:
    study = Study.objects.get(study_instance_uid=archive.studies["MULLER"])
    study.patient_name = "MÜLLER-LÜDENSCHEIDT^HANS"
    study.save()
    assert Study.objects.get(pk=study.pk).patient_name_search == "muller-ludenscheidt^hans"


# --- the migration fills the keys of the rows already there -------------------------------------


def test_the_migration_fills_the_search_keys(transactional_db, region) -> None:  # type: ignore[no-untyped-def]
    before = [("archive", "0021_mpps")]  # the migration before 0022_name_search
    executor = MigrationExecutor(connection)
    after = executor.loader.graph.leaf_nodes()  # every app back to its latest, whatever the unapply touched
    executor.migrate(before)
    try:
        apps = executor.loader.project_state(before).apps
        OldPatient = apps.get_model("archive", "Patient")
        OldStudy = apps.get_model("archive", "Study")
        patient = OldPatient.objects.create(provisional=True, family_name="ŻÓŁW", given_name="Jan")
        OldStudy.objects.create(
            study_instance_uid="1.2.3.99",
            patient_id=patient.pk,
            facility_id=region.facility.pk,
            patient_name="Ødegård^Åse",
            referring_physician_name="STRAUß^X",
        )
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(after)
    study = Study.objects.get(study_instance_uid="1.2.3.99")
    assert (study.patient_name_search, study.referring_physician_name_search) == ("odegard^ase", "strauss^x")
    assert Patient.objects.get(pk=study.patient_id).name_search == "zolw^jan"
