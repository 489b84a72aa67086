"""Transcoding on the way out: a stored object in a transfer syntax the reader accepts.

The archive stores what it was sent, byte for byte, and never transcodes on
ingest (``archive.dicom``). A reader that does not accept the stored transfer
syntax (a C-GET or C-MOVE peer that accepted only uncompressed contexts, a
WADO-RS client asking ``transfer-syntax=1.2.840.10008.1.2.1``) gets a copy made
here, in memory; the archived file is never written.

What can be produced, from any stored syntax pydicom reads:

* the uncompressed syntaxes, always: Explicit VR Little Endian, Implicit VR
  Little Endian, Deflated Explicit VR Little Endian (decoding compressed pixel
  data with pydicom's plugins; 12-bit JPEG Extended, which pydicom's GDCM
  plugin refuses, with GDCM directly: ``_gdcm_decode``);
* the lossless compressed syntaxes whose encoder is installed: RLE Lossless
  (pydicom's own), JPEG-LS Lossless (pyjpegls), JPEG 2000 Lossless
  (pylibjpeg-openjpeg);
* lossy syntaxes only when the caller says the request asked for them
  (``lossy=True``): JPEG Baseline (Pillow, 8-bit data), JPEG-LS near-lossless,
  JPEG 2000. The copy then says so (Lossy Image Compression "01" with its
  method), PS3.3 C.7.6.1.1.5.

An object without pixel data (a report, an SR) is given in the uncompressed
syntaxes only. A conversion that cannot be done raises :class:`TranscodeError`
with the reason; the caller turns it into a failed sub-operation or an HTTP
error.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from kernel.errors import PacsError

logger = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
# Lossless encoders, in the order a caller with no preference gets them; each needs its plugin.
LOSSLESS_COMPRESSED = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
# Lossy encoders: only when the request asked for one of these by name.
LOSSY_COMPRESSED = (JPEGBaseline8Bit, JPEGLSNearLossless, JPEG2000)
# Every syntax whose compression loses information (PS3.5 8.2, A.4).
LOSSY_SYNTAXES = frozenset(
    {
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLSNearLossless,
        JPEG2000,
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 multi-component
        "1.2.840.10008.1.2.4.203",  # HTJ2K
        "1.2.840.10008.1.2.4.100",  # MPEG2 and the video syntaxes
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
    }
)
_LOSSY_METHOD = {JPEGBaseline8Bit: "ISO_10918_1", JPEGLSNearLossless: "ISO_14495_1", JPEG2000: "ISO_15444_1"}
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


class TranscodeError(PacsError):
    """The object cannot be given in the transfer syntax asked (the message says why)."""

    code = "transcode"


@dataclass(frozen=True)
class Transcoded:
    """A Part 10 file in ``transfer_syntax``; ``changed`` False: the stored bytes themselves."""

    data: bytes
    transfer_syntax: str
    changed: bool


def _encoder_available(uid: str) -> bool:
    if uid == JPEGBaseline8Bit:
        try:
            import PIL.Image  # noqa: F401  (Pillow writes baseline JPEG)
        except ImportError:
            return False
        return True
    try:
        from pydicom.pixels.encoders.base import get_encoder

        return bool(get_encoder(uid).is_available)
    except Exception:
        return False


def producible(source: str, *, has_pixels: bool = True, lossy: bool = False) -> list[str]:
    """The transfer syntaxes an object stored in ``source`` can be given in, the stored one first.

    Whether a given image can be decoded and encoded is known only by trying
    (:func:`dataset_transcode`); this is what the installed encoders allow.
    """
    out = [str(source)]
    out += [ts for ts in UNCOMPRESSED if ts != source]
    if has_pixels:
        out += [ts for ts in LOSSLESS_COMPRESSED if ts != source and _encoder_available(ts)]
        if lossy:
            out += [ts for ts in LOSSY_COMPRESSED if ts != source and _encoder_available(ts)]
    return out


def target_choose(
    source: str, acceptable: Iterable[str], *, has_pixels: bool = True, lossy: bool = False
) -> str | None:
    """The first of ``acceptable`` (the reader's order of preference) that can be produced; None if none."""
    possible = set(producible(source, has_pixels=has_pixels, lossy=lossy))
    return next((str(ts) for ts in acceptable if str(ts) in possible), None)


def has_pixel_data(ds: Dataset) -> bool:
    return any(tag in ds for tag in _PIXEL_TAGS)


def dataset_transcode(ds: Dataset, target: str) -> Dataset:
    """``ds`` (read whole, pixel data included) re-encoded in ``target``, in place; returned.

    The SOP Instance UID is kept: the same object in another transfer syntax
    (a lossy target is marked as such). Raises :class:`TranscodeError`.
    """
    source = UID(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    target = UID(target)
    if target == source:
        return ds
    pixels = has_pixel_data(ds)
    if not pixels and target not in UNCOMPRESSED:
        raise TranscodeError(f"an object without pixel data is given uncompressed only, not in {target.name}")
    if target not in UNCOMPRESSED and target not in LOSSLESS_COMPRESSED and target not in LOSSY_COMPRESSED:
        raise TranscodeError(f"the archive has no encoder for {target.name} ({target})")
    try:
        if pixels:
            _decode(ds, source)
        if target in UNCOMPRESSED:
            ds.file_meta.TransferSyntaxUID = target
        elif target == JPEGBaseline8Bit:
            _jpeg_baseline_encode(ds)
        else:
            _encode(ds, target)
    except TranscodeError:
        raise
    except Exception as exc:
        raise TranscodeError(f"cannot convert from {source.name} to {target.name}: {exc}") from exc
    return ds


def file_transcode(source: bytes | BinaryIO | Path, acceptable: Iterable[str], *, lossy: bool = False) -> Transcoded:
    """A stored Part 10 file in the first of ``acceptable`` that can be produced.

    ``source``: the file's bytes, an open file (read from its start) or a path.
    The stored syntax, when acceptable, gives the stored bytes unchanged.
    Raises :class:`TranscodeError` when none of ``acceptable`` can be produced
    or the conversion fails.
    """
    data = _read_all(source)
    acceptable = [str(ts) for ts in acceptable]
    try:
        header = dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise TranscodeError(f"the stored file cannot be read: {exc}") from exc
    stored = str(header.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    if stored in acceptable and acceptable.index(stored) == 0:
        return Transcoded(data, stored, changed=False)
    pixels = has_pixel_data(dcmread(io.BytesIO(data), specific_tags=list(_PIXEL_TAGS)))
    possible = set(producible(stored, has_pixels=pixels, lossy=lossy))
    targets = [ts for ts in acceptable if ts in possible]
    if not targets:
        raise TranscodeError(
            f"the object is stored in {UID(stored).name} and cannot be given in {', '.join(acceptable) or 'nothing'}"
        )
    failures = []
    for target in targets:  # the next acceptable one when an encoder refuses this image
        if target == stored:
            return Transcoded(data, stored, changed=False)
        try:
            full = dcmread(io.BytesIO(data))
            return Transcoded(dataset_bytes(dataset_transcode(full, target)), target, changed=True)
        except TranscodeError as exc:
            failures.append(exc.message)
        except Exception as exc:
            failures.append(f"cannot read the stored file: {_first_line(exc)}")
    raise TranscodeError("; ".join(failures)[:1000])


def dataset_bytes(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file in its file meta's transfer syntax."""
    buf = io.BytesIO()
    try:
        dcmwrite(buf, ds, enforce_file_format=True)
    except Exception as exc:
        ts = UID(str(ds.file_meta.TransferSyntaxUID))
        raise TranscodeError(f"cannot write the object in {ts.name}: {_first_line(exc)}") from exc
    return buf.getvalue()


def native_frames(ds: Dataset) -> list[bytes]:
    """The frames of a decoded (uncompressed, little endian) data set, each as bytes.

    1-bit frames that do not end on a byte boundary are re-aligned (PS3.18 8.7.3.3.2)."""
    import numpy as np

    data = bytes(ds.PixelData)
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame_bits = rows * columns * samples * bits
    out = []
    for index in range(frames):
        first = index * frame_bits
        start, end = first // 8, -(-(first + frame_bits) // 8)
        chunk = data[start:end]
        if first % 8 or frame_bits % 8:
            bits_array = np.unpackbits(np.frombuffer(chunk, dtype=np.uint8), bitorder="little")
            offset = first - start * 8
            chunk = np.packbits(bits_array[offset : offset + frame_bits], bitorder="little").tobytes()
        out.append(chunk)
    return out


def encapsulated_frames(ds: Dataset) -> list[bytes]:
    """The frames of an encapsulated data set (each frame's fragments joined)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=frames))


# --- decoding -----------------------------------------------------------------------------------


def _read_all(source: bytes | BinaryIO | Path) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, Path | str):
        return Path(source).read_bytes()
    source.seek(0)
    return source.read()


def _decode(ds: Dataset, source: UID) -> None:
    """Make the pixel data native little endian (in place)."""
    if source.is_compressed:
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:
            if source == JPEGExtended12Bit:
                # pydicom's GDCM plugin refuses 12-bit JPEG Extended (and pylibjpeg-libjpeg,
                # which decodes it, is GPLv3 and not installed): GDCM itself decodes it.
                _gdcm_decode(ds, exc)
            else:
                _decode_through_array(ds, source, exc)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return
    if source == ExplicitVRBigEndian:
        _swap_binary(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


# pydicom keeps these values as the file's bytes and does not swap them when
# writing another byte order (pydicom.filewriter.dcmwrite's warning).
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _swap_binary(ds: Dataset) -> None:
    import numpy as np

    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_binary(item)
            continue
        size = _WORD_SIZE.get(elem.VR)
        if size is None or not isinstance(elem.value, bytes | bytearray) or len(elem.value) % size:
            continue
        elem.value = np.frombuffer(elem.value, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def _decode_through_array(ds: Dataset, source: UID, cause: Exception) -> None:
    """``Dataset.decompress`` failed where ``pixel_array`` may not: pydicom 3.0's
    frame iterator writes its sign correction into a read-only buffer (a JPEG 2000
    stream whose signedness differs from Pixel Representation)."""
    try:
        arr = ds.pixel_array
    except Exception:
        raise TranscodeError(f"cannot decode the {source.name} pixel data: {_first_line(cause)}") from cause
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3 and photometric.startswith("YBR"):
        photometric = "RGB"  # pixel_array gives colour as RGB
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.set_pixel_data(arr, photometric, int(ds.BitsStored), generate_instance_uid=False)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return " ".join(text.split("\n")[:3])[:300]


def jpeg_extended_frame_decode(ds: Dataset, frame: bytes) -> bytes:
    """One frame of JPEG Extended (12-bit) decoded by GDCM itself, as raw little-endian
    samples: pydicom's GDCM plugin declines it, yet GDCM decodes it (checked against DCMTK's
    dcmdjpeg, identical values). ImportError without GDCM; ValueError when the frame does
    not decode to its geometry. The rendering pipeline reads its frames through this too."""
    import gdcm

    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
    signed = int(ds.get("PixelRepresentation", 0) or 0)
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(frame)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((columns, rows, 1))
    image.SetDataElement(element)
    pi = gdcm.PhotometricInterpretation.GetPIType(str(ds.get("PhotometricInterpretation", "MONOCHROME2")))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
    if samples > 1:
        image.SetPlanarConfiguration(int(ds.get("PlanarConfiguration", 0) or 0))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    image.SetPixelFormat(gdcm.PixelFormat(samples, bits_allocated, bits_stored, bits_stored - 1, signed))
    data = image.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM returns char* as str
    expected = rows * columns * samples * (bits_allocated // 8)
    if len(data) != expected:
        raise ValueError(f"a frame decodes to {len(data)} bytes, not {expected}")
    return data


def _gdcm_decode(ds: Dataset, cause: Exception) -> None:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits_allocated = int(ds.BitsAllocated)
    try:
        decoded = [jpeg_extended_frame_decode(ds, frame) for frame in encapsulated_frames(ds)]
    except ImportError:
        raise TranscodeError(f"cannot decode the JPEG Extended pixel data: {_first_line(cause)}") from cause
    except ValueError as exc:
        raise TranscodeError(f"cannot decode the JPEG Extended pixel data: {exc}") from exc
    pixel_data = b"".join(decoded)
    ds.PixelData = pixel_data + (b"\x00" if len(pixel_data) % 2 else b"")
    ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
    ds["PixelData"].is_undefined_length = False
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            delattr(ds, keyword)
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.LossyImageCompression = "01"  # it was JPEG Extended: decoded, the loss stays


# --- encoding -----------------------------------------------------------------------------------


def _encode(ds: Dataset, target: UID) -> None:
    options: dict[str, Any] = {}
    if target == RLELossless:
        options["encoding_plugin"] = "pydicom"  # pylibjpeg-rle panics on what it cannot do
    elif target == JPEG2000:
        options["j2k_cr"] = [10]
    elif target == JPEGLSNearLossless:
        options["jls_error"] = 2
    before = len(ds.PixelData)
    ds.compress(target, generate_instance_uid=False, **options)
    if target in _LOSSY_METHOD:
        _mark_lossy(ds, target, before)


def _mark_lossy(ds: Dataset, target: UID, uncompressed_size: int) -> None:
    compressed = sum(len(f) for f in encapsulated_frames(ds)) or 1
    ds.LossyImageCompression = "01"
    methods = list(ds.get("LossyImageCompressionMethod", []) or [])
    ratios = [str(r) for r in (ds.get("LossyImageCompressionRatio", []) or [])]
    if isinstance(ds.get("LossyImageCompressionMethod"), str):
        methods = [ds.LossyImageCompressionMethod]
    ds.LossyImageCompressionMethod = [*methods, _LOSSY_METHOD[target]]
    ds.LossyImageCompressionRatio = [*ratios, f"{uncompressed_size / compressed:.4g}"[:16]]


def _jpeg_baseline_encode(ds: Dataset) -> None:
    """JPEG Baseline with Pillow (pydicom has no JPEG encoder): 8-bit grey or RGB only."""
    import numpy as np
    from PIL import Image

    bits = int(ds.BitsAllocated)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if bits != 8 or int(ds.get("PixelRepresentation", 0) or 0) != 0:
        raise TranscodeError("JPEG Baseline is made for unsigned 8-bit images only")
    if (samples, photometric) not in ((1, "MONOCHROME1"), (1, "MONOCHROME2"), (3, "RGB")):
        raise TranscodeError(f"JPEG Baseline is made for grey or RGB images, not {photometric}")
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[np.newaxis]
    encoded = []
    for frame in arr:
        out = io.BytesIO()
        # 4:2:2 for colour: YBR_FULL_422, as PS3.5 8.2.1 names JPEG's usual subsampling.
        Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(out, "JPEG", quality=90, subsampling=1)
        encoded.append(out.getvalue())
    before = len(ds.PixelData)
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if samples == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    _mark_lossy(ds, JPEGBaseline8Bit, before)
