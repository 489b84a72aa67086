"""Stored previews and thumbnails: derived objects rendered once after ingestion.

For each instance the post-ingest flow has a Celery task render two images of
the first frame (the frame WADO-RS ``rendered`` and the portal show for an
instance, and the only one a list of a series needs; a multi-frame clip is
represented by its first frame too):

- a *preview*: JPEG at :data:`archive.rendering.pipeline.DEFAULT_QUALITY`, the data
  set's own window, the longest side capped at :data:`PREVIEW_MAX_SIZE`;
- a *thumbnail*: the same with the longest side capped at
  :data:`archive.rendering.pipeline.THUMBNAIL_SIZE`.

They are stored in the instance's facility tier under ``derived/`` and
indexed as :class:`~archive.models.Rendition` rows keyed by the parameters
that produced them (:func:`params_key`), so that on-demand rendering can
serve them only when it would have produced the same image. An image that
cannot be rendered leaves one failure row and is not tried again until
:data:`RENDERER_VERSION` changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction
from django.db.models import Exists, OuterRef, Q

from archive.models import Instance, Rendition
from archive.rendering import pipeline as rendering
from archive.rendering.isolated import RenderBusy, render_with
from archive.storage import retrieve
from archive.storage import tiers as storage
from kernel.errors import Unavailable

logger = logging.getLogger(__name__)

# Bump whenever the renderer's output changes (archive/rendering/pipeline.py, the
# decoders it uses): stored renditions of an older version stop matching and
# images that failed are tried again.
RENDERER_VERSION = "1"
PREVIEW_MAX_SIZE = 1024
FRAME = 1
_EXTENSIONS = {rendering.JPEG: "jpg", rendering.PNG: "png"}


# What a rendition is made with: the same choices as any rendering request.
RenditionParams = rendering.RenderParams


PREVIEW = RenditionParams(max_size=PREVIEW_MAX_SIZE)
THUMBNAIL = RenditionParams(max_size=rendering.THUMBNAIL_SIZE)
_MADE = ((Rendition.Kind.PREVIEW, PREVIEW), (Rendition.Kind.THUMBNAIL, THUMBNAIL))


def params_key(params: rendering.RenderParams) -> str:
    """A short name for everything that shapes a rendered image, renderer version included.

    ``jpg-q90-s128-wdefault-r1`` is a JPEG of quality 90, longest side at most
    128, the data set's own window. Keys longer than a column holds are hashed.
    """
    parts = [_EXTENSIONS.get(params.media_type) or params.media_type.replace("/", "_")]
    if params.media_type == rendering.JPEG:  # PNG is lossless: quality does not shape it
        parts.append(f"q{params.quality}")
    parts.append(f"s{params.max_size}" if params.max_size else "full")
    w = params.window
    parts.append("wdefault" if w is None else f"w{w.center:g},{w.width:g},{w.function}")
    v = params.viewport
    if v is not None:
        region = ",".join(str(n) for n in v.region) if v.region else ""
        parts.append(f"v{v.width or ''}x{v.height or ''}{',' + region if region else ''}")
    version = f"r{RENDERER_VERSION}"
    key = "-".join([*parts, version])
    if len(key) > 64:
        key = "h" + hashlib.sha256(key.encode()).hexdigest()[:40] + "-" + version
    return key


def _full_size(params: RenditionParams) -> RenditionParams:
    return dataclasses.replace(params, max_size=None)


def _render(*, path: Path, frame: int, params: RenditionParams) -> bytes:
    """One frame of the file at ``path`` rendered: the one call site of the renderer.

    In a worker process (:mod:`archive.rendering.isolated`), so that a decoder
    that crashes or hangs becomes :class:`archive.rendering.pipeline.NoImage` (a
    failure row) instead of a Celery worker lost and the message redelivered.
    """
    return render_with(path=path, frame=frame, params=params)


class RenditionsIncomplete(Unavailable):
    """Some renditions could not be made now for a reason that may pass (worth a retry)."""

    code = "renditions_incomplete"


@dataclass
class RenditionCounts:
    """What :func:`series_renditions_make` did, image by image."""

    made: int = 0  # stored for the first time
    remade: int = 0  # recorded but missing or damaged in the tier, stored again
    kept: int = 0  # already stored with the current parameters
    failed: int = 0  # instances found unrenderable now (one failure row each)
    known_failures: int = 0  # instances skipped: recorded as unrenderable by this renderer version
    unavailable: int = 0  # instances not rendered now: no readable copy, no render worker (retried)


def _stored_intact(row: Rendition) -> bool:
    size = storage.stored_size(row.tier, row.path)
    if size is None:
        logger.warning("rendition %s is missing from its tier: rendering it again", row)
        return False
    if size != row.size:
        logger.error("rendition %s has %d bytes, %d recorded: rendering it again", row, size, row.size)
        storage.remove_file(row.tier, row.path)
        return False
    return True


def series_renditions_make(*, series_pk: int) -> RenditionCounts:
    """Render and store the preview and thumbnail of each instance of a series
    that lacks them; idempotent, so safe to run again or after a crash.

    Skips what is stored with the current parameters and whose file is there
    (with its recorded size), re-creates what is recorded but missing, and
    records an image that cannot be rendered once, as a failure row.

    Raises
    ------
    archive.storage.tiers.StorageError
        A rendition could not be stored (the others were).
    RenditionsIncomplete
        Some instance had no readable copy, or no render worker could be
        started (the others were done).
    """
    counts = RenditionCounts()
    instances = retrieve.instances_with_copies(
        Instance.objects.filter(series_id=series_pk).select_related("series__study").order_by("instance_number", "pk")
    )
    rows: dict[int, list[Rendition]] = defaultdict(list)
    row: Rendition | None  # a stored rendition, then the one (if any) a new one replaces
    kind: str
    for row in Rendition.objects.filter(
        instance__series_id=series_pk, frame=FRAME, renderer_version=RENDERER_VERSION
    ).order_by("pk"):
        rows[row.instance_id].append(row)
    preview_keys = {params_key(PREVIEW), params_key(_full_size(PREVIEW))}
    transient: Exception | None = None
    for instance in instances:
        tier = storage.facility_tier(instance.facility.code)
        mine = [r for r in rows[instance.pk] if r.tier == tier]
        if any(r.failed for r in mine):
            counts.known_failures += 1
            continue
        todo: list[tuple[str, RenditionParams, Rendition | None]] = []
        for kind, params in _MADE:
            keys = preview_keys if kind == Rendition.Kind.PREVIEW else {params_key(params)}
            row = next((r for r in mine if r.kind == kind and r.params_key in keys), None)
            if row is not None and _stored_intact(row):
                counts.kept += 1
            else:
                todo.append((kind, params, row))
        if not todo:
            continue
        try:
            rendered = _render_all(instance, todo)
        except (retrieve.NotAvailable, RenderBusy, RuntimeError) as exc:
            # No readable copy now, or no render worker could be started
            # (render_isolated turns everything about the image itself into
            # NoImage): not the image's fault, so no failure row; retried.
            logger.error("renditions of %s not made now: %s", instance.sop_instance_uid, exc)
            counts.unavailable += 1
            transient = exc
            continue
        for (kind, params, row), result in zip(todo, rendered, strict=False):  # shorter after a failure
            if isinstance(result, str):
                _record_failure(instance, tier=tier, kind=kind, params=params, reason=result)
                counts.failed += 1
                break  # one row says the image cannot be rendered
            _store(instance, tier=tier, kind=kind, params=params, data=result)
            if row is None:
                counts.made += 1
            else:
                counts.remade += 1
    logger.info("renditions of series %s: %s", series_pk, counts)
    if transient is not None:
        raise RenditionsIncomplete(f"{counts.unavailable} instance(s) left for later: {transient}") from transient
    return counts


def _render_all(instance: Instance, todo: list[tuple[str, RenditionParams, Rendition | None]]) -> list[bytes | str]:
    """Each rendition's bytes, or the reason the image cannot be rendered (then nothing after it)."""
    results: list[bytes | str] = []
    with retrieve.instance_file(instance) as path:
        for _kind, params, _row in todo:
            try:
                results.append(_render(path=path, frame=FRAME, params=params))
            except rendering.NoImage as exc:
                results.append(exc.message)
                break
            except ValueError as exc:  # the image's attributes out of range for the renderer
                results.append(f"{type(exc).__name__}: {exc}")
                break
    return results


def _store(instance: Instance, *, tier: str, kind: str, params: RenditionParams, data: bytes) -> None:
    if kind == Rendition.Kind.PREVIEW and params.max_size and _longest_side(data) < params.max_size:
        # The cap did not shrink it: the bytes are those of the full-size
        # image, which is what WADO-RS ``rendered`` asks for by default.
        params = _full_size(params)
    sha256 = hashlib.sha256(data).hexdigest()
    series, study = instance.series, instance.series.study
    relpath = storage.derived_relpath(
        study_uid=study.study_instance_uid,
        series_uid=series.series_instance_uid,
        sop_uid=instance.sop_instance_uid,
        frame=FRAME,
        kind=kind,
        sha256=sha256,
        extension=_EXTENSIONS[params.media_type],
    )
    # The file first, durable, then its row: a crash leaves at worst an
    # unindexed file that the next run adopts (same bytes, same name).
    storage.place_bytes(data, tier, relpath)
    _row_save(instance, tier=tier, kind=kind, params=params, path=relpath, sha256=sha256, size=len(data), reason="")


def _record_failure(instance: Instance, *, tier: str, kind: str, params: RenditionParams, reason: str) -> None:
    logger.warning("%s cannot be rendered, not trying again: %s", instance.sop_instance_uid, reason)
    reason = reason[:2000] or "the image cannot be rendered"
    _row_save(instance, tier=tier, kind=kind, params=params, path="", sha256="", size=0, reason=reason)


def _row_save(instance: Instance, *, tier: str, kind: str, params: RenditionParams, **fields: object) -> None:
    """The rendition's row, a stored file or a failure, for the current renderer version."""
    with transaction.atomic():
        Rendition.objects.update_or_create(
            instance=instance,
            frame=FRAME,
            kind=kind,
            params_key=params_key(params),
            tier=tier,
            defaults={"renderer_version": RENDERER_VERSION, "media_type": params.media_type, **fields},
        )


def _longest_side(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:  # reads the header only
        return max(image.size)


def series_renditions_due(*, study_pk: int) -> list[int]:
    """The series of a study with an instance that has neither its renditions
    nor a failure row for the current renderer version (new arrivals)."""
    current = Rendition.objects.filter(instance=OuterRef("pk"), frame=FRAME, renderer_version=RENDERER_VERSION)
    done = Q(Exists(current.exclude(reason=""))) | (
        Q(Exists(current.filter(kind=Rendition.Kind.PREVIEW)))
        & Q(Exists(current.filter(kind=Rendition.Kind.THUMBNAIL)))
    )
    due = Instance.objects.filter(series__study_id=study_pk).exclude(done)
    return sorted(set(due.values_list("series_id", flat=True)))


def rendition_get(*, instance: Instance, frame: int, kind: str, params: rendering.RenderParams) -> bytes | None:
    """The stored rendition of ``instance`` made with exactly ``params``; None
    when there is none, or its file is missing or does not hash as recorded
    (the caller renders on demand then)."""
    tier = storage.facility_tier(instance.facility.code)
    row = (
        Rendition.objects.filter(
            instance=instance, frame=frame, kind=kind, params_key=params_key(params), tier=tier, reason=""
        )
        .only("tier", "path", "sha256")
        .first()
    )
    if row is None:
        return None
    try:
        fh = storage.open_copy(row.tier, row.path)
        if fh is None:
            logger.warning("rendition %s is missing from its tier", row)
            return None
        with fh:
            data = fh.read()
    except storage.StorageError as exc:
        logger.error("rendition %s unreadable: %s", row, exc)
        return None
    if hashlib.sha256(data).hexdigest() != row.sha256:
        logger.error("rendition %s does not match its recorded SHA-256", row)
        return None
    return data


def rendition_for_request(*, instance: Instance, frame: int, params: rendering.RenderParams) -> bytes | None:
    """:func:`rendition_get` for an on-demand request: a thumbnail when it asks
    for the thumbnail size, else a preview (the parameters decide the match)."""
    return rendition_get(instance=instance, frame=frame, kind=_request_kind(params), params=params)


def _request_kind(params: rendering.RenderParams) -> str:
    return Rendition.Kind.THUMBNAIL if params.max_size == rendering.THUMBNAIL_SIZE else Rendition.Kind.PREVIEW


# The keys a stored rendition can have: those made after ingestion (a preview the cap did not
# shrink is stored under the full-size key, see _store).
_STORED_KEYS = {
    (Rendition.Kind.PREVIEW, params_key(PREVIEW)),
    (Rendition.Kind.PREVIEW, params_key(_full_size(PREVIEW))),
    (Rendition.Kind.THUMBNAIL, params_key(THUMBNAIL)),
}


def rendition_may_exist(*, frame: int, params: rendering.RenderParams) -> bool:
    """False when no rendition made after ingestion can match a request (another frame, other
    parameters): such a request renders without looking for one."""
    return frame == FRAME and (_request_kind(params), params_key(params)) in _STORED_KEYS


def rendition_exists(*, frame: int, params: rendering.RenderParams, ref: str = "pk") -> Exists | None:
    """An ``Exists`` true when the instance at ``OuterRef(ref)`` has a usable stored rendition
    for this request (its tier is checked when it is read), to be annotated on the query that
    reads the instance; None when none can exist (:func:`rendition_may_exist`)."""
    if not rendition_may_exist(frame=frame, params=params):
        return None
    return Exists(
        Rendition.objects.filter(
            instance=OuterRef(ref), frame=frame, kind=_request_kind(params), params_key=params_key(params), reason=""
        )
    )


def stored_or_rendered(
    *, instance: Instance, frame: int, params: rendering.RenderParams, stored_exists: bool | None = None
) -> bytes:
    """The stored rendition made with ``params``, else the frame rendered now in a worker process.

    ``stored_exists``: whether the query that read ``instance`` found a rendition for
    this request (:func:`rendition_exists`); False skips the lookup, None (unknown)
    looks unless none can exist.

    Raises ``retrieve.NotAvailable`` (no readable copy), ``rendering.NoImage``
    (nothing to render) or ``ValueError`` (a frame or parameter out of range).
    """
    look = stored_exists if stored_exists is not None else rendition_may_exist(frame=frame, params=params)
    stored = rendition_for_request(instance=instance, frame=frame, params=params) if look else None
    if stored is not None:  # rendered after ingestion with exactly these parameters
        return stored
    with retrieve.instance_file(instance) as path:
        return render_with(path=path, frame=frame, params=params)
