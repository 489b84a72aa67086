"""The REST API beside DICOMweb: tokens, facilities, studies, and its OpenAPI description."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken

from archive.models import Study
from kernel.models import AuditEvent
from tests.dicomweb_helpers import ingest_files, make_user


@pytest.fixture
def staff(db: None):  # type: ignore[no-untyped-def]
    return make_user("radiologo", "archive.view_study", "archive.view_facility", "archive.view_instance")


def test_schema_describes_the_api_and_not_dicomweb(client, db) -> None:
    response = client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    assert {
        "/api/facilities/",
        "/api/facilities/{code}/",
        "/api/studies/",
        "/api/studies/{study_instance_uid}/",
    } <= paths
    assert "/api/token/" in paths
    assert not any(p.startswith("/dicomweb") for p in paths)
    scheme = schema["components"]["securitySchemes"]["tokenAuth"]
    assert "expires" in scheme["description"]
    token = schema["paths"]["/api/token/"]
    assert {"200", "400", "403", "429"} <= set(token["post"]["responses"])
    assert set(token["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1:]) == {
        "Token"
    }
    assert "delete" in token


def test_the_browsable_pages_use_local_assets(client, db) -> None:
    for url in ("/api/schema/swagger/", "/api/schema/redoc/"):
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert "/static/drf_spectacular_sidecar/" in html
        assert "cdn.jsdelivr" not in html and "unpkg.com" not in html


PASSWORD = "una-password-lunga"


def _account(username: str, *perms: str, staff: bool = True):  # type: ignore[no-untyped-def]
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=staff)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return user


def _token(client, username: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post("/api/token/", {"username": username, "password": password})


def test_token_for_username_and_password(client, region) -> None:  # type: ignore[no-untyped-def]
    _account("lettore", "archive.view_facility")
    before = timezone.now()
    response = _token(client, "lettore")
    assert response.status_code == 200
    body = response.json()
    assert len(body["token"]) == 64
    expiry = dt.datetime.fromisoformat(body["expiry"])
    assert before + dt.timedelta(hours=12) <= expiry <= timezone.now() + dt.timedelta(hours=12)
    auth = {"HTTP_AUTHORIZATION": f"Token {body['token']}"}
    assert client.get("/api/facilities/", **auth).status_code == 200
    assert _token(client, "lettore", "sbagliata").status_code == 400


def test_tokens_are_stored_hashed_never_in_clear(client, db) -> None:  # type: ignore[no-untyped-def]
    """DRF's authtoken kept the key itself in a column: any copy of the database held every token."""
    user = _account("lettore", "archive.view_facility")
    key = _token(client, "lettore").json()["token"]
    [stored] = AuthToken.objects.filter(user=user)
    assert stored.digest == hashlib.sha512(key.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {AuthToken._meta.db_table}")  # noqa: S608
        rows = cursor.fetchall()
    assert rows and not any(key in str(value) for row in rows for value in row)
    assert "authtoken_token" not in connection.introspection.table_names()  # the plain tokens are gone


def test_a_token_expires(client, db, settings) -> None:  # type: ignore[no-untyped-def]
    """DRF's tokens never expired."""
    settings.PACS_API_TOKEN_HOURS = 0.5
    _account("lettore", "archive.view_facility")
    body = _token(client, "lettore").json()
    expiry = dt.datetime.fromisoformat(body["expiry"])
    assert expiry <= timezone.now() + dt.timedelta(minutes=30)
    auth = {"HTTP_AUTHORIZATION": f"Token {body['token']}"}
    assert client.get("/api/facilities/", **auth).status_code == 200
    AuthToken.objects.update(expiry=timezone.now() - dt.timedelta(seconds=1))
    response = client.get("/api/facilities/", **auth)
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token, Bearer"
    assert not AuthToken.objects.exists()  # an expired token is removed when it is presented


def test_only_staff_and_service_accounts_get_a_token(client, db) -> None:  # type: ignore[no-untyped-def]
    """Any account, a citizen's included, could ask for a token that never expired."""
    from portal.accounts import citizen_account_create
    from tests.booking.conftest import MARIO_CF

    citizen = citizen_account_create(codice_fiscale=MARIO_CF, password=PASSWORD)
    citizen.user_permissions.add(Permission.objects.get(codename="view_facility"))  # even so
    _account("nessuno")  # staff flag, no permission
    _account("cup-esterno", "booking.view_booking", staff=False)  # a service account

    refused = _token(client, MARIO_CF)
    assert (refused.status_code, refused.json()["code"]) == (403, "citizen")
    refused = _token(client, "nessuno")
    assert (refused.status_code, refused.json()["code"]) == (403, "no_permission")
    assert not AuthToken.objects.filter(user__username__in=[MARIO_CF, "nessuno"]).exists()
    assert _token(client, "cup-esterno").status_code == 200


def test_a_token_is_revoked_by_its_client(client, db) -> None:  # type: ignore[no-untyped-def]
    _account("lettore", "archive.view_facility")
    auth = {"HTTP_AUTHORIZATION": f"Token {_token(client, 'lettore').json()['token']}"}
    other = {"HTTP_AUTHORIZATION": f"Token {_token(client, 'lettore').json()['token']}"}
    assert client.delete("/api/token/", **auth).status_code == 204
    assert client.get("/api/facilities/", **auth).status_code == 401
    assert client.get("/api/facilities/", **other).status_code == 200  # the account's other clients stay
    assert client.delete("/api/token/").status_code == 401


def test_an_account_keeps_a_bounded_number_of_tokens(client, db, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_API_TOKENS_PER_USER = 3
    _account("lettore", "archive.view_facility")
    keys = [_token(client, "lettore").json()["token"] for _ in range(5)]
    assert AuthToken.objects.count() == 3
    assert client.get("/api/facilities/", HTTP_AUTHORIZATION=f"Token {keys[0]}").status_code == 401
    assert client.get("/api/facilities/", HTTP_AUTHORIZATION=f"Token {keys[-1]}").status_code == 200


def test_wrong_passwords_for_a_token_count_towards_the_lockout(client, db, settings) -> None:  # type: ignore[no-untyped-def]
    _account("lettore", "archive.view_facility")
    answers = [_token(client, "lettore", "sbagliata").status_code for _ in range(settings.AXES_FAILURE_LIMIT)]
    assert answers == [400] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
    locked = _token(client, "lettore")  # the right password too, now
    assert (locked.status_code, locked.json()["code"]) == (429, "locked_out")


def test_a_token_that_is_not_utf8_is_refused_not_an_error(client, db) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/facilities/", HTTP_AUTHORIZATION="Token \xff\xfe\xfd")
    assert response.status_code == 401


def test_facilities(client, region, staff) -> None:
    response = client.get("/api/facilities/", HTTP_AUTHORIZATION=f"Token {staff.token}")
    assert response.status_code == 200
    codes = [f["code"] for f in response.json()]
    assert codes == ["GO-SG", "TS-CAT"]
    detail = client.get("/api/facilities/TS-CAT/", HTTP_AUTHORIZATION=f"Token {staff.token}").json()
    assert detail["authority"] == "ASUGI" and detail["dicomweb_url"] == "http://testserver/dicomweb/TS-CAT"
    assert client.get("/api/facilities/NOPE/", HTTP_AUTHORIZATION=f"Token {staff.token}").status_code == 404


def test_studies_are_listed_filtered_and_audited(client, region, staff, ct_study: list[Path]) -> None:
    ingest_files(ct_study, region.facility)
    auth = {"HTTP_AUTHORIZATION": f"Token {staff.token}"}
    response = client.get("/api/studies/", {"patient_id": "MRN0001"}, **auth)
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    (study,) = body["results"]
    uid = Study.objects.get().study_instance_uid
    assert study["study_instance_uid"] == uid and study["number_of_instances"] == 6
    assert study["modalities"] == ["CT"] and study["facility"] == "TS-CAT"
    assert study["retrieve_url"] == f"http://testserver/dicomweb/studies/{uid}"
    assert client.get("/api/studies/", {"facility": "GO-SG"}, **auth).json()["count"] == 0
    detail = client.get(f"/api/studies/{uid}/", **auth)
    assert detail.status_code == 200 and detail.json()["accession_number"] == "ACC1"
    events = list(AuditEvent.objects.order_by("id").values_list("action", "study__study_instance_uid"))
    assert events == [("api.studies", None), ("api.studies", None), ("api.study", uid)]


def test_studies_need_authentication_and_permission(client, region) -> None:
    assert client.get("/api/studies/").status_code in (401, 403)
    nobody = make_user("nessuno")
    response = client.get("/api/studies/", HTTP_AUTHORIZATION=f"Token {nobody.token}")
    assert response.status_code == 403


def test_the_admin_lists_and_revokes_tokens_but_cannot_make_one(client, db) -> None:  # type: ignore[no-untyped-def]
    """django-rest-knox's own admin makes a token for any account, never expiring if left blank."""
    from django.contrib.admin.utils import quote
    from django.urls import reverse

    _account("lettore", "archive.view_facility")
    key = _token(client, "lettore").json()["token"]
    client.force_login(get_user_model().objects.create_superuser("amministratore", password=PASSWORD))
    assert client.get("/admin/knox/authtoken/add/").status_code == 403
    listing = client.get("/admin/knox/authtoken/").content.decode()
    assert f"{key[:8]}…" in listing and key not in listing
    digest = AuthToken.objects.get().digest
    response = client.post(reverse("admin:knox_authtoken_delete", args=[quote(digest)]), {"post": "yes"})
    assert response.status_code == 302 and not AuthToken.objects.exists()


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"offset": "99999999999999999999999"}, "offset", "offset deve essere tra 0 e 1000000."),
        ({"offset": str(2**63)}, "offset", "tra 0 e 1000000"),
        ({"offset": "1000001"}, "offset", "tra 0 e 1000000"),
        ({"offset": "-1"}, "offset", "tra 0 e 1000000"),
        ({"offset": "molti"}, "offset", "offset deve essere un numero intero."),
        ({"offset": "1_0"}, "offset", "numero intero"),
        ({"limit": "0"}, "limit", "limit deve essere tra 1 e 1000."),
        ({"limit": "-3"}, "limit", "tra 1 e 1000"),
        ({"limit": "1001"}, "limit", "tra 1 e 1000"),
        ({"limit": "9" * 5000}, "limit", "tra 1 e 1000"),
        ({"limit": "dieci"}, "limit", "numero intero"),
    ],
)
def test_studies_page_out_of_range_is_400(client, region, staff, params, field, message) -> None:  # type: ignore[no-untyped-def]
    # A huge offset answered 500; a negative one or a bad limit silently became the default.
    response = client.get("/api/studies/", params, HTTP_AUTHORIZATION=f"Token {staff.token}")
    assert response.status_code == 400
    # A problem (kernel.problems): the first error's field and message, and every field's errors.
    problem = response.json()
    assert problem["field"] == field and message in problem["detail"]
    assert message in problem["errors"][field][0]


def test_studies_pages_within_range(client, region, staff, ct_study: list[Path], settings) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    auth = {"HTTP_AUTHORIZATION": f"Token {staff.token}"}
    body = client.get("/api/studies/", {"limit": "1000", "offset": "0"}, **auth).json()
    assert body["count"] == 1 and len(body["results"]) == 1
    body = client.get("/api/studies/", {"limit": "1", "offset": "1000000"}, **auth).json()
    assert body["count"] == 1 and body["results"] == []
    settings.PACS_QUERY_MAX_OFFSET = 10
    assert client.get("/api/studies/", {"offset": "11"}, **auth).status_code == 400
