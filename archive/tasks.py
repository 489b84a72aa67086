"""Celery tasks of the archive: thin adapters over the services."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task, signals
from django.db import InterfaceError, OperationalError, transaction

from archive.dicomnet import commitment
from archive.rendering import previews
from archive.reporting import services as reports
from archive.storage import lifecycle
from archive.storage import tiers as storage
from kernel import sweeps, tasknames
from kernel.errors import Unavailable

from . import ingest, manifest

logger = logging.getLogger(__name__)


@shared_task(
    name=tasknames.STUDY_POST_INGEST,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def study_post_ingest(study_pk: int) -> bool:
    return ingest.study_post_ingest(study_pk=study_pk)


@shared_task(name=tasknames.POST_INGEST_SWEEP)
def post_ingest_sweep(older_than_seconds: float = 120.0) -> int:
    """Queue the post-ingest work of studies whose task was never queued."""
    pks = ingest.studies_post_ingest_overdue(older_than_seconds=older_than_seconds)
    return sweeps.requeue(
        study_post_ingest,
        [(pk,) for pk in pks],
        logger=logger,
        message="queued post-ingest work for %d overdue studies",
    )


@shared_task(
    name=tasknames.SERIES_RENDITIONS_MAKE,
    acks_late=True,
    # Transient only: the database, and what the service raises as Unavailable: a tier
    # (StorageError), a copy that cannot be read or a render worker that cannot be
    # started now (RenditionsIncomplete). An image that cannot be rendered (NoImage,
    # a decoder crash) is recorded by the service as a failure row and never raised,
    # so it is never retried.
    autoretry_for=(OperationalError, InterfaceError, Unavailable),
    retry_backoff=30,
    retry_backoff_max=900,
    max_retries=5,
    # A worker that dies while rendering (a decoder crashing the process)
    # must not get the same message back for ever: the previews are
    # derived, on-demand rendering covers, and the next arrival queues it again.
    reject_on_worker_lost=False,
)
def series_renditions_make(series_pk: int) -> dict[str, int]:
    """Render and store the previews and thumbnails a series lacks."""
    return vars(previews.series_renditions_make(series_pk=series_pk))


@shared_task(
    name=tasknames.STUDY_RENDITIONS_QUEUE,
    acks_late=True,
    # Transient only; it computes what is due each time, so a redelivery queues
    # at most a series task that finds nothing to do.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
)
def study_renditions_queue(study_pk: int) -> int:
    """One :func:`series_renditions_make` per series of the study with new instances; how many."""
    pks = previews.series_renditions_due(study_pk=study_pk)
    for series_pk in pks:
        series_renditions_make.delay(series_pk)
    return len(pks)


def study_renditions_enqueue(sender: Any, study_pk: int, **kwargs: Any) -> None:
    """``study_instances_received`` receiver: queue :func:`study_renditions_queue` once committed."""
    transaction.on_commit(lambda: study_renditions_queue.delay(study_pk))


@shared_task(name=tasknames.LIFECYCLE_RUN, acks_late=True)
def lifecycle_run(limit: int | None = None) -> dict[str, int]:
    """Copy what is due to the long-term tier, evict what a verified copy backs, advance a scope migration.

    Idempotent and resumable: a run killed half-way, or one that met an
    unreachable store, is finished by the next (beat runs it periodically).
    """
    result = lifecycle.lifecycle_run(limit=limit)
    return {k: v for k, v in vars(result).items() if isinstance(v, int)}


@signals.worker_ready.connect
def _temporaries_clean(**_kwargs: Any) -> None:
    """A worker starting removes what this host's dead processes left in the incoming folder and
    the tiers (a copy cut short by a killed worker); its own children are alive, so kept."""
    storage.incoming_clean_stray(own=False)


@shared_task(name=tasknames.STORAGE_FIXITY_AUDIT, acks_late=True)
def fixity_audit() -> int:
    return lifecycle.fixity_audit().pk


@shared_task(
    name=tasknames.STUDIES_RECALL,
    acks_late=True,
    # Transient only: the database or a tier (StorageError, Unavailable); an instance
    # without a readable copy is counted as failed by the service, not raised.
    autoretry_for=(OperationalError, InterfaceError, Unavailable),
    retry_backoff=60,
    max_retries=5,
)
def studies_recall(study_pks: list[int], facility_pk: int, keep_until: str) -> dict[str, int]:
    """Recall studies into a facility tier (``keep_until`` in ISO 8601)."""
    import datetime as dt

    from .models import Facility

    facility = Facility.objects.filter(pk=facility_pk).first()
    if facility is None:  # removed since the recall was queued: nothing to recall into
        logger.warning("recall into facility %s skipped: no such facility", facility_pk)
        return {}
    result = lifecycle.studies_recall(
        study_pks=study_pks, facility=facility, keep_until=dt.datetime.fromisoformat(keep_until)
    )
    return vars(result)


@shared_task(
    name=tasknames.REPORT_ENCAPSULATE,
    acks_late=True,
    # Transient only: the database or a tier. The service looks for the
    # instance first, so a redelivery after a worker died between storing and
    # acknowledging stores nothing twice; a copy refused for good is audited, not raised.
    autoretry_for=(OperationalError, InterfaceError, storage.StorageError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def report_encapsulate(report_pk: int) -> str:
    """Store the signed report's PDF in its study as a DICOM Encapsulated PDF instance."""
    return reports.report_encapsulated_store(report_pk=report_pk)


@shared_task(name=tasknames.REPORT_ENCAPSULATE_SWEEP)
def report_encapsulate_sweep() -> int:
    """Queue again the Encapsulated PDF of signed reports whose task was lost (a broker outage)."""
    pks = reports.reports_encapsulation_overdue()
    return sweeps.requeue(
        report_encapsulate,
        [(pk,) for pk in pks],
        logger=logger,
        message="queued the encapsulated PDF of %d overdue signed reports",
    )


# --- The XDS-I.b manifest (archive.manifest) ------------------------------------------


@shared_task(
    name=tasknames.STUDY_MANIFEST,
    acks_late=True,
    # Transient only: the database, a tier, a copy that cannot be read now. The
    # service makes a manifest only when the study's instances changed, so a
    # redelivery stores nothing twice; a manifest refused for good is logged, not retried.
    autoretry_for=(OperationalError, InterfaceError, storage.StorageError, Unavailable),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def study_manifest(study_pk: int, report_pk: int | None = None, refresh: bool = False) -> str:
    """The study's manifest after a report was signed (``report_pk``: its Encapsulated PDF is
    stored first, so that the manifest lists it whichever task runs first), or after a
    rejection (``refresh``: only when the study has a manifest already); its SOPInstanceUID."""
    from .models import Study

    if report_pk is not None:
        reports.report_encapsulated_store(report_pk=report_pk)
    study = Study.objects.filter(pk=study_pk).first()
    if study is None:
        return ""
    try:
        made = manifest.study_manifest_refresh(study=study) if refresh else manifest.study_manifest(study=study)
    except manifest.ManifestError as exc:
        if exc.code == "empty":  # every instance withdrawn: nothing to name, nothing to retry
            logger.warning("no manifest for study %s: %s", study_pk, exc.message)
        else:
            logger.exception("no manifest for study %s", study_pk)
        return ""
    return made.sop_instance_uid if made is not None else ""


def manifest_on_report_signed(sender: Any, report_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``report_signed`` receiver: queue :func:`study_manifest` once committed."""
    transaction.on_commit(lambda: _manifest_enqueue(study_pk, report_pk, False))


def manifest_on_instances_rejected(sender: Any, note_pk: int, study_pk: int, **kwargs: Any) -> None:
    """``instances_rejected`` receiver: queue a new manifest (if the study has one) once committed."""
    transaction.on_commit(lambda: _manifest_enqueue(study_pk, None, True))


def _manifest_enqueue(study_pk: int, report_pk: int | None, refresh: bool) -> None:
    try:
        study_manifest.delay(study_pk, report_pk, refresh)
    except Exception:
        # The signing or the rejection stands; study_manifest_sweep queues a signing's
        # manifest again, rejections_announce_sweep announces the day's notes again.
        logger.exception("manifest of study %s not queued", study_pk)


@shared_task(name=tasknames.STUDY_MANIFEST_SWEEP)
def study_manifest_sweep() -> int:
    """Queue again the manifests of signed reports whose task was lost (a broker outage)."""
    due = manifest.reports_manifest_overdue(signed=reports.reports_signed_overdue(), limit=reports.FOLLOWUP_SWEEP_LIMIT)
    return sweeps.requeue(
        study_manifest, due, logger=logger, message="queued the manifest of %d studies with an overdue signed report"
    )


# --- Storage Commitment (archive.dicomnet.commitment) ----------------------------------


@shared_task(
    name=tasknames.STORAGE_COMMITMENT_ANSWER,
    acks_late=True,
    # Transient only: the database. A node that cannot be reached is the service's
    # to count and to schedule again (Step.again_in), not a retry of this message.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
)
def storage_commitment_answer(commitment_pk: int) -> str:
    """Answer a Storage Commitment request on a new association when its answer is ready;
    queue itself again for when it may be (waiting for the long-term copy, or a retry)."""
    step = commitment.commitment_answer(commitment_pk=commitment_pk)
    if step.again_in is not None:
        storage_commitment_answer.apply_async(args=(commitment_pk,), countdown=step.again_in)
    return step.state


@shared_task(name=tasknames.STORAGE_COMMITMENT_SWEEP)
def storage_commitment_sweep(grace_seconds: float = 120.0) -> int:
    """Queue again the answers of Storage Commitment requests whose task was lost (a restart, the broker)."""
    return sweeps.requeue(
        storage_commitment_answer,
        [(pk,) for pk in commitment.commitments_overdue(grace_seconds=grace_seconds)],
        logger=logger,
        message="queued the answer of %d overdue storage commitment requests",
    )


@shared_task(name=tasknames.REJECTIONS_PURGE, acks_late=True)
def rejections_purge() -> int:
    """Purge the instances rejection notes withdrew once their retention has passed (IOCM).

    Idempotent: each purge locks its row and checks it again; beat runs it periodically.
    """
    from . import rejection

    return rejection.rejections_purge()


@shared_task(name=tasknames.CREDENTIALS_PURGE)
def credentials_purge() -> dict[str, int]:
    """Delete the API tokens and the login sessions that have expired (beat, daily).

    Neither is ever read again once expired (a request finds its own by key, and refuses it
    when expired), but nothing else removes them: a token is made per login and a session
    per visit, and a region's staff and citizens leave hundreds of thousands a year.
    """
    from importlib import import_module

    from django.conf import settings

    from .api_tokens import expired_tokens_purge

    tokens = expired_tokens_purge()
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
    logger.info("credentials purge: %d expired API tokens deleted, expired sessions cleared", tokens)
    return {"tokens": tokens}


@shared_task(name=tasknames.REJECTIONS_ANNOUNCE_SWEEP)
def rejections_announce_sweep() -> int:
    """Announce again the day's rejection notes (IOCM): a notice the broker lost is opened now."""
    from . import rejection

    return rejection.notes_announce_again()
