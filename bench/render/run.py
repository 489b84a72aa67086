"""Rendering benchmark: archive.rendering against DCMTK dcmj2pnm and a naive pydicom + Pillow conversion.

Cases (each rendered as JPEG, quality 90, every frame):

* a 512x512 16-bit CT (pydicom's CT_small upscaled, soft-tissue window 40/400);
* a 4096x3328 mammogram (synthesised: MONOCHROME1, 16 bits allocated, 12 stored, with a window);
* a 100-frame 640x480 colour ultrasound clip (synthesised, JPEG baseline 4:2:2 encoded by Pillow,
  YBR_FULL_422);
* each transfer syntax in ``archive.sample_data.COMPRESSED`` (the bundled files).

For each: ms per image (and images/s) of ``render_frame`` in this process (header read, then
each frame rendered from the file), of ``render_isolated`` (the same in its worker pool), of the
naive conversion (``pixel_array``, min/max scaled to 0..255, Pillow), and of ``dcmj2pnm +oj`` run
once per file as its users run it (``+Wi 1`` when the file has a window, else ``+Wm``; ``+Fa`` for
a multi-frame file); the best of ``--repeat``. Then the peak memory of ``render_frame`` per case,
measured in a fresh subprocess, against one decoded frame's size. Last, how many of pydicom's
bundled image files each renders.

Goals (issue 4): faster than dcmj2pnm per image on every row, peak memory no more than 3x the
decoded image, every bundled image rendered where it can be.
Run: ``.venv/bin/python bench/render/run.py [--repeat R] [--skip-bundled]``.
This is a benchmark, not a test: it asserts nothing. ``--smoke`` runs every part at its smallest
(one timed run, a 1024x832 mammogram, a 2-frame clip, three transfer syntaxes, four bundled
files) in seconds and exits 1 when ours or isolated fails a case: the test suite runs it
(``tests/bench/test_benchmarks.py``) so that the benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")  # render_isolated reads its limits there

PYTHON = sys.executable
QUALITY = 90
DEFLATED = "1.2.840.10008.1.2.1.99"
# Large blocks come from mmap and go back to the system when freed, so that the resident size
# before a render is not inflated by the heap a previous one left behind (glibc's dynamic
# threshold would otherwise keep freed frames resident and hide them from the next peak).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


@dataclass
class Case:
    name: str
    path: Path
    frames: int
    decoded: int  # bytes of one decoded frame
    windowed: bool  # the file carries a VOI window


# --- the synthetic files ---------------------------------------------------------------------


def _new_dataset(sop_class: str, transfer_syntax: str) -> Any:
    """An instance with fresh UIDs and only the patient, study and series attributes: pixels to add."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Render", "BENCHRENDER", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "090000", "", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    return ds


def make_ct(dest: Path) -> Path:
    import numpy as np
    from PIL import Image
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from archive.sample_data import PatientInfo, bundled_path, fresh_copy

    small = dcmread(bundled_path("CT_small.dcm"))
    stored = small.pixel_array.astype(np.int32)
    big = np.asarray(Image.fromarray(stored).resize((512, 512), Image.Resampling.BICUBIC))
    big = np.clip(big, -32768, 32767).astype("<i2")
    ds = fresh_copy(
        small,
        patient=PatientInfo(patient_id="BENCHRENDER"),
        study_uid=generate_uid(),
        series_uid=generate_uid(),
    )
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = big.shape
    ds.PixelSpacing = [0.7, 0.7]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = [40, 400], [400, 1500]  # soft tissue, then a bone preset
    ds.add_new("PixelData", "OW", big.tobytes())
    path = dest / "ct-512.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def make_mammogram(dest: Path, rows: int = 4096, cols: int = 3328) -> Path:
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian

    rng = np.random.default_rng(4)
    y, x = np.ogrid[0:rows, 0:cols]
    # A breast against the chest wall (left edge): dense in the middle, fatty at the skin line.
    r = np.sqrt(((y - rows / 2) / (rows * 0.45)) ** 2 + (x / (cols * 0.8)) ** 2)
    tissue = r < 1
    # MONOCHROME1: high stored values display dark; air (no attenuation) is the highest.
    values = np.full((rows, cols), 3900.0, dtype=np.float32)
    values[tissue] = (1400 + 900 * r[tissue] ** 2).astype(np.float32)
    values += rng.normal(0, 40, size=(rows, cols)).astype(np.float32)
    pixels = np.clip(values, 0, 4095).astype("<u2")
    ds = _new_dataset("1.2.840.10008.5.1.4.1.1.1.2", ExplicitVRLittleEndian)  # Digital Mammography, presentation
    ds.Modality = "MG"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.PresentationLUTShape = "INVERSE"  # PS3.3 C.8.11.7.1.1: INVERSE with MONOCHROME1
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.07, 0.07]
    ds.WindowCenter, ds.WindowWidth = 2200, 1800
    ds.VOILUTFunction = "LINEAR"
    ds.add_new("PixelData", "OW", pixels.tobytes())
    path = dest / f"mammogram-{rows}x{cols}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def make_us_clip(dest: Path, frames: int = 100) -> Path:
    import numpy as np
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    rows, cols = 480, 640
    rng = np.random.default_rng(5)
    y, x = np.ogrid[0:rows, 0:cols]
    angle = np.arctan2(x - cols / 2, y + 40)
    depth = np.hypot(x - cols / 2, y + 40)
    fan = (np.abs(angle) < 0.7) & (depth < rows + 20)
    encoded = []
    for i in range(frames):
        speckle = rng.rayleigh(45, size=(rows, cols)) * np.exp(-depth / 900)
        grey = np.where(fan, np.clip(speckle + 20 * np.sin(depth / 25 + i / 5), 0, 255), 0).astype(np.uint8)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        # A colour Doppler box whose flow changes with the cardiac cycle.
        flow = np.sin(i / 8 + x[:, 200:360] / 40) * np.exp(-(((y[180:300] - 240) / 50) ** 2))
        box = rgb[180:300, 200:360]
        box[..., 0] = np.where(flow > 0.3, (255 * flow).clip(0, 255), box[..., 0])
        box[..., 2] = np.where(flow < -0.3, (-255 * flow).clip(0, 255), box[..., 2])
        buffer = io.BytesIO()
        # Pillow writes YCbCr with 2x1 chroma subsampling: YBR_FULL_422 (PS3.5 8.2.1).
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=85, subsampling=1)
        encoded.append(buffer.getvalue())
    ds = _new_dataset("1.2.840.10008.5.1.4.1.1.3.1", JPEGBaseline8Bit)  # US Multi-frame
    ds.Modality = "US"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.FrameTime, ds.CineRate = 33.3, 30
    ds.LossyImageCompression = "01"
    ds.add_new("PixelData", "OB", encapsulate(encoded, has_bot=True))
    ds["PixelData"].is_undefined_length = True
    path = dest / f"us-clip-{frames}x640x480.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def describe(name: str, path: Path) -> Case:
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True)
    frames = frame_count(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    decoded = int(ds.Rows) * int(ds.Columns) * samples * ((int(ds.BitsAllocated) + 7) // 8)
    return Case(name, path, frames, decoded, "WindowCenter" in ds and "VOILUTSequence" not in ds)


def build_cases(
    dest: Path, *, mammogram: tuple[int, int], clip_frames: int, syntaxes: list[str] | None = None
) -> list[Case]:
    """The three synthesised cases, then the bundled file of each transfer syntax (or of ``syntaxes``)."""
    from archive.sample_data import COMPRESSED, bundled_path

    rows, cols = mammogram
    cases = [
        describe("CT 512x512 16-bit", make_ct(dest)),
        describe(f"MG {rows}x{cols} MONOCHROME1", make_mammogram(dest, rows, cols)),
        describe(f"US clip {clip_frames}x640x480 JPEG", make_us_clip(dest, clip_frames)),
    ]
    names = {
        "1.2.840.10008.1.2.4.50": "JPEG baseline",
        "1.2.840.10008.1.2.4.51": "JPEG extended",
        "1.2.840.10008.1.2.4.70": "JPEG lossless SV1",
        "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
        "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
        "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
        "1.2.840.10008.1.2.4.91": "JPEG 2000",
        "1.2.840.10008.1.2.5": "RLE lossless",
        "1.2.840.10008.1.2.1.99": "Deflated",
        "1.2.840.10008.1.2.2": "Explicit VR big endian",
        "1.2.840.10008.1.2": "Implicit VR little endian",
    }
    for uid, filename in COMPRESSED.items():
        if syntaxes is not None and uid not in syntaxes:
            continue
        cases.append(describe(names.get(uid, uid), bundled_path(filename)))
    return cases


# --- the renderers ---------------------------------------------------------------------------


def frame_count(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):  # badVR.dcm's "1A"
        return 1


def render_ours(path: Path, frames: range | None = None) -> int:
    """Every frame (or those asked) through ``render_frame``, as the WADO-RS view calls it."""
    from pydicom import dcmread

    from archive.rendering.pipeline import JPEG, render_frame

    with open(path, "rb") as fh:
        ds = dcmread(fh, stop_before_pixels=True)
        source: Any = fh
        if str(ds.file_meta.get("TransferSyntaxUID", "")) == DEFLATED:
            # The view passes the inflated data set, no source, for a deflated file.
            ds, source = dcmread(path), None
        total = 0
        for frame in frames or range(1, frame_count(ds) + 1):
            total += len(render_frame(ds=ds, source=source, frame=frame, media_type=JPEG, quality=QUALITY))
    return total


def _django_setup() -> None:
    import django

    django.setup()


def render_isolated_all(path: Path) -> int:
    from pydicom import dcmread

    from archive.rendering.isolated import render_isolated
    from archive.rendering.pipeline import JPEG

    ds = dcmread(path, stop_before_pixels=True)
    total = 0
    for frame in range(1, frame_count(ds) + 1):
        out = render_isolated(
            path=path, frame=frame, media_type=JPEG, quality=QUALITY, window=None, viewport=None, max_size=None
        )
        total += len(out)
    return total


def render_naive(path: Path, first_only: bool = False) -> int:
    """``pixel_array``, each frame's min..max stretched to 0..255, Pillow's JPEG."""
    import numpy as np
    from PIL import Image
    from pydicom import dcmread

    ds = dcmread(path, force=True)
    arr = ds.pixel_array
    count = frame_count(ds)
    frames = [arr] if count <= 1 else (arr[i] for i in range(1 if first_only else count))
    total = 0
    for frame in frames:
        values = frame.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = ((values - low) * (255.0 / (high - low or 1))).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(scaled).save(buffer, format="JPEG", quality=QUALITY)
        total += len(buffer.getvalue())
    return total


def dcmj2pnm_command(path: Path, out: Path, windowed: bool, all_frames: bool) -> list[str]:
    command = ["dcmj2pnm", "+oj", "+Jq", str(QUALITY), *(["+Wi", "1"] if windowed else ["+Wm"])]
    return [*command, *(["+Fa"] if all_frames else []), str(path), str(out)]


def render_dcmj2pnm(case: Case, out_dir: Path) -> str | None:
    """One dcmj2pnm process for the file; None when it rendered, else its complaint."""
    out = out_dir / "out.jpg"
    done = subprocess.run(
        dcmj2pnm_command(case.path, out, case.windowed, case.frames > 1), capture_output=True, text=True, timeout=120
    )
    written = list(out_dir.glob("out*.jpg"))
    for p in written:
        p.unlink()
    if done.returncode != 0 or not written:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("E:")]  # the cause; "F:" is only the outcome
        return (errors or lines or [f"exit status {done.returncode}"])[0]
    return None


def best_of(repeat: int, work: Any) -> float | str:
    """Best wall time of ``repeat`` calls after an untimed one, or the error's text when it fails.

    The untimed call loads what a long-running worker has loaded already: the decoder plugin
    of the transfer syntax, Pillow's encoder, render_isolated's pool, the file in the page cache.
    """
    best = float("inf")
    for attempt in range(repeat + 1):
        start = time.perf_counter()
        try:
            result = work()
        except Exception as exc:  # a renderer that refuses a file is a figure here, not a crash
            return f"{type(exc).__name__}: {exc}"
        if isinstance(result, str):
            return result
        if attempt:
            best = min(best, time.perf_counter() - start)
    return best


# --- peak memory, in a fresh process ---------------------------------------------------------


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(path: Path) -> None:
    """Print the peak RSS and traced (numpy) peak of rendering every frame of ``path``, as JSON."""
    import resource
    import tracemalloc

    import numpy  # noqa: F401  (imports and codecs loaded before the baseline)
    from PIL import Image, JpegImagePlugin  # noqa: F401

    render_ours(path, range(1, 2))  # loads the decoder plugins and Pillow's encoder
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (the peak RSS) to the current RSS
        before = _proc_status_kb("VmRSS")
        render_ours(path)
        peak_rss = (_proc_status_kb("VmHWM") - before) * 1024
        how = "VmHWM"
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        render_ours(path)
        peak_rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        how = "ru_maxrss"
    gc.collect()
    tracemalloc.start()
    render_ours(path)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"rss": peak_rss, "traced": traced, "how": how}))


def measure_memory(case: Case) -> dict[str, Any] | str:
    done = subprocess.run(
        [PYTHON, __file__, "--memory-child", str(case.path)],
        capture_output=True,
        text=True,
        env={**os.environ, **MALLOC_ENV},
        timeout=300,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit status {done.returncode}"
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --- pydicom's bundled image files -----------------------------------------------------------


def bundled_images() -> list[Path]:
    """Bundled files (not the DICOMDIR fixtures) with pixel data; nothing is downloaded."""
    import pydicom.data
    from pydicom import dcmread

    folder = Path(pydicom.data.__file__).parent / "test_files"
    found = []
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = dcmread(path, force=True, specific_tags=["PixelData", "FloatPixelData", "DoubleFloatPixelData"])
        except Exception:
            continue
        if any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            found.append(path)
    return found


def count_child(kind: str, paths: list[str]) -> None:
    """Render frame 1 of each file; one JSON line each, flushed, so a crash names its file."""
    import logging
    import warnings

    if kind == "isolated":
        _django_setup()
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    for name in paths:
        path = Path(name)
        try:
            if kind == "ours":
                render_ours(path, range(1, 2))
            elif kind == "isolated":
                from archive.rendering.isolated import render_isolated
                from archive.rendering.pipeline import JPEG

                render_isolated(
                    path=path, frame=1, media_type=JPEG, quality=QUALITY, window=None, viewport=None, max_size=None
                )
            else:
                render_naive(path, first_only=True)
            result = {"file": path.name, "ok": True}
        except Exception as exc:
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            result = {"file": path.name, "ok": False, "reason": " ".join(str(reason).split())[:160]}
        print(json.dumps(result), flush=True)


def count_python(kind: str, paths: list[Path]) -> dict[str, str | None]:
    """``count_child`` in a subprocess, restarted after the file it died on (a decoder's crash)."""
    results: dict[str, str | None] = {}
    rest = [str(p) for p in paths]
    while rest:
        proc = subprocess.run(
            [PYTHON, __file__, "--count-child", kind, *rest], capture_output=True, text=True, timeout=300
        )
        for line in proc.stdout.splitlines():
            item = json.loads(line)
            results[item["file"]] = None if item["ok"] else item["reason"]
        rest = [p for p in rest if Path(p).name not in results]
        if rest:
            results[Path(rest[0]).name] = f"the process died (exit status {proc.returncode})"
            rest = rest[1:]
    return results


def count_dcmj2pnm(paths: list[Path], out_dir: Path) -> dict[str, str | None]:
    from pydicom import dcmread

    results = {}
    for path in paths:
        try:
            ds = dcmread(path, force=True, stop_before_pixels=True)
            windowed = "WindowCenter" in ds
        except Exception:
            windowed = False
        case = Case(path.name, path, 1, 0, windowed)
        try:
            results[path.name] = render_dcmj2pnm(case, out_dir)
        except subprocess.TimeoutExpired:
            results[path.name] = "timed out"
    return results


# --- the report ------------------------------------------------------------------------------


def fmt_ms(seconds: float | str, frames: int) -> str:
    return "fails" if isinstance(seconds, str) else f"{seconds / frames * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per renderer and case; the best is kept")
    parser.add_argument("--skip-bundled", action="store_true", help="leave out the count of bundled files")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every part at its smallest, in seconds; exit 1 when ours or isolated fails (the test suite)",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--count-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(Path(args.memory_child))
        return
    if args.count_child:
        count_child(args.count_child[0], args.count_child[1:])
        return
    if shutil.which("dcmj2pnm") is None:
        sys.exit("DCMTK's dcmj2pnm is needed: apt-get install dcmtk")
    import logging
    import warnings

    mammogram, clip_frames, syntaxes, bundled_limit = (4096, 3328), 100, None, None
    if args.smoke:
        # One timed run, the two synthesised giants shrunk, three transfer syntaxes (an
        # encapsulated one, one dcmj2pnm cannot decode, the deflated one that render_ours
        # inflates first), four bundled files: every renderer, every branch of the report.
        args.repeat, args.skip_bundled = 1, False
        mammogram, clip_frames, bundled_limit = (1024, 832), 2, 4
        syntaxes = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", DEFLATED]
    _django_setup()
    warnings.simplefilter("ignore")  # pydicom's complaints about odd bundled files
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # each plugin's refusal of 12-bit JPEG, logged
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pacs-bench-render-") as tmp:
        root = Path(tmp)
        (root / "dcmj2pnm").mkdir()
        cases = build_cases(root, mammogram=mammogram, clip_frames=clip_frames, syntaxes=syntaxes)
        for case in cases:
            print(f"timing {case.name}", file=sys.stderr, flush=True)
            ours = best_of(args.repeat, lambda c=case: render_ours(c.path))
            iso = best_of(args.repeat, lambda c=case: render_isolated_all(c.path))
            naive = best_of(args.repeat, lambda c=case: render_naive(c.path))
            dcmtk = best_of(args.repeat, lambda c=case: render_dcmj2pnm(c, root / "dcmj2pnm"))
            memory = measure_memory(case)
            rows.append((case, ours, iso, naive, dcmtk, memory))
        bundled: dict[str, dict[str, str | None]] = {}
        if not args.skip_bundled:
            print("counting bundled files", file=sys.stderr, flush=True)
            paths = bundled_images()[:bundled_limit]
            bundled["ours"] = count_python("ours", paths)
            bundled["isolated"] = count_python("isolated", paths)
            bundled["naive"] = count_python("naive", paths)
            bundled["dcmj2pnm"] = count_dcmj2pnm(paths, root / "dcmj2pnm")

    print(
        f"\nRendering benchmark: JPEG quality {QUALITY}, every frame, ms per image "
        f"(best of {args.repeat} after a warm-up)"
    )
    header = f"{'case':<27}{'frames':>6}{'MB/img':>8}{'ours img/s':>11}{'ours':>8}"
    header += f"{'isolated':>9}"
    header += f"{'naive':>8}{'dcmj2pnm':>9}{'ours/dcmtk':>11}{'peak/img':>9}  verdict"
    print(header)
    failures = []
    broken = []  # what the archive's own renderers failed: the smoke run's exit status
    for case, ours, iso, naive, dcmtk, memory in rows:
        rate = "-" if isinstance(ours, str) else f"{case.frames / ours:.1f}"
        line = f"{case.name:<27}{case.frames:>6}{case.decoded / 1e6:>8.2f}{rate:>11}{fmt_ms(ours, case.frames):>8}"
        line += f"{fmt_ms(iso, case.frames):>9}"
        ratio = "-" if isinstance(ours, str) or isinstance(dcmtk, str) else f"{ours / dcmtk:.2f}"
        peak = memory["rss"] / case.decoded if isinstance(memory, dict) else None
        line += f"{fmt_ms(naive, case.frames):>8}{fmt_ms(dcmtk, case.frames):>9}{ratio:>11}"
        line += f"{'-' if peak is None else f'{peak:.1f}x':>9}"
        verdict = []
        if isinstance(ours, str):
            verdict.append("ours FAILS")
        elif isinstance(dcmtk, str):
            verdict.append("speed n/a (dcmj2pnm fails)")
        else:
            verdict.append("faster" if ours < dcmtk else "SLOWER")
        if peak is None:
            verdict.append("memory ?")
        else:
            mb = memory["rss"] / 1e6 if isinstance(memory, dict) else 0
            verdict.append(f"memory ok ({mb:.1f} MB)" if peak <= 3 else f"MEMORY > 3x ({mb:.1f} MB)")
        print(f"{line}  {', '.join(verdict)}")
        for who, result in (("ours", ours), ("isolated", iso), ("naive", naive), ("dcmj2pnm", dcmtk)):
            if isinstance(result, str):
                failures.append(f"  {case.name}, {who}: {result[:150]}")
                if who in ("ours", "isolated"):
                    broken.append(f"{case.name}, {who}")
        if isinstance(memory, str):
            broken.append(f"{case.name}, memory: {memory[:150]}")
    compared = [(o, d) for _, o, _, _, d, _ in rows if not isinstance(o, str) and not isinstance(d, str)]
    faster = sum(1 for o, d in compared if o < d)  # type: ignore[operator]
    within = sum(1 for c, *_, m in rows if isinstance(m, dict) and m["rss"] <= 3 * c.decoded)
    print(
        f"goals: faster than dcmj2pnm on {faster} of the {len(compared)} rows it renders; "
        f"peak memory within 3x the decoded frame on {within} of {len(rows)} rows"
    )
    print(
        "peak/img: render_frame's peak RSS over every frame of the case, in a fresh process, "
        "above its RSS after imports and a warm-up render, over one decoded frame"
    )
    print("tracemalloc peak (numpy and Python objects, not Pillow's buffers), over one decoded frame:")
    print(
        "  "
        + "; ".join(
            f"{case.name}: {memory['traced'] / case.decoded:.1f}x" if isinstance(memory, dict) else f"{case.name}: -"
            for case, *_, memory in rows
        )
    )
    if failures:
        print("failures:")
        print("\n".join(failures))
    if bundled:
        total = len(next(iter(bundled.values())))
        print(f"\npydicom's bundled image files rendered (frame 1), of {total} with pixel data:")
        for who, results in bundled.items():
            ok = sum(1 for r in results.values() if r is None)
            print(f"  {who:<9} {ok:>3} of {total}")
        for who, results in bundled.items():
            for name, reason in results.items():
                if reason is not None:
                    print(f"  {who} fails {name}: {reason[:140]}")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    for who in ("ours", "isolated"):
        if bundled and not any(reason is None for reason in bundled[who].values()):
            broken.append(f"bundled files, {who}: none rendered")
    if args.smoke and broken:
        # Every case above renders today: a failure of ours here is a benchmark (or a renderer)
        # that no longer runs, which the full-size run would only print as "fails".
        sys.exit(f"smoke run: failed {'; '.join(broken)}")


if __name__ == "__main__":
    main()
