"""Export projects for teaching and research, their key tables, and their exports.

The key table (:class:`PseudonymKey`: who each pseudonym is) and the project's
secret (:class:`ProjectSecret`: what the new UIDs are hashed with) are read
only by the data-protection role (``research.view_pseudonymkey``, the group
"Responsabile protezione dati"); the researcher sees the project, its
choices and its exports, never who is behind a pseudonym.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from archive.models import Patient, Study

DPO_GROUP = "Responsabile protezione dati"
KEY_PERM = "research.view_pseudonymkey"
EXPORT_PERM = "research.add_export"


class ExportProject(models.Model):
    """A teaching or research project: its options of the Basic Profile, fixed at creation.

    The options are not changed afterwards: two exports of one project must be
    de-identified alike for their pseudonyms, dates and UIDs to line up.
    """

    code = models.SlugField(
        _("codice"),
        max_length=16,
        unique=True,
        help_text=_("Breve, senza spazi: prefisso degli pseudonimi (es. RIC-TORACE)."),
    )
    title = models.CharField(_("titolo"), max_length=200)
    purpose = models.TextField(_("finalità"), help_text=_("Didattica o ricerca: per che cosa servono i dati."))
    retain_dates_modified = models.BooleanField(
        _("date spostate (conserva gli intervalli)"),
        default=True,
        help_text=_("Ogni data del paziente è spostata dello stesso numero di giorni: gli intervalli restano veri."),
    )
    retain_device_identity = models.BooleanField(
        _("conserva l'identità dell'apparecchio"),
        default=False,
        help_text=_("Nome della stazione, numero di serie, identificativi del detettore."),
    )
    retain_patient_characteristics = models.BooleanField(_("conserva sesso, età, peso e altezza"), default=False)
    clean_descriptors = models.BooleanField(
        _("conserva le descrizioni ripulite"),
        default=False,
        help_text=_("Descrizioni di studio e serie senza nomi, codici e date del paziente."),
    )
    # Clean Pixel Data: [{"modality": "US", "columns": 800, "rows": 600, "boxes": [[x, y, w, h], ...]}, ...]
    pixel_regions = models.JSONField(
        _("zone da oscurare"),
        default=list,
        blank=True,
        help_text=_("Dove le immagini di una modalità e di una dimensione portano il testo impresso."),
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("creato da")
    )
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)

    class Meta:
        verbose_name = _("progetto di esportazione")
        verbose_name_plural = _("progetti di esportazione")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.code} – {self.title}"


class ProjectSecret(models.Model):
    """The project's key for the new UIDs: with it, a new UID can be traced back; only the DPO reads it."""

    project = models.OneToOneField(
        ExportProject, on_delete=models.CASCADE, related_name="secret", verbose_name=_("progetto")
    )
    secret = models.CharField(_("segreto"), max_length=128, editable=False)

    class Meta:
        verbose_name = _("segreto del progetto")
        verbose_name_plural = _("segreti dei progetti")

    def __str__(self) -> str:
        return str(self.project)


class PseudonymKey(models.Model):
    """One row of a project's key table: who the pseudonym is, and their date shift."""

    project = models.ForeignKey(
        ExportProject, on_delete=models.PROTECT, related_name="keys", verbose_name=_("progetto")
    )
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="+", verbose_name=_("paziente"))
    pseudonym = models.CharField(_("pseudonimo"), max_length=64)
    codice_fiscale = models.CharField(_("codice fiscale"), max_length=16, blank=True)
    original_patient_id = models.CharField(_("PatientID originale"), max_length=64, blank=True)
    original_issuer = models.CharField(_("IssuerOfPatientID originale"), max_length=64, blank=True)
    date_shift_days = models.IntegerField(_("spostamento delle date (giorni)"))
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)

    class Meta:
        verbose_name = _("chiave di pseudonimizzazione")
        verbose_name_plural = _("tabella delle chiavi")
        constraints = [
            models.UniqueConstraint(fields=["project", "patient"], name="pseudonymkey_patient_once"),
            models.UniqueConstraint(fields=["project", "pseudonym"], name="pseudonymkey_pseudonym_once"),
        ]

    def __str__(self) -> str:
        return self.pseudonym


class Export(models.Model):
    """One export of a project: what was asked, its progress, its zip and its summary."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("in coda")
        RUNNING = "running", _("in preparazione")
        READY = "ready", _("pronta")
        FAILED = "failed", _("non riuscita")

    project = models.ForeignKey(
        ExportProject, on_delete=models.PROTECT, related_name="exports", verbose_name=_("progetto")
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("richiesta da")
    )
    requested_at = models.DateTimeField(_("richiesta il"), auto_now_add=True)
    criteria = models.JSONField(_("criteri"), default=dict, blank=True)
    studies = models.ManyToManyField(Study, related_name="+", verbose_name=_("studi"))
    status = models.CharField(_("stato"), max_length=16, choices=Status.choices, default=Status.QUEUED)
    done = models.PositiveIntegerField(_("istanze elaborate"), default=0)
    total = models.PositiveIntegerField(_("istanze da elaborare"), default=0)
    path = models.CharField(_("file"), max_length=512, blank=True)
    size = models.BigIntegerField(_("dimensione (byte)"), default=0)
    sha256 = models.CharField("SHA-256", max_length=64, blank=True)
    summary = models.JSONField(_("riepilogo"), default=dict, blank=True)
    error = models.TextField(_("errore"), blank=True)
    finished_at = models.DateTimeField(_("terminata il"), null=True, blank=True)
    # Renewed while the build writes; a build that stopped renewing it died (research.services.STALE).
    heartbeat_at = models.DateTimeField(_("ultimo segno di vita"), null=True, blank=True)

    class Meta:
        verbose_name = _("esportazione anonimizzata")
        verbose_name_plural = _("esportazioni anonimizzate")
        ordering = ["-requested_at"]

    def __str__(self) -> str:
        return f"{self.project.code} #{self.pk}"

    @property
    def percent(self) -> int:
        if self.status == self.Status.READY:
            return 100
        return int(100 * self.done / self.total) if self.total else 0
