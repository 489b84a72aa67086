"""archive.rendering: the pixel pipeline, checked on values, not only on "an image came out"."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.rendering import JPEG, PNG, NoImage, Viewport, Window, render_frame
from archive.sample_data import COMPRESSED, CT, SR, US_MULTIFRAME, US_PALETTE, bundled_path


def _gray(values: np.ndarray, **attrs: object) -> Dataset:
    """A small MONOCHROME image data set holding ``values`` (uint16)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = values.astype("<u2").tobytes()
    return ds


def _png_pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


RAMP = np.array([[0, 100, 200, 300]], dtype=np.uint16)


def test_without_a_window_the_frame_range_is_stretched() -> None:
    out = _png_pixels(render_frame(ds=_gray(RAMP), media_type=PNG))
    assert out.tolist() == [[0, 85, 170, 255]]


def test_rescale_then_dataset_window() -> None:
    # Stored 0..300, rescaled to -1000..-700; window centre -850, width 99: -900 is below it, -800 above.
    ds = _gray(RAMP, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=-850, WindowWidth=99)
    out = _png_pixels(render_frame(ds=ds, media_type=PNG))
    assert out.tolist() == [[0, 0, 255, 255]]
    ds = _gray(
        np.array([[0, 150, 300]], dtype=np.uint16),
        RescaleSlope=1,
        RescaleIntercept=-1000,
        WindowCenter=-850,
        WindowWidth=301,
    )
    assert _png_pixels(render_frame(ds=ds, media_type=PNG))[0, 1] == 128


def test_explicit_window_overrides_the_dataset() -> None:
    ds = _gray(RAMP, WindowCenter=150, WindowWidth=301)
    out = _png_pixels(render_frame(ds=ds, media_type=PNG, window=Window(center=300, width=2)))
    assert out.tolist() == [[0, 0, 0, 255]]


def test_monochrome1_is_inverted() -> None:
    out = _png_pixels(render_frame(ds=_gray(RAMP, PhotometricInterpretation="MONOCHROME1"), media_type=PNG))
    assert out.tolist() == [[255, 170, 85, 0]]


def test_colour_images_become_rgb() -> None:
    ds = dcmread(bundled_path(US_MULTIFRAME))
    image = Image.open(io.BytesIO(render_frame(ds=ds, frame=3, media_type=PNG)))
    assert image.mode == "RGB" and image.size == (ds.Columns, ds.Rows)
    expected = ds.pixel_array[2]  # pydicom converts YBR_FULL_422 to RGB
    assert np.abs(np.asarray(image).astype(int) - expected.astype(int)).max() <= 1


def test_palette_colour_goes_through_its_lookup_table() -> None:
    from pydicom.pixels import apply_color_lut

    ds = dcmread(bundled_path(US_PALETTE))
    out = np.asarray(Image.open(io.BytesIO(render_frame(ds=ds, media_type=PNG))))
    rgb = apply_color_lut(ds.pixel_array, ds)
    expected = np.rint(rgb.astype(float) * 255 / 65535).astype(np.uint8) if rgb.max() > 255 else rgb
    assert out.shape == expected.shape and np.array_equal(out, expected)


def test_only_the_asked_frame_is_read_from_the_file() -> None:
    path = bundled_path(US_MULTIFRAME)
    with open(path, "rb") as fh:
        header = dcmread(fh, stop_before_pixels=True)
        first = render_frame(ds=header, source=fh, frame=1, media_type=PNG)
        last = render_frame(ds=header, source=fh, frame=30, media_type=PNG)
    assert first != last
    with pytest.raises(ValueError, match="frame 31"):
        render_frame(ds=dcmread(path), frame=31)


def test_jpeg_quality_and_viewport() -> None:
    ds = dcmread(bundled_path(CT))
    big = render_frame(ds=ds, media_type=JPEG, quality=95)
    small = render_frame(ds=ds, media_type=JPEG, quality=10)
    assert Image.open(io.BytesIO(big)).format == "JPEG" and len(small) < len(big)
    fitted = Image.open(io.BytesIO(render_frame(ds=ds, viewport=Viewport(width=64, height=32))))
    assert fitted.size == (32, 32)  # aspect ratio kept inside the viewport
    region = Image.open(io.BytesIO(render_frame(ds=ds, viewport=Viewport(region=(10, 10, 40, 20)))))
    assert region.size == (40, 20)
    thumb = Image.open(io.BytesIO(render_frame(ds=ds, max_size=50)))
    assert thumb.size == (50, 50)


def test_bad_parameters() -> None:
    ds = _gray(RAMP)
    with pytest.raises(ValueError):
        render_frame(ds=ds, media_type="image/gif")
    with pytest.raises(ValueError):
        render_frame(ds=ds, quality=0)


def test_an_object_without_pixels_is_no_image() -> None:
    with pytest.raises(NoImage, match="no pixel data"):
        render_frame(ds=dcmread(bundled_path(SR)))
    with open(bundled_path(SR), "rb") as fh, pytest.raises(NoImage, match="no pixel data"):
        render_frame(ds=dcmread(fh, stop_before_pixels=True), source=fh)


def test_undecodable_pixels_are_no_image_not_a_crash() -> None:
    ds = _gray(RAMP)
    ds.PixelData = ds.PixelData[:3]  # truncated
    with pytest.raises(NoImage, match="cannot be decoded"):
        render_frame(ds=ds)


@pytest.mark.parametrize("transfer_syntax", sorted(COMPRESSED))
def test_every_sample_transfer_syntax_renders_or_says_why(transfer_syntax: str) -> None:
    ds = dcmread(bundled_path(COMPRESSED[transfer_syntax]))
    try:
        data = render_frame(ds=ds, media_type=PNG)
    except NoImage as exc:
        # Without a decoder plugin (JPEG-LS, 12-bit JPEG, lossless JPEG): a clear reason.
        assert "cannot be decoded" in exc.reason
        return
    image = Image.open(io.BytesIO(data))
    assert image.size == (ds.Columns, ds.Rows)
