"""The REST API beside DICOMweb: tokens, facilities, studies, and its OpenAPI description."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from django.contrib.auth import get_user_model

from archive.models import AuditEvent, Study
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
    assert "tokenAuth" in schema["components"]["securitySchemes"]


def test_the_browsable_pages_use_local_assets(client, db) -> None:
    for url in ("/api/schema/swagger/", "/api/schema/redoc/"):
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert "/static/drf_spectacular_sidecar/" in html
        assert "cdn.jsdelivr" not in html and "unpkg.com" not in html


def test_token_for_username_and_password(client, db) -> None:
    get_user_model().objects.create_user(username="lettore", password="una-password-lunga")
    response = client.post("/api/token/", {"username": "lettore", "password": "una-password-lunga"})
    assert response.status_code == 200 and len(response.json()["token"]) == 40
    assert client.post("/api/token/", {"username": "lettore", "password": "sbagliata"}).status_code == 400


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
    assert message in response.json()[field][0]


def test_studies_pages_within_range(client, region, staff, ct_study: list[Path], settings) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    auth = {"HTTP_AUTHORIZATION": f"Token {staff.token}"}
    body = client.get("/api/studies/", {"limit": "1000", "offset": "0"}, **auth).json()
    assert body["count"] == 1 and len(body["results"]) == 1
    body = client.get("/api/studies/", {"limit": "1", "offset": "1000000"}, **auth).json()
    assert body["count"] == 1 and body["results"] == []
    settings.PACS_QUERY_MAX_OFFSET = 10
    assert client.get("/api/studies/", {"offset": "11"}, **auth).status_code == 400
