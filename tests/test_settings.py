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
from tests.conftest import REPO, assert_private

# The production environment of the README ("Production configuration"), less
# the database and Redis (SQLite and folders here: check --deploy needs no server).
PRODUCTION_ENV = {
    "DEBUG": "0",
    "ALLOWED_HOSTS": "pacs.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://pacs.example.org",
    "PACS_PUBLIC_URL": "https://pacs.example.org",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "PACS_TRUSTED_PROXIES": "10.0.0.5",
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SECURE_COOKIES": "1",
}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PACS_", "DATABASE_URL", "REDIS_URL"))}
    env.pop("SECRET_KEY", None)
    # Set at import time by the browser tests (Playwright's event loop), never in production.
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
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
    assert (var / "pacs.sqlite3").is_file() and (var / "secret_key").is_file()
    assert stat.S_IMODE((var / "pacs.sqlite3").stat().st_mode) == 0o600
    assert_private(var)  # var/ itself, the database, the key, cache, broker, incoming, tiers...


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


def _production(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The production environment, its secrets mounted as files outside PACS_VAR_DIR."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "pacs-secret-key").write_text(os.urandom(40).hex())
    (secrets / "pacs-audit-key").write_text(os.urandom(32).hex())
    for path in secrets.iterdir():
        path.chmod(0o400)
    return _clean_env(
        PACS_VAR_DIR=str(tmp_path / "var"),
        SECRET_KEY_FILE=str(secrets / "pacs-secret-key"),
        PACS_AUDIT_KEY_FILE=str(secrets / "pacs-audit-key"),
        **PRODUCTION_ENV,
        **extra,
    )


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_under_the_production_environment(tmp_path: Path) -> None:
    """There were no settings for HSTS, the SSL redirect or the proxy header: whatever the
    environment, check --deploy warned (security.W004, W008...)."""
    done = _manage(_production(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_check_deploy_names_what_a_checkout_lacks_for_production(tmp_path: Path) -> None:
    done = _manage(_clean_env(PACS_VAR_DIR=str(tmp_path / "var")), "check", "--deploy")
    for check in ("security.W004", "security.W008"):  # HSTS, SSL redirect
        assert check in done.stderr + done.stdout, check


def test_the_production_answers_carry_hsts_csp_and_secure_cookies(tmp_path: Path) -> None:
    script = """
import django
django.setup()
from django.test import Client
c = Client(HTTP_HOST="pacs.example.org")
plain = c.get("/accounts/login/")
print("plain", plain.status_code, plain["Location"])
tls = c.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
print("tls", tls.status_code)
print("hsts", tls["Strict-Transport-Security"])
print("csp", tls["Content-Security-Policy"])
print("cookie", tls.cookies["csrftoken"]["secure"])
"""
    env = _production(tmp_path, DJANGO_SETTINGS_MODULE="pacs.settings")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert lines["plain"] == "301 https://pacs.example.org/accounts/login/"
    assert lines["tls"] == "200"
    assert lines["hsts"] == "max-age=31536000; includeSubDomains; preload"
    directives = dict(d.strip().split(" ", 1) for d in lines["csp"].split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert lines["cookie"] == "True"


def test_a_proxy_ssl_header_that_is_not_a_header_name_is_refused(tmp_path: Path) -> None:
    env = {**_production(tmp_path), "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https"}
    done = _manage(env, "check")
    assert done.returncode != 0 and "is not a header name" in done.stderr


@pytest.mark.parametrize(("threshold", "expected"), [(None, "True 2"), ("0", "None None"), ("5", "True 5")])
def test_postgresql_binds_on_the_server_and_prepares_unless_told_not_to(
    tmp_path: Path, threshold: str | None, expected: str
) -> None:
    env = _clean_env(PACS_VAR_DIR=str(tmp_path / "var"), DATABASE_URL="postgres://pacs@db.example.org:5432/pacs")
    if threshold is not None:
        env["DB_PREPARE_THRESHOLD"] = threshold
    else:
        env.pop("DB_PREPARE_THRESHOLD", None)
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "o = settings.DATABASES['default'].get('OPTIONS', {}); "
        "print(o.get('server_side_binding'), o.get('prepare_threshold'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**env, "DJANGO_SETTINGS_MODULE": "pacs.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == expected
