"""The signed report as an HL7 CDA R2 document: the *Referto di Radiologia* of the FSE.

Each signed version of a report (original, correction, addendum) becomes one
CDA R2 document following the HL7 Italia implementation guide for the
Referto di Radiologia (LOINC 68604-8; national templateId
``2.16.840.1.113883.2.9.10.1.7.1``, version :data:`GUIDE_VERSION`), as the
FSE 2.0 gateway receives it attached to the signed PDF/A-3
(:mod:`archive.reporting.pdfa`). The header carries the Italian realm, the
patient by codice fiscale, the author and the legal authenticator (the
signer, at the signing time), the health authority as custodian, the order
(the prescription's NRE and the accession number), the service event, the
version chain (``relatedDocument`` RPLC for a correction, APND for an
addendum) and the encounter; the body the guide's sections filled from the
report's texts, the exposure (D.Lgs 101/2020) with coded doses when the
report has them, and the DICOM Object Catalog of the study's instances.

:func:`cda_problems` is the project's own check of a document: the CDA R2
schema subset the project produces (``schema/cda/POCD_MT000040_subset.xsd``,
the project's file: the HL7 XSD is not in any installable package) and the
Ministry of Health's schematron rules for the RAD document that apply to it
(:mod:`archive.reporting.cda_rules`), each with the Ministry's rule id.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone
from lxml import etree

from archive.reporting.booked import BookedExam, Contacts
from archive.reporting.cda_rules import CdaProblem, rule_problems

NS = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
GUIDE_TEMPLATE_ROOT = "2.16.840.1.113883.2.9.10.1.7.1"
# The version of the HL7 Italia guide the documents follow: the one the
# Ministry's schematron (schematronFSE_RAD v4.1, "Referto di Radiologia 1.1") checks.
GUIDE_VERSION = "1.1"
LOINC = "2.16.840.1.113883.6.1"
DCM = "1.2.840.10008.2.16.4"
ICD9CM = "2.16.840.1.113883.6.103"
OID_CODICE_FISCALE = "2.16.840.1.113883.2.9.4.3.2"
OID_NRE = "2.16.840.1.113883.2.9.4.3.9"
OID_ASL = "2.16.840.1.113883.2.9.4.1.2"  # the Ministry's codes of the health authorities (FLS11)
OID_ACT_CODE_IT = "2.16.840.1.113883.2.9.5.1.4"
OID_CONFIDENTIALITY = "2.16.840.1.113883.5.25"
OID_GENDER = "2.16.840.1.113883.5.1"
OID_PRIORITY = "2.16.840.1.113883.5.7"
OID_SOP_CLASS = "1.2.840.10008.2.6.1"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "cda" / "POCD_MT000040_subset.xsd"

_SECTION = {
    "catalog": ("121181", DCM, "DCM", "DICOM Object Catalog"),
    "question": ("18785-6", LOINC, "LOINC", "Quesito diagnostico"),
    "procedure": ("55111-9", LOINC, "LOINC", "Esame eseguito"),
    "findings": ("18782-3", LOINC, "LOINC", "Referto"),
    "conclusion": ("55110-1", LOINC, "LOINC", "Conclusioni"),
    # DICOM PS3.20's "Radiation Exposure and Protection Information" section.
    "exposure": ("73569-6", LOINC, "LOINC", "Informazioni sull'esposizione"),
}
# The study's prescription priority (Study.priority) as HL7 ActPriority.
_PRIORITY = {"U": ("UR", "Urgente"), "B": ("EL", "Breve"), "D": ("EL", "Differita"), "P": ("R", "Programmata")}


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _el(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    node = etree.SubElement(parent, _q(tag))
    for key, value in attrs.items():
        if key == "xsi_type":
            node.set(f"{{{XSI}}}type", value)
        else:
            node.set(key, value)
    if text is not None:
        node.text = text
    return node


def _ts(value: dt.datetime) -> str:
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    return local.strftime("%Y%m%d%H%M%S%z")


def _oid_root() -> str:
    return str(getattr(settings, "PACS_CDA_OID_ROOT", "") or "2.16.840.1.113883.2.9.2.999")


def _split_name(full: str) -> tuple[str, str]:
    """(given, family) of "Mario Rossi" or of a DICOM "ROSSI^MARIO"."""
    full = full.strip()
    if "^" in full:
        family, _sep, rest = full.partition("^")
        given = rest.split("^")[0]
        return given.strip() or "-", family.strip() or "-"
    parts = full.split()
    if len(parts) >= 2:
        return " ".join(parts[:-1]), parts[-1]
    return "-", full or "-"


def _person_name(parent: etree._Element, given: str, family: str) -> None:
    name = _el(parent, "name")
    _el(name, "family", family or "-")
    _el(name, "given", given or "-")


def _user_name(user: Any, fallback: str) -> tuple[str, str]:
    first = (getattr(user, "first_name", "") or "").strip()
    last = (getattr(user, "last_name", "") or "").strip()
    if first and last:
        return first, last
    return _split_name(fallback or getattr(user, "username", "") or "")


def user_fiscal_code(user: Any, certificate_pem: str = "") -> str:
    """A professional's codice fiscale: the staff profile's, else the qualified certificate's.

    An Italian qualified signing certificate names its holder by the
    semantic identifier ``serialNumber=TINIT-<codice fiscale>`` (ETSI EN
    319 412-1); the demonstration certificates do not, so the staff profile
    is asked first. "" when neither knows it: the document is still made,
    and :func:`cda_problems` says what it lacks.
    """
    profile = getattr(user, "staff_profile", None) if user is not None else None
    code = (getattr(profile, "codice_fiscale", "") or "").strip().upper() if profile is not None else ""
    if code:
        return code
    if certificate_pem:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        try:
            cert = x509.load_pem_x509_certificate(certificate_pem.encode())
        except ValueError:
            return ""
        for attr in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
            value = str(attr.value)
            if value.upper().startswith("TINIT-"):
                return value[6:].strip().upper()
    return ""


def _fiscal_id(parent: etree._Element, code: str) -> None:
    if code:
        _el(parent, "id", root=OID_CODICE_FISCALE, extension=code, assigningAuthorityName="MEF")
    else:
        _el(parent, "id", nullFlavor="UNK")


def document_ids(report: Any) -> dict[str, str]:
    """The CDA identifiers of a signed version: id, setId and versionNumber.

    A correction replaces the version it corrects in the same set (RPLC: same
    setId, the next versionNumber); an original or an addendum (APND) starts
    a set of its own whose setId is its id (version 1).
    """
    root = f"{_oid_root()}.4.4"
    study_uid = report.study.study_instance_uid

    def own(row: Any) -> str:
        return f"{study_uid}.{row.version}"

    chain: list[Any] = [report]
    row = report
    while row.kind == "correction" and row.previous is not None:
        row = row.previous
        chain.append(row)
    head = chain[-1]
    return {"root": root, "id": own(report), "set_id": own(head), "version": str(len(chain))}


def _text(parent: etree._Element, content: str) -> None:
    text = _el(parent, "text")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", content or "") if p.strip()]
    for paragraph in paragraphs or ["-"]:
        node = _el(text, "paragraph")
        lines = paragraph.splitlines()
        node.text = lines[0]
        for line in lines[1:]:
            br = _el(node, "br")
            br.tail = line


def _section(body: etree._Element, key: str, content: str | None = None) -> etree._Element:
    code, system, system_name, title = _SECTION[key]
    section = _el(_el(body, "component"), "section", ID=f"sec-{key}")
    _el(section, "code", code=code, codeSystem=system, codeSystemName=system_name, displayName=title)
    _el(section, "title", title)
    if content is not None:
        _text(section, content)
    return section


def _pq_observation(parent: etree._Element, code: str, name: str, value: float, unit: str) -> None:
    entry = _el(parent, "entry")
    obs = _el(entry, "observation", classCode="OBS", moodCode="EVN")
    _el(obs, "code", code=code, codeSystem=DCM, codeSystemName="DCM", displayName=name)
    _el(obs, "statusCode", code="completed")
    _el(obs, "value", xsi_type="PQ", value=f"{float(value):g}", unit=unit)


def _exposure(procedure: etree._Element, report: Any) -> None:
    """The exposure sub-section of "Esame eseguito": the confirmed text, and coded doses."""
    text = (getattr(report, "exposure", "") or "").strip()
    data = getattr(report, "exposure_data", None) or {}
    ct = data.get("ct") or {}
    projection = data.get("projection") or {}
    nm = data.get("nm") or {}
    # (DICOM code, its meaning, the figure, its UCUM unit): the figures the report has.
    doses = [
        (code, meaning, value, unit)
        for code, meaning, value, unit in (
            ("113830", "Mean CTDIvol", ct.get("ctdivol_max_mgy"), "mGy"),
            ("113813", "CT Dose Length Product Total", ct.get("dlp_total_mgycm"), "mGy.cm"),
            ("113722", "Dose Area Product Total", projection.get("dap_total_gycm2"), "Gy.cm2"),
            ("111636", "Entrance Exposure at RP", projection.get("entrance_dose_mgy"), "mGy"),
            ("113507", "Administered activity", nm.get("activity_mbq"), "MBq"),
        )
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    if not text and not doses:
        return
    sub = _el(_el(procedure, "component"), "section", ID="sec-exposure")
    code, system, system_name, title = _SECTION["exposure"]
    _el(sub, "code", code=code, codeSystem=system, codeSystemName=system_name, displayName=title)
    _el(sub, "title", title)
    _text(sub, text or "-")
    for dose_code, meaning, value, unit in doses:
        _pq_observation(sub, dose_code, meaning, value, unit)


def _catalog(body: etree._Element, study: Any, instances: Iterable[Any]) -> None:
    """The DICOM Object Catalog (DICOM PS3.20): study, its series, their SOP instances."""
    by_series: dict[str, tuple[Any, list[Any]]] = {}
    for instance in instances:
        series = instance.series
        by_series.setdefault(series.series_instance_uid, (series, []))[1].append(instance)
    section = _section(body, "catalog")
    act = _el(_el(section, "entry"), "act", classCode="ACT", moodCode="EVN")
    _el(act, "id", root=study.study_instance_uid)
    _el(act, "code", code="113014", codeSystem=DCM, codeSystemName="DCM", displayName="Study")
    for series_uid, (series, members) in sorted(by_series.items()):
        rel = _el(act, "entryRelationship", typeCode="COMP")
        series_act = _el(rel, "act", classCode="ACT", moodCode="EVN")
        _el(series_act, "id", root=series_uid)
        code = _el(series_act, "code", code="113015", codeSystem=DCM, codeSystemName="DCM", displayName="Series")
        qualifier = _el(code, "qualifier")
        _el(qualifier, "name", code="121139", codeSystem=DCM, codeSystemName="DCM", displayName="Modality")
        _el(qualifier, "value", code=series.modality or "OT", codeSystem="1.2.840.10008.2.16.4", codeSystemName="DCM")
        for instance in sorted(members, key=lambda i: (i.instance_number or 0, i.sop_instance_uid)):
            inner = _el(series_act, "entryRelationship", typeCode="COMP")
            obs = _el(inner, "observation", classCode="DGIMG", moodCode="EVN")
            _el(obs, "id", root=instance.sop_instance_uid)
            _el(obs, "code", code=instance.sop_class_uid, codeSystem=OID_SOP_CLASS, codeSystemName="DCMUID")


def report_cda(
    *,
    report: Any,
    signer_name: str,
    signed_at: dt.datetime,
    booked: BookedExam | None = None,
    contacts: Contacts | None = None,
    signer: Any = None,
    signer_fiscal_code: str = "",
    author_fiscal_code: str | None = None,
    instances: Iterable[Any] | None = None,
    confidentiality: str = "N",
) -> bytes:
    """The CDA R2 XML (UTF-8) of ``report`` as signed by ``signer_name`` at ``signed_at``.

    Parameters
    ----------
    report : archive.models.Report
        The version being signed; its study, patient, facility and authority
        fill the header, its texts and exposure the body, its ``previous``
        the version chain.
    signer_name, signed_at
        The legal authenticator and the time of the signature (as on the PDF).
    booked, contacts
        The booking (procedure code, NRE, referring physician) and the
        facility's telephone (the author's ``telecom``), when known.
    signer, signer_fiscal_code
        The signing user (for the given and family names) and their codice
        fiscale (:func:`user_fiscal_code`).
    author_fiscal_code
        The draft's author's; None: asked of the author's staff profile.
    instances
        The study's instances for the DICOM Object Catalog; None: the
        study's current ones.
    confidentiality
        "N" normal, "R" restricted, "V" very restricted (the citizen's choices).
    """
    study = report.study
    patient = study.patient
    facility = study.facility
    authority = facility.authority
    ids = document_ids(report)
    root = etree.Element(_q("ClinicalDocument"), nsmap={None: NS, "xsi": XSI})
    _el(root, "realmCode", code="IT")
    _el(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_MT000040")
    _el(root, "templateId", root=GUIDE_TEMPLATE_ROOT, extension=GUIDE_VERSION)
    _el(root, "id", root=ids["root"], extension=ids["id"], assigningAuthorityName=authority.name[:64])
    _el(
        root,
        "code",
        code="68604-8",
        codeSystem=LOINC,
        codeSystemName="LOINC",
        displayName="Referto radiologico",
    )
    title = "Referto radiologico"
    if report.kind == "correction":
        title += f" - rettifica (versione {report.version})"
    elif report.kind == "addendum":
        title += f" - integrazione (versione {report.version})"
    _el(root, "title", title)
    _el(root, "effectiveTime", value=_ts(signed_at))
    _el(root, "confidentialityCode", code=confidentiality, codeSystem=OID_CONFIDENTIALITY)
    _el(root, "languageCode", code="it-IT")
    _el(root, "setId", root=ids["root"], extension=ids["set_id"], assigningAuthorityName=authority.name[:64])
    _el(root, "versionNumber", value=ids["version"])

    # recordTarget: the patient by codice fiscale, and the archive's own identifier.
    role = _el(_el(root, "recordTarget"), "patientRole")
    if patient.codice_fiscale:
        _fiscal_id(role, patient.codice_fiscale)
    _el(role, "id", root=f"{_oid_root()}.4.1", extension=str(patient.pk), assigningAuthorityName=authority.name[:64])
    person = _el(role, "patient")
    given, family = patient.given_name, patient.family_name
    if not (given and family):
        given, family = _split_name(study.patient_name)
    _person_name(person, given, family)
    sex = (patient.sex or study.patient_sex or "").upper()[:1]
    if sex in ("M", "F"):
        _el(person, "administrativeGenderCode", code=sex, codeSystem=OID_GENDER)
    else:
        _el(person, "administrativeGenderCode", code="UN", codeSystem=OID_GENDER)
    birth = patient.birth_date or study.patient_birth_date
    if birth:
        _el(person, "birthTime", value=birth.strftime("%Y%m%d"))
    else:
        _el(person, "birthTime", nullFlavor="UNK")

    # author: who wrote the draft.
    author_user = report.author
    author = _el(root, "author")
    _el(author, "time", value=_ts(signed_at))
    assigned = _el(author, "assignedAuthor")
    if author_fiscal_code is None:
        author_fiscal_code = user_fiscal_code(author_user)
    if signer is not None and getattr(signer, "pk", None) == getattr(author_user, "pk", None):
        author_fiscal_code = author_fiscal_code or signer_fiscal_code
    _fiscal_id(assigned, author_fiscal_code)
    phone = (contacts.phone if contacts is not None else "").strip()
    if phone:
        _el(assigned, "telecom", use="WP", value="tel:" + re.sub(r"[^0-9+]", "", phone))
    else:
        _el(assigned, "telecom", use="WP", nullFlavor="NI")
    a_given, a_family = _user_name(author_user, signer_name if signer is None else "")
    _person_name(_el(assigned, "assignedPerson"), a_given, a_family)

    # custodian: the health authority that keeps the document.
    custodian = _el(_el(_el(root, "custodian"), "assignedCustodian"), "representedCustodianOrganization")
    _el(custodian, "id", root=OID_ASL, extension=authority.code, assigningAuthorityName="Ministero della Salute")
    _el(custodian, "name", authority.name)

    # legalAuthenticator: the signer, at the signing time.
    legal = _el(root, "legalAuthenticator")
    _el(legal, "time", value=_ts(signed_at))
    _el(legal, "signatureCode", code="S")
    entity = _el(legal, "assignedEntity")
    _fiscal_id(entity, signer_fiscal_code)
    s_given, s_family = _user_name(signer, signer_name) if signer is not None else _split_name(signer_name)
    _person_name(_el(entity, "assignedPerson"), s_given, s_family)

    # inFulfillmentOf: the order, by its prescription (NRE) and accession number.
    order = _el(_el(root, "inFulfillmentOf"), "order", classCode="ACT", moodCode="RQO")
    nre = (booked.nre if booked is not None else "").strip()
    if nre:
        _el(order, "id", root=OID_NRE, extension=nre, assigningAuthorityName="Ministero delle Finanze")
    if study.accession_number:
        _el(order, "id", root=f"{_oid_root()}.4.5", extension=study.accession_number, assigningAuthorityName="RIS")
    if not nre and not study.accession_number:
        _el(order, "id", nullFlavor="UNK")
    if study.priority in _PRIORITY:
        code, name = _PRIORITY[study.priority]
        _el(order, "priorityCode", code=code, codeSystem=OID_PRIORITY, displayName=name)

    # documentationOf: the radiology service, programmed (booked) or direct access.
    event = _el(_el(root, "documentationOf"), "serviceEvent", classCode="ACT", moodCode="EVN")
    planned = booked is not None
    _el(
        event,
        "code",
        code="RAD_PROG" if planned else "RAD_DIR",
        codeSystem=OID_ACT_CODE_IT,
        displayName="Prestazione radiologica programmata" if planned else "Prestazione radiologica ad accesso diretto",
    )
    if study.study_date:
        _el(_el(event, "effectiveTime"), "low", value=study.study_date.strftime("%Y%m%d"))

    # relatedDocument: the version this one replaces or appends to.
    previous = report.previous
    if previous is not None and report.kind in ("correction", "addendum"):
        parent_ids = document_ids(previous)
        related = _el(root, "relatedDocument", typeCode="RPLC" if report.kind == "correction" else "APND")
        parent = _el(related, "parentDocument")
        _el(parent, "id", root=parent_ids["root"], extension=parent_ids["id"])
        _el(parent, "setId", root=parent_ids["root"], extension=parent_ids["set_id"])
        _el(parent, "versionNumber", value=parent_ids["version"])

    # componentOf: the encounter (the exam) at the facility.
    encounter = _el(_el(root, "componentOf"), "encompassingEncounter")
    _el(encounter, "id", root=f"{_oid_root()}.4.6", extension=study.study_instance_uid)
    when = _el(encounter, "effectiveTime")
    if study.study_date:
        _el(when, "low", value=study.study_date.strftime("%Y%m%d"))
    else:
        when.set("nullFlavor", "UNK")
    facility_node = _el(_el(encounter, "location"), "healthCareFacility")
    _el(facility_node, "id", root=f"{_oid_root()}.4.7", extension=facility.code)
    provider = _el(facility_node, "serviceProviderOrganization")
    _el(provider, "id", root=OID_ASL, extension=authority.code)
    _el(provider, "name", facility.name)

    body = _el(_el(root, "component"), "structuredBody")
    if instances is None:
        from archive.models import Instance

        # The study's images and documents; its manifests and rejection notes (Key Object
        # Selection) are about the instances, not among them (published beside the report).
        instances = (
            Instance.objects.filter(series__study=study)
            .exclude(sop_class_uid=KEY_OBJECT_SELECTION)
            .select_related("series")
        )
    _catalog(body, study, instances)
    if report.clinical_question.strip():
        _section(body, "question", report.clinical_question)
    procedure_label = booked.label if booked is not None else (study.study_description or "Esame radiologico")
    procedure = _section(body, "procedure", "\n".join(x for x in (procedure_label, report.technique.strip()) if x))
    act = _el(_el(procedure, "entry"), "act", classCode="ACT", moodCode="EVN")
    if booked is not None and booked.procedure_code:
        # The CUP catalogue's codes are the ICD-9-CM procedure codes (87.41: TC del torace).
        _el(
            act,
            "code",
            code=booked.procedure_code,
            codeSystem=ICD9CM,
            codeSystemName="ICD-9-CM",
            displayName=booked.procedure_description[:200],
        )
    else:
        uncoded = _el(act, "code", nullFlavor="OTH")
        _el(uncoded, "originalText", study.study_description or "Esame radiologico")
    _el(act, "statusCode", code="completed")
    if study.study_date:
        _el(act, "effectiveTime", value=study.study_date.strftime("%Y%m%d"))
    else:
        _el(act, "effectiveTime", nullFlavor="UNK")
    _exposure(procedure, report)
    findings = report.findings.strip() or "Si vedano le conclusioni."
    _section(body, "findings", findings)
    if report.conclusion.strip():
        _section(body, "conclusion", report.conclusion)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


@cache
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA_PATH)))


def cda_problems(xml: bytes) -> list[CdaProblem]:
    """Why ``xml`` is not a valid Referto di Radiologia ([] when it is).

    First well-formedness and the CDA R2 schema subset (rule "XSD"), then
    every encoded rule of the Ministry's schematron for the RAD document
    (:data:`archive.reporting.cda_rules.RULES`), each reported with its id.
    """

    try:
        doc = etree.fromstring(xml, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        return [CdaProblem("XML", str(exc))]
    problems: list[CdaProblem] = []
    schema = _schema()
    if not schema.validate(doc):
        problems.extend(CdaProblem("XSD", f"line {e.line}: {e.message}") for e in schema.error_log)
    problems.extend(rule_problems(doc))
    return problems
