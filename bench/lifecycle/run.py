"""Lifecycle benchmark: migration from the facility tier to the long-term tier,
on the filesystem and on an S3-compatible server, against a plain copy of the
same files (the floor).

Ingests N generated CT instances (default 500 CT_small copies of 39 KB; ``--frames``
makes bigger multi-frame objects) into a facility tier of a throw-away
installation (SQLite in a temporary folder), then, best of ``--repeat`` interleaved runs:

* filesystem floor: ``shutil.copyfile`` of each facility file into a fresh
  folder tree (no fsync, no hash), and the same with an fsync per file;
* filesystem migration: ``archive.storage.lifecycle.migrate_batch`` (copy, fsync,
  link, read back, SHA-256, record the verified copy in the database);
* S3 floor: one ``upload_file`` per facility file to a moto server started
  here on 127.0.0.1 (``python -m moto.server``);
* S3 migration: ``migrate_batch`` with ``STORAGES["longterm"]`` on that server
  through django-storages (upload, download again, SHA-256, record).

Prints MB/s and objects/s for each and the migration's ratio to its floor.
Run: ``.venv/bin/python bench/lifecycle/run.py [--instances N] [--repeat R] [--frames F] [--skip-s3]``.
A benchmark, not a test: it asserts nothing. ``--smoke`` (3 instances of 2 frames, one run, the
filesystem and S3) runs in seconds: the test suite runs it (``tests/bench/test_benchmarks.py``)
so that the benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

WORK = Path(tempfile.mkdtemp(prefix="pacs-bench-lifecycle-"))
os.environ["PACS_VAR_DIR"] = str(WORK / "var")
os.environ["DATABASE_URL"] = f"sqlite:///{WORK / 'bench.sqlite3'}"
os.environ.pop("REDIS_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")
os.environ["PACS_MIGRATE_AFTER_DAYS"] = "0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup(instances: int, frames: int) -> tuple[list[Path], int]:
    import django

    from bench.common import sqlite_from_template

    sqlite_from_template(WORK / "bench.sqlite3")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from pydicom.uid import generate_uid

    from archive.ingest import instance_ingest
    from archive.models import Copy, Facility, HealthAuthority
    from archive.sample_data import CT, PatientInfo, bundled_dataset, fresh_copy
    from archive.storage.tiers import absolute_path

    authority = HealthAuthority.objects.create(code="ASUGI", name="ASUGI")
    facility = Facility.objects.create(
        code="TS-CAT", name="Cattinara", authority=authority, ae_title="TSCAT", dicom_port=11112
    )
    template = bundled_dataset(CT)
    if frames > 1:
        # A bigger object: the CT's pixels repeated as frames (only the size matters here).
        template.NumberOfFrames = frames
        template.PixelData = template.PixelData * frames
    study_uid, series_uid = generate_uid(), generate_uid()
    (WORK / "gen").mkdir(parents=True)
    files = []
    for i in range(instances):
        ds = fresh_copy(
            template,
            patient=PatientInfo(patient_id="BENCH"),
            study_uid=study_uid,
            series_uid=series_uid,
            instance_number=i + 1,
        )
        path = WORK / "gen" / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    for f in files:
        instance_ingest(path=f, facility=facility, owned=True)
    facility_files = [absolute_path(c.tier, c.path) for c in Copy.objects.order_by("pk")]
    total = sum(p.stat().st_size for p in facility_files)
    return facility_files, total


def floor_fs(files: list[Path], dest: Path, *, fsync: bool) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    root = files[0].parents[4]
    start = time.perf_counter()
    for f in files:
        target = dest / f.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        if fsync:
            fd = os.open(target, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    took = time.perf_counter() - start
    shutil.rmtree(dest, ignore_errors=True)
    return took


def _longterm_forget() -> None:
    """Back to before the migration: no long-term copy, so no instance migrated."""
    from archive.models import Copy, Instance

    Copy.objects.filter(tier__startswith="longterm:").delete()
    Instance.all_objects.update(migrated=False)


def migrate_once() -> float:
    from archive.storage import lifecycle

    _longterm_forget()
    lt = Path(os.environ["PACS_VAR_DIR"]) / "tiers" / "longterm"
    shutil.rmtree(lt, ignore_errors=True)
    start = time.perf_counter()
    result = lifecycle.migrate_batch(limit=10**9)
    took = time.perf_counter() - start
    assert result.failed == 0, result.errors[:3]
    return took


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    )


def floor_s3(files: list[Path], endpoint: str, bucket: str) -> float:
    client = s3_client(endpoint)
    root = files[0].parents[4]
    start = time.perf_counter()
    for f in files:
        client.upload_file(str(f), bucket, f"floor/{f.relative_to(root)}")
    return time.perf_counter() - start


def migrate_s3_once(endpoint: str, bucket: str) -> float:
    from botocore.config import Config
    from django.test.utils import override_settings

    storages = dict(__import__("django.conf").conf.settings.STORAGES)
    storages["longterm"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint,
            "access_key": "x",
            "secret_key": "x",
            "region_name": "us-east-1",
            "client_config": Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        },
    }
    with override_settings(STORAGES=storages):
        _longterm_forget()
        client = s3_client(endpoint)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="region/"):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        return migrate_once_in_place()


def migrate_once_in_place() -> float:
    from archive.storage import lifecycle

    start = time.perf_counter()
    result = lifecycle.migrate_batch(limit=10**9)
    took = time.perf_counter() - start
    assert result.failed == 0, result.errors[:3]
    return took


def line(name: str, n: int, total: int, took: float, floor: float | None = None) -> str:
    mb = total / 1e6 / took
    text = f"  {name:<34} {took:7.2f} s  {mb:8.1f} MB/s  {n / took:8.0f} objects/s"
    if floor is not None:
        text += f"   ratio to floor {floor / took:4.2f}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1, help="frames per instance (1: 39 KB objects)")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="every size at its smallest, in seconds (the test suite)")
    args = parser.parse_args()
    if args.smoke:
        # A few objects of two frames (the multi-frame template too), one run, both tiers.
        args.instances, args.repeat, args.frames, args.skip_s3 = 3, 1, 2, False
    try:
        files, total = setup(args.instances, args.frames)
        n = len(files)
        print(f"{n} objects, {total / 1e6:.1f} MB ({total / n / 1e3:.0f} KB each), best of {args.repeat}")
        dest = WORK / "floor"
        # Interleaved, best of each: the machine is shared and noisy.
        fs_floor = fs_floor_sync = fs_ours = float("inf")
        for _ in range(args.repeat):
            fs_floor = min(fs_floor, floor_fs(files, dest, fsync=False))
            fs_floor_sync = min(fs_floor_sync, floor_fs(files, dest, fsync=True))
            fs_ours = min(fs_ours, migrate_once())
        print("filesystem")
        print(line("floor: plain copy", n, total, fs_floor))
        print(line("floor: plain copy + fsync", n, total, fs_floor_sync))
        print(line("migration (verified, recorded)", n, total, fs_ours, fs_floor))
        print(f"  {'':<34} ratio to the fsync floor {fs_floor_sync / fs_ours:4.2f}")
        if args.skip_s3:
            return
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            endpoint = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start")
                time.sleep(0.1)
            s3_client(endpoint).create_bucket(Bucket="bench")
            s3_floor = s3_ours = float("inf")
            for _ in range(args.repeat):
                s3_floor = min(s3_floor, floor_s3(files, endpoint, "bench"))
                s3_ours = min(s3_ours, migrate_s3_once(endpoint, "bench"))
            print("S3 (moto server on 127.0.0.1)")
            print(line("floor: upload_file", n, total, s3_floor))
            print(line("migration (verified, recorded)", n, total, s3_ours, s3_floor))
        finally:
            proc.terminate()
            proc.wait()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
