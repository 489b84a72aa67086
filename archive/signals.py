"""Signals the archive sends, named in one place, for other apps to hook into.

Every receiver only queues a Celery task, with ``transaction.on_commit``, and
the task does the work (idempotent, retried on transient failures): a signal
is sent inside a request or a worker's task that must not wait for another
app's work nor fail because of it. Task names: :mod:`kernel.tasknames`.

``study_instances_received(sender=Study, study_pk=...)``
    Sent by the post-ingest task in a Celery worker, after new instances of a
    study were committed. It may be sent again for the same instances.
    Connected in ``ArchiveConfig.ready``: ``archive.tasks.study_renditions_enqueue``
    (queues ``study_renditions_queue``: one preview task per series with new
    instances); in ``BookingConfig.ready``: ``booking.tasks.study_match_enqueue``
    (queues ``study_match``: tie the study to its CUP booking).

The Modality Worklist is the other hook the archive offers the apps above it:
``archive.dicomnet.listener.worklist_source_register`` (the booking app registers the
function that answers worklist C-FIND from its bookings).
"""

from __future__ import annotations

from django.dispatch import Signal

study_instances_received = Signal()

report_signed = Signal()
"""``report_signed(sender=Report, report_pk=..., study_pk=...)``

Sent once per signed report version, after the transaction that signed it
commits (``transaction.on_commit``), in the process that signed it. It says:
this report is final and may be published (the citizen portal, if the
patient chose online delivery), and the study may be packaged for
preservation. The signing request sends it: receivers only enqueue.
Connected in ``ArchiveConfig.ready``: ``archive.tasks.manifest_on_report_signed``
(queues ``study_manifest``: the study's XDS-I.b manifest); in ``BookingConfig.ready``: ``booking.tasks.report_signed_booking``
(queues ``booking_reported``: the booking becomes "refertato"); in
``PortalConfig.ready``: ``portal.tasks.publish_on_report_signed`` (queues
``report_publish``); in ``PreservationConfig.ready``:
``preservation.tasks.package_on_report_signed`` (queues ``study_package``
once the study has been stable for a while).
"""

instances_rejected = Signal()
"""``instances_rejected(sender=RejectionNote, note_pk=..., study_pk=...)``

Sent after the transaction that withdrew instances of a study commits (a
rejection note, or a rejected instance arriving after its note), by
:mod:`archive.rejection`. It says: these instances are no longer in regular
use; what was made of them above the archive may need a person. Connected in
``ArchiveConfig.ready``: ``archive.tasks.manifest_on_instances_rejected`` (queues
``study_manifest``: a new manifest when the study has one); in
``PortalConfig.ready``: ``portal.tasks.rejection_enqueue`` (queues
``rejection_portal``: live zips of the study withdrawn, a notice when the
report was published); in ``PreservationConfig.ready``:
``preservation.tasks.rejection_enqueue`` (queues ``rejection_preservation``: a
notice when the study was preserved; the package is never touched). Sent
again for the day's notes by the beat task ``archive.tasks.rejections_announce_sweep``
(what the receivers queue is idempotent).
"""

procedure_step_changed = Signal()
"""``procedure_step_changed(sender=PerformedProcedureStep, step_pk=...)``

Sent after the transaction that created or set a Modality Performed Procedure
Step commits (``archive.procedure_steps``), in the listener's process. It says:
this step is now IN PROGRESS, COMPLETED or DISCONTINUED, read it. Connected in
``BookingConfig.ready``: ``booking.tasks.procedure_step_booking_enqueue``
(queues ``booking_procedure_step``: the booked exam shows the step's state).
"""
