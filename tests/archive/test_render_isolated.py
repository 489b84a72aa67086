"""Rendering in worker processes: what a crash, a hang or a runaway allocation in a
decoder becomes, and a fuzz test over damaged copies of the bundled compressed files."""

from __future__ import annotations

import collections
import hashlib
import io
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from archive.rendering import isolated as isolation
from archive.rendering.isolated import render_isolated, run_isolated
from archive.rendering.pipeline import PNG, NoImage, Window
from archive.sample_data import COMPRESSED, CT, MR, SR, bundled_path


class _Panic(BaseException):
    """What pyo3 raises for a Rust panic: not an Exception."""


def _panic() -> None:
    raise _Panic("called `Result::unwrap()` on an `Err` value")


def _spin() -> None:
    while True:
        pass


def test_a_good_file_renders() -> None:
    data = render_isolated(path=bundled_path(MR))
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (64, 64)
    png = render_isolated(path=bundled_path(CT), media_type=PNG, window=Window(40, 400))
    assert Image.open(io.BytesIO(png)).format == "PNG"
    # The parameters reach the renderer in the worker.
    assert png != render_isolated(path=bundled_path(CT), media_type=PNG, window=Window(40, 80))
    thumb = Image.open(io.BytesIO(render_isolated(path=bundled_path(CT), max_size=32)))
    assert max(thumb.size) == 32


def test_each_compressed_sample_renders() -> None:
    for ts, name in COMPRESSED.items():
        image = Image.open(io.BytesIO(render_isolated(path=bundled_path(name))))
        assert image.format == "JPEG" and min(image.size) > 1, ts


def test_an_object_without_pixels_gives_the_reason() -> None:
    with pytest.raises(NoImage) as failure:
        render_isolated(path=bundled_path(SR))
    assert "no pixel data" in failure.value.reason


def test_a_file_that_is_not_dicom_gives_no_image(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"not a DICOM file at all" * 10)
    with pytest.raises(NoImage):
        render_isolated(path=path)


def test_a_frame_out_of_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="frame 2 does not exist"):
        render_isolated(path=bundled_path(MR), frame=2)


def test_a_jpeg_on_which_the_decoder_aborts_costs_one_render(tmp_path: Path) -> None:
    """Found by the fuzz test below: one marker byte of the bundled JPEG baseline sample
    changed (0xFF -> 0x7F) makes GDCM 3.2.6 throw a C++ exception nobody catches
    (gdcmJPEGBITSCodec.hxx:782), and std::terminate aborts the process. In-process,
    that was the web worker."""
    original = bundled_path(COMPRESSED["1.2.840.10008.1.2.4.50"]).read_bytes()
    assert original[1938] == 0xFF
    damaged = tmp_path / "damaged.dcm"
    damaged.write_bytes(original[:1938] + b"\x7f" + original[1939:])
    with pytest.raises(NoImage) as failure:
        render_isolated(path=damaged)
    assert failure.value.reason.startswith("the ")
    assert Image.open(io.BytesIO(render_isolated(path=bundled_path(MR)))).size == (64, 64)


@pytest.mark.parametrize(
    ("fn", "args"),
    [(os._exit, (1,)), (signal.raise_signal, (signal.SIGSEGV,)), (os.abort, ()), (_panic, ())],
    ids=["os._exit", "SIGSEGV", "abort", "panic"],
)
def test_a_worker_that_crashes_gives_no_image_and_the_next_render_works(fn, args, caplog) -> None:
    before = run_isolated(os.getpid)
    with pytest.raises(NoImage) as failure:
        run_isolated(fn, *args)
    assert failure.value.reason == isolation.CRASHED
    assert any(r.levelname == "ERROR" for r in caplog.records)
    assert Image.open(io.BytesIO(render_isolated(path=bundled_path(MR)))).size == (64, 64)
    assert run_isolated(os.getpid) != before  # the crashed worker was replaced


def test_a_render_that_takes_too_long_is_cut_and_the_pool_recovers() -> None:
    pid = run_isolated(os.getpid)
    started = time.monotonic()
    with pytest.raises(NoImage) as failure:
        run_isolated(time.sleep, 60, timeout=0.5)
    assert failure.value.reason == isolation.TOO_LONG
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    assert Image.open(io.BytesIO(render_isolated(path=bundled_path(MR)))).size == (64, 64)


def test_an_endless_loop_is_cut() -> None:
    with pytest.raises(NoImage) as failure:
        run_isolated(_spin, timeout=0.5)
    assert failure.value.reason == isolation.TOO_LONG
    assert render_isolated(path=bundled_path(MR))


def test_the_memory_cap_gives_no_image(settings) -> None:
    settings.PACS_RENDER_MEMORY_LIMIT = 1024 * 1024 * 1024
    with pytest.raises(NoImage) as failure:
        run_isolated(bytearray, 1536 * 1024 * 1024)
    assert failure.value.reason == isolation.OUT_OF_MEMORY
    # Under the cap an allocation succeeds: the limit is the setting, not something lower.
    assert run_isolated(len, b"x" * 1000) == 1000
    assert render_isolated(path=bundled_path(MR))


def test_a_decode_over_the_memory_cap_gives_no_image(settings, tmp_path: Path) -> None:
    """A real render whose decoded frame alone (6000 x 6000 x 16 bits: 72 MB) exceeds the cap."""
    path = tmp_path / "large.dcm"
    _write_image(path, np.random.default_rng(1).integers(0, 4096, (6000, 6000), dtype=np.uint16))
    baseline = run_isolated(_address_space)
    settings.PACS_RENDER_MEMORY_LIMIT = baseline + 64 * 1024 * 1024
    with pytest.raises(NoImage) as failure:
        render_isolated(path=path)
    assert failure.value.reason == isolation.OUT_OF_MEMORY
    settings.PACS_RENDER_MEMORY_LIMIT = baseline + 1024 * 1024 * 1024
    image = Image.open(io.BytesIO(render_isolated(path=path)))
    assert image.format == "JPEG" and image.width == image.height >= 1000


def test_renders_from_several_threads_share_the_pool(settings) -> None:
    settings.PACS_RENDER_WORKERS = 2
    results: list[bytes | Exception] = []

    def render() -> None:
        try:
            results.append(render_isolated(path=bundled_path(CT)))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=render) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8 and len(set(results)) == 1 and isinstance(results[0], bytes)
    pool = isolation._current
    assert pool is not None and len(pool.idle) <= 2


def test_a_caller_waits_for_a_free_worker_at_most_its_timeout_then_hears_busy(settings) -> None:
    """Every worker busy for longer than a render may take: the next caller is told so
    (503 at the edges), instead of waiting for ever; the busy renders are not disturbed."""
    from tests.conftest import render_workers_busy

    settings.PACS_RENDER_WORKERS = 1
    with render_workers_busy(1.5):  # checks, as it ends, that the busy render finished undisturbed
        started = time.monotonic()
        with pytest.raises(isolation.RenderBusy) as refused:
            run_isolated(os.getpid, timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 1.4
        assert refused.value.code == "render_busy" and "no render worker free" in refused.value.message
    pool = isolation._current
    assert pool is not None and pool.slots._value == 1  # type: ignore[attr-defined]
    assert run_isolated(os.getpid) > 0


def test_a_task_that_cannot_be_handed_over_gives_its_worker_and_slot_back(settings, monkeypatch) -> None:
    settings.PACS_RENDER_WORKERS = 1
    pid = run_isolated(os.getpid)

    def unpicklable(self, *args: object) -> bool:  # type: ignore[no-untyped-def]
        raise TypeError("cannot pickle '_thread.lock' object")

    with monkeypatch.context() as patched:
        patched.setattr(isolation._Worker, "send", unpicklable)
        with pytest.raises(TypeError):
            run_isolated(os.getpid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # what it had received was unknown: killed, not given back
    assert run_isolated(os.getpid) not in (pid, 0)  # the slot is free again: no wait


def test_a_retired_worker_s_successor_is_started_before_the_next_render_needs_it(settings, monkeypatch) -> None:
    """A worker retires after TASKS_PER_WORKER renders; the render after that does not
    pay a worker's start (its imports: a few tenths of a second): the successor was
    started in the background when the old one retired."""
    from tests.conftest import wait_until

    settings.PACS_RENDER_WORKERS = 1
    monkeypatch.setattr(isolation, "TASKS_PER_WORKER", 3)
    isolation.shutdown()
    old = run_isolated(os.getpid)  # task 1 (the worker's start is paid here)
    assert run_isolated(os.getpid) == old  # task 2
    assert run_isolated(os.getpid) == old  # task 3: retired as it is given back
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)
    pool = isolation._current
    assert pool is not None
    wait_until(lambda: len(pool.idle) == 1, timeout=60, what="the successor started")
    successor = pool.idle[0].proc.pid
    started = time.monotonic()
    assert run_isolated(os.getpid) == successor
    assert time.monotonic() - started < 0.15  # no imports waited for
    # Shut down while a successor starts: it is not kept, and its process ends.
    for _ in range(2):
        run_isolated(os.getpid)
    isolation.shutdown()
    wait_until(lambda: not any(t.name == "render-worker-successor" for t in threading.enumerate()), what="starter")
    assert pool.idle == []


def test_a_hang_and_a_crash_cost_only_their_own_renders(settings) -> None:
    """Unlike a ProcessPoolExecutor, which a dead worker breaks for every caller, one worker
    dying or hanging leaves the renders in the other workers alone."""
    settings.PACS_RENDER_WORKERS = 4
    outcomes: dict[str, object] = {}

    def attempt(label: str, fn, *args, **kwargs) -> None:
        try:
            outcomes[label] = run_isolated(fn, *args, **kwargs)
        except NoImage as exc:
            outcomes[label] = exc.reason

    jobs = [
        threading.Thread(target=attempt, args=("hang", time.sleep, 60), kwargs={"timeout": 12}),
        threading.Thread(target=attempt, args=("crash", signal.raise_signal, signal.SIGSEGV)),
        threading.Thread(target=attempt, args=("slow", time.sleep, 0.5)),
    ]
    for job in jobs:
        job.start()
    started = time.monotonic()
    renders = [render_isolated(path=bundled_path(MR)) for _ in range(5)]
    # Not waiting for the hung worker (killed after 12 s); five renders take well under a
    # second on a quiet machine, a few on a loaded one.
    assert time.monotonic() - started < 10
    for job in jobs:
        job.join(40)
    assert outcomes == {"hang": isolation.TOO_LONG, "crash": isolation.CRASHED, "slow": None}
    assert all(Image.open(io.BytesIO(data)).size == (64, 64) for data in renders)


def test_a_forked_process_starts_its_own_pool() -> None:
    parent_worker = run_isolated(os.getpid)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: render, report the worker's parent, leave without pytest's clean-up
        code = 1
        try:
            os.close(read)
            render_isolated(path=bundled_path(MR))
            os.write(write, str(run_isolated(os.getppid)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as fh:
        reported = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reported == str(pid)  # the child's renders ran in the child's own worker
    assert run_isolated(os.getpid) == parent_worker  # and the parent's worker lives on


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def _write_image(path: Path, pixels: np.ndarray) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


# --- fuzz ----------------------------------------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("PACS_FUZZ_EXAMPLES", "120"))
FUZZ_TIMEOUT = 5.0
_outcomes: collections.Counter[tuple[str, str]] = collections.Counter()


def _damageable(path: Path) -> tuple[int, int]:
    """Where a damaged copy is damaged: from the Pixel Data element's header (the
    encapsulated items, their lengths and the codec's own headers follow it) to the end;
    for a deflated file, the whole deflated data set."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        ds = dcmread(fh, stop_before_pixels=True)
        if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
            return 128 + 4 + 12 + int(ds.file_meta.FileMetaInformationGroupLength), size
        return fh.tell(), size


@pytest.mark.slow
@pytest.mark.parametrize("transfer_syntax", sorted(COMPRESSED))
def test_fuzz_damaged_compressed_samples_never_take_the_caller_down(transfer_syntax, tmp_path_factory) -> None:
    name = COMPRESSED[transfer_syntax]
    original = bundled_path(name).read_bytes()
    start, end = _damageable(bundled_path(name))
    span = end - start
    damaged = tmp_path_factory.mktemp("fuzz") / name

    @hypothesis_settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def render_damaged(data: st.DataObject) -> None:
        content = bytearray(original)
        for _ in range(data.draw(st.integers(1, 8), label="changes")):
            # Half the changes just after the element's own 12-byte header: the offset table,
            # the item headers and the codec's headers, where decoders trust lengths and sizes.
            if data.draw(st.booleans(), label="near the start"):
                at = start + 12 + data.draw(st.integers(0, min(span - 12, 300) - 1), label="offset")
            else:
                at = start + data.draw(st.integers(0, span - 1), label="offset")
            if data.draw(st.booleans(), label="flip a bit"):
                content[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
            else:
                content[at] = data.draw(st.integers(0, 255), label="byte")
        if data.draw(st.integers(0, 3), label="truncate") == 0:
            del content[start + data.draw(st.integers(0, span - 1), label="length") :]
        damaged.write_bytes(bytes(content))
        try:
            result = render_isolated(path=damaged, timeout=FUZZ_TIMEOUT)
        except NoImage as exc:
            _outcomes[(name, exc.reason.split(":")[0] if "decoder" not in exc.reason else exc.reason)] += 1
            keep = os.environ.get("PACS_FUZZ_KEEP")
            if keep and "decoder" in exc.reason:  # for a bug report to the decoder's authors
                kind = exc.reason.rsplit(" ", 1)[-1]  # crashed, long, memory
                digest = hashlib.sha256(content).hexdigest()[:12]
                Path(keep).mkdir(parents=True, exist_ok=True)
                (Path(keep) / f"{name}-{kind}-{digest}.dcm").write_bytes(bytes(content))
            return
        assert isinstance(result, bytes) and result
        _outcomes[(name, "rendered")] += 1

    render_damaged()
    print(f"\n{name}: " + ", ".join(f"{reason}: {n}" for (n_, reason), n in _outcomes.items() if n_ == name))
    # The caller is alive and so is rendering.
    assert Image.open(io.BytesIO(render_isolated(path=bundled_path(MR)))).size == (64, 64)
