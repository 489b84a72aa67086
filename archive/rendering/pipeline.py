"""Rendering one frame of a stored DICOM image as JPEG or PNG, for viewers and thumbnails.

The display pipeline of PS3.3 C.11, in order:

1. Decoding (pydicom's pixel-data plugins: GDCM, pylibjpeg-openjpeg, pyjpegls,
   pydicom's own RLE decoder, never pylibjpeg-rle, which panics on a corrupt
   stream). Only the asked frame is decoded. Bits Stored/High Bit and Pixel
   Representation are honoured by pydicom (unused bits masked, signed values
   sign-extended). 12-bit JPEG Extended, which pydicom will not hand to GDCM,
   is decoded by GDCM directly (the GPLv3 libjpeg plugin is not installed).
2. Modality LUT (C.11.1): the Modality LUT Sequence, else Rescale
   Slope/Intercept. Enhanced multi-frame images take these, the window and the
   pixel spacing from their shared and per-frame functional groups.
3. VOI LUT (C.11.2): the caller's window, else the data set's first Window
   Center/Width (the others are :func:`window_presets`) with its VOI LUT
   Function (LINEAR, LINEAR_EXACT, SIGMOID), else the first item of the VOI LUT
   Sequence, else an automatic window over the 0.5th-99.5th percentiles of the
   frame's modality values (one stray bright pixel does not flatten the image).
4. Presentation (C.11.6): MONOCHROME1 and a Presentation LUT Shape of INVERSE
   come out inverted, so the result is always "zero is black".
5. Colour: RGB and YBR (converted to RGB by pydicom where the decoder has
   not), PALETTE COLOR through its 8- or 16-bit lookup tables (C.7.6.3.1.5,
   C.7.9), both planar configurations; more than 8 bits stored are scaled.
6. Geometry: non-square pixels (Pixel Aspect Ratio, else the ratio of Pixel
   Spacing, else Imager Pixel Spacing) are resampled so proportions are right;
   then the viewport and thumbnail size; finally a pixel budget.
7. Encoding by Pillow: JPEG at the asked quality, colour without chroma
   subsampling (4:2:0 costs about 18 dB of PSNR on sharp colour edges), or PNG.

For 8- and 16-bit grey-scale frames, steps 2-4 are computed once per possible
stored value (at most 65536 of them) and applied as one table look-up, so a
mammogram costs one uint8 output array beyond its decoded frame.

Setting ``PACS_RENDER_MAX_PIXELS`` (default 16 777 216, i.e. 4096 x 4096):
the largest output, in pixels; bigger images are downscaled (aspect kept)
before encoding. The ``max_pixels`` argument overrides it per call.

Anything that cannot be rendered (no pixel data, a codec without a plugin, a
corrupt frame, nonsensical attributes) raises :class:`NoImage` with the reason,
never another exception; a decoder that crashes the interpreter is the
isolation helper's business (:mod:`archive.rendering.isolated`).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from kernel.errors import Invalid

if TYPE_CHECKING:  # numpy and Pillow load on first use, not when Django starts
    import numpy as np
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = 128
DEFAULT_MAX_PIXELS = 4096 * 4096
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NO_PIXELS = "the object has no pixel data (it is not an image)"
_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
_RLE = "1.2.840.10008.1.2.5"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_SAMPLE_LIMIT = 1 << 20  # values looked at for the automatic window
_CHUNK = 1 << 20  # pixels per block when the pipeline is computed per pixel
_SQUARE_TOLERANCE = 0.01  # aspect ratios closer to 1 than this are square


class NoImage(Invalid):
    """The object has no frame that can be rendered; ``message`` says why."""

    code = "no_image"

    @property
    def reason(self) -> str:
        """The older name of ``message``, kept for its callers."""
        return self.message


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2); ``function`` is LINEAR, LINEAR_EXACT or SIGMOID."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """PS3.18 8.3.5.1.3: the output's size (``vw`` x ``vh``, aspect kept) and an optional
    source region (``sx``, ``sy``, ``sw``, ``sh``) in image pixels."""

    width: int | None = None
    height: int | None = None
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderParams:
    """Everything a caller chooses about a rendered frame (the options of :func:`render_frame`)."""

    media_type: str = JPEG
    quality: int = DEFAULT_QUALITY
    window: Window | None = None
    viewport: Viewport | None = None
    max_size: int | None = None


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def has_pixels(ds: Dataset) -> bool:
    return any(kw in ds for kw in _PIXEL_KEYWORDS)


def max_pixels_setting() -> int:
    """``settings.PACS_RENDER_MAX_PIXELS``, or the default outside a configured Django."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        value = getattr(settings, "PACS_RENDER_MAX_PIXELS", DEFAULT_MAX_PIXELS)
    except ImproperlyConfigured:  # a bare child process or script
        return DEFAULT_MAX_PIXELS
    return int(value)


def window_presets(ds: Dataset, *, frame: int = 1) -> list[Window]:
    """The data set's windows (Window Center/Width, each value pair), valid ones only, first first.

    An enhanced multi-frame image's windows are those of ``frame`` (its
    functional groups).
    """
    attrs = _frame_attributes(ds, frame - 1)
    centers = _floats(attrs.get("WindowCenter"))
    widths = _floats(attrs.get("WindowWidth"))
    function = str(attrs.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    out = []
    for center, width in zip(centers, widths, strict=False):
        window = Window(center=center, width=width, function=function)
        if _window_error(window) is None:
            out.append(window)
    return out


def render_frame(
    *,
    ds: Dataset,
    source: BinaryIO | None = None,
    frame: int = 1,
    media_type: str = JPEG,
    quality: int = DEFAULT_QUALITY,
    window: Window | None = None,
    viewport: Viewport | None = None,
    max_size: int | None = None,
    max_pixels: int | None = None,
) -> bytes:
    """One frame of an image, rendered and encoded.

    Parameters
    ----------
    ds : Dataset
        The instance's attributes (pixel data may be left unread when
        ``source`` is given).
    source : binary file, optional
        The stored file: only the asked frame is read and decoded from it.
        Without it, ``ds`` must hold the pixel data.
    frame : int
        1-based frame number.
    media_type : str
        ``image/jpeg`` or ``image/png``.
    quality : int
        JPEG quality, 1-100.
    window : Window, optional
        Overrides the data set's VOI window.
    viewport : Viewport, optional
        Output size (fitted, aspect ratio kept) and source region.
    max_size : int, optional
        Thumbnails: the longest side, in pixels.
    max_pixels : int, optional
        The largest output in pixels; ``PACS_RENDER_MAX_PIXELS`` by default.

    Raises
    ------
    NoImage
        The object has no pixel data, or the frame cannot be decoded.
    ValueError
        A parameter out of range (frame number, media type, quality, window).
    """
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"cannot render as {media_type!r}: only {', '.join(MEDIA_TYPES)}")
    if not 1 <= quality <= 100:
        raise ValueError("quality must be between 1 and 100")
    image = _render_image(
        ds=ds, source=source, frame=frame, window=window, viewport=viewport, max_size=max_size, max_pixels=max_pixels
    )
    out = io.BytesIO()
    if media_type == PNG:
        image.save(out, format="PNG", optimize=False)
    else:
        # subsampling=0 is 4:4:4; it is ignored for grey-scale images.
        image.save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()


def render_array(
    *,
    ds: Dataset,
    source: BinaryIO | None = None,
    frame: int = 1,
    window: Window | None = None,
    viewport: Viewport | None = None,
    max_size: int | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """What :func:`render_frame` would encode: uint8, rows x columns (grey) or rows x columns x 3 (RGB)."""
    import numpy as np

    image = _render_image(
        ds=ds, source=source, frame=frame, window=window, viewport=viewport, max_size=max_size, max_pixels=max_pixels
    )
    return np.asarray(image)


def _render_image(
    *,
    ds: Dataset,
    source: BinaryIO | None,
    frame: int,
    window: Window | None,
    viewport: Viewport | None,
    max_size: int | None,
    max_pixels: int | None,
) -> Any:
    from PIL import Image

    if window is not None and (problem := _window_error(window)):
        raise ValueError(problem)
    if source is None and not has_pixels(ds):
        raise NoImage(_NO_PIXELS)
    frames = number_of_frames(ds)
    if not 1 <= frame <= frames:
        raise ValueError(f"frame {frame} does not exist: the image has {frames} frame(s)")
    pixels = _decode(ds, source, frame - 1)
    try:
        attrs = _frame_attributes(ds, frame - 1)
        array = _display(pixels, attrs, window)
        del pixels
        image = Image.fromarray(array, "RGB" if array.ndim == 3 else "L")
        aspect = _pixel_aspect(attrs)
    except NoImage:
        raise
    except Exception as exc:  # odd attribute values: a clear refusal, never a crash
        logger.warning("cannot render %s: %s", ds.get("SOPInstanceUID", "?"), exc)
        raise NoImage(f"the image cannot be rendered: {type(exc).__name__}: {exc}") from None
    return _geometry(
        image,
        aspect=aspect,
        viewport=viewport,
        max_size=max_size,
        max_pixels=max_pixels_setting() if max_pixels is None else max_pixels,
    )


# -- decoding ---------------------------------------------------------------------------------


# The decoder tried first for a transfer syntax. RLE: pydicom's own, only
# (pylibjpeg-rle panics, uncatchably, on a corrupt stream). JPEG-LS and JPEG
# 2000: CharLS and OpenJPEG before GDCM, which aborts the process on some
# damaged streams where they raise an error (found by the fuzz test).
_PREFERRED_PLUGIN = {
    _RLE: "pydicom",
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg",
}


def _decode(ds: Dataset, source: BinaryIO | None, index: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    plugin = _PREFERRED_PLUGIN.get(syntax)

    def pixels(src: Any) -> np.ndarray:
        if plugin is None:
            return pixel_array(src, index=index)
        try:
            return pixel_array(src, index=index, decoding_plugin=plugin)
        except Exception:
            if plugin == "pydicom":
                raise
            if hasattr(src, "seek"):
                src.seek(0)
            return pixel_array(src, index=index)  # the other installed plugins

    try:
        if source is not None and number_of_frames(ds) > 1:
            single = _frame_alone(source, index, syntax)
            if single is not None:
                index = 0  # the frame is the only one now (pixels() reads index when called)
                return pixels(single)
        if source is not None and syntax != _DEFLATED:
            source.seek(0)
            try:
                return pixels(source)
            except Exception as exc:
                # pixel_array's own light parser trips over files whose transfer syntax lies
                # about their VR encoding (pydicom's SC_rgb_jpeg.dcm, image_dfl.dcm): read the
                # data set properly and try once more, as below.
                logger.debug("pixel_array from the file failed (%s); reading it whole", exc)
        if source is not None:  # deflated or mis-declared data sets are read whole
            from pydicom import dcmread

            source.seek(0)
            ds = dcmread(source, force=True)
        return pixels(ds)
    except AttributeError as exc:
        if "no 'Pixel Data'" in str(exc):
            if "Rows" in ds or "PixelData" in ds:
                # The header describes an image whose pixel data could not be found: damaged.
                raise NoImage("the pixel data is damaged or truncated and cannot be read") from None
            raise NoImage(_NO_PIXELS) from None
        raise NoImage(f"the pixel data cannot be decoded: {exc}") from None
    except Exception as exc:
        error: Exception = exc
    if syntax == _JPEG_EXTENDED:
        try:
            return _decode_jpeg_extended(ds, source, index)
        except Exception as exc:
            error = exc
    # A transfer syntax without an installed decoder, a truncated frame...
    reason = " ".join(str(error).split())[:300] or type(error).__name__
    raise NoImage(f"the pixel data cannot be decoded: {reason}") from None


def _frame_alone(source: BinaryIO, index: int, syntax: str) -> Dataset | None:
    """One frame of an encapsulated multi-frame file as a single-frame data set,
    reading only that frame's fragments: pixel_array would read the whole
    compressed pixel data (all the frames of a cine clip) to decode one.
    None when the file is not encapsulated or its fragments cannot be told apart."""
    from pydicom import dcmread
    from pydicom.encaps import encapsulate, get_frame
    from pydicom.uid import UID

    if not syntax or not UID(syntax).is_encapsulated or syntax == _DEFLATED:
        return None
    try:
        source.seek(0)
        # Stops at the Pixel Data element's tag: encapsulated pixel data has an
        # undefined length, which pydicom would read whole even when deferring.
        header = dcmread(source, stop_before_pixels=True)
        position = source.tell()
        element = source.read(12)  # tag, VR, 2 reserved bytes, length (explicit VR little endian)
        frames = number_of_frames(header)
        if element[:4] != b"\xe0\x7f\x10\x00" or element[8:12] != b"\xff\xff\xff\xff" or frames < 2:
            return None
        source.seek(position + 12)
        data = get_frame(source, index, number_of_frames=frames)
    except Exception as exc:  # left to the whole-file path, which reports the reason
        logger.debug("frame %d not read alone: %s", index + 1, exc)
        return None
    header.NumberOfFrames = 1
    header.PixelData = encapsulate([data])
    header["PixelData"].VR = "OB"
    return header


def _decode_jpeg_extended(ds: Dataset, source: BinaryIO | None, index: int) -> np.ndarray:
    """12-bit JPEG Extended through GDCM itself: pydicom's GDCM plugin declines it,
    yet GDCM decodes it (checked against DCMTK's dcmdjpeg, identical values)."""
    import numpy as np
    from pydicom import dcmread
    from pydicom.encaps import get_frame

    from archive.dicom_transcode import jpeg_extended_frame_decode

    if source is not None:
        source.seek(0)
        ds = dcmread(source)
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits_stored = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0) or 0)
    if samples != 1 or int(ds.BitsAllocated) != 16:
        raise NotImplementedError("only grey-scale 12-bit JPEG Extended is decoded through GDCM")
    data = get_frame(ds.PixelData, index, number_of_frames=number_of_frames(ds))
    buffer = jpeg_extended_frame_decode(ds, data)
    values = np.frombuffer(buffer, dtype="<u2").reshape(rows, columns) & ((1 << bits_stored) - 1)
    if signed:
        shift = 16 - bits_stored
        return ((values.astype(np.int16) << shift) >> shift).astype(np.int16)
    return values.astype(np.uint16)


# -- attributes -------------------------------------------------------------------------------

# Per-frame attributes of enhanced multi-frame images (PS3.3 C.7.6.16.2), by functional group.
_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    "PixelMeasuresSequence": ("PixelSpacing",),
}


def _frame_attributes(ds: Dataset, index: int) -> Dataset:
    """``ds`` itself, or for an enhanced image a copy of its top level with the frame's
    functional groups (per-frame over shared) merged in."""
    if "SharedFunctionalGroupsSequence" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        return ds
    from pydicom.dataset import Dataset

    merged = Dataset()
    for element in ds:
        if element.tag < 0x52009229 or element.tag > 0x52009230:
            if element.keyword not in _PIXEL_KEYWORDS:
                merged.add(element)
    sources = []
    for keyword, pick in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", index)):
        items = ds.get(keyword)
        if items and len(items) > pick:
            sources.append(items[pick])
    for group in sources:
        for sequence, keywords in _GROUPS.items():
            items = group.get(sequence)
            if not items:
                continue
            for keyword in keywords:
                if keyword in items[0]:
                    setattr(merged, keyword, items[0][keyword].value)
    if hasattr(ds, "file_meta"):
        merged.file_meta = ds.file_meta
    return merged


def _floats(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        value = [value]
    out = []
    for v in value:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            continue
    return out


def _little_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax:
        return syntax != "1.2.840.10008.1.2.2"
    return bool(getattr(ds, "is_little_endian", True) in (True, None))


def _lut(item: Dataset, ds: Dataset) -> tuple[np.ndarray, int, int]:
    """An item's LUT (C.11.1.1.1): the entries, the first stored value mapped, and the bits per entry."""
    import numpy as np

    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 65536  # 0 means 2**16 entries
    first = descriptor[1]
    bits = descriptor[2]
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and first >= 0x8000:
        first -= 0x10000  # the second value is SS for signed pixels, but may have been read as US
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        table = np.frombuffer(data, dtype="<u2" if _little_endian(ds) else ">u2")
    else:
        table = np.asarray(data if hasattr(data, "__iter__") else [data], dtype=np.int64)
    if len(table) < entries:
        raise NoImage(f"a lookup table holds {len(table)} entries, its descriptor says {entries}")
    return table[:entries].astype(np.float64), first, bits


# -- grey-scale pipeline ----------------------------------------------------------------------

Transform = Callable[["np.ndarray"], "np.ndarray"]


def _modality(ds: Dataset) -> Transform:
    """PS3.3 C.11.1: stored values to modality values (float64).

    Written here rather than with pydicom's ``apply_modality_lut``, which builds
    ``uint{bits}`` and so fails on a 12-bit Modality LUT (allowed: 8-16 bits).
    """
    import numpy as np

    sequence = ds.get("ModalityLUTSequence")
    if sequence:
        table, first, _bits = _lut(sequence[0], ds)
        last = len(table) - 1
        # Values below the first mapped one take the first entry, above the last the last.
        return lambda x: table[np.clip(np.rint(x).astype(np.int64) - first, 0, last)]
    slopes = _floats(ds.get("RescaleSlope"))
    intercepts = _floats(ds.get("RescaleIntercept"))
    slope = slopes[0] if slopes else 1.0
    intercept = intercepts[0] if intercepts else 0.0
    if slope == 0:
        slope = 1.0  # a zero slope is an encoding error, not a blank image
    return lambda x: x.astype(np.float64) * slope + intercept


def _window_error(window: Window) -> str | None:
    if window.function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        return f"unknown VOI LUT function {window.function!r}"
    if not (math.isfinite(window.center) and math.isfinite(window.width)):
        return "the window centre and width must be finite"
    if window.function == "LINEAR" and window.width < 1:
        return "a LINEAR window needs a width of at least 1"
    if window.width <= 0:
        return f"a {window.function} window needs a width above 0"
    return None


def _apply_window(x: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 and C.11.2.1.3.1, onto 0..1 (ymin 0, ymax 1)."""
    import numpy as np

    c, w = window.center, window.width
    if window.function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp -> inf far below the centre: y -> 0, as it should
            return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == "LINEAR_EXACT":
        # x <= c - w/2 -> ymin; x > c + w/2 -> ymax; else ((x - c) / w + 0.5)
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    if w == 1:
        return np.where(x <= c - 0.5, 0.0, 1.0)
    # x <= c - 0.5 - (w-1)/2 -> ymin; x > c - 0.5 + (w-1)/2 -> ymax; else ((x - (c - 0.5)) / (w-1) + 0.5)
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def _voi(ds: Dataset, window: Window | None, sample: Callable[[], np.ndarray]) -> Transform:
    """PS3.3 C.11.2: modality values to 0..1."""
    import numpy as np

    if window is not None:
        return lambda x: _apply_window(x, window)
    presets = window_presets(ds)
    if presets:
        chosen = presets[0]
        return lambda x: _apply_window(x, chosen)
    sequence = ds.get("VOILUTSequence")
    if sequence:
        table, first, bits = _lut(sequence[0], ds)
        # Output range is 2**bits - 1 (C.11.2.1.1); entries above it (a writer that declared
        # fewer bits than it filled) widen the range rather than wrap or saturate.
        top = max(float((1 << bits) - 1), float(table.max(initial=0)), 1.0)
        scaled = table / top
        last = len(table) - 1
        return lambda x: scaled[np.clip(np.floor(x).astype(np.int64) - first, 0, last)]
    values = sample()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return lambda x: np.zeros(x.shape)
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:  # a uniform frame: mid-grey rather than black
        return lambda x: np.full(x.shape, 0.5)
    return lambda x: np.clip((x - low) / (high - low), 0.0, 1.0)


def _inverted(ds: Dataset) -> bool:
    """PS3.3 C.11.6.1 / C.8.11.x: MONOCHROME1 is shown inverted, and so is an INVERSE
    Presentation LUT Shape. For MONOCHROME1 the standard pairs the shape INVERSE
    with it as a description of that same inversion (not a second one), and an
    IDENTITY shape there is a writer's error that does not turn a
    MONOCHROME1 image into a negative."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _sample(arr: np.ndarray) -> np.ndarray:
    """At most ``_SAMPLE_LIMIT`` of the frame's values, spread over it (a stride coprime with the
    row length, so that it does not walk down a few columns)."""
    flat = arr.reshape(-1)
    step = max(1, math.ceil(flat.size / _SAMPLE_LIMIT))
    columns = arr.shape[-1] if arr.ndim else 1
    while step > 1 and math.gcd(step, columns) != 1:
        step += 1
    return flat[::step]


def _grey(arr: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    import numpy as np

    modality = _modality(ds)
    voi = _voi(ds, window, lambda: modality(_sample(arr)))
    invert = _inverted(ds)

    def pipeline(x: np.ndarray) -> np.ndarray:
        y = voi(modality(x))
        if invert:
            y = 1.0 - y
        return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)

    if arr.dtype.kind in "iub" and arr.dtype.itemsize <= 2:
        # Every possible stored value once, then one look-up per pixel.
        unsigned = np.dtype(f"u{arr.dtype.itemsize}")
        domain = np.arange(1 << (8 * arr.dtype.itemsize), dtype=unsigned)
        table = pipeline(domain.view(arr.dtype) if arr.dtype.kind == "i" else domain)
        return table[arr.view(unsigned)]
    out = np.empty(arr.shape, dtype=np.uint8)
    rows_per_chunk = max(1, _CHUNK // max(1, arr.shape[-1]))
    for start in range(0, arr.shape[0], rows_per_chunk):
        out[start : start + rows_per_chunk] = pipeline(arr[start : start + rows_per_chunk])
    return out


# -- colour -----------------------------------------------------------------------------------


def _to_8bit(arr: np.ndarray, top: int) -> np.ndarray:
    import numpy as np

    if arr.dtype == np.uint8 and top == 255:
        return arr
    if top <= 0:
        raise NoImage("the colour samples have no range")
    if arr.dtype.kind == "f":
        return np.rint(np.clip(arr, 0, top) * (255.0 / top)).astype(np.uint8)
    wide = np.clip(arr.astype(np.uint64), 0, top)
    return ((wide * 255 + top // 2) // top).astype(np.uint8)


def _palette(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """PS3.3 C.7.6.3.1.5 / C.7.9: indices through the red, green and blue tables.

    Plain tables are looked up here: pydicom's ``apply_color_lut`` keeps the
    clipped indices in the entries' dtype, so an 8-bit table of more than 256
    entries would wrap them. Segmented tables (C.7.9.2) are left to pydicom.
    """
    import numpy as np

    if "RedPaletteColorLookupTableData" not in ds:
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)[..., :3]  # an alpha table, if any, is not shown
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        top = 65535 if bits == 16 or rgb.max(initial=0) > 255 else 255
        return _to_8bit(rgb, top)
    little = _little_endian(ds)
    channels = []
    indices: dict[tuple[int, int], np.ndarray] = {}
    for colour in ("Red", "Green", "Blue"):
        descriptor = [int(v) for v in ds[f"{colour}PaletteColorLookupTableDescriptor"].value]
        entries = descriptor[0] or 65536
        first = descriptor[1]
        if int(ds.get("PixelRepresentation", 0) or 0) == 1 and first >= 0x8000:
            first -= 0x10000
        data = ds[f"{colour}PaletteColorLookupTableData"].value
        if not isinstance(data, bytes | bytearray):
            table = np.asarray(data, dtype=np.uint16)
        elif len(data) == entries:  # 8-bit entries packed one per byte
            table = np.frombuffer(data, dtype=np.uint8)
        else:  # one 16-bit word per entry, whatever the descriptor's bits
            table = np.frombuffer(data, dtype="<u2" if little else ">u2")[:entries]
        if len(table) < entries:
            raise NoImage(f"the {colour.lower()} palette holds {len(table)} entries, its descriptor says {entries}")
        # Entries hold ``bits`` bits (8 or 16); an 8-bit descriptor over 16-bit values is read as 16.
        top = (1 << descriptor[2]) - 1
        if int(table.max(initial=0)) > top:
            top = 65535
        table8 = _to_8bit(table, top)
        if (first, entries) not in indices:  # the three tables nearly always share both
            indices[first, entries] = np.clip(arr.astype(np.int64) - first, 0, entries - 1)
        channels.append(table8[indices[first, entries]])
    return np.stack(channels, axis=-1)


def _display(arr: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """The decoded frame through the display pipeline: uint8 grey (2-D) or RGB (3-D)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        if arr.ndim != 2:
            raise NoImage(f"unexpected palette pixel layout {arr.shape}")
        return _palette(arr, ds)
    if samples == 3 or arr.ndim == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise NoImage(f"unexpected colour pixel layout {arr.shape}")
        if arr.dtype.kind == "f":
            return _to_8bit(arr, 1)
        bits = int(ds.get("BitsStored", 8) or 8)
        return _to_8bit(arr, (1 << bits) - 1)
    if samples != 1 or arr.ndim != 2:
        raise NoImage(f"{samples} samples per pixel ({photometric}) cannot be rendered")
    return _grey(arr, ds, window)


# -- geometry ---------------------------------------------------------------------------------


def _pixel_aspect(ds: Dataset) -> float:
    """Height over width of one pixel: Pixel Aspect Ratio (vertical\\horizontal), else the
    Pixel Spacing (row spacing\\column spacing), else Imager Pixel Spacing; 1 when unknown."""
    for keyword in ("PixelAspectRatio", "PixelSpacing", "ImagerPixelSpacing"):
        values = _floats(ds.get(keyword))
        if len(values) >= 2 and values[0] > 0 and values[1] > 0:
            ratio = values[0] / values[1]
            return 1.0 if abs(ratio - 1.0) < _SQUARE_TOLERANCE else ratio
    return 1.0


def _geometry(image: Any, *, aspect: float, viewport: Viewport | None, max_size: int | None, max_pixels: int) -> Any:
    """Crop, correct the pixels' proportions, fit, and resample once."""
    from PIL import Image

    if viewport is not None and viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        if sw <= 0 or sh <= 0:
            raise ValueError("the viewport's source width and height must be positive")
        image = image.crop((sx, sy, sx + sw, sy + sh))
    # Display size in source-pixel units: stretch (never shrink) the short pixel side.
    width, height = float(image.width), float(image.height)
    if aspect > 1:
        height *= aspect
    elif aspect < 1:
        width /= aspect
    scale = 1.0
    if viewport is not None and (viewport.width or viewport.height):
        vw = viewport.width or width
        vh = viewport.height or height
        scale = min(vw / width, vh / height)
    if max_size is not None:
        scale = min(scale, max_size / max(width, height))
    if max_pixels and width * height * scale * scale > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != image.size:
        reducing = 2.0 if size[0] * size[1] < image.width * image.height else None
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=reducing)
    return image
