"""Conservazione a norma (issue 9): packages, volumes, the preservation log,
retention, legal holds, discards and fixity audits.

A package (``Package``) is the archival package (PdA, AIP) made from a
study's submission package (PdV, SIP): its files live in the preservation
tier under ``aip/<identifier>/`` and are written once. Packages are grouped
into volumes (``Volume``) whose SInCRO index is signed and time-stamped.
Nothing in the preservation tier is removed except by an approved discard
(``Discard``), which leaves the hashes of what it removed.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from archive.models import Patient, Report, Study
from kernel.alerts import Alert


class RetentionClass(models.Model):
    """How long a class of documents is kept (the retention table).

    The most specific row wins: document type and modality, then document
    type alone. ``years`` empty: kept without time limit.
    """

    class DocumentType(models.TextChoices):
        REPORT = "report", _("referto")
        IMAGE = "image", _("immagine diagnostica")
        METADATA = "metadata", _("metadati")

    code = models.CharField(_("codice"), max_length=32, unique=True)
    name = models.CharField(_("nome"), max_length=200)
    document_type = models.CharField(_("tipo di documento"), max_length=16, choices=DocumentType.choices)
    modality = models.CharField(_("modalità"), max_length=16, blank=True, help_text=_("Vuoto: tutte le modalità."))
    years = models.PositiveIntegerField(
        _("anni di conservazione"), null=True, blank=True, help_text=_("Vuoto: senza limite di tempo.")
    )
    legal_basis = models.CharField(_("riferimento normativo"), max_length=300, blank=True)

    class Meta:
        verbose_name = _("classe di conservazione")
        verbose_name_plural = _("tabella di conservazione")
        ordering = ["document_type", "modality"]
        constraints = [
            models.UniqueConstraint(fields=["document_type", "modality"], name="retentionclass_unique"),
        ]

    def __str__(self) -> str:
        span = _("senza limite") if self.years is None else _("%(n)d anni") % {"n": self.years}
        return f"{self.name} ({span})"


class Volume(models.Model):
    """A preservation volume: a group of AIPs with one signed and time-stamped SInCRO index."""

    class Status(models.TextChoices):
        BUILDING = "building", _("in chiusura")
        CLOSED = "closed", _("chiuso")

    identifier = models.CharField(_("identificativo"), max_length=64, unique=True)
    status = models.CharField(_("stato"), max_length=16, choices=Status.choices, default=Status.BUILDING)
    tier = models.CharField(_("livello"), max_length=64)
    previous = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("volume precedente"),
    )
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)
    heartbeat_at = models.DateTimeField(_("ultimo segno di vita"), null=True, blank=True)
    closed_at = models.DateTimeField(_("chiuso il"), null=True, blank=True)
    index_path = models.CharField(_("indice SInCRO"), max_length=512, blank=True)
    index_sha256 = models.CharField(_("SHA-256 dell'indice"), max_length=64, blank=True)
    signature_path = models.CharField(_("firma dell'indice (.p7m)"), max_length=512, blank=True)
    signature_sha256 = models.CharField(_("SHA-256 della firma"), max_length=64, blank=True)
    timestamp_path = models.CharField(_("marca temporale (.tsr)"), max_length=512, blank=True)
    timestamp_sha256 = models.CharField(_("SHA-256 della marca"), max_length=64, blank=True)
    timestamp_time = models.DateTimeField(_("data della marca temporale"), null=True, blank=True)
    signer_name = models.CharField(_("firmatario"), max_length=256, blank=True)
    fixity_checked_at = models.DateTimeField(_("ultima verifica"), null=True, blank=True)

    class Meta:
        verbose_name = _("volume di conservazione")
        verbose_name_plural = _("volumi di conservazione")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.identifier


class Package(models.Model):
    """The archival package (PdA) of one signed report version and the study's instances.

    Built from the submission package (PdV) by :func:`preservation.packages.package_build`;
    ``archived`` only once every file is in the preservation tier, so a
    package that is not archived is never read as complete.
    """

    class Status(models.TextChoices):
        BUILDING = "building", _("in preparazione")
        ARCHIVED = "archived", _("archiviato")
        REJECTED = "rejected", _("rifiutato")

    identifier = models.CharField(_("identificativo"), max_length=64, unique=True)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="+", verbose_name=_("studio"))
    report = models.ForeignKey(Report, on_delete=models.PROTECT, related_name="+", verbose_name=_("referto"))
    status = models.CharField(_("stato"), max_length=16, choices=Status.choices, default=Status.BUILDING, db_index=True)
    tier = models.CharField(_("livello"), max_length=64)
    path = models.CharField(_("cartella"), max_length=512, blank=True)
    manifest_sha256 = models.CharField(_("SHA-256 del manifesto"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)
    heartbeat_at = models.DateTimeField(_("ultimo segno di vita"), null=True, blank=True)
    archived_at = models.DateTimeField(_("archiviato il"), null=True, blank=True)
    ingest_report = models.JSONField(_("rapporto di versamento"), default=dict, blank=True)
    volume = models.ForeignKey(
        Volume, null=True, blank=True, on_delete=models.PROTECT, related_name="packages", verbose_name=_("volume")
    )
    fixity_checked_at = models.DateTimeField(_("ultima verifica"), null=True, blank=True, db_index=True)

    class Meta:
        verbose_name = _("pacchetto di archiviazione")
        verbose_name_plural = _("pacchetti di archiviazione")
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["report"], name="package_one_per_report")]

    def __str__(self) -> str:
        return self.identifier


class PackageFile(models.Model):
    """One file of an AIP, with its hash; ``discarded_at`` once an approved discard removed it."""

    class Role(models.TextChoices):
        DICOM = "dicom", _("istanza DICOM")
        REPORT_PDF = "report_pdf", _("referto (PDF)")
        REPORT_SIGNATURE = "report_p7m", _("firma del referto (.p7m)")
        METADATA = "metadata", _("metadati")
        MANIFEST = "manifest", _("manifesto del pacchetto")

    package = models.ForeignKey(Package, on_delete=models.PROTECT, related_name="files", verbose_name=_("pacchetto"))
    role = models.CharField(_("ruolo"), max_length=16, choices=Role.choices)
    name = models.CharField(_("nome nel pacchetto"), max_length=255)
    path = models.CharField(_("percorso nel livello"), max_length=512)
    mime_type = models.CharField(_("formato (MIME)"), max_length=64)
    sha256 = models.CharField("SHA-256", max_length=64)
    size = models.BigIntegerField(_("dimensione (byte)"))
    document_id = models.CharField(_("identificativo del documento"), max_length=128)
    retention_class = models.ForeignKey(
        RetentionClass, on_delete=models.PROTECT, related_name="+", verbose_name=_("classe di conservazione")
    )
    keep_until = models.DateField(_("conservare fino al"), null=True, blank=True, help_text=_("Vuoto: senza limite."))
    discarded_at = models.DateTimeField(_("scartato il"), null=True, blank=True)

    class Meta:
        verbose_name = _("file del pacchetto")
        verbose_name_plural = _("file dei pacchetti")
        ordering = ["package", "name"]
        constraints = [models.UniqueConstraint(fields=["package", "name"], name="packagefile_unique_name")]

    def __str__(self) -> str:
        return f"{self.package.identifier}/{self.name}"


class JournalEntry(models.Model):
    """The preservation log (giornale della conservazione): append-only and hash-chained."""

    class Event(models.TextChoices):
        PACKAGE = "package", _("pacchetto")
        VOLUME = "volume", _("volume")
        EXPORT = "export", _("esportazione")
        AUDIT = "audit", _("verifica di integrità")
        DISCARD = "discard", _("scarto")
        HOLD = "hold", _("blocco legale")
        SEAL = "seal", _("sigillo del registro degli accessi")

    at = models.DateTimeField(_("quando"), db_index=True)
    event = models.CharField(_("evento"), max_length=16, choices=Event.choices)
    action = models.CharField(_("azione"), max_length=64)
    outcome = models.CharField(_("esito"), max_length=16, default="success")
    object_id = models.CharField(_("oggetto"), max_length=64, blank=True, db_index=True)
    username = models.CharField(_("utente"), max_length=150, blank=True)
    system = models.CharField(_("processo di sistema"), max_length=64, blank=True)
    detail = models.JSONField(_("dettaglio"), default=dict, blank=True)
    prev_hash = models.CharField(_("hash precedente"), max_length=64)
    hash = models.CharField(_("hash"), max_length=64, unique=True)

    class Meta:
        verbose_name = _("voce del giornale")
        verbose_name_plural = _("giornale della conservazione")
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.action} {self.object_id}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            raise ValidationError("The preservation log is append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise ValidationError("The preservation log is append-only.")


class LegalHold(models.Model):
    """A legal hold (blocco legale): while active, nothing of the patient or study is discarded."""

    patient = models.ForeignKey(
        Patient, null=True, blank=True, on_delete=models.PROTECT, related_name="+", verbose_name=_("paziente")
    )
    study = models.ForeignKey(
        Study, null=True, blank=True, on_delete=models.PROTECT, related_name="+", verbose_name=_("studio")
    )
    reason = models.TextField(_("motivo"))
    placed_at = models.DateTimeField(_("disposto il"), auto_now_add=True)
    placed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("disposto da"),
    )
    released_at = models.DateTimeField(_("revocato il"), null=True, blank=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("revocato da"),
    )

    class Meta:
        verbose_name = _("blocco legale")
        verbose_name_plural = _("blocchi legali")
        ordering = ["-placed_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(patient__isnull=False) | models.Q(study__isnull=False), name="legalhold_has_subject"
            )
        ]

    def __str__(self) -> str:
        subject = self.study or self.patient
        return f"{subject}: {self.reason[:60]}"

    @property
    def active(self) -> bool:
        return self.released_at is None


class Discard(models.Model):
    """A discard (scarto): proposed by a task, approved by a preservation officer, then executed.

    Executed, it keeps the paths, sizes and SHA-256 of what it removed
    (``record``) and the hash of that record.
    """

    class Status(models.TextChoices):
        PROPOSED = "proposed", _("proposto")
        APPROVED = "approved", _("approvato")
        EXECUTED = "executed", _("eseguito")
        REJECTED = "rejected", _("respinto")

    status = models.CharField(_("stato"), max_length=16, choices=Status.choices, default=Status.PROPOSED)
    proposed_at = models.DateTimeField(_("proposto il"), auto_now_add=True)
    reason = models.TextField(_("motivazione"), blank=True)
    approved_at = models.DateTimeField(_("approvato il"), null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("approvato da"),
    )
    executed_at = models.DateTimeField(_("eseguito il"), null=True, blank=True)
    record = models.JSONField(_("verbale di scarto"), default=dict, blank=True)
    record_sha256 = models.CharField(_("SHA-256 del verbale"), max_length=64, blank=True)

    class Meta:
        verbose_name = _("scarto")
        verbose_name_plural = _("scarti")
        ordering = ["-proposed_at"]
        permissions = [("approve_discard", _("Può approvare uno scarto"))]

    def __str__(self) -> str:
        return _("Scarto n. %(n)s (%(status)s)") % {"n": self.pk, "status": self.get_status_display()}


class DiscardItem(models.Model):
    """One file a discard removes, with the hash it had."""

    discard = models.ForeignKey(Discard, on_delete=models.PROTECT, related_name="items", verbose_name=_("scarto"))
    package_file = models.ForeignKey(
        PackageFile, on_delete=models.PROTECT, related_name="discard_items", verbose_name=_("file")
    )
    path = models.CharField(_("percorso"), max_length=512)
    sha256 = models.CharField("SHA-256", max_length=64)
    size = models.BigIntegerField(_("dimensione (byte)"))
    removed_at = models.DateTimeField(_("rimosso il"), null=True, blank=True)

    class Meta:
        verbose_name = _("file da scartare")
        verbose_name_plural = _("file da scartare")
        constraints = [
            models.UniqueConstraint(fields=["discard", "package_file"], name="discarditem_unique"),
        ]

    def __str__(self) -> str:
        return self.path


class FixityAudit(models.Model):
    """One run of the preservation fixity audit."""

    started_at = models.DateTimeField(_("iniziata il"), auto_now_add=True)
    finished_at = models.DateTimeField(_("terminata il"), null=True, blank=True)
    packages_checked = models.PositiveIntegerField(_("pacchetti verificati"), default=0)
    files_checked = models.PositiveIntegerField(_("file verificati"), default=0)
    volumes_checked = models.PositiveIntegerField(_("volumi verificati"), default=0)
    failures = models.PositiveIntegerField(_("anomalie"), default=0)

    class Meta:
        verbose_name = _("verifica di integrità della conservazione")
        verbose_name_plural = _("verifiche di integrità della conservazione")
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.started_at:%Y-%m-%d %H:%M} {self.failures}"


class PreservationAlert(Alert):
    """A mismatch the fixity audit found: shown in the admin until acknowledged.

    One open alert per object (package, volume, path) and kind: the same mismatch
    found by a later audit updates it.
    """

    class Kind(models.TextChoices):
        MISSING = "missing", _("file mancante")
        DAMAGED = "damaged", _("impronta non corrispondente")
        SIGNATURE = "signature", _("firma dell'indice non valida")
        TIMESTAMP = "timestamp", _("marca temporale non valida")
        UNREADABLE = "unreadable", _("file illeggibile")
        REGISTRY = "registry", _("registro diverso dall'indice firmato")
        CHAIN = "chain", _("catena dei volumi interrotta")
        GUARD = "guard", _("protezione del registro disattivata")

    kind = models.CharField(_("tipo"), max_length=16, choices=Kind.choices)
    audit = models.ForeignKey(
        FixityAudit, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts", verbose_name=_("verifica")
    )
    package = models.ForeignKey(
        Package, null=True, blank=True, on_delete=models.PROTECT, related_name="alerts", verbose_name=_("pacchetto")
    )
    volume = models.ForeignKey(
        Volume, null=True, blank=True, on_delete=models.PROTECT, related_name="alerts", verbose_name=_("volume")
    )
    path = models.CharField(_("percorso"), max_length=512, blank=True)

    class Meta(Alert.Meta):
        verbose_name = _("allarme della conservazione")
        verbose_name_plural = _("allarmi della conservazione")

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.path}"
