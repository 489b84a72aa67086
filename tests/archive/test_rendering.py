"""archive.rendering.pipeline: the pixel pipeline, checked on values, not only on "an image came out"."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.rendering.pipeline import (
    JPEG,
    PNG,
    NoImage,
    Viewport,
    Window,
    has_pixels,
    number_of_frames,
    render_array,
    render_frame,
    window_presets,
)
from archive.sample_data import COMPRESSED, CT, SR, US_MULTIFRAME, US_PALETTE, bundled_path


def _gray(values: np.ndarray, **attrs: object) -> Dataset:
    """A small MONOCHROME image data set holding ``values`` (16 bits allocated; ``attrs`` may
    change Bits Stored, Pixel Representation...)."""
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
    ds.PixelData = values.astype("<i2" if values.dtype.kind == "i" else "<u2").tobytes()
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


# -- known answers, one per stage of PS3.3 C.11 ------------------------------------------------


def _row(ds: Dataset, **kwargs: object) -> list[int]:
    return render_array(ds=ds, **kwargs)[0].tolist()  # type: ignore[arg-type]


def test_rescale_slope_and_intercept_come_before_the_window() -> None:
    # Stored 0, 10, 20, 30 -> 2x - 100 = -100, -80, -60, -40; LINEAR_EXACT over -100..-40.
    ds = _gray(np.array([[0, 10, 20, 30]], dtype=np.uint16), RescaleSlope=2, RescaleIntercept=-100)
    assert _row(ds, window=Window(-70, 60, "LINEAR_EXACT")) == [0, 85, 170, 255]


def test_modality_lut_sequence_maps_and_clamps() -> None:
    # C.11.1.1.1: below the first mapped value -> the first entry, above the last -> the last.
    item = Dataset()
    item.LUTDescriptor = [4, 10, 12]  # 12-bit entries: pydicom's apply_modality_lut cannot build uint12
    item.LUTData = [100, 200, 300, 4000]
    ds = _gray(np.array([[5, 10, 11, 13, 20]], dtype=np.uint16), ModalityLUTSequence=[item])
    # LINEAR_EXACT 0..4000: y = x / 4000 * 255.
    assert _row(ds, window=Window(2000, 4000, "LINEAR_EXACT")) == [6, 6, 13, 255, 255]


def test_the_modality_lut_sequence_wins_over_rescale() -> None:
    item = Dataset()
    item.LUTDescriptor = [2, 0, 16]
    item.LUTData = [0, 1000]
    ds = _gray(np.array([[0, 1]], dtype=np.uint16), ModalityLUTSequence=[item], RescaleSlope=1, RescaleIntercept=0)
    assert _row(ds, window=Window(500, 1000, "LINEAR_EXACT")) == [0, 255]


VOI_INPUT = np.array([[74, 75, 76, 100, 124, 125, 126, 150]], dtype=np.uint16)


def test_voi_linear() -> None:
    # C.11.2.1.2.1, c=100, w=51: <= 74.5 -> 0, > 124.5 -> 255, else ((x - 99.5) / 50 + 0.5) * 255.
    ds = _gray(VOI_INPUT, WindowCenter=100, WindowWidth=51)
    assert _row(ds) == [0, 3, 8, 130, 252, 255, 255, 255]


def test_voi_linear_exact() -> None:
    # C.11.2.1.3.2, c=100, w=50: <= 75 -> 0, > 125 -> 255, else ((x - 100) / 50 + 0.5) * 255.
    ds = _gray(VOI_INPUT, WindowCenter=100, WindowWidth=50, VOILUTFunction="LINEAR_EXACT")
    assert _row(ds) == [0, 0, 5, 128, 250, 255, 255, 255]


def test_voi_sigmoid() -> None:
    # C.11.2.1.3.1: 255 / (1 + exp(-4 (x - c) / w)), c=100, w=50.
    ds = _gray(VOI_INPUT, WindowCenter=100, WindowWidth=50, VOILUTFunction="SIGMOID")
    assert _row(ds) == [28, 30, 33, 128, 222, 225, 227, 250]


def test_voi_lut_sequence_first_item() -> None:
    first = Dataset()
    first.LUTDescriptor = [3, 100, 10]  # 10-bit output: 0..1023
    first.LUTData = [0, 511, 1023]
    second = Dataset()
    second.LUTDescriptor = [3, 100, 10]
    second.LUTData = [1023, 0, 0]
    ds = _gray(np.array([[50, 100, 101, 102, 200]], dtype=np.uint16), VOILUTSequence=[first, second])
    assert _row(ds) == [0, 0, 127, 255, 255]


def test_window_presets_are_the_datasets_windows_in_order() -> None:
    ds = _gray(RAMP, WindowCenter=[40, 400], WindowWidth=[350, 2000], VOILUTFunction="LINEAR_EXACT")
    assert window_presets(ds) == [Window(40, 350, "LINEAR_EXACT"), Window(400, 2000, "LINEAR_EXACT")]
    assert window_presets(_gray(RAMP)) == []
    assert window_presets(_gray(RAMP, WindowCenter=10, WindowWidth=0)) == []  # invalid: skipped


def test_a_window_of_width_zero_in_the_file_falls_back_to_the_automatic_one() -> None:
    ds = _gray(RAMP, WindowCenter=150, WindowWidth=0)
    assert _row(ds) == _row(_gray(RAMP))


def test_the_automatic_window_ignores_a_few_outliers() -> None:
    values = np.arange(1000, dtype=np.uint16).reshape(20, 50)
    values[0, 0] = 60000  # one hot pixel; min/max would crush the rest into 0..4
    out = render_array(ds=_gray(values))
    assert out[0, 0] == 255
    assert abs(int(out[10, 0]) - 128) <= 2  # 500: the middle of the 0.5..99.5 percentile range
    assert out[19, 49] == 255


def test_monochrome1_with_a_window_is_inverted() -> None:
    ds = _gray(VOI_INPUT, WindowCenter=100, WindowWidth=51, PhotometricInterpretation="MONOCHROME1")
    assert _row(ds) == [255, 252, 247, 125, 3, 0, 0, 0]


def test_presentation_lut_shape_inverse() -> None:
    plain = _row(_gray(RAMP))
    assert _row(_gray(RAMP, PresentationLUTShape="INVERSE")) == [255 - v for v in plain]
    assert _row(_gray(RAMP, PresentationLUTShape="IDENTITY")) == plain
    # For MONOCHROME1 the standard pairs INVERSE with it: one inversion, not two.
    both = _gray(RAMP, PhotometricInterpretation="MONOCHROME1", PresentationLUTShape="INVERSE")
    assert _row(both) == [255 - v for v in plain]


def test_signed_pixels_with_bits_stored_below_bits_allocated() -> None:
    # 12 bits stored in 16, signed: -1000 is 0xC18, 1000 is 0x3E8; the unused high bits hold junk.
    raw = np.array([[0xAC18, 0x5000, 0x53E8]], dtype=np.uint16)
    ds = _gray(raw, BitsStored=12, HighBit=11, PixelRepresentation=1)
    assert _row(ds, window=Window(0, 2000, "LINEAR_EXACT")) == [0, 128, 255]


def test_unsigned_bits_stored_below_bits_allocated_masks_the_high_bits() -> None:
    raw = np.array([[0xF000, 0xF800, 0xFFFF]], dtype=np.uint16)  # 12 bits: 0, 2048, 4095
    ds = _gray(raw, BitsStored=12, HighBit=11)
    assert _row(ds, window=Window(2047.5, 4095, "LINEAR_EXACT")) == [0, 128, 255]


def test_eight_bit_signed_pixels() -> None:
    ds = _gray(np.zeros((1, 2)))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 1
    ds.PixelData = np.array([-100, 100], dtype=np.int8).tobytes()
    assert _row(ds, window=Window(0, 200, "LINEAR_EXACT")) == [0, 255]


def _colour(pixels: np.ndarray, **attrs: object) -> Dataset:
    ds = _gray(np.zeros(pixels.shape[:2], dtype=np.uint16))
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PlanarConfiguration = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    return ds


RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)


def test_planar_configuration_0_and_1() -> None:
    interleaved = _colour(RGB)
    planar = _colour(RGB, PlanarConfiguration=1)
    planar.PixelData = RGB.transpose(2, 0, 1).tobytes()  # RRRR GGGG BBBB
    assert np.array_equal(render_array(ds=interleaved), RGB)
    assert np.array_equal(render_array(ds=planar), RGB)


def test_ybr_full_becomes_rgb() -> None:
    # Y=76, Cb=85, Cr=255 is pure red (PS3.3 C.7.6.3.1.2, the JFIF equations).
    ds = _colour(np.array([[[76, 85, 255], [128, 128, 128]]]), PhotometricInterpretation="YBR_FULL")
    out = render_array(ds=ds).astype(int)
    assert np.abs(out[0, 0] - [255, 0, 0]).max() <= 2 and np.abs(out[0, 1] - [128, 128, 128]).max() <= 1


def _palette(indices: np.ndarray, red: list[int], green: list[int], blue: list[int], bits: int, first: int = 0):  # type: ignore[no-untyped-def]
    ds = _gray(indices.astype(np.uint16), PhotometricInterpretation="PALETTE COLOR")
    for name, values in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [len(values), first, bits])
        setattr(ds, f"{name}PaletteColorLookupTableData", np.array(values, dtype="<u2").tobytes())
    return ds


def test_palette_with_16_bit_entries() -> None:
    ds = _palette(np.array([[0, 1, 2, 3]]), [0, 65535, 32768, 0], [0, 0, 65535, 257], [65535, 0, 0, 514], 16)
    assert render_array(ds=ds)[0].tolist() == [[0, 0, 255], [255, 0, 0], [128, 255, 0], [0, 1, 2]]


def test_palette_with_8_bit_entries_and_a_first_mapped_value() -> None:
    # 8-bit entries, one per 16-bit word; indices below the first mapped take entry 0, above the last the last.
    ds = _palette(np.array([[5, 10, 11, 12, 300]]), [1, 2, 255], [0, 128, 0], [0, 0, 7], 8, first=10)
    assert render_array(ds=ds)[0].tolist() == [[1, 0, 0], [1, 0, 0], [2, 128, 0], [255, 0, 7], [255, 0, 7]]


def test_palette_with_more_than_256_eight_bit_entries() -> None:
    values = [i % 256 for i in range(300)]
    ds = _palette(np.array([[299, 256]]), values, values, values, 8)
    assert render_array(ds=ds)[0, :, 0].tolist() == [299 % 256, 0]


def test_non_square_pixels_are_resampled_to_their_proportions() -> None:
    values = np.arange(16, dtype=np.uint16).reshape(4, 4)
    tall = render_array(ds=_gray(values, PixelAspectRatio=[2, 1]))  # vertical : horizontal
    assert tall.shape == (8, 4)
    wide = render_array(ds=_gray(values, PixelSpacing=[0.5, 1.0]))  # row spacing, column spacing
    assert wide.shape == (4, 8)
    assert render_array(ds=_gray(values, PixelSpacing=[0.7, 0.7])).shape == (4, 4)
    fitted = Image.open(io.BytesIO(render_frame(ds=_gray(values, PixelAspectRatio=[2, 1]), max_size=4)))
    assert fitted.size == (2, 4)


def test_enhanced_multi_frame_takes_the_frames_own_window() -> None:
    def group(center: float, width: float) -> Dataset:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item = Dataset()
        item.FrameVOILUTSequence = [voi]
        return item

    shared = Dataset()
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 1, -100
    shared.PixelValueTransformationSequence = [transform]
    ds = _gray(np.array([[100, 200], [100, 200]], dtype=np.uint16))
    ds.Rows = 1
    ds.NumberOfFrames = 2
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [group(50, 100), group(150, 100)]
    # Modality values 0 and 100; frame 1 windows 0..100, frame 2 100..200.
    assert _row(ds, frame=1, window=None) == [0, 255]
    assert render_array(ds=ds, frame=2).tolist() == [[0, 0]]
    assert window_presets(ds, frame=2) == [Window(150, 100)]


def test_every_frame_of_a_multi_frame_image() -> None:
    ds = dcmread(bundled_path("rtdose.dcm"))
    frames = [render_array(ds=ds, frame=n) for n in range(1, number_of_frames(ds) + 1)]
    assert len(frames) == 15 and len({f.tobytes() for f in frames}) > 1


def test_colour_jpeg_keeps_full_chroma_resolution() -> None:
    from PIL import JpegImagePlugin

    image = Image.open(io.BytesIO(render_frame(ds=dcmread(bundled_path(US_MULTIFRAME)), media_type=JPEG)))
    assert image.mode == "RGB" and JpegImagePlugin.get_sampling(image) == 0  # 4:4:4


def test_huge_images_are_downscaled_to_the_pixel_budget(settings) -> None:  # type: ignore[no-untyped-def]
    ds = dcmread(bundled_path(CT))  # 128 x 128
    assert render_array(ds=ds, max_pixels=1024).shape == (32, 32)
    settings.PACS_RENDER_MAX_PIXELS = 64 * 64
    assert render_array(ds=ds).shape == (64, 64)
    settings.PACS_RENDER_MAX_PIXELS = 0  # no limit
    assert render_array(ds=ds).shape == (128, 128)


def test_a_bad_window_from_the_caller_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="width"):
        render_frame(ds=_gray(RAMP), window=Window(10, 0.5))
    with pytest.raises(ValueError, match="function"):
        render_frame(ds=_gray(RAMP), window=Window(10, 10, "CUBIC"))


def test_twelve_bit_jpeg_extended_is_decoded() -> None:
    # pydicom declines 12-bit JPEG Extended with GDCM; archive.rendering.pipeline asks GDCM itself.
    ds = dcmread(bundled_path(COMPRESSED["1.2.840.10008.1.2.4.51"]))
    out = render_array(ds=ds, window=Window(132.5, 266))
    assert out.shape == (ds.Rows, ds.Columns) and out.max() == 255


# -- every image bundled with pydicom ----------------------------------------------------------

# Each bundled file with pixel data that does not render, and why. Anything else must render.
BUNDLED_FAILURES = {
    "JPEG2000-embedded-sequence-delimiter.dcm": "cannot be decoded",  # a 250-byte JPEG 2000 stub for 1024x256
    "MR_truncated.dcm": "cannot be decoded",  # pixel data 62 bytes short of rows x columns x 2
    "badVR.dcm": "cannot be decoded",  # Number of Frames is '1A'
    "meta_missing_tsyntax.dcm": "cannot be decoded",  # no Transfer Syntax UID in the file meta
    "nested_priv_SQ.dcm": "cannot be decoded",  # pixel data without an Image Pixel module (no Bits Allocated)
}


def _bundled_images() -> list[Path]:
    from pydicom.data import get_testdata_files

    out = []
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if path.is_dir() or path.suffix in (".txt", ".json", ".dump", ".gz", ".icc"):
            continue
        try:
            ds = dcmread(path, force=True, stop_before_pixels=False)
        except Exception:
            continue
        if has_pixels(ds):
            out.append(path)
    return out


BUNDLED = _bundled_images()


def test_the_bundled_images_are_many() -> None:
    assert len(BUNDLED) >= 90, "pydicom's bundle shrank: this test has lost its point"


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_every_bundled_image_renders_or_fails_for_its_documented_reason(path: Path) -> None:
    ds = dcmread(path, force=True)
    frames = sorted({1, number_of_frames(ds)})
    try:
        rendered = [render_array(ds=ds, frame=n) for n in frames]
    except NoImage as exc:
        assert path.name in BUNDLED_FAILURES, f"{path.name} should render: {exc.reason}"
        assert BUNDLED_FAILURES[path.name] in exc.reason
        return
    assert path.name not in BUNDLED_FAILURES, f"{path.name} now renders: update BUNDLED_FAILURES"
    for image in rendered:
        assert image.dtype == np.uint8 and image.ndim in (2, 3) and image.size > 0
    # Also through the file, as WADO-RS does: header first, only the frame decoded.
    with open(path, "rb") as fh:
        header = dcmread(fh, force=True, stop_before_pixels=True)
        assert np.array_equal(render_array(ds=header, source=fh, frame=frames[-1]), rendered[-1])


def test_float_pixel_data_gets_the_automatic_window() -> None:
    ds = _gray(np.zeros((1, 4), dtype=np.uint16))
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    del ds.PixelRepresentation
    ds.FloatPixelData = np.array([[-1.5, 0.0, 1.5, 3.0]], dtype="<f4").tobytes()
    out = _row(ds)
    assert out[0] == 0 and out[-1] == 255 and out == sorted(out)


@pytest.mark.parametrize("name", [COMPRESSED["1.2.840.10008.1.2.5"], COMPRESSED["1.2.840.10008.1.2.4.50"]])
def test_a_cut_compressed_stream_is_no_image(name: str) -> None:
    from pydicom.encaps import encapsulate, generate_frames

    ds = dcmread(bundled_path(name))
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:40]])
    with pytest.raises(NoImage, match="cannot be decoded"):
        render_frame(ds=ds)


def test_a_steep_sigmoid_far_from_its_centre_is_black_and_white_without_warnings() -> None:
    import warnings

    ds = _gray(np.array([[0, 65535]], dtype=np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _row(ds, window=Window(30000, 1, "SIGMOID")) == [0, 255]


@pytest.mark.parametrize(
    ("name", "frame"),
    [("examples_ybr_color.dcm", 17), ("SC_rgb_rle_16bit_2frame.dcm", 2), ("SC_rgb_rle_2frame.dcm", 2)],
)
def test_a_frame_read_alone_renders_as_from_the_whole_file(name: str, frame: int) -> None:
    """A frame of an encapsulated multi-frame file is decoded from its own fragments only;
    the result is the frame pixel_array gives from the whole pixel data."""
    from pydicom.data import get_testdata_file

    from archive.rendering import pipeline as rendering

    path = get_testdata_file(name)
    whole = dcmread(path)
    header = dcmread(path, stop_before_pixels=True)
    with open(path, "rb") as fh:
        alone = rendering.render_array(ds=header, source=fh, frame=frame)
    expected = rendering.render_array(ds=whole, frame=frame)
    assert np.array_equal(alone, expected)
    with open(path, "rb") as fh:
        assert rendering._frame_alone(fh, frame - 1, str(header.file_meta.TransferSyntaxUID)) is not None
