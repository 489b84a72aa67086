"""``/metrics``: django-prometheus' request and process metrics plus the archive's own.

The archive's figures are computed when Prometheus scrapes, by a custom
collector (prometheus_client's pattern): one query per metric family, so a
scrape costs a handful of indexed counts whatever the scrape interval, and
no counter can drift from the database. Celery queue lengths are read from
Redis (``LLEN`` of each queue); the embedded filesystem broker has none to
report. Associations are not counted here: the listener runs in its own
processes and keeps no shared count yet (see README).

Under gunicorn (``pacs.gunicorn_conf``) the web workers run in prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): django-prometheus' counters and
histograms are the sum of every worker, whichever worker answers the scrape, and
the per-process collectors (CPU, memory) are not served, since they would describe
the answering worker only. Without the folder (the test client, ``manage.py
runserver``) the process's own registry is served.

The endpoint is restricted (``pacs.ops.access``): loopback by default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from archive.models import FileRemoval, Instance, StorageAlert
from archive.storage import lifecycle
from preservation.models import PreservationAlert

from .access import allowed

logger = logging.getLogger(__name__)

# The lifecycle backlog counts up to this many: past it the operator knows enough.
BACKLOG_CAP = 100_000


def queue_lengths() -> dict[str, int]:
    """Messages waiting in each Celery queue the app declares, from Redis; empty for other brokers."""
    url = str(settings.CELERY_BROKER_URL)
    if not url.startswith(("redis://", "rediss://")):
        return {}
    from celery import current_app as app  # pacs.celery's app, loaded with Django (pacs/__init__)

    names = {q.name for q in (app.conf.task_queues or ())} or {app.conf.task_default_queue}
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return {name: int(client.llen(name)) for name in sorted(names)}
    finally:
        client.close()


class ArchiveCollector(Collector):
    """The archive's gauges, read at scrape time."""

    NAMES = (
        "pacs_instances_stored",
        "pacs_instances_stored_bytes",
        "pacs_lifecycle_backlog_instances",
        "pacs_file_removals_pending",
        "pacs_storage_alerts_open",
        "pacs_preservation_alerts_open",
        "pacs_celery_queue_length",
    )

    def describe(self) -> Iterator[Metric]:
        # What registering asks: the names, without querying (the tables may not exist yet).
        for name in self.NAMES:
            yield GaugeMetricFamily(name, name)

    def collect(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily(
            "pacs_instances_stored", "Instances in regular use, per facility of origin", labels=["facility"]
        )
        size = GaugeMetricFamily(
            "pacs_instances_stored_bytes", "Bytes of the instances in regular use, per facility", labels=["facility"]
        )
        rows = Instance.objects.values("facility__code").annotate(n=Count("pk"), b=Sum("size")).order_by()
        for row in rows:
            instances.add_metric([row["facility__code"]], row["n"])
            size.add_metric([row["facility__code"]], row["b"] or 0)
        yield instances
        yield size
        yield GaugeMetricFamily(
            "pacs_lifecycle_backlog_instances",
            f"Instances past their migration policy without a verified long-term copy (capped at {BACKLOG_CAP})",
            value=len(lifecycle.instances_to_migrate(limit=BACKLOG_CAP)),
        )
        yield GaugeMetricFamily(
            "pacs_file_removals_pending",
            "Files of released or purged copies whose removal a killed worker left to the lifecycle pass",
            value=FileRemoval.objects.count(),
        )
        yield GaugeMetricFamily(
            "pacs_storage_alerts_open",
            "Storage and fixity alerts not yet acknowledged",
            value=StorageAlert.objects.unacknowledged().count(),
        )
        yield GaugeMetricFamily(
            "pacs_preservation_alerts_open",
            "Preservation alerts not yet acknowledged",
            value=PreservationAlert.objects.unacknowledged().count(),
        )
        queues = GaugeMetricFamily("pacs_celery_queue_length", "Tasks waiting in each Celery queue", labels=["queue"])
        try:
            for name, length in queue_lengths().items():
                queues.add_metric([name], length)
        except Exception:
            logger.warning("metrics: the Celery queue lengths could not be read", exc_info=True)
        yield queues


_collector = ArchiveCollector()
REGISTRY.register(_collector)


def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text format, to allowed clients only (403 to the others)."""
    if not allowed(request):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)


def registry() -> CollectorRegistry:
    """What a scrape reads: every web process's metrics added up from ``PROMETHEUS_MULTIPROC_DIR``
    plus the archive's figures; without the folder, this process's registry."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    summed = CollectorRegistry()
    multiprocess.MultiProcessCollector(summed, path=directory)
    summed.register(_collector)
    return summed
