"""Celery tasks of the booking app: placeholder until matching lands."""

from __future__ import annotations

from typing import Any


def study_match_enqueue(sender: Any, study_pk: int, **kwargs: Any) -> None:
    return None
