"""Portal benchmark, part 2: the DICOM zip of a 1 GB study, its time, its memory, and its download.

The study: ``--instances`` (default 2,000) CT slices of 512x512 (pydicom's
bundled CT_small scaled up, 513 KB each, ~1.03 GB), four series, fresh UIDs,
imported with ``manage.py import_dicom`` into a facility tier under
``var/bench/portal/zip-var`` (kept between runs; ``--reset`` makes it again,
``--clean`` removes it). It belongs to a citizen of its own, whose booking is
reported, signed and published on line, so that the real portal flow serves it.

Measured, each with the files' pages evicted from the page cache first
(``posix_fadvise DONTNEED``, cold) and in the cache (warm), in alternating
order, best of ``--repeat``:

(a) ``portal.media.dicom_media_zip_write(study=..., path=..., progress=None)``
    in a child process: wall time, MB/s of instance bytes, and the child's
    peak RSS (``wait4``'s ``ru_maxrss``, and VmRSS sampled every 5 ms),
    against its RSS just before the call (Django loaded, the study fetched).
(b) The floor: this process reading the same stored files whole, in 1 MiB
    reads (``cat > /dev/null``); and reading them while writing one file of
    the same bytes with an fsync at the end (a copy, which the zip also is).
(c) The citizen's download through gunicorn (Procfile: 2 workers x 4
    threads): log in, POST /fse/esami/<pk>/pacchetti/dicom/, the package's
    build (``portal.downloads.media_build``, the Celery task's work, run
    here in a child process in place of a worker so that its memory is
    measured like (a)) while polling /fse/pacchetti/<id>/?format=json, then
    GET download_url streamed and discarded: MB/s against reading the zip
    file itself, and the gunicorn workers' peak RSS (VmHWM reset through
    ``clear_refs`` before, VmRSS sampled every 2 ms) and its growth.

Goals (issue 7): peak memory under 150 MB, throughput at least half of the
disk read. A process with Django loaded already holds ~130 MB (a gunicorn
worker ~180 MB) before it zips or serves anything, so the verdict reads the
memory goal as the growth over that; the absolute peaks are printed too.

Run: ``.venv/bin/python bench/portal/zip_memory.py [--instances N] [--repeat 2] [--reset]``.
It uses the database of part 1 (``pacs_bench_portal``; created and migrated
when missing, not seeded). This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

from bench.common import Download, evict, floor_read, status_kib  # noqa: E402
from bench.portal.citizen import (  # noqa: E402
    Person,
    booking_ensure,
    citizen_ensure,
    citizen_login,
    citizen_session,
    package_ask,
    package_state,
)
from bench.portal.run import web_start  # noqa: E402
from bench.portal.seed import WORK_DIR  # noqa: E402

PYTHON = sys.executable
DEFAULT_URL = os.environ.get("BENCH_PORTAL_ZIP_DB_URL", "postgres://postgres@127.0.0.1:5432/pacs_bench_portal_zip")
ZIP_VAR = WORK_DIR / "zip-var"
ACCESSION = "BENCHZIP0001"
FACILITY = "TS-CAT"
DESCRIPTION = "bench/portal zip 1 GB"
CITIZEN: Person = ("ZIPPO", "BENCH", "M", dt.date(1970, 1, 1), "L424")
PASSWORD = "bench-portal-Zip-2026"
MB = 1e6


# --- the child processes ---------------------------------------------------------------


def child_main(what: str, arg: str, out: str) -> None:
    """In a child: set Django up, note the RSS, do one zip (``zip``) or package build (``build``); print JSON."""
    import django

    django.setup()
    from archive.models import Study
    from portal import downloads, media

    if what == "zip":
        study = Study.objects.get(pk=int(arg))
        rss = status_kib(os.getpid(), "VmRSS")
        t = time.perf_counter()
        info = media.dicom_media_zip_write(study=study, path=Path(out), progress=None)
        seconds = time.perf_counter() - t
        result = {"seconds": seconds, "rss_before_kib": rss, "size": info.size, "count": info.instance_count}
    else:
        from portal.models import DownloadPackage

        DownloadPackage.objects.filter(pk=int(arg)).first()  # the ORM warmed up, as in a worker
        rss = status_kib(os.getpid(), "VmRSS")
        t = time.perf_counter()
        package = downloads.media_build(package_pk=int(arg))
        seconds = time.perf_counter() - t
        result = {
            "seconds": seconds,
            "rss_before_kib": rss,
            "status": package.status if package else "missing",
            "size": package.size if package else 0,
            "error": package.error if package else "",
        }
    print(json.dumps(result), flush=True)


@dataclass
class ChildRun:
    seconds: float
    peak_kib: int  # the child's maximum resident set (wait4)
    sampled_kib: int  # the largest VmRSS seen every 5 ms
    before_kib: int  # its RSS just before the measured call
    result: dict[str, Any]

    @property
    def growth_kib(self) -> int:
        return self.peak_kib - self.before_kib


def child_run(env: dict[str, str], what: str, arg: str, out: str = "") -> ChildRun:
    proc = subprocess.Popen(
        [PYTHON, str(Path(__file__).resolve()), "--child", what, arg, out or "-"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sampled = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            sampled[0] = max(sampled[0], status_kib(proc.pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # The pipes stay small (one JSON line, warnings): reading after wait4 cannot deadlock.
    _pid, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"child {what} exited {proc.returncode}:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return ChildRun(result["seconds"], usage.ru_maxrss, sampled[0], result["rss_before_kib"], result)


@dataclass
class ZipFigures:
    """The best time over the rounds, the worst memory."""

    seconds: float = float("inf")
    peak_kib: int = 0
    growth_kib: int = 0

    def add(self, run: ChildRun) -> None:
        self.seconds = min(self.seconds, run.seconds)
        peak = max(run.peak_kib, run.sampled_kib)
        self.peak_kib = max(self.peak_kib, peak)
        self.growth_kib = max(self.growth_kib, peak - run.before_kib)


# --- the study and its citizen -------------------------------------------------------------


def prepare_database(url: str, *, reset: bool) -> None:
    from bench.query.generate import database_prepare

    database_prepare(url, reset=reset)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from archive.demo import demo_region_load
    from archive.models import Facility
    from booking.demo import demo_load
    from booking.models import Station

    if not Facility.objects.filter(code=FACILITY).exists():
        demo_region_load()
    if not Station.objects.exists():
        demo_load()


def study_files(study: Any) -> tuple[list[Path], int]:
    from archive.models import Copy
    from archive.storage import tiers as storage

    rows = list(
        Copy.objects.filter(instance__series__study=study, verified_at__isnull=False)
        .order_by("instance__series__series_number", "instance__instance_number")
        .values_list("tier", "path", "size")
    )
    return [storage.absolute_path(t, p) for t, p, _ in rows], sum(s for _, _, s in rows)


def study_ensure(env: dict[str, str], *, instances: int, cf: str) -> Any:
    """The 1 GB study, generated and imported when missing."""
    import numpy as np
    from pydicom.uid import generate_uid

    from archive import sample_data
    from archive.models import Study

    study = Study.objects.filter(accession_number=ACCESSION, study_description=DESCRIPTION).first()
    if study is not None:
        files, _ = study_files(study)
        if len(files) == instances and all(f.exists() for f in files):
            return study
        sys.exit(
            f"study {study.study_instance_uid} has {len(files)} readable copies of {instances} wanted: "
            "run with --reset (drops the database and the study's folder)"
        )
    print(f"generating {instances} CT slices of 512x512 (~{instances * 0.513:.0f} MB)", file=sys.stderr, flush=True)
    template = sample_data.bundled_dataset(sample_data.CT)
    factor = 512 // template.Rows
    pixels = template.pixel_array
    patient = sample_data.PatientInfo(patient_id=cf, name=f"{CITIZEN[0]}^{CITIZEN[1]}", birth_date="19700101")
    study_uid = generate_uid()
    gen = ZIP_VAR.parent / "zip-gen"
    shutil.rmtree(gen, ignore_errors=True)
    gen.mkdir(parents=True)
    series_count = 4
    per_series = -(-instances // series_count)
    n = 0
    for s in range(series_count):
        series_uid = generate_uid()
        for i in range(min(per_series, instances - n)):
            ds = sample_data.fresh_copy(
                template,
                patient=patient,
                study_uid=study_uid,
                series_uid=series_uid,
                instance_number=i + 1,
                series_number=s + 1,
                accession_number=ACCESSION,
                study_description=DESCRIPTION,
                series_description=f"serie {s + 1}",
            )
            # Each slice its own: a shifted copy of the scaled image (a zip of equal files would tell nothing more).
            arr = np.roll(np.kron(pixels, np.ones((factor, factor), dtype=pixels.dtype)), n, axis=1)
            ds.Rows, ds.Columns = arr.shape
            ds.PixelData = arr.tobytes()
            ds.save_as(gen / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            n += 1
    print("importing (manage.py import_dicom)", file=sys.stderr, flush=True)
    t = time.perf_counter()
    subprocess.run(
        [PYTHON, "manage.py", "import_dicom", str(gen), "--facility", FACILITY, "--no-progress"],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"imported in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    shutil.rmtree(gen)
    return Study.objects.get(study_instance_uid=study_uid)


# --- (b) the floor -----------------------------------------------------------------------


def floor_copy(files: list[Path], dest: Path) -> tuple[float, int]:
    """Read every file and write the bytes into one file, fsync at the end: what a zip of stored members costs."""
    start = time.perf_counter()
    total = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(dest, "wb", buffering=0) as out:
        for path in files:
            with open(path, "rb", buffering=0) as fh:
                while n := fh.readinto(view):
                    out.write(view[:n])
                    total += n
        os.fsync(out.fileno())
    seconds = time.perf_counter() - start
    dest.unlink()
    return seconds, total


# --- (c) the citizen's download -------------------------------------------------------------


@dataclass
class CitizenFlow:
    package_pk: int = 0
    build: ChildRun | None = None
    polls: list[tuple[float, str, int]] = field(default_factory=list)  # (seconds, status, percent)
    size: int = 0
    downloads: dict[str, Download] = field(default_factory=dict)
    range_check: str = ""


def citizen_flow(web: Any, env: dict[str, str], *, cf: str, booking_pk: int, repeat: int) -> CitizenFlow:
    base = f"http://127.0.0.1:{web.port}"
    s = citizen_session()
    flow = CitizenFlow()
    citizen_login(s, base, cf=cf, password=PASSWORD)
    flow.package_pk = package_ask(s, base, booking_pk=booking_pk)

    def poll() -> dict[str, Any]:
        return package_state(s, base, flow.package_pk)

    state = poll()
    if state["status"] != "ready":
        # The Celery task's work, in a child process (no worker runs): the citizen polls meanwhile.
        t0 = time.monotonic()
        done = threading.Event()
        box: dict[str, Any] = {}

        def build() -> None:
            try:
                box["run"] = child_run(env, "build", str(flow.package_pk))
            except Exception as exc:  # reported below
                box["error"] = exc
            done.set()

        threading.Thread(target=build, daemon=True).start()
        while not done.wait(1.0):
            state = poll()
            flow.polls.append((time.monotonic() - t0, state["status"], state["percent"]))
        if "error" in box:
            raise box["error"]
        flow.build = box["run"]
        state = poll()
        flow.polls.append((time.monotonic() - t0, state["status"], state["percent"]))
    if state["status"] != "ready" or not state.get("download_url"):
        raise RuntimeError(f"package not ready: {state}")
    url = base + state["download_url"]
    from portal.models import DownloadPackage

    package = DownloadPackage.objects.get(pk=flow.package_pk)
    zip_path = Path(package.path)
    flow.size = package.size
    # Resuming works: the last 100 bytes.
    r = s.get(url, headers={"Range": "bytes=-100"}, timeout=30)
    flow.range_check = f"HTTP {r.status_code}, {len(r.content)} bytes, {r.headers.get('Content-Range', '')}"
    # One untimed download first: the worker's first one imports and allocates what every later one reuses.
    _download(s, url)
    for round_ in range(repeat):
        for cache in ("cold", "warm") if round_ % 2 == 0 else ("warm", "cold"):
            d = flow.downloads.setdefault(cache, Download())
            d.round([zip_path], cold=cache == "cold", workers=web.workers(), download=lambda: _download(s, url))
    return flow


def _download(session: Any, url: str) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    with session.get(url, stream=True, timeout=600) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code} {r.text[:200]}")
        for chunk in r.iter_content(chunk_size=1 << 20):
            total += len(chunk)
    return time.perf_counter() - start, total


def package_purge(package_pk: int) -> None:
    """Remove the package's file and mark it purged: the next run builds it again."""
    from portal.models import DownloadPackage

    package = DownloadPackage.objects.filter(pk=package_pk).first()
    if package is None:
        return
    if package.path:
        Path(package.path).unlink(missing_ok=True)
    DownloadPackage.objects.filter(pk=package_pk).exclude(status=DownloadPackage.Status.PURGED).update(
        status=DownloadPackage.Status.PURGED
    )


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--instances", type=int, default=2000, help="CT slices of 513 KB (2000: ~1.03 GB)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of each measurement (best kept)")
    parser.add_argument("--reset", action="store_true", help="drop the database and the study's files, make them again")
    parser.add_argument("--clean", action="store_true", help="remove the study's files (~1 GB) and stop")
    parser.add_argument("--skip-http", action="store_true", help="no download through gunicorn (c)")
    args = parser.parse_args()

    if args.reset or args.clean:
        shutil.rmtree(ZIP_VAR, ignore_errors=True)
        if args.clean:
            print(f"removed {ZIP_VAR}; the database stays (dropped by --reset)")
            return
    ZIP_VAR.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "PACS_VAR_DIR": str(ZIP_VAR),
        "LOG_LEVEL": "WARNING",
        "DEBUG": "0",
        "SECURE_COOKIES": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
    }
    env.pop("REDIS_URL", None)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "PACS_VAR_DIR", "LOG_LEVEL", "DEBUG", "SECURE_COOKIES")})
    os.environ["SECRET_KEY"] = env["SECRET_KEY"]
    os.environ.pop("REDIS_URL", None)
    prepare_database(args.database_url, reset=args.reset)
    patient, cf = citizen_ensure(CITIZEN, password=PASSWORD)
    study = study_ensure(env, instances=args.instances, cf=cf)
    booking = booking_ensure(study, patient, accession=ACCESSION)
    files, total = study_files(study)
    mb = total / MB
    print(f"study {study.study_instance_uid}: {len(files)} instances, {mb:.0f} MB", file=sys.stderr, flush=True)

    out_dir = ZIP_VAR / "bench-out"
    out_dir.mkdir(exist_ok=True)
    floor: dict[str, float] = {"cold": float("inf"), "warm": float("inf")}
    copy_floor = float("inf")
    zips: dict[str, ZipFigures] = {"cold": ZipFigures(), "warm": ZipFigures()}
    zip_size = 0
    for round_ in range(args.repeat):
        order = ("cold", "warm") if round_ % 2 == 0 else ("warm", "cold")
        for cache in order:
            steps = ("floor", "zip") if round_ % 2 == 0 else ("zip", "floor")
            for step in steps:
                if cache == "cold":
                    evict(files)
                if step == "floor":
                    seconds, read = floor_read(files)
                    if read != total:
                        raise RuntimeError(f"read {read} bytes of {total}")
                    floor[cache] = min(floor[cache], seconds)
                else:
                    print(f"zip ({cache}), round {round_ + 1}", file=sys.stderr, flush=True)
                    run = child_run(env, "zip", str(study.pk), str(out_dir / "study.zip"))
                    zip_size = run.result["size"]
                    (out_dir / "study.zip").unlink(missing_ok=True)
                    zips[cache].add(run)
        evict(files)
        seconds, _ = floor_copy(files, out_dir / "copy.bin")
        copy_floor = min(copy_floor, seconds)

    flow: CitizenFlow | None = None
    flow_error = ""
    if not args.skip_http:
        with tempfile.TemporaryDirectory(prefix="pacs-bench-portal-zip-") as tmp:
            print("gunicorn and the citizen's download", file=sys.stderr, flush=True)
            web = web_start(env, Path(tmp) / "logs", workers=2, threads=4)
            try:
                flow = citizen_flow(web, env, cf=cf, booking_pk=booking.pk, repeat=args.repeat)
            except Exception as exc:
                flow_error = f"{type(exc).__name__}: {exc}"
                log = (Path(tmp) / "logs" / "gunicorn.log").read_text(errors="replace")[-2000:]
                flow_error += f"\n(gunicorn log tail:\n{log})"
            finally:
                web.stop()
                from portal.models import DownloadPackage

                for pk in DownloadPackage.objects.filter(study=study).values_list("pk", flat=True):
                    package_purge(pk)
    shutil.rmtree(out_dir, ignore_errors=True)

    # --- figures ---
    print(
        f"\nDICOM zip of a {mb:.0f} MB study ({len(files)} instances of {total / len(files) / 1e3:.0f} KB, "
        f"zip {zip_size / MB:.0f} MB), best of {args.repeat}; {os.cpu_count()} cores; "
        f"cold = the files' pages evicted first"
    )
    disk = floor["cold"]  # the disk read: the goal's yardstick, cold or warm
    print(f"{'':<58}{'cache':>6}{'s':>8}{'MB/s':>8}{'÷disk':>7}{'peak RSS MB':>13}{'growth MB':>11}")
    for cache in ("cold", "warm"):
        print(
            f"{'(b) floor: read the stored files (cat > /dev/null)':<58}{cache:>6}{floor[cache]:>8.2f}"
            f"{mb / floor[cache]:>8.0f}"
        )
    print(f"{'(b) floor: copy them into one file + fsync':<58}{'cold':>6}{copy_floor:>8.2f}{mb / copy_floor:>8.0f}")
    for cache in ("cold", "warm"):
        z = zips[cache]
        ratio = disk / z.seconds
        verdict = "ok" if ratio >= 0.5 and z.growth_kib / 1024 < 150 else "MISSED"
        print(
            f"{'(a) dicom_media_zip_write (child process)':<58}{cache:>6}{z.seconds:>8.2f}{mb / z.seconds:>8.0f}"
            f"{ratio:>7.2f}{z.peak_kib / 1024:>13.0f}{z.growth_kib / 1024:>11.1f}  {verdict}"
        )
    print("    (÷disk: MB/s over the cold read's, goal >= 0.5; growth: the child's peak RSS over its RSS just")
    print("     before the call (Django and pydicom loaded), goal < 150 MB)")
    if flow is None:
        if not args.skip_http:
            print(f"\n(c) the citizen's download: not measured: {flow_error}")
        return
    if flow.build is not None:
        b = flow.build
        peak = max(b.peak_kib, b.sampled_kib)
        print(
            f"\n(c) package built by portal.downloads.media_build in a child (the Celery task's work): "
            f"{b.seconds:.1f} s, {mb / b.seconds:.0f} MB/s, peak RSS {peak / 1024:.0f} MB "
            f"(growth {(peak - b.before_kib) / 1024:.1f} MB), status {b.result.get('status')}"
        )
        shown = ", ".join(f"{t:.0f}s {st} {pc}%" for t, st, pc in flow.polls[:: max(1, len(flow.polls) // 8)])
        print(f"    the citizen's polls of ?format=json: {shown}")
    print(f"    Range: bytes=-100 -> {flow.range_check}")
    zmb = flow.size / MB
    print(f"\n(c) GET download_url through gunicorn (2 workers x 4 threads), {zmb:.0f} MB zip, best of {args.repeat}")
    disk_zip = flow.downloads["cold"].floor if "cold" in flow.downloads else float("inf")
    print(f"{'cache':<8}{'read MB/s':>11}{'download MB/s':>15}{'÷disk':>7}{'worker peak RSS MB':>20}{'growth MB':>11}")
    for cache in ("cold", "warm"):
        d = flow.downloads.get(cache)
        if d is None:
            continue
        if d.error:
            print(f"{cache:<8}not measured: {d.error[:200]}")
            continue
        ratio = disk_zip / d.seconds
        verdict = "ok" if ratio >= 0.5 and d.growth_kib / 1024 < 150 else "MISSED"
        print(
            f"{cache:<8}{zmb / d.floor:>11.0f}{zmb / d.seconds:>15.0f}{ratio:>7.2f}{d.peak_kib / 1024:>20.0f}"
            f"{d.growth_kib / 1024:>11.1f}  {verdict}"
        )
    print(
        "    (read: this process reading the zip file; ÷disk: download MB/s over the cold read's, goal >= 0.5;"
        " the client, requests in this process, shares the 2 cores)"
    )


if __name__ == "__main__":
    main()
