"""The database role the README prescribes for the application (PostgreSQL): the
README's own GRANT block applied to a fresh role, which then writes audit events
through the application and cannot change, remove or unguard them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.parse import urlparse

import psycopg
import pytest
from django.db import connection

from kernel.models import AuditEvent
from tests.conftest import REPO, database_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="database roles are PostgreSQL's"),
]


def readme_grants() -> str:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sql\n-- pacs-app-role\n(.*?)```", readme, re.S)
    assert block, "the README lost its role block"
    return block.group(1)


@pytest.fixture
def app_role(process_env: dict[str, str]) -> object:
    role = f"pacs_app_t{os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        (owner,) = cursor.fetchone()
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
        cursor.execute(f"CREATE ROLE {role} LOGIN")
        cursor.execute(readme_grants().replace("pacs_owner", owner).replace("pacs_app", role))
    try:
        yield role
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")
            cursor.execute("GRANT ALL ON SCHEMA public TO PUBLIC")


def test_the_application_role_writes_audit_events_and_cannot_change_them(
    app_role: str, process_env: dict[str, str]
) -> None:
    url = urlparse(database_url())._replace(
        netloc=f"{app_role}@{urlparse(database_url()).hostname}:{urlparse(database_url()).port or 5432}"
    )
    env = {**process_env, "DATABASE_URL": url.geturl()}
    done = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from kernel.audit import audit_record; audit_record(action='test.role', system='pytest', patients=[1])",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert AuditEvent.objects.filter(action="test.role").count() == 1
    refused = [
        "UPDATE archive_auditevent SET action = 'x'",
        "DELETE FROM archive_auditevent",
        "TRUNCATE archive_auditevent CASCADE",
        "DELETE FROM archive_auditeventpatient",
        "DELETE FROM preservation_journalentry",
        "ALTER TABLE archive_auditevent DISABLE TRIGGER USER",
        "DROP TRIGGER archive_auditevent_no_update ON archive_auditevent",
    ]
    with psycopg.connect(url.geturl().replace("postgres://", "postgresql://"), autocommit=True) as conn:
        for sql in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
        # The ordinary tables stay writable: the role runs the application.
        conn.execute("UPDATE archive_patient SET given_name = given_name WHERE false")
    assert AuditEvent.objects.filter(action="test.role").count() == 1
