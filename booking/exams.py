"""The booked exam of the archive's studies, for the radiologist's pages and the PDF.

``booking/apps.py`` registers :func:`booked_exams_for` with
``archive.reporting.booked`` (and :func:`facility_contacts_for`): the archive
asks, this answers from the booking the matching tied to each study
(``Booking.study``), its catalogue procedure and its room's location, and from
each facility's ``FacilityContact``.
"""

from __future__ import annotations

from archive.reporting.booked import BookedExam, Contacts

from .models import Booking, FacilityContact


def booked_exams_for(study_ids: list[int]) -> dict[int, BookedExam]:
    """{study pk: its booked exam} for those of ``study_ids`` tied to a booking."""
    rows = Booking.objects.filter(study_id__in=study_ids).select_related("procedure", "station")
    answer: dict[int, BookedExam] = {}
    for booking in rows:
        assert booking.study_id is not None
        answer[booking.study_id] = BookedExam(
            procedure_code=booking.procedure.code,
            procedure_description=booking.procedure.description,
            department=booking.station.location,
            referring_physician=booking.referring_physician,
            nre=booking.nre,
        )
    return answer


def facility_contacts_for(facility_id: int) -> Contacts | None:
    """The facility's address and its CUP's telephone, as on the booking receipt."""
    contact = FacilityContact.objects.filter(facility_id=facility_id).first()
    return Contacts(address=contact.address, phone=contact.cup_phone) if contact else None
