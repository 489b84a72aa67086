"""Run the DICOM listener until SIGTERM or Ctrl-C: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET
(Patient Root and Study Root) and Modality Worklist C-FIND, on the plain port and, when DICOM
TLS is configured, on the TLS port.

Django's system checks run first (``requires_system_checks``): among them
``archive.E030``, and ``start_listener`` checks it again (``--skip-checks``
does not skip it): the listener does not start on a pynetdicom other than
the one ``archive/dicomnet/fence.py`` adapts."""

from __future__ import annotations

import gc
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.dicomnet import fence, observe, prefork
from archive.dicomnet.listener import facilities_served, start_listener, stop_listener, tls_context
from archive.dicomnet.peers import is_loopback
from archive.dicomnet.transport import AddressSlots, SharedSlots
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
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.PACS_DICOM_LISTENER_PROCESSES,
            help="processes serving the port(s) (default PACS_DICOM_LISTENER_PROCESSES; 0: one per CPU)",
        )

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
        processes = opts["processes"]
        if processes < 0:
            raise CommandError(f"--processes {processes}: a number of processes, 0 for one per CPU")
        processes = processes or prefork.processes_default()
        listening = {
            "facility_code": facility.code if facility else None,
            "ae_title": ae_title,
            "facility_codes": facility_codes,
        }

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
        if processes > 1 and settings.PACS_DICOM_METRICS_PORT is not None and observe.multiprocess_directory() is None:
            raise CommandError(
                "several listener processes with PACS_DICOM_METRICS_PORT need PROMETHEUS_MULTIPROC_DIR "
                "(a folder the processes share their metrics through; see docs/DEPLOYMENT.md)"
            )
        if settings.PACS_DICOM_METRICS_PORT is not None:
            # Before the listener: with PROMETHEUS_MULTIPROC_DIR, this process owns the directory.
            try:
                metrics_host, metrics_port = observe.metrics_serve(
                    host=settings.PACS_DICOM_METRICS_HOST, port=settings.PACS_DICOM_METRICS_PORT
                )
            except OSError as exc:
                raise CommandError(f"cannot serve the metrics on {settings.PACS_DICOM_METRICS_HOST}: {exc}") from exc
            self.stdout.write(f"DICOM listener metrics on http://{metrics_host}:{metrics_port}/metrics")
        if processes > 1:
            self._serve_prefork(
                processes,
                host=opts["host"],
                port=port,
                tls_port=tls_port,
                facility=facility,
                served_facilities=served_facilities,
                **listening,
            )
            return
        try:
            server = start_listener(host=opts["host"], port=port, tls_port=tls_port, **listening)
        except fence.FenceBroken as exc:
            raise CommandError(f"pynetdicom is not what the listener was written for: {exc}") from exc
        except ssl.SSLError as exc:
            raise CommandError(f"cannot load the DICOM TLS certificate, key or CA: {exc}") from exc
        except OSError as exc:
            raise CommandError(f"cannot listen on {opts['host']}: {exc}") from exc
        # Start-up's objects live as long as the process: out of the collector's
        # full passes (as in pacs/wsgi.py), which long C-FIND answers would trigger.
        gc.freeze()
        tls_address = server.tls_server.server_address[:2] if server.tls_server is not None else None
        self._announce(server.server_address[:2], tls_address, facility, ae_title, served_facilities, facility_codes)
        while not signals_received:
            time.sleep(0.2)
        self.stdout.write("stopping: no new associations; finishing the stores in flight")
        self.stdout.flush()
        stop_listener(server, grace=settings.PACS_DICOM_SHUTDOWN_GRACE)
        self.stdout.write("DICOM listener stopped")

    def _announce(
        self,
        address: tuple[str, int],
        tls_address: tuple[str, int] | None,
        facility: Facility | None,
        ae_title: str | None,
        served_facilities: list[Facility],
        facility_codes: frozenset[str],
        processes: int = 1,
    ) -> None:
        host, bound_port = address
        if facility:
            served = f"{ae_title or facility.ae_title} ({facility.code})"
        else:
            served = ", ".join(f"{f.ae_title} ({f.code})" for f in served_facilities) or "no facility yet"
            if facility_codes:
                served += " (PACS_DICOM_FACILITIES)"
        if settings.PACS_DICOM_ACCEPT_UNKNOWN_AE:
            self.stdout.write(
                "PACS_DICOM_ACCEPT_UNKNOWN_AE: unknown AE titles may echo and store (demo only)"
                + ("" if is_loopback(host) else f"; WARNING: reachable from the network on {host}")
            )
        if tls_address is not None:
            # Written before the "ready" line, which tests and scripts wait for.
            self.stdout.write(f"DICOM TLS on {tls_address[0]}:{tls_address[1]} (client certificate required)")
        if processes > 1:
            self.stdout.write(f"{processes} listener processes (parent {os.getpid()})")
        self.stdout.write(f"DICOM listener ready on {host}:{bound_port}, AE titles: {served}", ending="\n")
        self.stdout.flush()

    def _serve_prefork(
        self,
        processes: int,
        *,
        host: str,
        port: int,
        tls_port: int,
        facility: Facility | None,
        served_facilities: list[Facility],
        **listening: Any,
    ) -> None:
        """Several processes on the same port(s): ``archive/dicomnet/prefork.py``."""
        try:
            fence.verify()
            context = tls_context()
        except fence.FenceBroken as exc:
            raise CommandError(f"pynetdicom is not what the listener was written for: {exc}") from exc
        except ssl.SSLError as exc:
            raise CommandError(f"cannot load the DICOM TLS certificate, key or CA: {exc}") from exc
        sockets = []
        try:
            sockets.append(prefork.listening_socket(host, port))
            if context is not None:
                sockets.append(prefork.listening_socket(host, tls_port))
        except OSError as exc:
            for sock in sockets:
                sock.close()
            raise CommandError(f"cannot listen on {host}: {exc}") from exc
        slots = AddressSlots(
            per_address=settings.PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS,
            max_associations=settings.PACS_DICOM_MAX_ASSOCIATIONS,
        )

        def serve(index: int, sockets: list[socket.socket], shared: SharedSlots, stop: Callable[[], bool]) -> None:
            server = start_listener(
                host=host, port=port, tls_port=tls_port, listening_sockets=sockets, slots=shared, **listening
            )
            shared.hello()
            while not stop():
                time.sleep(0.2)
            stop_listener(server, grace=settings.PACS_DICOM_SHUTDOWN_GRACE)

        parent = prefork.Prefork(
            processes=processes, sockets=sockets, slots=slots, serve=serve, grace=settings.PACS_DICOM_SHUTDOWN_GRACE
        )
        gc.freeze()  # as one process does; before forking, so that the children share the pages
        tls_address = sockets[1].getsockname()[:2] if len(sockets) > 1 else None

        def ready() -> None:
            self._announce(
                sockets[0].getsockname()[:2],
                tls_address,
                facility,
                listening["ae_title"],
                served_facilities,
                listening["facility_codes"],
                processes,
            )

        def stopping() -> None:
            self.stdout.write("stopping: no new associations; finishing the stores in flight")
            self.stdout.flush()

        status = parent.run(ready=ready, stopping=stopping)
        self.stdout.write("DICOM listener stopped")
        if status:
            raise CommandError("the listener's processes could not start: see the log above")
