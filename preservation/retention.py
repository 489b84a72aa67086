"""Retention: the retention table, legal holds, and the discard procedure (scarto).

Reports and clinical records are kept without limit (Ministry of Health
circular 900.2/2.7/190 of 19 December 1986); diagnostic images at least ten
years (DM 14 February 1997), configurable by class and modality in
:class:`~preservation.models.RetentionClass`. A discard is proposed by a task
(:func:`discard_propose`), approved by a preservation officer in the admin
(:func:`discard_approve`, permission ``preservation.approve_discard``), and
executed (:func:`discard_execute`) only while approved and only for files no
legal hold covers; it leaves a record with the hash of every file removed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from kernel.errors import Invalid

from . import vault
from .journal import journal_record
from .models import Discard, DiscardItem, JournalEntry, LegalHold, Package, PackageFile, RetentionClass

logger = logging.getLogger(__name__)


class RetentionError(Invalid):
    """A retention or discard action that was refused; ``message`` in Italian."""

    code = "retention"


# The statutory classes (also made by migration 0002): made again if a table flush removed them.
DEFAULT_CLASSES = [
    (
        "REFERTI",
        "Referti e documentazione clinica",
        "report",
        None,
        "Circolare Min. Sanità 900.2/2.7/190 del 19/12/1986",
    ),
    ("IMMAGINI", "Immagini diagnostiche", "image", 10, "DM 14 febbraio 1997: almeno dieci anni"),
    ("METADATI", "Metadati e indici dei pacchetti", "metadata", None, "Seguono il referto: senza limite di tempo"),
]


def retention_table_ensure() -> None:
    for code, name, doc_type, years, basis in DEFAULT_CLASSES:
        if not RetentionClass.objects.filter(document_type=doc_type, modality="").exists():
            RetentionClass.objects.get_or_create(
                code=code, defaults={"name": name, "document_type": doc_type, "years": years, "legal_basis": basis}
            )


def retention_class_for(*, document_type: str, modality: str = "") -> RetentionClass:
    """The most specific class: document type and modality, else document type alone."""
    if not RetentionClass.objects.filter(document_type=document_type, modality="").exists():
        retention_table_ensure()
    rows = {
        rc.modality: rc
        for rc in RetentionClass.objects.filter(document_type=document_type, modality__in=[modality, ""])
    }
    found = rows.get(modality) or rows.get("")
    if found is None:
        raise RetentionError(
            _("Nessuna classe di conservazione per i documenti di tipo %(type)s.") % {"type": document_type}
        )
    return found


def keep_until(*, retention_class: RetentionClass, start: dt.date) -> dt.date | None:
    """The last day to keep a document of ``retention_class`` formed on ``start``; None: without limit."""
    if retention_class.years is None:
        return None
    try:
        return start.replace(year=start.year + retention_class.years)
    except ValueError:  # 29 February
        return start.replace(year=start.year + retention_class.years, day=28)


def holds_active_q() -> Q:
    return Q(released_at__isnull=True)


def file_held(package_file: PackageFile) -> bool:
    """True when an active legal hold covers the file's study or patient."""
    study = package_file.package.study
    return LegalHold.objects.filter(holds_active_q()).filter(Q(study=study) | Q(patient_id=study.patient_id)).exists()


def hold_place(*, user: Any, reason: str, study: Any = None, patient: Any = None) -> LegalHold:
    if study is None and patient is None:
        raise RetentionError(_("Un blocco legale riguarda uno studio o un paziente."))
    hold = LegalHold.objects.create(study=study, patient=patient, reason=reason, placed_by=user)
    journal_record(
        event=JournalEntry.Event.HOLD,
        action="hold.place",
        object_id=str(hold.pk),
        user=user,
        detail={
            "study": getattr(study, "study_instance_uid", ""),
            "patient": getattr(patient, "pk", None),
            "reason": reason,
        },
    )
    return hold


def hold_release(*, hold: LegalHold, user: Any) -> None:
    if LegalHold.objects.filter(pk=hold.pk, released_at__isnull=True).update(
        released_at=timezone.now(), released_by=user
    ):
        journal_record(event=JournalEntry.Event.HOLD, action="hold.release", object_id=str(hold.pk), user=user)


def files_due(*, today: dt.date | None = None) -> list[PackageFile]:
    """Files of archived packages past their retention, not discarded, not held, not in an open discard."""
    today = today or timezone.localdate()
    open_items = DiscardItem.objects.filter(
        discard__status__in=[Discard.Status.PROPOSED, Discard.Status.APPROVED]
    ).values("package_file_id")
    candidates = (
        PackageFile.objects.filter(
            package__status=Package.Status.ARCHIVED,
            keep_until__isnull=False,
            keep_until__lt=today,
            discarded_at__isnull=True,
        )
        .exclude(pk__in=open_items)
        .select_related("package", "package__study")
    )
    return [f for f in candidates if not file_held(f)]


def discard_propose(*, today: dt.date | None = None) -> Discard | None:
    """Propose the discard of every file past its retention; None when there is nothing to propose."""
    due = files_due(today=today)
    if not due:
        return None
    with transaction.atomic():
        discard = Discard.objects.create(
            reason=_("File oltre il tempo di conservazione della loro classe (proposta automatica).")
        )
        DiscardItem.objects.bulk_create(
            [DiscardItem(discard=discard, package_file=f, path=f.path, sha256=f.sha256, size=f.size) for f in due]
        )
    journal_record(
        event=JournalEntry.Event.DISCARD,
        action="discard.propose",
        object_id=str(discard.pk),
        system="preservation.discard_propose",
        detail={"files": len(due)},
    )
    return discard


def _may_approve(user: Any) -> None:
    if user is None or not user.is_authenticated or not user.has_perm("preservation.approve_discard"):
        raise PermissionDenied(_("Solo un responsabile della conservazione può approvare uno scarto."))


def discard_approve(*, discard: Discard, user: Any) -> Discard:
    """An officer approves a proposed discard (it is not executed yet)."""
    _may_approve(user)
    if (
        Discard.objects.filter(pk=discard.pk, status=Discard.Status.PROPOSED).update(
            status=Discard.Status.APPROVED, approved_by=user, approved_at=timezone.now()
        )
        != 1
    ):
        raise RetentionError(_("Lo scarto non è in attesa di approvazione."))
    journal_record(event=JournalEntry.Event.DISCARD, action="discard.approve", object_id=str(discard.pk), user=user)
    discard.refresh_from_db()
    return discard


def discard_reject(*, discard: Discard, user: Any) -> None:
    _may_approve(user)
    if Discard.objects.filter(pk=discard.pk, status=Discard.Status.PROPOSED).update(
        status=Discard.Status.REJECTED, approved_by=user, approved_at=timezone.now()
    ):
        journal_record(event=JournalEntry.Event.DISCARD, action="discard.reject", object_id=str(discard.pk), user=user)


def discard_execute(*, discard: Discard, user: Any = None) -> Discard:
    """Remove the files of an approved discard and leave its record.

    Refused unless approved. A file that a legal hold covers now (placed after
    the proposal) blocks the whole discard: nothing is removed.
    """
    discard = Discard.objects.get(pk=discard.pk)
    if discard.status != Discard.Status.APPROVED:
        journal_record(
            event=JournalEntry.Event.DISCARD,
            action="discard.execute",
            object_id=str(discard.pk),
            outcome="denied",
            user=user,
            detail={"reason": "not approved", "status": discard.status},
        )
        raise RetentionError(_("Uno scarto si esegue solo dopo l'approvazione del responsabile della conservazione."))
    items = list(discard.items.select_related("package_file", "package_file__package", "package_file__package__study"))
    held = [i.path for i in items if file_held(i.package_file)]
    if held:
        journal_record(
            event=JournalEntry.Event.DISCARD,
            action="discard.execute",
            object_id=str(discard.pk),
            outcome="denied",
            user=user,
            detail={"reason": "legal hold", "files": held[:50]},
        )
        raise RetentionError(
            _("Un blocco legale copre %(n)d file dello scarto: nessun file è stato rimosso.") % {"n": len(held)}
        )
    removed = []
    for item in items:
        if item.removed_at is None:
            vault.discard_file(item=item)
            now = timezone.now()
            DiscardItem.objects.filter(pk=item.pk).update(removed_at=now)
            PackageFile.objects.filter(pk=item.package_file_id).update(discarded_at=now)
        removed.append(
            {
                "package": item.package_file.package.identifier,
                "document": item.package_file.document_id,
                "path": item.path,
                "size": item.size,
                "sha256": item.sha256,
            }
        )
    record = {
        "discard": discard.pk,
        "approved_by": discard.approved_by.get_username() if discard.approved_by else "",
        "approved_at": discard.approved_at.isoformat() if discard.approved_at else "",
        "executed_at": timezone.now().isoformat(),
        "files": removed,
    }
    record_sha256 = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    Discard.objects.filter(pk=discard.pk).update(
        status=Discard.Status.EXECUTED, executed_at=timezone.now(), record=record, record_sha256=record_sha256
    )
    journal_record(
        event=JournalEntry.Event.DISCARD,
        action="discard.execute",
        object_id=str(discard.pk),
        user=user,
        detail={"files": len(removed), "record_sha256": record_sha256},
    )
    discard.refresh_from_db()
    return discard
