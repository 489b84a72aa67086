"""Rendered resources and thumbnails: image/jpeg or image/png through :mod:`archive.rendering.pipeline`,
run in a worker process by :mod:`archive.rendering.isolated`, or the preview or thumbnail stored
after ingestion (:mod:`archive.rendering.previews`) when the request's parameters produced it.

Rendered study/series: multipart/related with the first frame of each
renderable instance; rendered instance: its first frame.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from archive.rendering import pipeline as rendering
from archive.rendering.isolated import RenderBusy
from archive.rendering.pipeline import RenderParams
from archive.rendering.previews import stored_or_rendered
from archive.storage.retrieve import NotAvailable

from ..models import Instance
from .media import DicomwebError, MediaRange, _type_matches
from .multipart import Part, Streamed, body_of, multipart_content_type, multipart_stream, new_boundary
from .scope import Scope, instance_url

logger = logging.getLogger(__name__)

# The annotation :func:`archive.dicomweb.scope.instance_one_select` may put on an instance:
# whether a stored rendition matches the request's first frame (archive.rendering.previews.rendition_exists).
RENDITION = "rendition_stored"


def rendered_media_type(ranges: list[MediaRange]) -> str:
    """image/jpeg unless image/png is preferred; 406 when neither is acceptable."""
    for r in ranges:
        for candidate in (rendering.JPEG, rendering.PNG):
            if _type_matches(r.type, candidate):
                return candidate
    raise DicomwebError(406, "rendered resources are served as image/jpeg or image/png only")


def render_params(query: Any, ranges: list[MediaRange], *, thumbnail: bool = False) -> RenderParams:
    """PS3.18 8.3.5.1: ``quality``, ``window=center,width[,function]``, ``viewport=vw,vh[,sx,sy,sw,sh]``."""
    media_type = rendered_media_type(ranges)
    quality = rendering.DEFAULT_QUALITY
    if query.get("quality"):
        try:
            quality = int(query["quality"])
        except ValueError:
            raise DicomwebError(400, "quality must be an integer from 1 to 100") from None
        if not 1 <= quality <= 100:
            raise DicomwebError(400, "quality must be an integer from 1 to 100")
    window = None
    if query.get("window"):
        parts = query["window"].split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise DicomwebError(400, "window is center,width[,function]") from None
        function = parts[2].strip().upper().replace("-", "_") if len(parts) > 2 else "LINEAR"
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise DicomwebError(400, "the window function is linear, linear-exact or sigmoid")
        if width < (1 if function == "LINEAR" else 0) or width == 0:
            raise DicomwebError(400, "the window width must be positive (at least 1 for linear)")
        window = rendering.Window(center, width, function)
    viewport = None
    if query.get("viewport"):
        viewport = _viewport(query["viewport"])
    return RenderParams(
        media_type=media_type,
        quality=quality,
        window=window,
        viewport=viewport,
        max_size=rendering.THUMBNAIL_SIZE if thumbnail and viewport is None else None,
    )


def _viewport(text: str) -> rendering.Viewport:
    values = [v.strip() for v in text.split(",")]
    try:
        numbers = [int(v) if v else None for v in values]
    except ValueError:
        raise DicomwebError(400, "viewport is vw,vh[,sx,sy,sw,sh] in whole pixels") from None
    if len(numbers) not in (2, 6) or any(n is not None and n <= 0 for n in numbers[:2]):
        raise DicomwebError(400, "viewport is vw,vh[,sx,sy,sw,sh] with positive vw and vh")
    region = None
    if len(numbers) == 6:
        given = [n for n in numbers[2:] if n is not None]
        if len(given) < 4:
            raise DicomwebError(400, "the viewport's source region needs sx,sy,sw,sh")
        sx, sy, sw, sh = given
        if sw <= 0 or sh <= 0 or sx < 0 or sy < 0:
            raise DicomwebError(400, "the viewport's source region must have positive width and height")
        region = (sx, sy, sw, sh)
    return rendering.Viewport(width=numbers[0], height=numbers[1], region=region)


def render_instance(instance: Instance, frame: int, params: RenderParams) -> bytes:
    """One frame of an instance rendered (in a worker process: a decoder that crashes or
    hangs costs this answer only); 400 for a frame it lacks, 406 for what cannot be rendered."""
    try:
        # The query that read the instance may have said whether a stored rendition matches (RENDITION).
        stored = getattr(instance, RENDITION, None) if frame == 1 else None
        return stored_or_rendered(instance=instance, frame=frame, params=params, stored_exists=stored)
    except NotAvailable as exc:
        raise DicomwebError(503, f"instance {instance.sop_instance_uid} cannot be read now: {exc.reason}") from None
    except RenderBusy as exc:
        raise DicomwebError(
            503, f"instance {instance.sop_instance_uid} cannot be rendered now: {exc.message}"
        ) from None
    except rendering.NoImage as exc:
        raise DicomwebError(406, f"instance {instance.sop_instance_uid} cannot be rendered: {exc.reason}") from None
    except ValueError as exc:
        raise DicomwebError(400, str(exc)) from None


def rendered_many_response(scope: Scope, instances: list[Instance], params: RenderParams) -> Streamed:
    """The first frame of each renderable instance, as multipart/related parts (others skipped)."""
    boundary = new_boundary()
    # Render the first one now: a study nothing of which renders is a 406, not an empty body.
    rendered = None
    rest = list(instances)
    while rest and rendered is None:
        candidate = rest.pop(0)
        try:
            rendered = (candidate, render_instance(candidate, 1, params))
        except DicomwebError as exc:
            if exc.status == 400:
                raise
            logger.info("rendered: skipping %s: %s", candidate.sop_instance_uid, exc.message)
    if rendered is None:
        raise DicomwebError(406, "no instance there can be rendered as an image")

    def parts() -> Iterator[Part]:
        yield Part(params.media_type, lambda: [rendered[1]], location=instance_url(scope, rendered[0]) + "/rendered")
        for instance in rest:
            try:
                data = render_instance(instance, 1, params)
            except DicomwebError as exc:
                logger.info("rendered: skipping %s: %s", instance.sop_instance_uid, exc.message)
                continue
            yield Part(params.media_type, body_of(data), location=instance_url(scope, instance) + "/rendered")

    return Streamed(multipart_content_type(params.media_type, boundary), multipart_stream(parts(), boundary))


def thumbnail_of(instances: list[Instance], params: RenderParams, *, frame: int = 1) -> bytes:
    """The first instance that renders (series and instance order), as a thumbnail."""
    for instance in instances:
        try:
            return render_instance(instance, frame, params)
        except DicomwebError as exc:
            if exc.status == 400 or len(instances) == 1:
                raise
            logger.info("thumbnail: skipping %s: %s", instance.sop_instance_uid, exc.message)
    raise DicomwebError(406, "nothing there can be rendered as a thumbnail")
