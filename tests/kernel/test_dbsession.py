"""Every PostgreSQL connection turns JIT compilation off as it opens (kernel.dbsession)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections


def _jit_of_a_new_connection() -> str:
    """``SHOW jit`` on a connection opened in another thread (its own, as a worker's or an association's)."""
    seen: list[str] = []

    def run() -> None:
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SHOW jit")
                seen.append(cursor.fetchone()[0])
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return seen[0]


@pytest.mark.django_db(transaction=True)
def test_every_postgresql_connection_runs_without_jit_unless_told(settings: pytest.FixtureRequest) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's setting")
    with connection.cursor() as cursor:
        # What the server's configuration says (a SET does not change it): "on" unless configured.
        cursor.execute("SELECT reset_val FROM pg_settings WHERE name = 'jit'")
        (server,) = cursor.fetchone()
    assert _jit_of_a_new_connection() == "off"
    settings.DB_JIT = True  # type: ignore[attr-defined]
    assert _jit_of_a_new_connection() == server
