"""archive.rendering.pipeline against an independent reference: DCMTK's dcmj2pnm, rendered losslessly.

Grey-scale images are rendered by both with the same explicit window (``+Ww``)
and compared as PNG, overlays off (dcmj2pnm burns overlay planes in by default;
archive.rendering.pipeline does not show them); colour images without window options. Where dcmj2pnm
cannot decode a file (JPEG 2000 and JPEG-LS in Debian's DCMTK 3.6.7), the
reference is pydicom's decoded array put through the LINEAR window written out
here, independently of the code under test. Agreement means a PSNR of at least
40 dB (8-bit peak).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_files

from archive.rendering.pipeline import Window, render_array, window_presets
from archive.sample_data import COMPRESSED, bundled_path

if shutil.which("dcmj2pnm") is None:  # `make test` installs DCMTK; never skip silently in CI
    pytest.fail("DCMTK is not installed: run `make test` (apt-get install dcmtk)", pytrace=False)

MIN_PSNR = 40.0

# file -> frame (1-based); what each stands for is in the comment.
GREY = {
    "CT_small.dcm": 1,  # CT, signed 16 bit, rescale intercept -1024, no window in the file
    "MR_small.dcm": 1,  # MR, signed 16 bit, a window in the file
    "examples_overlay.dcm": 1,  # MR 12 of 16 bits, two windows
    "rtdose.dcm": 7,  # RT dose, 32-bit unsigned, multi-frame
    "liver_1frame.dcm": 1,  # 1 bit per pixel
    "6154": 1,  # CR, MONOCHROME1, 12 of 16 bits
}
COLOUR = {
    "examples_rgb_color.dcm": 1,  # US, RGB uncompressed
    "SC_ybr_full_422_uncompressed.dcm": 1,  # YBR_FULL_422 uncompressed: pydicom converts
    "examples_ybr_color.dcm": 3,  # US cine, 30 frames, JPEG baseline YBR_FULL_422
    "examples_palette.dcm": 1,  # PALETTE COLOR, 16-bit entries
    "SC_rgb_rle_2frame.dcm": 2,  # RGB RLE (planar by RLE segments), second frame
    "SC_rgb_rle_16bit.dcm": 1,  # RGB 16 bits per sample
    "ExplVR_BigEnd.dcm": 1,  # RGB big endian, planar configuration 1
}
# dcmj2pnm 3.6.7 here decodes neither (no JPEG-LS or JPEG 2000 codec in the tool).
NOT_DCMTK = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}


def _path(name: str) -> Path:
    if name in COMPRESSED.values() or name.endswith(".dcm"):
        return bundled_path(name)
    (found,) = get_testdata_files(f"**/{name}")  # the DICOMDIR test files have bare names
    return Path(found)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def dcmj2pnm(path: Path, out: Path, *options: str) -> np.ndarray:
    result = subprocess.run(
        ["dcmj2pnm", "--write-png", "--no-overlays", *options, str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return np.asarray(Image.open(out))


# Files without a window whose values pydicom alone cannot decode (12-bit JPEG: 0..264).
WINDOWS = {"JPEG-lossy.dcm": Window(132.5, 266)}


def reference_window(path: Path, frame: int) -> Window:
    """The file's first window, else one over its modality range: the same for both renderers."""
    if path.name in WINDOWS:
        return WINDOWS[path.name]
    ds = dcmread(path)
    presets = window_presets(ds, frame=frame)
    if presets:
        return Window(presets[0].center, presets[0].width)
    values = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    low, high = float(values.min()), float(values.max())
    return Window(center=(low + high + 1) / 2, width=max(high - low + 1, 2))


def known_answer_window(values: np.ndarray, window: Window, *, invert: bool = False) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, LINEAR, onto 0..255, written out plainly."""
    c, w = window.center, window.width
    y = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(values <= c - 0.5 - (w - 1) / 2, 0, np.where(values > c - 0.5 + (w - 1) / 2, 255, y))
    y = np.rint(y)
    return (255 - y if invert else y).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(GREY))
def test_grey_scale_agrees_with_dcmj2pnm(name: str, tmp_path: Path) -> None:
    path, frame = _path(name), GREY[name]
    window = reference_window(path, frame)
    ours = render_array(ds=dcmread(path), frame=frame, window=window)
    theirs = dcmj2pnm(path, tmp_path / "out.png", "+F", str(frame), "+Ww", str(window.center), str(window.width))
    value = psnr(ours, theirs)
    print(f"{name} frame {frame} window {window.center:g}/{window.width:g}: {value:.1f} dB")
    assert value >= MIN_PSNR


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_colour_agrees_with_dcmj2pnm(name: str, tmp_path: Path) -> None:
    path, frame = _path(name), COLOUR[name]
    ours = render_array(ds=dcmread(path), frame=frame)
    theirs = dcmj2pnm(path, tmp_path / "out.png", "+F", str(frame))
    value = psnr(ours, theirs)
    print(f"{name} frame {frame}: {value:.1f} dB")
    assert ours.ndim == 3 and value >= MIN_PSNR


@pytest.mark.parametrize("syntax", sorted(COMPRESSED))
def test_each_compressed_syntax_agrees_with_a_reference(syntax: str, tmp_path: Path) -> None:
    path = bundled_path(COMPRESSED[syntax])
    ds = dcmread(path)
    colour = int(ds.SamplesPerPixel) == 3
    window = None if colour else reference_window(path, 1)
    ours = render_array(ds=ds, window=window)
    if syntax in NOT_DCMTK:
        # pydicom's decoded values through the plain window (colour: the decoded RGB as is).
        decoded = ds.pixel_array
        if colour:
            theirs = decoded.astype(np.uint8)
        else:
            slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
            assert window is not None
            theirs = known_answer_window(decoded.astype(np.float64) * slope + intercept, window)
        reference = "pydicom + known-answer window"
    else:
        options = [] if window is None else ["+Ww", str(window.center), str(window.width)]
        theirs = dcmj2pnm(path, tmp_path / "out.png", *options)
        reference = "dcmj2pnm"
    value = psnr(ours, theirs)
    print(f"{syntax} {path.name} vs {reference}: {value:.1f} dB")
    assert value >= MIN_PSNR


def test_monochrome1_is_monochrome2_inverted_in_both(tmp_path: Path) -> None:
    ds = dcmread(bundled_path("MR_small.dcm"))
    window = Window(600, 1600)
    mono2 = tmp_path / "mono2.dcm"
    mono1 = tmp_path / "mono1.dcm"
    ds.save_as(mono2)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(mono1)
    ours2 = render_array(ds=dcmread(mono2), window=window)
    ours1 = render_array(ds=dcmread(mono1), window=window)
    assert np.array_equal(ours1, 255 - ours2)
    options = ("+Ww", "600", "1600")
    theirs1 = dcmj2pnm(mono1, tmp_path / "m1.png", *options)
    theirs2 = dcmj2pnm(mono2, tmp_path / "m2.png", *options)
    print(f"MONOCHROME1: {psnr(ours1, theirs1):.1f} dB, MONOCHROME2: {psnr(ours2, theirs2):.1f} dB")
    assert psnr(ours1, theirs1) >= MIN_PSNR and psnr(ours2, theirs2) >= MIN_PSNR
    assert psnr(theirs1, 255 - theirs2) >= MIN_PSNR  # the reference agrees that it is an inversion
