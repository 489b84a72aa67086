"""WADO-URI (PS3.18 chapter 9): ``wado?requestType=WADO&...``, the file or a rendered image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archive.rendering import pipeline as rendering
from kernel.web import content_disposition

from ..models import Instance
from . import transcoding
from .media import DICOM, DicomwebError, MediaRange, _type_matches, parse_accept
from .multipart import Streamed, file_chunks
from .rendered import RenderParams, render_params
from .scope import _open_one, check_uid


@dataclass
class WadoUriRequest:
    study_uid: str
    series_uid: str
    sop_uid: str
    content_types: list[MediaRange]
    frame: int
    params: RenderParams
    transfer_syntax: str | None


def wado_uri_parse(query: Any) -> WadoUriRequest:
    """Check a WADO-URI query (PS3.18 chapter 9); 400 with the reason for anything wrong."""
    request_type = query.get("requestType")
    if request_type is None:
        raise DicomwebError(400, "requestType is missing (it must be WADO)")
    if request_type != "WADO":
        raise DicomwebError(400, f"requestType {request_type[:20]!r} is not supported (only WADO)")
    uids = {}
    for name in ("studyUID", "seriesUID", "objectUID"):
        value = query.get(name, "")
        if not value:
            raise DicomwebError(400, f"{name} is missing")
        uids[name] = check_uid(value, name)
    content_types = parse_accept(query.get("contentType") or "image/jpeg")
    if query.get("anonymize"):
        raise DicomwebError(400, "anonymize is not supported")
    frame = 1
    if query.get("frameNumber"):
        try:
            frame = int(query["frameNumber"])
        except ValueError:
            raise DicomwebError(400, "frameNumber must be a whole number") from None
        if frame < 1:
            raise DicomwebError(400, "frameNumber starts at 1")
    rendered: dict[str, str] = {}
    if query.get("imageQuality"):
        rendered["quality"] = query["imageQuality"]
    center, width = query.get("windowCenter"), query.get("windowWidth")
    if bool(center) != bool(width):
        raise DicomwebError(400, "windowCenter and windowWidth go together")
    if center:
        rendered["window"] = f"{center},{width}"
    rows, columns = query.get("rows"), query.get("columns")
    if rows or columns:
        rendered["viewport"] = f"{columns or ''},{rows or ''}"
    image_types = [r for r in content_types if not _type_matches(r.type, DICOM) or r.type.startswith("image")]
    params = RenderParams()
    if image_types or rendered:
        try:
            params = render_params(rendered, image_types or [MediaRange(rendering.JPEG)])
        except DicomwebError:
            if any(_type_matches(r.type, DICOM) for r in content_types):
                params = RenderParams()
            else:
                raise
    return WadoUriRequest(
        study_uid=uids["studyUID"],
        series_uid=uids["seriesUID"],
        sop_uid=uids["objectUID"],
        content_types=content_types,
        frame=frame,
        params=params,
        transfer_syntax=query.get("transferSyntax") or None,
    )


def wado_uri_wants_dicom(req: WadoUriRequest) -> bool:
    """application/dicom first in the list means the file; otherwise a rendered image."""
    for r in req.content_types:
        if r.type == DICOM:
            return True
        if r.type.startswith("image/") or r.type in ("*/*", "image"):
            return False
    raise DicomwebError(406, "contentType must be application/dicom, image/jpeg or image/png")


def wado_uri_file(instance: Instance, transfer_syntax: str | None) -> Streamed:
    """The stored file; in ``transfer_syntax`` (PS3.18 9.1.2.1.4 transferSyntax) when another is
    asked: transcoded (:mod:`.transcoding`), or 406 when it cannot be made."""
    stored = instance.transfer_syntax_uid
    if transfer_syntax and transfer_syntax not in ("*", stored):
        targets = transcoding.instance_targets([transfer_syntax], stored)
        if not targets:
            raise transcoding.not_producible([stored])
        try:
            result = transcoding.instance_transcode(_open_one(instance), targets, stored=stored)
        except transcoding.TranscodeError as exc:
            raise transcoding.conversion_refused(exc) from None
        return Streamed(
            DICOM,
            [result.data],
            headers={
                "Content-Length": str(len(result.data)),
                "Content-Disposition": content_disposition(f"{instance.sop_instance_uid}.dcm"),
            },
        )
    fh = _open_one(instance)
    return Streamed(
        DICOM,
        file_chunks(fh),
        headers={
            "Content-Length": str(instance.size),
            "Content-Disposition": content_disposition(f"{instance.sop_instance_uid}.dcm"),
        },
    )
