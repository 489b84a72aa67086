"""The imaging archive's data model: the region's sites, its DICOM peers, patients,
studies, series, instances, their stored copies and conflicts (the audit log's
rows are the kernel's: ``kernel.models``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from archive.dicomnet import peers
from archive.person_names import SEARCH_KEY_MAX_LENGTH, pn_search_key
from kernel.alerts import Alert
from kernel.codice_fiscale import validate_codice_fiscale

# PS3.5 6.2: AE is up to 16 characters of the default repertoire, no backslash
# or control characters; leading/trailing spaces are not significant.
ae_title_validator = RegexValidator(
    r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$",
    _("Un AE title ha da 1 a 16 caratteri ASCII stampabili, senza barra rovesciata."),
)
port_validators = [MinValueValidator(1), MaxValueValidator(65535)]


class HealthAuthority(models.Model):
    """An *azienda sanitaria*: owner of several facilities."""

    code = models.CharField(_("codice"), max_length=16, unique=True)
    name = models.CharField(_("nome"), max_length=200)

    class Meta:
        verbose_name = _("azienda sanitaria")
        verbose_name_plural = _("aziende sanitarie")
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} – {self.name}"


class Facility(models.Model):
    """A *presidio ospedaliero*, with its own short-term store and DICOM identity."""

    code = models.CharField(
        _("codice"),
        max_length=16,
        unique=True,
        validators=[RegexValidator(r"^[A-Z0-9_-]{1,16}$", _("Lettere maiuscole, cifre, '-' e '_'."))],
    )
    name = models.CharField(_("nome"), max_length=200)
    authority = models.ForeignKey(
        HealthAuthority, on_delete=models.PROTECT, related_name="facilities", verbose_name=_("azienda sanitaria")
    )
    ae_title = models.CharField(_("AE title"), max_length=16, unique=True, validators=[ae_title_validator])
    dicom_port = models.PositiveIntegerField(_("porta DICOM"), validators=port_validators)

    class Meta:
        verbose_name = _("presidio")
        verbose_name_plural = _("presidi")
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} – {self.name}"


class RemoteNode(models.Model):
    """A DICOM peer of a facility (modality, workstation, another archive) and what it may do.

    It is accepted only from its registered addresses (``addresses``, else
    ``host``), and with DICOM TLS only with its own client certificate
    (``tls_certificate_sha256``); what it queries and retrieves is limited to
    its ``scope`` (archive.access).
    """

    class Scope(models.TextChoices):
        FACILITY = "facility", _("il proprio presidio")
        AUTHORITY = "authority", _("l'azienda sanitaria del presidio")
        REGION = "region", _("tutta la regione")

    facility = models.ForeignKey(
        Facility, on_delete=models.CASCADE, related_name="remote_nodes", verbose_name=_("presidio")
    )
    ae_title = models.CharField(_("AE title"), max_length=16, validators=[ae_title_validator])
    host = models.CharField(
        _("host"), max_length=255, help_text=_("Dove il PACS chiama il nodo (C-MOVE, C-STORE verso il nodo).")
    )
    port = models.PositiveIntegerField(_("porta"), validators=port_validators)
    addresses = models.TextField(
        _("indirizzi ammessi"),
        blank=True,
        help_text=_(
            "Da dove il nodo può chiamare: indirizzi IP, reti in notazione CIDR o nomi di host, separati da "
            "spazi o virgole. Vuoto: solo l'host sopra."
        ),
    )
    scope = models.CharField(
        _("ambito di interrogazione"),
        max_length=16,
        choices=Scope.choices,
        default=Scope.FACILITY,
        help_text=_("Quali studi il nodo vede con C-FIND e recupera con C-MOVE/C-GET."),
    )
    tls_certificate_sha256 = models.CharField(
        _("impronta SHA-256 del certificato TLS"),
        max_length=64,
        blank=True,
        help_text=_("Sulla porta DICOM TLS il nodo è accettato solo con questo certificato client."),
    )
    description = models.CharField(_("descrizione"), max_length=200, blank=True)
    can_store = models.BooleanField(_("può inviare (C-STORE)"), default=False)
    can_query = models.BooleanField(_("può interrogare (C-FIND)"), default=False)
    can_retrieve = models.BooleanField(_("può recuperare (C-MOVE/C-GET)"), default=False)
    is_retrieve_destination = models.BooleanField(_("destinazione di C-MOVE"), default=False)
    can_worklist = models.BooleanField(_("può leggere la worklist (MWL)"), default=False)

    class Meta:
        verbose_name = _("nodo DICOM remoto")
        verbose_name_plural = _("nodi DICOM remoti")
        constraints = [models.UniqueConstraint(fields=["facility", "ae_title"], name="remotenode_unique_ae")]
        ordering = ["facility__code", "ae_title"]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port} ({self.facility.code})"

    def may_associate(self) -> bool:
        return (
            self.can_store or self.can_query or self.can_retrieve or self.is_retrieve_destination or self.can_worklist
        )

    def allowed_addresses(self) -> list[str]:
        """Where the node may call from: its ``addresses``, else its ``host``."""
        return peers.address_entries(self.addresses) or [self.host.strip()]

    def clean_fields(self, exclude: Any = None) -> None:
        """The addresses and the fingerprint checked entry by entry, and normalised
        (the fingerprint as ``openssl x509 -fingerprint -sha256`` prints it is
        accepted) before the field's own length check sees it."""
        skip = set(exclude or ())
        if "tls_certificate_sha256" not in skip:
            self.tls_certificate_sha256 = peers.fingerprint_normalize(self.tls_certificate_sha256)
        errors: dict[str, list[Any]] = {}
        try:
            super().clean_fields(exclude=exclude)
        except ValidationError as exc:
            errors = exc.update_error_dict(errors)
        if "addresses" not in skip and "addresses" not in errors:
            bad = peers.addresses_errors(self.addresses)
            if bad:
                errors["addresses"] = list(bad)
            else:
                self.addresses = " ".join(peers.address_entries(self.addresses))
        if "tls_certificate_sha256" not in skip and "tls_certificate_sha256" not in errors:
            error = peers.fingerprint_error(self.tls_certificate_sha256)
            if error:
                errors["tls_certificate_sha256"] = [error]
        if errors:
            raise ValidationError(errors)


class Patient(models.Model):
    """A person, identified regionally by the codice fiscale.

    An instance whose PatientID is not yet known to the region creates a
    provisional patient (no codice fiscale), flagged for reconciliation.
    """

    codice_fiscale = models.CharField(
        _("codice fiscale"), max_length=16, unique=True, null=True, blank=True, validators=[validate_codice_fiscale]
    )
    family_name = models.CharField(_("cognome"), max_length=128, blank=True, db_index=True)
    given_name = models.CharField(_("nome"), max_length=128, blank=True)
    birth_date = models.DateField(_("data di nascita"), null=True, blank=True)
    sex = models.CharField(_("sesso"), max_length=1, blank=True, choices=[("M", "M"), ("F", "F"), ("O", "O")])
    provisional = models.BooleanField(
        _("provvisorio"), default=False, db_index=True, help_text=_("Da riconciliare con l'anagrafe regionale.")
    )
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)
    # FAMILY^GIVEN as the worklist matches it (archive.person_names): written by save().
    name_search = models.CharField(max_length=SEARCH_KEY_MAX_LENGTH, blank=True, editable=False, db_index=True)

    class Meta:
        verbose_name = _("paziente")
        verbose_name_plural = _("pazienti")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(provisional=True) | models.Q(codice_fiscale__isnull=False),
                name="patient_identified_or_provisional",
            )
        ]

    def __str__(self) -> str:
        name = f"{self.family_name} {self.given_name}".strip() or _("(senza nome)")
        return f"{name} – {self.codice_fiscale or _('provvisorio')}"

    def clean(self) -> None:
        if not self.provisional and not self.codice_fiscale:
            raise ValidationError({"codice_fiscale": _("Un paziente non provvisorio ha un codice fiscale.")})

    def search_names_fill(self) -> None:
        """Write the name's search key (archive.person_names) from the name."""
        self.name_search = pn_search_key(f"{self.family_name}^{self.given_name}")

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A derived column must never lag its source: every writer of the name (ingest,
        # the CUP's forms, the admin, reconciliation, the demo) saves through here.
        # bulk_create and update() do not: their callers call search_names_fill.
        self.search_names_fill()
        _with_search_fields(kwargs, {"family_name": "name_search", "given_name": "name_search"})
        super().save(*args, **kwargs)


def _with_search_fields(kwargs: dict[str, Any], derived: dict[str, str]) -> None:
    """Add to a save()'s update_fields the search columns of the name fields it names."""
    fields = kwargs.get("update_fields")
    if fields is None:
        return
    fields = list(fields)
    fields += [derived[f] for f in list(fields) if f in derived and derived[f] not in fields]
    kwargs["update_fields"] = list(dict.fromkeys(fields))


class PatientIdentifier(models.Model):
    """A facility's DICOM PatientID (+ IssuerOfPatientID) and the patient it designates."""

    facility = models.ForeignKey(
        Facility, on_delete=models.PROTECT, related_name="patient_identifiers", verbose_name=_("presidio")
    )
    dicom_patient_id = models.CharField(_("PatientID"), max_length=64)
    issuer = models.CharField(_("IssuerOfPatientID"), max_length=64, blank=True)
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="identifiers", verbose_name=_("paziente")
    )

    class Meta:
        verbose_name = _("identificativo paziente")
        verbose_name_plural = _("identificativi paziente")
        constraints = [
            models.UniqueConstraint(fields=["facility", "dicom_patient_id", "issuer"], name="patientidentifier_unique")
        ]

    def __str__(self) -> str:
        issuer = f"^{self.issuer}" if self.issuer else ""
        return f"{self.dicom_patient_id}{issuer} @ {self.facility.code}"


class Study(models.Model):
    study_instance_uid = models.CharField("StudyInstanceUID", max_length=64, unique=True)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies", verbose_name=_("paziente"))
    facility = models.ForeignKey(
        Facility,
        on_delete=models.PROTECT,
        related_name="studies",
        verbose_name=_("presidio"),
        help_text=_("Presidio di origine."),
    )
    # Patient attributes as the modality sent them (C-FIND answers with these).
    patient_name = models.CharField("PatientName", max_length=256, blank=True, db_index=True)
    dicom_patient_id = models.CharField("PatientID", max_length=64, blank=True, db_index=True)
    issuer_of_patient_id = models.CharField("IssuerOfPatientID", max_length=64, blank=True)
    patient_birth_date = models.DateField("PatientBirthDate", null=True, blank=True)
    patient_sex = models.CharField("PatientSex", max_length=16, blank=True)
    study_date = models.DateField("StudyDate", null=True, blank=True, db_index=True)
    study_time = models.CharField("StudyTime", max_length=16, blank=True)
    accession_number = models.CharField("AccessionNumber", max_length=16, blank=True, db_index=True)
    study_id = models.CharField("StudyID", max_length=16, blank=True)
    study_description = models.CharField("StudyDescription", max_length=64, blank=True)
    # What the request said: the booking's clinical question and its priority
    # class (U urgent, B within 10 days, D deferred, P planned: the Italian
    # prescription's), written when the study is tied to its booking.
    reason_for_request = models.TextField(_("quesito diagnostico"), blank=True)
    priority = models.CharField(
        _("priorità"),
        max_length=1,
        blank=True,
        db_index=True,
        choices=[("U", _("urgente")), ("B", _("breve")), ("D", _("differita")), ("P", _("programmata"))],
    )
    referring_physician_name = models.CharField("ReferringPhysicianName", max_length=256, blank=True)
    # The names' search keys (archive.person_names: no case, no accents), which PN
    # keys of C-FIND and QIDO-RS match: written by save() from the names.
    patient_name_search = models.CharField(max_length=SEARCH_KEY_MAX_LENGTH, blank=True, editable=False, db_index=True)
    referring_physician_name_search = models.CharField(
        max_length=SEARCH_KEY_MAX_LENGTH, blank=True, editable=False, db_index=True
    )
    modalities_in_study = models.CharField("ModalitiesInStudy", max_length=64, blank=True, db_index=True)
    number_of_series = models.PositiveIntegerField("NumberOfStudyRelatedSeries", default=0)
    number_of_instances = models.PositiveIntegerField("NumberOfStudyRelatedInstances", default=0)
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)
    # Not indexed: every image received rewrites it, and a column of no index lets PostgreSQL
    # update the row in place (HOT), without a new entry in each of the study's indexes (the
    # trigram GIN among them). Its readers start from pending studies or from reports.
    last_received_at = models.DateTimeField(_("ultima immagine ricevuta"), null=True, blank=True)
    # Set by ingestion when post-ingest work is owed; cleared by the task that does it.
    post_ingest_pending = models.BooleanField(_("elaborazione in attesa"), default=False, db_index=True)
    post_ingest_at = models.DateTimeField(_("ultima elaborazione"), null=True, blank=True)

    class Meta:
        verbose_name = _("studio")
        verbose_name_plural = _("studi")
        indexes = [
            models.Index(fields=["patient", "study_date"], name="study_patient_date"),
            # Queries list studies newest first: a date range with a limit reads this index in order.
            models.Index(fields=["study_date", "id"], name="study_date_id"),
        ]

    def __str__(self) -> str:
        return f"{self.study_date or ''} {self.modalities_in_study} {self.study_description or self.study_instance_uid}"

    def modality_list(self) -> list[str]:
        return [m for m in self.modalities_in_study.split("\\") if m]

    def search_names_fill(self) -> None:
        """Write the names' search keys (archive.person_names) from the names."""
        self.patient_name_search = pn_search_key(self.patient_name)
        self.referring_physician_name_search = pn_search_key(self.referring_physician_name)

    def save(self, *args: Any, **kwargs: Any) -> None:
        # As Patient.save: the search keys follow the names on every save.
        self.search_names_fill()
        _with_search_fields(
            kwargs,
            {
                "patient_name": "patient_name_search",
                "referring_physician_name": "referring_physician_name_search",
            },
        )
        super().save(*args, **kwargs)

    def performed_on(self) -> dt.date:
        """The day the exam was performed, as every page, report and zip shows it: the
        modality's StudyDate, or the day the first image arrived when it sent none."""
        return self.study_date or timezone.localdate(self.created_at)


class _InstancesInRegularUse(models.Manager["Instance"]):
    """IOCM (archive.rejection): the instances no rejection note withdrew (nor the notes themselves)."""

    def get_queryset(self) -> models.QuerySet[Instance]:
        return super().get_queryset().filter(withdrawn_at__isnull=True)


class _SeriesInRegularUse(models.Manager["Series"]):
    """IOCM (archive.rejection): a series a rejection note emptied is gone with its instances."""

    def get_queryset(self) -> models.QuerySet[Series]:
        withdrawn = Instance.all_objects.filter(series=models.OuterRef("pk"), withdrawn_at__isnull=False)
        return super().get_queryset().exclude(models.Q(number_of_instances=0) & models.Q(models.Exists(withdrawn)))


class Series(models.Model):
    series_instance_uid = models.CharField("SeriesInstanceUID", max_length=64, unique=True)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="series", verbose_name=_("studio"))
    modality = models.CharField("Modality", max_length=16, blank=True, db_index=True)
    series_number = models.IntegerField("SeriesNumber", null=True, blank=True)
    series_description = models.CharField("SeriesDescription", max_length=64, blank=True)
    body_part_examined = models.CharField("BodyPartExamined", max_length=16, blank=True)
    number_of_instances = models.PositiveIntegerField("NumberOfSeriesRelatedInstances", default=0)
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)

    objects = _SeriesInRegularUse()
    all_objects = models.Manager()

    class Meta:
        verbose_name = _("serie")
        verbose_name_plural = _("serie")

    def __str__(self) -> str:
        return f"{self.modality} #{self.series_number} {self.series_description}".strip()


class Instance(models.Model):
    sop_instance_uid = models.CharField("SOPInstanceUID", max_length=64, unique=True)
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="instances", verbose_name=_("serie"))
    sop_class_uid = models.CharField("SOPClassUID", max_length=64, db_index=True)
    instance_number = models.IntegerField("InstanceNumber", null=True, blank=True)
    rows = models.PositiveIntegerField("Rows", null=True, blank=True)
    columns = models.PositiveIntegerField("Columns", null=True, blank=True)
    number_of_frames = models.PositiveIntegerField("NumberOfFrames", null=True, blank=True)
    transfer_syntax_uid = models.CharField("TransferSyntaxUID", max_length=64)
    size = models.BigIntegerField(_("dimensione (byte)"))
    sha256 = models.CharField("SHA-256", max_length=64)
    facility = models.ForeignKey(
        Facility,
        on_delete=models.PROTECT,
        related_name="instances",
        verbose_name=_("presidio"),
        help_text=_("Presidio di origine."),
    )
    calling_ae = models.CharField(_("AE title mittente"), max_length=16, blank=True)
    received_at = models.DateTimeField(_("ricevuta il"), db_index=True)
    # IOCM (archive.rejection): withdrawn from regular use by a rejection note (what it
    # rejects, and the note itself); ``objects`` leaves it out, ``all_objects`` keeps it.
    withdrawn_at = models.DateTimeField(_("ritirata il"), null=True, blank=True)
    # True exactly while the instance has a verified copy in a long-term tier, set and
    # cleared in the transaction that records (or releases, or finds damaged) that copy
    # (archive.storage.lifecycle.instances_migrated_sync). The lifecycle finds what is
    # still to migrate through the partial index of the rows where it is false: the
    # work to do, not the work done, so a batch costs the same at any age. (A flag,
    # not a time: migration 0026 adds it true for every row without writing them, then
    # writes only the few not migrated yet.)
    migrated = models.BooleanField(_("nell'archivio a lungo termine"), default=False, db_default=False)

    objects = _InstancesInRegularUse()
    all_objects = models.Manager()

    class Meta:
        verbose_name = _("istanza")
        verbose_name_plural = _("istanze")
        indexes = [
            models.Index(
                fields=["withdrawn_at"], condition=models.Q(withdrawn_at__isnull=False), name="instance_withdrawn"
            ),
            models.Index(fields=["received_at", "id"], condition=models.Q(migrated=False), name="instance_to_migrate"),
        ]

    def __str__(self) -> str:
        return self.sop_instance_uid


class Copy(models.Model):
    """One stored copy of an instance in one tier. A copy is deleted only after
    another verified copy exists."""

    instance = models.ForeignKey(Instance, on_delete=models.PROTECT, related_name="copies", verbose_name=_("istanza"))
    tier = models.CharField(_("livello"), max_length=64, help_text=_("Es. facility:TS-CAT"))
    path = models.CharField(_("percorso"), max_length=512)
    sha256 = models.CharField("SHA-256", max_length=64)
    size = models.BigIntegerField(_("dimensione (byte)"))
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)
    verified_at = models.DateTimeField(_("ultima verifica"), null=True, blank=True)
    # A facility copy recalled or prefetched from the long-term tier is kept
    # until then, whatever the retention says.
    keep_until = models.DateTimeField(_("trattenuta fino al"), null=True, blank=True)
    # The instance's ``received_at`` (which never changes), copied here so that the
    # facility copies still to evict are found in received order by the partial index
    # below: evicted copies are deleted, so it holds the work to do, not the work done.
    # Every path writes it; a facility copy must have it (the constraint). Migration
    # 0026 fills it for the facility copies there, not for the long-term ones.
    instance_received_at = models.DateTimeField(_("istanza ricevuta il"), null=True, blank=True)

    class Meta:
        verbose_name = _("copia")
        verbose_name_plural = _("copie")
        constraints = [
            models.UniqueConstraint(fields=["instance", "tier"], name="copy_one_per_tier"),
            models.UniqueConstraint(fields=["tier", "path"], name="copy_unique_path"),
            models.CheckConstraint(
                condition=~models.Q(tier__startswith="facility:") | models.Q(instance_received_at__isnull=False),
                name="copy_facility_received_at",
            ),
        ]
        indexes = [
            models.Index(
                fields=["instance_received_at", "id"],
                condition=models.Q(tier__startswith="facility:"),
                name="copy_facility_by_received",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tier}:{self.path}"


class FileRemoval(models.Model):
    """A file to remove from a tier once its row is gone: written in the same transaction
    that deletes the copy's (or rendition's) row, deleted when the file is removed.

    A process killed between the commit and the removal leaves this row, not an orphan
    file: the lifecycle's pass finishes it (``archive.removals``). A writer about
    to put a file back at the same path cancels it first.
    """

    tier = models.CharField(_("livello"), max_length=64)
    path = models.CharField(_("percorso"), max_length=512)
    # A copy's file (``copy_remove``, refused on the write-once tier) or a rendition's.
    is_copy = models.BooleanField(_("copia"), default=True)
    instance_id = models.BigIntegerField(_("istanza"), null=True, blank=True)  # no key: a purge deletes it
    created_at = models.DateTimeField(_("creata il"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("file da rimuovere")
        verbose_name_plural = _("file da rimuovere")
        indexes = [models.Index(fields=["tier", "path"], name="fileremoval_tier_path")]

    def __str__(self) -> str:
        return f"{self.tier}:{self.path}"


class InstanceConflict(models.Model):
    """A received object that collides with an archived one, kept for staff review.

    The archived instance is never overwritten: the other bytes are stored at
    their own path (the path carries the content hash) and recorded here.
    """

    class Reason(models.TextChoices):
        DIFFERENT_CONTENT = "different_content", _("stesso SOPInstanceUID, contenuto diverso")
        OTHER_PATIENT = "other_patient", _("studio già archiviato per un altro paziente")
        OTHER_STUDY = "other_study", _("SOPInstanceUID già archiviato in un altro studio o serie")

    sop_instance_uid = models.CharField("SOPInstanceUID", max_length=64, db_index=True)
    study_instance_uid = models.CharField("StudyInstanceUID", max_length=64)
    instance = models.ForeignKey(
        Instance,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="conflicts",
        verbose_name=_("istanza archiviata"),
        help_text=_("L'istanza archiviata con lo stesso SOPInstanceUID, se c'è."),
    )
    study = models.ForeignKey(
        Study,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="conflicts",
        verbose_name=_("studio archiviato"),
        help_text=_("Lo studio archiviato con lo stesso StudyInstanceUID, se c'è."),
    )
    reason = models.CharField(_("motivo"), max_length=32, choices=Reason.choices)
    detail = models.TextField(_("dettaglio"), blank=True)
    tier = models.CharField(_("livello"), max_length=64)
    path = models.CharField(_("percorso"), max_length=512)
    sha256 = models.CharField("SHA-256", max_length=64)
    size = models.BigIntegerField(_("dimensione (byte)"))
    facility = models.ForeignKey(
        Facility, on_delete=models.PROTECT, related_name="conflicts", verbose_name=_("presidio")
    )
    calling_ae = models.CharField(_("AE title mittente"), max_length=16, blank=True)
    received_at = models.DateTimeField(_("ricevuta il"))
    resolved_at = models.DateTimeField(_("risolto il"), null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, verbose_name=_("risolto da")
    )
    resolution_note = models.TextField(_("nota"), blank=True)

    class Meta:
        verbose_name = _("conflitto di archiviazione")
        verbose_name_plural = _("conflitti di archiviazione")
        constraints = [
            models.UniqueConstraint(fields=["sop_instance_uid", "sha256", "reason"], name="conflict_unique_content")
        ]

    def __str__(self) -> str:
        return f"{self.get_reason_display()}: {self.sop_instance_uid}"


class Rendition(models.Model):
    """A derived object: one frame of an instance rendered as a preview or a
    thumbnail, stored in the instance's facility tier, or the record that it
    could not be rendered.

    ``params_key`` names everything that produced the bytes (media type,
    quality, size limit, window, renderer version), so a stored rendition
    answers a request only when the request would have produced the same
    image. A failure row (``reason`` set, no file) stops the post-ingest
    task from trying the same image again until ``renderer_version`` changes.
    """

    class Kind(models.TextChoices):
        PREVIEW = "preview", _("anteprima")
        THUMBNAIL = "thumbnail", _("miniatura")

    # PROTECT, as for copies: whoever removes an instance removes its derived files too.
    instance = models.ForeignKey(
        Instance, on_delete=models.PROTECT, related_name="renditions", verbose_name=_("istanza")
    )
    frame = models.PositiveIntegerField(_("fotogramma"), default=1)
    kind = models.CharField(_("tipo"), max_length=16, choices=Kind.choices)
    params_key = models.CharField(_("parametri"), max_length=64)
    renderer_version = models.CharField(_("versione del renderer"), max_length=16)
    media_type = models.CharField(_("tipo di contenuto"), max_length=32, blank=True)
    tier = models.CharField(_("livello"), max_length=64)
    path = models.CharField(_("percorso"), max_length=512, blank=True)
    sha256 = models.CharField("SHA-256", max_length=64, blank=True)
    size = models.BigIntegerField(_("dimensione (byte)"), default=0)
    reason = models.TextField(
        _("motivo del fallimento"), blank=True, help_text=_("Vuoto se l'immagine è stata prodotta.")
    )
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)

    class Meta:
        verbose_name = _("immagine derivata")
        verbose_name_plural = _("immagini derivate")
        constraints = [
            models.UniqueConstraint(
                fields=["instance", "frame", "kind", "params_key", "tier"], name="rendition_unique_params"
            ),
            models.CheckConstraint(
                condition=~models.Q(reason="") | ~models.Q(path=""), name="rendition_stored_or_failed"
            ),
        ]

    def __str__(self) -> str:
        what = f"{self.instance_id}#{self.frame} {self.kind} {self.params_key}"
        return f"{what}: {self.reason}" if self.reason else f"{what} {self.tier}:{self.path}"

    @property
    def failed(self) -> bool:
        return bool(self.reason)


class StaffProfile(models.Model):
    """Where a member of staff works: the health authority whose studies they
    open. Staff of no authority (the region's) see every study."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_profile", verbose_name=_("utente")
    )
    authority = models.ForeignKey(
        HealthAuthority,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="staff",
        verbose_name=_("azienda sanitaria"),
        help_text=_("Vuoto: personale regionale, vede gli studi di tutte le aziende."),
    )
    cross_authority = models.BooleanField(
        _("apre studi di altre aziende"),
        default=False,
        help_text=_("Per esempio un radiologo che referta in teleradiologia per altre aziende."),
    )
    # How the citizen reads this person in "Chi ha visto i miei dati" (portal.access_log):
    # "Dott.ssa Chiara Degano, radiologa". Empty: no title, and the role in a neutral
    # form taken from the user's groups.
    title = models.CharField(
        _("titolo"),
        max_length=16,
        blank=True,
        help_text=_("Per esempio «Dott.» o «Dott.ssa»: precede il nome nel registro degli accessi del cittadino."),
    )
    role = models.CharField(
        _("qualifica"),
        max_length=64,
        blank=True,
        help_text=_(
            "Come il cittadino legge il ruolo nel registro degli accessi, per esempio «radiologa», "
            "«tecnico di radiologia», «operatrice CUP». Vuota: dedotta dal gruppo, in forma neutra."
        ),
    )
    # The CDA of a report names its author and its signer by codice fiscale
    # (archive.reporting.cda.user_fiscal_code; a qualified certificate's TINIT- serial also says it).
    codice_fiscale = models.CharField(
        _("codice fiscale"),
        max_length=16,
        blank=True,
        validators=[validate_codice_fiscale],
        help_text=_("Identifica chi firma nel referto strutturato (CDA) inviato al Fascicolo Sanitario Elettronico."),
    )
    totp_secret = models.CharField(
        _("segreto TOTP"),
        max_length=64,
        blank=True,
        help_text=_("Secondo fattore per la firma (RFC 6238); vuoto se non configurato."),
    )

    class Meta:
        verbose_name = _("profilo del personale")
        verbose_name_plural = _("profili del personale")

    def __str__(self) -> str:
        return f"{self.user} ({self.authority.code if self.authority else _('regionale')})"


class Report(models.Model):
    """A version of a study's *referto*.

    A draft is started by its author, who thereby claims the study, and may be
    co-edited by colleagues (each save names the revision it edited); signing fixes it for ever: its text, its
    PDF and its detached CAdES signature never change and are never deleted
    (refused by the model and by the database). A correction or an addendum
    is a new version that refers to the one before, which stays readable.
    At most one draft per study exists at a time: it is also the sign, for the
    other radiologists, that someone is reporting the study.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", _("bozza")
        SIGNED = "signed", _("firmato")

    class Kind(models.TextChoices):
        ORIGINAL = "original", _("referto")
        CORRECTION = "correction", _("rettifica")
        ADDENDUM = "addendum", _("integrazione")

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="reports", verbose_name=_("studio"))
    version = models.PositiveIntegerField(_("versione"))
    previous = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="next_versions",
        verbose_name=_("versione precedente"),
    )
    kind = models.CharField(_("tipo"), max_length=16, choices=Kind.choices, default=Kind.ORIGINAL)
    status = models.CharField(_("stato"), max_length=8, choices=Status.choices, default=Status.DRAFT, db_index=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reports", verbose_name=_("autore")
    )
    clinical_question = models.TextField(_("quesito clinico"), blank=True)
    technique = models.TextField(_("tecnica"), blank=True)
    findings = models.TextField(_("descrizione"), blank=True)
    conclusion = models.TextField(_("conclusioni"), blank=True)
    # The patient's exposure (D.Lgs 101/2020, art. 161, c. 5) for a procedure with
    # ionising radiation: the text the radiologist confirmed, printed on the PDF and
    # carried in the CDA, and the figures it was proposed from (archive.reporting.dose:
    # the modality's Radiation Dose SR, or the images' dose attributes).
    exposure = models.TextField(_("informazioni sull'esposizione"), blank=True)
    exposure_data = models.JSONField(_("dati dell'esposizione"), default=dict, blank=True)
    # Optimistic concurrency: a save names the revision it was editing.
    revision = models.PositiveIntegerField(_("revisione"), default=1)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("ultima modifica di"),
    )
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)
    updated_at = models.DateTimeField(_("modificato il"), auto_now=True)
    signed_at = models.DateTimeField(_("firmato il"), null=True, blank=True)
    signer_name = models.CharField(_("firmatario"), max_length=256, blank=True)
    signer_certificate = models.TextField(_("certificato del firmatario (PEM)"), blank=True)
    tier = models.CharField(_("livello"), max_length=64, blank=True)
    pdf_path = models.CharField(_("PDF"), max_length=512, blank=True)
    pdf_sha256 = models.CharField(_("SHA-256 del PDF"), max_length=64, blank=True)
    pdf_size = models.BigIntegerField(_("dimensione del PDF"), default=0)
    signature_path = models.CharField(_("firma CAdES (.p7m)"), max_length=512, blank=True)
    signature_sha256 = models.CharField(_("SHA-256 della firma"), max_length=64, blank=True)
    encapsulated_sop_instance_uid = models.CharField(_("SOPInstanceUID del PDF incapsulato"), max_length=64, blank=True)
    # The HL7 CDA R2 of the signed version (archive.reporting.cda), stored beside the PDF
    # that carries it as its PDF/A-3 attachment; empty for reports signed before it existed.
    cda_path = models.CharField(_("CDA"), max_length=512, blank=True)
    cda_sha256 = models.CharField(_("SHA-256 del CDA"), max_length=64, blank=True)

    class Meta:
        verbose_name = _("referto")
        verbose_name_plural = _("referti")
        ordering = ["study", "version"]
        constraints = [
            models.UniqueConstraint(fields=["study", "version"], name="report_unique_version"),
            # One draft per study: the claim that someone is reporting it.
            models.UniqueConstraint(fields=["study"], condition=models.Q(status="draft"), name="report_one_draft"),
            models.CheckConstraint(
                condition=models.Q(status="draft")
                | (~models.Q(pdf_sha256="") & ~models.Q(signature_path="") & models.Q(signed_at__isnull=False)),
                name="report_signed_has_files",
            ),
        ]
        indexes = [
            # The follow-up sweeps: signed versions by when they were signed (drafts have no such time).
            models.Index(fields=["signed_at"], condition=models.Q(status="signed"), name="report_signed_at"),
        ]
        permissions = [("sign_report", _("Può firmare referti"))]

    def __str__(self) -> str:
        return f"{self.study} v{self.version} ({self.get_status_display()})"

    @property
    def is_signed(self) -> bool:
        return self.status == self.Status.SIGNED

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The database refuses it too (migration 0008); this says why earlier.
        if self.pk is not None and Report.objects.filter(pk=self.pk, status=self.Status.SIGNED).exists():
            raise ValidationError(
                _("Un referto firmato non si può modificare: si redige una rettifica o un'integrazione.")
            )
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        if self.pk is not None and Report.objects.filter(pk=self.pk, status=self.Status.SIGNED).exists():
            raise ValidationError(_("Un referto firmato non si può cancellare."))
        return super().delete(*args, **kwargs)


class DoseRecord(models.Model):
    """One dose figure of one study in the patient's dose register (D.Lgs 101/2020: the
    dose-reference-level audits), from the exposure of its latest signed report.

    Written by :func:`archive.reporting.dose.dose_register_write` when a report is
    signed, one row per study and quantity; a correction's figures replace the
    earlier ones (the row names the version they came from). Read-only in the admin.
    """

    class Quantity(models.TextChoices):
        CTDIVOL_MAX = "ctdivol_max", _("CTDIvol massimo")
        DLP_TOTAL = "dlp_total", _("DLP totale")
        DAP_TOTAL = "dap_total", _("prodotto dose-area (DAP)")
        ENTRANCE_DOSE = "entrance_dose", _("dose in ingresso")
        ACTIVITY = "activity", _("attività somministrata")

    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="dose_records", verbose_name=_("paziente")
    )
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="dose_records", verbose_name=_("studio"))
    report = models.ForeignKey(
        Report, on_delete=models.PROTECT, related_name="dose_records", verbose_name=_("referto (versione)")
    )
    performed_on = models.DateField(_("data dell'esame"), db_index=True)
    modality = models.CharField(_("modalità"), max_length=16, db_index=True)
    procedure_code = models.CharField(_("codice della prestazione"), max_length=32, blank=True, db_index=True)
    procedure = models.CharField(_("prestazione"), max_length=256, blank=True)
    quantity = models.CharField(_("grandezza"), max_length=16, choices=Quantity.choices)
    value = models.FloatField(_("valore"))
    unit = models.CharField(_("unità"), max_length=16)
    detail = models.CharField(_("dettaglio"), max_length=256, blank=True, help_text=_("Es. il radiofarmaco."))
    source = models.CharField(_("fonte"), max_length=16)
    recorded_at = models.DateTimeField(_("registrato il"), auto_now=True)

    class Meta:
        verbose_name = _("dose registrata")
        verbose_name_plural = _("registro delle dosi")
        constraints = [models.UniqueConstraint(fields=["study", "quantity"], name="dose_record_study_quantity")]
        indexes = [models.Index(fields=["patient", "performed_on"], name="dose_record_patient_date")]

    def __str__(self) -> str:
        return f"{self.performed_on} {self.modality} {self.get_quantity_display()} {self.value:g} {self.unit}"


# The sections a template fills and a phrase may go into: the report's four texts.
REPORT_SECTIONS = ("clinical_question", "technique", "findings", "conclusion")


class ReportTemplate(models.Model):
    """A department's standard text for a catalogue procedure (*modello di referto*).

    Proposed in the editor for the studies booked with ``procedure_code`` at the
    authority's facilities; its sections go into the report's empty ones. The
    procedure is named by its catalogue code: the catalogue is the CUP's
    (booking.Procedure), which the archive does not import. Kept by a
    department's head (``archive.change_reporttemplate``), each for their own
    health authority.
    """

    authority = models.ForeignKey(
        HealthAuthority,
        on_delete=models.PROTECT,
        related_name="report_templates",
        verbose_name=_("azienda sanitaria"),
    )
    procedure_code = models.CharField(
        _("codice della prestazione"),
        max_length=16,
        help_text=_("Il codice del catalogo CUP, per esempio 87.41 (TC del torace)."),
    )
    name = models.CharField(_("nome"), max_length=100, help_text=_("Per esempio «TC torace standard»."))
    clinical_question = models.TextField(_("quesito clinico"), blank=True)
    technique = models.TextField(_("tecnica"), blank=True)
    findings = models.TextField(_("descrizione"), blank=True)
    conclusion = models.TextField(_("conclusioni"), blank=True)
    updated_at = models.DateTimeField(_("modificato il"), auto_now=True)

    class Meta:
        verbose_name = _("modello di referto")
        verbose_name_plural = _("modelli di referto")
        ordering = ["authority__code", "procedure_code", "name"]
        constraints = [
            models.UniqueConstraint(fields=["authority", "procedure_code", "name"], name="reporttemplate_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.procedure_code} – {self.name}"

    def clean(self) -> None:
        if not any(getattr(self, name).strip() for name in REPORT_SECTIONS):
            raise ValidationError(_("Scrivi il testo di almeno una sezione."))


class ReportPhrase(models.Model):
    """A radiologist's own standard phrase (*frase standard*), inserted at the cursor in the editor."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="report_phrases", verbose_name=_("radiologo")
    )
    title = models.CharField(_("titolo"), max_length=80, help_text=_("Come la frase appare nell'elenco."))
    text = models.TextField(_("testo"))
    updated_at = models.DateTimeField(_("modificata il"), auto_now=True)

    class Meta:
        verbose_name = _("frase standard")
        verbose_name_plural = _("frasi standard")
        ordering = ["owner", "title"]
        constraints = [models.UniqueConstraint(fields=["owner", "title"], name="reportphrase_unique_title")]

    def __str__(self) -> str:
        return self.title


class LifecyclePolicy(models.Model):
    """When a facility's instances go to the long-term tier and leave the facility's.

    The most specific row wins: facility and modality, then facility, then
    modality, then ``PACS_MIGRATE_AFTER_DAYS``/``PACS_EVICT_AFTER_DAYS``.
    """

    facility = models.ForeignKey(
        Facility,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="lifecycle_policies",
        verbose_name=_("presidio"),
        help_text=_("Vuoto: tutti i presidi."),
    )
    modality = models.CharField(_("modalità"), max_length=16, blank=True, help_text=_("Vuoto: tutte le modalità."))
    migrate_after_days = models.FloatField(
        _("copia nell'archivio a lungo termine dopo (giorni)"), validators=[MinValueValidator(0)]
    )
    evict_after_days = models.FloatField(
        _("rimuovi dal presidio dopo (giorni)"),
        validators=[MinValueValidator(0)],
        help_text=_("Solo se esiste una copia verificata a lungo termine."),
    )

    class Meta:
        verbose_name = _("politica del ciclo di vita")
        verbose_name_plural = _("politiche del ciclo di vita")
        constraints = [
            models.UniqueConstraint(fields=["facility", "modality"], name="lifecyclepolicy_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.facility.code if self.facility else '*'} {self.modality or '*'}"


class ScopeMigration(models.Model):
    """The background copy of the long-term archive into a new scope (region ↔ authority).

    Started when ``PACS_LONG_TERM_SCOPE`` no longer matches where the long-term
    copies lie; an old-scope copy is released only after its new-scope copy is
    verified.
    """

    target_scope = models.CharField(_("nuovo ambito"), max_length=16)
    started_at = models.DateTimeField(_("iniziata il"), auto_now_add=True)
    finished_at = models.DateTimeField(_("terminata il"), null=True, blank=True)
    total = models.PositiveIntegerField(_("copie da migrare"), default=0)
    copied = models.PositiveIntegerField(_("copiate e verificate"), default=0)
    released = models.PositiveIntegerField(_("copie vecchie rilasciate"), default=0)
    failures = models.PositiveIntegerField(_("errori"), default=0)
    last_error = models.TextField(_("ultimo errore"), blank=True)
    updated_at = models.DateTimeField(_("aggiornata il"), auto_now=True)

    class Meta:
        verbose_name = _("migrazione dell'archivio a lungo termine")
        verbose_name_plural = _("migrazioni dell'archivio a lungo termine")
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"→ {self.target_scope} {self.released}/{self.total}"

    @property
    def percent(self) -> int:
        return 100 if not self.total else min(100, int(100 * self.released / self.total))


class FixityRun(models.Model):
    """One night's fixity audit: copies re-read and their SHA-256 compared."""

    started_at = models.DateTimeField(_("iniziato il"), auto_now_add=True)
    finished_at = models.DateTimeField(_("terminato il"), null=True, blank=True)
    checked = models.PositiveIntegerField(_("copie rilette"), default=0)
    ok = models.PositiveIntegerField(_("integre"), default=0)
    damaged = models.PositiveIntegerField(_("danneggiate o mancanti"), default=0)
    repaired = models.PositiveIntegerField(_("riparate"), default=0)
    unreadable = models.PositiveIntegerField(_("illeggibili ora"), default=0)

    class Meta:
        verbose_name = _("verifica di integrità")
        verbose_name_plural = _("verifiche di integrità")
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.started_at:%Y-%m-%d %H:%M} {self.ok}/{self.checked}"


class StorageAlert(Alert):
    """Something about a stored copy that staff must know: shown in the admin until acknowledged.

    One open alert per copy (its tier and path): a later audit that finds it again updates it.
    """

    class Kind(models.TextChoices):
        DAMAGED = "damaged", _("copia danneggiata")
        MISSING = "missing", _("copia mancante")
        UNREPAIRABLE = "unrepairable", _("nessuna copia verificata da cui riparare")

    kind = models.CharField(_("tipo"), max_length=16, choices=Kind.choices)
    tier = models.CharField(_("livello"), max_length=64)
    path = models.CharField(_("percorso"), max_length=512)
    instance = models.ForeignKey(
        Instance, null=True, on_delete=models.SET_NULL, related_name="storage_alerts", verbose_name=_("istanza")
    )
    fixity_run = models.ForeignKey(
        FixityRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts", verbose_name=_("verifica")
    )
    repaired = models.BooleanField(_("riparata"), default=False)

    class Meta(Alert.Meta):
        verbose_name = _("allarme di archiviazione")
        verbose_name_plural = _("allarmi di archiviazione")

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.tier}:{self.path}"


class CopyFailure(models.Model):
    """An instance the lifecycle could not copy into its long-term tier (or its new scope's).

    Recorded per instance and step; an instance whose sources are damaged or
    missing is retried with exponential backoff and skipped in the queue
    meanwhile, so the rest moves on. The row goes when the copy succeeds.
    """

    class Step(models.TextChoices):
        MIGRATE = "migrate", _("copia nell'archivio a lungo termine")
        SCOPE = "scope", _("migrazione dell'ambito")

    instance = models.ForeignKey(
        Instance, on_delete=models.CASCADE, related_name="copy_failures", verbose_name=_("istanza")
    )
    step = models.CharField(_("fase"), max_length=16, choices=Step.choices)
    tier = models.CharField(_("livello di destinazione"), max_length=64)
    attempts = models.PositiveIntegerField(_("tentativi"), default=0)
    first_failed_at = models.DateTimeField(_("primo errore il"))
    last_failed_at = models.DateTimeField(_("ultimo errore il"))
    next_try_at = models.DateTimeField(_("prossimo tentativo"), db_index=True)
    last_error = models.TextField(_("ultimo errore"), blank=True)
    damaged = models.BooleanField(
        _("copie di origine danneggiate"), default=False, help_text=_("No: il livello non rispondeva.")
    )

    class Meta:
        verbose_name = _("copia bloccata")
        verbose_name_plural = _("copie bloccate")
        ordering = ["next_try_at"]
        constraints = [models.UniqueConstraint(fields=["instance", "step"], name="copyfailure_one_per_step")]

    def __str__(self) -> str:
        return f"{self.get_step_display()}: #{self.instance_id} → {self.tier} ({self.attempts})"


class StorageCommitment(models.Model):
    """A Storage Commitment request (PS3.4 J, Push Model) a node made, until it is answered.

    Written when the N-ACTION arrives, before it is acknowledged, so that a
    request survives a restart of the listener or of the workers; answered
    once (the claim is a conditional UPDATE on ``claimed_at``, the answer is
    recorded by the one who sent it). Archive.dicomnet.commitment holds the rules.
    """

    class State(models.TextChoices):
        PENDING = "pending", _("in attesa di risposta")
        ANSWERED = "answered", _("risposta inviata")
        UNDELIVERED = "undelivered", _("risposta non consegnata")

    transaction_uid = models.CharField("TransactionUID", max_length=64)
    facility = models.ForeignKey(
        Facility, on_delete=models.PROTECT, related_name="storage_commitments", verbose_name=_("presidio")
    )
    node = models.ForeignKey(
        RemoteNode,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="storage_commitments",
        verbose_name=_("nodo richiedente"),
    )
    calling_ae = models.CharField(_("AE title richiedente"), max_length=16)
    called_ae = models.CharField(_("AE title chiamato"), max_length=16)
    source = models.CharField(_("indirizzo del richiedente"), max_length=255, blank=True)
    # [[SOP Class UID, SOP Instance UID], ...] in the order of the request's Referenced SOP Sequence.
    references = models.JSONField(_("istanze richieste"))
    require_long_term = models.BooleanField(_("attende la copia a lungo termine"), default=False)
    state = models.CharField(_("stato"), max_length=16, choices=State.choices, default=State.PENDING)
    received_at = models.DateTimeField(_("ricevuta il"))
    answer_by = models.DateTimeField(_("risposta entro il"))
    next_attempt_at = models.DateTimeField(_("prossimo tentativo"))
    claimed_at = models.DateTimeField(_("in lavorazione dal"), null=True, blank=True)
    attempts = models.PositiveIntegerField(_("tentativi di consegna"), default=0)
    last_error = models.TextField(_("ultimo errore"), blank=True)
    answered_at = models.DateTimeField(_("risposta inviata il"), null=True, blank=True)
    answered_via = models.CharField(_("inviata su"), max_length=16, blank=True)
    event_type = models.PositiveSmallIntegerField(_("tipo di evento"), null=True, blank=True)
    # {"committed": n, "failed": {SOP Instance UID: Failure Reason}} as answered.
    result = models.JSONField(_("esito"), default=dict, blank=True)

    class Meta:
        verbose_name = _("richiesta di storage commitment")
        verbose_name_plural = _("richieste di storage commitment")
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["facility", "calling_ae", "transaction_uid"], name="storagecommitment_unique_transaction"
            )
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="storagecommitment_due")]

    def __str__(self) -> str:
        return f"{self.calling_ae} {self.transaction_uid} ({self.get_state_display()})"


# --- IOCM: rejection notes (archive.rejection) ------------------------------------------


class RejectionNote(models.Model):
    """A Key Object Selection document titled with a rejection code (IHE IOCM), as received.

    The note itself is stored and kept for ever (it is the evidence of the
    withdrawal) but, like what it rejects, is not in regular use: it is read
    here and in the admin, not in queries, pages or zips.
    """

    instance = models.OneToOneField(
        Instance, on_delete=models.PROTECT, related_name="rejection_note", verbose_name=_("nota (istanza KOS)")
    )
    sop_instance_uid = models.CharField("SOPInstanceUID", max_length=64, unique=True)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="rejection_notes", verbose_name=_("studio"))
    code = models.CharField(_("codice del motivo"), max_length=16)
    meaning = models.CharField(_("motivo"), max_length=64)
    facility = models.ForeignKey(Facility, on_delete=models.PROTECT, related_name="+", verbose_name=_("presidio"))
    calling_ae = models.CharField(_("AE title mittente"), max_length=16, blank=True)
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("inviata da (STOW-RS)"),
    )
    received_at = models.DateTimeField(_("ricevuta il"), db_index=True)
    referenced = models.PositiveIntegerField(_("istanze indicate"), default=0)
    withdrawn = models.PositiveIntegerField(_("istanze ritirate"), default=0)
    pending = models.PositiveIntegerField(_("istanze non ancora arrivate"), default=0)

    class Meta:
        verbose_name = _("nota di rifiuto (IOCM)")
        verbose_name_plural = _("note di rifiuto (IOCM)")
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.meaning} ({self.code}) – {self.sop_instance_uid}"


class Rejection(models.Model):
    """One instance a rejection note names: withdrawn (``instance`` set), still to arrive
    (``instance`` empty, ``purged_at`` empty: withdrawn on arrival), or purged after its
    retention (``purged_at``). The first note that names an instance decides its reason."""

    note = models.ForeignKey(
        RejectionNote, on_delete=models.PROTECT, related_name="rejections", verbose_name=_("nota di rifiuto")
    )
    sop_instance_uid = models.CharField("SOPInstanceUID", max_length=64, unique=True)
    sop_class_uid = models.CharField("SOPClassUID", max_length=64, blank=True)
    series_instance_uid = models.CharField("SeriesInstanceUID", max_length=64)
    study_instance_uid = models.CharField("StudyInstanceUID", max_length=64)
    instance = models.OneToOneField(
        Instance,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="rejection",
        verbose_name=_("istanza ritirata"),
    )
    study = models.ForeignKey(
        Study, null=True, blank=True, on_delete=models.PROTECT, related_name="+", verbose_name=_("studio")
    )
    code = models.CharField(_("codice del motivo"), max_length=16)
    rejected_at = models.DateTimeField(_("ritirata il"), null=True, blank=True, db_index=True)
    purged_at = models.DateTimeField(_("eliminata il"), null=True, blank=True)

    class Meta:
        verbose_name = _("istanza rifiutata")
        verbose_name_plural = _("istanze rifiutate")
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"{self.sop_instance_uid} ({self.code})"

    @property
    def state(self) -> str:
        if self.purged_at is not None:
            return str(_("eliminata"))
        if self.instance_id is not None:
            return str(_("ritirata"))
        return str(_("in attesa dell'arrivo"))


class RejectionNotice(models.Model):
    """Something a rejection note cannot undo by itself and the CUP or the archivist must
    handle: the study was already preserved (the package is write-once) or published to
    the citizen's FSE. Opened by preservation and the portal (signal ``instances_rejected``)."""

    class Kind(models.TextChoices):
        PRESERVED = "preserved", _("studio già in conservazione")
        PUBLISHED = "published", _("referto già pubblicato sul FSE")

    class State(models.TextChoices):
        OPEN = "open", _("da gestire")
        HANDLED = "handled", _("gestito")

    note = models.ForeignKey(
        RejectionNote, on_delete=models.PROTECT, related_name="notices", verbose_name=_("nota di rifiuto")
    )
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="+", verbose_name=_("studio"))
    kind = models.CharField(_("tipo"), max_length=16, choices=Kind.choices)
    detail = models.TextField(_("dettaglio"), blank=True)
    state = models.CharField(_("stato"), max_length=8, choices=State.choices, default=State.OPEN, db_index=True)
    created_at = models.DateTimeField(_("aperto il"), auto_now_add=True)
    handled_at = models.DateTimeField(_("gestito il"), null=True, blank=True)
    handled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("gestito da"),
    )

    class Meta:
        verbose_name = _("avviso di rifiuto da gestire")
        verbose_name_plural = _("avvisi di rifiuto da gestire")
        ordering = ["state", "-created_at"]
        constraints = [models.UniqueConstraint(fields=["note", "kind"], name="rejectionnotice_one_per_kind")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.note.sop_instance_uid} ({self.get_state_display()})"


class PerformedProcedureStep(models.Model):
    """A Modality Performed Procedure Step (PS3.4 F) a modality reported by N-CREATE
    and N-SET: what was performed for which scheduled step, when, with which series
    and dose, and how it ended.

    ``attributes`` keeps the step's whole data set (DICOM JSON) as the modality
    sent and then modified it; the other columns are read from it on every
    change, for pages and queries. The booking it belongs to is found by
    accession number and Scheduled Procedure Step ID (the worklist gave both):
    the booking app reacts to ``archive.signals.procedure_step_changed``.
    """

    class Status(models.TextChoices):
        # The DICOM defined terms (PS3.3 C.4.14) are the stored values.
        IN_PROGRESS = "IN PROGRESS", _("in corso")
        COMPLETED = "COMPLETED", _("completato")
        DISCONTINUED = "DISCONTINUED", _("interrotto")

    sop_instance_uid = models.CharField("SOPInstanceUID", max_length=64, unique=True)
    facility = models.ForeignKey(
        Facility, on_delete=models.PROTECT, related_name="procedure_steps", verbose_name=_("presidio")
    )
    calling_ae = models.CharField(_("AE title del mittente"), max_length=16)
    patient = models.ForeignKey(
        Patient,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="procedure_steps",
        verbose_name=_("paziente"),
    )
    patient_name = models.CharField("PatientName", max_length=256, blank=True)
    dicom_patient_id = models.CharField("PatientID", max_length=64, blank=True)
    accession_number = models.CharField("AccessionNumber", max_length=16, blank=True, db_index=True)
    scheduled_step_id = models.CharField("ScheduledProcedureStepID", max_length=16, blank=True)
    # Every (accession, scheduled step, study) of the Scheduled Step Attributes
    # Sequence: one step may perform several scheduled ones (PS3.4 F.7.1, IHE "group case").
    scheduled_steps = models.JSONField(_("procedure prenotate eseguite"), default=list, blank=True)
    study_instance_uid = models.CharField("StudyInstanceUID", max_length=64, blank=True, db_index=True)
    step_id = models.CharField("PerformedProcedureStepID", max_length=16, blank=True)
    station_ae_title = models.CharField("PerformedStationAETitle", max_length=16, blank=True)
    station_name = models.CharField("PerformedStationName", max_length=16, blank=True)
    modality = models.CharField("Modality", max_length=16, blank=True)
    description = models.CharField("PerformedProcedureStepDescription", max_length=64, blank=True)
    status = models.CharField(_("stato"), max_length=16, choices=Status.choices, db_index=True)
    started_at = models.DateTimeField(_("iniziato il"), null=True, blank=True)
    ended_at = models.DateTimeField(_("terminato il"), null=True, blank=True)
    discontinuation_reason = models.CharField(
        _("motivo dell'interruzione"),
        max_length=200,
        blank=True,
        help_text=_("Dalla Performed Procedure Step Discontinuation Reason Code Sequence: significato (codice)."),
    )
    comments = models.TextField(_("commenti"), blank=True)
    # [{"series_instance_uid", "series_description", "protocol_name", "images": n, "instances": [[class, uid], ...]}]
    performed_series = models.JSONField(_("serie eseguite"), default=list, blank=True)
    # The Radiation Dose module's attributes present (PS3.3 C.4.16): keyword -> value.
    dose = models.JSONField(_("dose"), default=dict, blank=True)
    attributes = models.JSONField(_("attributi DICOM"), default=dict)
    created_at = models.DateTimeField(_("creato il"), auto_now_add=True)
    updated_at = models.DateTimeField(_("modificato il"), auto_now=True)

    class Meta:
        verbose_name = _("procedura eseguita (MPPS)")
        verbose_name_plural = _("procedure eseguite (MPPS)")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.accession_number or self.sop_instance_uid} {self.get_status_display()}"

    def is_final(self) -> bool:
        """A completed or discontinued step may no longer be changed (PS3.4 F.7.2.2)."""
        return self.status != self.Status.IN_PROGRESS
