"""Every Celery task's wire name lives in kernel.tasknames, and no name ever changes."""

from __future__ import annotations

import ast
from pathlib import Path

from django.conf import settings

from kernel import tasknames
from pacs.celery import app

PROJECT_APPS = {"archive", "booking", "portal", "preservation", "research", "pacs", "fse_gateway"}

# The names messages already queued in a running system carry: a test, not the
# module, so that changing a string there fails here.
WIRE_NAMES = {
    "archive.tasks.study_post_ingest",
    "archive.tasks.post_ingest_sweep",
    "archive.tasks.study_renditions_queue",
    "archive.tasks.series_renditions_make",
    "archive.tasks.lifecycle_run",
    "archive.tasks.fixity_audit",
    "archive.tasks.studies_recall",
    "archive.tasks.report_encapsulate",
    "archive.tasks.report_encapsulate_sweep",
    "archive.tasks.study_manifest",
    "archive.tasks.study_manifest_sweep",
    "archive.tasks.storage_commitment_answer",
    "archive.tasks.storage_commitment_sweep",
    "booking.tasks.study_match",
    "booking.tasks.booking_reported_retry",
    "booking.tasks.booking_reported_sweep",
    "booking.tasks.booking_prefetch",
    "booking.tasks.bookings_prefetch",
    "booking.tasks.booking_procedure_step",
    "booking.tasks.booking_procedure_step_sweep",
    "portal.tasks.report_publish_retry",
    "portal.tasks.report_publish_sweep",
    "portal.tasks.package_build",
    "portal.tasks.packages_purge",
    "preservation.tasks.study_package",
    "preservation.tasks.studies_package_sweep",
    "preservation.tasks.volumes_close",
    "preservation.tasks.fixity_audit",
    "preservation.tasks.discard_propose",
    "preservation.tasks.audit_seal",
    "archive.tasks.rejections_purge",
    "archive.tasks.rejections_announce_sweep",
    "archive.tasks.credentials_purge",
    "portal.tasks.rejection_portal",
    "portal.tasks.cd_medium_make",
    "portal.tasks.cd_media_sweep",
    "preservation.tasks.rejection_preservation",
    "research.tasks.export_build",
    "research.tasks.export_build_sweep",
    "fse_gateway.tasks.report_plan",
    "fse_gateway.tasks.operation_send",
    "fse_gateway.tasks.consent_check",
    "fse_gateway.tasks.concealment_check",
    "fse_gateway.tasks.outbox_sweep",
}


def named() -> dict[str, str]:
    return {k: v for k, v in vars(tasknames).items() if k.isupper() and isinstance(v, str)}


def test_the_module_names_exactly_the_registered_tasks() -> None:
    app.loader.import_default_modules()  # autodiscovery: every app's tasks module
    registered = {name for name, task in app.tasks.items() if task.__module__.split(".")[0] in PROJECT_APPS}
    assert registered == set(named().values())


def test_no_name_changed_and_none_is_given_twice() -> None:
    assert set(named().values()) == WIRE_NAMES
    assert len(named()) == len(WIRE_NAMES)


def test_the_beat_schedule_names_registered_tasks() -> None:
    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in named().values() and entry["task"] in app.tasks


def test_the_module_imports_nothing() -> None:
    tree = ast.parse(Path(tasknames.__file__).read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def test_every_task_has_one_queue_of_its_kind() -> None:
    """A new task missing from kernel.tasknames.QUEUES would run on the default queue unnoticed."""
    queued = [name for names in tasknames.QUEUES.values() for name in names]
    assert sorted(queued) == sorted(named().values())
    assert set(tasknames.QUEUES) == {
        "ingest",
        "render",
        "lifecycle",
        "preservation",
        "portal",
        "publication",
        "research",
        "default",
    }


def test_every_task_and_every_sweep_of_the_beat_is_routed_to_its_kinds_queue() -> None:
    app.loader.import_default_modules()
    kind_of = {name: kind for kind, names in tasknames.QUEUES.items() for name in names}
    for name in named().values():
        queue = app.amqp.router.route({}, name)["queue"].name
        assert queue == settings.PACS_TASK_QUEUES[kind_of[name]], name
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert (
            app.amqp.router.route({}, entry["task"])["queue"].name == settings.PACS_TASK_QUEUES[kind_of[entry["task"]]]
        )
    assert settings.PACS_TASK_QUEUES["default"] == settings.CELERY_TASK_DEFAULT_QUEUE
    assert settings.PACS_TASK_QUEUES["lifecycle"] == settings.CELERY_QUEUE_PREFIX + "lifecycle"
