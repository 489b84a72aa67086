"""What the listener tells operations: an id on every log line of an association, and its metrics.

**The association's id.** Each association gets one (``kernel.logs.new_id``),
bound as ``association_id`` (``kernel.logs``, contextvars) in each thread that
works for it, by pynetdicom events fired in that thread:

* the association's own thread (handlers, ingestion, the audit, the summary
  line): on ``EVT_REQUESTED``, before the policy (``handle_requested``) logs
  its decision;
* its DUL thread (reading PDUs, pynetdicom's and the fence's errors): on the
  first ``EVT_DATA_RECV`` (the A-ASSOCIATE-RQ's bytes, before pynetdicom's own handlers log the decoded PDU), after which that handler unbinds
  itself, so the PDUs that follow cost nothing;
* the gate's connection thread: on ``EVT_CONN_OPEN``.

Nothing is cleared in these threads on release or abort: each ends with its
association (a new connection is a new thread), and the association's last
line, its summary, is written after ``EVT_RELEASED``/``EVT_ABORTED`` when the
abort came from another thread, and must carry the id. An event fired from
another thread (``stop_listener`` aborting from the main thread) binds nothing.

**Metrics** (prometheus_client), served by the listener itself on
``PACS_DICOM_METRICS_PORT`` (:func:`metrics_serve`), since the listener runs
in its own processes, on its hospital's network:

* ``pacs_dicom_associations_open{facility}``: accepted and not yet ended;
* ``pacs_dicom_associations_total{facility,result}``: ended, ``released``,
  ``aborted`` or ``rejected`` (``facility`` of the called AE title,
  ``unknown`` for one no facility has);
* ``pacs_dicom_stores_total{facility,outcome}``: C-STOREs by outcome
  (``stored``, ``duplicate``, ``conflict``, ``failed``), added when the
  association ends (its counts, no work per image);
* ``pacs_dicom_query_seconds{service,level}``: a histogram of the time
  C-FIND, C-MOVE and C-GET handlers take, from the request to the last
  response produced, by ``QueryRetrieveLevel`` (``WORKLIST`` for the
  worklist).

With ``PROMETHEUS_MULTIPROC_DIR`` in the environment (prometheus_client's
multiprocess mode) every process of the listener writes its values to files
there and the process that serves the endpoint sums them: the way to serve
one endpoint for a listener of N forked processes. Without it, the values
are this process's.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.process_collector import ProcessCollector
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from archive.models import Facility
from kernel import logs

logger = logging.getLogger(__name__)

# The listener's own registry: a web process that imports this module does not
# serve these figures (they are the listener's).
REGISTRY = CollectorRegistry(auto_describe=True)

ASSOCIATIONS_OPEN = Gauge(
    "pacs_dicom_associations_open",
    "DICOM associations accepted and not yet ended",
    ["facility"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
ASSOCIATIONS = Counter(
    "pacs_dicom_associations",
    "DICOM associations ended, by called facility and result (released, aborted, rejected)",
    ["facility", "result"],
    registry=REGISTRY,
)
STORES = Counter(
    "pacs_dicom_stores",
    "C-STORE requests answered, by facility and outcome (stored, duplicate, conflict, failed)",
    ["facility", "outcome"],
    registry=REGISTRY,
)
QUERY_SECONDS = Histogram(
    "pacs_dicom_query_seconds",
    "Time of C-FIND, C-MOVE and C-GET requests, from the request to the last response, by level",
    ["service", "level"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    registry=REGISTRY,
)
LEVELS = frozenset({"PATIENT", "STUDY", "SERIES", "IMAGE"})

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    ProcessCollector(registry=REGISTRY)  # CPU, memory, file descriptors of this process


@dataclass
class _State:
    association_id: str
    facility: str = ""
    opened: bool = False
    ended: bool = False


_states: weakref.WeakKeyDictionary[Association, _State] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _state(assoc: Association) -> _State:
    with _lock:
        state = _states.get(assoc)
        if state is None:
            state = _states[assoc] = _State(association_id=logs.new_id())
        return state


def association_id(assoc: Association) -> str:
    """The id of ``assoc`` in the log (made on first use)."""
    return _state(assoc).association_id


def _bind(assoc: Association) -> None:
    logs.ids_bind(association_id=association_id(assoc))


def _on_conn_open(event: Event) -> None:
    _bind(event.assoc)


def _on_first_pdu(event: Event) -> None:
    _bind(event.assoc)
    event.assoc.unbind(evt.EVT_DATA_RECV, _on_first_pdu)


def _on_requested(event: Event) -> None:
    _bind(event.assoc)


def _facility(assoc: Association) -> str:
    peer = getattr(assoc, "pacs_peer", None)
    return str(peer.facility.code) if peer is not None else ""


def _on_established(event: Event) -> None:
    state = _state(event.assoc)
    facility = _facility(event.assoc)
    if not facility:
        return
    with _lock:
        if state.opened or state.ended:
            return
        state.opened, state.facility = True, facility
    ASSOCIATIONS_OPEN.labels(facility).inc()
    # An association whose DUL stopped without EVT_RELEASED or EVT_ABORTED (an exception
    # in a state-machine action) ends when it is collected. Not EVT_CONN_CLOSE: the DUL
    # fires it as soon as the peer closes after our A-RELEASE-RP, before the association
    # thread has marked itself released.
    weakref.finalize(event.assoc, _end, state, "aborted")


def _on_rejected(event: Event) -> None:
    state = _state(event.assoc)
    with _lock:
        if state.ended:
            return
        state.ended = True
    called = ""
    primitive = event.assoc.requestor.primitive
    if primitive is not None:
        called = str(primitive.called_ae_title).strip()
    try:
        code = Facility.objects.filter(ae_title=called).values_list("code", flat=True).first()
    except Exception:  # the database away: the count matters more than the label
        logger.warning("metrics: the facility of a rejected association could not be read", exc_info=True)
        code = None
    ASSOCIATIONS.labels(code or "unknown", "rejected").inc()


def _on_ended(event: Event) -> None:
    assoc = event.assoc
    peer = getattr(assoc, "pacs_peer", None)
    _end(_state(assoc), "released" if assoc.is_released else "aborted", peer.store_counts() if peer else {})


def _end(state: _State, result: str, stores: dict[str, int] | None = None) -> None:
    with _lock:
        if state.ended or not state.opened:
            return
        state.ended = True
    ASSOCIATIONS_OPEN.labels(state.facility).dec()
    ASSOCIATIONS.labels(state.facility, result).inc()
    for outcome, count in (stores or {}).items():
        if count:
            STORES.labels(state.facility, outcome).inc(count)


def _level(event: Event) -> str:
    if str(event.request.AffectedSOPClassUID) == ModalityWorklistInformationFind:
        return "WORKLIST"
    try:
        level = str(event.identifier.get("QueryRetrieveLevel", "")).strip().upper()
    except Exception:  # a malformed identifier: the handler answers it
        return "OTHER"
    return level if level in LEVELS else "OTHER"


def timed(handler: Callable[..., Iterator[Any]], service: str) -> Callable[..., Iterator[Any]]:
    """``handler`` (a C-FIND, C-MOVE or C-GET generator) timed into ``pacs_dicom_query_seconds``."""

    @functools.wraps(handler)
    def wrapper(event: Event, *args: Any) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            yield from handler(event, *args)
        finally:
            QUERY_SECONDS.labels(service, _level(event)).observe(time.perf_counter() - started)

    return wrapper


TIMED = {evt.EVT_C_FIND: "C-FIND", evt.EVT_C_MOVE: "C-MOVE", evt.EVT_C_GET: "C-GET"}


def instrument(handlers: list[Any]) -> list[Any]:
    """The listener's ``evt_handlers`` with the ids and the metrics around them.

    The id handlers come first (the policy's rejection line carries the id),
    the ending handlers last (the store counts are final), and C-FIND, C-MOVE
    and C-GET handlers are timed.
    """
    wrapped = [
        (event, timed(handler, TIMED[event]), *rest) if event in TIMED else (event, handler, *rest)
        for event, handler, *rest in handlers
    ]
    return [
        (evt.EVT_CONN_OPEN, _on_conn_open),
        (evt.EVT_DATA_RECV, _on_first_pdu),
        (evt.EVT_REQUESTED, _on_requested),
        *wrapped,
        (evt.EVT_ESTABLISHED, _on_established),
        (evt.EVT_REJECTED, _on_rejected),
        (evt.EVT_RELEASED, _on_ended),
        (evt.EVT_ABORTED, _on_ended),
    ]


def multiprocess_directory() -> Path | None:
    """``PROMETHEUS_MULTIPROC_DIR``, when this listener's processes share their metrics through files."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(directory) if directory else None


def metrics_serve(*, host: str, port: int) -> tuple[str, int]:
    """Serve ``/metrics`` on ``host:port`` (0: any free port) in a thread; the address bound.

    In multiprocess mode the directory's values of an earlier run are removed
    first (the process that serves owns the directory: with forked workers,
    the parent, before it forks) and the endpoint sums every process's files.
    """
    directory = multiprocess_directory()
    registry = REGISTRY
    if directory is not None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(directory))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound_host, bound_port = server.server_address[:2]
    return str(bound_host), int(bound_port)


def process_dead(pid: int) -> None:
    """A forked listener process ended: its share of the live gauges goes (multiprocess mode)."""
    directory = multiprocess_directory()
    if directory is not None:
        multiprocess.mark_process_dead(pid, path=str(directory))
