"""What one on-demand ``/rendered`` request costs the web process around the render: its SQL
statements (counted, so that a change adding one fails here) and its CPU time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests import dicomweb_helpers as helpers
from tests.dicomweb_helpers import ingest_files, uids

reader = helpers.reader


@pytest.fixture
def stored(region, ct_study: list[Path]) -> list[Path]:
    ingest_files(ct_study, region.facility)
    return ct_study


def _instance_url(path: Path) -> str:
    study, series, sop = uids(path)
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


# What an instance's /rendered reads and writes, once each: the token with its user, the user's
# permissions and what the principal needs (citizen? staff profile? an emergency access?: the
# patients of emergency accesses are read only for those who hold one), the instance with its study
# under the access policy (and whether a stored rendition matches) and its copies, the audit row.
EXPECTED = [
    "knox_authtoken",
    "archive_instance",
    'INSERT INTO "archive_auditevent"',
]
TOKEN, INSTANCE = 0, 1


def test_rendered_instance_statements(client, stored, reader) -> None:
    url = _instance_url(stored[0]) + "/rendered"
    assert client.get(url, **reader.auth).status_code == 200  # warm: worker started, caches filled
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, **reader.auth)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    statements = [q["sql"] for q in queries.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
    if os.environ.get("PACS_RENDERED_COST"):  # figures for the README: PACS_RENDERED_COST=<requests>
        cpu = []
        for _ in range(int(os.environ["PACS_RENDERED_COST"])):
            start = time.process_time()
            client.get(url, **reader.auth)
            cpu.append(time.process_time() - start)
        cpu.sort()
        print(
            f"\nstatements: {len(statements)}; CPU best {cpu[0] * 1000:.2f} ms, median {cpu[len(cpu) // 2] * 1000:.2f} ms"
        )
    assert len(statements) == len(EXPECTED), statements
    for sql, table in zip(statements, EXPECTED, strict=True):
        assert table in sql, (table, sql)
    assert "auth_permission" in statements[TOKEN]  # read with the token, no query of their own
    # Who the user is for the access policy, asked with the token too.
    assert "portal_citizenaccount" in statements[TOKEN] and "portal_emergencyaccess" in statements[TOKEN]
    assert "archive_copy" in statements[INSTANCE]  # the copies come with the instance
    # The default parameters may match a stored preview: the instance's query asks (no query of its own).
    assert "archive_rendition" in statements[INSTANCE]
    # Other parameters or frames cannot match one: not asked at all; a thumbnail can, and is asked.
    for suffix, asked in (("?quality=50", False), ("?viewport=64,64", False), ("", True)):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url + suffix, **reader.auth).status_code == 200
        assert len(queries.captured_queries) == len(EXPECTED)
        assert ("archive_rendition" in queries.captured_queries[INSTANCE]["sql"]) is asked, suffix
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url.replace("/rendered", "/thumbnail"), **reader.auth).status_code == 200
    assert len(queries.captured_queries) == len(EXPECTED)
    assert "archive_rendition" in queries.captured_queries[INSTANCE]["sql"]
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url.replace("/rendered", "/frames/2/rendered"), **reader.auth).status_code == 400
    assert not any("archive_rendition" in q["sql"] for q in queries.captured_queries)


def test_the_copies_that_come_with_the_instance_are_its_rows(stored) -> None:  # type: ignore[no-untyped-def]
    """``retrieve.copies_annotation``: the instance's copies as JSON in its own query, made into
    the models a prefetch makes (every column, the moments aware), on SQLite and PostgreSQL."""
    import datetime as dt

    from django.forms.models import model_to_dict
    from django.utils import timezone

    from archive.models import Copy, Instance
    from archive.storage import lifecycle, retrieve

    instance = Instance.objects.get(sop_instance_uid=uids(stored[0])[2])
    assert lifecycle.instance_migrate(instance_pk=instance.pk)
    Copy.objects.filter(instance=instance, tier__startswith="facility:").update(
        keep_until=timezone.now() + dt.timedelta(days=3, microseconds=17)
    )
    annotated = Instance.objects.annotate(**{retrieve.COPIES: retrieve.copies_annotation()}).get(pk=instance.pk)
    retrieve.copies_from_annotation(annotated)
    with CaptureQueriesContext(connection) as queries:
        got = list(annotated.copies.all())
    assert not queries.captured_queries  # the prefetch cache, as instances_with_copies leaves it
    expected = list(Copy.objects.filter(instance=instance).order_by("pk"))
    assert len(expected) == 2
    assert [model_to_dict(c) | {"id": c.pk, "created_at": c.created_at} for c in got] == [
        model_to_dict(c) | {"id": c.pk, "created_at": c.created_at} for c in expected
    ]
    assert all(c.verified_at.tzinfo is not None and not c._state.adding for c in got)
    assert [c.tier for c in retrieve.copies_nearest_first(annotated)] == [
        c.tier
        for c in retrieve.copies_nearest_first(retrieve.instances_with_copies(Instance.objects).get(pk=instance.pk))
    ]
    # An instance without copies (never the case once stored; the query must still answer).
    Copy.objects.filter(instance=instance).delete()
    bare = Instance.objects.annotate(**{retrieve.COPIES: retrieve.copies_annotation()}).get(pk=instance.pk)
    retrieve.copies_from_annotation(bare)
    assert list(bare.copies.all()) == []


def test_no_free_render_worker_answers_503_after_a_render_s_timeout(client, stored, reader, settings) -> None:
    """Every render worker busy for longer than a render may take: 503 with Retry-After
    (audited as a failure), not a request that waits for ever; then served again."""
    import time as clock

    from kernel.models import AuditEvent
    from tests.conftest import render_workers_busy

    url = _instance_url(stored[0]) + "/rendered"
    settings.PACS_RENDER_WORKERS = 1
    settings.PACS_RENDER_TIMEOUT = 0.5
    with render_workers_busy(2.5):
        started = clock.monotonic()
        response = client.get(url, **reader.auth)
        assert 0.5 <= clock.monotonic() - started < 2.4
        assert response.status_code == 503 and response["Retry-After"]
        assert "cannot be rendered now: no render worker free" in response.json()["detail"]
        event = AuditEvent.objects.order_by("-id").first()
        assert event is not None and event.outcome == AuditEvent.Outcome.FAILURE
    assert client.get(url, **reader.auth).status_code == 200


def test_a_change_of_what_the_user_may_see_holds_for_the_next_request(client, stored, reader, settings) -> None:
    """The token's, the principal's and the instance's queries are compiled once per process
    (kernel.querycache), never their answers: a study concealed, an emergency access given or
    ended, a permission or a token revoked hold for the very next request."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from knox.models import AuthToken

    from archive.models import Study
    from portal.emergency import emergency_access_grant
    from portal.oscuramento import conceal

    url = _instance_url(stored[0]) + "/rendered"
    assert client.get(url, **reader.auth).status_code == 200
    study = Study.objects.select_related("patient").get(study_instance_uid=uids(stored[0])[0])
    conceal(patient=study.patient, study=study)
    assert client.get(url, **reader.auth).status_code == 404  # as a study that is not there
    # An emergency access for the patient opens it, for as long as it lasts.
    user = get_user_model().objects.get(pk=reader.user.pk)  # type: ignore[attr-defined]
    user.user_permissions.add(Permission.objects.get(content_type__app_label="portal", codename="emergency_access"))
    user = get_user_model().objects.get(pk=user.pk)  # a fresh permission cache
    settings.PACS_EMERGENCY_ACCESS_MINUTES = 30
    emergency_access_grant(user=user, patient=study.patient, reason="paziente in pronto soccorso, incosciente")
    assert client.get(url, **reader.auth).status_code == 200
    settings.PACS_EMERGENCY_ACCESS_MINUTES = 0  # ended (no row changes: the window moved)
    assert client.get(url, **reader.auth).status_code == 404
    settings.PACS_EMERGENCY_ACCESS_MINUTES = 30
    assert client.get(url, **reader.auth).status_code == 200
    # The permission to read images revoked: refused.
    user.user_permissions.remove(Permission.objects.get(content_type__app_label="archive", codename="view_instance"))
    assert client.get(url, **reader.auth).status_code == 403
    user.user_permissions.add(Permission.objects.get(content_type__app_label="archive", codename="view_instance"))
    assert client.get(url, **reader.auth).status_code == 200
    # The token revoked: not known any more.
    AuthToken.objects.filter(user=user).delete()
    assert client.get(url, **reader.auth).status_code == 401


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")
def test_on_postgresql_the_hot_statements_are_prepared_once_per_connection(client, stored, reader) -> None:
    """DB_PREPARE_THRESHOLD (pacs.settings): the policy's query for an instance costs more to
    plan than to run; from its second run on a connection, PostgreSQL runs the plan it kept."""
    url = _instance_url(stored[0]) + "/rendered"
    for _ in range(3):
        assert client.get(url, **reader.auth).status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any('FROM "archive_instance"' in s and '"archive_study"' in s for s in prepared), prepared
    assert any('FROM "knox_authtoken"' in s for s in prepared), prepared
