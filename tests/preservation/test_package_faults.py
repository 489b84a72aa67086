"""A worker killed while building a package leaves no half-package in the
preservation tier, and the next run completes it."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from celery import current_app

from archive.storage import tiers as storage
from preservation import packages, vault
from preservation.models import Package, PackageFile
from tests.conftest import wait_until

from .conftest import Preserved, tier_root

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _aip_folders() -> list[Path]:
    aip = tier_root() / "aip"
    return sorted(aip.iterdir()) if aip.is_dir() else []


def _complete(package: Package) -> None:
    assert package.status == Package.Status.ARCHIVED
    files = list(PackageFile.objects.filter(package=package))
    assert len(files) == 17
    on_disk = {str(p.relative_to(tier_root())) for p in (tier_root() / package.path).rglob("*") if p.is_file()}
    assert on_disk == {f.path for f in files}
    for f in files:
        assert hashlib.sha256((tier_root() / f.path).read_bytes()).hexdigest() == f.sha256


@pytest.fixture
def process_env(process_env: dict[str, str]) -> dict[str, str]:
    # The worker packages at once, slowly enough to be killed in the middle.
    return {**process_env, "PACS_PRESERVATION_STABLE_MINUTES": "0", "PACS_PRESERVATION_THROTTLE_SECONDS": "0.4"}


@pytest.mark.slow
def test_a_worker_killed_mid_package_leaves_nothing_and_the_next_run_completes(  # type: ignore[no-untyped-def]
    signed: Preserved, celery_worker: subprocess.Popen
) -> None:
    study = signed.rep.study
    current_app.send_task(packages_task(), args=[study.pk], queue=os.environ["CELERY_QUEUE"])
    incoming = storage.incoming_dir_of(celery_worker.pid)

    def gathering() -> bool:
        return len(list(incoming.glob("sip-*/dicom/*/*.dcm"))) >= 2

    wait_until(gathering, timeout=60, interval=0.02, what="the worker to gather the package")
    os.kill(celery_worker.pid, signal.SIGKILL)
    celery_worker.wait(timeout=30)

    package = Package.objects.get()
    assert package.status == Package.Status.BUILDING
    assert not PackageFile.objects.exists()
    assert _aip_folders() == []  # nothing under a package's name, complete or not
    # A run while the dead builder's heartbeat still looks fresh leaves it alone...
    assert packages.package_build(study_pk=study.pk) == []
    # ...and once it is stale, takes the package over and completes it.
    [done] = packages.package_build(study_pk=study.pk, stale_after=dt.timedelta(0))
    assert done.pk == package.pk
    _complete(done)
    assert _aip_folders() == [tier_root() / done.path]
    staging = tier_root() / vault.STAGING
    assert not staging.exists() or list(staging.iterdir()) == []


def packages_task() -> str:
    from kernel.tasknames import STUDY_PACKAGE

    return STUDY_PACKAGE


def test_a_build_killed_while_publishing_leaves_only_staging_which_the_next_run_clears(  # type: ignore[no-untyped-def]
    signed: Preserved, monkeypatch
) -> None:
    real_rename = os.rename

    def killed(src, dst):  # type: ignore[no-untyped-def]
        raise SystemExit("worker killed")  # as if the process died before the rename

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(SystemExit):
        packages.package_build(study_pk=signed.rep.study.pk)
    monkeypatch.setattr(os, "rename", real_rename)
    assert _aip_folders() == []
    assert Package.objects.get().status == Package.Status.BUILDING
    [done] = packages.package_build(study_pk=signed.rep.study.pk, stale_after=dt.timedelta(0))
    _complete(done)
    staging = tier_root() / vault.STAGING
    assert not staging.exists() or list(staging.iterdir()) == []


def test_a_build_killed_after_publishing_is_adopted(signed: Preserved, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def killed(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise SystemExit("worker killed after the rename, before the rows")

    monkeypatch.setattr(PackageFile.objects, "bulk_create", killed)
    with pytest.raises(SystemExit):
        packages.package_build(study_pk=signed.rep.study.pk)
    monkeypatch.undo()
    package = Package.objects.get()
    assert package.status == Package.Status.BUILDING and len(_aip_folders()) == 1
    # The next run gathers the same files again, finds them published whole, and records them.
    [done] = packages.package_build(study_pk=signed.rep.study.pk, stale_after=dt.timedelta(0))
    _complete(done)


def test_a_volume_left_half_closed_is_finished_by_the_next_run(signed: Preserved, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from preservation import timestamp, volumes
    from preservation.models import Volume

    [package] = packages.package_build(study_pk=signed.rep.study.pk)

    def killed(data: bytes) -> bytes:
        raise SystemExit("worker killed while asking the TSA")

    monkeypatch.setattr(timestamp, "timestamp_obtain", killed)
    with pytest.raises(SystemExit):
        volumes.volume_close()
    monkeypatch.undo()
    volume = Volume.objects.get()
    assert volume.status == Volume.Status.BUILDING
    assert not (tier_root() / "volumes").exists() or list((tier_root() / "volumes").iterdir()) == []
    assert volumes.volume_close() is None  # its packages are claimed; its closer may still be alive
    closed = volumes.volume_close(stale_after=dt.timedelta(0))
    assert closed is not None and closed.pk == volume.pk and closed.status == Volume.Status.CLOSED
    package.refresh_from_db()
    assert package.volume_id == volume.pk
