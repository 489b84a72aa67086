"""One problem format (kernel.problems): the CUP's API and the archive's answer an error
as the same RFC 9457 problem; DICOMweb keeps PS3.18's own body."""

from __future__ import annotations

import pytest
import yaml
from django.test import Client

from kernel.problems import PROBLEM_JSON
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import MARIO_CF, Cup
from tests.dicomweb_helpers import make_user

cup = booking_fixtures.cup

pytestmark = pytest.mark.django_db

SHAPE = {"type", "title", "status", "detail", "code", "field"}


def _problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM_JSON
    body = response.json()
    assert SHAPE <= set(body) and body["status"] == status and body["type"] == "about:blank"
    return body


def test_not_found_is_the_same_problem_from_both_apis(client: Client, cup: Cup) -> None:
    reader = make_user("lettore-referti", "archive.view_report", "booking.view_booking")
    cup_missing = _problem(client.get("/api/cup/bookings/NOPE/", **reader.auth), 404)
    report_missing = _problem(client.get("/api/reports/999999/", **reader.auth), 404)
    assert set(cup_missing) == set(report_missing) == SHAPE
    assert cup_missing["code"] == report_missing["code"] == "not_found"
    assert cup_missing["title"] == report_missing["title"] == "Not Found"
    assert report_missing["detail"] == "Referto inesistente."


def test_a_refused_body_is_the_same_problem_from_both_apis(client: Client, cup: Cup) -> None:
    reader = make_user("lettore-studi", "archive.view_study", "booking.view_booking")
    slots = _problem(
        client.get("/api/cup/slots/", {"station": cup.ct_station.pk, "date": "domani"}, **reader.auth), 400
    )
    page = _problem(client.get("/api/studies/", {"limit": "dieci"}, **reader.auth), 400)
    for body, field in ((slots, "date"), (page, "limit")):
        assert set(body) == SHAPE | {"errors"}
        assert body["field"] == field and body["detail"] == body["errors"][field][0]
    assert page["code"] == "invalid"


def test_a_service_error_is_a_problem_by_its_code(client: Client, cup: Cup) -> None:
    when = cup.next_slot()
    cup.book(cup.laura, when=when)
    body = {
        "codice_fiscale": MARIO_CF,
        "procedure": cup.ct.code,
        "facility": cup.region.facility.code,
        "station": cup.ct_station.ae_title,
        "scheduled_at": when.isoformat(),
        "channel": "regional_cup",
        "choice": {"delivery": "cd"},
    }
    taken = _problem(client.post("/api/cup/bookings/", body, content_type="application/json", **cup.operator.auth), 409)
    assert (taken["code"], taken["field"], taken["title"]) == ("slot_taken", "scheduled_at", "Conflict")


def test_authentication_is_a_problem_with_its_challenge(client: Client, db: None) -> None:
    for url in ("/api/cup/procedures/", "/api/studies/"):
        response = client.get(url)
        body = _problem(response, 401)
        assert body["code"] == "not_authenticated" and response["WWW-Authenticate"] == "Token, Bearer", url


def test_dicomweb_keeps_its_own_body(client: Client, db: None) -> None:
    reader = make_user("lettore-dicomweb", "archive.view_study", "archive.view_instance")
    anonymous = client.get("/dicomweb/studies", HTTP_ACCEPT="application/dicom+json")
    assert anonymous.status_code == 401 and anonymous["Content-Type"] == "application/json"
    assert set(anonymous.json()) == {"detail"}
    unknown = client.get("/dicomweb/NOPE/studies", HTTP_ACCEPT="application/dicom+json", **reader.auth)
    assert unknown.status_code == 404 and unknown["Content-Type"] == "application/json"
    assert unknown.json() == {"detail": "there is no facility 'NOPE'"}


def test_the_schema_describes_one_problem_for_every_api(client: Client, db: None) -> None:
    schema = yaml.safe_load(client.get("/api/schema/").content)
    assert "Problem" in schema["components"]["schemas"]
    for path, method, status in (
        ("/api/cup/bookings/", "post", "409"),
        ("/api/reports/{id}/", "patch", "409"),
        ("/api/token/", "post", "429"),
    ):
        content = schema["paths"][path][method]["responses"][status]["content"]
        assert content[PROBLEM_JSON]["schema"]["$ref"].endswith("/Problem"), (path, method)
