"""A stored file's full DICOM header as flat, indented rows, for staff to read.

No ORM and no HTML here: the admin opens the file and renders the rows (its
templates escape every value). Pixel data is never read, and values too large
to be worth loading (over ``defer_size``) are described, not loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from .dicom import read_dataset

logger = logging.getLogger(__name__)

# Beyond these the page would be unreadable (and slow): a value is cut, a
# header with more rows (a big RT structure set) is cut with a note.
MAX_VALUE_CHARS = 200
MAX_ROWS = 5000
# Binary values this short are small enough to be worth seeing in hex
# (File Meta Information Version, flags).
HEX_PREVIEW_BYTES = 16

_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class HeaderRow:
    """One line of the displayed header: an element, or an item of a sequence."""

    depth: int
    tag: str
    keyword: str
    name: str
    vr: str
    length: str
    value: str
    # The value's full length in characters when ``value`` was cut.
    full_length: int | None = None
    kind: str = "element"  # "element", "sequence", "item", "skipped" (not loaded) or "error"

    @property
    def indent_level(self) -> int:
        """The indentation class of the row (``dicom-depth-N`` in dicom-header.css): a class,
        not a style attribute, which the Content-Security-Policy refuses."""
        return min(self.depth, 15)


@dataclass(frozen=True)
class Header:
    meta: list[HeaderRow]
    rows: list[HeaderRow]
    # True when MAX_ROWS was reached and the rest of the data set is not shown.
    truncated: bool


def read_header(fh: BinaryIO, *, max_rows: int | None = None) -> Header:
    """Read an open Part 10 file and flatten its file meta and data set.

    Read with :func:`archive.dicom.read_dataset` (no pixel data, large values
    deferred) from an open file, so that the caller decides where the bytes
    come from (``archive.storage.tiers.open_copy``).
    Deferred values are never loaded except sequences, so the file must stay
    open while this runs; it does not need to afterwards.

    Raises whatever pydicom raises on a file it cannot parse.
    """
    if max_rows is None:
        max_rows = MAX_ROWS
    ds = read_dataset(fh)
    meta = dataset_rows(getattr(ds, "file_meta", None) or Dataset(), max_rows=max_rows)[0]
    rows, truncated = dataset_rows(ds, max_rows=max_rows)
    return Header(meta=meta, rows=rows, truncated=truncated)


def format_tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def dataset_rows(ds: Dataset, *, max_rows: int = MAX_ROWS) -> tuple[list[HeaderRow], bool]:
    """Every element of ``ds`` (sequences expanded) as rows; True as well when cut at ``max_rows``."""
    rows: list[HeaderRow] = []
    complete = _walk(ds, 0, rows, max_rows)
    return rows, not complete


def _walk(ds: Dataset, depth: int, rows: list[HeaderRow], max_rows: int) -> bool:
    for tag in sorted(ds.keys()):
        if len(rows) >= max_rows:
            return False
        elem = _element(ds, BaseTag(tag), depth, rows)
        if elem is None or elem.VR != "SQ":
            continue
        for number, item in enumerate(elem.value or (), start=1):
            if len(rows) >= max_rows:
                return False
            rows.append(
                HeaderRow(
                    depth=depth + 1,
                    tag=format_tag(0xFFFEE000),
                    keyword="Item",
                    name=f"#{number}",
                    vr="",
                    length="",
                    value="",
                    kind="item",
                )
            )
            if not _walk(item, depth + 2, rows, max_rows):
                return False
    return True


def _element(ds: Dataset, tag: BaseTag, depth: int, rows: list[HeaderRow]) -> DataElement | None:
    """Append the row of one element; return the element when its value was loaded."""
    # A raw element too (deferred, or never accessed): pydicom's overload says DataElement.
    raw = cast("DataElement | RawDataElement", ds.get_item(tag, keep_deferred=True))
    length = _raw_length(raw)
    raw_vr = (raw.VR if isinstance(raw, RawDataElement) else None) or _dictionary_vr(tag)

    def undecoded(value: str, kind: str) -> None:
        keyword, name = _names(ds, tag, None)
        rows.append(
            HeaderRow(
                depth=depth,
                tag=format_tag(tag),
                keyword=keyword,
                name=name,
                vr=raw_vr or "",
                length=length,
                value=value,
                kind=kind,
            )
        )

    deferred = isinstance(raw, RawDataElement) and raw.value is None and raw.length not in (0, _UNDEFINED_LENGTH)
    if deferred and raw_vr != "SQ" and isinstance(raw, RawDataElement):  # isinstance again for mypy
        # Over defer_size and not a sequence: a large binary or text
        # value; its size is what a reader of the header needs.
        undecoded(f"<{raw.length} bytes>", "skipped")
        return None
    try:
        elem = ds[tag]
    except Exception as exc:  # a value that does not decode must not hide the rest of the header
        logger.warning("element %s does not decode: %s: %s", format_tag(tag), type(exc).__name__, exc)
        undecoded(f"{type(exc).__name__}: {exc}", "error")
        return None
    keyword, name = _names(ds, tag, elem)
    if elem.VR == "SQ":
        count = len(elem.value or ())
        value = f"{count} item" if count == 1 else f"{count} items"
        kind = "sequence"
        full_length = None
    else:
        value, full_length = format_value(elem.value)
        kind = "element"
    rows.append(
        HeaderRow(
            depth=depth,
            tag=format_tag(tag),
            keyword=keyword,
            name=name,
            vr=str(elem.VR or ""),
            length=length,
            value=value,
            full_length=full_length,
            kind=kind,
        )
    )
    return elem


def _raw_length(raw: Any) -> str:
    if not isinstance(raw, RawDataElement):
        return ""
    if raw.length == _UNDEFINED_LENGTH:
        return "∞"  # undefined length: delimited, not counted
    return str(raw.length)


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _names(ds: Dataset, tag: BaseTag, elem: DataElement | None) -> tuple[str, str]:
    """The element's keyword and dictionary name (private ones through their creator)."""
    if elem is None:
        elem = DataElement(tag, _dictionary_vr(tag) if not tag.is_private else "UN", None)
    if tag.is_private and not tag.is_private_creator and elem.private_creator is None:
        # pydicom names a private element only once it knows its creator,
        # which lives in another element of the same group.
        creator = ds.get_item(BaseTag((tag.group << 16) | (tag.element >> 8)))
        if creator is not None:
            try:
                value = ds[creator.tag].value
                elem.private_creator = str(value) if value else None
            except Exception:
                pass
    try:
        return elem.keyword, elem.name
    except Exception:
        return "", ""


def format_value(value: Any) -> tuple[str, int | None]:
    """A value as text, cut at MAX_VALUE_CHARS; the full length in characters when cut."""
    if value is None:
        return "", None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        text = f"<{len(data)} bytes>"
        if 0 < len(data) <= HEX_PREVIEW_BYTES:
            text += " " + data.hex(" ")
        return text, None
    if isinstance(value, str):
        text = value
    elif isinstance(value, (MultiValue, list, tuple)):
        text = "\\".join(_scalar(v) for v in value)
    else:
        text = _scalar(value)
    if len(text) > MAX_VALUE_CHARS:
        return text[:MAX_VALUE_CHARS] + "…", len(text)
    return text, None


def _scalar(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)
