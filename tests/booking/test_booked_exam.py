"""The report names the exam as it was booked: the work list, the study page,
the signed PDF (through the hook ``archive.reporting.booked`` the booking
registers), with the DICOM description as a detail; the PDF has the
department, the referring physician, the facility's address and telephone,
one patient identifier and no English, and its CAdES signature verifies.
Report templates are proposed for the booked procedure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from django.test import Client

from archive.models import Report, ReportPhrase, ReportTemplate
from archive.reporting import services as reports
from archive.reporting.booked import Contacts, booked_exam, facility_contacts
from archive.storage import tiers as storage
from booking.models import FacilityContact
from tests.booking.conftest import MARIO_CF, Cup, linked_booking
from tests.pdf_text import pdf_pages
from tests.reporting_helpers import RADIOLOGIST_PASSWORD, Reporting, written_draft
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

LOCATION = "Radiologia, piano terra, torre medica"
ADDRESS = "Strada di Fiume 447, 34149 Trieste"
PHONE = "040 0000 111"
REFERRING = "Dott. Paolo Bassi"
# Words an English label would carry; none belongs on an Italian report.
ENGLISH = ("Accession", "Patient", "Study", "Page", "Signed", "Report", "Date", "Referring", "Sex", "Birth")


@pytest.fixture
def booked(cup: Cup, reporting: Reporting) -> Reporting:  # noqa: F811
    cup.ct_station.location = LOCATION
    cup.ct_station.save()
    FacilityContact.objects.create(facility=cup.region.facility, address=ADDRESS, cup_phone=PHONE)
    linked_booking(cup, reporting.study, referring_physician=REFERRING)
    return reporting


def login(user: object) -> Client:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return client


def test_the_hook_answers_from_the_booking(booked: Reporting) -> None:
    exam = booked_exam(booked.study.pk)
    assert exam is not None
    assert exam.label == "TC torace senza mdc (87.41)"
    assert (exam.department, exam.referring_physician) == (LOCATION, REFERRING)
    assert facility_contacts(booked.study.facility_id) == Contacts(address=ADDRESS, phone=PHONE)


def test_a_study_without_booking_has_no_booked_exam(reporting: Reporting) -> None:  # noqa: F811
    assert booked_exam(reporting.study.pk) is None


def test_the_signed_pdf_names_the_booked_exam_and_its_signature_verifies(booked: Reporting, tmp_path: Path) -> None:
    draft = written_draft(booked)
    signed = reports.report_sign(
        report=draft, user=booked.radiologist, password=RADIOLOGIST_PASSWORD, revision=draft.revision
    )
    pdf = reports.report_file(report=signed, which="pdf")
    (text,) = pdf_pages(pdf)
    study = booked.study
    for expected in (
        "Esame TC torace senza mdc (87.41)",
        f"Descrizione DICOM {study.study_description}",
        f"Reparto {LOCATION}",
        f"Medico prescrittore {REFERRING}",
        ADDRESS,
        f"Tel. {PHONE}",
        f"Numero di prenotazione {study.accession_number}",
        f"Codice fiscale {MARIO_CF}",
    ):
        assert expected in text, expected
    # One patient identifier line: the codice fiscale once, no "ID paziente".
    assert text.count(MARIO_CF) == 1 and "ID paziente" not in text
    for word in ENGLISH:
        assert word not in text, word

    check = reports.report_verify(report=signed)
    assert check.ok, check.reason
    # And by another tool, from the files as stored: the CAdES covers these bytes.
    openssl = shutil.which("openssl")
    if openssl:
        p7m = storage.absolute_path(signed.tier, signed.signature_path)
        content = tmp_path / "referto.pdf"
        content.write_bytes(pdf)
        done = subprocess.run(
            [openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", str(p7m), "-content", str(content)]
            + ["-noverify", "-out", "/dev/null"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def test_the_work_list_and_the_study_page_name_the_booked_exam(booked: Reporting) -> None:
    client = login(booked.radiologist)
    html = client.get("/refertazione/").content.decode()
    assert "TC torace senza mdc" in html and "(87.41)" in html
    assert booked.study.study_description in html  # the DICOM description, as a detail
    assert "Numero di prenotazione" in html and "Accession number" not in html

    html = client.get(f"/refertazione/studi/{booked.study.pk}/").content.decode()
    assert "TC torace senza mdc (87.41)" in html
    assert "Descrizione DICOM" in html and LOCATION in html and REFERRING in html
    assert "Accession number" not in html


def test_the_editor_proposes_the_templates_of_the_procedure_and_authority(booked: Reporting) -> None:
    ours = ReportTemplate.objects.create(
        authority=booked.region.authority, procedure_code="87.41", name="TC torace standard", findings="Nella norma."
    )
    ReportTemplate.objects.create(
        authority=booked.region.authority, procedure_code="88.91.1", name="RM encefalo", findings="Nella norma."
    )
    ReportTemplate.objects.create(
        authority=booked.other_authority, procedure_code="87.41", name="Di Udine", findings="Nella norma."
    )
    ReportPhrase.objects.create(owner=booked.radiologist, title="Non versamento", text="Non versamento pleurico.")
    ReportPhrase.objects.create(owner=booked.colleague, title="Della collega", text="Altro.")
    written_draft(booked)
    html = login(booked.radiologist).get(f"/refertazione/studi/{booked.study.pk}/").content.decode()
    assert f'<option value="{ours.pk}">TC torace standard</option>' in html
    assert "RM encefalo" not in html and "Di Udine" not in html
    assert "Non versamento" in html and "Della collega" not in html
    assert "report-editor.js" in html


def test_inserting_a_template_without_javascript_fills_only_the_empty_sections(booked: Reporting) -> None:
    template = ReportTemplate.objects.create(
        authority=booked.region.authority,
        procedure_code="87.41",
        name="TC torace standard",
        technique="Dal modello: tecnica.",
        findings="Dal modello: descrizione.",
        conclusion="Dal modello: conclusioni.",
    )
    draft = reports.report_draft_start(study=booked.study, user=booked.radiologist)
    response = login(booked.radiologist).post(
        f"/refertazione/referti/{draft.pk}/salva/",
        {
            "revision": draft.revision,
            "clinical_question": draft.clinical_question,
            "technique": "",
            "findings": "Scritto da me.",
            "conclusion": "  ",
            "azione": "modello",
            "modello": template.pk,
        },
    )
    assert response.status_code == 302
    saved = Report.objects.get(pk=draft.pk)
    assert saved.findings == "Scritto da me."  # typed text is never replaced
    assert (saved.technique, saved.conclusion) == ("Dal modello: tecnica.", "Dal modello: conclusioni.")


def test_a_template_of_another_authority_is_refused_and_nothing_is_saved(booked: Reporting) -> None:
    theirs = ReportTemplate.objects.create(
        authority=booked.other_authority, procedure_code="87.41", name="Di Udine", findings="Da Udine."
    )
    draft = reports.report_draft_start(study=booked.study, user=booked.radiologist)
    response = login(booked.radiologist).post(
        f"/refertazione/referti/{draft.pk}/salva/",
        {"revision": draft.revision, "findings": "", "azione": "modello", "modello": theirs.pk},
    )
    assert response.status_code == 400
    assert "Il modello scelto non esiste per questo esame." in response.content.decode()
    saved = Report.objects.get(pk=draft.pk)
    assert saved.findings == "" and saved.revision == draft.revision


def test_an_exam_without_booking_keeps_the_dicom_description_and_the_facility_contacts(
    cup: Cup,
    reporting: Reporting,  # noqa: F811
) -> None:
    FacilityContact.objects.create(facility=cup.region.facility, address=ADDRESS, cup_phone=PHONE)
    row = login(reporting.radiologist).get("/refertazione/").content.decode().split("<tbody>")[1]
    assert "87.41" not in row and f">{reporting.study.study_description}</a>" in row
    draft = written_draft(reporting)
    signed = reports.report_sign(
        report=draft, user=reporting.radiologist, password=RADIOLOGIST_PASSWORD, revision=draft.revision
    )
    (text,) = pdf_pages(reports.report_file(report=signed, which="pdf"))
    assert f"Esame {reporting.study.study_description}" in text
    assert "87.41" not in text and "Descrizione DICOM" not in text and "Reparto" not in text
    assert f"{ADDRESS} – Tel. {PHONE}" in text


def test_the_signed_cda_carries_the_prescription_and_the_booked_procedure(cup: Cup, reporting: Reporting) -> None:  # noqa: F811
    from lxml import etree

    from archive.reporting.cda import cda_problems
    from archive.reporting.cda_rules import NSMAP

    nre = "0100A4001234567"
    linked_booking(cup, reporting.study, referring_physician=REFERRING, nre=nre)
    assert booked_exam(reporting.study.pk).nre == nre  # type: ignore[union-attr]
    from archive.models import StaffProfile

    StaffProfile.objects.filter(user=reporting.radiologist).update(codice_fiscale="CSSSFN70A01L424X")
    draft = written_draft(reporting)
    signed = reports.report_sign(
        report=draft, user=reporting.radiologist, password=RADIOLOGIST_PASSWORD, revision=draft.revision
    )
    cda = reports.report_file(report=signed, which="cda")
    assert cda_problems(cda) == []
    doc = etree.fromstring(cda)
    order = "/hl7:ClinicalDocument/hl7:inFulfillmentOf/hl7:order"
    assert doc.xpath(f"string({order}/hl7:id[@root='2.16.840.1.113883.2.9.4.3.9']/@extension)", namespaces=NSMAP) == nre
    assert doc.xpath("string(//hl7:serviceEvent/hl7:code/@code)", namespaces=NSMAP) == "RAD_PROG"
    assert (
        doc.xpath("string(//hl7:section[hl7:code/@code='55111-9']//hl7:act/hl7:code/@code)", namespaces=NSMAP)
        == "87.41"
    )
