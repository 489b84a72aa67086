"""The exam as the CUP booked it, for the radiologist's pages and the report's PDF.

The archive knows a study by its DICOM header ("TC TORACE SENZA MDC"); the
citizen booked a catalogue procedure with its code ("TC torace senza mdc",
87.41) in a department of a facility, prescribed by a physician. Those facts
live in the booking app, which the archive must not import
(docs/ARCHITECTURE.md): the booking app registers a source here in
``BookingConfig.ready`` and the archive asks it for the studies it shows.
Without a source (the archive alone) or without a booking (an emergency
exam), the pages and the PDF fall back on the DICOM header. The facility's
address and telephone, printed on every report, are the CUP's too
(``booking.FacilityContact``) and come through a second source, by facility,
so that an exam with no booking has them as well.

A leaf: plain data and the registry, no ORM, so that the PDF can take a
:class:`BookedExam` too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BookedExam:
    """What the booking of one study says about its exam (empty strings when not known)."""

    procedure_code: str
    procedure_description: str
    department: str = ""  # where the exam was performed: the room's department, building, floor
    referring_physician: str = ""
    nre: str = ""  # the electronic prescription's number (numero di ricetta elettronica), for the CDA's order

    @property
    def label(self) -> str:
        """ "TC torace senza mdc (87.41)"."""
        return f"{self.procedure_description} ({self.procedure_code})"


@dataclass(frozen=True)
class Contacts:
    """Where a facility is and the number to call."""

    address: str
    phone: str


# study primary keys -> {study pk: its booked exam}, only for the studies that have one
BookedExamSource = Callable[[list[int]], dict[int, BookedExam]]
# a facility's primary key -> its contacts, or None
ContactsSource = Callable[[int], Contacts | None]

_source: BookedExamSource | None = None
_contacts: ContactsSource | None = None


def booked_exam_source_register(source: BookedExamSource | None) -> None:
    """Set (or, with None, remove) the one source of booked exams."""
    global _source
    _source = source


def booked_exams(study_ids: Iterable[int]) -> dict[int, BookedExam]:
    """The booked exam of each of ``study_ids`` that has one; {} without a source."""
    ids = sorted({pk for pk in study_ids if pk is not None})
    if _source is None or not ids:
        return {}
    return _source(ids)


def booked_exam(study_id: int) -> BookedExam | None:
    """The booked exam of one study, or None."""
    return booked_exams([study_id]).get(study_id)


def facility_contacts_source_register(source: ContactsSource | None) -> None:
    """Set (or, with None, remove) the one source of facilities' contacts."""
    global _contacts
    _contacts = source


def facility_contacts(facility_id: int) -> Contacts | None:
    """The address and telephone of a facility; None when not known or without a source."""
    return _contacts(facility_id) if _contacts is not None else None
