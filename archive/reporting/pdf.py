"""The PDF of a signed report: what the patient receives and what the
radiologist's CAdES signature covers.

A4, the facility, its health authority, address and telephone at the top,
the patient (one identifier: the codice fiscale, or the DICOM PatientID when
there is none), the exam as it was booked (the catalogue procedure and its
code, with the DICOM description as a detail, the department, the referring
physician), the four sections of the report, then who signed and when. Every
label is Italian, as on the citizen's pages ("Numero di prenotazione"). Long texts
wrap and flow onto further pages; every page's footer says the document is
signed digitally (the signature is the detached ``.p7m`` stored next to it)
and gives the page number. The text is left uncompressed so that it can be
searched and read by assistive tools.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from django.utils import formats, timezone
from django.utils.translation import gettext as _
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import HRFlowable, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from archive.reporting.booked import BookedExam, Contacts

logger = logging.getLogger(__name__)


def _register_fonts() -> tuple[str, str, str]:
    """Bitstream Vera, the TrueType family shipped inside reportlab, embedded in every PDF.

    A PDF/A (archive.reporting.pdfa) embeds every font it uses: the standard
    Helvetica of PDF readers is not, so the report is drawn with fonts that
    travel with reportlab itself and need nothing installed on the machine.
    """
    import reportlab
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    folder = Path(reportlab.__file__).resolve().parent / "fonts"
    faces = {"PacsSans": "Vera.ttf", "PacsSans-Bold": "VeraBd.ttf", "PacsSans-Oblique": "VeraIt.ttf"}
    faces["PacsSans-BoldOblique"] = "VeraBI.ttf"
    for name, file in faces.items():
        if name not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(TTFont(name, str(folder / file)))
    addMapping("PacsSans", 0, 0, "PacsSans")
    addMapping("PacsSans", 1, 0, "PacsSans-Bold")
    addMapping("PacsSans", 0, 1, "PacsSans-Oblique")
    addMapping("PacsSans", 1, 1, "PacsSans-BoldOblique")
    return "PacsSans", "PacsSans-Bold", "PacsSans-Oblique"


_FONT, _FONT_BOLD, _FONT_ITALIC = _register_fonts()

_MARGIN = 20 * mm
_FOOTER = 12 * mm

_BASE = ParagraphStyle("base", fontName=_FONT, fontSize=10.5, leading=14, alignment=TA_LEFT)
_STYLES = {
    "facility": ParagraphStyle("facility", parent=_BASE, fontName=_FONT_BOLD, fontSize=15, leading=19),
    "authority": ParagraphStyle("authority", parent=_BASE, fontSize=10, leading=13, textColor=colors.dimgrey),
    "title": ParagraphStyle("title", parent=_BASE, fontName=_FONT_BOLD, fontSize=13, leading=17),
    "note": ParagraphStyle("note", parent=_BASE, fontName=_FONT_ITALIC, fontSize=10, leading=13),
    "label": ParagraphStyle("label", parent=_BASE, fontName=_FONT_BOLD, fontSize=10, leading=13),
    "value": ParagraphStyle("value", parent=_BASE, fontSize=10, leading=13),
    "heading": ParagraphStyle(
        "heading", parent=_BASE, fontName=_FONT_BOLD, fontSize=11.5, leading=15, spaceBefore=8, spaceAfter=3
    ),
    "body": ParagraphStyle("body", parent=_BASE, spaceAfter=4),
    "empty": ParagraphStyle("empty", parent=_BASE, textColor=colors.grey),
    "signature": ParagraphStyle("signature", parent=_BASE, fontSize=10.5, leading=14),
}


def _date(value: dt.date | None) -> str:
    return formats.date_format(value, "d/m/Y") if value else "—"


def _paragraphs(text: str, style: str) -> list[Paragraph]:
    """One paragraph per block of text; single line breaks are kept."""
    blocks = [block.strip() for block in text.replace("\r\n", "\n").split("\n\n")]
    return [Paragraph(escape(block).replace("\n", "<br/>"), _STYLES[style]) for block in blocks if block]


def _facts(rows: list[tuple[str, str]]) -> Table:
    data = [
        [Paragraph(escape(label), _STYLES["label"]), Paragraph(escape(value or "—"), _STYLES["value"])]
        for label, value in rows
    ]
    table = Table(data, colWidths=[42 * mm, A4[0] - 2 * _MARGIN - 42 * mm], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("FONTNAME", (0, 0), (-1, -1), _FONT),  # the cells' default: embedded, as PDF/A wants
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
                ("TOPPADDING", (0, 0), (-1, -1), 1.5),
            ]
        )
    )
    return table


def _patient_rows(study: Any) -> list[tuple[str, str]]:
    patient = study.patient
    name = f"{patient.family_name} {patient.given_name}".strip() or study.patient_name.replace("^", " ").strip()
    birth_date = patient.birth_date or study.patient_birth_date
    # One identifier: the codice fiscale, which is also the DICOM PatientID of
    # a patient the CUP registered; the hospital's own number only without one.
    identifier = (
        (_("Codice fiscale"), patient.codice_fiscale)
        if patient.codice_fiscale
        else (_("Codice paziente"), study.dicom_patient_id)
    )
    return [
        (_("Paziente"), name),
        identifier,
        (_("Data di nascita"), _date(birth_date)),
        (_("Sesso"), patient.sex or study.patient_sex),
    ]


def exam_name(study: Any, booked: BookedExam | None) -> str:
    """The exam's name: the booked procedure with its code, else the DICOM description."""
    return booked.label if booked is not None else study.study_description


def _exam_rows(study: Any, report: Any, booked: BookedExam | None) -> list[tuple[str, str]]:
    rows = [(_("Esame"), exam_name(study, booked))]
    if booked is not None and study.study_description:
        rows.append((_("Descrizione DICOM"), study.study_description))
    if booked is not None and booked.department:
        rows.append((_("Reparto"), booked.department))
    referring = (booked.referring_physician if booked is not None else "") or study.referring_physician_name.replace(
        "^", " "
    ).strip()
    return [
        *rows,
        (_("Medico prescrittore"), referring),
        (_("Modalità"), ", ".join(study.modality_list())),
        # The same date and the same name of the number as the citizen's pages and zips.
        (_("Data dell'esame"), _date(study.performed_on())),
        (_("Numero di prenotazione"), study.accession_number),
        (_("Versione"), f"{report.version} – {report.get_kind_display()}"),
    ]


def report_pdf(
    *,
    report: Any,
    signer_name: str,
    signed_at: dt.datetime,
    booked: BookedExam | None = None,
    contacts: Contacts | None = None,
) -> bytes:
    """The PDF of ``report`` signed by ``signer_name`` at ``signed_at``.

    Parameters
    ----------
    report : archive.models.Report
        Its study, patient and facility give the header; its four sections the body.
    signer_name : str
        The name on the signer's certificate (``signing.signer_name``).
    signed_at : datetime
        Printed in local time; the signature's signing-time attribute should say the same.
    booked : BookedExam, optional
        The study's booking (``archive.reporting.booked``): the exam's name and
        code, department, referring physician. Without it the DICOM header
        names the exam.
    contacts : Contacts, optional
        The facility's address and telephone, under its name.
    """
    study = report.study
    facility = study.facility
    when = timezone.localtime(signed_at)
    signed_text = _("%(date)s alle %(time)s") % {"date": when.strftime("%d/%m/%Y"), "time": when.strftime("%H:%M")}
    title = _("Referto radiologico")
    if report.kind != report.Kind.ORIGINAL:
        title = f"{title} – {report.get_kind_display()}"

    story: list[Any] = [
        Paragraph(escape(facility.name), _STYLES["facility"]),
        Paragraph(escape(facility.authority.name), _STYLES["authority"]),
    ]
    where = []
    if contacts is not None and contacts.address:
        where.append(contacts.address)
    if contacts is not None and contacts.phone:
        where.append(_("Tel. %(phone)s") % {"phone": contacts.phone})
    if where:
        story.append(Paragraph(escape(" – ".join(where)), _STYLES["authority"]))
    story += [
        Spacer(0, 4 * mm),
        HRFlowable(width="100%", thickness=0.6, color=colors.grey),
        Spacer(0, 3 * mm),
        Paragraph(escape(title), _STYLES["title"]),
    ]
    previous = report.previous
    if previous is not None:
        if report.kind == report.Kind.ADDENDUM:
            note = _("Integrazione al referto v%(v)s firmato il %(date)s da %(signer)s.")
        else:
            note = _("Rettifica del referto v%(v)s firmato il %(date)s da %(signer)s: lo sostituisce.")
        story.append(
            Paragraph(
                escape(
                    note
                    % {
                        "v": previous.version,
                        "date": timezone.localtime(previous.signed_at).strftime("%d/%m/%Y")
                        if previous.signed_at
                        else "—",
                        "signer": previous.signer_name or "—",
                    }
                ),
                _STYLES["note"],
            )
        )
    story += [
        Spacer(0, 3 * mm),
        _facts(_patient_rows(study)),
        Spacer(0, 2 * mm),
        _facts(_exam_rows(study, report, booked)),
        Spacer(0, 2 * mm),
    ]
    sections = [
        (_("Quesito clinico"), report.clinical_question),
        (_("Tecnica"), report.technique),
        (_("Descrizione"), report.findings),
        (_("Conclusioni"), report.conclusion),
    ]
    for heading, text in sections:
        body = _paragraphs(text, "body") or [Paragraph(escape(_("Non indicato.")), _STYLES["empty"])]
        # A heading never ends a page alone.
        story.append(KeepTogether([Paragraph(escape(heading), _STYLES["heading"]), body[0]]))
        story.extend(body[1:])
    story += [
        Spacer(0, 8 * mm),
        KeepTogether(
            [
                HRFlowable(width="100%", thickness=0.6, color=colors.grey),
                Spacer(0, 2 * mm),
                Paragraph(
                    escape(_("Firmato digitalmente da %(signer)s il %(when)s."))
                    % {"signer": f"<b>{escape(signer_name)}</b>", "when": escape(signed_text)},
                    _STYLES["signature"],
                ),
                Paragraph(
                    escape(
                        _(
                            "Firma elettronica CAdES (file .p7m separato): il documento originale è il file "
                            "firmato; questa stampa ne è una copia."
                        )
                    ),
                    _STYLES["authority"],
                ),
            ]
        ),
    ]

    footer = _("Documento firmato digitalmente in formato CAdES da %(signer)s") % {"signer": signer_name}
    header_name = f"{study.accession_number} – {facility.name}"

    def on_page(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont(_FONT, 8)
        canvas.setFillColor(colors.dimgrey)
        canvas.drawString(_MARGIN, _FOOTER, footer)
        canvas.drawRightString(A4[0] - _MARGIN, _FOOTER, _("Pagina %(n)d") % {"n": doc.page})
        if doc.page > 1:
            canvas.drawString(_MARGIN, A4[1] - 12 * mm, header_name)
        canvas.restoreState()

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=_MARGIN,
        bottomMargin=_MARGIN + 6 * mm,
        title=_("Referto %(acc)s v%(v)s") % {"acc": study.accession_number, "v": report.version},
        author=signer_name,
        subject=exam_name(study, booked),
        creator="PACS regionale FVG",
        pageCompression=0,
        initialFontName=_FONT,  # else every page names a Helvetica that is not embedded
    )
    doc.build(story, onFirstPage=on_page, onLaterPages=on_page)
    return buffer.getvalue()
