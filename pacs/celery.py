"""The Celery app: configured from Django settings (``CELERY_*``), tasks found in each app.

Logging is Django's (``LOGGING``, structlog: kernel/logs.py), not Celery's: a
receiver of ``setup_logging`` stops the worker from replacing the root
logger's handlers, and each task's lines carry its id (``task_id``), bound
from ``task_prerun`` to ``task_postrun`` in the process that runs it. A task
queued by a request, an association or another task carries that work's id in
its message (header ``pacs_log_origin``), bound as ``origin_request_id``,
``origin_association_id`` or ``origin_task_id``: one search finds the request
and the work it set off.
"""

from __future__ import annotations

import logging.config
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

app = Celery("pacs")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.setup_logging.connect
def _logging_setup(**_kwargs: Any) -> None:
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


ORIGIN_HEADER = "pacs_log_origin"


@signals.before_task_publish.connect
def _origin_forward(headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    from kernel import logs

    if headers is None:
        return
    bound = logs.ids_bound()
    origin = {key: str(bound[key]) for key in logs.ID_KEYS if key in bound}
    if origin:
        headers[ORIGIN_HEADER] = origin


@signals.task_prerun.connect
def _task_ids_bind(task_id: str | None = None, task: Any = None, **_kwargs: Any) -> None:
    from kernel import logs

    # A task applied in place (eager, or a test's apply()) runs inside its caller's
    # context: what the caller had bound comes back at postrun.
    if task is not None:
        task.request.pacs_log_ids = logs.ids_bound()
    logs.ids_clear()
    origin = getattr(task.request, ORIGIN_HEADER, None) if task is not None else None
    if isinstance(origin, dict):
        logs.ids_bind(**{f"origin_{key}": str(value)[:128] for key, value in origin.items() if key in logs.ID_KEYS})
    if task_id:
        logs.ids_bind(task_id=task_id, task=getattr(task, "name", ""))


@signals.task_postrun.connect
def _task_ids_clear(task: Any = None, **_kwargs: Any) -> None:
    from kernel import logs

    previous = getattr(task.request, "pacs_log_ids", None) if task is not None else None
    logs.ids_clear()
    if previous:
        logs.ids_bind(**previous)
