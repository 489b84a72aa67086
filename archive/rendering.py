"""Rendering one frame of a stored DICOM image as JPEG or PNG, for viewers and thumbnails.

A first, correct conversion (a later issue perfects it): the stored values go
through the Modality LUT (rescale slope/intercept), then the VOI transform
(PS3.3 C.11.2: the window asked for, else the data set's window or VOI LUT,
else the frame's own range), MONOCHROME1 is inverted so that the result is
always "zero is black", colour images are converted to RGB (YBR by pydicom,
PALETTE COLOR through its lookup tables), and the 8-bit result is encoded by
Pillow. Anything that cannot be rendered (no pixel data, a codec pydicom has
no plugin for, a corrupt frame) raises :class:`NoImage` with the reason,
never another exception.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # numpy and Pillow load on first use, not when Django starts
    import numpy as np
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = 128
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NO_PIXELS = "the object has no pixel data (it is not an image)"


class NoImage(Exception):
    """The object has no frame that can be rendered; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def has_pixels(ds: Dataset) -> bool:
    return any(kw in ds for kw in _PIXEL_KEYWORDS)


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
    window : Window, optional
        Overrides the data set's VOI window.
    viewport : Viewport, optional
        Output size (fitted, aspect ratio kept) and source region.
    max_size : int, optional
        Thumbnails: the longest side, in pixels.

    Raises
    ------
    NoImage
        The object has no pixel data, or the frame cannot be decoded.
    ValueError
        A parameter out of range (frame number, media type, quality).
    """
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"cannot render as {media_type!r}: only {', '.join(MEDIA_TYPES)}")
    if not 1 <= quality <= 100:
        raise ValueError("quality must be between 1 and 100")
    if source is None and not has_pixels(ds):
        raise NoImage(_NO_PIXELS)
    frames = number_of_frames(ds)
    if not 1 <= frame <= frames:
        raise ValueError(f"frame {frame} does not exist: the image has {frames} frame(s)")
    pixels = _decode(ds, source, frame - 1)
    try:
        image = _to_8bit(pixels, ds, window)
    except NoImage:
        raise
    except Exception as exc:  # odd attribute values: a clear refusal, never a crash
        logger.warning("cannot render %s: %s", ds.get("SOPInstanceUID", "?"), exc)
        raise NoImage(f"the image cannot be rendered: {type(exc).__name__}: {exc}") from None
    return _encode(image, media_type=media_type, quality=quality, viewport=viewport, max_size=max_size)


def _decode(ds: Dataset, source: BinaryIO | None, index: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        if source is not None:
            source.seek(0)
            return pixel_array(source, index=index)
        return pixel_array(ds, index=index)
    except AttributeError as exc:
        if "no 'Pixel Data'" in str(exc):
            raise NoImage(_NO_PIXELS) from None
        raise NoImage(f"the pixel data cannot be decoded: {exc}") from None
    except Exception as exc:
        # A transfer syntax without an installed decoder, a truncated frame...
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise NoImage(f"the pixel data cannot be decoded: {reason}") from None


def _to_8bit(arr: np.ndarray, ds: Dataset, window: Window | None) -> Any:
    import numpy as np
    from PIL import Image
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        # LUT entries are 8 or 16 bits (PS3.3 C.7.6.3.1.5): scale by what they hold.
        top = 255 if rgb.dtype == np.uint8 or rgb.max(initial=0) <= 255 else 65535
        return Image.fromarray(_scale(rgb, 0, top), "RGB")
    if samples == 3 or arr.ndim == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise NoImage(f"unexpected colour pixel layout {arr.shape}")
        bits = int(ds.get("BitsStored", 8) or 8)
        return Image.fromarray(_scale(arr, 0, (1 << bits) - 1), "RGB")
    if samples != 1:
        raise NoImage(f"{samples} samples per pixel ({photometric}) cannot be rendered")

    values = apply_modality_lut(arr, ds).astype(np.float64)
    if window is not None:
        out = _window(values, window)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = _window(values, _dataset_window(ds))
    elif "VOILUTSequence" in ds:
        lut_out = apply_voi_lut(values.astype(np.int64), ds, index=0, prefer_lut=True).astype(np.float64)
        out = _scale(lut_out, float(lut_out.min(initial=0)), float(lut_out.max(initial=0)))
    else:
        out = _scale(values, float(values.min(initial=0)), float(values.max(initial=0)))
    if photometric == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out, "L")


def _dataset_window(ds: Dataset) -> Window:
    from pydicom.multival import MultiValue

    def first(value: Any) -> float:
        return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)

    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return Window(center=first(ds.WindowCenter), width=first(ds.WindowWidth), function=function)


def _window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2/C.11.2.1.3: the VOI function onto 0..255."""
    import numpy as np

    c, w = window.center, window.width
    if window.function == "SIGMOID":
        if w <= 0:
            raise ValueError("a SIGMOID window needs a width above 0")
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "LINEAR_EXACT":
        if w <= 0:
            raise ValueError("a LINEAR_EXACT window needs a width above 0")
        out = ((values - c) / w + 0.5) * 255.0
    else:
        if w < 1:
            raise ValueError("a LINEAR window needs a width of at least 1")
        if w == 1:
            out = np.where(values <= c - 0.5, 0.0, 255.0)
        else:
            out = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    import numpy as np

    values = values.astype(np.float64)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _encode(image: Any, *, media_type: str, quality: int, viewport: Viewport | None, max_size: int | None) -> bytes:
    from PIL import Image

    if viewport is not None:
        if viewport.region is not None:
            sx, sy, sw, sh = viewport.region
            if sw <= 0 or sh <= 0:
                raise ValueError("the viewport's source width and height must be positive")
            image = image.crop((sx, sy, sx + sw, sy + sh))
        if viewport.width or viewport.height:
            vw = viewport.width or image.width
            vh = viewport.height or image.height
            scale = min(vw / image.width, vh / image.height)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            if size != image.size:
                image = image.resize(size, Image.Resampling.LANCZOS)
    if max_size is not None:
        image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if media_type == PNG:
        image.save(out, format="PNG", optimize=False)
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
