"""The one error base (kernel.errors) and its edges: every project exception derives from
it, and each edge translates a representative error by its code: HTTP status
(kernel.problems), DIMSE status (archive.dicomnet.listener), Celery retry (Unavailable)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from archive.api_tokens import TokenRefused
from archive.dicom import DicomRejected
from archive.dicomnet import listener
from archive.ingest import IngestError
from archive.query import QueryError
from archive.rendering import pipeline, previews
from archive.reporting.services import ReportConflict, ReportError
from archive.storage import retrieve
from archive.storage import tiers as storage
from booking.services import BookingError, SlotTaken
from kernel.errors import Conflict, Forbidden, Invalid, NotFound, PacsError, Unavailable, kind_of
from kernel.problems import http_status
from portal.errors import PortalError
from preservation import packages as preservation_packages

APPS = ("archive", "booking", "kernel", "pacs", "portal", "preservation")
# The fence's module (issue 16, point 3) is being reworked beside this change: its one
# exception joins the base there.
NOT_YET: set[str] = set()


def _project_exceptions() -> list[type[BaseException]]:
    found = []
    for app in APPS:
        package = importlib.import_module(app)
        names = [app] + [m.name for m in pkgutil.walk_packages(package.__path__, f"{app}.")]
        for name in names:
            if ".migrations" in name or name.endswith(".asgi") or name.endswith(".wsgi"):
                continue
            module = importlib.import_module(name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == name and issubclass(cls, BaseException):
                    found.append(cls)
    return found


def test_every_project_exception_derives_from_the_base() -> None:
    found = _project_exceptions()
    assert len(found) > 30  # the walk saw them
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, PacsError))
    assert outside == sorted(NOT_YET)


def test_an_error_has_a_message_and_a_code_and_keeps_what_callers_read() -> None:
    error = BookingError("Slot occupato.", field="scheduled_at", code="slot_taken")
    assert (error.message, error.code, error.field, str(error)) == (
        "Slot occupato.",
        "slot_taken",
        "scheduled_at",
        "Slot occupato.",
    )
    assert SlotTaken("x").code == "slot_taken" and ReportConflict("x").code == "conflict"
    ingest = IngestError("the tier is full", code="out_of_resources")
    assert (ingest.reason, ingest.kind) == ("the tier is full", "out_of_resources")  # the older names
    rejected = DicomRejected("not a storage SOP class", code="not_storage")
    assert (rejected.message, rejected.kind) == ("not a storage SOP class", "not_storage")
    missing = retrieve.NotAvailable("1.2.3", "no verified copy")
    assert (missing.message, missing.reason, missing.code) == (
        "1.2.3: no verified copy",
        "no verified copy",
        "not_available",
    )
    package = preservation_packages.PackageError("metadati mancanti", permanent=True)
    assert (package.code, package.permanent) == ("rejected", True)
    assert isinstance(PortalError("x"), ValueError)  # callers that caught ValueError still do


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ReportError("x", code="reauth"), "invalid"),
        (ReportConflict("x", code="claimed"), "conflict"),
        (TokenRefused("x", code="citizen"), "forbidden"),
        (QueryError("x"), "invalid"),
        (storage.StorageFull("x"), "unavailable"),
        (previews.RenditionsIncomplete("x"), "unavailable"),
        (IngestError("x"), "error"),
    ],
)
def test_the_kind_is_the_nearest_intermediate_base(error: PacsError, kind: str) -> None:
    assert kind_of(error) == kind


# --- HTTP -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        # The kinds.
        (Invalid("x"), 400),
        (Forbidden("x"), 403),
        (NotFound("x"), 404),
        (Conflict("x"), 409),
        (Unavailable("x"), 503),
        (PacsError("x"), 500),
        # Codes with a status of their own.
        (BookingError("x", code="slot_taken"), 409),
        (BookingError("x", code="duplicate"), 409),
        (BookingError("x", code="invalid_codice_fiscale"), 400),  # its kind's
        (ReportError("x", code="state"), 409),
        (ReportError("x", code="author"), 403),
        (ReportError("x", code="missing"), 404),
        (ReportError("x", code="damaged"), 500),
        (ReportError("x", code="empty"), 400),
        (ReportConflict("x", code="discarded"), 409),
        (NotFound("x", code="not_signed"), 404),
        (TokenRefused("x", code="no_permission"), 403),
        (Forbidden("x", code="locked_out"), 429),
    ],
)
def test_http_status_by_code(error: PacsError, status: int) -> None:
    assert http_status(error) == status


# --- DIMSE ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (IngestError("x", code="invalid"), 0xC000),  # cannot understand
        (IngestError("x", code="sop_class_mismatch"), 0xA900),
        (IngestError("x", code="not_storage"), 0x0122),
        (IngestError("x", code="out_of_resources"), 0xA700),
        (IngestError("x", code="processing"), 0x0110),
        (QueryError("x"), 0xA900),  # identifier does not match SOP class
    ],
)
def test_dimse_status_by_code(error: PacsError, status: int) -> None:
    assert listener.DIMSE_STATUS[error.code] == status


def test_every_code_an_ingest_can_give_has_a_dimse_status() -> None:
    # DicomRejected's codes pass through IngestError unchanged (archive.ingest).
    for code in ("invalid", "sop_class_mismatch", "not_storage", "out_of_resources", "processing"):
        assert code in listener.DIMSE_STATUS


# --- Celery ---------------------------------------------------------------------------


def test_the_transient_errors_are_unavailable() -> None:
    for cls in (storage.StorageError, storage.StorageFull, storage.CopyMismatch, previews.RenditionsIncomplete):
        assert issubclass(cls, Unavailable), cls
    # Refused for what they are: a retry cannot help.
    for cls in (pipeline.NoImage, DicomRejected, QueryError, BookingError):
        assert not issubclass(cls, Unavailable), cls


def test_a_task_retries_an_unavailable_error_and_not_another(monkeypatch: pytest.MonkeyPatch) -> None:
    from archive import tasks

    calls: list[int] = []

    def store_down(*, series_pk: int) -> None:
        calls.append(series_pk)
        raise storage.StorageError("the facility tier is not mounted")

    monkeypatch.setattr(previews, "series_renditions_make", store_down)
    result = tasks.series_renditions_make.apply(args=[7])
    assert isinstance(result.result, storage.StorageError)
    assert len(calls) == 1 + tasks.series_renditions_make.max_retries  # tried, then retried until the limit

    calls.clear()

    def bug(*, series_pk: int) -> None:
        calls.append(series_pk)
        raise ValueError("not transient")

    monkeypatch.setattr(previews, "series_renditions_make", bug)
    result = tasks.series_renditions_make.apply(args=[7])
    assert isinstance(result.result, ValueError) and calls == [7]
