"""The benchmarks' template databases: migrated once a test session, copied by each benchmark.

Every benchmark the suite runs (``tests/bench``) creates a database of its own and migrates it,
much of a smoke run's time. With ``BENCH_PG_TEMPLATE`` naming a migrated PostgreSQL database they
create theirs as a copy of it (``CREATE DATABASE ... TEMPLATE``, ``bench/common.py``), and with
``BENCH_SQLITE_TEMPLATE`` naming a migrated SQLite file their SQLite databases start as copies of
it; their own ``migrate`` then has nothing left to do.

The template is made by the first test of the session that asks for it, in whichever xdist
worker that runs, under a file lock in the session's folder (the controller's var folder, which
every worker shares): another worker waits for it, then copies it. A file beside the lock names
it once it is migrated and nobody is connected to it any more (a copy needs that); the session's
own process (the xdist controller, or the only process) drops it at the end
(``tests/env_plugin.py``). Its name, ``smoke_template_<hash of the session folder>``, is
never ``test*`` (pytest-django's) nor ``pacs_bench_*`` (the benchmarks' full-size databases).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
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


# What a benchmark's process (or a template's migration) must not take from the test session:
# its database, broker, audit key (a file this session may not have made yet), var folder, queues.
SESSION_ONLY = (
    "DATABASE_URL",
    "REDIS_URL",
    "PACS_AUDIT_KEY_FILE",
    "PACS_TEST_VAR_DIR",
    "CELERY_QUEUE",
    "CELERY_QUEUE_PREFIX",
)


def environment_without_session() -> dict[str, str]:
    """This process's environment without what belongs to the test session (:data:`SESSION_ONLY`)."""
    return {k: v for k, v in os.environ.items() if k not in SESSION_ONLY}


def _migrate(database_url: str, what: str) -> None:
    """``manage.py migrate`` on ``database_url``, with a var folder and an audit key of its own."""
    with tempfile.TemporaryDirectory(prefix="pacs-bench-template-") as var:
        env = environment_without_session()
        env.update(DATABASE_URL=database_url, PACS_VAR_DIR=var, PACS_AUDIT_KEY_FILE=str(Path(var) / "audit.key"))
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise RuntimeError(f"migrating {what} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


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
        (folder / f"{MARKER}.asked").touch()  # for template_drop, even if this process dies making it
        with admin() as conn:
            # A half-made one, from a worker of this session that died making it.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        _migrate(f"postgres://postgres@{HOST}:{PORT}/{name}", name)
        with admin() as conn:
            # The migration's connections are gone with its process; none may come back (a copy fails
            # while anyone is connected to its template).
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        marker.write_text(name)
        return name


def sqlite_template_ready() -> Path:
    """This session's migrated SQLite database (``BENCH_SQLITE_TEMPLATE``: the benchmarks that run on
    SQLite start from a copy of it), made at the first call; it goes with the session's folder."""
    folder = session_dir()
    path = folder / f"{MARKER}.sqlite3"
    with (folder / f"{MARKER}.sqlite3.lock").open("w") as lock:  # not the other's: both can be made at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        with tempfile.TemporaryDirectory(prefix="pacs-bench-template-db-") as where:
            made = Path(where) / "template.sqlite3"
            _migrate(f"sqlite:///{made}", str(made))
            # One file, whatever the migration left in its write-ahead log; then in place at once.
            partial = folder / f"{MARKER}.sqlite3.partial"
            partial.unlink(missing_ok=True)
            with contextlib.closing(sqlite3.connect(made)) as conn:
                conn.execute("VACUUM INTO ?", [str(partial)])
            partial.chmod(0o600)
            partial.rename(path)
        return path


def template_drop(folder: Path) -> None:
    """Drop the PostgreSQL template of the session whose folder is ``folder``, if a test of it asked
    for one (even one that did not finish making it). The SQLite one goes with the folder."""
    if not (folder / f"{MARKER}.asked").exists():
        return
    try:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{template_name(folder)}" WITH (FORCE)')
    except Exception as exc:  # the session's outcome stands; say what is left behind
        print(f"\ncould not drop the benchmarks' template {template_name(folder)}: {exc}", file=sys.stderr)
        return
    (folder / MARKER).unlink(missing_ok=True)
    (folder / f"{MARKER}.asked").unlink()
