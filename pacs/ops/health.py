"""Liveness and readiness (django-health-check), answered as JSON.

``/health/live/`` says only that the process answers: no database, no broker,
so an orchestrator does not restart a web process because PostgreSQL is away.
``/health/ready/`` runs every check and answers 200, or 503 naming the
failing checks: the database, the Celery broker (Redis or the embedded
filesystem broker), each configured storage tier (written, read back and
removed), the Celery workers (a ping; ``PACS_HEALTH_CELERY_WORKERS`` off
where none is expected) and the DICOM listener (a real C-ECHO).

The answer is ``{"status": "ok"|"unavailable", "checks": {name: "OK"|message}}``.
Names are the checks' and the tiers' (``tier:facility:TS-CAT``), messages
are fixed sentences: no path, host, port, AE title or patient datum leaves
(the library logs the exception, with its detail, on the server). It is
public unless ``PACS_HEALTH_RESTRICTED`` asks for the metrics' gate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from health_check.base import HealthCheck  # type: ignore[import-untyped]
from health_check.contrib.celery import Ping  # type: ignore[import-untyped]
from health_check.exceptions import ServiceUnavailable  # type: ignore[import-untyped]
from health_check.views import HealthCheckView  # type: ignore[import-untyped]

from archive.models import Facility
from archive.storage import lifecycle
from archive.storage import tiers as storage

from .access import allowed

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Named(HealthCheck):
    """A check whose report key is its name alone (the default repr would show its fields)."""

    name: str = ""

    def __repr__(self) -> str:
        return self.name


@dataclasses.dataclass(repr=False)
class DatabaseCheck(Named):
    name: str = "database"
    timeout = datetime.timedelta(seconds=3)

    def run(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except Exception as exc:
            raise ServiceUnavailable("database unavailable") from exc
        finally:
            connection.close()  # the executor's thread keeps no connection


@dataclasses.dataclass(repr=False)
class BrokerCheck(Named):
    """Redis answers PING; the filesystem broker's folders exist and take a file."""

    name: str = "broker"
    timeout = datetime.timedelta(seconds=3)

    def run(self) -> None:
        url = str(settings.CELERY_BROKER_URL)
        if url.startswith("filesystem://"):
            options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
            for key in ("data_folder_in", "data_folder_out"):  # kombu makes the control folder itself
                folder = options.get(key)
                if folder:
                    self._writable(Path(folder))
            return
        import redis

        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            raise ServiceUnavailable("broker unavailable") from exc

    @staticmethod
    def _writable(folder: Path) -> None:
        import tempfile

        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".health-"):
                pass
        except OSError as exc:
            raise ServiceUnavailable("broker unavailable") from exc


@dataclasses.dataclass(repr=False)
class TierCheck(Named):
    tier: str = ""
    timeout = datetime.timedelta(seconds=5)

    def run(self) -> None:
        try:
            storage.tier_probe(self.tier)
        except storage.StorageError as exc:
            raise ServiceUnavailable("not writable or readable") from exc


@dataclasses.dataclass(repr=False)
class WorkersCheck(Named):
    name: str = "celery_workers"

    def run(self) -> None:
        from celery import current_app as app  # pacs.celery's app, loaded with Django (pacs/__init__)

        # django-health-check's own Celery check: a ping, then a worker consuming the default queue.
        ping = Ping(app=app, timeout=datetime.timedelta(seconds=settings.PACS_HEALTH_CELERY_TIMEOUT), limit=1)
        try:
            ping.run()
        except Exception as exc:
            # Its messages name the workers (their host names): ours does not.
            raise ServiceUnavailable("no Celery worker answers") from exc


@dataclasses.dataclass(repr=False)
class ListenerCheck(Named):
    """A C-ECHO from ``PACS_HEALTH_DICOM_CALLING_AE`` (a node the listener knows) to the listener."""

    name: str = "dicom_listener"
    called_ae: str = ""
    timeout = datetime.timedelta(seconds=5)

    def run(self) -> None:
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        from archive.dicomnet.fence import CheckedAE  # pynetdicom's requestor without its reactor race

        host = settings.PACS_DICOM_HOST
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        seconds = settings.PACS_HEALTH_DICOM_TIMEOUT
        ae = CheckedAE(ae_title=settings.PACS_HEALTH_DICOM_CALLING_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = seconds
        ae.connection_timeout = seconds
        ae.add_requested_context(Verification)
        assoc = ae.associate(host, settings.PACS_DICOM_PORT, ae_title=self.called_ae)
        if not assoc.is_established:
            raise ServiceUnavailable("the DICOM listener refused or did not answer the association")
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0x0000:
            raise ServiceUnavailable("the DICOM listener did not answer the C-ECHO")


def configured_tiers() -> list[str]:
    """Every tier this installation writes: each facility's, the long-term one(s), preservation."""
    facilities = list(Facility.objects.select_related("authority").order_by("code"))
    found = [storage.facility_tier(f.code) for f in facilities]
    found += sorted({lifecycle.longterm_tier_for(f) for f in facilities} or {storage.longterm_tier(storage.REGION)})
    found.append(settings.PACS_PRESERVATION_TIER)
    return found


def readiness_checks() -> list[HealthCheck]:
    """The checks of ``/health/ready/``, built in the request's thread (they read the facilities)."""
    checks: list[HealthCheck] = [DatabaseCheck(), BrokerCheck()]
    checks += [TierCheck(name=f"tier:{tier}", tier=tier) for tier in configured_tiers()]
    if settings.PACS_HEALTH_CELERY_WORKERS:
        checks.append(WorkersCheck())
    if settings.PACS_HEALTH_DICOM_LISTENER:
        called = settings.PACS_HEALTH_DICOM_CALLED_AE
        if not called:
            first = Facility.objects.order_by("code").values_list("ae_title", flat=True).first()
            called = first or "ANY-SCP"
        checks.append(ListenerCheck(called_ae=called))
    return checks


class ReadinessView(HealthCheckView):
    """django-health-check's view, answering JSON with 503 (not its 500) when a check fails."""

    async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if settings.PACS_HEALTH_RESTRICTED and not allowed(request):
            return JsonResponse({"detail": "forbidden"}, status=403)
        checks = await sync_to_async(readiness_checks)()
        with self.get_executor() as executor:
            self.results = await asyncio.gather(*(check.get_result(executor) for check in checks))
        failed = any(result.error for result in self.results)
        return JsonResponse(
            {
                "status": "unavailable" if failed else "ok",
                "checks": {repr(r.check): "OK" if not r.error else str(r.error.message) for r in self.results},
            },
            status=503 if failed else 200,
        )


def live(request: HttpRequest) -> JsonResponse:
    """The process answers: nothing else is asked."""
    return JsonResponse({"status": "ok"})
