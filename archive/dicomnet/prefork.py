"""A listener of several processes: one port, pre-forked children, the limits kept across them.

One Python process serialises its CPU work under the GIL (about 4.5 ms of an
image's parsing, hashing, indexing and pynetdicom's decoding), so beyond one
core more associations are not faster. ``manage.py dicom_listener
--processes N`` (``PACS_DICOM_LISTENER_PROCESSES``) runs N processes on the
same port:

* the parent binds and listens (the plain port and the TLS one), then forks
  the children, which serve the sockets they inherited (non-blocking: every
  child wakes for a connection, one accepts it; a busy child, its GIL taken,
  comes later, so connections go to the idle ones). The parent itself serves
  no association and holds no database connection (closed before each fork:
  each child opens its own);
* the limits hold for the listener as a whole: the parent keeps the one
  :class:`~archive.dicomnet.transport.AddressSlots` (connections per peer
  address, ``PACS_DICOM_MAX_ASSOCIATIONS``) and each child asks it over its
  own socket pair (:class:`~archive.dicomnet.transport.SlotBroker`,
  :class:`~archive.dicomnet.transport.SharedSlots`), once a connection and
  once an association. What a child held is given back when it ends, even
  killed;
* a child that dies is replaced (at once; a second later if it died within
  a second of starting; after five deaths in a row before serving, the
  listener stops: its configuration is wrong);
* SIGTERM or SIGINT to the parent: each child stops accepting and lets its
  associations finish (``PACS_DICOM_SHUTDOWN_GRACE``, then each aborted
  between two stores, as one process does), the listening sockets are shut,
  and the parent exits when the last child has. A child whose parent died
  gets SIGTERM (``PR_SET_PDEATHSIG``) and stops the same way.

Every C-STORE is acknowledged by the child that received it, after its own
commit (``archive.ingest``): nothing crosses processes on the way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import connections

from archive.dicomnet import observe
from archive.dicomnet import transport as dul

logger = logging.getLogger(__name__)

# A child that dies before serving this many times in a row: the listener stops.
START_FAILURES_MAX = 5
PR_SET_PDEATHSIG = 1


def processes_default() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def listening_socket(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` and listening, for the children to share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@dataclass
class _Child:
    index: int
    pid: int
    sock: socket.socket
    started: float
    ready: bool = False


@dataclass
class Prefork:
    """The parent of a listener of several processes.

    ``serve`` runs in each child (forked) with the listening sockets and the
    :class:`~archive.dicomnet.transport.SharedSlots`, and returns when the
    child should exit (its SIGTERM received and its associations finished).
    """

    processes: int
    sockets: list[socket.socket]
    slots: dul.AddressSlots
    serve: Callable[[int, list[socket.socket], dul.SharedSlots, Callable[[], bool]], None]
    grace: float
    children: dict[int, _Child] = field(default_factory=dict)
    stopping: bool = False
    failures: int = 0  # children that died before serving, in a row
    restarts: int = 0

    def __post_init__(self) -> None:
        self.broker = dul.SlotBroker(self.slots)
        self._selector = selectors.DefaultSelector()
        self._signals: list[int] = []
        self._pending: list[tuple[float, int]] = []  # (not before, index): children to start

    # --- the parent's loop ----------------------------------------------------

    def run(self, *, ready: Callable[[], None], stopping: Callable[[], None] = lambda: None) -> int:
        """Fork the children, call ``ready`` once every one serves, replace those that die,
        stop on SIGTERM/SIGINT (``stopping`` called then). Returns the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self._signals.append(signum))
        for index in range(self.processes):
            self._fork(index)
        announced = False
        deadline = 0.0
        status = 0
        while True:
            for key, _mask in self._selector.select(timeout=0.1):
                self._serve(key.data)
            self._reap()
            if not announced and not self.stopping and self._all_ready():
                announced = True
                ready()
            if self.failures >= START_FAILURES_MAX and not self.stopping:
                logger.error("%d listener processes in a row died before serving: stopping", self.failures)
                status = 1
                self._signals.append(signal.SIGTERM)
            if self._signals and not self.stopping:
                self.stopping = True
                deadline = time.monotonic() + self.grace + 40.0
                stopping()
                self._stop_children()
            if self.stopping:
                if not self.children:
                    break
                if time.monotonic() > deadline:
                    for child in self.children.values():
                        logger.error("listener process %d did not stop: killed", child.pid)
                        self._kill(child.pid, signal.SIGKILL)
                    deadline = time.monotonic() + 10.0
                continue
            now = time.monotonic()
            for not_before, index in list(self._pending):
                if now >= not_before:
                    self._pending.remove((not_before, index))
                    self._fork(index)
        self._selector.close()
        return status

    def _all_ready(self) -> bool:
        return len(self.children) == self.processes and all(c.ready for c in self.children.values())

    def snapshot(self) -> dict[str, Any]:
        """Connections and associations, all processes together and per process (pid)."""
        return self.broker.snapshot()

    def _serve(self, child: _Child) -> None:
        open_, other = self.broker.serve(child.pid, child.sock)
        if "h" in other and not child.ready:
            child.ready = True
            self.failures = 0
        if not open_:
            # The child is ending; its slots are given back when it is reaped.
            self._selector.unregister(child.sock)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            try:
                self._selector.unregister(child.sock)
            except (KeyError, ValueError):
                pass
            child.sock.close()
            given = self.broker.child_gone(pid)
            observe.process_dead(pid)  # its share of the live gauges goes (PROMETHEUS_MULTIPROC_DIR)
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                logger.info("listener process %d stopped (%s)", pid, code)
                continue
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            logger.error(
                "listener process %d died (%s)%s; starting another",
                pid,
                how,
                f", {given} slots it held given back" if given else "",
            )
            lived = time.monotonic() - child.started
            if not child.ready:
                self.failures += 1
            self.restarts += 1
            self._pending.append((time.monotonic() + (1.0 if lived < 1.0 else 0.0), child.index))

    def _stop_children(self) -> None:
        self._pending.clear()
        for child in self.children.values():
            self._kill(child.pid, signal.SIGTERM)
        # No new connection from here on, for every child at once: shutting a listening
        # socket down stops it in the kernel, whoever holds a descriptor to it.
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    # --- forking ----------------------------------------------------------------

    def _fork(self, index: int) -> None:
        parent_end, child_end = socket.socketpair()
        # Each child opens its own database connections: none may be inherited
        # (two processes on one connection corrupt its protocol).
        connections.close_all()
        sys.stdout.flush()
        sys.stderr.flush()
        parent_pid = os.getpid()
        # Blocked across the fork: a SIGTERM that came before the child's own handler
        # would run the parent's (inherited) and be lost; it waits for the child's.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        pid = os.fork()
        if pid == 0:  # the child
            status = 1
            try:
                parent_end.close()
                self._selector.close()
                for child in self.children.values():
                    child.sock.close()
                status = self._child(index, parent_pid, child_end, blocked)
            except BaseException:
                logger.exception("listener process %d failed", os.getpid())
            finally:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child_end.close()
        parent_end.setblocking(False)
        child = _Child(index=index, pid=pid, sock=parent_end, started=time.monotonic())
        self.children[pid] = child
        self._selector.register(parent_end, selectors.EVENT_READ, child)

    def _child(self, index: int, parent_pid: int, broker: socket.socket, blocked: set[int | signal.Signals]) -> int:
        signals: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: signals.append(signum))
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        _die_with_parent()
        if os.getppid() != parent_pid:
            return 0  # the parent died before this child could ask to be told
        slots = dul.SharedSlots(
            broker, per_address=self.slots.per_address, max_associations=self.slots.max_associations
        )

        def stop_requested() -> bool:
            return bool(signals) or os.getppid() != parent_pid

        self.serve(index, self.sockets, slots, stop_requested)
        return 0


def _die_with_parent() -> None:
    """SIGTERM to this process when its parent dies (Linux; elsewhere the serving loop
    notices the parent's pid change)."""
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
