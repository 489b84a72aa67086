"""Shared by the lifecycle tests: instances ingested into a facility tier, made old."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from django.utils import timezone

from archive.ingest import instance_ingest
from archive.models import Copy, Facility, Instance
from archive.storage import retrieve
from archive.storage import tiers as storage


def ingest_files(paths: list[Path], facility: Facility, *, age_days: float = 0.0) -> list[Instance]:
    pks = []
    for path in paths:
        result = instance_ingest(path=path, facility=facility, owned=False, calling_ae="CT01")
        pks.append(result.instance_id)
    if age_days:
        # Received in the past: the instance's time and its copies' copy of it (Copy.instance_received_at).
        received_at = timezone.now() - dt.timedelta(days=age_days)
        Instance.objects.filter(pk__in=pks).update(received_at=received_at)
        Copy.objects.filter(instance__in=pks).update(instance_received_at=received_at)
    return list(Instance.objects.filter(pk__in=pks).order_by("pk"))


def tiers_of(instance: Instance, *, verified: bool = True) -> set[str]:
    qs = Copy.objects.filter(instance=instance)
    if verified:
        qs = qs.filter(verified_at__isnull=False)
    return set(qs.values_list("tier", flat=True))


def read_sha256(instance: Instance) -> str:
    """Read the instance as every reader does (nearest verified copy) and hash it."""
    fresh = retrieve.instances_with_copies(Instance.objects.filter(pk=instance.pk)).get()
    with retrieve.instance_open(fresh) as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def copy_file(copy: Copy) -> Path:
    return storage.absolute_path(copy.tier, copy.path)
