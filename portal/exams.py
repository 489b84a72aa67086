"""The citizen's exams and what each one's status is for her: booked, awaiting
the report, online until a date, on CD, expired, withdrawn.

Online only with the booking's current choice online (consent not revoked), a
signed report and a publication (:mod:`portal.publication`) neither withdrawn
nor expired.

One date per exam (:func:`exam_date`): the day it was performed once it was
(the study's, as the report and the zip show it), the booked slot, shown as an
appointment, before. An exam on CD says where and from when to collect it
(:func:`cd_pickup`). The consent to online delivery can be revoked only until
the report is signed (:func:`consent_revocable`), as the information text
says ("prima della pubblicazione del referto").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Exists, Min, OuterRef, Prefetch, Subquery
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from archive.models import Report
from booking.models import Booking, DistributionChoice

from .models import CdPickup, Publication

# Without a CdPickup row for the facility: the CD is ready the day after the signature.
CD_DAYS_AFTER_SIGNING = 1


@dataclass(frozen=True)
class CdPickupInfo:
    """Where and from when the CD of an exam delivered on CD is collected."""

    facility_name: str
    place: str  # the facility's desk, "" when the facility has not said
    hours: str
    days_after_signing: int
    ready_on: dt.date | None  # None until the report is signed

    @property
    def when_text(self) -> str:
        if self.ready_on is not None:
            return _("dal %(date)s") % {"date": date_format(self.ready_on, "DATE_FORMAT")}
        if self.days_after_signing <= 0:
            return _("dalla firma del referto")
        if self.days_after_signing == 1:
            return _("dal giorno dopo la firma del referto")
        return _("da %(n)s giorni dopo la firma del referto") % {"n": self.days_after_signing}

    @property
    def where_text(self) -> str:
        if self.place:
            return _("%(place)s, %(facility)s") % {"place": self.place, "facility": self.facility_name}
        return self.facility_name


@dataclass(frozen=True)
class ExamStatus:
    code: str  # booked, awaiting_report, available_online, on_cd, expired, withdrawn, cancelled
    label: str
    facility_name: str = ""  # where to collect the CD, or ask for a copy
    available_until: dt.datetime | None = None
    hint: str = ""  # what to do next, for expired and withdrawn
    cd: CdPickupInfo | None = None  # an exam delivered on CD: where and from when


@dataclass(frozen=True)
class ExamDate:
    """The one date of an exam: when it was performed, or, before, the appointment."""

    performed: bool
    day: dt.date
    at: dt.datetime | None = None  # the appointment's time, before the exam

    @property
    def text(self) -> str:
        if self.performed:
            return date_format(self.day, "DATE_FORMAT")
        assert self.at is not None
        return _("Appuntamento: %(when)s") % {"when": date_format(timezone.localtime(self.at), "DATETIME_FORMAT")}

    @property
    def short_text(self) -> str:
        if self.performed:
            return date_format(self.day, "SHORT_DATE_FORMAT")
        assert self.at is not None
        return _("Appuntamento: %(when)s") % {"when": date_format(timezone.localtime(self.at), "SHORT_DATETIME_FORMAT")}


def exam_date(*, booking: Booking) -> ExamDate:
    """The exam's date: the day it was performed once the images arrived (the study's
    date, :meth:`archive.models.Study.performed_on`, as on the report and in the zip),
    before that the booked slot, as an appointment."""
    if booking.study_id is not None and booking.study is not None:
        return ExamDate(performed=True, day=booking.study.performed_on())
    if booking.status in (Booking.Status.PERFORMED, Booking.Status.REPORTED):
        # Performed, its images not (yet) tied to the booking: the day of the slot.
        return ExamDate(performed=True, day=timezone.localdate(booking.scheduled_at))
    return ExamDate(performed=False, day=timezone.localdate(booking.scheduled_at), at=booking.scheduled_at)


def _first_signed_at(booking: Booking) -> dt.datetime | None:
    if hasattr(booking, "first_signed_at"):  # the annotation of citizen_exams
        annotated: dt.datetime | None = booking.first_signed_at
        return annotated
    if booking.study_id is None:
        return None
    return (
        Report.objects.filter(study_id=booking.study_id, status=Report.Status.SIGNED)
        .aggregate(first=Min("signed_at"))
        .get("first")
    )


def cd_pickup(*, booking: Booking) -> CdPickupInfo:
    """Where and from when the CD of ``booking`` is collected: the facility's rule
    (:class:`~portal.models.CdPickup`) from the first signature of the report."""
    try:
        rule: CdPickup | None = booking.facility.cd_pickup  # joined by citizen_exams
    except CdPickup.DoesNotExist:
        rule = None
    days = rule.days_after_signing if rule is not None else CD_DAYS_AFTER_SIGNING
    signed_at = _first_signed_at(booking)
    ready_on = timezone.localdate(signed_at) + dt.timedelta(days=days) if signed_at is not None else None
    return CdPickupInfo(
        facility_name=booking.facility.name,
        place=rule.place if rule is not None else "",
        hours=rule.hours if rule is not None else "",
        days_after_signing=days,
        ready_on=ready_on,
    )


def consent_revocable(*, booking: Booking) -> bool:
    """Whether the consent to online delivery of ``booking`` can still be revoked: it was
    given (the current choice is online) and the report is not signed yet, so not
    published (:meth:`booking.models.Booking.is_choice_locked`). The information text
    the citizen accepted says so: "prima della pubblicazione del referto"."""
    choice = _current_choice(booking)
    if choice is None or choice.delivery != DistributionChoice.Delivery.ONLINE:
        return False
    return not booking.is_choice_locked()


def person_name(patient: object) -> str:
    """``Mario Rossi``: a patient's name as a page addresses a person (the registry keeps it in capitals)."""
    given = str(getattr(patient, "given_name", "") or "").title()
    family = str(getattr(patient, "family_name", "") or "").title()
    return f"{given} {family}".strip()


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
    choice = _current_choice(booking)
    on_cd = choice is not None and choice.delivery == DistributionChoice.Delivery.CD
    if booking.status in (Booking.Status.BOOKED, Booking.Status.ARRIVED):
        label = _("Prenotato: referto e immagini su CD") if on_cd else _("Prenotato")
        return ExamStatus("booked", label, facility_name=facility, cd=cd_pickup(booking=booking) if on_cd else None)
    if not _has_signed_report(booking):
        return ExamStatus(
            "awaiting_report",
            _("Eseguito, in attesa del referto"),
            facility_name=facility,
            cd=cd_pickup(booking=booking) if on_cd else None,
        )
    publications = list(booking.publications.all())
    if choice is None or choice.delivery != DistributionChoice.Delivery.ONLINE:
        if publications:
            # It was online, and the consent was revoked afterwards.
            return ExamStatus(
                "withdrawn",
                _("Ritirato dal Fascicolo: consenso alla consegna online revocato"),
                facility_name=facility,
                hint=_copy_hint(facility),
            )
        cd = cd_pickup(booking=booking)
        return ExamStatus(
            "on_cd",
            _("Su CD, da ritirare %(when)s presso %(where)s") % {"when": cd.when_text, "where": cd.where_text},
            facility_name=facility,
            cd=cd,
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
    first_signed = signed.order_by("signed_at").values("signed_at")[:1]
    return list(
        Booking.objects.filter(patient_id__in=sorted(set(patient_ids)))
        .select_related("patient", "facility", "facility__cd_pickup", "procedure", "study")
        # Ordered on their own columns: the models' default ordering would join the bookings again.
        .prefetch_related(
            Prefetch("choices", queryset=DistributionChoice.objects.order_by("version")),
            Prefetch("publications", queryset=Publication.objects.order_by("published_at", "pk")),
        )
        .annotate(has_signed_report=Exists(signed), first_signed_at=Subquery(first_signed))
        .order_by("-scheduled_at", "-pk")
    )
