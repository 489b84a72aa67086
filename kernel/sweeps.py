"""Sweeps: the periodic tasks that queue again the work a lost message left undone.

Each app finds what is overdue with its own query (the post-ingest work, a signed
report's follow-ups, a study's preservation package); queuing it again and saying
so is the same everywhere, and lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any


def requeue(task: Any, due: Sequence[tuple[Any, ...]], *, logger: logging.Logger, message: str = "") -> int:
    """Queue ``task`` once for each argument tuple in ``due``; how many.

    ``message`` (with one ``%d`` for the count) is logged as a warning when
    anything was overdue: a sweep that finds work means messages were lost.
    """
    for args in due:
        task.delay(*args)
    if due and message:
        logger.warning(message, len(due))
    return len(due)
