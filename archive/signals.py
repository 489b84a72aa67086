"""Signals the archive sends, named in one place, for other apps to hook into.

``study_instances_received(sender=Study, study_pk=...)``
    Sent by the post-ingest task in a Celery worker, after new instances of a
    study were committed. Receivers (booking match, JPEG rendering) must be
    idempotent: they may be called again for the same instances.
    Connected in ``ArchiveConfig.ready``: ``archive.tasks.study_renditions_enqueue``
    (one preview task per series with new instances); in ``BookingConfig.ready``:
    ``booking.tasks.study_match_enqueue`` (tie the study to its CUP booking).

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
preservation. Receivers must be idempotent and quick: they enqueue work.
Connected in ``BookingConfig.ready``: ``booking.tasks.report_signed_booking``
(the booking becomes "refertato"); the portal and preservation connect theirs.
"""
