"""The booked exam of the archive's studies, for the radiologist's pages and the PDF.

``booking/apps.py`` registers :func:`booked_exams_for` with
``archive.reporting.booked``: the archive asks, this answers from the booking
the matching tied to each study (``Booking.study``), its catalogue procedure,
its room's location and its facility's contacts.
"""

from __future__ import annotations

from archive.reporting.booked import BookedExam

from .models import Booking


def booked_exams_for(study_ids: list[int]) -> dict[int, BookedExam]:
    """{study pk: its booked exam} for those of ``study_ids`` tied to a booking."""
    rows = Booking.objects.filter(study_id__in=study_ids).select_related(
        "procedure", "station", "facility__cup_contact"
    )
    answer: dict[int, BookedExam] = {}
    for booking in rows:
        contact = getattr(booking.facility, "cup_contact", None)
        assert booking.study_id is not None
        answer[booking.study_id] = BookedExam(
            procedure_code=booking.procedure.code,
            procedure_description=booking.procedure.description,
            department=booking.station.location,
            referring_physician=booking.referring_physician,
            facility_address=contact.address if contact else "",
            facility_phone=contact.cup_phone if contact else "",
        )
    return answer
