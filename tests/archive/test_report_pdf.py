from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from archive.models import Report
from archive.reporting.pdf import report_pdf
from tests.pdf_text import pdf_pages
from tests.reporting_helpers import PATIENT_CF, Reporting, reporting  # noqa: F401

SIGNED_AT = dt.datetime(2026, 3, 14, 9, 5, tzinfo=ZoneInfo("Europe/Rome"))


def make_report(rep: Reporting, **fields: object) -> Report:
    values = {
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


def test_report_pdf_has_header_patient_exam_sections_and_signature(reporting: Reporting) -> None:  # noqa: F811
    report = make_report(reporting)

    data = report_pdf(report=report, signer_name="Stefano Cossutta", signed_at=SIGNED_AT)

    assert data.startswith(b"%PDF-")
    pages = pdf_pages(data)
    assert len(pages) == 1
    text = pages[0]
    for expected in (
        "Ospedale di Cattinara",
        "Azienda sanitaria universitaria Giuliano Isontina",
        "Referto radiologico",
        "ROSSI MARIO",
        PATIENT_CF,
        "12/03/1956",
        "CT",
        reporting.study.accession_number,
        "Quesito clinico",
        "Dispnea da sforzo, fumatore: escludere lesioni polmonari.",
        "Tecnica",
        "TC del torace senza e con mezzo di contrasto.",
        "Descrizione",
        "Non versamento pleurico.",
        "Conclusioni",
        "Quadro nei limiti della norma.",
        "Firmato digitalmente da",
        "Stefano Cossutta",
        "14/03/2026 alle 09:05",
        "Documento firmato digitalmente in formato CAdES da Stefano Cossutta",
        "Pagina 1",
    ):
        assert expected in text, expected
    # Without a booking the DICOM description names the exam; the codice fiscale is the one identifier.
    assert f"Esame {reporting.study.study_description}" in text
    assert text.count(PATIENT_CF) == 1 and "ID paziente" not in text and "Accession" not in text


def test_a_patient_without_codice_fiscale_has_the_hospital_code_as_the_one_identifier(
    reporting: Reporting,  # noqa: F811
) -> None:
    patient = reporting.study.patient
    patient.codice_fiscale, patient.provisional = None, True  # a hospital's number only
    patient.save()
    reporting.study.refresh_from_db()
    text = " ".join(pdf_pages(report_pdf(report=make_report(reporting), signer_name="S C", signed_at=SIGNED_AT)))
    assert f"Codice paziente {reporting.study.dicom_patient_id}" in text
    assert "Codice fiscale" not in text


def test_a_correction_names_the_version_it_corrects(reporting: Reporting) -> None:  # noqa: F811
    first = make_report(reporting)
    Report.objects.filter(pk=first.pk).update(
        status=Report.Status.SIGNED,
        signed_at=SIGNED_AT,
        signer_name="Stefano Cossutta",
        pdf_sha256="0" * 64,
        signature_path="x.p7m",
    )
    correction = make_report(
        reporting, version=2, previous=Report.objects.get(pk=first.pk), kind=Report.Kind.CORRECTION
    )

    text = " ".join(pdf_pages(report_pdf(report=correction, signer_name="Chiara Degano", signed_at=SIGNED_AT)))

    assert "Rettifica del referto v1 firmato il 14/03/2026 da Stefano Cossutta" in text
    assert "2 – rettifica" in text


def test_a_long_report_flows_onto_further_pages_with_a_footer_on_each(reporting: Reporting) -> None:  # noqa: F811
    paragraph = (
        "Il parenchima polmonare presenta una trama interstiziale lievemente accentuata in sede basale "
        "bilaterale, senza addensamenti a focolaio né lesioni nodulari sospette di dimensioni significative. "
    )
    findings = "\n\n".join(f"{i}. {paragraph * 3}" for i in range(1, 31))
    report = make_report(reporting, findings=findings, conclusion="Conclusione in fondo al referto.")

    pages = pdf_pages(report_pdf(report=report, signer_name="Stefano Cossutta", signed_at=SIGNED_AT))

    assert len(pages) >= 2
    for number, page in enumerate(pages, start=1):
        assert "Documento firmato digitalmente in formato CAdES da Stefano Cossutta" in page
        assert f"Pagina {number}" in page
    assert "30. Il parenchima" in " ".join(pages[1:])
    assert "Conclusione in fondo al referto." in pages[-1]
    assert "Firmato digitalmente da" in pages[-1]


def test_text_that_looks_like_markup_is_printed_as_written(reporting: Reporting) -> None:  # noqa: F811
    report = make_report(reporting, conclusion="Lesione <2 cm & margini netti")

    text = " ".join(pdf_pages(report_pdf(report=report, signer_name="Stefano Cossutta", signed_at=SIGNED_AT)))

    # The escaped "<" is its own text fragment, which the helper joins with a space.
    assert "Lesione <2 cm & margini netti" in text.replace("< ", "<")
