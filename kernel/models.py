"""The audit log's rows: who did what to whose data, in keyed chains (``kernel.audit``).

The tables keep the names they were created with in the archive
(``archive_auditevent``, ``archive_auditeventpatient``) and the triggers that
refuse changes to them (archive migrations 0002 and 0012): the models moved,
the rows did not. Patients and studies are named by model reference
(``"archive.Patient"``), not imported: the kernel imports none of the apps.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _


class AuditEvent(models.Model):
    """Who did what to which patient or study, when, from where, and how it ended.

    Append-only: rows are never updated or deleted (the database refuses it).
    Each writer appends to a chain of its own (``chain``, ``seq`` from 1): a row
    carries the previous row's ``hash`` and its own HMAC-SHA256 under the audit
    key (``key_id``), which lives outside the database, so a changed, removed
    or re-linked row shows (``manage.py verify_audit_chain``; ``kernel.audit``).
    Rows written before keying have ``chain=""``: one chain in id order,
    unkeyed SHA-256.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success", _("riuscito")
        WARNING = "warning", _("con avvisi")
        FAILURE = "failure", _("fallito")
        DENIED = "denied", _("negato")

    at = models.DateTimeField(_("quando"), db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        verbose_name=_("utente"),
    )
    username = models.CharField(_("nome utente"), max_length=150, blank=True)
    ae_title = models.CharField(_("AE title"), max_length=16, blank=True)
    system = models.CharField(_("processo di sistema"), max_length=64, blank=True)
    action = models.CharField(_("azione"), max_length=64, db_index=True)
    outcome = models.CharField(_("esito"), max_length=16, choices=Outcome.choices)
    patient = models.ForeignKey(
        "archive.Patient",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        verbose_name=_("paziente"),
    )
    study = models.ForeignKey(
        "archive.Study",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        verbose_name=_("studio"),
    )
    study_instance_uid = models.CharField("StudyInstanceUID", max_length=64, blank=True)
    source = models.CharField(_("da dove"), max_length=255, blank=True)
    detail = models.JSONField(_("dettaglio"), default=dict, blank=True)
    chain = models.CharField(_("catena"), max_length=32, blank=True, default="")
    seq = models.PositiveBigIntegerField(_("numero nella catena"), null=True, blank=True)
    key_id = models.CharField(_("chiave"), max_length=16, blank=True, default="")
    prev_hash = models.CharField(_("hash precedente"), max_length=64)
    hash = models.CharField(_("hash"), max_length=64, unique=True)

    class Meta:
        verbose_name = _("evento di audit")
        verbose_name_plural = _("eventi di audit")
        db_table = "archive_auditevent"
        ordering = ["-id"]
        indexes = [models.Index(fields=["patient", "at"], name="audit_patient_at")]
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="audit_chain_seq")]

    def __str__(self) -> str:
        who = self.username or self.ae_title or self.system
        return f"{self.at:%Y-%m-%d %H:%M:%S} {who} {self.action} {self.outcome}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            raise ValidationError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise ValidationError("Audit events are append-only.")


class AuditEventPatient(models.Model):
    """A patient an audited search returned (the first ``PACS_AUDIT_MAX_PATIENTS``),
    indexed so that the citizen's access log finds the search.

    Written with its event, append-only like it; the event's HMAC covers the
    same list in ``detail["patients"]``, and the verifier compares the two.
    """

    event = models.ForeignKey(
        AuditEvent, on_delete=models.DO_NOTHING, related_name="patient_links", verbose_name=_("evento")
    )
    patient = models.ForeignKey(
        "archive.Patient",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,  # the unique (patient, event) index serves
        related_name="+",
        verbose_name=_("paziente"),
    )

    class Meta:
        verbose_name = _("paziente in un risultato di ricerca")
        verbose_name_plural = _("pazienti nei risultati di ricerca")
        db_table = "archive_auditeventpatient"
        # Also the access log's index: the events that returned these patients.
        constraints = [models.UniqueConstraint(fields=["patient", "event"], name="audit_patient_event")]

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            raise ValidationError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise ValidationError("Audit events are append-only.")
