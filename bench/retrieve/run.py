"""Retrieve benchmark (issue 21): WADO-RS retrieve and on-demand ``/rendered``, each against its floor.

Runs in a PostgreSQL database of its own (``--database-url``, created, migrated
and given the demo region when missing), against gunicorn started here as the
Procfile runs it (``pacs.wsgi``, 2 workers x 4 threads; ``--workers``/``--threads``).
The client is ``requests`` in this process, one keep-alive session, on the same
machine (for ``/rendered`` also ``http.client``, see below); every figure is paired
with its floor measured in the same run.

* **WADO-RS retrieve** of a whole study (``multipart/related;
  type="application/dicom"``): a study of 500 instances of 39 KB (pydicom's
  CT_small) and one of 500 CT slices of 512x512 (513 KB each), generated and
  imported with ``manage.py import_dicom``. The floor: this process reading
  the same stored files whole in 1 MiB reads (``cat > /dev/null``). Cold: the
  files' pages evicted first (``posix_fadvise DONTNEED``); warm: in the page
  cache. Best of ``--repeat``, floor and retrieve interleaved. Goal: >= 0.5.
* **On-demand rendered** (``.../instances/{uid}/rendered``, image/jpeg, no
  stored preview: the benchmark deletes them) of 30 images made from
  pydicom's bundled files, one after the other. The floor: the same frame
  rendered in this process by pydicom + NumPy + Pillow, as the render worker
  does it (``archive.rendering.isolated._render_path``: the stored file's
  header read, the frame decoded, windowed and encoded). Per image, the best
  of ``--repeat``; the ratio is the floor's total over the server's. Goal: >= 0.5.
  Each image is fetched with two clients in turn: ``http.client`` on one
  keep-alive connection (the ratio reported: the server's cost, not the
  client's) and ``requests`` (about 0.7 ms more a request in this process,
  printed beside it).

Run: ``.venv/bin/python bench/retrieve/run.py [--repeat 5] [--database-url URL]``.
This is a benchmark, not a test: it asserts nothing. ``--smoke`` runs every
part once at its smallest (a 4-instance study of each size, 4 rendered images,
one gunicorn worker) and exits 1 when a retrieve or a render failed or a
multipart body does not hold the stored files byte for byte; the test suite
runs it (``tests/bench/test_benchmarks.py``) so that the benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

from bench.common import Download, server_env  # noqa: E402
from bench.portal.run import web_start  # noqa: E402
from bench.query.run import FACILITY, bench_accounts  # noqa: E402

PYTHON = sys.executable
DEFAULT_URL = os.environ.get("BENCH_RETRIEVE_DB_URL", "postgres://postgres@127.0.0.1:5432/pacs_bench_retrieve")
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
WADO_PATIENT_ID = "BENCHWADO"
WADO_DESCRIPTION = "bench/retrieve WADO"
RENDER_PATIENT_ID = "BENCHRENDERED"
RENDER_DESCRIPTION = "bench/retrieve rendered"
JPEG = "image/jpeg"


# --- the archive -------------------------------------------------------------------------


def database_ready(url: str) -> None:
    from bench.query.generate import database_prepare

    database_prepare(url, reset=False)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from archive.demo import demo_region_load
    from archive.models import Facility

    if not Facility.objects.filter(code=FACILITY).exists():
        demo_region_load()


def bench_studies_delete() -> None:
    """The benchmark's studies, from this run or an earlier one (their files go with their temporary folder)."""
    from django.db import transaction
    from django.db.models import Q

    from archive.models import Copy, Instance, Rendition, Series, Study

    with transaction.atomic():
        studies = Study.objects.filter(
            # bench/query WADO: the studies this benchmark made before it left bench/query.
            Q(study_description__startswith=WADO_DESCRIPTION)
            | Q(study_description__startswith="bench/query WADO")
            | Q(study_description=RENDER_DESCRIPTION)
        )
        Rendition.objects.filter(instance__series__study__in=studies).delete()
        Copy.objects.filter(instance__series__study__in=studies).delete()
        Instance.objects.filter(series__study__in=studies).delete()
        Series.objects.filter(study__in=studies).delete()
        studies.delete()


def folder_import(dest: Path, env: dict[str, str], *, quiet: bool = False) -> None:
    """``manage.py import_dicom`` of the files in ``dest`` (the archive copies them), then ``dest``
    removed; quiet: its standard error discarded too."""
    subprocess.run(
        [PYTHON, "manage.py", "import_dicom", str(dest), "--facility", FACILITY, "--no-progress"],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if quiet else None,
    )
    for p in dest.iterdir():
        p.unlink()
    dest.rmdir()


@dataclass
class RenderImage:
    label: str
    url: str  # the instance's path under /dicomweb/
    path: Path  # its stored copy


def render_study_make(work: Path, env: dict[str, str], count: int) -> list[RenderImage]:
    """``count`` images from pydicom's bundled files that render in this process, as one study."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from archive import sample_data
    from archive.models import Copy, Rendition
    from archive.storage import tiers as storage
    from bench.render.run import bundled_images

    dest = work / "rendered-gen"
    dest.mkdir(parents=True)
    patient = sample_data.PatientInfo(patient_id=RENDER_PATIENT_ID, name="BENCH^RENDERED")
    study_uid = generate_uid()
    labels: dict[str, str] = {}
    # Those the renderer handles, decoded by the plugins installed (a few bundled files are broken on purpose).
    for path in bundled_images():
        if len(labels) >= count:
            break
        try:
            ds = dcmread(path)
            if "SOPClassUID" not in ds or not hasattr(ds, "file_meta"):
                continue
            copy = sample_data.fresh_copy(
                ds,
                patient=patient,
                study_uid=study_uid,
                series_uid=generate_uid(),
                series_number=len(labels) + 1,
                study_description=RENDER_DESCRIPTION,
            )
            out = dest / f"{copy.SOPInstanceUID}.dcm"
            copy.save_as(out, enforce_file_format=True)
            _render_here(out)
        except Exception:
            for leftover in dest.glob("*.dcm"):
                if leftover.stem not in labels:
                    leftover.unlink()
            continue
        labels[copy.SOPInstanceUID] = path.name
    folder_import(dest, env, quiet=True)
    # Rendered on demand: no stored preview may answer for the renderer.
    Rendition.objects.filter(instance__series__study__study_instance_uid=study_uid).delete()
    images = []
    rows = Copy.objects.filter(instance__series__study__study_instance_uid=study_uid).values_list(
        "tier", "path", "instance__sop_instance_uid", "instance__series__series_instance_uid"
    )
    for tier, relpath, sop, series in rows:
        url = f"/dicomweb/studies/{study_uid}/series/{series}/instances/{sop}"
        images.append(RenderImage(labels.get(sop, sop), url, storage.absolute_path(tier, relpath)))
    return sorted(images, key=lambda i: i.label)


def _render_here(path: Path) -> bytes:
    """The floor: one frame rendered in this process (pydicom + NumPy + Pillow), as the render worker does."""
    from archive.rendering.isolated import _render_path

    return _render_path(path=str(path), frame=1, media_type=JPEG, quality=90, window=None, viewport=None, max_size=None)


# --- WADO-RS ------------------------------------------------------------------------------


@dataclass
class WadoStudy:
    label: str
    uid: str
    files: list[Path]  # the stored copies, as the server reads them
    bytes: int


def wado_studies_make(work: Path, env: dict[str, str], specs: list[tuple[str, int, int]]) -> list[WadoStudy]:
    """Generate, import (``manage.py import_dicom``) and locate each (label, instances, pixels) study."""
    import numpy as np
    from pydicom.uid import generate_uid

    from archive import sample_data
    from archive.models import Copy
    from archive.storage import tiers as storage

    studies = []
    patient = sample_data.PatientInfo(patient_id=WADO_PATIENT_ID, name="BENCH^WADO")
    for label, count, pixels in specs:
        dest = work / f"wado-{count}-{pixels}"
        study_uid = generate_uid()
        template = sample_data.bundled_dataset(sample_data.CT)
        if pixels != template.Rows:
            # CT_small is 128x128; a real CT slice is 512x512 (~0.5 MB): same image, scaled up.
            factor = pixels // template.Rows
            arr = np.kron(template.pixel_array, np.ones((factor, factor), dtype=template.pixel_array.dtype))
            template.Rows, template.Columns = arr.shape
            template.PixelData = arr.tobytes()
        dest.mkdir(parents=True)
        per_series = count // 2 if count >= 100 else count
        for s in range(count // per_series):
            series_uid = generate_uid()
            for i in range(per_series):
                ds = sample_data.fresh_copy(
                    template,
                    patient=patient,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    instance_number=i + 1,
                    series_number=s + 1,
                    study_description=f"{WADO_DESCRIPTION} {label}",
                )
                ds.save_as(dest / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        folder_import(dest, env)
        copies = list(
            Copy.objects.filter(instance__series__study__study_instance_uid=study_uid).values_list(
                "tier", "path", "size"
            )
        )
        if len(copies) != count:
            raise RuntimeError(f"{label}: {len(copies)} instances indexed, {count} expected")
        files = [storage.absolute_path(tier, path) for tier, path, _ in copies]
        studies.append(WadoStudy(label, study_uid, files, sum(size for _, _, size in copies)))
    return studies


def wado_get(session: Any, port: int, token: str, uid: str, *, keep: bool = False) -> tuple[float, bytes | int, str]:
    """GET the whole study; (seconds, the body or its length, its content type)."""
    start = time.perf_counter()
    total = 0
    parts: list[bytes] = []
    with session.get(
        f"http://127.0.0.1:{port}/dicomweb/studies/{uid}",
        headers={"Authorization": f"Token {token}", "Accept": MULTIPART_DICOM},
        stream=True,
        timeout=300,
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code} {r.text[:200]}")
        for chunk in r.iter_content(chunk_size=1 << 20):
            total += len(chunk)
            if keep:
                parts.append(chunk)
        content_type = r.headers.get("Content-Type", "")
    return time.perf_counter() - start, (b"".join(parts) if keep else total), content_type


def _wado_length(session: Any, port: int, token: str, uid: str) -> tuple[float, int]:
    seconds, length, _ = wado_get(session, port, token, uid)
    assert isinstance(length, int)
    return seconds, length


def multipart_check(body: bytes, content_type: str, files: list[Path]) -> str:
    """'' when the body's parts are the stored files byte for byte (in any order), else what differs."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    got = sorted(part.get_payload(decode=True) for part in message.iter_parts())
    want = sorted(p.read_bytes() for p in files)
    if len(got) != len(want):
        return f"{len(got)} parts for {len(want)} stored files"
    if got != want:
        return "a part differs from its stored file"
    return ""


def wado_run(
    session: Any, web: Any, token: str, studies: list[WadoStudy], repeat: int
) -> dict[tuple[str, str], Download]:
    figures: dict[tuple[str, str], Download] = {}
    for round_ in range(repeat):
        for study in studies:
            for cache in ("cold", "warm") if round_ % 2 == 0 else ("warm", "cold"):
                f = figures.setdefault((study.label, cache), Download())
                f.round(
                    study.files,
                    cold=cache == "cold",
                    workers=web.workers(),
                    download=lambda uid=study.uid: _wado_length(session, web.port, token, uid),
                    size=study.bytes,
                )
    return figures


def _rate(mb_s: float) -> str:
    return f"{mb_s:.0f}" if mb_s >= 100 else f"{mb_s:.1f}"


def wado_print(studies: list[WadoStudy], figures: dict[tuple[str, str], Download], repeat: int) -> None:
    print(
        f"\nWADO-RS retrieve of a whole study ({MULTIPART_DICOM}), best of {repeat}; the floor reads the same "
        "stored files whole in this process (cat > /dev/null); cold: their pages evicted first"
    )
    print(
        f"{'study':<30}{'MB':>7}{'cache':>7}{'floor MB/s':>12}{'WADO MB/s':>11}{'ratio':>7}{'goal':>8}"
        f"{'worker peak RSS MB':>20}{'growth MB':>11}"
    )
    for study in studies:
        for cache in ("cold", "warm"):
            f = figures[(study.label, cache)]
            mb = study.bytes / 1e6
            head = f"{study.label:<30}{mb:>7.1f}{cache:>7}{_rate(mb / f.floor):>12}"
            if f.error:
                print(f"{head}  not measured: {f.error[:150]}")
                continue
            ratio = f.floor / f.seconds
            print(
                f"{head}{_rate(mb / f.seconds):>11}{ratio:>7.2f}{'>= 0.5':>8}"
                f"{f.peak_kib / 1024:>20.0f}{f.growth_kib / 1024:>11.1f}  {'ok' if ratio >= 0.5 else 'MISSED'}"
            )


# --- rendered -----------------------------------------------------------------------------


@dataclass
class RenderFigures:
    floor: list[float] = field(default_factory=list)  # per image, best
    server: list[float] = field(default_factory=list)  # http.client
    server_requests: list[float] = field(default_factory=list)  # requests, for reference
    errors: list[str] = field(default_factory=list)
    # What any request costs here, for reference (best): the process's liveness probe (no
    # database, no token): gunicorn, the middlewares and the client.
    live: float = float("inf")
    live_requests: float = float("inf")


class LeanClient:
    """GET over one keep-alive ``http.client`` connection, opened again when the server closed
    it (gunicorn's keep-alive timeout): a client that costs little, so that what is timed is
    the server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: Any = None

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        import http.client

        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request("GET", path, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.getheader("Content-Type") or "", r.read()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class RequestsClient:
    """The same GET through a ``requests`` session (what the rest of the benchmark uses)."""

    def __init__(self, session: Any, port: int) -> None:
        self.session = session
        self.port = port

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        r = self.session.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=60)
        return r.status_code, r.headers.get("Content-Type", ""), r.content


def render_get(client: LeanClient | RequestsClient, token: str, image: RenderImage) -> tuple[float, bytes]:
    """One ``/rendered`` with ``client``, timed."""
    start = time.perf_counter()
    status, content_type, body = client.get(
        f"{image.url}/rendered", {"Authorization": f"Token {token}", "Accept": JPEG}
    )
    seconds = time.perf_counter() - start
    if status != 200 or content_type != JPEG:
        raise RuntimeError(f"HTTP {status} {content_type} {body[:200]!r}")
    return seconds, body


def render_run(session: Any, port: int, token: str, images: list[RenderImage], repeat: int) -> RenderFigures:
    fig = RenderFigures()
    lean, with_session = LeanClient(port), RequestsClient(session, port)
    floors = [float("inf")] * len(images)
    best = {"lean": [float("inf")] * len(images), "requests": [float("inf")] * len(images)}
    # Untimed: each image once (the decoder plugins, the render workers, the files in the page cache).
    for image in images:
        _render_here(image.path)
        try:
            render_get(lean, token, image)
        except Exception as exc:
            fig.errors.append(f"{image.label}: {exc}")
    for round_ in range(repeat):
        for i, image in enumerate(images):
            steps = ("floor", "lean", "requests") if round_ % 2 == 0 else ("requests", "lean", "floor")
            for step in steps:
                if step == "floor":
                    t = time.perf_counter()
                    _render_here(image.path)
                    floors[i] = min(floors[i], time.perf_counter() - t)
                    continue
                try:
                    seconds, _ = render_get(lean if step == "lean" else with_session, token, image)
                except Exception:
                    continue
                best[step][i] = min(best[step][i], seconds)
    fig.floor, fig.server, fig.server_requests = floors, best["lean"], best["requests"]
    for _ in range(repeat * 4):
        statuses = []
        for client, attr in ((lean, "live"), (with_session, "live_requests")):
            start = time.perf_counter()
            statuses.append(client.get("/health/live/", {})[0])
            setattr(fig, attr, min(getattr(fig, attr), time.perf_counter() - start))
        if statuses != [200, 200]:
            fig.errors.append(f"liveness probe: HTTP {statuses[0]} / {statuses[1]}")
            break
    return fig


def render_print(images: list[RenderImage], fig: RenderFigures, repeat: int) -> None:
    done = [
        (i, f, s, q)
        for i, f, s, q in zip(images, fig.floor, fig.server, fig.server_requests, strict=True)
        if s != float("inf")
    ]
    print(
        f"\nOn-demand WADO-RS rendered (image/jpeg, quality 90, frame 1, no stored preview), {len(images)} images, "
        f"one client, best of {repeat} per image; the floor renders the same frame in this process "
        "(pydicom + NumPy + Pillow, the render worker's code); server = http.client, one keep-alive "
        "connection; the last column with requests"
    )
    print(f"{'image':<40}{'floor ms':>10}{'server ms':>11}{'ratio':>7}{'requests ms':>13}")
    for image, f, s, q in done:
        print(f"{image.label[:39]:<40}{f * 1000:>10.2f}{s * 1000:>11.2f}{f / s:>7.2f}{q * 1000:>13.2f}")
    for error in fig.errors:
        print(f"  failed: {error[:200]}")
    if not done:
        print("rendered: nothing measured")
        return
    floor_total = sum(f for _, f, _, _ in done)
    server_total = sum(s for _, _, s, _ in done)
    ratio = floor_total / server_total
    overhead = statistics.median(s - f for _, f, s, _ in done)
    requests_done = [(f, q) for _, f, _, q in done if q != float("inf")]
    print(
        f"{'all (' + str(len(done)) + ' images)':<40}{floor_total * 1000 / len(done):>10.2f}"
        f"{server_total * 1000 / len(done):>11.2f}{ratio:>7.2f}"
        f"{sum(q for _, q in requests_done) * 1000 / max(len(requests_done), 1):>13.2f}"
        f"   goal >= 0.5  {'ok' if ratio >= 0.5 else 'MISSED'}"
    )
    if requests_done:
        print(
            f"with requests as the client: ratio {sum(f for f, _ in requests_done) / sum(q for _, q in requests_done):.2f}"
        )
    print(f"(per image, mean; the server's median cost over the floor: {overhead * 1000:.2f} ms)")
    print(
        f"for reference, the cheapest request here (the liveness probe: gunicorn, the middlewares, "
        f"the client; no database, no token), best of {repeat * 4}: {fig.live * 1000:.2f} ms with http.client, "
        f"{fig.live_requests * 1000:.2f} ms with requests"
    )


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of each measurement (best kept)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (the Procfile's 2)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (the Procfile's 4)")
    parser.add_argument("--images", type=int, default=30, help="rendered images")
    parser.add_argument("--skip-wado", action="store_true")
    parser.add_argument("--skip-rendered", action="store_true")
    parser.add_argument("--skip-large", action="store_true", help="no 512x512 (~260 MB) retrieve study")
    parser.add_argument("--smoke", action="store_true", help="every part once at its smallest (the test suite)")
    args = parser.parse_args()
    wado_specs = [("500 x CT_small (39 KB)", 500, 128)]
    if not args.skip_large:
        wado_specs.append(("500 x CT 512x512 (513 KB)", 500, 512))
    if args.smoke:
        args.repeat, args.workers, args.images = 1, 1, 4
        args.skip_wado = args.skip_rendered = False
        wado_specs = [("4 x CT_small (39 KB)", 4, 128), ("4 x CT 512x512 (513 KB)", 4, 512)]
    name = urlparse(args.database_url).path.lstrip("/")
    if not name or name == "test" or name.startswith("test_"):
        sys.exit(f"refusing database {name!r}: the test suites own test and test_*")
    warnings.simplefilter("ignore")
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pacs-bench-retrieve-") as tmp:
        work = Path(tmp)
        env = server_env(
            args.database_url,
            work / "var",
            SECURE_COOKIES="0",
            SECRET_KEY=os.environ.get("SECRET_KEY") or secrets.token_urlsafe(50),
        )
        database_ready(args.database_url)
        bench_studies_delete()
        token, _ = bench_accounts()
        studies: list[WadoStudy] = []
        images: list[RenderImage] = []
        if not args.skip_wado:
            print("generating and importing the retrieve studies", file=sys.stderr, flush=True)
            studies = wado_studies_make(work, env, wado_specs)
        if not args.skip_rendered:
            print("making and importing the rendered study", file=sys.stderr, flush=True)
            images = render_study_make(work, env, args.images)
        import requests

        web = web_start(env, work / "logs", workers=args.workers, threads=args.threads)
        try:
            session = requests.Session()
            if studies:
                # One untimed retrieve of each, checked byte for byte against the stored files.
                for study in studies:
                    try:
                        _s, body, content_type = wado_get(session, web.port, token, study.uid, keep=True)
                        assert isinstance(body, bytes)
                        problem = multipart_check(body, content_type, study.files)
                    except Exception as exc:
                        problem = f"{type(exc).__name__}: {exc}"
                    if problem:
                        failed.append(f"WADO-RS {study.label}: {problem}")
                figures = wado_run(session, web, token, studies, args.repeat)
                wado_print(studies, figures, args.repeat)
                failed += [f"WADO-RS {label} ({cache}): {f.error}" for (label, cache), f in figures.items() if f.error]
            if images:
                fig = render_run(session, web.port, token, images, args.repeat)
                render_print(images, fig, args.repeat)
                failed += [f"rendered {e}" for e in fig.errors]
        finally:
            web.stop()
            bench_studies_delete()
        print(f"\n{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end")
    if failed:
        for line in failed:
            print(f"FAILED: {line[:300]}")
        if args.smoke:
            sys.exit(1)


if __name__ == "__main__":
    main()
