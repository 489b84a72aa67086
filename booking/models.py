"""CUP bookings: the procedure catalogue, the stations and their slots, the
booking with its accession number and status history, the distribution
choice with the consent behind it, and the queue of studies to reconcile."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from archive.models import Facility, Patient, Report, Study, ae_title_validator

# A telephone number as people write it: digits, spaces and + . / - ( ).
phone_validator = RegexValidator(
    r"^\+?[0-9][0-9 ./()-]{4,30}$", _("Un numero di telefono: cifre, spazi e + . / - ( ), es. 040 399 1111.")
)

# The NRE (numero di ricetta elettronica) of a dematerialised prescription:
# 15 characters, the region's 5-character code then 10 digits (DM 2 November 2011).
nre_validator = RegexValidator(
    r"^[0-9A-Z]{5}[0-9]{10}$",
    _("Il numero di ricetta elettronica (NRE) ha 15 caratteri: 5 lettere o cifre e 10 cifre."),
)


class AppendOnly(models.Model):
    """A row that is written once: a history entry, a consent version."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValidationError(_("Questa registrazione non si può modificare: se ne aggiunge una nuova."))
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ValidationError(_("Questa registrazione non si può cancellare."))


class Procedure(models.Model):
    """An exam in the catalogue the CUP books from."""

    code = models.CharField(_("codice"), max_length=16, unique=True)
    description = models.CharField(_("descrizione"), max_length=200)
    modality = models.CharField(
        _("modalità DICOM"),
        max_length=16,
        validators=[RegexValidator(r"^[A-Z0-9]{2,16}$", _("Una modalità DICOM: CT, MR, US, NM, MG..."))],
    )
    body_part = models.CharField(_("distretto"), max_length=64, blank=True)
    preparation = models.TextField(
        _("preparazione"),
        blank=True,
        help_text=_(
            "Che cosa fa il paziente prima dell'esame (digiuno, oggetti metallici, esami da portare): "
            "è stampato sulla ricevuta. Si rivolge al paziente con il Lei."
        ),
    )
    active = models.BooleanField(_("prenotabile"), default=True)

    class Meta:
        verbose_name = _("prestazione")
        verbose_name_plural = _("prestazioni")
        ordering = ["modality", "description"]

    def __str__(self) -> str:
        return f"{self.code} – {self.description}"


class Station(models.Model):
    """A modality room whose day is cut into equal slots; its AE title is the
    worklist's ScheduledStationAETitle."""

    facility = models.ForeignKey(
        Facility, on_delete=models.PROTECT, related_name="stations", verbose_name=_("presidio")
    )
    ae_title = models.CharField(_("AE title"), max_length=16, validators=[ae_title_validator])
    name = models.CharField(_("nome"), max_length=100)
    modality = models.CharField(_("modalità DICOM"), max_length=16)
    slot_minutes = models.PositiveSmallIntegerField(
        _("durata dello slot (minuti)"), default=20, validators=[MinValueValidator(5), MaxValueValidator(240)]
    )
    opens_at = models.TimeField(_("apertura"), default=dt.time(8, 0))
    closes_at = models.TimeField(_("chiusura"), default=dt.time(18, 0))
    open_weekdays = models.CharField(
        _("giorni di apertura"),
        max_length=7,
        default="1234567",
        validators=[
            RegexValidator(r"^1?2?3?4?5?6?7?$", _("Cifre dei giorni, da 1 (lunedì) a 7 (domenica), es. 12345."))
        ],
        help_text=_("Giorni della settimana con slot: 1 = lunedì … 7 = domenica, es. 123456."),
    )
    location = models.CharField(
        _("dove si trova"),
        max_length=200,
        blank=True,
        help_text=_(
            "Reparto, edificio e piano dove si presenta il paziente, "
            "es. «Radiologia, piano terra, torre medica»: è stampato sulla ricevuta."
        ),
    )
    active = models.BooleanField(_("attiva"), default=True)

    class Meta:
        verbose_name = _("diagnostica")
        verbose_name_plural = _("diagnostiche")
        ordering = ["facility__code", "modality", "name"]
        constraints = [models.UniqueConstraint(fields=["facility", "ae_title"], name="station_unique_ae")]

    def __str__(self) -> str:
        return f"{self.name} ({self.ae_title}, {self.facility.code})"

    def is_open_on(self, day: dt.date) -> bool:
        return str(day.isoweekday()) in self.open_weekdays

    def clean(self) -> None:
        if self.opens_at and self.closes_at and self.opens_at >= self.closes_at:
            raise ValidationError({"closes_at": _("La chiusura viene dopo l'apertura.")})


class FacilityContact(models.Model):
    """Where a facility is and which CUP its patients call to move or cancel a
    booking: printed on the receipt. The CUP is usually the health authority's,
    so several facilities give the same number."""

    facility = models.OneToOneField(
        Facility, on_delete=models.CASCADE, related_name="cup_contact", verbose_name=_("presidio")
    )
    address = models.CharField(_("indirizzo"), max_length=200, help_text=_("Via, numero civico, CAP e comune."))
    cup_phone = models.CharField(
        _("telefono del CUP"),
        max_length=32,
        validators=[phone_validator],
        help_text=_("Il numero che il paziente chiama per spostare o disdire l'appuntamento."),
    )
    cup_hours = models.CharField(
        _("orari del CUP"), max_length=100, blank=True, help_text=_("es. «dal lunedì al venerdì, 8:00–17:00»")
    )

    class Meta:
        verbose_name = _("recapiti del presidio")
        verbose_name_plural = _("recapiti dei presidi")
        ordering = ["facility__code"]

    def __str__(self) -> str:
        return f"{self.facility.code}: {self.address}, CUP {self.cup_phone}"


class AccessionSequence(models.Model):
    """A facility's accession number prefix and its counter for the year."""

    facility = models.OneToOneField(
        Facility, on_delete=models.PROTECT, related_name="accession_sequence", verbose_name=_("presidio")
    )
    prefix = models.CharField(
        _("prefisso"),
        max_length=4,
        unique=True,
        validators=[RegexValidator(r"^[A-Z0-9]{1,4}$", _("Da 1 a 4 lettere maiuscole o cifre."))],
    )
    year = models.PositiveSmallIntegerField(_("anno"), default=0)
    last_number = models.PositiveIntegerField(_("ultimo numero"), default=0)

    class Meta:
        verbose_name = _("numerazione accession number")
        verbose_name_plural = _("numerazioni accession number")

    def __str__(self) -> str:
        return f"{self.prefix} ({self.facility.code})"


class ConsentText(models.Model):
    """A version of the information text the patient reads before consenting
    to digital delivery (DPCM 8 August 2013, art. 3)."""

    version = models.CharField(_("versione"), max_length=32, unique=True)
    title = models.CharField(_("titolo"), max_length=200)
    body = models.TextField(_("testo"))
    published_at = models.DateTimeField(_("in vigore dal"), default=timezone.now)

    class Meta:
        verbose_name = _("informativa")
        verbose_name_plural = _("informative")
        ordering = ["-published_at"]

    def __str__(self) -> str:
        return f"{self.version} – {self.title}"


class Booking(models.Model):
    class Status(models.TextChoices):
        BOOKED = "booked", _("prenotato")
        ARRIVED = "arrived", _("accettato")
        # The modality reported the exam started (an MPPS IN PROGRESS, archive.procedure_steps).
        IN_PROGRESS = "in_progress", _("in esecuzione")
        PERFORMED = "performed", _("eseguito")
        REPORTED = "reported", _("refertato")
        CANCELLED = "cancelled", _("annullato")

    class Channel(models.TextChoices):
        REGIONAL_CUP = "regional_cup", _("CUP regionale")
        AUTHORITY_CUP = "authority_cup", _("CUP aziendale")
        PHONE = "phone", _("telefono")
        ONLINE = "online", _("online")

    class Priority(models.TextChoices):
        URGENT = "U", _("U – urgente (entro 72 ore)")
        SHORT = "B", _("B – breve (entro 10 giorni)")
        DEFERRED = "D", _("D – differita")
        PLANNED = "P", _("P – programmata")

    accession_number = models.CharField("AccessionNumber", max_length=16, unique=True)
    # Given to the modality through the worklist, so that the study it makes
    # carries it; matching does not depend on it (the accession number does).
    study_instance_uid = models.CharField("StudyInstanceUID", max_length=64, unique=True)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="bookings", verbose_name=_("paziente"))
    facility = models.ForeignKey(
        Facility, on_delete=models.PROTECT, related_name="bookings", verbose_name=_("presidio")
    )
    procedure = models.ForeignKey(
        Procedure, on_delete=models.PROTECT, related_name="bookings", verbose_name=_("prestazione")
    )
    station = models.ForeignKey(
        Station, on_delete=models.PROTECT, related_name="bookings", verbose_name=_("diagnostica")
    )
    scheduled_at = models.DateTimeField(_("data e ora"), db_index=True)
    nre = models.CharField(_("NRE"), max_length=15, blank=True, validators=[nre_validator])
    clinical_question = models.TextField(_("quesito diagnostico"), blank=True)
    # The prescription's priority class (classe di priorità della ricetta):
    # U within 72 hours, B within 10 days, D deferred, P planned.
    priority = models.CharField(
        _("priorità"), max_length=1, choices=Priority.choices, default=Priority.PLANNED, db_index=True
    )
    referring_physician = models.CharField(_("medico prescrittore"), max_length=128, blank=True)
    contact_phone = models.CharField(_("telefono"), max_length=32, blank=True)
    contact_email = models.EmailField(_("e-mail"), blank=True)
    channel = models.CharField(_("canale di prenotazione"), max_length=16, choices=Channel.choices)
    operator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("operatore"),
    )
    external_id = models.CharField(
        _("identificativo nel CUP esterno"), max_length=64, null=True, blank=True, unique=True, default=None
    )
    status = models.CharField(_("stato"), max_length=16, choices=Status.choices, default=Status.BOOKED)
    study = models.OneToOneField(
        Study, null=True, blank=True, on_delete=models.PROTECT, related_name="booking", verbose_name=_("studio")
    )
    created_at = models.DateTimeField(_("creata il"), auto_now_add=True)
    updated_at = models.DateTimeField(_("modificata il"), auto_now=True)

    class Meta:
        verbose_name = _("prenotazione")
        verbose_name_plural = _("prenotazioni")
        ordering = ["scheduled_at"]
        constraints = [
            # The slot guard: two operators booking the same slot at the same
            # moment both pass every check in Python; the database lets one in.
            models.UniqueConstraint(
                fields=["station", "scheduled_at"],
                condition=~models.Q(status="cancelled"),
                name="booking_slot_taken",
            ),
        ]
        indexes = [models.Index(fields=["facility", "status", "scheduled_at"], name="booking_worklist")]

    def __str__(self) -> str:
        when = timezone.localtime(self.scheduled_at)
        return f"{self.accession_number} {self.procedure.description} {when:%Y-%m-%d %H:%M}"

    def current_choice(self) -> DistributionChoice | None:
        return self.choices.order_by("-version").first()

    def is_choice_locked(self) -> bool:
        """The choice can change until the study's report is signed (or the booking cancelled).

        The signed report closes it, not the booking's status: a worker marks
        the booking reported and publishes after the signing, and a choice
        changed in between would be one nobody acts on.
        """
        if self.status in (self.Status.REPORTED, self.Status.CANCELLED):
            return True
        return self.study_id is not None and self.study_has_signed_report()

    def study_has_signed_report(self) -> bool:
        """Whether the booking's study has a signed report (its status may not say so yet)."""
        if self.study_id is None:
            return False  # a report always has its study
        return Report.objects.filter(study_id=self.study_id, status=Report.Status.SIGNED).exists()

    def is_active(self) -> bool:
        return self.status != self.Status.CANCELLED


class BookingStatusChange(AppendOnly):
    booking = models.ForeignKey(
        Booking, on_delete=models.PROTECT, related_name="status_changes", verbose_name=_("prenotazione")
    )
    status = models.CharField(_("stato"), max_length=16, choices=Booking.Status.choices)
    at = models.DateTimeField(_("quando"), default=timezone.now)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("utente"),
    )
    system = models.CharField(_("processo di sistema"), max_length=64, blank=True)
    note = models.CharField(_("nota"), max_length=500, blank=True)

    class Meta:
        verbose_name = _("cambio di stato")
        verbose_name_plural = _("cambi di stato")
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.booking.accession_number} → {self.status} ({self.at:%Y-%m-%d %H:%M})"


class DistributionChoice(AppendOnly):
    """One version of how the patient wants the report and images: CD at the
    facility, or online on the FSE with explicit prior consent. A change or a
    revocation is a new version; none is ever changed or removed."""

    class Delivery(models.TextChoices):
        CD = "cd", _("CD da ritirare presso il presidio")
        ONLINE = "online", _("online sul Fascicolo Sanitario Elettronico")

    booking = models.ForeignKey(
        Booking, on_delete=models.PROTECT, related_name="choices", verbose_name=_("prenotazione")
    )
    version = models.PositiveIntegerField(_("versione"))
    delivery = models.CharField(_("consegna"), max_length=8, choices=Delivery.choices)
    consent_text = models.ForeignKey(
        ConsentText,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("informativa accettata"),
    )
    revokes_consent = models.BooleanField(_("revoca del consenso"), default=False)
    channel = models.CharField(_("raccolto tramite"), max_length=16, choices=Booking.Channel.choices)
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("registrato da"),
    )
    recorded_by_name = models.CharField(
        _("operatore (sistema esterno)"),
        max_length=128,
        blank=True,
        help_text=_("Chi ha raccolto la scelta, quando arriva da un CUP esterno."),
    )
    recorded_at = models.DateTimeField(_("registrato il"), default=timezone.now)
    note = models.CharField(_("nota"), max_length=500, blank=True)

    class Meta:
        verbose_name = _("scelta di consegna")
        verbose_name_plural = _("scelte di consegna")
        ordering = ["booking", "version"]
        constraints = [
            models.UniqueConstraint(fields=["booking", "version"], name="distributionchoice_unique_version"),
            # Online delivery exists only with the information text the patient agreed to.
            models.CheckConstraint(
                condition=~models.Q(delivery="online") | models.Q(consent_text__isnull=False),
                name="distributionchoice_online_has_consent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.booking.accession_number} v{self.version}: {self.get_delivery_display()}"


class Reconciliation(models.Model):
    """A study that could not be tied to its booking by itself, waiting for staff."""

    class Reason(models.TextChoices):
        NO_BOOKING = "no_booking", _("nessuna prenotazione con questo accession number")
        NO_ACCESSION = "no_accession", _("studio senza accession number")
        IDENTITY_MISMATCH = "identity_mismatch", _("i dati del paziente non corrispondono alla prenotazione")
        BOOKING_CANCELLED = "booking_cancelled", _("la prenotazione è annullata")
        BOOKING_TAKEN = "booking_taken", _("la prenotazione è già collegata a un altro studio")

    class State(models.TextChoices):
        PENDING = "pending", _("da riconciliare")
        LINKED = "linked", _("collegato alla prenotazione")
        REASSIGNED = "reassigned", _("riassegnato")
        REJECTED = "rejected", _("respinto")

    study = models.OneToOneField(
        Study, on_delete=models.PROTECT, related_name="reconciliation", verbose_name=_("studio")
    )
    booking = models.ForeignKey(
        Booking,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reconciliations",
        verbose_name=_("prenotazione"),
        help_text=_("La prenotazione con lo stesso accession number, se c'è; dopo la risoluzione, quella scelta."),
    )
    reason = models.CharField(_("motivo"), max_length=32, choices=Reason.choices)
    differences = models.JSONField(_("differenze"), default=list, blank=True)
    state = models.CharField(_("stato"), max_length=16, choices=State.choices, default=State.PENDING, db_index=True)
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)
    resolved_at = models.DateTimeField(_("risolto il"), null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("risolto da"),
    )
    note = models.CharField(_("nota"), max_length=500, blank=True)

    class Meta:
        verbose_name = _("studio da riconciliare")
        verbose_name_plural = _("studi da riconciliare")
        ordering = ["-created_at"]
        permissions = [("reconcile_study", _("Può riconciliare gli studi con le prenotazioni"))]

    def __str__(self) -> str:
        return f"{self.study} – {self.get_reason_display()} ({self.get_state_display()})"
