"""The citizen's FSE portal (issue 7): what was published to the citizen and
until when, who may act for whom (deleghe), the documents a citizen hid from
health professionals (oscuramento) and the audited break-glass accesses to
them. The rules over these rows live in :mod:`portal.availability`."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.validators import MinLengthValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from archive.models import Patient, Report, Study
from booking.models import Booking

# An emergency access must say why in words, not "x" or "urgente".
EMERGENCY_REASON_MIN_LENGTH = 10


class Publication(models.Model):
    """A signed report version made public to the citizen on the FSE.

    Created when the report is signed and the booking's choice is online;
    available until ``available_until`` (publication + the configured days,
    fixed at publication: changing the setting does not move existing
    windows). Never deleted: a withdrawal (superseded by a correction,
    consent revoked) is recorded on the row.
    """

    class WithdrawnReason(models.TextChoices):
        SUPERSEDED = "superseded", _("sostituito da una rettifica")
        CONSENT_REVOKED = "consent_revoked", _("consenso alla consegna online revocato")
        OTHER = "other", _("altro")

    booking = models.ForeignKey(
        Booking, on_delete=models.PROTECT, related_name="publications", verbose_name=_("prenotazione")
    )
    report = models.ForeignKey(Report, on_delete=models.PROTECT, related_name="publications", verbose_name=_("referto"))
    published_at = models.DateTimeField(_("pubblicato il"), default=timezone.now)
    available_until = models.DateTimeField(_("disponibile fino al"), db_index=True)
    withdrawn_at = models.DateTimeField(_("ritirato il"), null=True, blank=True)
    withdrawn_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("ritirato da"),
    )
    withdrawn_reason = models.CharField(
        _("motivo del ritiro"), max_length=16, choices=WithdrawnReason.choices, blank=True
    )

    class Meta:
        verbose_name = _("pubblicazione sul FSE")
        verbose_name_plural = _("pubblicazioni sul FSE")
        ordering = ["booking", "published_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["booking", "report"], name="publication_unique_report"),
            models.CheckConstraint(
                condition=models.Q(withdrawn_at__isnull=True, withdrawn_reason="")
                | (models.Q(withdrawn_at__isnull=False) & ~models.Q(withdrawn_reason="")),
                name="publication_withdrawn_has_reason",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.booking.accession_number} v{self.report.version} (fino al {self.available_until:%Y-%m-%d})"

    def is_live(self, now: dt.datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.withdrawn_at is None and self.available_until > now


class Delegation(models.Model):
    """A *delega*: the delegate (who logs in as themselves) acts for the delegator.

    Registered by staff on evidence (a parent for a minor, a guardian's
    appointment); valid from ``valid_from`` until ``valid_until`` (open when
    empty) unless revoked.
    """

    class Kind(models.TextChoices):
        PARENT = "genitore", _("genitore di un minore")
        GUARDIAN = "tutore", _("tutore o amministratore di sostegno")
        OTHER = "altro", _("altro delegato")

    delegator = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="delegations_given", verbose_name=_("delegante")
    )
    delegate = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="delegations_received", verbose_name=_("delegato")
    )
    kind = models.CharField(_("tipo"), max_length=16, choices=Kind.choices)
    valid_from = models.DateTimeField(_("valida dal"), default=timezone.now)
    valid_until = models.DateTimeField(_("valida fino al"), null=True, blank=True)
    evidence = models.TextField(
        _("documentazione"), help_text=_("Il documento presentato: atto di nomina, certificato, delega firmata.")
    )
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("registrata da")
    )
    registered_at = models.DateTimeField(_("registrata il"), auto_now_add=True)
    revoked_at = models.DateTimeField(_("revocata il"), null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("revocata da"),
    )

    class Meta:
        verbose_name = _("delega")
        verbose_name_plural = _("deleghe")
        ordering = ["delegator", "-valid_from"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(delegator=models.F("delegate")), name="delegation_not_self"),
            models.CheckConstraint(
                condition=models.Q(valid_until__isnull=True) | models.Q(valid_until__gt=models.F("valid_from")),
                name="delegation_valid_period",
            ),
        ]
        indexes = [models.Index(fields=["delegate", "revoked_at"], name="delegation_by_delegate")]

    def __str__(self) -> str:
        return f"{self.delegate} → {self.delegator} ({self.get_kind_display()})"

    def is_active(self, now: dt.datetime | None = None) -> bool:
        now = now or timezone.now()
        return (
            self.revoked_at is None and self.valid_from <= now and (self.valid_until is None or self.valid_until > now)
        )


class Concealment(models.Model):
    """An *oscuramento*: the patient hid a study from health professionals.

    Revealing it again closes the row (``revealed_at``); a later concealment
    is a new row, so the history stays. At most one is active per study.
    """

    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="concealments", verbose_name=_("paziente")
    )
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="concealments", verbose_name=_("studio"))
    # The citizen who asked: the patient or their delegate.
    requested_by = models.ForeignKey(
        Patient,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("richiesto da"),
    )
    hidden_at = models.DateTimeField(_("oscurato il"), default=timezone.now)
    hidden_by_patient = models.BooleanField(
        _("oscurato dal cittadino"), default=True, help_text=_("Dal portale; altrimenti registrato da un operatore.")
    )
    hidden_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("registrato da"),
    )
    revealed_at = models.DateTimeField(_("reso visibile il"), null=True, blank=True)
    revealed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("reso visibile da"),
    )

    class Meta:
        verbose_name = _("oscuramento")
        verbose_name_plural = _("oscuramenti")
        ordering = ["-hidden_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["study"], condition=models.Q(revealed_at__isnull=True), name="concealment_one_active"
            ),
        ]

    def __str__(self) -> str:
        state = _("attivo") if self.revealed_at is None else _("revocato")
        return f"{self.study} ({state})"


class EmergencyAccess(models.Model):
    """A break-glass opening of a concealed study by a professional, with the stated reason."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("utente")
    )
    study = models.ForeignKey(
        Study, on_delete=models.PROTECT, related_name="emergency_accesses", verbose_name=_("studio")
    )
    reason = models.TextField(_("motivo"), validators=[MinLengthValidator(EMERGENCY_REASON_MIN_LENGTH)])
    at = models.DateTimeField(_("quando"), default=timezone.now)
    source = models.CharField(_("da"), max_length=255, blank=True)

    class Meta:
        verbose_name = _("accesso in emergenza")
        verbose_name_plural = _("accessi in emergenza")
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.user} → {self.study} ({self.at:%Y-%m-%d %H:%M})"
