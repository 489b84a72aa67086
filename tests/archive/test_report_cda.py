"""The signed report as a CDA R2 (Referto di Radiologia) inside a PDF/A-3: schema, Ministry rules, attachment, CAdES."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

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
