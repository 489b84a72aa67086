"""Media types and Accept negotiation, the error every service raises, JSON bodies.

Nothing here imports the rest of the package: every other module imports this one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian

from kernel.errors import PacsError

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"


# DICOMweb's errors are HTTP's own: PS3.18 says which status each refusal gets, so the
# service names the status and the code follows from it.
_CODES = {
    400: "invalid",
    404: "not_found",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


class DicomwebError(PacsError):
    """A request the service refuses, with the HTTP status and a message for the client.

    The views answer ``status`` with the message in DICOMweb's own body
    (``{"detail": ...}``), not a problem document: see :mod:`kernel.problems`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, code=_CODES.get(status, "error"))
        self.status = status


@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` as (lower-case type, parameters with lower-case names)."""
    pieces = _split_outside_quotes(text, ";")
    media = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"').strip()
    return media, params


def parse_accept(text: str | None) -> list[MediaRange]:
    """The Accept header's media ranges, best first (no header: anything)."""
    if not text or not text.strip():
        return [MediaRange("*/*")]
    ranges = []
    for item in _split_outside_quotes(text, ","):
        if not item.strip():
            continue
        media, params = parse_media_type(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append(MediaRange(media, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", "*", "", media_type):
        return True
    if pattern.endswith("/*") or pattern.endswith("/"):
        return media_type.split("/")[0] == pattern.split("/")[0]
    return False


def multipart_acceptable(ranges: list[MediaRange], media_type: str, transfer_syntax: str | None) -> bool:
    """Whether a multipart/related response of ``media_type`` parts in ``transfer_syntax`` is acceptable.

    A range without a transfer-syntax parameter accepts the stored one: the
    archive sends what it holds (PS3.18 leaves the default to the origin
    server for objects it does not transcode). An explicit one must be ``*``
    or the stored transfer syntax. ``application/octet-stream`` with
    ``transfer-syntax=*`` accepts compressed frames too (what OHIF asks).
    """
    for r in ranges:
        if r.type in ("*/*", "*", "multipart/*", MULTIPART):
            inner = r.params.get("type", "*/*").lower()
        elif r.type == media_type:
            inner = r.type  # a single-part type: the multipart of it is the closest we serve
        else:
            continue
        ts = r.params.get("transfer-syntax")
        if inner == OCTET_STREAM and media_type != OCTET_STREAM:
            if ts == "*" or (ts is not None and ts == transfer_syntax):
                return True
            continue
        if not _type_matches(inner, media_type):
            continue
        if ts is None or ts == "*" or transfer_syntax is None or ts == transfer_syntax:
            return True
        if media_type == OCTET_STREAM and ts == ExplicitVRLittleEndian:
            return True  # native frames are sent little endian whatever the file's encoding
    return False


def json_acceptable(ranges: list[MediaRange]) -> bool:
    return any(_type_matches(r.type, DICOM_JSON) or r.type == "application/json" for r in ranges)


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def error_body(message: str) -> bytes:
    return dumps({"detail": message})
