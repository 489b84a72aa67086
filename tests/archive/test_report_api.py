"""The report REST API: reading versions and their signed files, editing a draft,
and a signed report that neither PATCH nor DELETE can touch."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import yaml
from django.forms.models import model_to_dict
from django.test import Client
from knox.models import AuthToken

from archive.models import Report
from archive.reporting import services as reports
from kernel.models import AuditEvent
from tests.archive.test_web import INJECTED_ACCESSION, NON_ASCII_ACCESSION, disposition_filenames
from tests.reporting_helpers import RADIOLOGIST_PASSWORD, Reporting, signed_report, written_draft
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)


def auth(user: Any) -> dict[str, str]:
    _token, key = AuthToken.objects.create(user=user)
    return {"HTTP_AUTHORIZATION": f"Token {key}"}


def patch(client: Client, report: Report, body: dict[str, Any], user: Any) -> Any:
    return client.patch(f"/api/reports/{report.pk}/", body, content_type="application/json", **auth(user))


def events(action: str, outcome: str | None = None) -> list[AuditEvent]:
    qs = AuditEvent.objects.filter(action=action)
    if outcome:
        qs = qs.filter(outcome=outcome)
    return list(qs.order_by("id"))


# --- reading --------------------------------------------------------------------


def test_list_and_read_a_signed_report_and_its_files(client: Client, reporting: Reporting) -> None:
    r = reporting
    report = signed_report(r)
    uid = r.study.study_instance_uid

    listing = client.get("/api/reports/", {"study": uid}, **auth(r.colleague))

    assert listing.status_code == 200, listing.content
    [item] = listing.json()
    assert (item["id"], item["version"], item["status"], item["kind"]) == (report.pk, 1, "signed", "original")
    detail = client.get(f"/api/reports/{report.pk}/", **auth(r.colleague)).json()
    assert detail["study"] == uid
    assert detail["conclusion"] == "Quadro TC nei limiti della norma."
    assert detail["clinical_question"] == r.study.reason_for_request
    assert detail["author"] == {"username": "radiologo", "name": "Stefano Cossutta"}
    assert detail["signer"] == report.signer_name and detail["signed_at"]
    assert detail["pdf_sha256"] == report.pdf_sha256 and detail["signature_sha256"] == report.signature_sha256
    assert detail["previous"] is None
    assert detail["links"]["pdf"].endswith(f"/api/reports/{report.pk}/pdf")
    assert detail["links"]["p7m"].endswith(f"/api/reports/{report.pk}/p7m")
    assert detail["links"]["study"].endswith(f"/api/studies/{uid}/")

    pdf = client.get(f"/api/reports/{report.pk}/pdf", **auth(r.colleague))
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert hashlib.sha256(pdf.content).hexdigest() == report.pdf_sha256
    assert pdf["Content-Disposition"].startswith("attachment;")
    p7m = client.get(f"/api/reports/{report.pk}/p7m", **auth(r.colleague))
    assert p7m.status_code == 200 and p7m["Content-Type"] == "application/pkcs7-signature"
    assert hashlib.sha256(p7m.content).hexdigest() == report.signature_sha256

    views = [e for e in events("report.view") if e.user_id == r.colleague.pk]
    assert len(views) == 2 and all(e.study_id == r.study.pk and e.patient_id for e in views)
    downloads = events("report.download")
    assert [e.detail["file"] for e in downloads] == ["pdf", "p7m"]


def test_a_correction_lists_both_versions_and_points_to_the_previous(client: Client, reporting: Reporting) -> None:
    r = reporting
    first = signed_report(r)
    correction = reports.report_amend(report=first, user=r.radiologist, kind=Report.Kind.CORRECTION)

    listing = client.get("/api/reports/", {"study": r.study.study_instance_uid}, **auth(r.radiologist)).json()

    assert [(i["version"], i["status"], i["previous"]) for i in listing] == [
        (1, "signed", None),
        (2, "draft", first.pk),
    ]
    assert listing[1]["links"]["pdf"] is None
    assert listing[1]["links"]["previous"].endswith(f"/api/reports/{first.pk}/")
    assert client.get(f"/api/reports/{correction.pk}/pdf", **auth(r.radiologist)).status_code == 404


def test_the_list_needs_a_known_study(client: Client, reporting: Reporting) -> None:
    r = reporting
    assert client.get("/api/reports/", **auth(r.radiologist)).status_code == 400
    assert client.get("/api/reports/", {"study": "1.2.3.4"}, **auth(r.radiologist)).status_code == 404
    assert client.get("/api/reports/999999/", **auth(r.radiologist)).status_code == 404


# --- editing a draft ------------------------------------------------------------------


def test_the_author_patches_a_draft_and_absent_sections_stay(client: Client, reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)

    response = patch(
        client, draft, {"revision": draft.revision, "findings": "Micronodulo al lobo superiore."}, r.radiologist
    )

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["revision"] == draft.revision + 1
    assert data["findings"] == "Micronodulo al lobo superiore."
    assert data["conclusion"] == "Quadro TC nei limiti della norma."
    draft.refresh_from_db()
    assert draft.findings == "Micronodulo al lobo superiore." and draft.status == Report.Status.DRAFT
    assert events("report.save")[-1].user_id == r.radiologist.pk


def test_a_stale_revision_is_a_conflict_and_overwrites_nothing(client: Client, reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    read_at = draft.revision
    assert (
        patch(client, draft, {"revision": read_at, "conclusion": "Prima versione."}, r.radiologist).status_code == 200
    )

    response = patch(
        client, draft, {"revision": read_at, "conclusion": "Seconda, da una pagina vecchia."}, r.radiologist
    )

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert "ricarica" in response.json()["detail"]
    draft.refresh_from_db()
    assert draft.conclusion == "Prima versione." and draft.revision == read_at + 1
    assert events("report.save", AuditEvent.Outcome.FAILURE)


def test_a_colleague_patches_the_draft_but_cannot_discard_it(client: Client, reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)

    response = patch(client, draft, {"revision": draft.revision, "findings": "Rivisto dalla collega."}, r.colleague)

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["findings"] == "Rivisto dalla collega." and data["revision"] == draft.revision + 1
    assert data["author"] == {"username": "radiologo", "name": "Stefano Cossutta"}
    assert data["updated_by"] == {"username": "radiologa", "name": "Chiara Degano"}
    deleted = client.delete(f"/api/reports/{draft.pk}/", **auth(r.colleague))
    assert deleted.status_code == 403 and deleted.json()["code"] == "author"
    draft.refresh_from_db()
    assert draft.findings == "Rivisto dalla collega." and draft.updated_by_id == r.colleague.pk
    assert events("report.save", AuditEvent.Outcome.SUCCESS)[-1].user_id == r.colleague.pk


def test_a_stale_revision_from_the_other_radiologist_is_409(client: Client, reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    read_at = draft.revision
    assert patch(client, draft, {"revision": read_at, "conclusion": "Del radiologo."}, r.radiologist).status_code == 200

    response = patch(client, draft, {"revision": read_at, "conclusion": "Della collega."}, r.colleague)

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert "salvata da Stefano Cossutta alle" in response.json()["detail"]
    draft.refresh_from_db()
    assert (draft.conclusion, draft.revision, draft.updated_by_id) == ("Del radiologo.", read_at + 1, r.radiologist.pk)
    (failure,) = events("report.save", AuditEvent.Outcome.FAILURE)
    assert failure.user_id == r.colleague.pk and failure.detail["reason"] == "conflict"


def test_the_author_discards_a_draft(client: Client, reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)

    response = client.delete(f"/api/reports/{draft.pk}/", **auth(r.radiologist))

    assert response.status_code == 204
    assert not Report.objects.filter(pk=draft.pk).exists()
    assert events("report.discard")


def test_a_patch_without_revision_is_refused(client: Client, reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    response = patch(client, draft, {"findings": "senza revisione"}, r.radiologist)
    assert response.status_code == 400


# --- a signed report never changes --------------------------------------------------------


def test_patching_a_signed_report_is_409_and_changes_nothing(client: Client, reporting: Reporting) -> None:
    r = reporting
    report = signed_report(r)
    before = model_to_dict(Report.objects.get(pk=report.pk)) | {"updated_at": report.updated_at}

    response = patch(client, report, {"revision": report.revision, "conclusion": "Riscritto."}, r.radiologist)

    assert response.status_code == 409
    assert "Un referto firmato non si può modificare" in response.json()["detail"]
    assert response.json()["code"] == "signed"
    after = Report.objects.get(pk=report.pk)
    assert model_to_dict(after) | {"updated_at": after.updated_at} == before
    (denied,) = events("report.save", AuditEvent.Outcome.DENIED)
    assert denied.user_id == r.radiologist.pk and denied.detail["reason"] == "signed"


def test_deleting_a_signed_report_is_409(client: Client, reporting: Reporting) -> None:
    r = reporting
    report = signed_report(r)

    response = client.delete(f"/api/reports/{report.pk}/", **auth(r.radiologist))

    assert response.status_code == 409
    assert Report.objects.filter(pk=report.pk, status=Report.Status.SIGNED).exists()
    assert events("report.discard", AuditEvent.Outcome.DENIED)


def test_signing_is_not_offered(client: Client, reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    for method in ("post", "put"):
        response = getattr(client, method)(
            f"/api/reports/{draft.pk}/",
            {"password": RADIOLOGIST_PASSWORD, "revision": draft.revision},
            content_type="application/json",
            **auth(r.radiologist),
        )
        assert response.status_code == 405
    assert Report.objects.get(pk=draft.pk).status == Report.Status.DRAFT


# --- who may call ------------------------------------------------------------------------------


def test_another_authoritys_report_answers_as_a_missing_one(client: Client, reporting: Reporting) -> None:
    # Not 403: a refusal would say the report is there (archive.access).
    r = reporting
    report = signed_report(r)
    foreign = auth(r.foreign)

    for url in (f"/api/reports/{report.pk}/", f"/api/reports/{report.pk}/pdf", f"/api/reports/{report.pk}/p7m"):
        response = client.get(url, **foreign)
        missing = client.get(url.replace(f"/{report.pk}/", "/999999/"), **foreign)
        assert response.status_code == missing.status_code == 404, url
        assert response.json() == missing.json(), url
    listed = client.get("/api/reports/", {"study": r.study.study_instance_uid}, **foreign)
    assert listed.status_code == 404
    assert listed.json() == client.get("/api/reports/", {"study": "1.2.3.4"}, **foreign).json()
    assert patch(client, report, {"revision": 1, "conclusion": "x"}, r.foreign).status_code == 404
    denied = events("study.denied", AuditEvent.Outcome.DENIED)
    assert len(denied) == 5 and {e.detail["reason"] for e in denied} == {"authority"}
    assert not [e for e in events("report.view") if e.user_id == r.foreign.pk]


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_without_credentials_is_401(client: Client, reporting: Reporting, method: str) -> None:
    draft = written_draft(reporting)
    response = getattr(client, method)(f"/api/reports/{draft.pk}/", content_type="application/json")
    assert response.status_code == 401
    assert client.get("/api/reports/", {"study": reporting.study.study_instance_uid}).status_code == 401
    assert client.get(f"/api/reports/{draft.pk}/pdf").status_code == 401


def test_without_the_report_permission_is_403_and_audited(client: Client, reporting: Reporting) -> None:
    from tests.dicomweb_helpers import make_user

    r = reporting
    draft = written_draft(r)
    viewer = make_user("solo-immagini", "archive.view_study")

    response = client.get(f"/api/reports/{draft.pk}/", **viewer.auth)

    assert response.status_code == 403
    assert events("report.view", AuditEvent.Outcome.DENIED)[-1].username == "solo-immagini"


def test_session_login_works_too(client: Client, reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    client.force_login(r.radiologist)
    assert client.get(f"/api/reports/{draft.pk}/").status_code == 200


def test_the_schema_describes_the_report_api(client: Client, reporting: Reporting) -> None:
    schema = yaml.safe_load(client.get("/api/schema/").content)
    paths = schema["paths"]
    for path in ("/api/reports/", "/api/reports/{id}/", "/api/reports/{id}/pdf", "/api/reports/{id}/p7m"):
        assert path in paths, path
    assert set(paths["/api/reports/{id}/"]) >= {"get", "patch", "delete"}
    assert "post" not in paths["/api/reports/{id}/"] and "put" not in paths["/api/reports/{id}/"]
    assert paths["/api/reports/"]["get"]["tags"] == ["Referti"]
    assert "409" in paths["/api/reports/{id}/"]["patch"]["responses"]


def test_the_file_name_of_a_download_cannot_be_injected_by_the_accession_number(
    client: Client, reporting: Reporting
) -> None:
    from archive.models import Study

    Study.objects.filter(pk=reporting.study.pk).update(accession_number=INJECTED_ACCESSION)
    report = signed_report(reporting)
    pdf = client.get(f"/api/reports/{report.pk}/pdf", **auth(reporting.colleague))
    assert pdf.status_code == 200
    assert disposition_filenames(pdf["Content-Disposition"]) == (
        "attachment",
        ["filename"],
        "referto-_ filename=e.sh-v1.pdf",
    )
    Study.objects.filter(pk=reporting.study.pk).update(accession_number=NON_ASCII_ACCESSION)
    p7m = client.get(f"/api/reports/{report.pk}/p7m", **auth(reporting.colleague))
    assert p7m["Content-Disposition"] == "attachment; filename*=utf-8''referto-ACC-Perch%C3%A9-%C3%80%C3%89-v1.pdf.p7m"
