"""The admin through the access policy (archive.access): a study the patient hid
(*oscuramento*) or one of another health authority, and everything below it, does
not exist for the user: no row, no count, no filter choice, no search hit, and its
pages (change, history, DICOM header) answer as for an object that is not there.
An emergency access lifts the hiding for its patient only. Lists are audited with
the patients they showed; the audit log never tells that a study is hidden.

Reproduced first (issue 15): a radiologist of ASUGI read a hidden study's report
findings on the Report page and every header on the DICOM header page, and one of
ASUFC read ASUGI's patients and codici fiscali in the Patient and Study lists."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.test import Client
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from archive.models import Copy, Instance, InstanceConflict, Patient, Report, Series, StorageAlert, Study
from kernel.audit import audit_record
from kernel.models import AuditEvent
from portal.models import Concealment, Delegation, EmergencyAccess
from tests.access_helpers import Scene, emergency, hide, reveal
from tests.access_helpers import scene as scene  # noqa: F401  (fixture)
from tests.reporting_helpers import PATIENT_CF, signed_report
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def _fresh_lookups() -> None:
    cache.clear()


def client_for(user: object, *extra: str) -> Client:
    for codename in extra:
        app, name = codename.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=name))  # type: ignore[attr-defined]
    client = Client()
    client.force_login(User.objects.get(pk=user.pk))  # type: ignore[attr-defined]
    return client


def url(model: str, view: str, *args: object, app: str = "") -> str:
    # The audit log's rows are the kernel's models; the rest, unless named, the archive's.
    app = app or ("kernel" if model == "auditevent" else "archive")
    return reverse(f"admin:{app}_{model}_{view}", args=args)


def rows(response) -> list:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.status_code
    return list(response.context["cl"].result_list)


def first_instance(study: Study) -> Instance:
    return Instance.objects.filter(series__study=study).order_by("series__series_number", "instance_number").first()


def missing_answer(client: Client, model: str, pk: object) -> tuple[int, str]:
    response = client.get(url(model, "change", pk))
    return response.status_code, response.get("Location", "")


UNKNOWN = 987654


# --- reproduced: the hidden report, the headers, another authority's patients ---------------------


def test_a_hidden_studys_report_is_not_on_the_report_pages(scene: Scene) -> None:
    report = signed_report(scene.rep)
    client = client_for(scene.rep.colleague)
    assert client.get(url("report", "change", report.pk)).status_code == 200

    hide(scene.rossi)

    assert missing_answer(client, "report", report.pk) == missing_answer(client, "report", UNKNOWN)
    page = client.get(url("report", "change", report.pk), follow=True).content.decode()
    assert "Quadro TC nei limiti della norma." not in page
    assert rows(client.get(url("report", "changelist"))) == []
    assert client.get(url("report", "history", report.pk)).status_code == 302


def test_the_author_still_sees_the_report_of_a_study_hidden_after_it(scene: Scene) -> None:
    # "A hidden document stays visible only to the citizen and its author."
    report = signed_report(scene.rep)
    hide(scene.rossi)
    client = client_for(scene.radiologist)
    assert client.get(url("report", "change", report.pk)).status_code == 200


def test_the_dicom_header_of_a_hidden_study_is_not_there(scene: Scene) -> None:
    instance = first_instance(scene.rossi)
    client = client_for(scene.rep.colleague)
    shown = client.get(url("instance", "header", instance.pk))
    assert shown.status_code == 200 and "ROSSI" in shown.content.decode()

    hide(scene.rossi)

    hidden = client.get(url("instance", "header", instance.pk))
    unknown = client.get(url("instance", "header", UNKNOWN))
    assert hidden.status_code == unknown.status_code == 404
    body = hidden.content.decode()
    assert "ROSSI" not in body and PATIENT_CF not in body and instance.sop_instance_uid not in body
    assert hidden.context["message"].replace(str(instance.pk), "ID") == unknown.context["message"].replace(
        str(UNKNOWN), "ID"
    )
    assert missing_answer(client, "instance", instance.pk) == missing_answer(client, "instance", UNKNOWN)
    # The attempt is in the audit log, with the reason, for the data protection officer.
    denied = AuditEvent.objects.filter(action="admin.instance.view", outcome=AuditEvent.Outcome.DENIED).last()
    assert denied is not None and denied.study_id == scene.rossi.pk and denied.detail["reason"] == "concealed"


def test_another_authoritys_patients_and_codici_fiscali_are_not_in_the_admin(scene: Scene) -> None:
    client = client_for(scene.foreign)

    patients = client.get(url("patient", "changelist"))
    assert {p.pk for p in rows(patients)} == {scene.verdi.patient_id}
    body = patients.content.decode()
    assert PATIENT_CF not in body and scene.bianchi.patient.codice_fiscale not in body
    studies = client.get(url("study", "changelist"))
    assert rows(studies) == [scene.verdi]
    assert PATIENT_CF not in studies.content.decode() and "ROSSI" not in studies.content.decode()
    for q in (PATIENT_CF, "rossi", scene.rossi.accession_number, scene.rossi.study_instance_uid):
        assert rows(client.get(url("study", "changelist"), {"q": q})) == [], q
    assert rows(client.get(url("patient", "changelist"), {"q": PATIENT_CF})) == []
    assert rows(client.get(url("patient", "changelist"), {"q": "12/03/1956"})) == []
    assert missing_answer(client, "patient", scene.rossi.patient_id) == missing_answer(client, "patient", UNKNOWN)
    assert missing_answer(client, "study", scene.rossi.pk) == missing_answer(client, "study", UNKNOWN)
    series = Series.objects.filter(study=scene.rossi).first()
    assert missing_answer(client, "series", series.pk) == missing_answer(client, "series", UNKNOWN)
    assert client.get(url("instance", "header", first_instance(scene.rossi).pk)).status_code == 404
    # Their own authority's study is there, with its header.
    assert client.get(url("study", "change", scene.verdi.pk)).status_code == 200
    assert client.get(url("instance", "header", first_instance(scene.verdi).pk)).status_code == 200


# --- a hidden study and everything below it -------------------------------------------------------


@pytest.mark.parametrize(
    "model, rows_of",
    [
        ("study", lambda s: Study.objects.filter(pk=s.pk)),
        ("series", lambda s: Series.objects.filter(study=s)),
        ("instance", lambda s: Instance.objects.filter(series__study=s)),
        ("copy", lambda s: Copy.objects.filter(instance__series__study=s)),
    ],
)
def test_a_hidden_study_and_its_rows_are_absent_for_regional_staff_too(scene: Scene, model: str, rows_of) -> None:  # type: ignore[no-untyped-def]
    client = client_for(scene.regional, "archive.view_copy")
    mine = set(rows_of(scene.rossi))
    assert mine and mine <= set(rows(client.get(url(model, "changelist"))))

    hide(scene.rossi)

    listed = set(rows(client.get(url(model, "changelist"))))
    assert not listed & mine
    assert listed >= set(rows_of(scene.bianchi)) | set(rows_of(scene.verdi))
    for row in mine:
        assert missing_answer(client, model, row.pk) == missing_answer(client, model, UNKNOWN)


def test_no_count_search_hit_or_filter_choice_reveals_a_hidden_study(scene: Scene) -> None:
    client = client_for(scene.regional)
    # Filled before the hiding: the cached choices must not outlive it.
    assert ("MR", "MR") in _choices(client.get(url("study", "changelist")), "modality")

    hide(scene.verdi)  # the only MR study

    studies = client.get(url("study", "changelist"))
    assert set(rows(studies)) == {scene.rossi, scene.bianchi}
    assert ("MR", "MR") not in _choices(studies, "modality")
    assert ("MR", "MR") not in _choices(client.get(url("series", "changelist")), "modality")
    instances = client.get(url("instance", "changelist"))
    assert not {uid for uid, _label in _choices(instances, "sop_class")} & {
        i.sop_class_uid for i in Instance.objects.filter(series__study=scene.verdi)
    }
    for q in ("VERDI", scene.verdi.accession_number, scene.verdi.study_instance_uid, scene.verdi.dicom_patient_id):
        assert rows(client.get(url("study", "changelist"), {"q": q})) == [], q
    assert rows(client.get(url("study", "changelist"), {"modality": "MR"})) == []
    # The patient is in the regional registry, with no study: nothing says one is hidden.
    (verdi,) = rows(client.get(url("patient", "changelist"), {"q": "verdi"}))
    assert verdi.study_count == 0
    page = client.get(url("patient", "change", verdi.pk)).content.decode()
    assert "UD-SMM" not in page  # no PatientID row of the facility of the hidden study


def _choices(response, parameter: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    for spec in response.context["cl"].filter_specs:
        if getattr(spec, "parameter_name", None) == parameter:
            return list(spec.lookup_choices)
    raise AssertionError(f"no filter {parameter}")


def test_an_identifier_search_does_not_go_through_a_hidden_study(scene: Scene, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from archive.sample_data import PatientInfo
    from tests.access_helpers import _ingest

    # A study whose PatientID is a local number, not a codice fiscale.
    local = _ingest(tmp_path, "local", scene.rep.region.facility, PatientInfo(patient_id="MRN7777", name="NERI^ANNA"))
    client = client_for(scene.regional)
    assert [p.pk for p in rows(client.get(url("patient", "changelist"), {"q": "MRN7777"}))] == [local.patient_id]

    hide(local)

    assert rows(client.get(url("patient", "changelist"), {"q": "MRN7777"})) == []
    page = client.get(url("patient", "change", local.patient_id)).content.decode()
    assert "MRN7777" not in page


def test_an_emergency_access_lifts_the_hiding_for_its_patient_only(scene: Scene) -> None:
    hide(scene.rossi)
    hide(scene.bianchi)
    client = client_for(scene.rep.colleague)
    assert rows(client.get(url("study", "changelist"))) == []

    emergency(scene.rep.colleague, scene.rossi.patient)

    assert rows(client.get(url("study", "changelist"))) == [scene.rossi]
    assert client.get(url("study", "change", scene.rossi.pk)).status_code == 200
    assert client.get(url("instance", "header", first_instance(scene.rossi).pk)).status_code == 200
    assert missing_answer(client, "study", scene.bianchi.pk) == missing_answer(client, "study", UNKNOWN)
    assert client.get(url("instance", "header", first_instance(scene.bianchi).pk)).status_code == 404
    # Someone else's emergency access opens nothing for this user.
    other = client_for(scene.regional)
    assert rows(other.get(url("study", "changelist"))) == [scene.verdi]


def test_revealed_the_study_is_back(scene: Scene) -> None:
    hide(scene.rossi)
    client = client_for(scene.rep.colleague)
    assert rows(client.get(url("study", "changelist"), {"q": "rossi"})) == []
    reveal(scene.rossi)
    assert rows(client.get(url("study", "changelist"), {"q": "rossi"})) == [scene.rossi]


def test_a_conflict_of_a_hidden_study_is_not_there(scene: Scene) -> None:
    instance = first_instance(scene.rossi)
    conflict = InstanceConflict.objects.create(
        reason=InstanceConflict.Reason.DIFFERENT_CONTENT,
        sop_instance_uid=instance.sop_instance_uid,
        study_instance_uid=scene.rossi.study_instance_uid,
        instance=instance,
        study=scene.rossi,
        facility=scene.rossi.facility,
        tier="facility:TS-CAT",
        path="x/y.dcm",
        sha256="c" * 64,
        size=1,
        received_at=timezone.now(),
    )
    # One naming the study only by its UID (not indexed as its study).
    by_uid = InstanceConflict.objects.create(
        reason=InstanceConflict.Reason.DIFFERENT_CONTENT,
        sop_instance_uid="1.2.3.4.5",
        study_instance_uid=scene.rossi.study_instance_uid,
        facility=scene.rossi.facility,
        tier="facility:TS-CAT",
        path="x/z.dcm",
        sha256="d" * 64,
        size=1,
        received_at=timezone.now(),
    )
    client = client_for(scene.rep.colleague, "archive.view_instanceconflict")
    assert set(rows(client.get(url("instanceconflict", "changelist")))) == {conflict, by_uid}
    assert (
        rows(client_for(scene.foreign, "archive.view_instanceconflict").get(url("instanceconflict", "changelist")))
        == []
    )

    hide(scene.rossi)

    assert rows(client.get(url("instanceconflict", "changelist"))) == []
    assert client.get(url("instanceconflict", "header", conflict.pk)).status_code == 404
    assert missing_answer(client, "instanceconflict", by_uid.pk) == missing_answer(client, "instanceconflict", UNKNOWN)


def test_a_delete_page_does_not_name_what_protects_the_row(scene: Scene) -> None:
    signed_report(scene.rep)
    hide(scene.rossi)
    emergency(scene.radiologist, scene.bianchi.patient)
    superuser = User.objects.create_superuser("amministratore", password="x" * 12)
    client = client_for(superuser)
    for page in (
        client.get(url("patient", "delete", scene.rossi.patient_id)),
        client.get(url("facility", "delete", scene.rossi.facility_id)),
        client.get(reverse("admin:auth_user_delete", args=[scene.radiologist.pk])),
    ):
        assert page.status_code == 200
        body = page.content.decode()
        assert "dati collegati" in body
        for text in (str(scene.rossi), scene.rossi.study_instance_uid, "(attivo)", " v1 (", "BIANCHI"):
            assert text not in body, text


def test_a_storage_alert_naming_a_hidden_studys_instance_is_not_there(scene: Scene) -> None:
    naming = StorageAlert.objects.create(
        kind=StorageAlert.Kind.DAMAGED, tier="facility:TS-CAT", path="a/b.dcm", instance=first_instance(scene.rossi)
    )
    nameless = StorageAlert.objects.create(kind=StorageAlert.Kind.MISSING, tier="facility:TS-CAT", path="c/d.dcm")
    client = client_for(scene.rep.colleague, "archive.view_storagealert", "archive.change_storagealert")
    assert set(rows(client.get(url("storagealert", "changelist")))) == {naming, nameless}
    assert set(rows(client_for(scene.foreign, "archive.view_storagealert").get(url("storagealert", "changelist")))) == {
        nameless
    }

    hide(scene.rossi)

    assert set(rows(client.get(url("storagealert", "changelist")))) == {nameless}
    assert missing_answer(client, "storagealert", naming.pk) == missing_answer(client, "storagealert", UNKNOWN)
    # Nor can the acknowledge action reach it.
    client.post(url("storagealert", "changelist"), {"action": "acknowledge", "_selected_action": [naming.pk]})
    naming.refresh_from_db()
    assert naming.acknowledged_at is None


# --- the audit log ----------------------------------------------------------------------------------


def test_the_audit_log_never_tells_that_a_study_is_hidden(scene: Scene) -> None:
    colleague = scene.rep.colleague
    viewer = client_for(scene.regional, "kernel.view_auditevent")
    # Before: someone opened the study; then the patient hid it, revealed it, and a refusal was recorded.
    opened = audit_record(action="study.view", user=colleague, study=scene.rossi)
    assert opened in rows(viewer.get(url("auditevent", "changelist")))

    hide(scene.rossi)
    concealed = audit_record(action="portal.conceal", study=scene.rossi, detail={"concealment": 1})
    refused = audit_record(
        action="study.denied", user=colleague, study=scene.rossi, outcome="denied", detail={"reason": "concealed"}
    )
    by_uid = audit_record(action="dicomweb.retrieve", user=colleague, study_instance_uid=scene.rossi.study_instance_uid)

    listed = set(rows(viewer.get(url("auditevent", "changelist"))))
    assert not listed & {opened, concealed, refused, by_uid}
    for q in (scene.rossi.study_instance_uid, colleague.username):
        assert not set(rows(viewer.get(url("auditevent", "changelist"), {"q": q}))) & {opened, concealed, refused}
    assert missing_answer(viewer, "auditevent", opened.pk) == missing_answer(viewer, "auditevent", UNKNOWN)
    assert "portal.conceal" not in {a for a, _ in _choices(viewer.get(url("auditevent", "changelist")), "action")}

    reveal(scene.rossi)

    listed = set(rows(viewer.get(url("auditevent", "changelist"))))
    assert opened in listed and by_uid in listed
    # The study is visible again, but that it was hidden stays untold.
    assert concealed not in listed and refused not in listed


def test_the_audit_log_of_another_authoritys_patients_is_not_shown(scene: Scene) -> None:
    event = audit_record(action="study.view", user=scene.radiologist, study=scene.rossi)
    patient_only = audit_record(action="cup.patient.create", patient=scene.bianchi.patient)
    viewer = client_for(scene.foreign, "kernel.view_auditevent")
    listed = set(rows(viewer.get(url("auditevent", "changelist"))))
    assert not listed & {event, patient_only}
    assert event in set(
        rows(client_for(scene.radiologist, "kernel.view_auditevent").get(url("auditevent", "changelist")))
    )


# --- audited with the patients they returned ---------------------------------------------------------


def test_admin_lists_are_audited_with_the_patients_they_showed(scene: Scene) -> None:
    client = client_for(scene.rep.colleague)
    response = client.get(url("study", "changelist"), {"q": "TSC26"})
    assert set(rows(response)) == {scene.rossi, scene.bianchi}
    event = AuditEvent.objects.filter(action="admin.study.list").latest("id")
    assert sorted(event.detail["patients"]) == sorted([scene.rossi.patient_id, scene.bianchi.patient_id])
    assert event.detail["patients_total"] == 2 and event.detail["q"] == "TSC26"

    client.get(url("patient", "changelist"), {"q": "rossi"})
    event = AuditEvent.objects.filter(action="admin.patient.list").latest("id")
    assert event.detail["patients"] == [scene.rossi.patient_id]
    client.get(url("instance", "changelist"), {"q": scene.bianchi.study_instance_uid})
    event = AuditEvent.objects.filter(action="admin.instance.list").latest("id")
    assert event.detail["patients"] == [scene.bianchi.patient_id] and event.detail["patients_total"] == 1
    signed_report(scene.rep)
    client.get(url("report", "changelist"))
    event = AuditEvent.objects.filter(action="admin.report.list").latest("id")
    assert event.detail["patients"] == [scene.rossi.patient_id]


def test_the_patients_of_a_list_are_bounded(scene: Scene, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_AUDIT_MAX_PATIENTS = 1
    client_for(scene.regional).get(url("patient", "changelist"))
    event = AuditEvent.objects.filter(action="admin.patient.list").latest("id")
    assert len(event.detail["patients"]) == 1 and event.detail["patients_total"] == 3


# --- concealments, emergency accesses, delegations ----------------------------------------------------


@pytest.mark.parametrize("model", [Concealment, EmergencyAccess, Delegation])
def test_concealments_emergency_accesses_and_delegations_are_not_in_the_admin(db: None, model: type) -> None:
    # Decided: nobody reads them here. The citizen sees their concealments and who
    # accessed their record (with the emergency reason) in the portal; the desk
    # manages delegations on its own pages; the audit trail keeps every one.
    assert model not in admin.site._registry
    with pytest.raises(NoReverseMatch):
        reverse(f"admin:portal_{model._meta.model_name}_changelist")


def test_staff_without_the_study_permission_see_no_patient_data(scene: Scene) -> None:
    user = User.objects.create_user("segreteria", password="x" * 12, is_staff=True)
    client = client_for(user, "archive.view_patient", "archive.view_series", "archive.view_report")
    assert rows(client.get(url("patient", "changelist"))) == []
    assert rows(client.get(url("series", "changelist"))) == []
    assert rows(client.get(url("report", "changelist"))) == []
    assert Patient.objects.count() == 3 and Report.objects.count() == 0
