"""Rendering in child processes, so that a decoder that crashes cannot take the caller down.

Some pixel-data decoders fail in ways ``except Exception`` does not catch: a
Rust panic (pylibjpeg-rle 2.2.0 on a corrupt RLE stream), a segmentation
fault or an abort in a C library, an endless loop, an allocation that eats
the machine. :func:`render_isolated` therefore decodes in a worker process
and turns each of those into :class:`~archive.rendering.pipeline.NoImage`, so a web
request answers 406, a Celery task gives up on the image, and the web
worker, the listener or the Celery worker lives on.

Design:

- A small pool of persistent workers per parent process (at most
  ``PACS_RENDER_WORKERS``), started lazily and reused: starting one costs
  about 0.3 s (numpy, pydicom, Pillow, the decoders, the settings), a render
  in a warm one 0.1-0.3 ms more than in-process (MR_small 0.9 -> 1.0 ms, a
  JPEG baseline 0.9 -> 1.1 ms, JPEG 2000 2.5 -> 2.8 ms). Each worker
  serves ``TASKS_PER_WORKER`` renders and is then replaced, so slow leaks in
  a decoder do not accumulate; its successor is started in the background as
  it retires, so no render waits for those imports.
- Workers are started with ``subprocess`` (``python -c``), not
  ``multiprocessing``: that is safe from any thread (gunicorn threads,
  pynetdicom association threads), it does not re-import the parent's
  ``__main__`` (gunicorn's or celery's script), and it needs neither the
  resource tracker nor a fork server whose state a forked Celery or gunicorn
  worker would inherit. Parent and worker talk over two pipes with
  :class:`multiprocessing.connection.Connection` framing (pickles); the
  parent sends the file's *path*, never its bytes.
- A forked parent (Celery prefork, gunicorn workers) does not share its
  parent's workers: a pid change (and an ``os.register_at_fork`` hook, which
  also replaces a lock another thread might have held while forking)
  starts a new pool.
- Limits: the parent waits ``PACS_RENDER_TIMEOUT`` seconds for an answer and
  then kills the worker; the worker's address space is capped with
  ``RLIMIT_AS`` (``PACS_RENDER_MEMORY_LIMIT``), so an allocation fails with
  ``MemoryError`` (or the C library gives up) instead of the machine
  swapping; and each render gets a CPU-time limit (``RLIMIT_CPU``) a little
  beyond the timeout, so an endless loop in a worker whose parent died
  meanwhile ends too.
- A crash is seen as the end of the pipe (``EOFError``) before an answer;
  the worker's exit status (a signal, ``os._exit``, an abort after a panic)
  is logged, the worker is discarded, and the next render takes another.

The worker does not set up Django (no apps, no database): it loads the
settings module named by the ``DJANGO_SETTINGS_MODULE`` it inherits, since
rendering reads a setting or two. Those settings come from the environment,
as in production; a value the parent changes at run time (a test's
``settings`` fixture) does not reach the worker.

What this is for, found by the fuzz test in tests/archive/test_render_isolated.py:
GDCM 3.2.6 (python-gdcm) aborts the process (an uncaught C++ exception,
SIGABRT) on a JPEG baseline or lossless stream with one marker byte changed
and on some damaged JPEG-LS streams; a damaged item or element length makes
pydicom allocate up to 4 GiB.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from archive.rendering import pipeline as rendering
from kernel.errors import PacsError, Unavailable

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
DEFAULT_MEMORY_LIMIT = 2 * 1024 * 1024 * 1024
DEFAULT_WORKERS = 2
# Renders a worker serves before it is replaced (decoders that leak a little per call).
TASKS_PER_WORKER = 200
# A worker that has not finished its imports by then is broken (a cold disk takes seconds, not minutes).
START_TIMEOUT = 60.0
# CPU seconds a render may use beyond the timeout before the kernel ends the worker (SIGXCPU).
CPU_GRACE = 5.0

CRASHED = "the image could not be decoded: the decoder crashed"
TOO_LONG = "the image could not be decoded: the decoder took too long"
OUT_OF_MEMORY = "the image could not be decoded: the decoder ran out of memory"

# The worker's first lines: the parent's import path arrives over the pipe, then the
# worker's loop takes over. Nothing else is imported before the pool module.
_BOOT = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "inbox, outbox = Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)\n"
    "sys.path[:] = inbox.recv()\n"
    "from archive.rendering.isolated import _serve\n"
    "_serve(inbox, outbox)\n"
)


class RenderBusy(Unavailable):
    """Every render worker of this process stayed busy for a whole render's time: worth another try."""

    code = "render_busy"


@dataclass(frozen=True)
class Limits:
    timeout: float
    memory: int
    workers: int


def limits() -> Limits:
    from django.conf import settings

    return Limits(
        timeout=float(getattr(settings, "PACS_RENDER_TIMEOUT", DEFAULT_TIMEOUT)),
        memory=int(getattr(settings, "PACS_RENDER_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT)),
        workers=max(1, int(getattr(settings, "PACS_RENDER_WORKERS", DEFAULT_WORKERS))),
    )


def _render_arguments(frame: int, params: rendering.RenderParams) -> dict[str, Any]:
    """:func:`render_isolated`'s and :func:`_render_path`'s arguments from a
    :class:`~archive.rendering.pipeline.RenderParams`, the file's path aside."""
    return {
        "frame": frame,
        "media_type": params.media_type,
        "quality": params.quality,
        "window": params.window,
        "viewport": params.viewport,
        "max_size": params.max_size,
    }


def render_with(*, path: Path, frame: int, params: rendering.RenderParams) -> bytes:
    """:func:`render_isolated` with the caller's choices in one :class:`~archive.rendering.pipeline.RenderParams`."""
    return render_isolated(path=path, **_render_arguments(frame, params))


def render_isolated(
    *,
    path: Path,
    frame: int = 1,
    media_type: str = rendering.JPEG,
    quality: int = rendering.DEFAULT_QUALITY,
    window: rendering.Window | None = None,
    viewport: rendering.Viewport | None = None,
    max_size: int | None = None,
    timeout: float | None = None,
) -> bytes:
    """One frame of the DICOM file at ``path``, rendered by
    :func:`archive.rendering.pipeline.render_frame` in a worker process.

    Parameters
    ----------
    path : Path
        A local file (:func:`archive.storage.retrieve.instance_file` gives one).
    frame, media_type, quality, window, viewport, max_size
        As for :func:`archive.rendering.pipeline.render_frame`.
    timeout : float, optional
        Seconds the render may take; ``PACS_RENDER_TIMEOUT`` by default.

    Raises
    ------
    NoImage
        The object has no image, its pixel data cannot be decoded, or the
        decoder crashed, took too long or ran out of memory.
    ValueError
        A parameter out of range (frame number, media type, quality).
    """
    result = run_isolated(
        _render_path,
        timeout=timeout,
        path=str(path),
        frame=frame,
        media_type=media_type,
        quality=quality,
        window=window,
        viewport=viewport,
        max_size=max_size,
    )
    assert isinstance(result, bytes)
    return result


def run_isolated(fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a worker process (``fn`` must be picklable: a module-level
    function or a builtin), with the limits :func:`render_isolated` applies. For
    :func:`render_isolated` and for tests that need a worker to crash, hang or allocate."""
    lim = limits()
    if timeout is None:
        timeout = lim.timeout
    return _pool(lim.workers).run(fn, args, kwargs, timeout=timeout, memory=lim.memory)


# --- the parent's side ---------------------------------------------------------------------------


class _WorkerDied(PacsError):
    code = "worker_died"


class _Worker:
    """One child process and its two pipe ends; used by one thread at a time."""

    def __init__(self, memory: int) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PACS_RENDER_WORKER_MEMORY": str(memory)},
            )
        except BaseException:
            os.close(to_child_w)
            os.close(from_child_r)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.outbox = Connection(to_child_w, readable=False)
        self.inbox = Connection(from_child_r, writable=False)
        self.memory = memory
        self.tasks = 0
        self.usable = True
        try:
            self.outbox.send(list(sys.path))
            if not self.inbox.poll(START_TIMEOUT):
                raise _WorkerDied(f"the render worker did not start in {START_TIMEOUT:.0f} s")
            self.inbox.recv()  # "ready": its imports are done
        except (OSError, EOFError, _WorkerDied) as exc:
            self.kill()
            raise RuntimeError(f"a render worker could not be started: {exc} ({self.status()})") from None

    def send(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float) -> bool:
        """Hand the worker a task; False when it is gone (then :meth:`receive` says "died")."""
        self.tasks += 1
        try:
            self.outbox.send((fn, args, kwargs, timeout + CPU_GRACE))
        except (EOFError, OSError):
            self.usable = False
            self.kill()
            return False
        return True

    def receive(self, timeout: float) -> tuple:
        """The answer to the task sent, waiting at most ``timeout`` seconds for it."""
        if not self.usable:
            return ("died", None)
        try:
            if not self.inbox.poll(max(timeout, 0.0)):
                self.usable = False
                self.kill()
                return ("timeout", None)
            outcome = self.inbox.recv()
        except (EOFError, OSError):
            self.usable = False
            self.kill()
            return ("died", None)
        if outcome[0] in ("memory", "panic", "broken"):
            self.usable = False  # it exits after such an answer
        return outcome

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float) -> tuple:
        self.send(fn, args, kwargs, timeout)
        return self.receive(timeout)

    def status(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def kill(self) -> None:
        self.usable = False
        self.close()
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # in uninterruptible sleep: the kernel reaps it later
            logger.error("render worker %s did not end after SIGKILL", self.proc.pid)

    def close(self) -> None:
        """Close the pipes: an idle worker reads the end of its input and exits."""
        for conn in (self.outbox, self.inbox):
            try:
                conn.close()
            except OSError:
                pass


class _Pool:
    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.size = size
        self.slots = threading.BoundedSemaphore(size)
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []
        self.closed = False

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, timeout: float, memory: int
    ) -> Any:
        """``fn`` in a worker, waited for: at most ``timeout`` seconds for a free worker (then
        :class:`RenderBusy`), then at most ``timeout`` seconds for its answer."""
        if not self.slots.acquire(timeout=timeout):
            raise RenderBusy(f"no render worker free after {timeout:.0f} s ({self.size} in this process)")
        try:
            worker = self._take(memory)
            started = time.monotonic()
            try:
                outcome = worker.call(fn, args, kwargs, timeout)
            except BaseException:
                worker.kill()  # what it received, if anything, is unknown
                raise
            finally:
                self._give_back(worker)
        finally:
            self.slots.release()
        what = str(kwargs.get("path") or getattr(fn, "__qualname__", repr(fn)))
        return self.finish(worker, what, outcome, timeout=timeout, memory=memory, started=started)

    def finish(self, worker: _Worker, what: str, outcome: tuple, *, timeout: float, memory: int, started: float) -> Any:
        """The value of a worker's answer, or the exception it stands for."""
        kind, value = outcome[0], outcome[1]
        if kind == "ok":
            return value
        if kind == "noimage":
            raise rendering.NoImage(value)
        if kind == "valueerror":
            raise ValueError(value)
        if kind == "timeout":
            logger.error("rendering %s: no answer after %.1f s, render worker killed", what, timeout)
            raise rendering.NoImage(TOO_LONG)
        if kind == "memory":
            logger.error("rendering %s: out of memory (limit %d bytes): %s", what, memory, value)
            raise rendering.NoImage(OUT_OF_MEMORY)
        if kind == "died":
            status = worker.status()
            elapsed = time.monotonic() - started
            if status == "killed by SIGXCPU":  # its own CPU-time limit: an endless loop
                logger.error("rendering %s: CPU time limit reached after %.1f s", what, elapsed)
                raise rendering.NoImage(TOO_LONG)
            logger.error("rendering %s: the render worker died (%s) after %.2f s", what, status, elapsed)
            raise rendering.NoImage(CRASHED)
        # Any other exception, including one Python does not count as an Exception
        # (pyo3's PanicException derives from BaseException).
        logger.error("rendering %s failed in the render worker:\n%s", what, outcome[2])
        if kind in ("panic", "broken"):
            raise rendering.NoImage(CRASHED)
        raise rendering.NoImage(f"the image cannot be rendered: {value}")

    def _take(self, memory: int) -> _Worker:
        with self.lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.memory == memory and worker.proc.poll() is None:
                    return worker
                worker.kill()
        return _Worker(memory)

    def _give_back(self, worker: _Worker) -> None:
        if worker.usable and worker.tasks < TASKS_PER_WORKER:
            with self.lock:
                self.idle.append(worker)
            return
        retired = worker.usable  # its tasks done, healthy: its successor is started now
        worker.kill()
        if retired:
            self._successor_start(worker.memory)

    def _successor_start(self, memory: int) -> None:
        """Start, in the background, the worker that takes a retired one's place, so that
        the next render does not wait for a worker's imports (about 0.4 s) every
        ``TASKS_PER_WORKER`` renders. Dropped when the pool already has its idle workers,
        is shut down, or this is a forked child; a start that fails is logged, and the
        next render starts its own as before."""

        def start() -> None:
            try:
                fresh = _Worker(memory)
            except RuntimeError as exc:
                logger.warning("the successor of a retired render worker did not start: %s", exc)
                return
            with self.lock:
                keep = not self.closed and self.pid == os.getpid() and len(self.idle) < self.size
                if keep:
                    self.idle.append(fresh)
            if not keep:
                fresh.kill()

        threading.Thread(target=start, name="render-worker-successor", daemon=True).start()

    def shutdown(self) -> None:
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for worker in idle:
            worker.close()

    def forget(self) -> None:
        """In a forked child: drop the parent's workers without touching them (only the
        inherited pipe ends are closed, so that they see their parent's exit)."""
        for worker in self.idle:
            worker.close()
            worker.proc.returncode = 0  # not ours to wait for
        self.idle = []


_lock = threading.Lock()
_current: _Pool | None = None


def _pool(size: int) -> _Pool:
    global _current
    with _lock:
        if _current is not None and _current.pid != os.getpid():
            _current.forget()
            _current = None
        if _current is None or _current.size != size:
            if _current is not None:
                _current.shutdown()
            _current = _Pool(size)
        return _current


def shutdown() -> None:
    """Let the idle workers go (they exit on the end of their input); busy ones finish first."""
    global _current
    with _lock:
        pool, _current = _current, None
    if pool is not None and pool.pid == os.getpid():
        pool.shutdown()


def _after_fork_in_child() -> None:
    global _lock, _current
    _lock = threading.Lock()  # another thread may have held it at the fork
    if _current is not None:
        _current.lock = threading.Lock()
        _current.forget()
        _current = None


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)


# --- the worker's side ---------------------------------------------------------------------------


def _render_path(
    *,
    path: str,
    frame: int,
    media_type: str,
    quality: int,
    window: rendering.Window | None,
    viewport: rendering.Viewport | None,
    max_size: int | None,
) -> bytes:
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    with open(path, "rb") as fh:
        try:
            ds = dcmread(fh, stop_before_pixels=True)
        except Exception as exc:
            raise rendering.NoImage(f"the file cannot be read as DICOM: {exc}") from None
        source: Any = fh
        if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            # Offsets inside a deflated data set are not file offsets: read it whole.
            fh.seek(0)
            try:
                ds = dcmread(fh)
            except Exception as exc:
                raise rendering.NoImage(f"the deflated data set cannot be read: {exc}") from None
            source = None
        return rendering.render_frame(
            ds=ds,
            source=source,
            frame=frame,
            media_type=media_type,
            quality=quality,
            window=window,
            viewport=viewport,
            max_size=max_size,
        )


# How a failed allocation reads once a decoder or render_frame has turned it into text:
# Python's and numpy's MemoryError, C++'s std::bad_alloc (GDCM, CharLS), C libraries' own words.
_ALLOCATION_FAILURES = ("MemoryError", "Unable to allocate", "bad_alloc", "out of memory", "Cannot allocate memory")


def _is_allocation_failure(exc: BaseException) -> bool:
    """render_frame reports a failed allocation as an undecodable frame (a NoImage from
    ``except Exception``, its context not always kept): tell it from a corrupt stream."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, MemoryError):
            return True
        seen = seen.__cause__ or seen.__context__
    reason = str(exc)
    return any(words in reason for words in _ALLOCATION_FAILURES)


def _serve(inbox: Connection, outbox: Connection) -> None:
    """The worker's loop: one task at a time until its input ends."""
    import faulthandler
    import pickle
    import resource

    faulthandler.enable()  # a segfault leaves its Python stack in the parent's log (stderr)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # and no core file
    # The parent's terminal ^C, or a gunicorn/celery signal meant for the process group,
    # is for the parent: the worker ends when its input ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Single-threaded numerical libraries: one render per worker, and no per-thread
    # arenas counted against the address-space limit.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    import numpy  # noqa: F401  (imported now, not at the first render's expense)
    import PIL.Image  # noqa: F401
    import pydicom.pixels  # noqa: F401

    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        # Rendering reads a setting or two (never the database: no django.setup()). The
        # worker's settings are those of the environment it inherited, like the parent's.
        from django.conf import settings

        try:
            settings.INSTALLED_APPS  # noqa: B018  (loads the settings module now)
        except Exception:
            logger.exception("the render worker cannot load the Django settings")

    memory = int(os.environ.get("PACS_RENDER_WORKER_MEMORY") or 0)
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    outbox.send("ready")
    while True:
        try:
            message = inbox.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            fn, args, kwargs, cpu_seconds = pickle.loads(message)
        except Exception as exc:  # e.g. the function's module cannot be imported here
            outbox.send(("broken", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            return
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime + cpu_seconds) + 1
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        outcome: tuple
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except rendering.NoImage as exc:
            kind = "memory" if _is_allocation_failure(exc) else "noimage"
            outcome = (kind, exc.message, "")
        except MemoryError as exc:
            outcome = ("memory", f"{type(exc).__name__}: {exc}", "")
        except ValueError as exc:
            outcome = ("valueerror", str(exc), "")
        except Exception as exc:
            outcome = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException
            if isinstance(exc, SystemExit | KeyboardInterrupt):
                raise
            outcome = ("panic", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        try:
            outbox.send(outcome)
        except MemoryError:
            os._exit(3)  # the parent sees a crash: better than a half-sent answer
        if outcome[0] in ("memory", "panic"):
            return  # a worker that failed an allocation or unwound a panic is not trusted again
