"""The booking receipt the CUP prints for the patient: an A4 page with the
appointment, where to go, how to prepare, the booking number (the accession
number, also as a Code128 barcode the facility's desk can scan), what happens
after the exam and the CUP's telephone number."""

from __future__ import annotations

import io
import logging

from django.utils import formats, timezone
from django.utils.translation import gettext as _
from reportlab.graphics.barcode.code128 import Code128
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfgen import canvas

from .formatting import long_date
from .models import Booking, DistributionChoice, FacilityContact

logger = logging.getLogger(__name__)

# How long the FSE keeps the report and images downloadable (the information
# text says the same; the portal's expiry follows it).
ONLINE_AVAILABILITY_DAYS = 45

_MARGIN = 20 * mm
_WIDTH = A4[0] - 2 * _MARGIN


class _Writer:
    """A cursor down the page."""

    def __init__(self, pdf: canvas.Canvas) -> None:
        self.pdf = pdf
        self.y = A4[1] - _MARGIN

    def _room(self, points: float) -> None:
        # A long preparation text may not fit on the first page: go on to the next.
        if self.y - points < _MARGIN:
            self.pdf.showPage()
            self.y = A4[1] - _MARGIN

    def text(self, value: str, *, size: float = 11, bold: bool = False, gap: float = 1.35) -> None:
        font = "Helvetica-Bold" if bold else "Helvetica"
        for paragraph in value.splitlines() or [""]:
            for line in simpleSplit(paragraph, font, size, _WIDTH):
                self._room(size * gap)
                self.pdf.setFont(font, size)
                self.pdf.drawString(_MARGIN, self.y, line)
                self.y -= size * gap

    def fact(self, label: str, value: str) -> None:
        lines = simpleSplit(value or "—", "Helvetica", 11, _WIDTH - 45 * mm)
        self._room(11 * 1.4)
        self.pdf.setFont("Helvetica-Bold", 11)
        self.pdf.drawString(_MARGIN, self.y, label)
        for line in lines:
            self._room(11 * 1.4)
            self.pdf.setFont("Helvetica", 11)
            self.pdf.drawString(_MARGIN + 45 * mm, self.y, line)
            self.y -= 11 * 1.4

    def space(self, points: float = 8) -> None:
        self.y -= points


def _next_steps(booking: Booking, choice: DistributionChoice | None) -> list[str]:
    if choice is not None and choice.delivery == DistributionChoice.Delivery.ONLINE:
        lines = [
            _(
                "Referto e immagini disponibili sul Fascicolo Sanitario Elettronico per %(days)d giorni "
                "dalla pubblicazione del referto."
            )
            % {"days": ONLINE_AVAILABILITY_DAYS},
            _("Potrà scaricarli dal Fascicolo Sanitario Elettronico entrando con SPID o con la CIE."),
        ]
        if choice.consent_text is not None:
            lines.append(
                _("Consenso alla consegna online raccolto sull'informativa versione %(v)s del %(d)s.")
                % {
                    "v": choice.consent_text.version,
                    "d": formats.date_format(timezone.localtime(choice.recorded_at), "d/m/Y"),
                }
            )
        return lines
    return [
        _("Ritiro CD presso %(facility)s, con questa ricevuta e un documento d'identità, a referto pubblicato.")
        % {"facility": booking.facility.name},
        _("Può chiedere la consegna online sul Fascicolo Sanitario Elettronico al CUP, fino alla refertazione."),
    ]


def facility_contact(booking: Booking) -> FacilityContact | None:
    return FacilityContact.objects.filter(facility_id=booking.facility_id).first()


def where_to_go(booking: Booking, contact: FacilityContact | None) -> str:
    """``Radiologia, piano terra – Ospedale di Cattinara, Strada di Fiume 447, 34149 Trieste``."""
    place = booking.facility.name + (f", {contact.address}" if contact is not None else "")
    return f"{booking.station.location} – {place}" if booking.station.location else place


def cup_phone_line(contact: FacilityContact | None) -> str:
    """Whom to call to move or cancel, in the receipt's and the booking page's words."""
    if contact is None:
        return _("Per disdire o spostare l'appuntamento contatti il CUP citando il numero di prenotazione.")
    if contact.cup_hours:
        return _(
            "Per disdire o spostare l'appuntamento chiami il CUP al numero %(phone)s (%(hours)s), "
            "citando il numero di prenotazione."
        ) % {"phone": contact.cup_phone, "hours": contact.cup_hours}
    return _(
        "Per disdire o spostare l'appuntamento chiami il CUP al numero %(phone)s, citando il numero di prenotazione."
    ) % {"phone": contact.cup_phone}


def booking_receipt_pdf(booking: Booking) -> bytes:
    """The receipt of ``booking`` as a PDF, its text left uncompressed so
    that it can be searched and read by assistive tools."""
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, pageCompression=0)
    pdf.setTitle(_("Ricevuta di prenotazione %(acc)s") % {"acc": booking.accession_number})
    pdf.setAuthor(booking.facility.name)
    pdf.setSubject(booking.procedure.description)
    pdf.setCreator("PACS regionale – CUP")

    when = timezone.localtime(booking.scheduled_at)
    patient = booking.patient
    choice = booking.current_choice()
    contact = facility_contact(booking)
    w = _Writer(pdf)
    w.text(booking.facility.name, size=16, bold=True)
    w.text(booking.facility.authority.name, size=10)
    w.space(10)
    w.text(_("Ricevuta di prenotazione"), size=14, bold=True)
    w.space(4)
    w.fact(_("Paziente"), f"{patient.family_name} {patient.given_name}".strip())
    w.fact(_("Codice fiscale"), patient.codice_fiscale or "")
    w.fact(_("Esame"), f"{booking.procedure.description} ({booking.procedure.code})")
    w.fact(_("Data"), long_date(when))
    w.fact(_("Ora"), when.strftime("%H:%M"))
    w.fact(_("Presidio"), booking.facility.name)
    w.fact(_("Dove presentarsi"), where_to_go(booking, contact))
    w.fact(_("Diagnostica"), booking.station.name)
    w.fact(_("NRE"), booking.nre)
    w.fact(_("Stato"), str(booking.get_status_display()))
    w.space(6)
    w.fact(_("Numero di prenotazione"), booking.accession_number)
    w.space(4)
    barcode = Code128(booking.accession_number, barHeight=14 * mm, barWidth=0.35 * mm, humanReadable=False)
    w.y -= barcode.height
    barcode.drawOn(pdf, _MARGIN - barcode.lquiet, w.y)
    # No human-readable line under the bars (reportlab draws it over them):
    # the number is printed just above.
    w.space(16)
    if booking.procedure.preparation.strip():
        w.text(_("Come prepararsi all'esame"), size=12, bold=True)
        w.text(booking.procedure.preparation.strip())
        w.space(10)
    w.text(_("Che cosa succede dopo l'esame"), size=12, bold=True)
    for line in _next_steps(booking, choice):
        w.text(line)
        w.space(2)
    w.space(10)
    w.text(
        _("Si presenti 15 minuti prima dell'orario con la ricetta, la tessera sanitaria e gli esami precedenti."),
        size=10,
    )
    w.text(cup_phone_line(contact), size=10)
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()
