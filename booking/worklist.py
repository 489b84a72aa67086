"""Modality Worklist (PS3.4 K): placeholder until the worklist lands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset


def worklist_find(identifier: Dataset, **kwargs: Any) -> Iterator[Dataset]:
    return iter(())
