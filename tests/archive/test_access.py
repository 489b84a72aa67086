"""The access policy (archive.access) on DICOMweb and the REST API: a radiologist of
another health authority cannot open a study, and a study the patient hid
(*oscuramento*) does not exist for a professional without an emergency access for
that patient: absent from every search, 404 with the body of a missing study on
every retrieval, never a 403 that would say it is there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.test import Client
from pydicom.dataset import Dataset

from archive.access import authority_restriction
from archive.models import Instance, InstanceConflict, StaffProfile, Study
from archive.sample_data import PatientInfo, write_study
from kernel.models import AuditEvent
from tests.access_helpers import BIANCHI_CF, Scene, emergency, hide
from tests.access_helpers import scene as scene  # noqa: F401  (fixture)
from tests.dicomweb_helpers import make_user, multipart_body, token_authenticated, uids
from tests.reporting_helpers import PATIENT_CF, Reporting, signed_report
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)


def _client(user: object) -> Client:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return client


def _urls(reporting: Reporting) -> dict[str, str]:
    study = reporting.study
    series = study.series.order_by("series_number").first()
    assert series is not None
    instance = series.instances.first()
    assert instance is not None
    base = f"/dicomweb/studies/{study.study_instance_uid}"
    return {
        "qido": f"/dicomweb/studies?StudyInstanceUID={study.study_instance_uid}",
        "qido_series": f"{base}/series",
        "metadata": f"{base}/metadata",
        "thumbnail": f"{base}/series/{series.series_instance_uid}/thumbnail",
        "wado_uri": (
            f"/dicomweb/wado?requestType=WADO&studyUID={study.study_instance_uid}"
            f"&seriesUID={series.series_instance_uid}&objectUID={instance.sop_instance_uid}&contentType=application/dicom"
        ),
    }


def test_the_rule(reporting: Reporting) -> None:
    assert authority_restriction(reporting.radiologist) == reporting.region.authority.pk
    assert authority_restriction(reporting.foreign) == reporting.other_authority.pk
    profile = StaffProfile.objects.get(user=reporting.foreign)
    profile.cross_authority = True
    profile.save()
    assert authority_restriction(reporting.foreign) is None


def test_dicomweb_shows_a_study_only_to_its_authoritys_staff(reporting: Reporting, settings) -> None:  # type: ignore[no-untyped-def]
    urls = _urls(reporting)
    own, foreign = _client(reporting.radiologist), _client(reporting.foreign)
    assert len(own.get(urls["qido"], HTTP_ACCEPT="application/dicom+json").json()) == 1
    for name in ("qido_series", "metadata", "thumbnail", "wado_uri"):
        assert own.get(urls[name]).status_code == 200, name
    for name in ("qido", "qido_series"):
        found = foreign.get(urls[name], HTTP_ACCEPT="application/dicom+json")
        assert found.status_code in (200, 204) and not (found.content and found.json()), name
    for name in ("metadata", "thumbnail", "wado_uri"):
        assert foreign.get(urls[name]).status_code == 404, name

    settings.PACS_REPORT_CROSS_AUTHORITY = True
    assert foreign.get(urls["metadata"]).status_code == 200
    assert len(foreign.get(urls["qido"], HTTP_ACCEPT="application/dicom+json").json()) == 1


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_qido_at_every_level_hides_other_authorities(reporting: Reporting, level: str) -> None:
    found = _client(reporting.foreign).get(f"/dicomweb/{level}", HTTP_ACCEPT="application/dicom+json")
    assert found.status_code in (200, 204) and not (found.content and found.json())
    assert _client(reporting.radiologist).get(f"/dicomweb/{level}", HTTP_ACCEPT="application/dicom+json").json()


# --- The same rule with oscuramento, for the REST API and every DICOMweb resource ---------------------
#
# Reproduced first (issue 15): QIDO-RS listed a hidden study at every level and
# /api/studies/ listed and served it; now a hidden or out-of-scope study is absent
# from every search and answers every retrieval as a study that is not archived.

UNKNOWN_UID = "1.2.826.0.1.3680043.8.498.99999999999999999999999999"


def _as_unknown(text: str, study: Study) -> str:
    return text.replace(study.study_instance_uid, UNKNOWN_UID)


def _first(study: Study) -> tuple[str, str, str]:
    instance = Instance.objects.filter(series__study=study).order_by("series__series_number", "instance_number").first()
    assert instance is not None
    return study.study_instance_uid, instance.series.series_instance_uid, instance.sop_instance_uid


def _searches(study: Study, root: str = "/dicomweb") -> list[str]:
    uid, series, _sop = _first(study)
    return [
        f"{root}/studies",
        f"{root}/studies?StudyInstanceUID={uid}",
        f"{root}/studies?PatientID={study.dicom_patient_id}",
        f"{root}/series",
        f"{root}/series?StudyInstanceUID={uid}",
        f"{root}/instances",
        f"{root}/instances?StudyInstanceUID={uid}",
        f"{root}/studies/{uid}/series",
        f"{root}/studies/{uid}/instances",
        f"{root}/studies/{uid}/series/{series}/instances",
    ]


def _retrievals(study: Study, root: str = "/dicomweb") -> list[str]:
    uid, series, sop = _first(study)
    s, i = f"{root}/studies/{uid}", f"{root}/studies/{uid}/series/{series}"
    o = f"{i}/instances/{sop}"
    return [
        s, f"{s}/metadata", f"{s}/rendered", f"{s}/thumbnail",
        i, f"{i}/metadata", f"{i}/rendered", f"{i}/thumbnail",
        o, f"{o}/metadata", f"{o}/rendered", f"{o}/thumbnail",
        f"{o}/frames/1", f"{o}/frames/1/rendered", f"{o}/frames/1/thumbnail", f"{o}/bulkdata/7FE00010",
        f"{root}/wado?requestType=WADO&studyUID={uid}&seriesUID={series}&objectUID={sop}",
        f"{root}/wado?requestType=WADO&studyUID={uid}&seriesUID={series}&objectUID={sop}&contentType=application/dicom",
    ]  # fmt: skip


def _found_uids(client: Client, url: str) -> set[str]:
    response = client.get(url, HTTP_ACCEPT="application/dicom+json")
    assert response.status_code in (200, 204), (url, response.status_code, response.content[:300])
    items = response.json() if response.content else []
    return {str(item["0020000D"]["Value"][0]) for item in items if "0020000D" in item}


def _nested_hits(client: Client, url: str) -> int:
    response = client.get(url, HTTP_ACCEPT="application/dicom+json")
    assert response.status_code in (200, 204), (url, response.status_code)
    return len(response.json()) if response.content else 0


def _search_sees(client: Client, url: str, study: Study) -> bool:
    if "/studies/" in url:  # searches under the study: any result is the study's
        return _nested_hits(client, url) > 0
    return study.study_instance_uid in _found_uids(client, url)


@pytest.mark.parametrize("root", ["/dicomweb", "/dicomweb/TS-CAT"])
def test_qido_at_every_level_does_not_list_a_hidden_study(scene: Scene, root: str) -> None:
    client = _client(scene.rep.colleague)
    for url in _searches(scene.rossi, root):
        assert _search_sees(client, url, scene.rossi), url

    hide(scene.rossi)

    for url in _searches(scene.rossi, root):
        assert not _search_sees(client, url, scene.rossi), url
    assert _found_uids(client, f"{root}/studies") == {scene.bianchi.study_instance_uid}


@pytest.mark.parametrize("root", ["/dicomweb", "/dicomweb/TS-CAT"])
def test_every_retrieval_of_a_hidden_study_answers_as_a_missing_one(scene: Scene, root: str) -> None:
    client = _client(scene.rep.colleague)
    urls = _retrievals(scene.rossi, root)
    for url in urls:
        assert client.get(url).status_code == 200, url

    hide(scene.rossi)

    for url in urls:
        hidden = client.get(url)
        missing = client.get(_as_unknown(url, scene.rossi))
        assert hidden.status_code == missing.status_code == 404, url
        assert _as_unknown(hidden.content.decode(), scene.rossi) == missing.content.decode(), url
        assert "conceal" not in hidden.content.decode().lower()
    refused = AuditEvent.objects.filter(study_instance_uid=scene.rossi.study_instance_uid, outcome="failure")
    assert refused.count() == len(urls)
    assert not AuditEvent.objects.filter(outcome="denied", action__startswith="dicomweb", detail__reason="concealed")


def test_dicomweb_of_another_authority_is_absent_and_404(scene: Scene) -> None:
    client = _client(scene.foreign)
    for url in _searches(scene.rossi):
        assert not _search_sees(client, url, scene.rossi), url
    for url in _retrievals(scene.rossi):
        assert client.get(url).status_code == 404, url
    assert _found_uids(client, "/dicomweb/studies") == {scene.verdi.study_instance_uid}
    assert client.get("/dicomweb/TS-CAT/studies", HTTP_ACCEPT="application/dicom+json").json() == []


def test_an_emergency_access_opens_dicomweb_for_its_patient_only(scene: Scene) -> None:
    hide(scene.rossi)
    hide(scene.bianchi)
    client = _client(scene.rep.colleague)
    assert _found_uids(client, "/dicomweb/studies") == set()

    emergency(scene.rep.colleague, scene.rossi.patient)

    assert _found_uids(client, "/dicomweb/studies") == {scene.rossi.study_instance_uid}
    # The study, its metadata and rendered images, and one instance's (its own query: access.py's rule too).
    for url in [*_retrievals(scene.rossi)[:3], *_retrievals(scene.rossi)[10:12]]:
        assert client.get(url).status_code == 200, url
    for url in [*_retrievals(scene.bianchi)[:3], *_retrievals(scene.bianchi)[10:12]]:
        assert client.get(url).status_code == 404, url
    # The other radiologist of the same authority is not opened anything.
    assert _found_uids(_client(scene.radiologist), "/dicomweb/studies") == set()


def test_qido_is_audited_with_the_patients_it_returned(scene: Scene, settings) -> None:  # type: ignore[no-untyped-def]
    client = _client(scene.rep.colleague)
    hide(scene.bianchi)
    _found_uids(client, "/dicomweb/studies")
    event = AuditEvent.objects.filter(action="dicomweb.search").latest("id")
    assert event.detail["patients"] == [scene.rossi.patient_id] and event.detail["patients_total"] == 1
    uid, series, _sop = _first(scene.rossi)
    _nested_hits(client, f"/dicomweb/studies/{uid}/series/{series}/instances")
    event = AuditEvent.objects.filter(action="dicomweb.search").latest("id")
    assert event.detail["patients"] == [scene.rossi.patient_id] and event.detail["matches"] == 3
    _found_uids(client, "/dicomweb/instances")
    event = AuditEvent.objects.filter(action="dicomweb.search").latest("id")
    assert event.detail["patients"] == [scene.rossi.patient_id] and event.detail["matches"] == 6

    settings.PACS_AUDIT_MAX_PATIENTS = 1
    _found_uids(_client(scene.regional), "/dicomweb/studies")
    event = AuditEvent.objects.filter(action="dicomweb.search").latest("id")
    assert len(event.detail["patients"]) == 1 and event.detail["patients_total"] == 2  # Rossi and Verdi


# --- STOW-RS into a hidden study ---------------------------------------------------------------------


def _stow(client: Client, url: str, files: list[Path]) -> object:
    boundary = "b0undary-7f3c"
    return client.generic(
        "POST",
        url,
        multipart_body([p.read_bytes() for p in files], boundary=boundary),
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        HTTP_ACCEPT="application/dicom+json",
    )


def _storer(scene: Scene) -> Client:
    # A modality's account of the study's authority.
    user = make_user("modalita", "archive.view_study", "archive.view_instance", "archive.add_instance").user
    StaffProfile.objects.create(user=user, authority=scene.rep.region.authority)
    return _client(user)


def _more_images(tmp_path: Path, name: str, study: Study, patient_id: str, patient_name: str) -> list[Path]:
    return write_study(
        tmp_path / name,
        patient=PatientInfo(patient_id=patient_id, name=patient_name),
        instances_per_series=1,
        study_uid=study.study_instance_uid,
    )


def test_stow_into_a_hidden_study_stores_and_answers_as_for_any_study(scene: Scene, tmp_path: Path) -> None:
    hide(scene.rossi)
    client = _storer(scene)
    into_hidden = _more_images(tmp_path, "rossi", scene.rossi, PATIENT_CF, "ROSSI^MARIO")
    into_visible = _more_images(tmp_path, "bianchi", scene.bianchi, BIANCHI_CF, "BIANCHI^LAURA")
    new_study = write_study(tmp_path / "new", patient=PatientInfo(patient_id="MRN4242"), instances_per_series=1)

    answers = {}
    for name, files, study_uid in (
        ("hidden", into_hidden, scene.rossi.study_instance_uid),
        ("visible", into_visible, scene.bianchi.study_instance_uid),
        ("new", new_study, uids(new_study[0])[0]),
    ):
        response = _stow(client, f"/dicomweb/TS-CAT/studies/{study_uid}", files)
        assert response.status_code == 200, (name, response.content)
        assert "Warning" not in response
        body = response.json()
        answers[name] = json.dumps(body, sort_keys=True).replace(study_uid, "STUDY").replace(uids(files[0])[1], "S")
        answers[name] = (
            answers[name]
            .replace(uids(files[0])[2], "I")
            .replace(Dataset.from_json(body).ReferencedSOPSequence[0].ReferencedSOPClassUID, "C")
        )
    assert answers["hidden"] == answers["visible"] == answers["new"]

    # Stored into the hidden study, which stays hidden with its new images.
    stored = Instance.objects.get(sop_instance_uid=uids(into_hidden[0])[2])
    assert stored.series.study_id == scene.rossi.pk
    assert client.get(f"/dicomweb/studies/{scene.rossi.study_instance_uid}/metadata").status_code == 404
    assert client.get(f"/dicomweb/studies/{scene.bianchi.study_instance_uid}/metadata").status_code == 200


def test_a_stow_conflict_with_a_hidden_study_names_nothing_archived(scene: Scene, tmp_path: Path) -> None:
    hide(scene.rossi)
    client = _storer(scene)
    # Images that claim the hidden study for another patient: kept for review, as for any study.
    claim_hidden = _more_images(tmp_path, "a", scene.rossi, "MRN5555", "ALTRO^PAZIENTE")
    claim_visible = _more_images(tmp_path, "b", scene.bianchi, "MRN5555", "ALTRO^PAZIENTE")
    warnings = []
    for files in (claim_hidden, claim_visible):
        response = _stow(client, "/dicomweb/TS-CAT/studies", files)
        assert response.status_code == 409  # held aside, not stored as the instance (issue 19)
        (item,) = Dataset.from_json(response.json()).FailedSOPSequence
        assert item.FailureReason == 0xA7C0
        warnings.append(response["Warning"])
    assert warnings[0] == warnings[1]
    assert PATIENT_CF not in warnings[0] and "belongs to" not in warnings[0]
    assert InstanceConflict.objects.filter(study=scene.rossi).count() == 1
    # The reason stays for the audit log and the conflict's reviewers.
    event = AuditEvent.objects.filter(action="dicomweb.store", study=scene.rossi).latest("id")
    assert PATIENT_CF in event.detail["conflict_details"][0]["detail"]


# --- The REST API ------------------------------------------------------------------------------------


def test_api_studies_do_not_list_a_hidden_study(scene: Scene) -> None:
    client = _client(scene.rep.colleague)
    listed = client.get("/api/studies/").json()
    assert {s["study_instance_uid"] for s in listed["results"]} == {
        scene.rossi.study_instance_uid,
        scene.bianchi.study_instance_uid,
    }

    hide(scene.rossi)

    listed = client.get("/api/studies/").json()
    assert listed["count"] == 1
    assert [s["study_instance_uid"] for s in listed["results"]] == [scene.bianchi.study_instance_uid]
    for params in ({"patient_id": PATIENT_CF}, {"accession_number": scene.rossi.accession_number}):
        assert client.get("/api/studies/", params).json() == {
            "count": 0,
            "next": None,
            "previous": None,
            "results": [],
        }
    hidden = client.get(f"/api/studies/{scene.rossi.study_instance_uid}/")
    missing = client.get(f"/api/studies/{UNKNOWN_UID}/")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()
    denied = AuditEvent.objects.filter(action="api.study", outcome="denied").get()
    assert denied.study_id == scene.rossi.pk and denied.detail["reason"] == "concealed"


def test_api_studies_of_another_authority_are_absent(scene: Scene) -> None:
    client = _client(scene.foreign)
    listed = client.get("/api/studies/").json()
    assert [s["study_instance_uid"] for s in listed["results"]] == [scene.verdi.study_instance_uid]
    hidden = client.get(f"/api/studies/{scene.rossi.study_instance_uid}/")
    assert hidden.status_code == 404 and hidden.json() == client.get(f"/api/studies/{UNKNOWN_UID}/").json()
    assert client.get(f"/api/studies/{scene.verdi.study_instance_uid}/").status_code == 200


def test_api_studies_emergency_access_for_one_patient(scene: Scene) -> None:
    hide(scene.rossi)
    hide(scene.bianchi)
    client = _client(scene.rep.colleague)
    emergency(scene.rep.colleague, scene.rossi.patient)
    listed = client.get("/api/studies/").json()
    assert [s["study_instance_uid"] for s in listed["results"]] == [scene.rossi.study_instance_uid]
    assert client.get(f"/api/studies/{scene.rossi.study_instance_uid}/").status_code == 200
    assert client.get(f"/api/studies/{scene.bianchi.study_instance_uid}/").status_code == 404


def test_api_studies_list_is_audited_with_the_patients_it_returned(scene: Scene) -> None:
    client = _client(scene.regional)
    client.get("/api/studies/", {"limit": 2})
    event = AuditEvent.objects.filter(action="api.studies").latest("id")
    assert event.detail["returned"] == 2 and len(event.detail["patients"]) == 2
    assert set(event.detail["patients"]) <= {scene.rossi.patient_id, scene.bianchi.patient_id, scene.verdi.patient_id}


def test_api_reports_of_a_hidden_study_answer_as_missing_ones(scene: Scene) -> None:
    report = signed_report(scene.rep)
    client = _client(scene.rep.colleague)
    base = f"/api/reports/{report.pk}/"
    for url in (base, f"{base}pdf", f"{base}p7m"):
        assert client.get(url).status_code == 200, url

    hide(scene.rossi)

    for url in (base, f"{base}pdf", f"{base}p7m"):
        hidden, missing = client.get(url), client.get(url.replace(str(report.pk), "999999"))
        assert hidden.status_code == missing.status_code == 404, url
        assert (
            hidden.json()
            == missing.json()
            == {
                "type": "about:blank",
                "title": "Not Found",
                "status": 404,
                "detail": "Referto inesistente.",
                "code": "not_found",
                "field": None,
            }
        )
    listed = client.get("/api/reports/", {"study": scene.rossi.study_instance_uid})
    assert listed.status_code == 404
    assert listed.json() == client.get("/api/reports/", {"study": UNKNOWN_UID}).json()
    patched = client.patch(base, {"revision": 1, "conclusion": "x"}, content_type="application/json")
    assert patched.status_code == 404 and patched.json()["code"] == "not_found"
    assert AuditEvent.objects.filter(action="study.denied", detail__reason="concealed").count() == 5
    # The author still reads it ("visible only to the citizen and its author").
    assert _client(scene.radiologist).get(base).status_code == 200
    # An emergency access for the patient opens it.
    emergency(scene.rep.colleague, scene.rossi.patient)
    assert client.get(base).status_code == 200


# --- The helpers this work added to archive.access ----------------------------------------------------


def test_any_q_keeps_an_empty_condition_as_everything(scene: Scene) -> None:
    from django.db.models import Q

    from archive import access

    # Django drops an empty Q from an OR: Q(a) | Q() is Q(a), "no study" alone.
    assert access.any_q(Q(pk__in=[]), Q()) == Q()
    assert Study.objects.filter(access.any_q(Q(pk__in=[]), Q())).count() == 3
    assert Study.objects.filter(access.any_q(Q(pk=scene.rossi.pk), Q(pk=scene.verdi.pk))).count() == 2


def test_patient_facility_and_uid_conditions(scene: Scene) -> None:
    from archive import access
    from archive.models import Facility, Patient

    foreign = access.principal_for_user(scene.foreign)
    regional = access.principal_for_user(scene.regional)
    assert set(Patient.objects.filter(access.patient_visible_q(foreign))) == {scene.verdi.patient}
    assert Patient.objects.filter(access.patient_visible_q(regional)).count() == 3
    assert set(Facility.objects.filter(access.facility_visible_q(foreign, ""))) == {scene.udine}
    # uid_visible_q on Study itself: a row naming a UID the user may not see is dropped.
    rows = Study.objects.filter(access.uid_visible_q(foreign))
    assert set(rows) == {scene.verdi}
    hide(scene.verdi)
    assert set(Study.objects.filter(access.uid_visible_q(foreign))) == set()
    assert set(Patient.objects.filter(access.patient_visible_q(foreign))) == set()


def test_the_visibility_key_changes_with_what_is_seen(scene: Scene) -> None:
    from archive import access

    def key(user: object) -> str:
        return access.visibility_key(access.principal_for_user(user))

    before = key(scene.rep.colleague)
    assert before == key(scene.rep.colleague) and before != key(scene.foreign)
    hide(scene.verdi)
    after_hiding = key(scene.rep.colleague)
    assert after_hiding != before
    emergency(scene.rep.colleague, scene.rossi.patient)
    assert key(scene.rep.colleague) != after_hiding


# --- the principal a token's request brings with its token (archive.access.principal_facts) ---------


def test_a_tokens_principal_is_the_one_its_own_query_builds(scene: Scene) -> None:
    """What the principal needs to know of a user (citizen? authority? a live emergency access?)
    comes with the token's query: no query of its own, and the same principal its own query
    builds, for every kind of user, and again at the next request once an emergency access is
    taken or runs out."""
    import datetime as dt

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from archive import access
    from portal.models import CitizenAccount, EmergencyAccess

    def through_token(user: object) -> tuple[access.Principal, int]:
        found = token_authenticated(user)
        assert hasattr(found, access.PRINCIPAL_FACTS)
        with CaptureQueriesContext(connection) as queries:
            principal = access.principal_for_user(found)
        return principal, len(queries.captured_queries)

    def by_its_own_query(user: object) -> access.Principal:
        fresh = get_user_model().objects.get(pk=user.pk)  # type: ignore[attr-defined]
        assert not hasattr(fresh, access.PRINCIPAL_FACTS)
        return access.principal_for_user(fresh)

    citizen = get_user_model().objects.create_user(username="cittadino-token", password="x")
    CitizenAccount.objects.create(user=citizen, codice_fiscale=BIANCHI_CF)
    StaffProfile.objects.update_or_create(user=scene.foreign, defaults={"cross_authority": True})
    for user in (scene.radiologist, scene.foreign, scene.regional, scene.rep.colleague, citizen):
        principal, queries = through_token(user)
        assert principal == by_its_own_query(user), user
        assert queries == (3 if user is citizen else 0), user  # a citizen's patients and delegations, as before
    assert through_token(citizen)[0].is_citizen and through_token(scene.foreign)[0].authority_id is None

    live = emergency(scene.rep.colleague, scene.rossi.patient)
    principal, queries = through_token(scene.rep.colleague)
    assert principal == by_its_own_query(scene.rep.colleague)
    assert principal.patient_ids == {scene.rossi.patient_id} and queries == 1  # its patients only
    EmergencyAccess.objects.filter(pk=live.pk).update(at=timezone.now() - dt.timedelta(days=2))
    principal, queries = through_token(scene.rep.colleague)
    assert principal == by_its_own_query(scene.rep.colleague) and not principal.patient_ids and queries == 0


def test_forgetting_the_principal_forgets_what_the_token_brought(scene: Scene) -> None:
    """An emergency access granted during a request (the portal's page) is seen by the principal
    built again after ``principal_forget``, though the token's query found none."""
    from django.test import RequestFactory

    from archive import access

    request = RequestFactory().get("/")
    request.user = token_authenticated(scene.rep.colleague)
    assert not access.principal_for_request(request).patient_ids
    emergency(scene.rep.colleague, scene.rossi.patient)
    access.principal_forget(request)
    assert access.principal_for_request(request).patient_ids == {scene.rossi.patient_id}
