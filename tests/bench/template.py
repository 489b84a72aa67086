"""The benchmarks' template database: migrated once a test session, copied by each benchmark.

Every PostgreSQL benchmark the suite runs (``tests/bench``) creates a database of its own and
migrates it, most of a smoke run's time. With ``BENCH_PG_TEMPLATE`` naming a migrated database
they create theirs as a copy of it (``CREATE DATABASE ... TEMPLATE``, ``bench/common.py``) and
their own ``migrate`` has nothing left to do.

The template is made by the first test of the session that asks for it, in whichever xdist
worker that runs, under a file lock in the session's folder (the controller's var folder, which
every worker shares): another worker waits for it, then copies it. A file beside the lock names
it once it is migrated and nobody is connected to it any more (a copy needs that); the session's
own process (the xdist controller, or the only process) drops it at the end
(``tests/env_plugin.py``). Its name, ``smoke_template_<hash of the session folder>``, is
never ``test*`` (pytest-django's) nor ``pacs_bench_*`` (the benchmarks' full-size databases).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HOST, PORT = "127.0.0.1", 5432
REPO = Path(__file__).resolve().parents[2]
MARKER = "bench-template"  # in the session's folder: the template's name, once it is ready


def admin() -> Any:
    import psycopg

    return psycopg.connect(host=HOST, port=PORT, user="postgres", dbname="postgres", autocommit=True, connect_timeout=3)


def session_dir() -> Path:
    """The session's folder (the controller's var folder; each xdist worker's is a folder in it)."""
    return Path(os.environ.get("PACS_TEST_SESSION_DIR") or os.environ["PACS_TEST_VAR_DIR"])


def template_name(folder: Path) -> str:
    return "smoke_template_" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]


def template_ready() -> str:
    """The name of this session's template database, made and migrated at the first call."""
    folder = session_dir()
    marker = folder / MARKER
    with (folder / f"{MARKER}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if marker.exists():
            return marker.read_text().strip()
        name = template_name(folder)
        with admin() as conn:
            # A half-made one, from a worker of this session that died making it.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        with tempfile.TemporaryDirectory(prefix="pacs-bench-template-") as var:
            # Not the test session's database, broker, audit key or var folder: the template's own.
            env = {
                k: v
                for k, v in os.environ.items()
                if k
                not in (
                    "DATABASE_URL",
                    "REDIS_URL",
                    "PACS_AUDIT_KEY_FILE",
                    "PACS_TEST_VAR_DIR",
                    "CELERY_QUEUE",
                    "CELERY_QUEUE_PREFIX",
                )
            }
            env.update(
                DATABASE_URL=f"postgres://postgres@{HOST}:{PORT}/{name}",
                PACS_VAR_DIR=var,
                PACS_AUDIT_KEY_FILE=str(Path(var) / "audit.key"),
            )
            done = subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )
        if done.returncode != 0:
            raise RuntimeError(
                f"migrating {name} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        with admin() as conn:
            # The migration's connections are gone with its process; none may come back (a copy fails
            # while anyone is connected to its template).
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        marker.write_text(name)
        return name


def template_drop(folder: Path) -> None:
    """Drop the template of the session whose folder is ``folder``, if a test of it asked for one
    (even one that did not finish making it)."""
    if not (folder / f"{MARKER}.lock").exists():
        return
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{template_name(folder)}" WITH (FORCE)')
    (folder / MARKER).unlink(missing_ok=True)
