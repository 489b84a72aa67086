"""API tokens as ``Authorization: Bearer <key>`` beside ``Token <key>`` (archive.api_tokens).

OHIF and most DICOMweb viewers send RFC 6750's Bearer scheme. It must be the
same credential as ``Token``: the same expiry, the same access policy, the same
audit; and every refusal a 401 that says why, with a challenge naming both
schemes.
"""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from django.test import Client
from django.utils import timezone
from knox.models import AuthToken

from kernel.models import AuditEvent
from kernel.problems import PROBLEM_JSON
from tests.dicomweb_helpers import ApiUser, make_user, token_authenticated
from tests.plan_helpers import plan_buffers, plan_nodes, plan_of

DICOMWEB = "/dicomweb/studies"
API = "/api/studies/"


@pytest.fixture
def radiologist(db: None) -> ApiUser:
    return make_user(
        "radiologa", "archive.view_study", "archive.view_instance", "archive.view_facility", "archive.view_report"
    )


def _get(client: Client, url: str, authorization: str | None):  # type: ignore[no-untyped-def]
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    return client.get(url, HTTP_ACCEPT="application/dicom+json, application/json", **headers)


def _api_problem(response, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == 401, response.content
    assert response["Content-Type"] == PROBLEM_JSON
    body = response.json()
    assert (body["status"], body["code"]) == (401, code), body
    return body


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "Token"])
def test_bearer_is_the_same_token_as_token(client: Client, radiologist: ApiUser, scheme: str) -> None:
    for url in (DICOMWEB, API):
        response = _get(client, url, f"{scheme} {radiologist.token}")
        assert response.status_code == 200, (url, response.content)
    event = AuditEvent.objects.filter(action="dicomweb.search").latest("id")
    assert event.user == radiologist.user and event.outcome == AuditEvent.Outcome.SUCCESS
    # The CUP's API names the class itself (booking.api): authenticated, then its own permissions.
    assert _get(client, "/api/cup/procedures/", f"{scheme} {radiologist.token}").status_code in (200, 403)
    assert _get(client, "/api/cup/procedures/", f"{scheme} nope").status_code == 401


def test_an_expired_bearer_token_is_refused_and_removed(client: Client, radiologist: ApiUser) -> None:
    AuthToken.objects.update(expiry=timezone.now() - dt.timedelta(seconds=1))
    response = _get(client, DICOMWEB, f"Bearer {radiologist.token}")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Token, Bearer error="invalid_token"'
    assert response["Content-Type"] == "application/json"  # DICOMweb keeps PS3.18's {"detail": ...}
    assert "scaduto" in response.json()["detail"]
    assert not AuthToken.objects.exists()  # removed when presented, as with Token
    event = AuditEvent.objects.get(action="dicomweb.search")
    assert event.outcome == AuditEvent.Outcome.DENIED and "scaduto" in event.detail["error"]


def test_an_expired_token_on_the_rest_api_is_a_problem(client: Client, radiologist: ApiUser) -> None:
    AuthToken.objects.update(expiry=timezone.now() - dt.timedelta(seconds=1))
    response = _get(client, API, f"Bearer {radiologist.token}")
    body = _api_problem(response, "token_expired")
    assert "/api/token/" in body["detail"]
    assert response["WWW-Authenticate"] == 'Token, Bearer error="invalid_token"'


def test_an_unknown_token_is_refused_alike_in_both_schemes(client: Client, radiologist: ApiUser) -> None:
    unknown = radiologist.token[:-4] + ("0000" if not radiologist.token.endswith("0000") else "1111")
    bearer = _get(client, API, f"Bearer {unknown}")
    _api_problem(bearer, "token_invalid")
    assert bearer["WWW-Authenticate"] == 'Token, Bearer error="invalid_token"'
    token = _get(client, API, f"Token {unknown}")
    _api_problem(token, "token_invalid")
    assert token["WWW-Authenticate"] == "Token, Bearer"
    # An unknown key does not learn whether a token with its prefix expired.
    AuthToken.objects.update(expiry=timezone.now() - dt.timedelta(seconds=1))
    _api_problem(_get(client, API, f"Bearer {unknown}"), "token_invalid")
    assert AuthToken.objects.exists()  # and does not remove the other's token


@pytest.mark.parametrize(
    ("authorization", "code", "error"),
    [
        ("Bearer", "token_missing", "invalid_request"),
        ("Bearer   ", "token_missing", "invalid_request"),
        ("Bearer one two", "token_malformed", "invalid_request"),
        ("Bearer \xff\xfe", "token_invalid", "invalid_token"),  # not UTF-8 once read as the header's Latin-1
        ("Bearer not-a-token", "token_invalid", "invalid_token"),
    ],
)
def test_malformed_bearer_headers_are_401_with_the_reason(
    client: Client, radiologist: ApiUser, authorization: str, code: str, error: str
) -> None:
    response = _get(client, API, authorization)
    body = _api_problem(response, code)
    assert body["detail"] and body["detail"] != "Internal Server Error"
    assert response["WWW-Authenticate"] == f'Token, Bearer error="{error}"'
    dicomweb = _get(client, DICOMWEB, authorization)
    assert dicomweb.status_code == 401 and dicomweb["WWW-Authenticate"] == response["WWW-Authenticate"]
    assert dicomweb.json()["detail"] == body["detail"]


def test_no_credentials_or_another_scheme_is_challenged_with_both(client: Client, db: None) -> None:
    for authorization in (None, "Basic dXNlcjpwYXNz", ""):
        response = _get(client, API, authorization)
        _api_problem(response, "not_authenticated")
        assert response["WWW-Authenticate"] == "Token, Bearer", authorization
        assert _get(client, DICOMWEB, authorization)["WWW-Authenticate"] == "Token, Bearer"


def test_a_bearer_token_has_its_accounts_permissions_only(client: Client, db: None) -> None:
    nobody = make_user("nessuno-bearer")
    response = _get(client, DICOMWEB, f"Bearer {nobody.token}")
    assert response.status_code == 403
    event = AuditEvent.objects.get(action="dicomweb.search")
    assert event.outcome == AuditEvent.Outcome.DENIED and event.user == nobody.user


def test_delete_revokes_the_bearer_token_sent(client: Client, radiologist: ApiUser) -> None:
    auth = {"HTTP_AUTHORIZATION": f"Bearer {radiologist.token}"}
    assert client.delete("/api/token/", **auth).status_code == 204
    assert not AuthToken.objects.filter(user=radiologist.user).exists()
    _api_problem(_get(client, API, f"Bearer {radiologist.token}"), "token_invalid")


def test_the_openapi_description_names_both_schemes(client: Client, db: None) -> None:
    schema = yaml.safe_load(client.get("/api/schema/").content)
    description = schema["components"]["securitySchemes"]["tokenAuth"]["description"]
    assert "Authorization: Token <key>" in description and "Authorization: Bearer <key>" in description


# --- the permissions a token's request reads with its token (archive.api_tokens) ----------------


def _fresh(user_id: int):  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(pk=user_id)


def _authenticated(user_id: int):  # type: ignore[no-untyped-def]
    """A token's request authenticated as the server does it: the user with its permission cache."""
    return token_authenticated(_fresh(user_id))


def test_a_tokens_permissions_are_its_users_and_its_groups_and_no_others(db: None) -> None:
    from django.contrib.auth.backends import ModelBackend
    from django.contrib.auth.models import Group, Permission
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.exceptions import AuthenticationFailed

    from archive.api_tokens import ApiTokenAuthentication, api_token_issue

    own, of_group, other = (
        Permission.objects.get(content_type__app_label="archive", codename=c)
        for c in ("view_study", "view_instance", "add_instance")
    )
    group = Group.objects.create(name="lettura immagini")
    group.permissions.add(of_group)
    reader = make_user("lettore-permessi").user
    reader.user_permissions.add(own)
    reader.groups.add(group)
    someone = make_user("altro-permessi").user
    someone.user_permissions.add(other)
    someone.groups.add(group)
    key = api_token_issue(user=_fresh(reader.pk)).key
    with CaptureQueriesContext(connection) as queries:
        user, _token = ApiTokenAuthentication().authenticate_credentials(key.encode())
        assert user.has_perm("archive.view_study") and not user.has_perm("archive.add_instance")
    assert len(queries.captured_queries) == 1  # the token, its user and their permissions together
    assert user._perm_cache == {"archive.view_study", "archive.view_instance"}
    assert user._perm_cache == ModelBackend().get_all_permissions(_fresh(reader.pk))
    # A grant taken away holds for the next request (nothing is kept between requests but the SQL).
    reader.groups.remove(group)
    assert _authenticated(reader.pk)._perm_cache == {"archive.view_study"}
    # None at all: an empty set, not ModelBackend's queries.
    reader.user_permissions.remove(own)
    nothing = _authenticated(reader.pk)
    assert nothing._perm_cache == set() and not nothing.has_perm("archive.view_study")
    # A superuser's are ModelBackend's (all of them), as before.
    boss = make_user("capo-permessi").user
    type(boss).objects.filter(pk=boss.pk).update(is_superuser=True)
    assert _authenticated(boss.pk).has_perm("archive.add_instance")
    # Deactivated since the token was issued: refused.
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    with pytest.raises(AuthenticationFailed, match="inattivo"):
        ApiTokenAuthentication().authenticate_credentials(key.encode())


@pytest.mark.django_db
def test_a_tokens_permissions_are_read_from_its_user_whatever_the_region_holds() -> None:
    """A region's staff (here 4,000 accounts, each with 8 grants of its own and in a role group):
    the token's query reads that account's permission rows through the indexes, not every grant
    of every account (Django's ``Q(user=) | Q(group__user=)`` joins did: 9.4 s)."""
    import json

    from django.contrib.auth.models import Group, Permission
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from archive.api_tokens import ApiTokenAuthentication, api_token_issue

    if connection.vendor != "postgresql":
        pytest.skip("the plan is PostgreSQL's")
    role = Group.objects.create(name="radiologi della regione")
    role.permissions.add(*Permission.objects.filter(content_type__app_label="archive")[:8])
    reader = make_user("lettore-regione", "archive.view_study").user
    reader.groups.add(role)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,"
            " is_staff, is_active, date_joined)"
            " SELECT '!', FALSE, 'staff-' || g, '', '', '', FALSE, TRUE, now() FROM generate_series(1, 4000) g"
        )
        cursor.execute(
            "INSERT INTO auth_user_user_permissions (user_id, permission_id)"
            " SELECT u.id, p.id FROM auth_user u, (SELECT id FROM auth_permission ORDER BY id LIMIT 8) p"
            " WHERE u.username LIKE 'staff-%%'"
        )
        cursor.execute(
            "INSERT INTO auth_user_groups (user_id, group_id)"
            " SELECT id, %s FROM auth_user WHERE username LIKE 'staff-%%'",
            [role.pk],
        )
        for table in ("auth_user", "auth_user_user_permissions", "auth_user_groups", "auth_group_permissions"):
            cursor.execute(f"ANALYZE {table}")
    key = api_token_issue(user=_fresh(reader.pk)).key
    with CaptureQueriesContext(connection) as queries:
        user, _token = ApiTokenAuthentication().authenticate_credentials(key.encode())
    assert {"archive.view_study"} < user._perm_cache
    (sql,) = [q["sql"] for q in queries.captured_queries]
    plan = plan_of(sql)
    grants = {"auth_user_user_permissions", "auth_user_groups"}
    # Neither table of grants read whole; no node handles more rows than one account has.
    assert not [n for n in plan_nodes(plan) if n.get("Relation Name") in grants and n["Node Type"] == "Seq Scan"]
    assert max(n["Actual Rows"] * n.get("Actual Loops", 1) for n in plan_nodes(plan)) < 400, json.dumps(plan)[:3000]
    assert plan_buffers(plan) < 100, json.dumps(plan)[:3000]


def test_the_daily_purge_deletes_expired_tokens_and_sessions_only(db: None) -> None:
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session

    from archive.tasks import credentials_purge

    live, old = make_user("ancora-valido"), make_user("scaduto")
    AuthToken.objects.filter(user=old.user).update(expiry=timezone.now() - dt.timedelta(minutes=1))
    fresh = SessionStore()
    fresh["x"] = 1
    fresh.create()
    stale = SessionStore()
    stale["x"] = 2
    stale.create()
    Session.objects.filter(session_key=stale.session_key).update(expire_date=timezone.now() - dt.timedelta(days=1))

    assert credentials_purge.apply().get() == {"tokens": 1}
    assert list(AuthToken.objects.values_list("user__username", flat=True)) == [live.user.username]
    assert list(Session.objects.values_list("session_key", flat=True)) == [fresh.session_key]
    assert credentials_purge.apply().get() == {"tokens": 0}  # nothing more: idempotent
