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


def pytest_unconfigure(config: object) -> None:
    import shutil

    path = os.environ.get("PACS_TEST_VAR_DIR", "")
    if path.startswith(tempfile.gettempdir()) and "pacs-test-" in path and not os.environ.get("PACS_KEEP_TEST_VAR"):
        shutil.rmtree(path, ignore_errors=True)
