"""A pytest plugin loaded with -p, before pytest-django reads the settings:
give the test session its own var folder and Celery queue."""

from __future__ import annotations

import os
import tempfile

if "PACS_TEST_VAR_DIR" not in os.environ:
    os.environ["PACS_TEST_VAR_DIR"] = tempfile.mkdtemp(prefix="pacs-test-")
os.environ["PACS_VAR_DIR"] = os.environ["PACS_TEST_VAR_DIR"]
# The session's audit key, named as production names it (generated there, 0600,
# on first use: it lies under PACS_VAR_DIR); the processes tests start share it.
os.environ.setdefault("PACS_AUDIT_KEY_FILE", os.path.join(os.environ["PACS_TEST_VAR_DIR"], "audit.key"))
# Tests run their own Celery queue, so that nothing a previous run left in a
# shared broker is consumed by this run's worker.
os.environ.setdefault("CELERY_QUEUE", f"pacs-test-{os.getpid()}")
os.environ.setdefault("CELERY_QUEUE_PREFIX", os.environ["CELERY_QUEUE"] + ".")

# The session's folder, the same in every xdist worker (tests/bench/template.py keeps a lock there).
os.environ.setdefault("PACS_TEST_SESSION_DIR", os.environ["PACS_TEST_VAR_DIR"])

# Under pytest-xdist (make test runs the suite in several processes) each worker inherits the
# values above from the controller; it needs its own: a var folder (media, tiers, the audit key),
# Celery queues, and a Redis database, since a test's cache.clear() flushes its whole database,
# broker messages included. pytest-django gives each its own test database (test_test_gw0, ...).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker and os.environ.get("PACS_TEST_WORKER") != _worker:
    os.environ["PACS_TEST_WORKER"] = _worker
    _index = int(_worker.removeprefix("gw"))
    _var = os.path.join(os.environ["PACS_TEST_VAR_DIR"], _worker)
    os.makedirs(_var, exist_ok=True)
    os.environ["PACS_TEST_VAR_DIR"] = os.environ["PACS_VAR_DIR"] = _var
    os.environ["PACS_AUDIT_KEY_FILE"] = os.path.join(_var, "audit.key")
    os.environ["CELERY_QUEUE"] = f"{os.environ['CELERY_QUEUE']}-{_worker}"
    os.environ["CELERY_QUEUE_PREFIX"] = os.environ["CELERY_QUEUE"] + "."
    if os.environ.get("REDIS_URL"):
        # Redis databases 8-15, one a worker (0 is the serial run's; other tests name 5 and 13).
        if _index >= 8:
            raise RuntimeError("at most 8 xdist workers: each needs a Redis database of its own (8-15)")
        from urllib.parse import urlsplit

        os.environ["REDIS_URL"] = urlsplit(os.environ["REDIS_URL"])._replace(path=f"/{8 + _index}").geturl()


def pytest_unconfigure(config: object) -> None:
    import shutil

    path = os.environ.get("PACS_TEST_VAR_DIR", "")
    if not os.environ.get("PACS_TEST_WORKER") and path:
        # The session's own process (the xdist controller, or the only one): the benchmarks' template
        # database, if a test made one (in any worker), goes with the session.
        from pathlib import Path

        from tests.bench.template import template_drop

        template_drop(Path(path))
    if path.startswith(tempfile.gettempdir()) and "pacs-test-" in path and not os.environ.get("PACS_KEEP_TEST_VAR"):
        shutil.rmtree(path, ignore_errors=True)
