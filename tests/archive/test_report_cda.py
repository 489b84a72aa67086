"""The signed report as a CDA R2 (Referto di Radiologia) inside a PDF/A-3: schema, Ministry rules, attachment, CAdES."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from lxml import etree

from archive.models import Report, StaffProfile
from archive.reporting.booked import BookedExam, Contacts
from archive.reporting.cda import cda_problems, report_cda
from archive.reporting.cda_rules import NSMAP
from tests.reporting_helpers import PATIENT_CF, Reporting, reporting  # noqa: F401

SIGNED_AT = dt.datetime(2026, 3, 14, 9, 5, tzinfo=ZoneInfo("Europe/Rome"))
SIGNER_CF = "CSSSFN70A01L424X"
BOOKED = BookedExam(
    procedure_code="87.41",
    procedure_description="TC torace senza mdc",
    department="Radiologia, piano 1",
    referring_physician="Dott. Paolo Bianchi",
    nre="0100A4001234567",
)
CONTACTS = Contacts(address="Strada di Fiume 447, Trieste", phone="040 399 1111")


def make_version(rep: Reporting, **fields: object) -> Report:
    values: dict[str, object] = {
        "study": rep.study,
        "version": 1,
        "author": rep.radiologist,
        "clinical_question": rep.study.reason_for_request,
        "technique": "TC del torace senza e con mezzo di contrasto.",
        "findings": "Non addensamenti parenchimali in atto.\n\nNon versamento pleurico.",
        "conclusion": "Quadro nei limiti della norma.",
        # Signed as the database holds it: report_cda reads the texts, not the files.
        "status": Report.Status.SIGNED,
        "signed_at": SIGNED_AT,
        "signer_name": "Stefano Cossutta",
        "pdf_sha256": "a" * 64,
        "signature_path": "x.p7m",
    }
    values.update(fields)
    return Report.objects.create(**values)


def build(report: Report, rep: Reporting, **kwargs: object) -> bytes:
    StaffProfile.objects.filter(user=rep.radiologist).update(codice_fiscale=SIGNER_CF)
    report.author.refresh_from_db()
    values: dict[str, object] = {
        "report": report,
        "signer_name": "Stefano Cossutta",
        "signed_at": SIGNED_AT,
        "booked": BOOKED,
        "contacts": CONTACTS,
        "signer": rep.radiologist,
        "signer_fiscal_code": SIGNER_CF,
    }
    values.update(kwargs)
    return report_cda(**values)  # type: ignore[arg-type]


def xp(xml: bytes, path: str) -> list:
    return etree.fromstring(xml).xpath(path, namespaces=NSMAP)


def test_an_original_report_is_a_valid_referto_di_radiologia(reporting: Reporting) -> None:  # noqa: F811
    xml = build(make_version(reporting), reporting)
    assert cda_problems(xml) == []
    assert xp(xml, "string(/hl7:ClinicalDocument/hl7:recordTarget/hl7:patientRole/hl7:id[1]/@extension)") == PATIENT_CF


def test_a_correction_replaces_and_an_addendum_appends_with_consistent_set_and_version(
    reporting: Reporting,  # noqa: F811
) -> None:
    first = make_version(reporting)
    correction = make_version(reporting, version=2, previous=first, kind=Report.Kind.CORRECTION)
    addendum = make_version(
        reporting, version=3, previous=correction, kind=Report.Kind.ADDENDUM, technique="", findings="Aggiunta."
    )
    one, two, three = (build(r, reporting) for r in (first, correction, addendum))
    for xml in (one, two, three):
        assert cda_problems(xml) == []
    doc = "/hl7:ClinicalDocument"
    assert xp(one, f"count({doc}/hl7:relatedDocument)") == 0
    assert xp(one, f"string({doc}/hl7:versionNumber/@value)") == "1"
    first_id = xp(one, f"string({doc}/hl7:id/@extension)")
    assert xp(one, f"string({doc}/hl7:setId/@extension)") == first_id
    # The correction: same set, next version, RPLC of the first.
    assert xp(two, f"string({doc}/hl7:setId/@extension)") == first_id
    assert xp(two, f"string({doc}/hl7:versionNumber/@value)") == "2"
    assert xp(two, f"string({doc}/hl7:relatedDocument/@typeCode)") == "RPLC"
    assert xp(two, f"string({doc}/hl7:relatedDocument/hl7:parentDocument/hl7:id/@extension)") == first_id
    assert xp(two, f"string({doc}/hl7:id/@extension)") != first_id
    # The addendum: a set of its own, APND to the correction.
    three_id = xp(three, f"string({doc}/hl7:id/@extension)")
    assert xp(three, f"string({doc}/hl7:setId/@extension)") == three_id
    assert xp(three, f"string({doc}/hl7:versionNumber/@value)") == "1"
    assert xp(three, f"string({doc}/hl7:relatedDocument/@typeCode)") == "APND"
    parent = f"{doc}/hl7:relatedDocument/hl7:parentDocument"
    assert xp(three, f"string({parent}/hl7:id/@extension)") == xp(two, f"string({doc}/hl7:id/@extension)")
    assert xp(three, f"string({parent}/hl7:setId/@extension)") == first_id
    assert xp(three, f"string({parent}/hl7:versionNumber/@value)") == "2"


def test_the_header_and_sections_carry_the_report(reporting: Reporting) -> None:  # noqa: F811
    xml = build(make_version(reporting), reporting)
    doc = "/hl7:ClinicalDocument"
    assert (
        xp(xml, f"string({doc}/hl7:inFulfillmentOf/hl7:order/hl7:id[@root='2.16.840.1.113883.2.9.4.3.9']/@extension)")
        == BOOKED.nre
    )
    assert reporting.study.accession_number in xp(xml, f"{doc}/hl7:inFulfillmentOf/hl7:order/hl7:id/@extension")
    assert xp(xml, f"string({doc}/hl7:legalAuthenticator/hl7:assignedEntity/hl7:id/@extension)") == SIGNER_CF
    assert xp(xml, f"string({doc}/hl7:legalAuthenticator/hl7:time/@value)") == "20260314090500+0100"
    assert xp(xml, f"string({doc}/hl7:custodian//hl7:name)") == reporting.region.authority.name
    sections = {
        code: xp(xml, f"string(//hl7:section[hl7:code/@code='{code}']/hl7:text)")
        for code in ("18785-6", "55111-9", "18782-3", "55110-1")
    }
    assert "escludere lesioni polmonari" in sections["18785-6"]
    assert "TC torace senza mdc (87.41)" in sections["55111-9"] and "mezzo di contrasto" in sections["55111-9"]
    assert "Non versamento pleurico." in sections["18782-3"]
    assert sections["55110-1"].strip() == "Quadro nei limiti della norma."
    assert xp(xml, "string(//hl7:section[hl7:code/@code='55111-9']/hl7:entry/hl7:act/hl7:code/@code)") == "87.41"
    # The DICOM Object Catalog lists the study, its two series and their six instances.
    catalog = "//hl7:section[hl7:code/@code='121181']/hl7:entry/hl7:act"
    assert xp(xml, f"string({catalog}/hl7:id/@root)") == reporting.study.study_instance_uid
    from archive.models import Instance

    uids = set(Instance.objects.filter(series__study=reporting.study).values_list("sop_instance_uid", flat=True))
    assert len(uids) == 6
    assert (
        set(xp(xml, f"{catalog}/hl7:entryRelationship/hl7:act/hl7:entryRelationship/hl7:observation/hl7:id/@root"))
        == uids
    )
    assert len(xp(xml, f"{catalog}/hl7:entryRelationship/hl7:act")) == 2
    # No exposure: no exposure section.
    assert xp(xml, "count(//hl7:section[hl7:code/@code='73569-6'])") == 0


def test_the_exposure_goes_in_with_its_coded_doses(reporting: Reporting) -> None:  # noqa: F811
    report = make_version(
        reporting,
        exposure="TC: CTDIvol 8,2 mGy; DLP totale 412,5 mGy·cm (2 acquisizioni).",
        exposure_data={
            "source": "rdsr",
            "modality": "CT",
            "ct": {"events": [], "ctdivol_max_mgy": 8.2, "dlp_total_mgycm": 412.5},
            "projection": {"dap_total_gycm2": 1.23, "entrance_dose_mgy": 0.8},
            "nm": {"radiopharmaceutical": "Fluorodeoxyglucose F^18^", "activity_mbq": 350.0},
        },
    )
    xml = build(report, reporting)
    assert cda_problems(xml) == []
    section = "//hl7:section[hl7:code/@code='55111-9']/hl7:component/hl7:section[hl7:code/@code='73569-6']"
    assert "DLP totale 412,5" in xp(xml, f"string({section}/hl7:text)")
    values = {
        code: (
            xp(xml, f"string({section}//hl7:observation[hl7:code/@code='{code}']/hl7:value/@value)"),
            xp(xml, f"string({section}//hl7:observation[hl7:code/@code='{code}']/hl7:value/@unit)"),
        )
        for code in ("113830", "113813", "113722", "111636", "113507")
    }
    assert values == {
        "113830": ("8.2", "mGy"),
        "113813": ("412.5", "mGy.cm"),
        "113722": ("1.23", "Gy.cm2"),
        "111636": ("0.8", "mGy"),
        "113507": ("350", "MBq"),
    }


# --- every encoded Ministry rule: a document broken for it fails it, with its id ------------

D = "/hl7:ClinicalDocument"
PR = f"{D}/hl7:recordTarget/hl7:patientRole"
PAT = f"{PR}/hl7:patient"
LA = f"{D}/hl7:legalAuthenticator/hl7:assignedEntity"
AUTH = f"{D}/hl7:author/hl7:assignedAuthor"
CUST = f"{D}/hl7:custodian/hl7:assignedCustodian/hl7:representedCustodianOrganization"
ENC = f"{D}/hl7:componentOf/hl7:encompassingEncounter"
SPO = f"{ENC}/hl7:location/hl7:healthCareFacility/hl7:serviceProviderOrganization"
EVENT = f"{D}/hl7:documentationOf/hl7:serviceEvent"
BODY = f"{D}/hl7:component/hl7:structuredBody"
ESAME = f"{BODY}/hl7:component/hl7:section[hl7:code/@code='55111-9']"
QUESITO = f"{BODY}/hl7:component/hl7:section[hl7:code/@code='18785-6']"
CATALOG = f"{BODY}/hl7:component/hl7:section[hl7:code/@code='121181']"
DE_OK_PERSON = "<assignedPerson><name><family>Verdi</family><given>Anna</given></name></assignedPerson>"
CF_ID = f'<id root="2.16.840.1.113883.2.9.4.3.2" extension="{SIGNER_CF}"/>'


def _one(doc: etree._Element, path: str) -> etree._Element:
    nodes = doc.xpath(path, namespaces=NSMAP)
    assert nodes, path
    return nodes[0]


def _frag(snippet: str) -> list[etree._Element]:
    wrapper = etree.fromstring(
        f'<x xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">{snippet}</x>'
    )
    return list(wrapper)


def rm(path: str):
    def mutate(doc: etree._Element) -> None:
        for node in doc.xpath(path, namespaces=NSMAP):
            node.getparent().remove(node)

    return mutate


def attr(path: str, name: str, value: str):
    def mutate(doc: etree._Element) -> None:
        _one(doc, path).set(name, value)

    return mutate


def after(path: str, snippet: str):
    def mutate(doc: etree._Element) -> None:
        anchor = _one(doc, path)
        for node in reversed(_frag(snippet)):
            anchor.addnext(node)

    return mutate


def before(path: str, snippet: str):
    def mutate(doc: etree._Element) -> None:
        anchor = _one(doc, path)
        for node in _frag(snippet):
            anchor.addprevious(node)

    return mutate


def append(path: str, snippet: str):
    def mutate(doc: etree._Element) -> None:
        parent = _one(doc, path)
        for node in _frag(snippet):
            parent.append(node)

    return mutate


def both(*mutations):
    def mutate(doc: etree._Element) -> None:
        for m in mutations:
            m(doc)

    return mutate


def section(code: str, inner: str = "") -> str:
    return f'<component><section><code code="{code}" codeSystem="2.16.840.1.113883.6.1"/>{inner}</section></component>'


def data_enterer(inner: str) -> object:
    return after(f"{D}/hl7:author", f"<dataEnterer>{inner}</dataEnterer>")


def participant(inner: str) -> object:
    return after(
        f"{D}/hl7:legalAuthenticator",
        f'<participant typeCode="REF"><associatedEntity classCode="PROV">{inner}</associatedEntity></participant>',
    )


def responsible(person: str) -> object:
    return after(
        f"{ENC}/hl7:effectiveTime",
        f'<responsibleParty><assignedEntity><id root="1.2.3"/>{person}</assignedEntity></responsibleParty>',
    )


MUTANTS = {
    "ERRORE-1": rm(f"{D}/hl7:realmCode"),
    "ERRORE-2": attr(f"{D}/hl7:realmCode", "code", "EN"),
    "ERRORE-3": rm(f"{D}/hl7:templateId"),
    "ERRORE-4": lambda doc: _one(doc, f"{D}/hl7:templateId").attrib.pop("extension"),
    "ERRORE-5": attr(f"{D}/hl7:code", "code", "11528-7"),
    "ERRORE-6": attr(f"{D}/hl7:confidentialityCode", "code", "X"),
    "ERRORE-7": rm(f"{D}/hl7:languageCode"),
    "ERRORE-8": attr(f"{D}/hl7:versionNumber", "value", "2"),
    "ERRORE-9": both(attr(f"{D}/hl7:versionNumber", "value", "2"), attr(f"{D}/hl7:setId", "extension", "altro")),
    "ERRORE-10": lambda doc: _one(doc, f"{D}/hl7:recordTarget").addnext(
        etree.fromstring(etree.tostring(_one(doc, f"{D}/hl7:recordTarget")))
    ),
    "ERRORE-10a": rm(f"{PR}/hl7:id[2]"),
    "ERRORE-10b": after(f"{PR}/hl7:id[1]", '<id root="2.16.840.1.113883.2.9.4.3.7" extension="80380000000000000001"/>'),
    "ERRORE-10c": after(f"{PR}/hl7:id[1]", '<id root="2.16.840.1.113883.2.9.2.60.4.1.1" extension="STP1"/>'),
    "ERRORE-11": before(PAT, "<addr><city>Trieste</city></addr>"),
    "ERRORE-12": rm(PAT),
    "ERRORE-13": rm(f"{PAT}/hl7:name"),
    "ERRORE-14": rm(f"{PAT}/hl7:name/hl7:given"),
    "ERRORE-15": rm(f"{PAT}/hl7:administrativeGenderCode"),
    "ERRORE-16": attr(f"{PAT}/hl7:administrativeGenderCode", "codeSystem", "2.16.840.1.113883.5.99"),
    "ERRORE-17": rm(f"{PAT}/hl7:birthTime"),
    "ERRORE-18": append(PAT, "<birthplace><place><name>Trieste</name></place></birthplace>"),
    "ERRORE-23": data_enterer(f"<assignedEntity>{CF_ID}{DE_OK_PERSON}</assignedEntity>"),
    "ERRORE-24": data_enterer(
        f'<time value="20260314"/><assignedEntity><id root="1.2.3"/>{DE_OK_PERSON}</assignedEntity>'
    ),
    "ERRORE-25": data_enterer(f'<time value="20260314"/><assignedEntity>{CF_ID}</assignedEntity>'),
    "ERRORE-26": data_enterer(
        f'<time value="20260314"/><assignedEntity>{CF_ID}<assignedPerson><name><family>V</family></name>'
        "</assignedPerson></assignedEntity>"
    ),
    "ERRORE-27": rm(f"{CUST}/hl7:name"),
    "ERRORE-28": append(CUST, "<addr><city>Trieste</city></addr>"),
    "ERRORE-29": rm(f"{D}/hl7:legalAuthenticator"),
    "ERRORE-30": attr(f"{D}/hl7:legalAuthenticator/hl7:signatureCode", "code", "X"),
    "ERRORE-31": attr(f"{LA}/hl7:id", "root", "1.2.3"),
    "ERRORE-32": rm(f"{LA}/hl7:assignedPerson/hl7:name"),
    "ERRORE-33": rm(f"{LA}/hl7:assignedPerson/hl7:name/hl7:given"),
    "ERRORE-38": rm(f"{D}/hl7:inFulfillmentOf"),
    "ERRORE-42": responsible("<assignedPerson/>"),
    "ERRORE-43": responsible("<assignedPerson><name><family>Neri</family></name></assignedPerson>"),
    "ERRORE-44": rm(f"{SPO}/hl7:id"),
    "ERRORE-19": attr(f"{AUTH}/hl7:id", "root", "1.2.3"),
    "ERRORE-20": rm(f"{AUTH}/hl7:telecom"),
    "ERRORE-21": rm(f"{AUTH}/hl7:assignedPerson/hl7:name"),
    "ERRORE-22": rm(f"{AUTH}/hl7:assignedPerson/hl7:name/hl7:family"),
    "ERRORE-34": participant(
        "<associatedPerson><name><family>Bianchi</family><given>P</given></name></associatedPerson>"
    ),
    "ERRORE-35": participant('<id root="1.2.3"/><addr><city>Trieste</city></addr>'),
    "ERRORE-36": participant('<id root="1.2.3"/><associatedPerson/>'),
    "ERRORE-37": participant('<id root="1.2.3"/><associatedPerson><name><given>P</given></name></associatedPerson>'),
    "ERRORE-39": attr(f"{D}/hl7:inFulfillmentOf/hl7:order/hl7:priorityCode", "codeSystem", "1.2.3"),
    "ERRORE-39a": append(
        EVENT, '<performer typeCode="PPRF"><assignedEntity><id root="1.2.3"/></assignedEntity></performer>'
    ),
    "ERRORE-40": attr(f"{EVENT}/hl7:code", "code", "XYZ"),
    "ERRORE-41": attr(f"{EVENT}/hl7:code", "codeSystem", "1.2.3"),
    "ERRORE-45": lambda doc: _one(doc, f"{AUTH}/hl7:telecom").attrib.pop("use"),
    "ERRORE-45a": after(f"{CUST}/hl7:name", '<telecom use="HP" value="tel:0401"/>'),
    "ERRORE-46": attr(f"{PR}/hl7:id[1]", "extension", PATIENT_CF[:15]),
    "ERRORE-47": attr("(//hl7:observation)[1]", "classCode", "COND"),
    "ERRORE-48": attr("(//hl7:observation)[1]", "moodCode", "INT"),
    "ERRORE-49": attr("(//hl7:act)[1]", "moodCode", "INT"),
    "ERRORE-50": attr("(//hl7:act)[1]", "classCode", "PROC"),
    "ERRORE-51": lambda doc: _one(doc, f"{SPO}/hl7:name").append(_frag("<prefix>Dr</prefix>")[0]),
    "ERRORE-52": lambda doc: _one(doc, f"{PAT}/hl7:name").insert(0, _frag("<delimiter>,</delimiter>")[0]),
    "ERRORE-53": append(f"{EVENT}/hl7:effectiveTime", '<high value="20000101"/>'),
    "ERRORE-54": append(
        CUST,
        '<addr use="H"><country>IT</country><city>Trieste</city><streetAddressLine>Via Roma 1</streetAddressLine></addr>',
    ),
    "ERRORE-b1": rm(f"{ESAME}/.."),
    "ERRORE-b2": rm(f"{ESAME}/hl7:text"),
    "ERRORE-b3": rm(f"{ESAME}/hl7:entry"),
    "ERRORE-b4": rm(f"{BODY}/hl7:component[hl7:section/hl7:code/@code='18782-3']"),
    "ERRORE-b5": rm(f"{BODY}/hl7:component/hl7:section[hl7:code/@code='18782-3']/hl7:text"),
    "ERRORE-b6": attr(f"{BODY}/hl7:component/hl7:section/hl7:code[@code='55110-1']", "code", "12345-6"),
    "ERRORE-b7": rm(f"{CATALOG}/hl7:entry"),
    "ERRORE-b8": rm(f"{QUESITO}/hl7:text"),
    "ERRORE-b9": append(QUESITO, '<entry><act classCode="ACT" moodCode="EVN"/></entry>'),
    "ERRORE-b10": append(
        QUESITO,
        '<entry><observation classCode="OBS" moodCode="EVN"><code code="11111-1" codeSystem="2.16.840.1.113883.6.1"/>'
        '<value xsi:type="CD" code="786.05" codeSystem="2.16.840.1.113883.6.103"/></observation></entry>',
    ),
    "ERRORE-b11": append(
        QUESITO,
        '<entry><observation classCode="OBS" moodCode="EVN"><code code="29308-4" codeSystem="2.16.840.1.113883.6.1"/>'
        '<value xsi:type="CD" code="R06" codeSystem="2.16.840.1.113883.6.3"/></observation></entry>',
    ),
    "ERRORE-b12": append(BODY, section("11329-0")),
    "ERRORE-b13": append(BODY, section("55114-3")),
    "ERRORE-b14": rm(f"{BODY}/hl7:component/hl7:section[hl7:code/@code='55110-1']/hl7:text"),
    "ERRORE-b15": append(BODY, section("55107-7")),
    "ERRORE-b16": append(BODY, section("55109-3")),
    "ERRORE-b17": append(
        BODY, section("55109-3", '<text>Nessuna.</text><entry><act classCode="ACT" moodCode="EVN"/></entry>')
    ),
    "ERRORE-b18": append(BODY, section("18783-1")),
    "ERRORE-b65": after(
        f"{ESAME}/hl7:entry",
        '<entry><observation classCode="OBS" moodCode="EVN"><code code="x" codeSystem="1.2.3"/></observation></entry>',
    ),
    "ERRORE-b66": rm(f"{ESAME}/hl7:entry/hl7:act/hl7:statusCode"),
    "ERRORE-b67": rm(f"{ESAME}/hl7:entry/hl7:act/hl7:effectiveTime"),
}
WARNING_MUTANTS = {
    "W001": attr(f"{D}/hl7:code", "displayName", "Altro"),
    "W005": attr(f"{ESAME}/hl7:entry/hl7:act/hl7:code", "codeSystem", "1.2.3"),
}


def test_every_encoded_rule_has_a_mutant() -> None:
    from archive.reporting.cda_rules import RULES

    assert {r.id for r in RULES if not r.warning} == set(MUTANTS)
    assert {r.id for r in RULES if r.warning} == set(WARNING_MUTANTS)


@pytest.fixture
def exposed_cda(reporting: Reporting) -> bytes:  # noqa: F811
    report = make_version(
        reporting,
        exposure="TC: CTDIvol 8,2 mGy.",
        exposure_data={"source": "rdsr", "modality": "CT", "ct": {"ctdivol_max_mgy": 8.2, "dlp_total_mgycm": 412.5}},
    )
    xml = build(report, reporting)
    assert cda_problems(xml) == []
    return xml


def test_each_rule_refuses_its_mutant_by_its_id(exposed_cda: bytes) -> None:
    from archive.reporting.cda_rules import rule_warnings

    assert rule_warnings(etree.fromstring(exposed_cda)) == []
    failures = []
    for rule_id, mutate in MUTANTS.items():
        doc = etree.fromstring(exposed_cda)
        mutate(doc)
        found = {p.rule for p in cda_problems(etree.tostring(doc))}
        if rule_id not in found:
            failures.append((rule_id, sorted(found)))
    assert failures == []
    for rule_id, mutate in WARNING_MUTANTS.items():
        doc = etree.fromstring(exposed_cda)
        mutate(doc)
        assert rule_id in {w.rule for w in rule_warnings(doc)}


def test_the_schema_refuses_what_cda_r2_refuses(exposed_cda: bytes) -> None:
    doc = etree.fromstring(exposed_cda)
    title = _one(doc, f"{D}/hl7:title")
    _one(doc, f"{D}/hl7:effectiveTime").addnext(title)  # title after effectiveTime: out of order
    problems = cda_problems(etree.tostring(doc))
    assert [p.rule for p in problems] == ["XSD"] and "title" in str(problems[0])
    assert [p.rule for p in cda_problems(b"<ClinicalDocument")] == ["XML"]


def test_no_exposure_figures_no_exposure_section_and_a_bad_figure_is_left_out(reporting: Reporting) -> None:  # noqa: F811
    only_source = build(make_version(reporting, exposure_data={"source": "manual"}), reporting)
    assert xp(only_source, "count(//hl7:section[hl7:code/@code='73569-6'])") == 0
    odd = make_version(
        reporting,
        version=2,
        exposure="Esposizione non registrata dalla modalità.",
        exposure_data={"source": "manual", "ct": {"ctdivol_max_mgy": "8,2", "dlp_total_mgycm": 100.0}},
    )
    xml = build(odd, reporting)
    assert cda_problems(xml) == []
    assert xp(xml, "//hl7:section[hl7:code/@code='73569-6']//hl7:observation/hl7:code/@code") == ["113813"]


def test_a_provisional_patient_without_codice_fiscale_is_not_publishable(reporting: Reporting) -> None:  # noqa: F811
    patient = reporting.study.patient
    patient.codice_fiscale, patient.provisional = None, True
    patient.save()
    reporting.study.refresh_from_db()
    rules = {p.rule for p in cda_problems(build(make_version(reporting), reporting))}
    assert rules == {"ERRORE-10a"}


def test_the_catalog_leaves_out_key_object_selections(reporting: Reporting) -> None:  # noqa: F811
    from archive.models import Instance
    from archive.reporting.cda import KEY_OBJECT_SELECTION

    one = Instance.objects.filter(series__study=reporting.study).order_by("pk").first()
    assert one is not None
    Instance.objects.filter(pk=one.pk).update(sop_class_uid=KEY_OBJECT_SELECTION)
    xml = build(make_version(reporting), reporting)
    listed = xp(xml, "//hl7:section[hl7:code/@code='121181']//hl7:observation/hl7:id/@root")
    assert len(listed) == 5 and one.sop_instance_uid not in listed
