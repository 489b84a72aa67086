"""The wire name of every Celery task of the project, in one place.

A task's name is what a queued message carries: ``@shared_task(name=...)``,
``send_task(...)`` (a module that sits below the task it queues), and the beat
schedule in :mod:`pacs.settings` all use these constants, so that renaming a
module or a function never strands the messages a running system has queued.
The strings therefore never change; a task that does new work gets a new name.
A few name a job they outgrew (``..._retry``: the tasks that once only retried
what a receiver of ``report_signed`` did at once, and now do it all).

This module imports nothing: the settings and every app import it.
``tests/test_tasknames.py`` checks that it names exactly the registered tasks.
"""

# --- archive ---------------------------------------------------------------------
STUDY_POST_INGEST = "archive.tasks.study_post_ingest"
POST_INGEST_SWEEP = "archive.tasks.post_ingest_sweep"
STUDY_RENDITIONS_QUEUE = "archive.tasks.study_renditions_queue"
SERIES_RENDITIONS_MAKE = "archive.tasks.series_renditions_make"
LIFECYCLE_RUN = "archive.tasks.lifecycle_run"
STORAGE_FIXITY_AUDIT = "archive.tasks.fixity_audit"
STUDIES_RECALL = "archive.tasks.studies_recall"
REPORT_ENCAPSULATE = "archive.tasks.report_encapsulate"
REPORT_ENCAPSULATE_SWEEP = "archive.tasks.report_encapsulate_sweep"
# The study's IHE XDS-I.b manifest (archive.manifest), after a signing or a rejection, and its sweep.
STUDY_MANIFEST = "archive.tasks.study_manifest"
STUDY_MANIFEST_SWEEP = "archive.tasks.study_manifest_sweep"
# Storage Commitment (archive.dicomnet.commitment): the answer on a new association, and its sweep.
STORAGE_COMMITMENT_ANSWER = "archive.tasks.storage_commitment_answer"
STORAGE_COMMITMENT_SWEEP = "archive.tasks.storage_commitment_sweep"
# IOCM rejection notes (archive.rejection): the purge after retention, and the re-announce sweep.
REJECTIONS_PURGE = "archive.tasks.rejections_purge"
REJECTIONS_ANNOUNCE_SWEEP = "archive.tasks.rejections_announce_sweep"
# Expired API tokens and login sessions deleted (they pile up: one token per login, one session per visit).
CREDENTIALS_PURGE = "archive.tasks.credentials_purge"

# --- booking ---------------------------------------------------------------------
STUDY_MATCH = "booking.tasks.study_match"
BOOKING_REPORTED = "booking.tasks.booking_reported_retry"
BOOKING_REPORTED_SWEEP = "booking.tasks.booking_reported_sweep"
BOOKING_PREFETCH = "booking.tasks.booking_prefetch"
BOOKINGS_PREFETCH = "booking.tasks.bookings_prefetch"
BOOKING_PROCEDURE_STEP = "booking.tasks.booking_procedure_step"
BOOKING_PROCEDURE_STEP_SWEEP = "booking.tasks.booking_procedure_step_sweep"

# --- portal ----------------------------------------------------------------------
REPORT_PUBLISH = "portal.tasks.report_publish_retry"
REPORT_PUBLISH_SWEEP = "portal.tasks.report_publish_sweep"
DOWNLOAD_PACKAGE_BUILD = "portal.tasks.package_build"
DOWNLOAD_PACKAGES_PURGE = "portal.tasks.packages_purge"
REJECTION_PORTAL = "portal.tasks.rejection_portal"
# The CD (IHE PDI ISO image) of a signed report whose booking chose CD, and its sweep.
CD_MEDIUM_MAKE = "portal.tasks.cd_medium_make"
CD_MEDIA_SWEEP = "portal.tasks.cd_media_sweep"

# --- preservation ----------------------------------------------------------------
STUDY_PACKAGE = "preservation.tasks.study_package"
STUDIES_PACKAGE_SWEEP = "preservation.tasks.studies_package_sweep"
VOLUMES_CLOSE = "preservation.tasks.volumes_close"
PRESERVATION_FIXITY_AUDIT = "preservation.tasks.fixity_audit"
DISCARD_PROPOSE = "preservation.tasks.discard_propose"
AUDIT_SEAL = "preservation.tasks.audit_seal"
REJECTION_PRESERVATION = "preservation.tasks.rejection_preservation"

# --- research ---------------------------------------------------------------------
# The anonymised export for teaching and research (research.services.export_build).
RESEARCH_EXPORT_BUILD = "research.tasks.export_build"
RESEARCH_EXPORT_BUILD_SWEEP = "research.tasks.export_build_sweep"
# --- fse_gateway -----------------------------------------------------------------
FSE_REPORT_PLAN = "fse_gateway.tasks.report_plan"
FSE_OPERATION_SEND = "fse_gateway.tasks.operation_send"
FSE_CONSENT_CHECK = "fse_gateway.tasks.consent_check"
FSE_CONCEALMENT_CHECK = "fse_gateway.tasks.concealment_check"
FSE_OUTBOX_SWEEP = "fse_gateway.tasks.outbox_sweep"

# --- queues ----------------------------------------------------------------------
# Every task runs on the queue of its kind, so that each kind of work can have its
# own hosts and concurrency (docs/DEPLOYMENT.md): ``pacs.settings`` builds
# CELERY_TASK_ROUTES from this one table, the beat's sweeps included, and
# ``tests/test_tasknames.py`` fails for a task named above and missing here.
# A kind is the queue's name (after CELERY_QUEUE_PREFIX); ``default`` is the
# project's default queue (CELERY_QUEUE, "pacs"), for what needs no hosts of its own.
QUEUES: dict[str, tuple[str, ...]] = {
    # What follows a study's arrival: indexing follow-ups, matching to its booking,
    # Storage Commitment's answers, the modality's procedure step.
    "ingest": (
        STUDY_POST_INGEST,
        POST_INGEST_SWEEP,
        STUDY_MATCH,
        STORAGE_COMMITMENT_ANSWER,
        STORAGE_COMMITMENT_SWEEP,
        BOOKING_PROCEDURE_STEP,
        BOOKING_PROCEDURE_STEP_SWEEP,
    ),
    # Decoding and encoding pixels: the previews (renditions) of each series.
    "render": (STUDY_RENDITIONS_QUEUE, SERIES_RENDITIONS_MAKE),
    # The tiers: migration, fixity, recalls (and the prefetch that recalls), purges.
    "lifecycle": (
        LIFECYCLE_RUN,
        STORAGE_FIXITY_AUDIT,
        STUDIES_RECALL,
        BOOKING_PREFETCH,
        BOOKINGS_PREFETCH,
        REJECTIONS_PURGE,
    ),
    "preservation": (
        STUDY_PACKAGE,
        STUDIES_PACKAGE_SWEEP,
        VOLUMES_CLOSE,
        PRESERVATION_FIXITY_AUDIT,
        DISCARD_PROPOSE,
        AUDIT_SEAL,
        REJECTION_PRESERVATION,
    ),
    # What the citizen receives: the report's publication, packages to download, CDs.
    "portal": (
        REPORT_PUBLISH,
        REPORT_PUBLISH_SWEEP,
        DOWNLOAD_PACKAGE_BUILD,
        DOWNLOAD_PACKAGES_PURGE,
        REJECTION_PORTAL,
        CD_MEDIUM_MAKE,
        CD_MEDIA_SWEEP,
    ),
    # The national FSE 2.0 gateway's outbox.
    "publication": (
        FSE_REPORT_PLAN,
        FSE_OPERATION_SEND,
        FSE_CONSENT_CHECK,
        FSE_CONCEALMENT_CHECK,
        FSE_OUTBOX_SWEEP,
    ),
    "research": (RESEARCH_EXPORT_BUILD, RESEARCH_EXPORT_BUILD_SWEEP),
    # The rest: a signed report's follow-ups (encapsulation, manifest, booking), IOCM announces.
    "default": (
        REPORT_ENCAPSULATE,
        REPORT_ENCAPSULATE_SWEEP,
        STUDY_MANIFEST,
        STUDY_MANIFEST_SWEEP,
        BOOKING_REPORTED,
        BOOKING_REPORTED_SWEEP,
        REJECTIONS_ANNOUNCE_SWEEP,
        CREDENTIALS_PURGE,
    ),
}
