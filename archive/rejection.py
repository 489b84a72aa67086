"""IOCM rejection notes: a Key Object Selection document that withdraws wrong images.

A technologist who sent a wrong image (wrong patient, wrong side, a bad
exposure) cannot delete it from the archive; the modality sends a Key Object
Selection Document (SOP Class 1.2.840.10008.5.1.4.1.1.88.59) whose Concept
Name is a rejection title (IHE RAD TF-2 IOCM, PS3.16 CID 7010:
:data:`TITLES`), naming the instances in its Current Requested Procedure
Evidence Sequence. The archive, at ingestion (:func:`archive.ingest.instance_ingest`,
C-STORE and STOW-RS alike):

1. before the file is written, reads the note (:func:`note_read`) and checks
   who sent it (:func:`sender_check`): a registered DICOM node of the facility
   that may store, or a STOW-RS user holding ``archive.add_rejectionnote``.
   Anyone else gets 0x0124 (Refused: not authorised) and nothing is stored;
2. in the transaction that indexes the note (:func:`indexed`): refuses a note
   whose references name another study than its own, or instances archived in
   another study or series (another patient's: the note's study is checked
   against its patient by ingestion itself), with 0xC000 and the reason, and
   one naming instances another facility received with 0x0124;
   then stores the note, withdraws every referenced instance it holds
   (``Instance.withdrawn_at``: ``Instance.objects`` leaves it out, so queries,
   retrievals, pages, zips and previews lose it at once) and the note itself
   (evidence, read in the admin, never in regular use, as dcm4chee's default
   view hides rejection notes), recounts the study and its series, and audits
   the withdrawal with the patient;
3. keeps a reference to an instance it does not hold as *pending*: that
   instance is withdrawn when it arrives (:func:`indexed` again, same
   transaction as its indexing), audited as such. Nothing is refused: a
   modality may send the note before a queued image.

After commit, ``archive.signals.instances_rejected`` lets preservation and the
portal open a :class:`RejectionNotice` for what was already preserved or
published (the archive cannot touch a write-once package or take back what
the citizen saw). The rejected objects are purged (:func:`rejection_purge`:
their copies in every tier but preservation, their renditions, their rows)
once ``PACS_REJECTION_RETENTION_DAYS`` for their reason has passed, by the
beat task ``archive.tasks.rejections_purge``; the note and its
:class:`Rejection` rows stay as the record.

Rejecting a rejection note (dcm4chee's "revoke") is not supported: such a
note is refused.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from archive import removals
from archive.storage import tiers as storage
from kernel.audit import audit_record
from kernel.errors import PacsError

from .dicom import is_valid_uid
from .models import (
    Copy,
    Facility,
    Instance,
    InstanceConflict,
    Rejection,
    RejectionNote,
    RejectionNotice,
    RemoteNode,
    Rendition,
    Series,
    Study,
)
from .signals import instances_rejected

logger = logging.getLogger(__name__)

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
STORE_PERMISSION = "archive.add_rejectionnote"

# The rejection titles of a Key Object Selection Document (PS3.16 CID 7010, the
# ones IHE IOCM names; 113037 is the patient-safety one). Any other title is an
# ordinary key-image note, stored as any instance.
TITLES: dict[str, str] = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


class NoteRefused(PacsError):
    """A rejection note the archive does not accept; ``code`` ``invalid`` (0xC000) or
    ``not_authorized`` (0x0124). Ingestion turns it into its IngestError."""

    code = "invalid"


@dataclass(frozen=True)
class Reference:
    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_uid: str


@dataclass(frozen=True)
class NoteContent:
    """What a rejection note says: its title and the instances it names."""

    code: str
    meaning: str
    references: tuple[Reference, ...]


# --- before the file is stored --------------------------------------------------------


def note_read(*, sop_class_uid: str, data: bytes | bytearray | None, path: Path) -> NoteContent | None:
    """The rejection note in a received object, or None for any other object (an ordinary KOS too).

    Raises
    ------
    NoteRefused
        A rejection note that names no instance, or names one with a malformed UID.
    """
    if sop_class_uid != KEY_OBJECT_SELECTION:
        return None
    try:
        ds = dcmread(io.BytesIO(bytes(data)) if data is not None else path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise NoteRefused(f"unreadable key object selection document: {exc}") from exc
    title = ds.get("ConceptNameCodeSequence") or []
    if not title:
        return None
    code = str(title[0].get("CodeValue", "")).strip()
    scheme = str(title[0].get("CodingSchemeDesignator", "")).strip()
    if scheme != "DCM" or code not in TITLES:
        return None
    references = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        study_uid = str(study.get("StudyInstanceUID", "")).strip()
        for series in study.get("ReferencedSeriesSequence") or []:
            series_uid = str(series.get("SeriesInstanceUID", "")).strip()
            for sop in series.get("ReferencedSOPSequence") or []:
                ref = Reference(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_class_uid=str(sop.get("ReferencedSOPClassUID", "")).strip(),
                    sop_uid=str(sop.get("ReferencedSOPInstanceUID", "")).strip(),
                )
                for uid in (ref.study_uid, ref.series_uid, ref.sop_uid):
                    if not is_valid_uid(uid):
                        raise NoteRefused(f"rejection note: {uid[:64]!r} is not a valid UID")
                references.append(ref)
    if not references:
        raise NoteRefused("rejection note without referenced instances")
    meaning = str(title[0].get("CodeMeaning", "")).strip() or TITLES[code]
    return NoteContent(code=code, meaning=meaning[:64], references=tuple(references))


def sender_check(*, facility: Facility, calling_ae: str, user: Any) -> None:
    """Refuse a rejection note from a sender who may not withdraw images.

    Over DICOM, a registered node of the receiving facility that may store (an
    unknown AE let in by ``PACS_DICOM_ACCEPT_UNKNOWN_AE`` may not); over
    STOW-RS, a user holding ``archive.add_rejectionnote``; with neither (a
    bulk import) nobody.
    """
    if user is not None:
        if getattr(user, "is_authenticated", False) and user.has_perm(STORE_PERMISSION):
            return
        raise NoteRefused(f"rejection notes need the {STORE_PERMISSION} permission", code="not_authorized")
    if calling_ae and RemoteNode.objects.filter(facility=facility, ae_title=calling_ae, can_store=True).exists():
        return
    raise NoteRefused(
        f"{calling_ae or 'this sender'} is not a registered node of {facility.code}: rejection note refused",
        code="not_authorized",
    )


# --- in the indexing transaction --------------------------------------------------------


def indexed(
    *,
    outcome: str,
    sop_instance_uid: str,
    study_instance_uid: str,
    study_id: int | None,
    instance_id: int | None,
    detail: str,
    note: NoteContent | None,
    facility: Facility,
    calling_ae: str,
    user: Any,
    received_at: dt.datetime,
) -> None:
    """The IOCM part of indexing one object, in ingestion's transaction (the study row locked).

    A rejection note just stored withdraws what it names; an instance a note
    named before it arrived is withdrawn now. ``outcome`` is ingestion's
    (``stored``, ``duplicate``, ``conflict``).

    Raises
    ------
    NoteRefused
        The note names another study or instances of another study or series,
        or its own study is another patient's (ingestion found a conflict):
        the transaction rolls back, nothing of it stays in the index.
    """
    if note is None:
        if outcome == "stored" and instance_id is not None:
            _arrival(sop_instance_uid=sop_instance_uid, study_instance_uid=study_instance_uid, instance_id=instance_id)
        return
    if outcome == "conflict":
        raise NoteRefused(f"rejection note refused: {detail}")
    if outcome != "stored" or instance_id is None or study_id is None:
        return  # the same note again: it acted the first time
    _note_apply(
        note=note,
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_instance_uid,
        study_id=study_id,
        instance_id=instance_id,
        facility=facility,
        calling_ae=calling_ae,
        user=user,
        received_at=received_at,
    )


def _note_apply(
    *,
    note: NoteContent,
    sop_instance_uid: str,
    study_instance_uid: str,
    study_id: int,
    instance_id: int,
    facility: Facility,
    calling_ae: str,
    user: Any,
    received_at: dt.datetime,
) -> None:
    for ref in note.references:
        if ref.study_uid != study_instance_uid:
            raise NoteRefused(
                f"rejection note of study {study_instance_uid} names an instance of study {ref.study_uid}"
            )
    by_uid = {ref.sop_uid: ref for ref in note.references}
    held = {
        i.sop_instance_uid: i
        for i in Instance.all_objects.select_related("series").filter(sop_instance_uid__in=list(by_uid))
    }
    for uid, instance in held.items():
        if instance.series.study_id != study_id or instance.series.series_instance_uid != by_uid[uid].series_uid:
            raise NoteRefused(f"rejection note names {uid}, archived in another study or series")
        if instance.facility_id != facility.pk:
            # A facility's modalities withdraw what that facility received, not a neighbour's.
            raise NoteRefused(
                f"rejection note names {uid}, received by another facility than {facility.code}",
                code="not_authorized",
            )
    if RejectionNote.objects.filter(instance_id__in=[i.pk for i in held.values()]).exists():
        raise NoteRefused("rejection note names another rejection note (revoking a rejection is not supported)")
    now = received_at
    record = RejectionNote.objects.create(
        instance_id=instance_id,
        sop_instance_uid=sop_instance_uid,
        study_id=study_id,
        code=note.code,
        meaning=note.meaning,
        facility=facility,
        calling_ae=calling_ae,
        sender=user if user is not None and getattr(user, "pk", None) else None,
        received_at=now,
        referenced=len(by_uid),
    )
    # The note is evidence, not an image in regular use.
    Instance.all_objects.filter(pk=instance_id).update(withdrawn_at=now)
    already = set(
        Rejection.objects.filter(sop_instance_uid__in=list(by_uid)).values_list("sop_instance_uid", flat=True)
    )
    withdrawn: list[str] = []
    pending: list[str] = []
    rows = []
    for uid, ref in by_uid.items():
        if uid in already:
            continue  # an earlier note withdrew it (or waits for it): its reason stands
        target = held.get(uid)
        rows.append(
            Rejection(
                note=record,
                sop_instance_uid=uid,
                sop_class_uid=ref.sop_class_uid[:64],
                series_instance_uid=ref.series_uid,
                study_instance_uid=ref.study_uid,
                instance=target,
                study_id=study_id,
                code=note.code,
                rejected_at=now if target is not None else None,
            )
        )
        (withdrawn if target is not None else pending).append(uid)
    Rejection.objects.bulk_create(rows)
    if withdrawn:
        Instance.all_objects.filter(sop_instance_uid__in=withdrawn, withdrawn_at__isnull=True).update(withdrawn_at=now)
    RejectionNote.objects.filter(pk=record.pk).update(withdrawn=len(withdrawn), pending=len(pending))
    study = study_recount(study_id=study_id)
    audit_record(
        action="iocm.reject",
        user=user if user is not None and getattr(user, "pk", None) else None,
        ae_title=calling_ae if user is None else "",
        patient=study.patient,
        study=study,
        detail={
            "note": sop_instance_uid,
            "code": note.code,
            "reason": note.meaning,
            "withdrawn": withdrawn[:200],
            "pending": pending[:200],
            "already_rejected": len(already),
        },
    )
    _announce_on_commit(record.pk, study_id)


_PENDING_SQL: dict[str, str] = {}


def _pending_sql() -> str:
    sql = _PENDING_SQL.get(connection.vendor)
    if sql is None:
        q = connection.ops.quote_name
        meta = Rejection._meta
        sql = _PENDING_SQL[connection.vendor] = (
            f"SELECT {q(meta.get_field('id').column)} FROM {q(meta.db_table)} "
            f"WHERE {q(meta.get_field('sop_instance_uid').column)} = %s "
            f"AND {q(meta.get_field('instance').column)} IS NULL"
        )
    return sql


def _arrival(*, sop_instance_uid: str, study_instance_uid: str, instance_id: int) -> None:
    """Withdraw an arriving instance that a rejection note named before it came."""
    # Every stored instance asks: one indexed SELECT, without the ORM's compilation
    # (ingestion's hot path is raw SQL for the same reason).
    with connection.cursor() as cursor:
        cursor.execute(_pending_sql(), [sop_instance_uid])
        row = cursor.fetchone()
    if row is None:
        return
    rejection = Rejection.objects.select_related("note").get(pk=row[0])
    if rejection.study_instance_uid != study_instance_uid:
        logger.warning(
            "%s arrived in study %s, the rejection note %s named it in study %s: not withdrawn",
            sop_instance_uid,
            study_instance_uid,
            rejection.note.sop_instance_uid,
            rejection.study_instance_uid,
        )
        return
    now = timezone.now()
    Rejection.objects.filter(pk=rejection.pk).update(instance_id=instance_id, rejected_at=now, purged_at=None)
    Instance.all_objects.filter(pk=instance_id).update(withdrawn_at=now)
    note = rejection.note
    if rejection.purged_at is None:
        RejectionNote.objects.filter(pk=note.pk).update(withdrawn=note.withdrawn + 1, pending=max(0, note.pending - 1))
    study = study_recount(study_id=note.study_id)
    audit_record(
        action="iocm.reject_on_arrival",
        system="iocm",
        patient=study.patient,
        study=study,
        detail={"note": note.sop_instance_uid, "code": rejection.code, "withdrawn": [sop_instance_uid]},
    )
    _announce_on_commit(note.pk, note.study_id)


def _announce_on_commit(note_pk: int, study_pk: int) -> None:
    transaction.on_commit(lambda: _announce(note_pk, study_pk))


def _announce(note_pk: int, study_pk: int) -> None:
    try:
        instances_rejected.send(sender=RejectionNote, note_pk=note_pk, study_pk=study_pk)
    except Exception:
        # The withdrawal is committed; notes_announce_again (beat) announces it again.
        logger.exception("instances_rejected for note %s not announced", note_pk)


def notes_announce_again(*, within: dt.timedelta = dt.timedelta(days=1)) -> int:
    """Announce again the notes received ``within`` the last while: what their receivers
    queue is idempotent (one notice per note and kind), so a message the broker lost
    is made good by the next run (beat). Returns how many were announced."""
    since = timezone.now() - within
    notes = list(RejectionNote.objects.filter(received_at__gte=since).values_list("pk", "study_id"))
    for note_pk, study_pk in notes:
        _announce(note_pk, study_pk)
    return len(notes)


def study_recount(*, study_id: int) -> Study:
    """Set the study's and its series' counts (and the study's modalities) from the instances
    in regular use, after a withdrawal; a series or study left with none disappears
    (``Series.objects``, :func:`archive.access.visible_q`)."""
    counts = dict(
        Instance.objects.filter(series__study_id=study_id)
        .values_list("series_id")
        .annotate(n=Count("pk"))
        .values_list("series_id", "n")
    )
    modalities: list[str] = []
    series_rows = list(Series.all_objects.filter(study_id=study_id).order_by("pk"))
    for series in series_rows:
        n = counts.get(series.pk, 0)
        if n != series.number_of_instances:
            Series.all_objects.filter(pk=series.pk).update(number_of_instances=n)
        if n and series.modality and series.modality not in modalities:
            modalities.append(series.modality)
    Study.objects.filter(pk=study_id).update(
        number_of_instances=sum(counts.values()),
        number_of_series=sum(1 for n in counts.values() if n),
        modalities_in_study="\\".join(modalities)[:64],
    )
    return Study.objects.select_related("patient").get(pk=study_id)


# --- notices: what the archive cannot undo ----------------------------------------------


def notice_open(*, note_pk: int, kind: str, detail: str) -> RejectionNotice:
    """Open (once per note and kind) the notice that a person must act: called by the apps
    above the archive that find the study preserved or published."""
    note = RejectionNote.objects.select_related("study__patient").get(pk=note_pk)
    with transaction.atomic():
        notice, created = RejectionNotice.objects.get_or_create(
            note=note, kind=kind, defaults={"study": note.study, "detail": detail}
        )
        if created:
            audit_record(
                action="iocm.notice",
                system="iocm",
                patient=note.study.patient,
                study=note.study,
                detail={"note": note.sop_instance_uid, "kind": kind, "detail": detail[:500]},
            )
    return notice


def notice_handle(*, notice_pk: int, user: Any, source: str = "") -> bool:
    """Mark a notice handled by ``user`` (audited); False when it already was."""
    with transaction.atomic():
        done = RejectionNotice.objects.filter(pk=notice_pk, state=RejectionNotice.State.OPEN).update(
            state=RejectionNotice.State.HANDLED, handled_at=timezone.now(), handled_by=user
        )
        if not done:
            return False
        notice = RejectionNotice.objects.select_related("study__patient", "note").get(pk=notice_pk)
        audit_record(
            action="iocm.notice_handled",
            user=user,
            source=source,
            patient=notice.study.patient,
            study=notice.study,
            detail={"note": notice.note.sop_instance_uid, "kind": notice.kind},
        )
    return True


# --- purge after the retention ----------------------------------------------------------


def retention_for(code: str) -> dt.timedelta:
    """How long a rejected instance is kept before its purge (``PACS_REJECTION_RETENTION_DAYS``)."""
    days = settings.PACS_REJECTION_RETENTION_DAYS
    value = days.get(code, days.get("default", 30))
    return dt.timedelta(days=float(value))


def rejections_due(*, now: dt.datetime | None = None, limit: int = 500) -> list[int]:
    """The rejections whose instance is held and whose retention has passed, oldest first."""
    now = now or timezone.now()
    due = []
    rows = (
        Rejection.objects.filter(instance__isnull=False, rejected_at__isnull=False)
        .order_by("rejected_at", "pk")
        .values_list("pk", "code", "rejected_at")
    )
    for pk, code, rejected_at in rows.iterator():
        if rejected_at is not None and rejected_at + retention_for(code) <= now:
            due.append(pk)
            if len(due) >= limit:
                break
    return due


def rejection_purge(*, rejection_pk: int, now: dt.datetime | None = None) -> bool:
    """Remove a rejected instance whose retention has passed: its index rows (copies,
    renditions, the instance, a series left with nothing) in one transaction, with the
    removal of its files in every tier noted there and done after the commit
    (:mod:`archive.removals`: a crash in between leaves it to the lifecycle's pass).
    A preservation package is never touched: the tier refuses it, and this removes
    only the archive's own copies. Idempotent: False when there was nothing to do.
    """
    now = now or timezone.now()
    with transaction.atomic():
        rejection = Rejection.objects.select_for_update().filter(pk=rejection_pk).first()
        if rejection is None or rejection.instance_id is None or rejection.rejected_at is None:
            return False
        if rejection.rejected_at + retention_for(rejection.code) > now:
            return False
        instance = Instance.all_objects.select_related("series__study__patient").get(pk=rejection.instance_id)
        series, study = instance.series, instance.series.study
        copies = list(Copy.objects.filter(instance=instance))
        renditions = list(Rendition.objects.filter(instance=instance))
        files = [(c.tier, c.path, True) for c in copies if storage.tier_kind(c.tier) != storage.PRESERVATION]
        files += [(r.tier, r.path, False) for r in renditions if r.path]
        pending = removals.removals_note(files, instance_id=instance.pk)
        Rendition.objects.filter(instance=instance).delete()
        Copy.objects.filter(instance=instance).exclude(tier__startswith=f"{storage.PRESERVATION}:").delete()
        InstanceConflict.objects.filter(instance=instance).update(instance=None)
        Rejection.objects.filter(pk=rejection.pk).update(instance=None, purged_at=now)
        Instance.all_objects.filter(pk=instance.pk).delete()
        if not Instance.all_objects.filter(series=series).exists():
            Series.all_objects.filter(pk=series.pk).delete()
        audit_record(
            action="iocm.purge",
            system="iocm",
            patient=study.patient,
            study=study,
            detail={
                "sop_instance_uid": rejection.sop_instance_uid,
                "code": rejection.code,
                "rejected_at": rejection.rejected_at.isoformat(),
                "copies": [f"{tier}:{path}" for tier, path, is_copy in files if is_copy],
            },
        )
    removals.removals_finish(pending)
    return True


def rejections_purge(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Purge every rejected instance past its retention; returns how many."""
    return sum(1 for pk in rejections_due(now=now, limit=limit) if rejection_purge(rejection_pk=pk, now=now))


def notes_of_study(study_ids: Iterable[int]) -> dict[int, list[int]]:
    """The rejection notes of each study (for the apps that reconcile notices)."""
    result: dict[int, list[int]] = {}
    for pk, study_id in RejectionNote.objects.filter(study_id__in=list(study_ids)).values_list("pk", "study_id"):
        result.setdefault(study_id, []).append(pk)
    return result
