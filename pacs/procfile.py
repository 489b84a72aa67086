"""Run the Procfile's processes under honcho, and stop them cleanly on Ctrl-C or SIGTERM.

``make run`` used honcho's ``start``, which on Ctrl-C (or SIGTERM) sent
SIGTERM to each process's whole process group, killed with SIGKILL whatever
was still running five seconds later, and exited 130 (143 on SIGTERM), so
make reported ``Error 130``/``Error 143`` for a stop the user asked for:

* the Celery worker's pool processes are in the worker's group: they got the
  SIGTERM directly, in the middle of whatever task they held, and the worker
  logged them as dead ("Process 'ForkPoolWorker-1' exited with 'signal 15
  (SIGTERM)'", a task in hand lost with ``WorkerLostError``'s traceback)
  while its own warm shutdown (about five seconds with the folder broker)
  ran into honcho's SIGKILL;
* honcho's exit status is 128 + the signal whatever the processes did.

Here honcho's manager and printer run the same Procfile, with three changes:
the SIGTERM goes to each process only (every Procfile line ``exec``s its
program, which stops its own children: the worker its pool after the tasks
in hand, gunicorn its workers); SIGKILL comes only after ``--grace`` seconds
(default 30, ``PACS_RUN_STOP_SECONDS``; honcho's five at least), to the whole
group; and the exit
status is 0 when the stop was asked for and every process ended by itself,
else the status of the first that failed (128 + signal for one killed).

Usage: ``python -m pacs.procfile [--procfile Procfile] [--grace SECONDS] [NAME...]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
from pathlib import Path
from typing import Any

from honcho.compat import ProcessManager
from honcho.environ import expand_processes, parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer

# How each process may end once asked to stop: by itself, or by the signal asked.
CLEAN_ENDINGS = frozenset({0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT})


class _ToTheProcess(ProcessManager):  # honcho has no type hints: Any to mypy
    """SIGTERM to the process alone (honcho signals the group); SIGKILL to the group."""

    def terminate(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


class CleanStopManager(Manager):  # honcho has no type hints: Any to mypy
    def __init__(self, printer: Printer, *, grace: float) -> None:
        super().__init__(printer)
        self._procmgr = _ToTheProcess()
        self._grace = dt.timedelta(seconds=grace)
        self._stop_began: dt.datetime | None = None
        self.stop_asked = False

    def terminate(self) -> None:
        if self._stop_began is None:
            self._stop_began = self._clock.now()
            # honcho calls this from its SIGINT/SIGTERM handler, or when a process
            # ended by itself: asked for when none had ended yet.
            self.stop_asked = not self._any_stopped()
        super().terminate()

    def kill(self) -> None:
        # honcho asks from five seconds after the stop on: wait for the grace period.
        if self._stop_began is not None and self._clock.now() - self._stop_began < self._grace:
            return
        super().kill()

    def exit_status(self) -> int:
        """0 for a stop asked for in which every process ended by itself; else the status
        of the first that did not (honcho's: the first to end, when none was asked)."""
        endings = [p.get("returncode") for p in self._processes.values()]
        if self.stop_asked:
            unclean = [code for code in endings if code not in CLEAN_ENDINGS]
            if not unclean:
                self._system_print("all processes stopped\n")
                return 0
            code = unclean[0]
        else:
            code = self.returncode
        if code is None:
            return 1
        return 128 - code if code < 0 else int(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pacs.procfile", description=__doc__.splitlines()[0])
    parser.add_argument("--procfile", default="Procfile", type=Path)
    parser.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("PACS_RUN_STOP_SECONDS", "30")),
        help="seconds the processes have to stop before SIGKILL (default 30, PACS_RUN_STOP_SECONDS)",
    )
    parser.add_argument("names", nargs="*", help="the processes to run (default: all)")
    args = parser.parse_args(argv)
    processes = parse_procfile(args.procfile.read_text()).processes
    unknown = set(args.names) - set(processes)
    if unknown:
        parser.error(f"not in {args.procfile}: {', '.join(sorted(unknown))}")
    if args.names:
        processes = {name: cmd for name, cmd in processes.items() if name in args.names}
    manager = CleanStopManager(Printer(sys.stdout), grace=args.grace)
    for p in expand_processes(processes):
        env: dict[str, Any] = {**os.environ, **p.env}
        manager.add_process(p.name, p.cmd, quiet=p.quiet, env=env)
    manager.loop()
    return manager.exit_status()


if __name__ == "__main__":
    sys.exit(main())
