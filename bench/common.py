"""Helpers the benchmarks share: the servers' environment, a download measured against the floor of reading the same
stored files, their eviction from the page cache, the gunicorn workers' resident
memory around one request, and CPU time read from ``/proc``.

Used by ``bench/retrieve/run.py`` (WADO-RS retrieve), ``bench/portal/zip_memory.py``
(the portal's ZIP download), ``bench/portal/run.py`` and ``bench/ingest/run.py`` (CPU); the
template of the PostgreSQL databases the benchmarks create (:func:`database_template`) and of
their SQLite ones (:func:`sqlite_from_template`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def server_env(database_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of the servers a benchmark starts, set in this process too (Django set up
    here reads the same): its database, its own var folder, quiet logs, no DEBUG, no Redis
    (``REDIS_URL`` removed: no broker), and ``extra``."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PACS_VAR_DIR": str(var_dir),
        "LOG_LEVEL": "WARNING",
        "DEBUG": "0",
        **extra,
    }
    env.pop("REDIS_URL", None)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "PACS_VAR_DIR", "LOG_LEVEL", "DEBUG", *extra)})
    os.environ.pop("REDIS_URL", None)
    return env


def database_template() -> str | None:
    """``BENCH_PG_TEMPLATE``: a migrated PostgreSQL database that a benchmark's new database is copied from
    (``CREATE DATABASE ... TEMPLATE``, seconds) instead of created empty, or None. The test suite's, migrated
    once a session (``tests/bench/template.py``); the benchmark migrates its copy all the same (nothing to
    do unless the checkout has a newer migration). Nobody may be connected to the template while it is copied."""
    return os.environ.get("BENCH_PG_TEMPLATE") or None


def sqlite_from_template(path: Path) -> None:
    """When ``BENCH_SQLITE_TEMPLATE`` names a migrated SQLite database and ``path`` does not exist yet,
    ``path`` starts as a copy of it (0600) instead of empty: the test suite's, migrated once a session
    (``tests/bench/template.py``). The benchmark migrates its copy all the same."""
    import shutil

    template = os.environ.get("BENCH_SQLITE_TEMPLATE")
    if not template or path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    path.chmod(0o600)


def floor_read(files: list[Path]) -> tuple[float, int]:
    """Read every file whole, in 1 MiB chunks, and discard it (cat > /dev/null)."""
    start = time.perf_counter()
    total = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return time.perf_counter() - start, total


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssWatch:
    """The gunicorn workers' resident memory around one request.

    The kernel's peak (VmHWM) is reset first (``clear_refs`` 5), so the peak
    read afterwards is the request's; VmRSS is also sampled every 2 ms.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before = {pid: status_kib(pid, "VmRSS") for pid in pids}
        self.hwm_reset = True
        for pid in pids:
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                self.hwm_reset = False
        self.sampled = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            for pid in self.pids:
                self.sampled[pid] = max(self.sampled[pid], status_kib(pid, "VmRSS"))

    def stop(self) -> tuple[int, int]:
        """(peak KiB, growth KiB over the RSS before) of the worker that grew most."""
        self._stop.set()
        self._thread.join()
        best = (0, -1)
        for pid in self.pids:
            peak = max(self.sampled[pid], status_kib(pid, "VmHWM") if self.hwm_reset else 0)
            growth = peak - self.before[pid]
            if growth > best[1]:
                best = (peak, growth)
        return best


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache (clean pages only; no root needed)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@dataclass
class Download:
    """One download's best of several rounds against its floor (this process reading the
    same files whole), and the serving workers' resident memory during it."""

    seconds: float = float("inf")  # the best download
    floor: float = float("inf")  # the best read of the files
    body: int = 0  # bytes of the last download
    peak_kib: int = 0
    growth_kib: int = 0
    error: str = ""  # the download's failure: no later round

    def round(
        self,
        files: list[Path],
        *,
        cold: bool,
        workers: list[int],
        download: Callable[[], tuple[float, int]],
        size: int | None = None,
    ) -> None:
        """The floor, then ``download`` (seconds, body bytes) watched by ``RssWatch(workers)``;
        cold: the files' pages evicted before each. A failed download is kept in ``error``;
        a floor that did not read ``size`` bytes raises."""
        if self.error:
            return
        if cold:
            evict(files)
        seconds, read = floor_read(files)
        if size is not None and read != size:
            raise RuntimeError(f"the floor read {read} bytes of {size}")
        self.floor = min(self.floor, seconds)
        if cold:
            evict(files)
        watch = RssWatch(workers)
        try:
            seconds, self.body = download()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        finally:
            peak, growth = watch.stop()
        self.seconds = min(self.seconds, seconds)
        self.peak_kib, self.growth_kib = max(self.peak_kib, peak), max(self.growth_kib, growth)


# --- CPU time from /proc ---------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_ticks(pid: int) -> int:
    """User + system CPU of one process so far, in clock ticks (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def machine_busy_ticks() -> int:
    """Clock ticks every core of the machine has been busy so far (``/proc/stat``: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle
