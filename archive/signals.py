"""Signals the archive sends, named in one place, for other apps to hook into.

``study_instances_received(sender=Study, study_pk=...)``
    Sent by the post-ingest task in a Celery worker, after new instances of a
    study were committed. Receivers (booking match, JPEG rendering) must be
    idempotent: they may be called again for the same instances.
    Connected in ``ArchiveConfig.ready``: ``archive.tasks.study_renditions_enqueue``
    (one preview task per series with new instances).
"""

from __future__ import annotations

from django.dispatch import Signal

study_instances_received = Signal()
