"""Run the DICOM listener until SIGTERM or Ctrl-C: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET
(Patient Root and Study Root) and Modality Worklist C-FIND, on the plain port and, when DICOM
TLS is configured, on the TLS port.

Django's system checks run first (``requires_system_checks``): among them
``archive.E030``, and ``start_listener`` checks it again (``--skip-checks``
does not skip it): the listener does not start on a pynetdicom other than
the one ``archive/dicomnet/fence.py`` adapts."""

from __future__ import annotations

import gc
import signal
import ssl
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.dicomnet import fence, observe
from archive.dicomnet.listener import facilities_served, start_listener, stop_listener
from archive.dicomnet.peers import is_loopback
from archive.models import Facility, ae_title_validator


class Command(BaseCommand):
    requires_system_checks = "__all__"  # archive.E030 among them: see the module's docstring
    help = (
        "Serve DICOM (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, worklist). With --facility, for that facility "
        "only (its AE title and port by default); without, for every facility on one port, each under its "
        "own AE title. With PACS_DICOM_TLS_CERT/KEY/CA set, DICOM TLS on --tls-port as well."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--facility", metavar="CODE", help="serve only this facility")
        parser.add_argument(
            "--port", type=int, help="TCP port (default: the facility's, else PACS_DICOM_PORT; 0: any free port)"
        )
        parser.add_argument("--ae-title", metavar="AET", help="AE title to answer to (needs --facility)")
        parser.add_argument(
            "--tls-port",
            type=int,
            default=settings.PACS_DICOM_TLS_PORT,
            help="DICOM TLS port, when TLS is configured (default PACS_DICOM_TLS_PORT; 0: any free port)",
        )
        parser.add_argument("--host", default=settings.PACS_DICOM_HOST, help="address to listen on")

    def handle(self, *args: Any, **opts: Any) -> None:
        facility = None
        if opts["facility"]:
            facility = Facility.objects.filter(code=opts["facility"]).first()
            if facility is None:
                raise CommandError(f"no facility with code {opts['facility']!r}")
        ae_title = opts["ae_title"]
        if ae_title is not None:
            if facility is None:
                raise CommandError("--ae-title needs --facility (without it each facility answers to its own)")
            try:
                ae_title_validator(ae_title)
            except ValidationError:
                raise CommandError(f"{ae_title!r} is not a valid AE title (1-16 printable ASCII characters)") from None
        # PACS_DICOM_FACILITIES: the hospitals this process serves (--facility: one of them).
        try:
            served_facilities = facilities_served(settings.PACS_DICOM_FACILITIES)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        facility_codes = frozenset(settings.PACS_DICOM_FACILITIES)
        if facility and facility_codes and facility.code not in facility_codes:
            raise CommandError(f"--facility {facility.code} is not among PACS_DICOM_FACILITIES")
        port = opts["port"]
        if port is None:
            port = facility.dicom_port if facility else settings.PACS_DICOM_PORT
        if not 0 <= port <= 65535:
            raise CommandError(f"{port} is not a TCP port")
        tls_port = opts["tls_port"]
        if not 0 <= tls_port <= 65535 or (tls_port == port and port != 0):
            raise CommandError(f"--tls-port {tls_port} is not a TCP port other than the plain one")

        # The handler only notes the signal: it runs in the main thread between two
        # bytecodes, and setting a threading.Event there deadlocks when the signal lands
        # while the main thread holds that Event's lock inside wait() (seen: SIGTERM
        # ignored, the port held for good). A plain sleep is safe to interrupt.
        signals_received: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: signals_received.append(signum))
        # This process serves DICOM only: pynetdicom's process-wide options are set here
        # (fence row 15), never by start_listener.
        fence.listener_process_configure(fast_paths=settings.PACS_DICOM_FAST_PATHS)
        if settings.PACS_DICOM_METRICS_PORT is not None:
            # Before the listener: with PROMETHEUS_MULTIPROC_DIR, this process owns the directory.
            try:
                metrics_host, metrics_port = observe.metrics_serve(
                    host=settings.PACS_DICOM_METRICS_HOST, port=settings.PACS_DICOM_METRICS_PORT
                )
            except OSError as exc:
                raise CommandError(f"cannot serve the metrics on {settings.PACS_DICOM_METRICS_HOST}: {exc}") from exc
            self.stdout.write(f"DICOM listener metrics on http://{metrics_host}:{metrics_port}/metrics")
        try:
            server = start_listener(
                host=opts["host"],
                port=port,
                facility_code=facility.code if facility else None,
                ae_title=ae_title,
                tls_port=tls_port,
                facility_codes=facility_codes,
            )
        except fence.FenceBroken as exc:
            raise CommandError(f"pynetdicom is not what the listener was written for: {exc}") from exc
        except ssl.SSLError as exc:
            raise CommandError(f"cannot load the DICOM TLS certificate, key or CA: {exc}") from exc
        except OSError as exc:
            raise CommandError(f"cannot listen on {opts['host']}: {exc}") from exc
        host, bound_port = server.server_address[:2]
        if facility:
            served = f"{ae_title or facility.ae_title} ({facility.code})"
        else:
            served = ", ".join(f"{f.ae_title} ({f.code})" for f in served_facilities) or "no facility yet"
            if facility_codes:
                served += " (PACS_DICOM_FACILITIES)"
        # Start-up's objects live as long as the process: out of the collector's
        # full passes (as in pacs/wsgi.py), which long C-FIND answers would trigger.
        gc.freeze()
        if settings.PACS_DICOM_ACCEPT_UNKNOWN_AE:
            self.stdout.write(
                "PACS_DICOM_ACCEPT_UNKNOWN_AE: unknown AE titles may echo and store (demo only)"
                + ("" if is_loopback(host) else f"; WARNING: reachable from the network on {host}")
            )
        if server.tls_server is not None:
            tls_host, tls_bound = server.tls_server.server_address[:2]
            # Written before the "ready" line, which tests and scripts wait for.
            self.stdout.write(f"DICOM TLS on {tls_host}:{tls_bound} (client certificate required)")
        self.stdout.write(f"DICOM listener ready on {host}:{bound_port}, AE titles: {served}", ending="\n")
        self.stdout.flush()
        while not signals_received:
            time.sleep(0.2)
        self.stdout.write("stopping: no new associations; finishing the stores in flight")
        self.stdout.flush()
        stop_listener(server, grace=settings.PACS_DICOM_SHUTDOWN_GRACE)
        self.stdout.write("DICOM listener stopped")
