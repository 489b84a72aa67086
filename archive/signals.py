"""Signals the archive sends, named in one place, for other apps to hook into.

``study_instances_received(sender=Study, study_pk=...)``
    Sent by the post-ingest task in a Celery worker, after new instances of a
    study were committed. Receivers (booking match, JPEG rendering) must be
    idempotent: they may be called again for the same instances.
    Connected in ``ArchiveConfig.ready``: ``archive.tasks.study_renditions_enqueue``
    (one preview task per series with new instances); in ``BookingConfig.ready``:
    ``booking.tasks.study_match_enqueue`` (tie the study to its CUP booking).

The Modality Worklist is the other hook the archive offers the apps above it:
``archive.dimse.worklist_source_register`` (the booking app registers the
function that answers worklist C-FIND from its bookings).
"""

from __future__ import annotations

from django.dispatch import Signal

study_instances_received = Signal()
