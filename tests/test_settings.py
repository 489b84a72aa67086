"""Start-up configuration: who may read what the archive writes, and the production
environment under which ``manage.py check --deploy`` is clean."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings

from archive.checks import check_private_folders
from tests.conftest import REPO


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PACS_", "DATABASE_URL", "REDIS_URL"))}
    env.pop("SECRET_KEY", None)
    env.update(extra)
    return env


@pytest.mark.slow
def test_a_fresh_installation_writes_for_the_service_account_only(tmp_path: Path) -> None:
    """Under the usual umask 022 the database, the secret key and var/ were readable by everyone."""
    var = tmp_path / "var"
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=REPO,
        env=_clean_env(PACS_VAR_DIR=str(var)),
        umask=0o022,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [var, *var.iterdir()]}
    assert modes.pop("pacs.sqlite3") == 0o600
    assert modes.pop("secret_key") == 0o600
    assert modes == dict.fromkeys(modes, 0o700)  # var/ itself, cache, broker, incoming, tiers...


def test_a_umask_that_lets_others_read_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import pacs.settings"],
        cwd=REPO,
        env=_clean_env(PACS_VAR_DIR=str(tmp_path / "var"), PACS_UMASK="022"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "PACS_UMASK='022' must keep other users out" in done.stderr


def test_a_folder_others_can_enter_is_a_warning(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    with override_settings(VAR_DIR=var):
        warnings = check_private_folders(None)
    assert [(w.id, w.msg) for w in warnings] == [
        ("archive.W010", f"PACS_VAR_DIR={var} has mode 0755: other accounts can enter it.")
    ]
    var.chmod(0o700)
    with override_settings(VAR_DIR=var):
        assert check_private_folders(None) == []
