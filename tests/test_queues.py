"""Work routed by kind, with a real Celery worker: a worker started on one kind's
queue (``celery -A pacs worker -Q ingest``) runs that kind's tasks, and a task of
another kind waits in its own queue for the hosts that serve it."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from kernel import tasknames
from pacs.celery import app
from tests.conftest import wait_until, worker_process

pytestmark = pytest.mark.slow


def _waiting(queue: str) -> int:
    with app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue=queue).message_count  # not passive: Redis drops an empty list


def test_a_worker_on_one_queue_runs_its_kind_and_leaves_the_others_queued(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    ingest, portal = settings.PACS_TASK_QUEUES["ingest"], settings.PACS_TASK_QUEUES["portal"]
    log = tmp_path / "worker.log"
    with worker_process(process_env, log, [ingest]):
        # Sent by name as the beat sends its sweeps: the routes alone choose the queue.
        app.send_task(tasknames.DOWNLOAD_PACKAGES_PURGE)
        app.send_task(tasknames.POST_INGEST_SWEEP)
        wait_until(
            lambda: f"{tasknames.POST_INGEST_SWEEP}[" in log.read_text() and "succeeded" in log.read_text(),
            timeout=60,
            what="the ingest sweep run by the ingest worker",
        )
        assert _waiting(ingest) == 0
        assert _waiting(portal) == 1
        assert f"{tasknames.DOWNLOAD_PACKAGES_PURGE}[" not in log.read_text()
    # A worker on the portal's queue then takes what waited there.
    log2 = tmp_path / "worker2.log"
    with worker_process(process_env, log2, [portal], purge=False):
        wait_until(
            lambda: f"{tasknames.DOWNLOAD_PACKAGES_PURGE}[" in log2.read_text() and "succeeded" in log2.read_text(),
            timeout=60,
            what="the portal's purge run by the portal worker",
        )
        wait_until(lambda: _waiting(portal) == 0, timeout=30, what="the portal queue drained")
