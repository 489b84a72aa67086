"""gunicorn's configuration for the web processes (``gunicorn -c python:pacs.gunicorn_conf``).

It makes ``/metrics`` one figure for the whole gunicorn, not one per worker.
Each worker is a process with its own request counters. A scrape reaches
whichever worker accepts it, so without this the counters jump between the
workers' values and Prometheus reads every jump as a counter reset.

prometheus_client's multiprocess mode fixes that:

- Every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``.
- ``/metrics`` (:mod:`pacs.ops.metrics`) adds the files up.

This configuration does three things:

- It sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers are forked. The
  workers import prometheus_client after the fork, so the setting reaches them.
  When the environment gives no folder (``make run``, a bench), a private
  temporary one is made and removed when gunicorn exits. The systemd unit gives
  ``/run/pacs-web``.
- It empties the folder when gunicorn starts (not when a HUP reloads it), so
  counters of an earlier run do not come back.
- It marks a worker dead when it exits, so its live gauges go. Its counters stay
  in the sum: a worker recycled or killed does not make the totals go backwards.

The options given on the command line (bind, workers, threads) still apply.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _directory() -> Path:
    """The metrics folder from the environment, or a private temporary one made now."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path
    made = Path(tempfile.mkdtemp(prefix="pacs-web-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(made)
    atexit.register(shutil.rmtree, made, True)
    return made


def _empty(path: Path) -> None:
    for entry in path.iterdir():
        if entry.is_file() and entry.suffix == ".db":
            entry.unlink(missing_ok=True)


# Read when gunicorn loads this file, in the master, before any worker exists (and again on a HUP).
_DIRECTORY = _directory()


def on_starting(server: Any) -> None:
    """The master starts (not on a HUP's reload): the values of an earlier run go."""
    _empty(_DIRECTORY)


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended (recycled, killed, crashed): drop its live gauges, keep its counters."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
