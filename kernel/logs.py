"""Structured logs: every line a process writes, through structlog, with the id of the work it belongs to.

The standard library's loggers (``logging.getLogger(__name__)`` everywhere in
the project, Django's, Celery's, pynetdicom's) are routed through structlog's
``ProcessorFormatter`` (:func:`logging_config`, the ``LOGGING`` of
``pacs/settings.py``), so each line gets what is bound in the context of the
code that wrote it:

* ``request_id`` for an HTTP request (``pacs.ops.logs.RequestIdMiddleware``:
  the client's ``X-Request-ID`` when it is a sane token, else a new one,
  echoed in the response);
* ``task_id`` for a Celery task (``pacs.celery``: bound from ``task_prerun``
  to ``task_postrun``; the worker's own "received"/"succeeded" lines carry it
  from the message they describe);
* ``association_id`` for a DICOM association (``archive.dicomnet.observe``,
  bound in the association's threads).

The ids live in :mod:`contextvars` (structlog's ``bind_contextvars``): a
thread starts with an empty context, so each thread that works for a request,
a task or an association binds its id itself; nothing leaks to the next piece
of work on a thread that :func:`ids_clear` before it starts.

``PACS_LOG_FORMAT``: ``console`` (one readable line, the default of
``make run``) or ``json`` (one JSON object a line, for the journal and a log
shipper: ``deploy/pacs.env.example``).
"""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any

import structlog

FORMATS = ("console", "json")

# The ids a line may carry, by kind of work.
ID_KEYS = ("request_id", "task_id", "association_id")

# A client's X-Request-ID is kept when it is a plain token (a UUID, a proxy's
# hex id): nothing that could forge a line in a log reader or smuggle data in.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def new_id() -> str:
    """A fresh id for a request or an association (a UUID's 32 hex digits)."""
    return uuid.uuid4().hex


def sane_id(value: str | None) -> str | None:
    """``value`` when it is an acceptable id from outside (1-128 of letters, digits, ``._:-``), else None."""
    if value and _SANE_ID.fullmatch(value):
        return value
    return None


def ids_bind(**ids: str) -> None:
    """Bind ids (``request_id=...``) for every line this context writes from now on."""
    structlog.contextvars.bind_contextvars(**ids)


def ids_clear() -> None:
    """Forget every id bound in this context (a thread about to take other work)."""
    structlog.contextvars.clear_contextvars()


def ids_bound() -> dict[str, Any]:
    """What is bound in this context now."""
    return dict(structlog.contextvars.get_contextvars())


def _celery_message_id(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    # Celery's worker logs "Task x[id] received" before the task's context exists
    # and passes the message's fields as the record's data: the id is taken from there.
    if "task_id" in event_dict:
        return event_dict
    record = event_dict.get("_record")
    if record is None or not record.name.startswith("celery"):
        return event_dict
    data = getattr(record, "data", None)
    if not isinstance(data, dict):
        data = record.args if isinstance(record.args, dict) else None
    if data and isinstance(data.get("id"), str):
        event_dict["task_id"] = data["id"]
    return event_dict


def _thread_name(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    record = event_dict.get("_record")
    event_dict.setdefault("thread", record.threadName if record is not None else threading.current_thread().name)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _celery_message_id,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(fmt: str) -> Any:
    if fmt == "json":
        return structlog.processors.JSONRenderer(sort_keys=False)
    return structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)


def formatter(fmt: str) -> structlog.stdlib.ProcessorFormatter:
    """The ``logging.Formatter`` that renders every record, foreign or structlog's, in ``fmt``."""
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "json":
        # A traceback as one string field: the line stays one line of JSON.
        final.append(structlog.processors.format_exc_info)
    pre = _shared_processors()
    if fmt == "json":
        # The thread, for the listener's associations (an association and its DUL are two).
        pre.append(_thread_name)
    final.append(_renderer(fmt))
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=pre, processors=final)


def logging_config(*, fmt: str, level: str, pynetdicom_level: str) -> dict[str, Any]:
    """The ``LOGGING`` dict for Django (``logging.config.dictConfig``); configures structlog too."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    structlog_configure()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": {"()": formatter, "fmt": fmt}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # pynetdicom logs every PDU at INFO; keep its warnings only.
            "pynetdicom": {"level": pynetdicom_level},
            # runserver's request lines: through the same handler, not Django's own format.
            "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        },
    }


def structlog_configure() -> None:
    """structlog's own loggers (``structlog.get_logger``) end in the standard library's handlers."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
