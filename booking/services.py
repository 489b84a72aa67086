"""What the CUP does: register a patient, book an exam on a free slot, record
and change the distribution choice and its consent, move and cancel bookings.

Every function here checks its input, writes in one transaction and appends
an ``AuditEvent``; each raises ``BookingError`` (``SlotTaken`` for a slot
someone else took first) with a message meant for the operator.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from codicefiscale import codicefiscale as _cf
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from pydicom.uid import generate_uid

from archive.models import Facility, Patient, Report
from archive.reporting import services as reports
from kernel import tasknames
from kernel.audit import audit_record
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale
from kernel.errors import Invalid

from .models import (
    AccessionSequence,
    Booking,
    BookingStatusChange,
    ConsentText,
    DistributionChoice,
    Procedure,
    Station,
    nre_validator,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)


class BookingError(Invalid):
    """A request the CUP cannot carry out; ``field`` names the input at fault.

    ``code``: ``invalid``, ``invalid_codice_fiscale``, ``past``, ``duplicate`` (an
    ``external_id`` already booked), ``slot_taken``...
    """

    def __init__(self, message: str, *, field: str | None = None, code: str = "invalid") -> None:
        super().__init__(message, code=code)
        self.field = field


class SlotTaken(BookingError):
    def __init__(self, message: str) -> None:
        super().__init__(message, field="scheduled_at", code="slot_taken")


# --- patients ------------------------------------------------------------------


def patient_create(
    *,
    codice_fiscale: str,
    family_name: str,
    given_name: str,
    birth_date: dt.date,
    sex: str,
    user: User | None,
    source: str = "",
) -> Patient:
    """Register a patient under a checked codice fiscale.

    The code must be well formed, carry the right check character and agree
    with the birth date and sex given (an *omocodia* code decodes like any
    other). A provisional patient of the same name and birth date is not
    merged here: that is reconciliation's job.
    """
    code = normalize_codice_fiscale(codice_fiscale)
    error = codice_fiscale_error(code)
    if error:
        raise BookingError(error, field="codice_fiscale", code="invalid_codice_fiscale")
    family_name, given_name = family_name.strip(), given_name.strip()
    if not family_name or not given_name:
        raise BookingError(_("Cognome e nome sono obbligatori."), field="family_name")
    if sex not in ("M", "F"):
        raise BookingError(_("Il sesso è M o F, come nel codice fiscale."), field="sex")
    decoded = _cf.decode(code)
    if decoded["gender"] != sex:
        raise BookingError(
            _("Il codice fiscale %(code)s è di una persona di sesso %(sex)s.")
            % {"code": code, "sex": decoded["gender"]},
            field="sex",
        )
    if decoded["birthdate"].date() != birth_date:
        raise BookingError(
            _("Il codice fiscale %(code)s indica la data di nascita %(date)s.")
            % {"code": code, "date": decoded["birthdate"].date().strftime("%d/%m/%Y")},
            field="birth_date",
        )
    if Patient.objects.filter(codice_fiscale=code).exists():
        raise BookingError(
            _("Un paziente con codice fiscale %(code)s è già registrato.") % {"code": code}, field="codice_fiscale"
        )
    try:
        with transaction.atomic():
            patient = Patient.objects.create(
                codice_fiscale=code,
                family_name=family_name.upper()[:128],
                given_name=given_name.upper()[:128],
                birth_date=birth_date,
                sex=sex,
            )
            audit_record(action="cup.patient.create", user=user, patient=patient, source=source)
    except IntegrityError:
        raise BookingError(
            _("Un paziente con codice fiscale %(code)s è già registrato.") % {"code": code}, field="codice_fiscale"
        ) from None
    return patient


# --- the catalogue ---------------------------------------------------------------------


@dataclass
class CatalogueLoad:
    created: int = 0
    updated: int = 0


CATALOGUE_COLUMNS = ("code", "description", "modality", "body_part")
# Columns a catalogue may leave out: a missing one leaves the field as it is.
CATALOGUE_OPTIONAL_COLUMNS = ("preparation",)


def procedures_load_csv(text: str | Iterable[str]) -> CatalogueLoad:
    """Load or update the procedure catalogue from CSV with the header
    ``code,description,modality,body_part[,preparation][,active]``; all rows or none.

    ``preparation`` is what the patient does before the exam, printed on the
    receipt; a catalogue without the column keeps the preparations already recorded.
    """
    lines = io.StringIO(text) if isinstance(text, str) else text
    reader = csv.DictReader(lines)
    missing = [c for c in CATALOGUE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise BookingError(_("Colonne mancanti nel catalogo: %(cols)s.") % {"cols": ", ".join(missing)})
    optional = [c for c in CATALOGUE_OPTIONAL_COLUMNS if c in (reader.fieldnames or [])]
    result = CatalogueLoad()
    with transaction.atomic():
        for line, row in enumerate(reader, start=2):
            values = {k: (row.get(k) or "").strip() for k in (*CATALOGUE_COLUMNS, *optional)}
            active = (row.get("active") or "1").strip().lower() not in ("0", "no", "false", "n")
            procedure = Procedure(**values, active=active)
            existing = Procedure.objects.filter(code=values["code"]).first()
            if existing is not None:
                procedure.pk = existing.pk
                for name in CATALOGUE_OPTIONAL_COLUMNS:
                    if name not in optional:
                        setattr(procedure, name, getattr(existing, name))
            try:
                procedure.full_clean(validate_unique=False)
            except ValidationError as exc:
                raise BookingError(_("Riga %(line)d del catalogo: %(error)s") % {"line": line, "error": exc}) from None
            procedure.save()
            if existing is None:
                result.created += 1
            else:
                result.updated += 1
    return result


# --- slots and accession numbers ---------------------------------------------------


def local(value: dt.datetime) -> dt.datetime:
    return timezone.localtime(value) if timezone.is_aware(value) else timezone.make_aware(value)


def station_slots(*, station: Station, day: dt.date) -> list[dt.datetime]:
    """Every slot of the station's day, taken or not, as aware local times."""
    if not station.is_open_on(day):
        return []
    tz = timezone.get_current_timezone()
    start = dt.datetime.combine(day, station.opens_at, tzinfo=tz)
    end = dt.datetime.combine(day, station.closes_at, tzinfo=tz)
    step = dt.timedelta(minutes=station.slot_minutes)
    slots = []
    while start + step <= end:
        slots.append(start)
        start += step
    return slots


def station_free_slots(*, station: Station, day: dt.date, now: dt.datetime | None = None) -> list[dt.datetime]:
    """The slots of the station's day that are still free and still to come."""
    now = now or timezone.now()
    slots = station_slots(station=station, day=day)
    if not slots:
        return []
    taken = set(
        Booking.objects.filter(station=station, scheduled_at__gte=slots[0], scheduled_at__lte=slots[-1])
        .exclude(status=Booking.Status.CANCELLED)
        .values_list("scheduled_at", flat=True)
    )
    return [s for s in slots if s > now and s not in taken]


# The first-available search looks this far ahead at most: the CUP's agendas
# open a few months ahead, and a longer window only costs time.
FIRST_AVAILABLE_MAX_DAYS = 90
FIRST_AVAILABLE_DEFAULT_DAYS = 30


@dataclass(frozen=True)
class FreeDay:
    """A day on which a station has free slots, and those slots (aware, local, in order)."""

    station: Station
    day: dt.date
    slots: list[dt.datetime]

    @property
    def facility(self) -> Facility:
        return self.station.facility


def first_available(
    *,
    procedure: Procedure,
    facilities: Iterable[Facility] | QuerySet[Facility],
    start: dt.date,
    days: int = FIRST_AVAILABLE_DEFAULT_DAYS,
    days_per_station: int = 2,
    now: dt.datetime | None = None,
) -> list[FreeDay]:
    """The first days with free slots for ``procedure`` at ``facilities``, nearest first.

    Every active station of the procedure's modality is searched from
    ``start`` for ``days`` days; each gives its first ``days_per_station``
    days with a free slot still to come. The result is ordered by day, then
    facility and station name, so that the nearest availability across the
    facilities comes first.

    Two queries whatever the window: the stations, then every booking that
    holds one of their slots in the window; the schedule is computed here.

    Raises
    ------
    BookingError
        ``days`` outside 1..FIRST_AVAILABLE_MAX_DAYS (field ``days``), the
        procedure not bookable (field ``procedure``).
    """
    if not 1 <= days <= FIRST_AVAILABLE_MAX_DAYS:
        raise BookingError(
            _("Cerca in un periodo da 1 a %(max)d giorni.") % {"max": FIRST_AVAILABLE_MAX_DAYS}, field="days"
        )
    if not procedure.active:
        raise BookingError(
            _("La prestazione %(code)s non è prenotabile.") % {"code": procedure.code}, field="procedure"
        )
    now = now or timezone.now()
    stations = list(
        Station.objects.filter(facility__in=facilities, modality=procedure.modality, active=True).select_related(
            "facility__authority"
        )
    )
    if not stations:
        return []
    tz = timezone.get_current_timezone()
    window_start = dt.datetime.combine(start, dt.time(0, 0), tzinfo=tz)
    window_end = dt.datetime.combine(start + dt.timedelta(days=days), dt.time(0, 0), tzinfo=tz)
    taken = set(
        Booking.objects.filter(station__in=stations, scheduled_at__gte=window_start, scheduled_at__lt=window_end)
        .exclude(status=Booking.Status.CANCELLED)
        .values_list("station_id", "scheduled_at")
    )
    found: list[FreeDay] = []
    for station in stations:
        station_days = 0
        for offset in range(days):
            day = start + dt.timedelta(days=offset)
            free = [s for s in station_slots(station=station, day=day) if s > now and (station.pk, s) not in taken]
            if free:
                found.append(FreeDay(station=station, day=day, slots=free))
                station_days += 1
                if station_days >= days_per_station:
                    break
    found.sort(key=lambda f: (f.day, f.station.facility.name, f.station.name, f.station.pk))
    return found


def _check_slot(*, station: Station, scheduled_at: dt.datetime) -> dt.datetime:
    if not timezone.is_aware(scheduled_at):
        scheduled_at = timezone.make_aware(scheduled_at)
    if scheduled_at <= timezone.now():
        raise BookingError(_("La data e l'ora dell'appuntamento sono già passate."), field="scheduled_at")
    when = local(scheduled_at)
    if when not in station_slots(station=station, day=when.date()):
        raise BookingError(
            _("Alle %(time)s del %(date)s %(station)s non ha uno slot: scegline uno dall'elenco.")
            % {"time": when.strftime("%H:%M"), "date": when.strftime("%d/%m/%Y"), "station": station.name},
            field="scheduled_at",
        )
    return scheduled_at


def accession_number_next(*, facility: Facility, when: dt.datetime | None = None) -> str:
    """The facility's next accession number: its prefix, the year's two digits
    and a 7-digit counter (13 characters, under the 16 of DICOM's SH).

    Called inside the booking's transaction: the counter's row stays locked
    until commit, so concurrent bookings get consecutive numbers, and a
    booking rolled back gives its number back.
    """
    year = (when or timezone.now()).year % 100
    seq = AccessionSequence.objects.filter(facility=facility)
    if not seq.exists():
        raise BookingError(
            _("Il presidio %(code)s non ha un prefisso per gli accession number.") % {"code": facility.code},
            field="facility",
        )
    # A new year starts the counter again; the year is in the number.
    seq.exclude(year=year).update(year=year, last_number=0)
    seq.update(last_number=F("last_number") + 1)
    row = seq.get()
    if row.last_number > 9_999_999:
        raise BookingError(_("Numerazione dell'anno esaurita per %(code)s.") % {"code": facility.code})
    return f"{row.prefix}{year:02d}{row.last_number:07d}"


# --- bookings ----------------------------------------------------------------------


def consent_text_current() -> ConsentText | None:
    return ConsentText.objects.filter(published_at__lte=timezone.now()).order_by("-published_at").first()


def _record_status(booking: Booking, status: str, *, user: Any = None, system: str = "", note: str = "") -> None:
    BookingStatusChange.objects.create(booking=booking, status=status, user=user, system=system, note=note[:500])


def _check_contacts(*, phone: str, email: str, nre: str) -> None:
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise BookingError(
                _("L'indirizzo e-mail %(email)s non è valido.") % {"email": email}, field="contact_email"
            ) from None
    if phone and not all(c.isdigit() or c in "+ ./-()" for c in phone):
        raise BookingError(_("Il numero di telefono contiene caratteri non ammessi."), field="contact_phone")
    if nre:
        try:
            nre_validator(nre)
        except ValidationError as exc:
            raise BookingError(exc.messages[0], field="nre") from None


def _check_priority(priority: str) -> str:
    priority = (priority or "").strip().upper()
    if priority not in Booking.Priority.values:
        raise BookingError(
            _("La priorità della ricetta è U (urgente), B (breve), D (differita) o P (programmata)."),
            field="priority",
        )
    return priority


def _check_channel(channel: str) -> None:
    if channel not in Booking.Channel.values:
        raise BookingError(_("Canale sconosciuto: %(c)s.") % {"c": channel}, field="channel")


def delivery_consent_error(*, delivery: str, consent_given: bool) -> str | None:
    """Why the consent box and the delivery chosen contradict each other, or None.

    The consent is to *online* delivery: ticked with the CD it is either a
    slip or an online delivery meant and not chosen, and nobody would act on it.
    """
    if (
        consent_given
        and delivery in DistributionChoice.Delivery.values
        and delivery != DistributionChoice.Delivery.ONLINE
    ):
        return str(
            _(
                "Il consenso alla consegna online è spuntato, ma hai scelto «%(delivery)s»: "
                "scegli la consegna online oppure togli la spunta dal consenso."
            )
            % {"delivery": DistributionChoice.Delivery(delivery).label}
        )
    return None


def _check_delivery_consent(*, delivery: str, consent_given: bool) -> None:
    error = delivery_consent_error(delivery=delivery, consent_given=consent_given)
    if error:
        raise BookingError(error, field="consent_given", code="consent_without_online")


def _choice_add(
    booking: Booking,
    *,
    delivery: str,
    consent_text: ConsentText | None,
    consent_given: bool,
    channel: str,
    user: Any,
    recorded_by_name: str,
    revokes_consent: bool = False,
    note: str = "",
) -> DistributionChoice:
    if delivery not in DistributionChoice.Delivery.values:
        raise BookingError(_("Scegli come consegnare referto e immagini: CD oppure online."), field="delivery")
    _check_delivery_consent(delivery=delivery, consent_given=consent_given)
    if delivery == DistributionChoice.Delivery.ONLINE:
        if not consent_given:
            raise BookingError(
                _(
                    "La consegna online richiede il consenso esplicito del paziente, "
                    "dopo aver letto l'informativa (DPCM 8 agosto 2013, art. 3)."
                ),
                field="consent_given",
            )
        if consent_text is None:
            raise BookingError(
                _("Nessuna informativa in vigore: la consegna online non è disponibile."), field="delivery"
            )
    else:
        consent_text = None
    last = booking.choices.order_by("-version").values_list("version", flat=True).first() or 0
    return DistributionChoice.objects.create(
        booking=booking,
        version=last + 1,
        delivery=delivery,
        consent_text=consent_text,
        revokes_consent=revokes_consent,
        channel=channel,
        recorded_by=user if user is not None and user.is_authenticated else None,
        recorded_by_name=recorded_by_name[:128],
        note=note[:500],
    )


def booking_create(
    *,
    patient: Patient,
    procedure: Procedure,
    station: Station,
    scheduled_at: dt.datetime,
    delivery: str,
    consent_given: bool = False,
    consent_text: ConsentText | None = None,
    channel: str,
    user: User | None,
    nre: str = "",
    contact_phone: str = "",
    contact_email: str = "",
    clinical_question: str = "",
    priority: str = Booking.Priority.PLANNED,
    referring_physician: str = "",
    recorded_by_name: str = "",
    external_id: str | None = None,
    source: str = "",
) -> Booking:
    """Book ``procedure`` on a free slot of ``station`` with the patient's distribution choice.

    ``consent_text`` defaults to the information text in force; online
    delivery needs ``consent_given``. Raises ``SlotTaken`` when the slot is
    taken, also when another operator took it a moment ago.
    """
    if patient.provisional or not patient.codice_fiscale:
        raise BookingError(_("Si prenota solo per un paziente identificato dal codice fiscale."), field="patient")
    if not procedure.active:
        raise BookingError(
            _("La prestazione %(code)s non è prenotabile.") % {"code": procedure.code}, field="procedure"
        )
    if not station.active:
        raise BookingError(_("La diagnostica %(name)s non è attiva.") % {"name": station.name}, field="station")
    if station.modality != procedure.modality:
        raise BookingError(
            _("La prestazione %(code)s (%(m)s) non si esegue sulla diagnostica %(name)s (%(sm)s).")
            % {"code": procedure.code, "m": procedure.modality, "name": station.name, "sm": station.modality},
            field="station",
        )
    if channel not in Booking.Channel.values:
        raise BookingError(_("Canale di prenotazione sconosciuto: %(c)s.") % {"c": channel}, field="channel")
    nre = nre.strip().upper()
    contact_email = contact_email.strip()
    _check_contacts(phone=contact_phone, email=contact_email, nre=nre)
    priority = _check_priority(priority)
    scheduled_at = _check_slot(station=station, scheduled_at=scheduled_at)
    _check_delivery_consent(delivery=delivery, consent_given=consent_given)
    if delivery == DistributionChoice.Delivery.ONLINE and consent_text is None:
        consent_text = consent_text_current()
    facility = station.facility
    try:
        with transaction.atomic():
            booking = Booking.objects.create(
                accession_number=accession_number_next(facility=facility, when=scheduled_at),
                study_instance_uid=generate_uid(),
                patient=patient,
                facility=facility,
                procedure=procedure,
                station=station,
                scheduled_at=scheduled_at,
                nre=nre,
                contact_phone=contact_phone.strip(),
                contact_email=contact_email,
                clinical_question=clinical_question.strip(),
                priority=priority,
                referring_physician=referring_physician.strip()[:128],
                channel=channel,
                operator=user if user is not None and user.is_authenticated else None,
                external_id=external_id or None,
            )
            _record_status(booking, Booking.Status.BOOKED, user=booking.operator)
            choice = _choice_add(
                booking,
                delivery=delivery,
                consent_text=consent_text,
                consent_given=consent_given,
                channel=channel,
                user=user,
                recorded_by_name=recorded_by_name,
            )
            audit_record(
                action="cup.booking.create",
                user=user,
                patient=patient,
                source=source,
                detail=_audit_detail(booking, choice=choice),
            )
    except IntegrityError:
        if _slot_taken(station=station, scheduled_at=scheduled_at):
            raise _slot_taken_error(station, scheduled_at) from None
        if external_id and Booking.objects.filter(external_id=external_id).exists():
            raise BookingError(
                _("Una prenotazione con l'identificativo esterno %(id)s esiste già.") % {"id": external_id},
                field="external_id",
                code="duplicate",
            ) from None
        raise
    if booking.scheduled_at - timezone.now() <= dt.timedelta(days=settings.PACS_PREFETCH_DAYS_AHEAD):
        # Priors are recalled now for a booking in the next days; later ones
        # by the daily sweep (booking.tasks.bookings_prefetch).
        transaction.on_commit(lambda: booking_prefetch_enqueue(booking.pk))
    return booking


def booking_prefetch_enqueue(booking_pk: int) -> None:
    from celery import current_app

    try:
        current_app.send_task(tasknames.BOOKING_PREFETCH, args=[booking_pk])
    except Exception:
        # The broker is down: the daily sweep queues it again; the booking stands.
        logger.exception("could not queue the prefetch of booking #%s", booking_pk)


def _slot_taken(*, station: Station, scheduled_at: dt.datetime, exclude: Booking | None = None) -> bool:
    taken = Booking.objects.filter(station=station, scheduled_at=scheduled_at).exclude(status=Booking.Status.CANCELLED)
    if exclude is not None:
        taken = taken.exclude(pk=exclude.pk)
    return taken.exists()


def _slot_taken_error(station: Station, scheduled_at: dt.datetime) -> SlotTaken:
    when = local(scheduled_at)
    return SlotTaken(
        _(
            "Lo slot delle %(time)s del %(date)s su %(station)s è stato appena prenotato da un altro operatore: "
            "scegline un altro."
        )
        % {"time": when.strftime("%H:%M"), "date": when.strftime("%d/%m/%Y"), "station": station.name}
    )


def _audit_detail(booking: Booking, *, choice: DistributionChoice | None = None, **extra: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "accession_number": booking.accession_number,
        "facility": booking.facility.code,
        "procedure": booking.procedure.code,
        "station": booking.station.ae_title,
        "scheduled_at": local(booking.scheduled_at).isoformat(),
        "status": booking.status,
    }
    if choice is not None:
        detail["choice"] = {
            "version": choice.version,
            "delivery": choice.delivery,
            "consent_text": choice.consent_text.version if choice.consent_text else None,
            "revokes_consent": choice.revokes_consent,
            "channel": choice.channel,
        }
    detail.update(extra)
    return detail


def _locked_booking(booking: Booking) -> Booking:
    locked = Booking.objects.select_for_update().select_related("facility", "procedure", "station").get(pk=booking.pk)
    return locked


def booking_update(
    *,
    booking: Booking,
    user: User | None,
    source: str = "",
    station: Station | None = None,
    scheduled_at: dt.datetime | None = None,
    nre: str | None = None,
    contact_phone: str | None = None,
    contact_email: str | None = None,
    clinical_question: str | None = None,
    priority: str | None = None,
    referring_physician: str | None = None,
) -> Booking:
    """Move a booking to another slot or change its details, before the exam is performed."""
    try:
        with transaction.atomic():
            booking = _locked_booking(booking)
            if booking.status not in (Booking.Status.BOOKED, Booking.Status.ARRIVED):
                raise BookingError(
                    _("La prenotazione %(acc)s è %(status)s: non si può più modificare.")
                    % {"acc": booking.accession_number, "status": booking.get_status_display()}
                )
            changed: dict[str, Any] = {}
            if station is not None or scheduled_at is not None:
                new_station = station or booking.station
                new_at = scheduled_at or booking.scheduled_at
                if new_station.facility_id != booking.facility_id:
                    raise BookingError(_("Per cambiare presidio si annulla e si prenota di nuovo."), field="station")
                if new_station.modality != booking.procedure.modality:
                    raise BookingError(_("Questa diagnostica non esegue la prestazione prenotata."), field="station")
                if (new_station.pk, new_at) != (booking.station_id, booking.scheduled_at):
                    new_at = _check_slot(station=new_station, scheduled_at=new_at)
                    changed["scheduled_at"] = [local(booking.scheduled_at).isoformat(), local(new_at).isoformat()]
                    changed["station"] = [booking.station.ae_title, new_station.ae_title]
                    booking.station, booking.scheduled_at = new_station, new_at
            _check_contacts(
                phone=contact_phone or "", email=(contact_email or "").strip(), nre=(nre or "").strip().upper()
            )
            if priority is not None:
                priority = _check_priority(priority)
            for name, value in (
                ("nre", None if nre is None else nre.strip().upper()),
                ("contact_phone", None if contact_phone is None else contact_phone.strip()),
                ("contact_email", None if contact_email is None else contact_email.strip()),
                ("clinical_question", None if clinical_question is None else clinical_question.strip()),
                ("priority", priority),
                ("referring_physician", None if referring_physician is None else referring_physician.strip()[:128]),
            ):
                if value is not None and value != getattr(booking, name):
                    changed[name] = True
                    setattr(booking, name, value)
            if not changed:
                return booking
            with transaction.atomic():
                booking.save()
            audit_record(
                action="cup.booking.update",
                user=user,
                patient=booking.patient,
                source=source,
                detail=_audit_detail(booking, changed=changed),
            )
    except IntegrityError:
        raise _slot_taken_error(booking.station, booking.scheduled_at) from None
    return booking


def booking_cancel(*, booking: Booking, user: User | None, reason: str = "", source: str = "") -> Booking:
    """Cancel a booking not yet performed; its slot becomes free again."""
    with transaction.atomic():
        booking = _locked_booking(booking)
        if booking.status == Booking.Status.CANCELLED:
            raise BookingError(_("La prenotazione %(acc)s è già annullata.") % {"acc": booking.accession_number})
        if booking.status not in (Booking.Status.BOOKED, Booking.Status.ARRIVED):
            raise BookingError(
                _("L'esame %(acc)s è già stato eseguito: la prenotazione non si può annullare.")
                % {"acc": booking.accession_number}
            )
        booking.status = Booking.Status.CANCELLED
        booking.save(update_fields=["status", "updated_at"])
        _record_status(booking, Booking.Status.CANCELLED, user=_user_or_none(user), note=reason)
        audit_record(
            action="cup.booking.cancel",
            user=user,
            patient=booking.patient,
            source=source,
            detail=_audit_detail(booking, reason=reason[:500]),
        )
    return booking


# Who may move a booking where: the CUP accepts the patient (arrived), the
# modality's procedure step marks it in progress and performed (or back to
# arrived when discontinued), the matching of images marks it performed, the
# signed report marks it reported.
_TRANSITIONS: dict[str, set[str]] = {
    Booking.Status.BOOKED: {
        Booking.Status.ARRIVED,
        Booking.Status.IN_PROGRESS,
        Booking.Status.PERFORMED,
        Booking.Status.CANCELLED,
    },
    Booking.Status.ARRIVED: {Booking.Status.IN_PROGRESS, Booking.Status.PERFORMED, Booking.Status.CANCELLED},
    # The modality's MPPS: completed (performed) or discontinued (back to accepted, the reason noted).
    Booking.Status.IN_PROGRESS: {Booking.Status.PERFORMED, Booking.Status.ARRIVED},
    Booking.Status.PERFORMED: {Booking.Status.REPORTED},
    Booking.Status.REPORTED: set(),
    Booking.Status.CANCELLED: set(),
}


def _user_or_none(user: Any) -> Any:
    return user if user is not None and user.is_authenticated else None


def booking_status_set(
    *,
    booking: Booking,
    status: str,
    user: User | None = None,
    system: str = "",
    note: str = "",
    source: str = "",
) -> Booking:
    """Move a booking along its life; a move to where it already is does nothing."""
    with transaction.atomic():
        booking = _locked_booking(booking)
        if booking.status == status:
            return booking
        if status not in _TRANSITIONS.get(booking.status, set()):
            raise BookingError(
                _("La prenotazione %(acc)s non può passare da %(old)s a %(new)s.")
                % {
                    "acc": booking.accession_number,
                    "old": booking.get_status_display(),
                    "new": Booking.Status(status).label,
                },
                field="status",
            )
        old = booking.status
        booking.status = status
        booking.save(update_fields=["status", "updated_at"])
        _record_status(booking, status, user=_user_or_none(user), system=system, note=note)
        audit_record(
            action="cup.booking.status",
            user=user,
            system=system,
            patient=booking.patient,
            study=booking.study,
            source=source,
            detail=_audit_detail(booking, previous_status=old, note=note[:500]),
        )
    return booking


REPORTED_SYSTEM = "archive.report_signed"


def booking_reported(*, report_pk: int, study_pk: int) -> str:
    """Mark the study's booking reported because ``report_pk`` was signed; what happened.

    Idempotent: a booking already reported (a correction or an addendum
    signed later) is left alone, and so is a study with no booking (an
    emergency exam, one reassigned by reconciliation). A booking the images
    did not yet mark performed goes through ``performed`` first, so that its
    history tells the whole story. Returns ``reported``, ``already_reported``,
    ``not_signed``, ``no_booking`` or ``cancelled``.
    """
    report = Report.objects.filter(pk=report_pk, study_id=study_pk, status=Report.Status.SIGNED).first()
    if report is None:
        logger.warning(
            "report_signed for report %s of study %s, which is not a signed report of it", report_pk, study_pk
        )
        return "not_signed"
    with transaction.atomic():
        # Locked: two versions signed at once must not both walk the booking.
        booking = Booking.objects.select_for_update(of=("self",)).filter(study_id=study_pk).first()
        if booking is None:
            return "no_booking"
        if booking.status == Booking.Status.REPORTED:
            return "already_reported"
        if booking.status == Booking.Status.CANCELLED:
            logger.warning("booking %s is cancelled but its study %s was reported", booking.accession_number, study_pk)
            return "cancelled"
        note = _("referto v%(version)s firmato") % {"version": report.version}
        if booking.status != Booking.Status.PERFORMED:
            booking = booking_status_set(
                booking=booking, status=Booking.Status.PERFORMED, system=REPORTED_SYSTEM, note=note
            )
        booking_status_set(booking=booking, status=Booking.Status.REPORTED, system=REPORTED_SYSTEM, note=note)
    logger.info("booking %s reported (report %s)", booking.accession_number, report_pk)
    return "reported"


def bookings_reported_overdue(
    *, now: dt.datetime | None = None, limit: int = reports.FOLLOWUP_SWEEP_LIMIT
) -> list[tuple[int, int]]:
    """``(report, study)`` for each booking that a version signed past the grace period has not made *refertato*.

    The arguments of :func:`booking_reported`, one pair per study (its first
    such version). A cancelled booking is not one: that task leaves it alone.
    """
    pending = Booking.objects.filter(study_id=OuterRef("study_id")).exclude(
        status__in=[Booking.Status.REPORTED, Booking.Status.CANCELLED]
    )
    rows = reports.reports_signed_overdue(now=now).filter(Exists(pending)).values_list("pk", "study_id")[:limit]
    first: dict[int, int] = {}
    for report_pk, study_pk in rows:
        first.setdefault(study_pk, report_pk)
    return [(report_pk, study_pk) for study_pk, report_pk in first.items()]


def distribution_choose(
    *,
    booking: Booking,
    delivery: str,
    consent_given: bool = False,
    consent_text: ConsentText | None = None,
    channel: str,
    user: User | None,
    recorded_by_name: str = "",
    note: str = "",
    source: str = "",
) -> DistributionChoice:
    """Record a new version of the patient's choice; online needs consent.

    Moving from online to CD is a revocation of the consent, recorded as such.
    The choice is closed once the report is signed or the booking cancelled.
    """
    with transaction.atomic():
        booking = _locked_booking(booking)
        if booking.is_choice_locked():
            # Reported: by its status, or by a signed report the worker has not yet recorded.
            status = Booking.Status.CANCELLED if booking.status == Booking.Status.CANCELLED else Booking.Status.REPORTED
            raise BookingError(
                _("La prenotazione %(acc)s è %(status)s: la scelta di consegna non si può più cambiare.")
                % {"acc": booking.accession_number, "status": Booking.Status(status).label},
                field="delivery",
            )
        _check_channel(channel)
        _check_delivery_consent(delivery=delivery, consent_given=consent_given)
        current = booking.current_choice()
        if delivery == DistributionChoice.Delivery.ONLINE and consent_text is None:
            consent_text = consent_text_current()
        if (
            current is not None
            and current.delivery == delivery
            and (
                delivery == DistributionChoice.Delivery.CD
                or current.consent_text_id == getattr(consent_text, "pk", None)
            )
        ):
            return current
        choice = _choice_add(
            booking,
            delivery=delivery,
            consent_text=consent_text,
            consent_given=consent_given,
            channel=channel,
            user=user,
            recorded_by_name=recorded_by_name,
            revokes_consent=bool(
                current is not None
                and current.delivery == DistributionChoice.Delivery.ONLINE
                and delivery == DistributionChoice.Delivery.CD
            ),
            note=note,
        )
        audit_record(
            action="cup.booking.choice",
            user=user,
            patient=booking.patient,
            source=source,
            detail=_audit_detail(booking, choice=choice),
        )
    return choice


def consent_revoke(
    *, booking: Booking, channel: str, user: User | None, recorded_by_name: str = "", source: str = ""
) -> DistributionChoice:
    """The patient revokes consent to online delivery: a new choice "CD" flagged as a revocation.

    The one caller, the citizen's portal (:func:`portal.publication.consent_revoke_online`),
    offers and accepts it only before the report is signed, as the information
    text says ("prima della pubblicazione del referto"), and withdraws in the
    same transaction whatever was published.
    """
    with transaction.atomic():
        booking = _locked_booking(booking)
        current = booking.current_choice()
        if current is None or current.delivery != DistributionChoice.Delivery.ONLINE:
            raise BookingError(
                _("La prenotazione %(acc)s non ha un consenso alla consegna online da revocare.")
                % {"acc": booking.accession_number},
                field="delivery",
            )
        _check_channel(channel)
        choice = _choice_add(
            booking,
            delivery=DistributionChoice.Delivery.CD,
            consent_text=None,
            consent_given=False,
            channel=channel,
            user=user,
            recorded_by_name=recorded_by_name,
            revokes_consent=True,
        )
        audit_record(
            action="cup.booking.consent_revoke",
            user=user,
            patient=booking.patient,
            source=source,
            detail=_audit_detail(booking, choice=choice),
        )
    return choice


def bookings_for_day(*, facility: Facility, day: dt.date) -> list[Booking]:
    tz = timezone.get_current_timezone()
    start = dt.datetime.combine(day, dt.time(0, 0), tzinfo=tz)
    return list(
        Booking.objects.filter(
            facility=facility, scheduled_at__gte=start, scheduled_at__lt=start + dt.timedelta(days=1)
        )
        .select_related("patient", "procedure", "station")
        .order_by("scheduled_at")
    )
