"""Ingestion: the one way an instance enters the archive (DIMSE, import, later STOW-RS).

Order of work, so that an acknowledged image is never lost and a crash never
leaves an index row without its file:

1. check the file (complete, identifying UIDs, storage SOP class);
2. fsync it and link it into the facility tier under a name carrying its
   SHA-256 (a name is never reused for other bytes);
3. index patient, study, series, instance and copy in one transaction;
4. after commit, queue the post-ingest work.

Only when this returns is the sender told that its object is stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from celery import current_app
from django.db import IntegrityError, OperationalError, close_old_connections, connection, transaction
from django.db.models import F, Field
from django.utils import timezone

from archive import removals
from archive.storage import tiers as storage
from kernel import tasknames
from kernel.audit import audit_record
from kernel.codice_fiscale import is_valid_codice_fiscale, normalize_codice_fiscale
from kernel.errors import PacsError

from . import rejection
from .dicom import DicomRejected, Header, read_part10
from .models import (
    Copy,
    Facility,
    Instance,
    InstanceConflict,
    Patient,
    PatientIdentifier,
    Rejection,
    Series,
    Study,
)
from .signals import study_instances_received

logger = logging.getLogger(__name__)

STORED = "stored"
DUPLICATE = "duplicate"
CONFLICT = "conflict"

# How often a transaction that lost to a transient database error is retried.
_DB_ATTEMPTS = 4


class IngestError(PacsError):
    """An object that was not stored; ``message`` says why, ``code`` the kind of failure.

    ``code``: ``invalid``, ``sop_class_mismatch``, ``not_storage`` (the object),
    ``out_of_resources`` (the tier is full, the index database unavailable),
    ``processing`` (anything else). The DIMSE edge answers each with its status
    (``archive.dicomnet.listener.DIMSE_STATUS``), STOW-RS with its failure reason.
    """

    code = "processing"

    @property
    def reason(self) -> str:
        """The older name of ``message``, kept for its callers."""
        return self.message

    @property
    def kind(self) -> str:
        """The older name of ``code``, kept for its callers."""
        return self.code


@dataclass(frozen=True)
class IngestResult:
    outcome: str  # STORED, DUPLICATE or CONFLICT
    sop_instance_uid: str
    study_instance_uid: str
    study_id: int | None
    patient_id: int | None
    instance_id: int | None
    detail: str = ""


def instance_ingest(
    *,
    path: Path,
    facility: Facility,
    owned: bool,
    data: bytes | bytearray | None = None,
    calling_ae: str = "",
    expected_sop_class_uid: str | None = None,
    expected_sop_instance_uid: str | None = None,
    user: Any = None,
) -> IngestResult:
    """Store one DICOM Part 10 file in ``facility``'s tier and index it.

    Parameters
    ----------
    path : Path
        The file. When ``owned`` it is a temporary file in this process's
        incoming folder and is consumed; otherwise it is copied first and
        left alone.
    data : bytes, optional
        The file's content, when it is in memory (a data set received over
        the network): checked there, then written once to ``path`` (which
        must not exist yet, in the incoming folder) and made durable.
    facility : Facility
        The facility whose tier receives it.
    calling_ae : str
        The sender's AE title, kept with the instance.
    expected_sop_class_uid, expected_sop_instance_uid : str, optional
        The C-STORE request's Affected SOP Class/Instance UID.
    user : User, optional
        Who sent it over STOW-RS (a rejection note needs their permission).

    Raises
    ------
    IngestError
        The object was not stored; nothing of it was kept.
    """
    if not owned and data is None:
        try:
            with open(path, "rb") as src:
                path = storage.copy_to_incoming(src)
        except storage.StorageFull as exc:
            raise IngestError(str(exc), code="out_of_resources") from exc
        except (storage.StorageError, OSError) as exc:
            raise IngestError(f"cannot read {path}: {exc}", code="processing") from exc
    try:
        if data is not None:
            header, sha256, size = _check_in_memory(
                data,
                path,
                expected_sop_class_uid=expected_sop_class_uid,
                expected_sop_instance_uid=expected_sop_instance_uid,
            )
        else:
            header, sha256, size = _check_and_sync(
                path,
                expected_sop_class_uid=expected_sop_class_uid,
                expected_sop_instance_uid=expected_sop_instance_uid,
            )
        # IOCM: a rejection note is read, and its sender checked, before it is stored.
        note = rejection.note_read(sop_class_uid=header.sop_class_uid, data=data, path=path)
        if note is not None:
            rejection.sender_check(facility=facility, calling_ae=calling_ae, user=user)
        tier = storage.facility_tier(facility.code)
        relpath = storage.instance_relpath(
            study_uid=header.study_instance_uid,
            series_uid=header.series_instance_uid,
            sop_uid=header.sop_instance_uid,
            sha256=sha256,
        )
        storage.place_file(path, tier, relpath)
    except (DicomRejected, rejection.NoteRefused) as exc:
        path.unlink(missing_ok=True)
        raise IngestError(exc.message, code=exc.code) from exc
    except storage.StorageFull as exc:
        path.unlink(missing_ok=True)
        raise IngestError(str(exc), code="out_of_resources") from exc
    except (storage.StorageError, OSError) as exc:
        path.unlink(missing_ok=True)
        raise IngestError(str(exc), code="processing") from exc

    # The file is durable. A failure from here on leaves it in place without an
    # index row: harmless, and a resend of the same bytes finds and adopts it.
    received = _Received(
        header=header,
        facility=facility,
        calling_ae=calling_ae,
        sha256=sha256,
        size=size,
        tier=tier,
        relpath=relpath,
        received_at=timezone.now(),
        note=note,
        user=user,
    )
    for attempt in range(1, _DB_ATTEMPTS + 1):
        try:
            return _index(received, optimistic=attempt == 1)
        except IntegrityError as exc:
            # A concurrent store created one of the same rows first (or this
            # instance is already archived): the transaction rolled back
            # whole; the next attempt looks before it inserts.
            if attempt == _DB_ATTEMPTS:
                raise IngestError(f"could not index the object: {exc}", code="processing") from exc
        except OperationalError as exc:
            # Lock timeouts, deadlocks, serialisation failures, a dropped
            # connection: the transaction rolled back whole, so try again.
            logger.warning("indexing %s failed (attempt %d): %s", header.sop_instance_uid, attempt, exc)
            if not transaction.get_connection().in_atomic_block:
                close_old_connections()
            if attempt == _DB_ATTEMPTS:
                raise IngestError(f"the index database is unavailable: {exc}", code="out_of_resources") from exc
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _check_in_memory(
    data: bytes | bytearray, path: Path, *, expected_sop_class_uid: str | None, expected_sop_instance_uid: str | None
) -> tuple[Header, str, int]:
    header = read_part10(
        data, expected_sop_class_uid=expected_sop_class_uid, expected_sop_instance_uid=expected_sop_instance_uid
    )
    storage.write_new_file(path, data)
    return header, hashlib.sha256(data).hexdigest(), len(data)


def _check_and_sync(
    path: Path, *, expected_sop_class_uid: str | None, expected_sop_instance_uid: str | None
) -> tuple[Header, str, int]:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise DicomRejected("the file is empty")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            sha256 = hashlib.sha256(buf).hexdigest()
            header = read_part10(
                buf,
                expected_sop_class_uid=expected_sop_class_uid,
                expected_sop_instance_uid=expected_sop_instance_uid,
            )
        # Linux flushes a file's dirty pages on fsync through any descriptor.
        os.fsync(fh.fileno())
    return header, sha256, size


@dataclass(frozen=True)
class _Received:
    """One object, durable in its tier, to be indexed."""

    header: Header
    facility: Facility
    calling_ae: str
    sha256: str
    size: int
    tier: str
    relpath: str
    received_at: Any
    note: rejection.NoteContent | None = None
    user: Any = None

    def result(
        self, outcome: str, study_id: int | None, patient_id: int | None, instance_id: int | None, detail: str = ""
    ) -> IngestResult:
        return IngestResult(
            outcome=outcome,
            sop_instance_uid=self.header.sop_instance_uid,
            study_instance_uid=self.header.study_instance_uid,
            study_id=study_id,
            patient_id=patient_id,
            instance_id=instance_id,
            detail=detail,
        )

    def instance_values(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.header.sop_instance_uid,
            "sop_class_uid": self.header.sop_class_uid,
            "transfer_syntax_uid": self.header.transfer_syntax_uid,
            "size": self.size,
            "sha256": self.sha256,
            "facility_id": self.facility.pk,
            "calling_ae": self.calling_ae,
            "received_at": self.received_at,
            **self.header.instance,
        }

    def copy_values(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "path": self.relpath,
            "sha256": self.sha256,
            "size": self.size,
            "verified_at": self.received_at,
            "instance_received_at": self.received_at,
        }


def _index(received: _Received, *, optimistic: bool) -> IngestResult:
    """Index one stored object in one transaction, with its IOCM part (archive.rejection)."""
    if optimistic and received.note is None and connection.vendor == "postgresql":
        done = _index_in_one_statement(received)
        if done is not None:
            return done
    with transaction.atomic():
        result = _index_rows(received, optimistic=optimistic)
        try:
            rejection.indexed(
                outcome=result.outcome,
                sop_instance_uid=result.sop_instance_uid,
                study_instance_uid=result.study_instance_uid,
                study_id=result.study_id,
                instance_id=result.instance_id,
                detail=result.detail,
                note=received.note,
                facility=received.facility,
                calling_ae=received.calling_ae,
                user=received.user,
                received_at=received.received_at,
            )
        except rejection.NoteRefused as exc:
            raise IngestError(exc.message, code=exc.code) from exc
    return result


def _index_rows(received: _Received, *, optimistic: bool) -> IngestResult:
    """Index one stored object (in :func:`_index`'s transaction).

    ``optimistic``: insert the instance without first looking for it (the
    common case: a new image); a unique-constraint violation then rolls the
    whole transaction back and the caller retries with ``optimistic=False``.
    """
    header, facility = received.header, received.facility
    with transaction.atomic(savepoint=False):
        if optimistic:
            done = _index_into_known_series(received)
            if done is not None:
                return done
        study, study_created = _study_for_update(header, facility)
        if not study_created and not _same_patient(header, study, facility):
            return _conflict(
                received,
                InstanceConflict.Reason.OTHER_PATIENT,
                f"study {study.study_instance_uid} belongs to PatientID {study.dicom_patient_id!r}, "
                f"this object names PatientID {header.patient['dicom_patient_id']!r}",
                study=study,
            )
        series, series_created = _series_for(header, study)
        if series.study_id != study.pk:
            return _conflict(
                received,
                InstanceConflict.Reason.OTHER_STUDY,
                f"series {series.series_instance_uid} is archived in study #{series.study_id}",
                study=study,
            )
        existing = None if optimistic else Instance.all_objects.filter(sop_instance_uid=header.sop_instance_uid).first()
        if existing is not None:
            return _existing(received, existing, study=study)
        instance = Instance.objects.create(series=series, **received.instance_values())
        Copy.objects.create(instance=instance, **received.copy_values())

        Series.objects.filter(pk=series.pk).update(number_of_instances=F("number_of_instances") + 1)
        updates: dict[str, Any] = {
            "number_of_instances": F("number_of_instances") + 1,
            "last_received_at": received.received_at,
            "post_ingest_pending": True,
        }
        if series_created:
            updates["number_of_series"] = F("number_of_series") + 1
            modality = series.modality
            if modality and modality not in study.modality_list():
                updates["modalities_in_study"] = "\\".join([*study.modality_list(), modality])[:64]
        Study.objects.filter(pk=study.pk).update(**updates)
        if not study.post_ingest_pending:
            # The row is locked: nobody else saw it idle, so exactly one task is queued.
            study_pk = study.pk
            transaction.on_commit(lambda: _enqueue_post_ingest(study_pk))
    return received.result(STORED, study.pk, study.patient_id, instance.pk)


class _HotSql:
    """The statements of the common case, built once from the models' metadata.

    Django's ORM compiles each query anew, which costs more than SQLite
    takes to run it; an image joining a series already archived (all but
    the first of each series) goes through these instead. Column names come
    from the models, so a renamed field cannot drift from them.
    """

    def __init__(self) -> None:
        q = connection.ops.quote_name

        def table(model: Any) -> str:
            return q(model._meta.db_table)

        def col(model: Any, name: str) -> str:
            return q(model._meta.get_field(name).column)

        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        self.study = (
            f"SELECT {col(Study, 'id')}, {col(Study, 'patient')}, {col(Study, 'dicom_patient_id')}, "
            f"{col(Study, 'issuer_of_patient_id')}, {col(Study, 'post_ingest_pending')} "
            f"FROM {table(Study)} WHERE {col(Study, 'study_instance_uid')} = %s{lock}"
        )
        self.series = (
            f"SELECT {col(Series, 'id')}, {col(Series, 'study')} FROM {table(Series)} "
            f"WHERE {col(Series, 'series_instance_uid')} = %s"
        )
        # get_field is typed for relations and generic keys too; these are all columns.
        self.instance_fields = [
            cast("Field[Any, Any]", Instance._meta.get_field(name))
            for name in (
                "sop_instance_uid",
                "sop_class_uid",
                "transfer_syntax_uid",
                "size",
                "sha256",
                "facility",
                "calling_ae",
                "received_at",
                "instance_number",
                "rows",
                "columns",
                "number_of_frames",
                "series",
            )
        ]
        self.insert_instance = (
            f"INSERT INTO {table(Instance)} ({', '.join(q(f.column) for f in self.instance_fields)}) "
            f"VALUES ({', '.join(['%s'] * len(self.instance_fields))}) RETURNING {col(Instance, 'id')}"
        )
        self.copy_fields = [
            cast("Field[Any, Any]", Copy._meta.get_field(name))
            for name in (
                "instance",
                "tier",
                "path",
                "sha256",
                "size",
                "created_at",
                "verified_at",
                "instance_received_at",
            )
        ]
        self.insert_copy = (
            f"INSERT INTO {table(Copy)} ({', '.join(q(f.column) for f in self.copy_fields)}) "
            f"VALUES ({', '.join(['%s'] * len(self.copy_fields))})"
        )
        n = col(Series, "number_of_instances")
        self.bump_series = f"UPDATE {table(Series)} SET {n} = {n} + 1 WHERE {col(Series, 'id')} = %s"
        n = col(Study, "number_of_instances")
        self.bump_study = (
            f"UPDATE {table(Study)} SET {n} = {n} + 1, {col(Study, 'last_received_at')} = %s, "
            f"{col(Study, 'post_ingest_pending')} = %s WHERE {col(Study, 'id')} = %s"
        )

        if connection.vendor == "postgresql":
            self.one_statement = self._one_statement(table, col)

    def _one_statement(self, table: Callable[[Any], str], col: Callable[[Any, str], str]) -> str:
        """PostgreSQL: the common case whole in one statement (data-modifying CTEs), which
        run in autocommit is its own transaction: one round trip where the transaction
        of :func:`_index_into_known_series` takes eight (BEGIN, two SELECTs, two INSERTs,
        two UPDATEs, the IOCM look-up, COMMIT).

        It inserts nothing, and returns no row, unless the study exists (locked until
        the statement commits, as ``FOR UPDATE`` does in the transaction), names the
        same patient, holds the series, and no rejection note waits for this instance.
        """
        q = connection.ops.quote_name
        study_pid = col(Study, "dicom_patient_id")
        rejection = Rejection._meta
        instance_columns = ", ".join(q(f.column) for f in self.instance_fields)
        instance_values = ", ".join(
            "ok.series_id" if f.name == "series" else f"%({f.attname})s" for f in self.instance_fields
        )
        copy_columns = ", ".join(q(f.column) for f in self.copy_fields)
        copy_values = ", ".join("ins.id" if f.name == "instance" else f"%(copy_{f.attname})s" for f in self.copy_fields)
        n_series, n_study = col(Series, "number_of_instances"), col(Study, "number_of_instances")
        return (
            f"WITH st AS (SELECT {col(Study, 'id')} AS id, {col(Study, 'patient')} AS patient_id, "
            f"{col(Study, 'post_ingest_pending')} AS pending FROM {table(Study)} "
            f"WHERE {col(Study, 'study_instance_uid')} = %(study_uid)s AND (%(patient_id)s = '' OR "
            f"({study_pid} = %(patient_id)s AND {col(Study, 'issuer_of_patient_id')} = %(issuer)s)) FOR UPDATE), "
            f"ok AS (SELECT st.id AS study_id, st.patient_id, st.pending, se.{col(Series, 'id')} AS series_id "
            f"FROM st JOIN {table(Series)} se ON se.{col(Series, 'study')} = st.id "
            f"AND se.{col(Series, 'series_instance_uid')} = %(series_uid)s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {q(rejection.db_table)} r "
            f"WHERE r.{q(rejection.get_field('sop_instance_uid').column)} = %(sop_instance_uid)s "
            f"AND r.{q(rejection.get_field('instance').column)} IS NULL)), "
            f"ins AS (INSERT INTO {table(Instance)} ({instance_columns}) SELECT {instance_values} FROM ok "
            f"RETURNING {col(Instance, 'id')} AS id), "
            f"cp AS (INSERT INTO {table(Copy)} ({copy_columns}) SELECT {copy_values} FROM ins), "
            f"bs AS (UPDATE {table(Series)} SET {n_series} = {n_series} + 1 "
            f"WHERE {col(Series, 'id')} = (SELECT series_id FROM ok JOIN ins ON TRUE)), "
            f"bt AS (UPDATE {table(Study)} SET {n_study} = {n_study} + 1, "
            f"{col(Study, 'last_received_at')} = %(copy_created_at)s, {col(Study, 'post_ingest_pending')} = TRUE "
            f"WHERE {col(Study, 'id')} = (SELECT study_id FROM ok JOIN ins ON TRUE)) "
            f"SELECT ok.study_id, ok.patient_id, ok.pending, ins.id FROM ok JOIN ins ON TRUE"
        )

    @staticmethod
    def params(fields: list[Any], values: dict[str, Any]) -> list[Any]:
        return [f.get_db_prep_save(values[f.attname], connection) for f in fields]


_hot_sql: dict[str, _HotSql] = {}


def _index_into_known_series(received: _Received) -> IngestResult | None:
    """The common case in raw SQL: a new image of a series already archived, same patient.

    Returns None, having changed nothing, for anything else (new study or
    series, another patient, a series of another study): the ORM path
    handles those. A duplicate SOP Instance UID raises IntegrityError.
    """
    header = received.header
    sql = _hot_sql.get(connection.vendor)
    if sql is None:
        sql = _hot_sql[connection.vendor] = _HotSql()
    with connection.cursor() as cursor:
        cursor.execute(sql.study, [header.study_instance_uid])
        row = cursor.fetchone()
        if row is None:
            return None
        study_id, patient_id, dicom_pid, issuer, pending = row
        pid = header.patient["dicom_patient_id"]
        if pid and (pid, header.patient["issuer_of_patient_id"]) != (dicom_pid, issuer):
            return None
        cursor.execute(sql.series, [header.series_instance_uid])
        row = cursor.fetchone()
        if row is None or row[1] != study_id:
            return None
        series_id = row[0]
        values = received.instance_values()
        values["series_id"] = series_id
        cursor.execute(sql.insert_instance, sql.params(sql.instance_fields, values))
        instance_id = cursor.fetchone()[0]
        copy = received.copy_values()
        copy.update(instance_id=instance_id, created_at=received.received_at)
        cursor.execute(sql.insert_copy, sql.params(sql.copy_fields, copy))
        cursor.execute(sql.bump_series, [series_id])
        cursor.execute(
            sql.bump_study,
            [
                Study._meta.get_field("last_received_at").get_db_prep_save(received.received_at, connection),
                True,
                study_id,
            ],
        )
    if not pending:
        transaction.on_commit(lambda: _enqueue_post_ingest(study_id))
    return received.result(STORED, study_id, patient_id, instance_id)


def _index_in_one_statement(received: _Received) -> IngestResult | None:
    """PostgreSQL's common case in one statement (``_HotSql._one_statement``), in
    autocommit: when it returns, the instance is committed, durably (the C-STORE's
    acknowledgement may follow). None, having changed nothing: the transaction's
    path handles it. A duplicate SOP Instance UID raises IntegrityError."""
    if connection.in_atomic_block:
        return None  # a caller's transaction: the statement would not be its own
    header = received.header
    sql = _hot_sql.get(connection.vendor)
    if sql is None:
        sql = _hot_sql[connection.vendor] = _HotSql()
    values = received.instance_values()
    params: dict[str, Any] = {
        f.attname: f.get_db_prep_save(values[f.attname], connection) for f in sql.instance_fields if f.name != "series"
    }
    copy = received.copy_values()
    copy["created_at"] = received.received_at
    params.update(
        {
            f"copy_{f.attname}": f.get_db_prep_save(copy[f.attname], connection)
            for f in sql.copy_fields
            if f.name != "instance"
        }
    )
    params.update(
        study_uid=header.study_instance_uid,
        series_uid=header.series_instance_uid,
        patient_id=header.patient["dicom_patient_id"],
        issuer=header.patient["issuer_of_patient_id"],
    )
    with connection.cursor() as cursor:
        cursor.execute(sql.one_statement, params)
        row = cursor.fetchone()
    if row is None:
        return None
    study_id, patient_id, pending, instance_id = row
    if not pending:
        # Committed already (autocommit): on_commit runs it now.
        transaction.on_commit(lambda: _enqueue_post_ingest(study_id))
    return received.result(STORED, study_id, patient_id, instance_id)


def _existing(received: _Received, existing: Instance, *, study: Study) -> IngestResult:
    if existing.sha256 != received.sha256:
        return _conflict(
            received,
            InstanceConflict.Reason.DIFFERENT_CONTENT,
            f"archived with SHA-256 {existing.sha256}, received {received.sha256}",
            study=study,
            instance=existing,
        )
    # The same bytes again: nothing to do, except that a copy received by
    # another facility is a copy in that facility's tier too.
    if not Copy.objects.filter(instance=existing, tier=received.tier).exists():
        with transaction.atomic():
            # An evicted copy's file at this very path may be waiting for its removal,
            # and may have been what place_file found: cancel the removal, then look.
            removals.removals_cancel([(received.tier, received.relpath)])
            if storage.stored_size(received.tier, received.relpath) == received.size:
                values = {**received.copy_values(), "instance_received_at": existing.received_at}
                Copy.objects.get_or_create(instance=existing, tier=received.tier, defaults=values)
            else:
                # Removed by that release meanwhile: the instance stays in the copy that backed it.
                logger.info(
                    "%s: the file found in %s was removed meanwhile, not recorded", received.relpath, received.tier
                )
    return received.result(
        DUPLICATE, study.pk, study.patient_id, existing.pk, detail="already archived with the same content"
    )


def _conflict(
    received: _Received, reason: str, detail: str, *, study: Study | None, instance: Instance | None = None
) -> IngestResult:
    header = received.header
    if instance is None:
        instance = Instance.all_objects.filter(sop_instance_uid=header.sop_instance_uid).first()
    with transaction.atomic():
        InstanceConflict.objects.get_or_create(
            sop_instance_uid=header.sop_instance_uid,
            sha256=received.sha256,
            reason=reason,
            defaults={
                "study_instance_uid": header.study_instance_uid,
                "instance": instance,
                "study": study,
                "detail": detail,
                "tier": received.tier,
                "path": received.relpath,
                "size": received.size,
                "facility": received.facility,
                "calling_ae": received.calling_ae,
                "received_at": received.received_at,
            },
        )
    logger.warning("conflict on %s: %s", header.sop_instance_uid, detail)
    return received.result(
        CONFLICT,
        study.pk if study else None,
        study.patient_id if study else None,
        instance.pk if instance else None,
        detail=f"kept for review, the archived object is unchanged: {detail}",
    )


def conflict_resolve(*, conflict_pk: int, user: Any, note: str, source: str = "") -> InstanceConflict | None:
    """Mark the conflict resolved by ``user`` with ``note`` (audited); None when
    someone else resolved it first (their note and name stay).

    The bytes it kept stay in the tier: the row is their only record.
    """
    with transaction.atomic():
        # Conditional, so that two people resolving at once do not overwrite
        # each other's note and name.
        done = InstanceConflict.objects.filter(pk=conflict_pk, resolved_at__isnull=True).update(
            resolved_at=timezone.now(), resolved_by=user, resolution_note=note
        )
        if not done:
            return None
        conflict = InstanceConflict.objects.select_related("study__patient").get(pk=conflict_pk)
        subject: dict[str, Any] = (
            {"study": conflict.study, "patient": conflict.study.patient}
            if conflict.study is not None
            else {"study_instance_uid": conflict.study_instance_uid}
        )
        audit_record(
            action="admin.instanceconflict.resolve",
            user=user,
            source=source,
            detail={"object_id": conflict_pk, "note": note},
            **subject,
        )
    return conflict


def _split_name(name: str) -> tuple[str, str]:
    parts = name.split("=")[0].split("^")
    return parts[0].strip()[:128], (parts[1].strip() if len(parts) > 1 else "")[:128]


def _new_patient(header: Header, *, codice_fiscale: str | None) -> Patient:
    family, given = _split_name(header.patient["patient_name"])
    sex = header.patient["patient_sex"][:1].upper()
    return Patient.objects.create(
        codice_fiscale=codice_fiscale,
        provisional=codice_fiscale is None,
        family_name=family,
        given_name=given,
        birth_date=header.patient["patient_birth_date"],
        sex=sex if sex in {"M", "F", "O"} else "",
    )


def _patient_for(header: Header, facility: Facility) -> Patient:
    """The regional patient this object's PatientID designates at ``facility``.

    A PatientID that is a valid codice fiscale names the patient directly;
    any other unknown PatientID creates a provisional patient to reconcile.
    """
    pid = header.patient["dicom_patient_id"]
    issuer = header.patient["issuer_of_patient_id"]
    if not pid:
        # No identifier at all: the study's own patient, else a new provisional one.
        study = Study.objects.filter(study_instance_uid=header.study_instance_uid).select_related("patient").first()
        return study.patient if study else _new_patient(header, codice_fiscale=None)
    for _attempt in range(3):
        mapping = (
            PatientIdentifier.objects.filter(facility=facility, dicom_patient_id=pid, issuer=issuer)
            .select_related("patient")
            .first()
        )
        if mapping is not None:
            return mapping.patient
        try:
            with transaction.atomic():
                cf = normalize_codice_fiscale(pid)
                if is_valid_codice_fiscale(cf):
                    patient = Patient.objects.filter(codice_fiscale=cf).first() or _new_patient(
                        header, codice_fiscale=cf
                    )
                else:
                    patient = _new_patient(header, codice_fiscale=None)
                PatientIdentifier.objects.create(
                    facility=facility, dicom_patient_id=pid, issuer=issuer, patient=patient
                )
                return patient
        except IntegrityError:
            # A concurrent store created this patient or mapping first: look again.
            continue
    raise OperationalError(f"could not settle the patient for PatientID {pid!r}")


def _study_for_update(header: Header, facility: Facility) -> tuple[Study, bool]:
    """The study row, locked until commit so that its counters move one store at a time."""
    uid = header.study_instance_uid
    study = Study.objects.select_for_update().filter(study_instance_uid=uid).first()
    if study is not None:
        return study, False
    patient = _patient_for(header, facility)
    try:
        with transaction.atomic():
            study = Study.objects.create(
                study_instance_uid=uid,
                patient=patient,
                facility=facility,
                patient_name=header.patient["patient_name"],
                dicom_patient_id=header.patient["dicom_patient_id"],
                issuer_of_patient_id=header.patient["issuer_of_patient_id"],
                patient_birth_date=header.patient["patient_birth_date"],
                patient_sex=header.patient["patient_sex"],
                **header.study,
            )
        return study, True
    except IntegrityError:
        # A concurrent store created the study first; it is committed now.
        return Study.objects.select_for_update().get(study_instance_uid=uid), False


def _same_patient(header: Header, study: Study, facility: Facility) -> bool:
    """Whether an object of an archived study names that study's patient."""
    pid = header.patient["dicom_patient_id"]
    if not pid or (pid, header.patient["issuer_of_patient_id"]) == (study.dicom_patient_id, study.issuer_of_patient_id):
        return True
    return _patient_for(header, facility).pk == study.patient_id


def _series_for(header: Header, study: Study) -> tuple[Series, bool]:
    uid = header.series_instance_uid
    series = Series.all_objects.filter(series_instance_uid=uid).first()
    if series is not None:
        return series, False
    try:
        with transaction.atomic():
            return Series.objects.create(series_instance_uid=uid, study=study, **header.series), True
    except IntegrityError:
        return Series.all_objects.get(series_instance_uid=uid), False


def _enqueue_post_ingest(study_pk: int) -> None:
    try:
        # By name: ingestion sits below the tasks that call it.
        current_app.send_task(tasknames.STUDY_POST_INGEST, args=[study_pk])
    except Exception:
        # The store is committed and acknowledged; the periodic sweep queues
        # the work for any study left pending.
        logger.exception("could not queue post-ingest work for study %s", study_pk)


def study_post_ingest(*, study_pk: int) -> bool:
    """The work owed after instances of a study arrive; return False if there was none.

    Idempotent: it may run twice, or after a worker died half-way. The pending
    flag is cleared only if no instance arrived while the work ran (those
    arrivals found the flag set and queued nothing), otherwise it runs again.
    """
    for _round in range(20):
        study = Study.objects.filter(pk=study_pk).values("post_ingest_pending", "last_received_at").first()
        if study is None or not study["post_ingest_pending"]:
            return False
        study_instances_received.send(sender=Study, study_pk=study_pk)
        done = Study.objects.filter(
            pk=study_pk, post_ingest_pending=True, last_received_at=study["last_received_at"]
        ).update(post_ingest_pending=False, post_ingest_at=timezone.now())
        if done:
            return True
    # Still receiving: leave it pending for the next task or the sweep.
    return True


def studies_post_ingest_overdue(*, older_than_seconds: float) -> list[int]:
    """Studies whose post-ingest work is owed but apparently not queued (a broker outage)."""
    cutoff = timezone.now() - dt.timedelta(seconds=older_than_seconds)
    return list(
        Study.objects.filter(post_ingest_pending=True, last_received_at__lt=cutoff).values_list("pk", flat=True)[:1000]
    )
