"""The outbox: one row per operation on one document at the FSE gateway, and every attempt at it.

An :class:`Operation` is written when the decision is taken (a version signed
with online consent, a correction, a revocation, an oscuramento) and is sent
later by a task, again and again until the gateway accepts it: a gateway that
is down delays the publication and loses nothing. Operations of one booking
are sent in the order they were written, so a replace never overtakes the
publication of the document it replaces. An :class:`Attempt` is one HTTP
exchange (the request's step, the answer's status and body, or the network
error), written once and never changed.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from archive.models import Report, Study
from booking.models import Booking


class Operation(models.Model):
    class Kind(models.TextChoices):
        PUBLISH = "publish", _("pubblicazione")
        REPLACE = "replace", _("sostituzione")
        DELETE = "delete", _("eliminazione")
        METADATA = "metadata", _("aggiornamento metadati")
        MANIFEST = "manifest", _("manifest KOS (XDS-I.b)")
        MANIFEST_DELETE = "manifest_delete", _("eliminazione del manifest KOS")

    class Status(models.TextChoices):
        PENDING = "pending", _("da inviare")
        SENDING = "sending", _("in invio")
        DONE = "done", _("accettata dal gateway")
        FAILED = "failed", _("rifiutata: serve un operatore")
        CANCELLED = "cancelled", _("annullata")

    booking = models.ForeignKey(
        Booking, on_delete=models.PROTECT, related_name="fse_operations", verbose_name=_("prenotazione")
    )
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="fse_operations", verbose_name=_("studio"))
    report = models.ForeignKey(
        Report, on_delete=models.PROTECT, related_name="fse_operations", verbose_name=_("versione del referto")
    )
    kind = models.CharField(_("operazione"), max_length=16, choices=Kind.choices)
    # The document this operation is about: the CDA's id (root^extension) as the
    # gateway's identificativoDoc, or the KOS's SOPInstanceUID for a manifest.
    document_id = models.CharField(_("identificativo del documento"), max_length=256)
    # What a replace replaces, what a delete or a metadata update targets.
    target_document_id = models.CharField(_("documento sostituito o eliminato"), max_length=256, blank=True)
    status = models.CharField(_("stato"), max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(_("tentativi"), default=0)
    next_attempt_at = models.DateTimeField(_("prossimo tentativo"), default=timezone.now)
    # The request's metadata as last sent (the JSON requestBody), for whoever reads the outbox.
    metadata = models.JSONField(_("metadati inviati"), default=dict, blank=True)
    last_error = models.TextField(_("ultimo errore"), blank=True)
    last_status_code = models.PositiveIntegerField(_("ultimo stato HTTP"), null=True, blank=True)
    # The gateway's own ids of the accepted exchange.
    trace_id = models.CharField(_("traceID del gateway"), max_length=100, blank=True)
    workflow_instance_id = models.CharField(_("workflowInstanceId"), max_length=256, blank=True)
    note = models.CharField(_("nota"), max_length=300, blank=True)
    created_at = models.DateTimeField(_("creata il"), default=timezone.now)
    updated_at = models.DateTimeField(_("aggiornata il"), auto_now=True)
    done_at = models.DateTimeField(_("conclusa il"), null=True, blank=True)

    class Meta:
        verbose_name = _("operazione verso il gateway FSE")
        verbose_name_plural = _("operazioni verso il gateway FSE")
        ordering = ["-pk"]
        constraints = [
            # Idempotent: a signal delivered twice, a sweep and a task racing, write one row.
            models.UniqueConstraint(
                fields=["booking", "kind", "document_id", "target_document_id"], name="fse_operation_unique"
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="fse_operation_due")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.document_id or self.target_document_id} ({self.get_status_display()})"


class Attempt(models.Model):
    """One exchange with the gateway: append-only."""

    operation = models.ForeignKey(
        Operation, on_delete=models.PROTECT, related_name="attempt_log", verbose_name=_("operazione")
    )
    step = models.CharField(_("passo"), max_length=32)
    method = models.CharField(_("metodo"), max_length=8)
    url = models.CharField(_("indirizzo"), max_length=500)
    at = models.DateTimeField(_("data e ora"), default=timezone.now)
    duration_ms = models.PositiveIntegerField(_("durata (ms)"), default=0)
    status_code = models.PositiveIntegerField(_("stato HTTP"), null=True, blank=True)
    response_body = models.TextField(_("risposta"), blank=True)
    error = models.TextField(_("errore"), blank=True)
    trace_id = models.CharField(_("traceID"), max_length=100, blank=True)

    class Meta:
        verbose_name = _("tentativo verso il gateway FSE")
        verbose_name_plural = _("tentativi verso il gateway FSE")
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.method} {self.step}: {self.status_code or self.error[:60]}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValidationError(_("Un tentativo registrato non si può modificare."))
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ValidationError(_("Un tentativo registrato non si può cancellare."))
