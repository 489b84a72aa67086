"""The citizen's FSE portal (issue 7): what was published to the citizen and
until when, who may act for whom (deleghe), the documents a citizen hid from
health professionals (oscuramento) and the audited break-glass accesses to
them. The rules over these rows live in :mod:`portal.publication`, :mod:`portal.exams`,
:mod:`portal.delegations`, :mod:`portal.oscuramento` and :mod:`portal.emergency`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinLengthValidator
from django.db import models, router, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from archive.models import Facility, Patient, Report, Study
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
    empty) unless revoked. A parent's delegation also ends when the child
    turns 18 (:func:`portal.delegations.delegations_in_force`).

    What it allows follows from its kind (:data:`KIND_RIGHTS`): every delegate
    sees the delegator's exams and downloads them; only a legal representative
    (a parent of a minor, a guardian, an administrator of support) manages the
    oscuramento; only the representative of someone who cannot act (a minor,
    a person under guardianship) revokes the consent to online delivery, which
    otherwise stays the data subject's. No delegate lifts a hiding the
    delegator set herself.
    """

    class Kind(models.TextChoices):
        PARENT = "genitore", _("genitore di un minore")
        GUARDIAN = "tutore", _("tutore (minore senza genitori o persona interdetta)")
        SUPPORT = "sostegno", _("amministratore di sostegno")
        OTHER = "altro", _("altro delegato (consultazione e download)")

    class Right(models.TextChoices):
        VIEW = "view", _("vedere gli esami e chi li ha consultati")
        DOWNLOAD = "download", _("scaricare referti e immagini")
        CONCEALMENT = "concealment", _("oscurare gli esami e renderli di nuovo visibili")
        CONSENT = "consent", _("revocare il consenso alla consegna online")

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
        """Started, not ended, not revoked (the age of a parent's child is
        :func:`portal.delegations.delegations_in_force`'s to check)."""
        now = now or timezone.now()
        return (
            self.revoked_at is None and self.valid_from <= now and (self.valid_until is None or self.valid_until > now)
        )

    @property
    def rights(self) -> frozenset[str]:
        return KIND_RIGHTS.get(self.kind, frozenset())

    def rights_display(self) -> list[str]:
        """What the delegation allows, in words, in :class:`Right`'s order."""
        return [str(label) for value, label in self.Right.choices if value in self.rights]


_SEE = frozenset({Delegation.Right.VIEW.value, Delegation.Right.DOWNLOAD.value})
# What each kind allows. Only the representative of someone who cannot act for
# herself (a minor, a person under guardianship) revokes the consent in her name:
# the beneficiary of an amministrazione di sostegno keeps her legal capacity, so
# her consent is hers to revoke, and the administrator manages the oscuramento only.
KIND_RIGHTS: dict[str, frozenset[str]] = {
    Delegation.Kind.PARENT: _SEE | {Delegation.Right.CONCEALMENT.value, Delegation.Right.CONSENT.value},
    Delegation.Kind.GUARDIAN: _SEE | {Delegation.Right.CONCEALMENT.value, Delegation.Right.CONSENT.value},
    Delegation.Kind.SUPPORT: _SEE | {Delegation.Right.CONCEALMENT.value},
    Delegation.Kind.OTHER: _SEE,
}
# The age of majority (codice civile, art. 2): a parent's delegation ends on the 18th birthday.
MAJORITY_AGE = 18


class ConcealmentVersion(models.Model):
    """One row (``pk=1``) whose ``version`` goes up in the transaction of every write of
    concealments through the ORM (:meth:`Concealment.save`, ``Concealment.objects...update()``):
    what the access policy reads to know that a study was concealed or revealed
    (:meth:`portal.policy.PortalPolicy.state_version`, the admin's cached filter choices).

    One row read by its key, where an aggregate over the concealments read every
    concealment of the region on each admin list page (12,000 rows: a 5.9 ms sequential
    scan). Counted in the writer's transaction, so the row's lock orders concurrent writers:
    the number changes with every committed write, in commit order (a maximum of the
    concealments' ids would not: a lower id may commit last)."""

    version = models.PositiveBigIntegerField(_("versione"), default=0)

    class Meta:
        verbose_name = _("versione degli oscuramenti")
        verbose_name_plural = _("versione degli oscuramenti")

    def __str__(self) -> str:
        return str(self.version)


def concealments_changed(*, using: str = "default") -> None:
    """Count one more write of concealments (in the caller's transaction). The row is made
    again when missing (a test database emptied by a flush)."""
    rows = ConcealmentVersion.objects.using(using).filter(pk=1)
    if not rows.update(version=F("version") + 1):
        ConcealmentVersion.objects.using(using).bulk_create([ConcealmentVersion(pk=1)], ignore_conflicts=True)
        rows.update(version=F("version") + 1)


class ConcealmentQuerySet(models.QuerySet["Concealment"]):
    def update(self, **kwargs: Any) -> int:
        """The rows updated, and :func:`concealments_changed` in the same transaction."""
        with transaction.atomic(using=self.db, savepoint=False):
            updated = super().update(**kwargs)
            if updated:
                concealments_changed(using=self.db)
        return updated


class Concealment(models.Model):
    """An *oscuramento*: the patient hid a study from health professionals.

    Revealing it again closes the row (``revealed_at``); a later concealment
    is a new row, so the history stays. At most one is active per study.
    Every write through the ORM counts in :class:`ConcealmentVersion` (``bulk_create``
    and raw SQL do not: the portal writes neither).
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

    objects = ConcealmentQuerySet.as_manager()

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

    def save(self, *args: Any, **kwargs: Any) -> None:
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            super().save(*args, **kwargs)
            concealments_changed(using=using)


class EmergencyAccess(models.Model):
    """A break-glass access by a professional to a patient's concealed studies, with the stated reason.

    Asked for a patient (a professional cannot tell whether any study is
    concealed), by holders of ``portal.emergency_access``; it lasts
    ``PACS_EMERGENCY_ACCESS_MINUTES``, and the citizen reads its reason.
    ``study`` is set only on the rows recorded before accesses were per patient.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("utente")
    )
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="emergency_accesses", verbose_name=_("paziente")
    )
    study = models.ForeignKey(
        Study,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="emergency_accesses",
        verbose_name=_("studio"),
    )
    reason = models.TextField(_("motivo"), validators=[MinLengthValidator(EMERGENCY_REASON_MIN_LENGTH)])
    at = models.DateTimeField(_("quando"), default=timezone.now)
    source = models.CharField(_("da"), max_length=255, blank=True)

    class Meta:
        verbose_name = _("accesso in emergenza")
        verbose_name_plural = _("accessi in emergenza")
        ordering = ["-at"]
        indexes = [models.Index(fields=["user", "at"], name="emergency_by_user")]
        permissions = [("emergency_access", _("Può chiedere un accesso in emergenza (solo personale clinico)"))]

    def __str__(self) -> str:
        return f"{self.user} → {self.patient} ({self.at:%Y-%m-%d %H:%M})"


class CitizenAccount(models.Model):
    """A citizen's login to the portal, tied to the person by the codice fiscale.

    The patient index row is looked up by ``codice_fiscale`` when needed: a
    citizen may log in before any exam of theirs reached the archive. Demo and
    desk-issued accounts log in with the codice fiscale and a password
    (``origin=local``); in production the region's identity provider (SPID or
    CIE over OpenID Connect) creates them on first login (``origin=oidc``).
    """

    class Origin(models.TextChoices):
        LOCAL = "local", _("credenziali locali")
        OIDC = "oidc", _("SPID/CIE (OpenID Connect)")

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="citizen", verbose_name=_("utente")
    )
    codice_fiscale = models.CharField(_("codice fiscale"), max_length=16, unique=True)
    origin = models.CharField(_("origine"), max_length=8, choices=Origin.choices, default=Origin.LOCAL)
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)

    class Meta:
        verbose_name = _("account del cittadino")
        verbose_name_plural = _("account dei cittadini")

    def __str__(self) -> str:
        return self.codice_fiscale


class DownloadPackage(models.Model):
    """A study's zip prepared for the citizen (DICOM media or JPEG), reused while its files are unchanged.

    ``fingerprint`` hashes the study's instances (UIDs and SHA-256) at the
    time of the request: a study that received new images gets a new package.
    The file lives under ``PACS_PORTAL_PACKAGE_DIR`` until it is purged
    (``PACS_PORTAL_PACKAGE_HOURS``); the row stays as the record.
    """

    class Kind(models.TextChoices):
        DICOM = "dicom", _("qualità diagnostica (DICOM)")
        JPEG = "jpeg", _("immagini JPEG")

    class Status(models.TextChoices):
        QUEUED = "queued", _("in coda")
        RUNNING = "running", _("in preparazione")
        READY = "ready", _("pronto")
        FAILED = "failed", _("non riuscito")
        PURGED = "purged", _("scaduto")

    study = models.ForeignKey(
        Study, on_delete=models.PROTECT, related_name="download_packages", verbose_name=_("studio")
    )
    kind = models.CharField(_("tipo"), max_length=8, choices=Kind.choices)
    fingerprint = models.CharField(_("impronta del contenuto"), max_length=64)
    status = models.CharField(_("stato"), max_length=8, choices=Status.choices, default=Status.QUEUED, db_index=True)
    total_bytes = models.BigIntegerField(_("byte da scrivere"), default=0)
    done_bytes = models.BigIntegerField(_("byte scritti"), default=0)
    path = models.CharField(_("file"), max_length=512, blank=True)
    size = models.BigIntegerField(_("dimensione"), default=0)
    instance_count = models.PositiveIntegerField(_("istanze"), default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("richiesto da"),
    )
    requested_at = models.DateTimeField(_("richiesto il"), default=timezone.now)
    started_at = models.DateTimeField(_("iniziato il"), null=True, blank=True)
    # Renewed with each progress report: a builder whose heartbeat stopped is
    # dead (a killed worker) and the package may be taken over.
    heartbeat_at = models.DateTimeField(_("ultimo avanzamento"), null=True, blank=True)
    ready_at = models.DateTimeField(_("pronto il"), null=True, blank=True)
    error = models.TextField(_("errore"), blank=True)

    class Meta:
        verbose_name = _("pacchetto da scaricare")
        verbose_name_plural = _("pacchetti da scaricare")
        ordering = ["-requested_at"]
        constraints = [
            # One package in the making or ready per content: two clicks share it.
            models.UniqueConstraint(
                fields=["study", "kind", "fingerprint"],
                condition=models.Q(status__in=["queued", "running", "ready"]),
                name="download_package_one_live",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.study} {self.kind} ({self.status})"

    @property
    def percent(self) -> int:
        if self.status == self.Status.READY:
            return 100
        if self.total_bytes <= 0:
            return 0
        return min(99, int(self.done_bytes * 100 / self.total_bytes))


class Notification(models.Model):
    """A message for a portal user (a package is ready), shown on their pages until read."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="portal_notifications",
        verbose_name=_("utente"),
    )
    booking = models.ForeignKey(
        Booking, null=True, blank=True, on_delete=models.CASCADE, related_name="+", verbose_name=_("prenotazione")
    )
    message = models.CharField(_("messaggio"), max_length=500)
    created_at = models.DateTimeField(_("creata il"), default=timezone.now)
    read_at = models.DateTimeField(_("letta il"), null=True, blank=True)

    class Meta:
        verbose_name = _("notifica")
        verbose_name_plural = _("notifiche")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "read_at"], name="notification_unread")]

    def __str__(self) -> str:
        return self.message


class CdPickup(models.Model):
    """Where and from when a facility hands over the CD of an exam delivered on CD.

    The CD is burned once the report is signed: it can be collected from
    ``days_after_signing`` days after the signature (1: the day after), at
    ``place`` during ``hours``. A facility without a row tells the citizen
    the facility's name and "dal giorno dopo la firma del referto".
    """

    facility = models.OneToOneField(
        Facility, on_delete=models.CASCADE, related_name="cd_pickup", verbose_name=_("presidio")
    )
    place = models.CharField(
        _("dove si ritira"),
        max_length=200,
        help_text=_("Come lo legge il cittadino, es. «Sportello ritiro referti, piano terra, ingresso principale»."),
    )
    hours = models.CharField(_("orari"), max_length=200, blank=True, help_text=_("Es. «dal lunedì al venerdì, 8–13»."))
    days_after_signing = models.PositiveSmallIntegerField(
        _("giorni dopo la firma"),
        default=1,
        validators=[MaxValueValidator(60)],
        help_text=_("Da quanti giorni dopo la firma del referto il CD è pronto (1 = il giorno dopo)."),
    )

    class Meta:
        verbose_name = _("ritiro del CD")
        verbose_name_plural = _("ritiro dei CD")

    def __str__(self) -> str:
        return f"{self.facility.code}: {self.place}"


class CdMedium(models.Model):
    """The CD (IHE PDI) of a booking whose patient chose CD delivery: one per
    signed report version, its ISO 9660 image made by :mod:`portal.cdmedia`.

    The image is written on the server and burned by the CUP, who marks it
    handed over (*consegnato*). A newer signed version (a correction, an
    addendum) makes a new medium and supersedes those not yet handed over; a
    rejection note (IOCM) that withdraws images makes ready media stale and a
    new one is made. Never deleted: the rows say what was given to whom.
    """

    class Status(models.TextChoices):
        PREPARING = "preparing", _("in preparazione")
        READY = "ready", _("pronto da masterizzare")
        FAILED = "failed", _("non riuscito")
        DELIVERED = "delivered", _("consegnato")
        SUPERSEDED = "superseded", _("sostituito da una nuova versione del referto")
        STALE = "stale", _("da rifare: immagini ritirate")

    booking = models.ForeignKey(
        Booking, on_delete=models.PROTECT, related_name="cd_media", verbose_name=_("prenotazione")
    )
    report = models.ForeignKey(Report, on_delete=models.PROTECT, related_name="cd_media", verbose_name=_("referto"))
    status = models.CharField(_("stato"), max_length=16, choices=Status.choices, default=Status.PREPARING)
    # The study's content the image holds (portal.downloads.study_fingerprint): a
    # rejection note changes it, and a ready image of other content is stale.
    fingerprint = models.CharField(_("impronta del contenuto"), max_length=64, blank=True)
    path = models.CharField(_("file"), max_length=500, blank=True)
    size = models.BigIntegerField(_("dimensione (byte)"), default=0)
    sha256 = models.CharField("SHA-256", max_length=64, blank=True)
    instance_count = models.PositiveIntegerField(_("immagini"), default=0)
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(default=0)
    # Written with the progress: a medium "preparing" whose heartbeat stopped lost its worker.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(_("errore"), blank=True)
    created_at = models.DateTimeField(_("creato il"), default=timezone.now)
    ready_at = models.DateTimeField(_("pronto il"), null=True, blank=True)
    delivered_at = models.DateTimeField(_("consegnato il"), null=True, blank=True)
    delivered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("consegnato da"),
    )
    superseded_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="+", verbose_name=_("sostituito da")
    )

    class Meta:
        verbose_name = _("CD dell'esame")
        verbose_name_plural = _("CD degli esami")
        ordering = ["-created_at", "-id"]
        permissions = [("deliver_cdmedium", _("Può scaricare e consegnare i CD degli esami"))]
        constraints = [
            # One live medium per version: the task is idempotent, a redelivery finds it.
            models.UniqueConstraint(
                fields=["booking", "report"],
                condition=models.Q(status__in=["preparing", "ready", "failed", "delivered"]),
                name="cd_medium_one_live_per_report",
            ),
            models.CheckConstraint(
                condition=~models.Q(status="delivered") | models.Q(delivered_at__isnull=False),
                name="cd_medium_delivered_has_when",
            ),
        ]

    def __str__(self) -> str:
        return f"CD {self.booking.accession_number} v{self.report.version} ({self.status})"

    @property
    def percent(self) -> int:
        if self.status != self.Status.PREPARING or not self.progress_total:
            return 0
        return min(100, int(100 * self.progress_done / self.progress_total))
