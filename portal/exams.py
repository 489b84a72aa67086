"""The citizen's exams and what each one's status is for her: booked, awaiting
the report, online until a date, on CD, expired, withdrawn.

Online only with the booking's current choice online (consent not revoked), a
signed report and a publication (:mod:`portal.publication`) neither withdrawn
nor expired.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Exists, OuterRef, Prefetch
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from archive.models import Report
from booking.models import Booking, DistributionChoice

from .models import Publication


@dataclass(frozen=True)
class ExamStatus:
    code: str  # booked, awaiting_report, available_online, on_cd, expired, withdrawn, cancelled
    label: str
    facility_name: str = ""  # where to collect the CD, or ask for a copy
    available_until: dt.datetime | None = None
    hint: str = ""  # what to do next, for expired and withdrawn


def _current_choice(booking: Booking) -> DistributionChoice | None:
    # Uses the prefetched choices of citizen_exams when they are there.
    if "choices" in getattr(booking, "_prefetched_objects_cache", {}):
        choices = list(booking.choices.all())
        return max(choices, key=lambda c: c.version) if choices else None
    return booking.current_choice()


def _has_signed_report(booking: Booking) -> bool:
    annotated = getattr(booking, "has_signed_report", None)
    if annotated is not None:
        return bool(annotated)
    if booking.study_id is None:
        return False
    return Report.objects.filter(study_id=booking.study_id, status=Report.Status.SIGNED).exists()


def _copy_hint(facility_name: str) -> str:
    return _(
        "Per avere una copia del referto e delle immagini rivolgersi al presidio %(facility)s "
        "o al CUP della propria azienda sanitaria."
    ) % {"facility": facility_name}


def exam_status(*, booking: Booking, now: dt.datetime | None = None) -> ExamStatus:
    """What the citizen is told about ``booking``: booked, awaiting the report, online, on CD...

    Online only with the current choice online (consent not revoked), a
    signed report and a publication neither withdrawn nor expired.
    """
    now = now or timezone.now()
    facility = booking.facility.name
    if booking.status == Booking.Status.CANCELLED:
        return ExamStatus("cancelled", _("Prenotazione annullata"))
    if booking.status in (Booking.Status.BOOKED, Booking.Status.ARRIVED):
        return ExamStatus("booked", _("Prenotato"), facility_name=facility)
    if not _has_signed_report(booking):
        return ExamStatus("awaiting_report", _("Eseguito, in attesa del referto"), facility_name=facility)
    publications = list(booking.publications.all())
    choice = _current_choice(booking)
    if choice is None or choice.delivery != DistributionChoice.Delivery.ONLINE:
        if publications:
            # It was online, and the consent was revoked afterwards.
            return ExamStatus(
                "withdrawn",
                _("Ritirato dal Fascicolo: consenso alla consegna online revocato"),
                facility_name=facility,
                hint=_copy_hint(facility),
            )
        return ExamStatus(
            "on_cd",
            _("Su CD, da ritirare presso %(facility)s") % {"facility": facility},
            facility_name=facility,
        )
    live = [p for p in publications if p.is_live(now)]
    if live:
        until = max(p.available_until for p in live)
        return ExamStatus(
            "available_online",
            _("Disponibile online fino al %(date)s") % {"date": date_format(timezone.localtime(until), "DATE_FORMAT")},
            facility_name=facility,
            available_until=until,
        )
    not_withdrawn = [p for p in publications if p.withdrawn_at is None]
    if not_withdrawn:
        until = max(p.available_until for p in not_withdrawn)
        return ExamStatus(
            "expired",
            _("Non più disponibile online dal %(date)s")
            % {"date": date_format(timezone.localtime(until), "DATE_FORMAT")},
            facility_name=facility,
            available_until=until,
            hint=_copy_hint(facility),
        )
    if publications:
        return ExamStatus("withdrawn", _("Ritirato dal Fascicolo"), facility_name=facility, hint=_copy_hint(facility))
    # Signed, online, but not (yet) published: the receiver has not run.
    return ExamStatus("awaiting_report", _("Refertato, in corso di pubblicazione"), facility_name=facility)


def is_available_online(*, booking: Booking, now: dt.datetime | None = None) -> bool:
    return exam_status(booking=booking, now=now).code == "available_online"


def live_publications(
    *, booking: Booking, now: dt.datetime | None = None, status: ExamStatus | None = None
) -> list[Publication]:
    """The report versions the citizen may download now, oldest first (empty unless available online).

    ``status``: the booking's :func:`exam_status` at ``now``, when the caller has it already.
    """
    now = now or timezone.now()
    status = status or exam_status(booking=booking, now=now)
    if status.code != "available_online":
        return []
    return [p for p in booking.publications.select_related("report").order_by("report__version") if p.is_live(now)]


def citizen_exams(*, patient_ids: Iterable[int]) -> list[Booking]:
    """The bookings of the patients ``patient_ids`` (a citizen's principal's), newest first,
    ready for :func:`exam_status`."""
    signed = Report.objects.filter(study_id=OuterRef("study_id"), status=Report.Status.SIGNED)
    return list(
        Booking.objects.filter(patient_id__in=sorted(set(patient_ids)))
        .select_related("patient", "facility", "procedure", "study")
        # Ordered on their own columns: the models' default ordering would join the bookings again.
        .prefetch_related(
            Prefetch("choices", queryset=DistributionChoice.objects.order_by("version")),
            Prefetch("publications", queryset=Publication.objects.order_by("published_at", "pk")),
        )
        .annotate(has_signed_report=Exists(signed))
        .order_by("-scheduled_at", "-pk")
    )
