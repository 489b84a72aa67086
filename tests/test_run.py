"""``make run`` stops cleanly on Ctrl-C (issue 17): it ended with ``make: *** Error 143``
and a Celery traceback. The Procfile runs under ``python -m pacs.procfile``
(honcho's manager): SIGTERM to each process, not its group (the Celery worker's
pool is the worker's to stop), SIGKILL only after the grace period, and exit
status 0 for a stop that was asked for."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, wait_until
from tests.dicom_client import send_files

# What the test session sets for its own processes, which the demo must not inherit:
# it keeps its database, broker, audit key and queue in its own var folder.
_SESSION_ONLY = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_QUEUE",
    "CELERY_QUEUE_PREFIX",
    "PACS_AUDIT_KEY_FILE",
    "PACS_TEST_VAR_DIR",
)


def _run(procfile: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = (tmp_path / "run.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "pacs.procfile", "--procfile", str(procfile), *args],
        cwd=REPO,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


def _log(tmp_path: Path) -> str:
    return (tmp_path / "run.log").read_text(errors="replace")


def _interrupt(proc: subprocess.Popen) -> int:
    """Ctrl-C: SIGINT to the foreground process group (the processes themselves are in
    sessions of their own, as honcho starts them)."""
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=90)


@pytest.mark.slow
def test_the_demo_stops_on_ctrl_c_with_status_0_and_no_traceback(tmp_path: Path) -> None:
    var = tmp_path / "var"
    web_port, dicom_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in _SESSION_ONLY}
    # The environment of the Makefile's RUN_ENV, on ports of this test.
    env.update(
        PACS_VAR_DIR=str(var),
        SECURE_COOKIES="0",
        PACS_DICOM_ACCEPT_UNKNOWN_AE="1",
        PACS_DICOM_HOST="127.0.0.1",
        PACS_DICOM_PORT=str(dicom_port),
        WEB_PORT=str(web_port),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        TCP_NODELAY="1",
    )
    for step in (["migrate", "--noinput"], ["load_demo"]):
        done = subprocess.run(
            [sys.executable, "manage.py", *step], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr

    proc = _run(REPO / "Procfile", tmp_path, env=env)
    try:
        ready = {
            "web": re.compile(r"web\.1 +\| .*Listening at"),
            "dicom": re.compile(r"dicom\.1 +\| DICOM listener ready"),
            "worker": re.compile(r"worker\.1 +\| .*celery@\S+ ready\."),
            "beat": re.compile(r"beat\.1 +\| .*beat: Starting"),
        }
        wait_until(
            lambda: proc.poll() is not None or all(p.search(_log(tmp_path)) for p in ready.values()),
            timeout=120,
            what="every process of the Procfile",
        )
        assert proc.poll() is None, _log(tmp_path)
        # Work in hand when the stop comes: a study stored, its post-ingest and previews queued.
        from archive.sample_data import PatientInfo, write_study

        files = write_study(
            tmp_path / "study",
            patient=PatientInfo(patient_id="MRN0001", name="Rossi^Mario", birth_date="19700101", sex="M"),
            series=2,
            instances_per_series=3,
        )
        assert set(send_files(dicom_port, files).statuses.values()) == {0}
        wait_until(lambda: "association from 127.0.0.1:" in _log(tmp_path), what="the association's log line")
        wait_until(lambda: "archive.tasks.study_post_ingest" in _log(tmp_path), timeout=60, what="a task received")

        status = _interrupt(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = _log(tmp_path)
    assert status == 0, log
    assert "Traceback" not in log
    assert "SIGKILL" not in log and "WorkerLostError" not in log and "exited with 'signal" not in log
    for name in ("web", "dicom", "worker", "beat"):
        assert re.search(rf"{name}\.1 stopped \(rc=0\)", log), (name, log)
    assert "all processes stopped" in log
    assert "6 instances stored, 0 failed" in log  # the listener's line for the association


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_and_the_status_says_so(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "polite: exec python3 -c 'import time; time.sleep(600)'\n"
        "stubborn: exec python3 -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'print("up", flush=True); time.sleep(600)\'\n'
    )
    proc = _run(procfile, tmp_path, "--grace", "1")
    wait_until(lambda: "stubborn.1 | up" in _log(tmp_path), what="the processes")
    status = _interrupt(proc)
    log = _log(tmp_path)
    assert status == 128 + signal.SIGKILL, log
    assert "sending SIGKILL to stubborn.1" in log and "all processes stopped" not in log


def test_a_process_that_fails_by_itself_stops_the_others_and_gives_its_status(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "steady: exec sleep 600\nfailing: exec python3 -c 'import sys, time; time.sleep(1); sys.exit(3)'\n"
    )
    proc = _run(procfile, tmp_path)
    assert proc.wait(timeout=60) == 3, _log(tmp_path)
    assert "sending SIGTERM to steady.1" in _log(tmp_path)


def test_make_run_starts_the_procfile_through_it() -> None:
    recipe = subprocess.run(
        ["make", "-n", "run", "PYTHON=true"], cwd=REPO, capture_output=True, text=True, timeout=60
    ).stdout
    assert "-m pacs.procfile --procfile Procfile" in recipe, recipe
    assert "honcho --procfile Procfile start" not in recipe
