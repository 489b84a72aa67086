"""Stored previews and thumbnails: rendered after ingestion by the worker, made
once, made again when their file is gone, failures recorded once, served
only for the parameters that produced them."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.models import Instance, Rendition, Series, Study
from archive.rendering import isolated as render_isolated
from archive.rendering import pipeline as rendering
from archive.rendering import previews
from archive.rendering.previews import (
    PREVIEW,
    THUMBNAIL,
    RenditionParams,
    params_key,
    rendition_get,
    series_renditions_make,
)
from archive.sample_data import CT, SR, US_MULTIFRAME, PatientInfo, bundled_dataset, fresh_copy, write_study
from archive.storage import retrieve
from archive.storage import tiers as storage
from archive.tasks import series_renditions_make as series_renditions_task
from archive.tasks import study_renditions_enqueue
from kernel import tasknames
from tests import dicomweb_helpers as helpers
from tests.conftest import Enqueued, wait_until
from tests.dicomweb_helpers import ingest_files, uids

reader = helpers.reader  # a fixture, found by its name in this module


def _file(row: Rendition) -> Path:
    return storage.absolute_path(row.tier, row.path)


def _check_stored(row: Rendition) -> Image.Image:
    data = _file(row).read_bytes()
    assert hashlib.sha256(data).hexdigest() == row.sha256 and len(data) == row.size
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "JPEG"
    return image


def _series_pks() -> list[int]:
    return list(Series.objects.order_by("series_number", "pk").values_list("pk", flat=True))


@pytest.mark.slow
def test_ingested_study_gets_previews_and_thumbnails_from_the_worker(
    celery_worker, region, ct_study: list[Path], patient: PatientInfo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    study_uid = dcmread(ct_study[0], stop_before_pixels=True).StudyInstanceUID
    # The same study also holds a structured report: no image, one failure row.
    sr = write_study(tmp_path / "sr", patient=patient, source=SR, instances_per_series=1, study_uid=str(study_uid))
    ingest_files([*ct_study, *sr], region.facility)

    def settled() -> bool:
        return Rendition.objects.filter(reason="").count() == 12 and Rendition.objects.exclude(reason="").exists()

    wait_until(settled, timeout=90, what="renditions made by the worker")
    for instance in Instance.objects.exclude(sop_class_uid=str(bundled_dataset(SR).SOPClassUID)):
        rows = {r.kind: r for r in Rendition.objects.filter(instance=instance)}
        assert set(rows) == {"preview", "thumbnail"}
        # CT_small is 128 x 128: the preview's cap did not shrink it, so it is the full-size image.
        assert _check_stored(rows["preview"]).size == (128, 128)
        assert rows["preview"].params_key == "jpg-q90-full-wdefault-r1"
        assert max(_check_stored(rows["thumbnail"]).size) <= rendering.THUMBNAIL_SIZE
        assert rows["thumbnail"].params_key == "jpg-q90-s128-wdefault-r1"
        assert rows["preview"].path.startswith("derived/") and rows["preview"].tier == "facility:TS-CAT"
    failure = Rendition.objects.exclude(reason="").get()
    assert "no pixel data" in failure.reason and failure.path == "" and failure.kind == "preview"

    # One task per series (two CT series and the SR's), each ended successfully, none retried.
    def succeeded() -> int:
        return len(re.findall(r"series_renditions_make\[[^]]+\] succeeded", (tmp_path / "worker.log").read_text()))

    def received() -> int:
        return (tmp_path / "worker.log").read_text().count("series_renditions_make[") - succeeded()

    wait_until(lambda: succeeded() >= 3, timeout=30, what="three tasks logged as succeeded")
    # Each received task succeeds: three, and more only when messages an earlier test left on
    # the broker (CI's Redis) come through, which this worker may still be working on now.
    wait_until(lambda: received() == succeeded(), timeout=60, what="every received task logged as succeeded")
    log = (tmp_path / "worker.log").read_text()
    # A retried task logs "Task ...[id] retry: Retry in Ns" (task names in the banner may say retry).
    assert "Retry in" not in log and "ERROR" not in log


def test_the_receiver_queues_one_study_task_which_queues_each_series_due(  # type: ignore[no-untyped-def]
    db, region, ct_study: list[Path], enqueued: Enqueued, django_capture_on_commit_callbacks
) -> None:
    ingest_files(ct_study, region.facility)
    first, second = _series_pks()
    study_pk = Series.objects.get(pk=first).study_id
    series_renditions_make(series_pk=first)
    enqueued.messages.clear()  # what the ingestion queued
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        study_renditions_enqueue(sender=Study, study_pk=study_pk)
    assert enqueued.messages == [] and len(callbacks) == 1  # the receiver reads nothing, and waits for the commit
    callbacks[0]()
    assert enqueued.messages == [(tasknames.STUDY_RENDITIONS_QUEUE, (study_pk,), {})]
    assert enqueued.run(tasknames.STUDY_RENDITIONS_QUEUE) == [1]
    assert enqueued.messages == [(tasknames.SERIES_RENDITIONS_MAKE, (second,), {})]


def test_running_again_does_nothing(db, region, ct_study: list[Path]) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    first, second = _series_pks()
    assert previews.series_renditions_due(study_pk=Series.objects.get(pk=first).study_id) == [first, second]
    counts = series_renditions_make(series_pk=first)
    assert (counts.made, counts.kept, counts.failed) == (6, 0, 0)
    assert previews.series_renditions_due(study_pk=Series.objects.get(pk=first).study_id) == [second]
    rows = list(Rendition.objects.filter(instance__series_id=first))
    assert len(rows) == 6 and all(_check_stored(r) for r in rows)
    stamps = {r.pk: os.stat(_file(r)).st_mtime_ns for r in rows}

    again = series_renditions_make(series_pk=first)
    assert (again.made, again.remade, again.kept) == (0, 0, 6)
    assert Rendition.objects.count() == 6
    assert {r.pk: os.stat(_file(r)).st_mtime_ns for r in rows} == stamps


def test_a_missing_or_damaged_file_is_made_again(db, region, ct_study: list[Path]) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    series_pk = _series_pks()[0]
    series_renditions_make(series_pk=series_pk)
    gone, damaged = Rendition.objects.filter(instance__series_id=series_pk).order_by("pk")[:2]
    original = _file(gone).read_bytes()
    _file(gone).unlink()
    _file(damaged).write_bytes(b"truncated")

    counts = series_renditions_make(series_pk=series_pk)
    assert (counts.made, counts.remade, counts.kept) == (0, 2, 4)
    assert _file(gone).read_bytes() == original  # rendering is deterministic: same name, same bytes
    for row in (gone, damaged):
        row.refresh_from_db()
        _check_stored(row)
    assert Rendition.objects.count() == 6


def test_an_object_without_image_is_recorded_once_and_not_tried_again(
    db, region, patient: PatientInfo, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    ingest_files(write_study(tmp_path, patient=patient, source=SR, instances_per_series=1), region.facility)
    series_pk = _series_pks()[0]
    counts = series_renditions_make(series_pk=series_pk)
    assert (counts.failed, counts.made) == (1, 0)
    failure = Rendition.objects.get()
    assert failure.failed and "no pixel data" in failure.reason and failure.renderer_version == "1"
    assert previews.series_renditions_due(study_pk=Series.objects.get().study_id) == []

    def must_not_render(**kwargs: object) -> bytes:
        raise AssertionError("a known failure was rendered again")

    monkeypatch.setattr(previews, "_render", must_not_render)
    again = series_renditions_make(series_pk=series_pk)
    assert (again.failed, again.known_failures) == (0, 1)
    # Through the task too: it ends successfully, no retry.
    result = series_renditions_task.apply(args=[series_pk])
    assert result.successful() and result.result["known_failures"] == 1
    assert Rendition.objects.count() == 1
    # A new renderer version tries again.
    monkeypatch.undo()
    monkeypatch.setattr(previews, "RENDERER_VERSION", "2")
    assert series_renditions_make(series_pk=series_pk).failed == 1
    assert Rendition.objects.count() == 2


def test_a_crashing_decoder_is_recorded_once(db, region, ct_study: list[Path], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study[:1], region.facility)

    def crash(**kwargs: object) -> bytes:  # what render_isolated says when its worker process dies
        raise rendering.NoImage(render_isolated.CRASHED)

    monkeypatch.setattr(previews, "_render", crash)
    series_pk = _series_pks()[0]
    assert series_renditions_make(series_pk=series_pk).failed == 1
    assert Rendition.objects.get().reason == render_isolated.CRASHED
    assert series_renditions_make(series_pk=series_pk).known_failures == 1


def test_no_render_worker_is_transient_not_a_failure(db, region, ct_study: list[Path], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study[:1], region.facility)

    def no_worker(**kwargs: object) -> bytes:
        raise RuntimeError("a render worker could not be started")

    monkeypatch.setattr(previews, "_render", no_worker)
    with pytest.raises(previews.RenditionsIncomplete):
        series_renditions_make(series_pk=_series_pks()[0])
    assert not Rendition.objects.exists()
    monkeypatch.undo()
    assert series_renditions_make(series_pk=_series_pks()[0]).made == 2


def test_an_unreadable_instance_is_retried_and_the_others_done(db, region, ct_study: list[Path]) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study[:3], region.facility)
    lost = Instance.objects.order_by("instance_number").first()
    copy = lost.copies.get()
    storage.absolute_path(copy.tier, copy.path).unlink()
    with pytest.raises(previews.RenditionsIncomplete):
        series_renditions_make(series_pk=_series_pks()[0])
    assert Rendition.objects.count() == 4 and not Rendition.objects.filter(instance=lost).exists()


def test_multiframe_preview_is_the_first_frame(db, region, patient: PatientInfo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = write_study(tmp_path, patient=patient, source=US_MULTIFRAME, instances_per_series=1)
    ingest_files(paths, region.facility)
    assert series_renditions_make(series_pk=_series_pks()[0]).made == 2
    preview = Rendition.objects.get(kind="preview")
    assert preview.frame == 1
    instance = Instance.objects.get()
    first = previews._render(path=paths[0], frame=1, params=PREVIEW)
    assert _file(preview).read_bytes() == first
    assert _check_stored(preview).mode == "RGB"
    assert rendition_get(instance=instance, frame=2, kind="preview", params=RenditionParams()) is None


def test_a_large_image_gets_a_capped_preview(db, region, patient: PatientInfo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds = bundled_dataset(CT)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = 1500, 1200
    ds.PixelData = (np.arange(1500 * 1200, dtype=np.uint32) % 4096).astype("<i2").tobytes()
    ds = fresh_copy(ds, patient=patient, study_uid=generate_uid(), series_uid=generate_uid())
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    ingest_files([path], region.facility)
    series_renditions_make(series_pk=_series_pks()[0])
    preview = Rendition.objects.get(kind="preview")
    assert preview.params_key == "jpg-q90-s1024-wdefault-r1"
    assert _check_stored(preview).size == (819, 1024)
    instance = Instance.objects.get()
    # Full size was not stored, so a default WADO-RS rendering does not get the capped preview.
    assert rendition_get(instance=instance, frame=1, kind="preview", params=RenditionParams()) is None
    assert rendition_get(instance=instance, frame=1, kind="preview", params=PREVIEW) == _file(preview).read_bytes()


def test_rendition_get_answers_only_for_matching_parameters(db, region, ct_study: list[Path]) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study[:1], region.facility)
    series_renditions_make(series_pk=_series_pks()[0])
    instance = Instance.objects.get()
    thumb = Rendition.objects.get(kind="thumbnail")
    stored = _file(thumb).read_bytes()
    assert rendition_get(instance=instance, frame=1, kind="thumbnail", params=THUMBNAIL) == stored
    # The full-size preview of a small image is what a default WADO-RS rendering produces.
    full = rendition_get(instance=instance, frame=1, kind="preview", params=RenditionParams())
    assert full is not None
    with retrieve.instance_file(instance) as path:
        assert full == previews._render(path=path, frame=1, params=RenditionParams())
    for other in (
        RenditionParams(max_size=rendering.THUMBNAIL_SIZE, quality=50),
        RenditionParams(max_size=rendering.THUMBNAIL_SIZE, media_type=rendering.PNG),
        RenditionParams(max_size=rendering.THUMBNAIL_SIZE, window=rendering.Window(40, 400)),
        RenditionParams(max_size=rendering.THUMBNAIL_SIZE, viewport=rendering.Viewport(64, 64)),
        RenditionParams(max_size=64),
    ):
        assert params_key(other) != thumb.params_key
        assert rendition_get(instance=instance, frame=1, kind="thumbnail", params=other) is None
    # Bytes that do not hash as recorded are never served; nor a missing file.
    _file(thumb).write_bytes(bytes(len(stored)))
    assert rendition_get(instance=instance, frame=1, kind="thumbnail", params=THUMBNAIL) is None
    _file(thumb).unlink()
    assert rendition_get(instance=instance, frame=1, kind="thumbnail", params=THUMBNAIL) is None


def test_derived_paths_are_built_from_checked_values_only() -> None:
    sha = "0" * 64
    path = storage.derived_relpath(
        study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.4", frame=1, kind="preview", sha256=sha, extension="jpg"
    )
    assert path.startswith("derived/") and path.endswith(f"/1.2/1.2.3/1.2.3.4/1.preview.{sha}.jpg")
    for bad in (
        {"sop_uid": "../x"},
        {"sha256": "../" + "0" * 61},
        {"kind": "../x"},
        {"extension": "sh"},
        {"frame": 0},
    ):
        args = {
            "study_uid": "1.2",
            "series_uid": "1.2.3",
            "sop_uid": "1.2.3.4",
            "frame": 1,
            "kind": "preview",
            "sha256": sha,
            "extension": "jpg",
        }
        with pytest.raises(storage.StorageError):
            storage.derived_relpath(**{**args, **bad})  # type: ignore[arg-type]


def test_wado_rs_serves_the_stored_renditions_for_default_parameters(
    client, region, ct_study: list[Path], reader, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from archive.rendering import previews

    ingest_files(ct_study[:3], region.facility)
    series_renditions_make(series_pk=_series_pks()[0])
    study, series, sop = uids(ct_study[0])
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    instance = Instance.objects.get(sop_instance_uid=sop)
    thumb = _file(Rendition.objects.get(instance=instance, kind="thumbnail")).read_bytes()
    preview = _file(Rendition.objects.get(instance=instance, kind="preview")).read_bytes()

    def no_rendering(**kwargs: object) -> bytes:
        raise rendering.NoImage("rendered on demand")

    monkeypatch.setattr(previews, "render_with", no_rendering)
    response = client.get(url + "/thumbnail", **reader.auth)
    assert response.status_code == 200 and response.content == thumb
    response = client.get(url + "/rendered", **reader.auth)
    assert response.status_code == 200 and response.content == preview
    assert client.get(f"/dicomweb/studies/{study}/series/{series}/thumbnail", **reader.auth).content == thumb
    # Other parameters are rendered on demand (here: refused by the stand-in renderer).
    for other in ("/rendered?quality=50", "/rendered?window=40,400", "/thumbnail?viewport=64,64"):
        assert client.get(url + other, **reader.auth).status_code == 406, other
    assert client.get(url + "/rendered", HTTP_ACCEPT="image/png", **reader.auth).status_code == 406
