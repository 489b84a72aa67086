"""The lifecycle across real processes and faults: the scope switch while a
listener process stores and serves, a Celery worker killed with SIGKILL in
the middle of a batch, and a facility tier that fills up (a small tmpfs)
while a modality is sending."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import current_app
from django.conf import settings as django_settings
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from archive.models import Copy, Instance, RemoteNode, ScopeMigration
from archive.sample_data import PatientInfo, write_study
from archive.storage import lifecycle, retrieve
from kernel import tasknames
from tests.conftest import REPO, Region, wait_until
from tests.dicom_client import send_files

from .lifecycle_helpers import ingest_files, read_sha256, tiers_of

pytestmark = pytest.mark.slow

CT = "1.2.840.10008.5.1.4.1.1.2"


def _c_get_study(port: int, study_uid: str) -> tuple[int, dict[str, bytes]]:
    received: dict[str, bytes] = {}

    def on_store(event):  # type: ignore[no-untyped-def]
        # pynetdicom's own receiving, whether or not an in-process listener ran before.
        received[str(event.request.AffectedSOPInstanceUID)] = event.dataset.SOPInstanceUID.encode()
        return 0x0000

    ae = AE(ae_title="WS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CT)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="TSCAT_PACS",
        ext_neg=[build_role(CT, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study_uid
        statuses = [status for status, _ in assoc.send_c_get(ds, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    return int(statuses[-1].Status), received


def test_scope_switch_while_the_listener_stores_and_serves(  # type: ignore[no-untyped-def]
    region: Region, start_listener_process, process_env: dict[str, str], tmp_path: Path, patient: PatientInfo
) -> None:
    RemoteNode.objects.create(
        facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
    )
    old_files = write_study(tmp_path / "old", patient=patient, series=2, instances_per_series=20)
    old = ingest_files(old_files, region.facility, age_days=400)
    study_uid = str(dcmread(old_files[0], stop_before_pixels=True).StudyInstanceUID)
    assert lifecycle.lifecycle_run().evicted == 40  # default retention: 365 days
    assert all(tiers_of(i) == {"longterm:region"} for i in old)

    listener = start_listener_process(env={"PACS_LONG_TERM_SCOPE": "authority"})
    log = (tmp_path / "lifecycle.log").open("wb")
    migration = subprocess.Popen(
        [sys.executable, "manage.py", "lifecycle", "run", "--until-done", "--limit", "2"],
        cwd=REPO,
        env={**process_env, "PACS_LONG_TERM_SCOPE": "authority"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    progress: list[int] = []
    rounds = 0
    try:
        while True:
            running = migration.poll() is None
            # A modality keeps sending, a workstation keeps retrieving the old study.
            new_files = write_study(tmp_path / f"new{rounds}", patient=patient, series=1, instances_per_series=2)
            report = send_files(listener.port, new_files, calling_ae="CT01")
            assert report.established and len(report.acknowledged()) == 2, report
            status, got = _c_get_study(listener.port, study_uid)
            assert status == 0x0000 and len(got) == 40, (hex(status), len(got), listener.log()[-3000:])
            row = ScopeMigration.objects.first()
            if row is not None:
                progress.append(row.released)
            rounds += 1
            if not running:
                break
    finally:
        if migration.poll() is None:
            migration.kill()
        migration.wait(timeout=60)
    assert migration.returncode == 0, (tmp_path / "lifecycle.log").read_text()
    assert progress == sorted(progress)
    row = ScopeMigration.objects.get()
    assert row.target_scope == "authority" and row.finished_at is not None
    assert row.total == row.copied == row.released == 40
    for instance in old:
        assert tiers_of(instance, verified=False) == {"longterm:ASUGI"}
    status, got = _c_get_study(listener.port, study_uid)
    assert status == 0x0000 and len(got) == 40


def test_a_worker_killed_mid_batch_leaves_everything_readable(  # type: ignore[no-untyped-def]
    region: Region, celery_worker: subprocess.Popen, tmp_path: Path, patient: PatientInfo
) -> None:
    files = write_study(tmp_path / "many", patient=patient, series=4, instances_per_series=50)
    instances = ingest_files(files, region.facility, age_days=400)
    total = len(instances)
    current_app.send_task(tasknames.LIFECYCLE_RUN, queue=os.environ["CELERY_QUEUE"])

    def started() -> bool:
        return Copy.objects.filter(tier="longterm:region").count() >= 10

    wait_until(started, timeout=120, interval=0.005, what="the batch to start")
    os.kill(celery_worker.pid, signal.SIGKILL)
    celery_worker.wait(timeout=30)
    done = Copy.objects.filter(tier="longterm:region").count()
    assert done < total, "the batch ended before the kill; make it longer"
    # Every object is readable now, from one verified copy or another.
    for instance in instances:
        assert read_sha256(instance) == instance.sha256
    # The next run finishes the job.
    result = lifecycle.lifecycle_run()
    assert result.failed == 0
    assert result.migrated == total - done or result.migrated == total - done + 1  # one copy may have been on disk
    for instance in instances:
        assert tiers_of(instance, verified=False) == {"longterm:region"}
        assert read_sha256(instance) == instance.sha256


@pytest.fixture
def small_facility_tier(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs for the facility tier and incoming folder (we are root in CI)."""
    mount = tmp_path / f"small-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)


def test_a_full_facility_tier_answers_out_of_resources_and_keeps_what_it_acknowledged(  # type: ignore[no-untyped-def]
    small_facility_tier: Path, region: Region, start_listener_process, settings, tmp_path: Path, patient: PatientInfo
) -> None:
    tier_dir = small_facility_tier / "tiers"
    incoming = small_facility_tier / "incoming"
    settings.PACS_FACILITY_TIER_DIR = tier_dir
    settings.PACS_INCOMING_DIR = incoming
    settings.STORAGES = {
        **settings.STORAGES,
        "facility": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": tier_dir}},
    }
    listener = start_listener_process(env={"PACS_FACILITY_TIER_DIR": str(tier_dir), "PACS_INCOMING_DIR": str(incoming)})
    files = write_study(tmp_path / "big", patient=patient, series=2, instances_per_series=40)  # ~3 MB
    report = send_files(listener.port, files, calling_ae="CT01")
    assert report.established
    statuses = set(report.statuses.values())
    assert 0xA700 in statuses, {hex(s) for s in statuses}
    acknowledged = report.acknowledged()
    assert 0 < len(acknowledged) < len(files)
    by_uid = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    for uid in acknowledged:
        instance = Instance.objects.get(sop_instance_uid=uid)
        assert read_sha256(instance) == instance.sha256
        fresh = retrieve.instances_with_copies(Instance.objects.filter(pk=instance.pk)).get()
        with retrieve.instance_open(fresh) as fh:
            # The listener writes its own file meta; the data set is the one sent.
            assert dcmread(fh).PixelData == dcmread(by_uid[uid]).PixelData
    refused = set(by_uid) - set(acknowledged)
    assert not Instance.objects.filter(sop_instance_uid__in=refused).exists()
    # Nothing half-written stays in the tier or the incoming folder.
    with contextlib.suppress(FileNotFoundError):
        leftovers = [p for p in incoming.rglob("*") if p.is_file()]
        assert leftovers == []
    stored = [p for p in tier_dir.rglob("*.dcm")]
    assert len(stored) == len(acknowledged)
    assert django_settings.PACS_FACILITY_TIER_DIR == tier_dir
