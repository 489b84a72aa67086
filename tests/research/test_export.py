"""Anonymised exports for teaching and research: the Basic Profile over every element of every
file, pseudonyms consistent within a project, the options, burned-in text, hidden studies,
the key table's readers, the audit."""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from archive.models import Instance
from kernel.errors import NotFound
from kernel.models import AuditEvent
from portal.models import Concealment
from research import profile, services
from research.models import Export, PseudonymKey
from tests.research.helpers import (
    BIANCHI_CF,
    DEVICE,
    IDENTIFYING,
    PASSWORD,
    Scene,
    export_run,
    make_user,
    project_make,
    zip_datasets,
    zip_text,
)
from tests.research.helpers import scene as scene  # noqa: F401  (the fixture)

# Values the library's D/Z actions leave: dummies, not data.
DUMMIES = {"", "ANONYMIZED", "00010101", "00010101010101.000000+0000", "000000.00", "0", "000Y"}
# What the export itself writes: the pseudonym and the de-identification's own record.
WRITTEN = {"PatientName", "PatientID", "PatientIdentityRemoved", "DeidentificationMethod"}


def _elements(ds: Dataset) -> list[tuple[Dataset, DataElement]]:
    """Every element of ``ds`` at any depth, with the dataset that holds it."""
    found = []
    for elem in ds:
        found.append((ds, elem))
        if elem.VR == "SQ":
            for item in elem.value:
                found += _elements(item)
    return found


def _uids(ds: Dataset) -> set[str]:
    out = set()
    for _holder, elem in _elements(ds):
        if elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            out |= {str(v) for v in values}
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)] if value is not None else []


def _export(scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any, **criteria: str) -> Export:
    return export_run(
        scene.project,
        scene.researcher,
        criteria or {"study_uid": scene.study.study_instance_uid},
        capture=django_capture_on_commit_callbacks,
        enqueued=enqueued,
    )


def test_an_export_leaves_no_identifying_attribute_of_the_profiles_table_in_any_file(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any
) -> None:
    originals = [dcmread(p) for p in scene.files]
    original_uids = set().union(*(_uids(ds) for ds in originals)) - {
        str(ds.SOPClassUID) for ds in originals
    }  # SOP classes are kept: they say what the object is, not whose
    original_uids -= {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}  # transfer syntaxes
    export = _export(scene, django_capture_on_commit_callbacks, enqueued)

    assert export.status == Export.Status.READY
    outputs = zip_datasets(export)
    assert len(outputs) == 2  # 2 CT images; the burned-in CT and the ultrasound are left out
    key = PseudonymKey.objects.get(project=scene.project, patient=scene.study.patient)
    secrets_written = {key.pseudonym}
    words = [*IDENTIFYING.values(), *DEVICE.values(), "BIANCHI", "LAURA", "RP-777", "SPS-777", "MARCO"]
    checked = 0
    for name, ds in outputs.items():
        assert name.startswith(f"{key.pseudonym}/")
        for _holder, elem in [*_elements(ds.file_meta), *_elements(ds)]:
            checked += 1
            assert not elem.tag.is_private, f"{name}: private {elem.tag} kept"
            values = _strings(elem.value) if elem.VR not in ("SQ", "OB", "OW", "UN") else []
            for value in values:
                for word in words:
                    assert word.upper() not in value.upper(), f"{name}: {elem.keyword} keeps {word!r}"
            if elem.VR == "UI":
                assert not set(values) & original_uids, f"{name}: {elem.keyword} keeps an original UID"
            code = profile.table_code(elem.tag)
            if code is None or elem.keyword in WRITTEN or elem.VR in ("SQ", "UI"):
                continue
            if elem.VR in ("DA", "DT"):
                # Retain Longitudinal Temporal Information with Modified Dates: shifted, never the original.
                for value in values:
                    assert value in DUMMIES or not value.startswith("20260312"), f"{elem.keyword} = {value}"
                continue
            if elem.VR == "TM":
                continue  # times of day are kept with whole-day shifts
            assert set(values) <= DUMMIES, f"{name}: {elem.keyword} ({code}) = {values}"
        for keyword in IDENTIFYING:
            if keyword not in WRITTEN:
                assert ds.get(keyword, "") in ("", "ANONYMIZED", "00010101", None), keyword
        assert ds.PatientName == ds.PatientID == key.pseudonym
        assert ds.PatientIdentityRemoved == "YES"
        assert "113100" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
        # The de-identified dates are the patient's own shift: intervals hold.
        assert ds.StudyDate == (dt.date(2026, 3, 12) + dt.timedelta(days=key.date_shift_days)).strftime("%Y%m%d")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert checked > 150
    assert key.pseudonym not in {*IDENTIFYING.values()} and secrets_written

    # References between instances still hold with the new UIDs.
    by_number = {int(ds.InstanceNumber): ds for ds in outputs.values()}
    assert by_number[2].ReferencedImageSequence[0].ReferencedSOPInstanceUID == by_number[1].SOPInstanceUID
    assert len({ds.StudyInstanceUID for ds in outputs.values()}) == 1

    # The burned-in ones are listed, with the reason, on the page and in the zip.
    reasons = sorted(row["reason"] for row in export.summary["excluded"])
    assert reasons == sorted([services.BURNED_IN_REASONS["stated"], services.BURNED_IN_REASONS["ultrasound"]])
    readme = zip_text(export, services.SUMMARY)
    assert "Burned In Annotation = YES" in readme and "ecografia" in readme
    assert BIANCHI_CF not in readme and "BIANCHI" not in readme


def test_the_same_patient_gets_the_same_pseudonym_in_a_project_and_another_in_another_project(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any
) -> None:
    first = _export(scene, django_capture_on_commit_callbacks, enqueued)
    # The second export reaches the same study by a query: the patient's codice fiscale.
    second = _export(scene, django_capture_on_commit_callbacks, enqueued, patient=BIANCHI_CF)
    a = sorted(zip_datasets(first).values(), key=lambda d: int(d.InstanceNumber))
    b = sorted(zip_datasets(second).values(), key=lambda d: int(d.InstanceNumber))
    assert [d.PatientID for d in a] == [d.PatientID for d in b]
    assert a[0].PatientName == b[0].PatientName
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].StudyDate == b[0].StudyDate  # the same date shift
    assert PseudonymKey.objects.filter(project=scene.project).count() == 1

    other_project = project_make(scene.researcher, code="RIC-ALTRO", retain_dates_modified=True)
    third = export_run(
        other_project,
        scene.researcher,
        {"study_uid": scene.study.study_instance_uid},
        capture=django_capture_on_commit_callbacks,
        enqueued=enqueued,
    )
    c = sorted(zip_datasets(third).values(), key=lambda d: int(d.InstanceNumber))
    assert c[0].PatientID != a[0].PatientID
    assert c[0].SOPInstanceUID != a[0].SOPInstanceUID and c[0].StudyInstanceUID != a[0].StudyInstanceUID

    # Another patient in the first project: another pseudonym.
    fourth = _export(scene, django_capture_on_commit_callbacks, enqueued, study_uid=scene.other.study_instance_uid)
    d = next(iter(zip_datasets(fourth).values()))
    assert d.PatientID != a[0].PatientID
    assert PseudonymKey.objects.filter(project=scene.project).count() == 2


def test_a_query_exports_every_visible_study_it_matches(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any
) -> None:
    export = _export(
        scene,
        django_capture_on_commit_callbacks,
        enqueued,
        modality="CT",
        date_from="2026-03-01",
        date_to="2026-03-31",
        facility="TS-CAT",
    )
    assert export.summary["studies"] == 2 and export.summary["patients"] == 2
    assert len({d.PatientID for d in zip_datasets(export).values()}) == 2
    with pytest.raises(NotFound):  # the same query a month later matches nothing
        services.export_request(
            project=scene.project, user=scene.researcher, criteria={"modality": "CT", "date_from": "2026-04-01"}
        )

    with pytest.raises(services.ExportError):
        services.export_request(project=scene.project, user=scene.researcher, criteria={})
    with pytest.raises(services.ExportError):
        services.export_request(project=scene.project, user=scene.researcher, criteria={"date_from": "ieri"})
    assert Export.objects.count() == 1


@pytest.mark.parametrize("option", ["device", "dates", "characteristics", "descriptors"])
def test_the_options_change_what_is_kept(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any, option: str
) -> None:
    flag = {
        "device": "retain_device_identity",
        "dates": "retain_dates_modified",
        "characteristics": "retain_patient_characteristics",
        "descriptors": "clean_descriptors",
    }[option]
    results = {}
    for on in (True, False):
        options = {name: False for name in profile.METHOD_CODES if name != "clean_pixel_data"} | {flag: on}
        project = project_make(scene.researcher, code=f"OPT-{option[:4]}-{int(on)}", **options)
        export = export_run(
            project,
            scene.researcher,
            {"study_uid": scene.study.study_instance_uid},
            capture=django_capture_on_commit_callbacks,
            enqueued=enqueued,
        )
        results[on] = next(d for d in zip_datasets(export).values() if int(d.InstanceNumber) == 1)
        codes = [item.CodeValue for item in results[on].DeidentificationMethodCodeSequence]
        assert (profile.METHOD_CODES[flag][0] in codes) is on
    kept, removed = results[True], results[False]
    if option == "device":
        assert kept.StationName == DEVICE["StationName"] and kept.DeviceSerialNumber == DEVICE["DeviceSerialNumber"]
        assert removed.get("StationName", "") in ("", "ANONYMIZED")
        assert removed.get("DeviceSerialNumber", "") in ("", "ANONYMIZED")
    elif option == "dates":
        assert (
            kept.StudyDate not in ("20260312", "00010101", "")
            and kept.LongitudinalTemporalInformationModified == "MODIFIED"
        )
        assert removed.StudyDate in ("", "00010101")
        assert removed.get("AcquisitionDateTime", "") in ("", "00010101010101.000000+0000")
    elif option == "characteristics":
        assert kept.PatientAge == "053Y" and kept.PatientSex == "F" and str(kept.PatientWeight) == "61"
        assert "PatientAge" not in removed and removed.PatientSex == ""
    else:
        assert kept.StudyDescription == "TC torace controllo"  # no name, no date
        assert kept.SeriesDescription == "Torace"  # no codice fiscale
        assert "StudyDescription" not in removed and "SeriesDescription" not in removed


def test_a_hidden_study_is_refused_as_one_that_does_not_exist(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any, settings: Any
) -> None:
    settings.SESSION_COOKIE_SECURE = False
    Concealment.objects.create(patient=scene.study.patient, study=scene.study)
    with pytest.raises(NotFound) as hidden:
        services.export_request(
            project=scene.project, user=scene.researcher, criteria={"study_uid": scene.study.study_instance_uid}
        )
    with pytest.raises(NotFound) as missing:
        services.export_request(project=scene.project, user=scene.researcher, criteria={"study_uid": "1.2.3.4.5"})
    assert hidden.value.code == missing.value.code

    client = Client()
    client.force_login(scene.researcher)  # type: ignore[arg-type]
    url = f"/ricerca/progetti/{scene.project.pk}/"
    hidden_page = client.post(url, {"study_uid": scene.study.study_instance_uid})
    missing_page = client.post(url, {"study_uid": "1.2.3.4.5"})
    assert hidden_page.status_code == missing_page.status_code == 404

    def page_text(response: Any, uid: str) -> str:
        text = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", response.content.decode())
        return text.replace(uid, "UID")

    assert page_text(hidden_page, scene.study.study_instance_uid) == page_text(missing_page, "1.2.3.4.5")
    assert "Nessuno studio corrisponde" in hidden_page.content.decode()
    # Another health authority's radiologist: the same answer for a study that is not concealed.
    from archive.models import HealthAuthority, StaffProfile

    Concealment.objects.filter(study=scene.other).delete()
    friuli = HealthAuthority.objects.create(code="ASUFC", name="Azienda sanitaria universitaria Friuli Centrale")
    StaffProfile.objects.create(user=scene.colleague, authority=friuli)
    with pytest.raises(NotFound):
        services.export_request(
            project=scene.project, user=scene.colleague, criteria={"study_uid": scene.other.study_instance_uid}
        )
    # A query over the patient's studies leaves it out as well.
    with pytest.raises(NotFound):
        services.export_request(project=scene.project, user=scene.researcher, criteria={"patient": BIANCHI_CF})
    assert not Export.objects.exists() and not PseudonymKey.objects.exists()
    denied = AuditEvent.objects.filter(action="research.export.request", outcome="denied")
    assert denied.count() == 6

    # Concealed between the request and the build: left out of the zip, counted without a name.
    Concealment.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=True):
        export = services.export_request(project=scene.project, user=scene.researcher, criteria={"facility": "TS-CAT"})
    Concealment.objects.create(patient=scene.study.patient, study=scene.study)
    enqueued.run()
    export.refresh_from_db()
    assert export.summary["studies"] == 1 and export.summary["left_out_studies"] == 1
    assert {d.PatientID for d in zip_datasets(export).values()} == {
        PseudonymKey.objects.get(patient=scene.other.patient).pseudonym
    }


def test_the_key_table_is_read_only_by_the_data_protection_role(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any, settings: Any
) -> None:
    settings.SESSION_COOKIE_SECURE = False
    _export(scene, django_capture_on_commit_callbacks, enqueued)
    key = PseudonymKey.objects.get()
    superuser = get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    # Holding the secret's own view permission is not the role.
    half = make_user("curioso", groups=("Didattica e ricerca",), perms=("research.view_projectsecret",))

    def client_for(user: object) -> Client:
        client = Client()
        client.force_login(user)  # type: ignore[arg-type]
        return client

    pages = [
        f"/ricerca/progetti/{scene.project.pk}/chiavi/",
        "/admin/research/pseudonymkey/",
        f"/admin/research/pseudonymkey/{key.pk}/change/",
        "/admin/research/projectsecret/",
    ]
    for user in (scene.researcher, scene.colleague, half):
        client = client_for(user)
        for page in pages:
            response = client.get(page)
            assert response.status_code in (403, 302), (user, page, response.status_code)
            assert BIANCHI_CF not in response.content.decode()
        project_page = client.get(f"/ricerca/progetti/{scene.project.pk}/")
        assert project_page.status_code == 200 and pages[0] not in project_page.content.decode()
    for user in (scene.dpo, superuser):
        client = client_for(user)
        keys = client.get(pages[0])
        assert (
            keys.status_code == 200 and BIANCHI_CF in keys.content.decode() and key.pseudonym in keys.content.decode()
        )
        assert BIANCHI_CF in client.get(pages[1]).content.decode()
        assert pages[0] in client.get(f"/ricerca/progetti/{scene.project.pk}/").content.decode()
        assert client.get(pages[3]).status_code == 200
    # The export's criteria (here the study's UID; a codice fiscale when typed) are not in the admin.
    export = Export.objects.get()
    for user in (scene.researcher, scene.dpo):
        response = client_for(user).get(f"/admin/research/export/{export.pk}/change/")
        assert response.status_code == 200
        assert scene.study.study_instance_uid not in response.content.decode()
    # Every reading and every refusal is in the audit log, the readings with the patient.
    readings = AuditEvent.objects.filter(action="research.keys.view", outcome="success")
    assert readings.count() == 4 and all(scene.study.patient_id in e.detail["patients"] for e in readings)
    assert AuditEvent.objects.filter(action="research.keys.view", outcome="denied").count() == 3


def test_the_export_is_audited_and_downloaded_by_its_requester_only(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any, settings: Any
) -> None:
    settings.SESSION_COOKIE_SECURE = False
    client = Client()
    client.force_login(scene.researcher)  # type: ignore[arg-type]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/ricerca/progetti/{scene.project.pk}/", {"modality": "CT"})
    assert response.status_code == 302
    export = Export.objects.get()
    assert response["Location"] == f"/ricerca/esportazioni/{export.pk}/"
    assert client.get(response["Location"] + "?format=json").json()["status"] == "queued"
    enqueued.run()
    export.refresh_from_db()
    status = client.get(response["Location"] + "?format=json").json()
    assert status["status"] == "ready" and status["percent"] == 100
    patients = {scene.study.patient_id, scene.other.patient_id}
    for action in ("research.export.request", "research.export"):
        event = AuditEvent.objects.get(action=action)
        assert set(event.detail["patients"]) == patients and event.user_id == scene.researcher.pk  # type: ignore[attr-defined]

    page = client.get(response["Location"])
    assert "Scarica lo zip" in page.content.decode()
    download = client.get(status["download_url"])
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    body = b"".join(download.streaming_content)  # type: ignore[attr-defined]
    assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None
    assert set(AuditEvent.objects.get(action="research.export.download").detail["patients"]) == patients

    other = Client()
    other.force_login(scene.colleague)  # type: ignore[arg-type]
    assert other.get(response["Location"]).status_code == 404
    assert other.get(status["download_url"]).status_code == 404
    assert AuditEvent.objects.filter(action="research.export.download").count() == 1

    # A redelivered build does nothing: the export is finished.
    from research.tasks import export_build

    assert export_build(export.pk) == "skipped"
    # Nothing half-written is left beside the zip.
    assert [p.name for p in (settings.PACS_RESEARCH_EXPORT_DIR).iterdir()] == [export.path.split("/")[-1]]
    assert Instance.objects.count() == 8


def test_nobody_without_the_permissions_reaches_the_pages(scene: Scene, settings: Any) -> None:
    settings.SESSION_COOKIE_SECURE = False
    client = Client()
    client.force_login(make_user("segreteria", perms=("archive.view_study",)))  # type: ignore[arg-type]
    assert client.get("/ricerca/").status_code == 403
    assert client.post(f"/ricerca/progetti/{scene.project.pk}/", {"modality": "CT"}).status_code == 403
    assert Client().get("/ricerca/").status_code == 302  # to the login page
    assert not Export.objects.exists()


def test_an_export_lost_with_the_broker_or_a_killed_worker_is_built_by_the_sweep(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any, settings: Any
) -> None:
    from django.utils import timezone

    from research.tasks import export_build_sweep
    from tests.conftest import broker_down

    with broker_down() as lost, django_capture_on_commit_callbacks(execute=True):
        export = services.export_request(
            project=scene.project, user=scene.researcher, criteria={"study_uid": scene.study.study_instance_uid}
        )
    assert lost == ["research.tasks.export_build"]
    assert export_build_sweep() == 0  # not overdue yet
    Export.objects.filter(pk=export.pk).update(requested_at=timezone.now() - services.STALE * 2)
    assert export_build_sweep() == 1
    enqueued.run()
    export.refresh_from_db()
    assert export.status == Export.Status.READY

    # A build whose worker died mid-zip: its heartbeat stops, its temporary file stays behind.
    with django_capture_on_commit_callbacks(execute=True):
        second = services.export_request(project=scene.project, user=scene.researcher, criteria={"modality": "US"})
    enqueued.messages.clear()
    dead_at = timezone.now() - services.STALE * 2
    Export.objects.filter(pk=second.pk).update(status=Export.Status.RUNNING, heartbeat_at=dead_at, done=1)
    part = settings.PACS_RESEARCH_EXPORT_DIR / f".export-{scene.project.code}-{second.pk}.zip.abc.part"
    part.write_bytes(b"PK half")
    alive = Export.objects.create(project=scene.project, requested_by=scene.researcher, status="running")
    Export.objects.filter(pk=alive.pk).update(heartbeat_at=timezone.now())
    assert export_build_sweep() == 1 and not part.exists()
    enqueued.run()
    second.refresh_from_db()
    alive.refresh_from_db()
    assert second.status == Export.Status.READY and alive.status == Export.Status.RUNNING


def test_clean_pixel_data_blanks_the_configured_boxes_and_keeps_the_image(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any
) -> None:
    from research.forms import regions_parse

    original = next(dcmread(p) for p in scene.files if dcmread(p, stop_before_pixels=True).Modality == "US")
    assert (original.Columns, original.Rows) == (800, 350)
    assert original.pixel_array[:40].any()  # there is something to blank
    regions = regions_parse("us 800x350: 0,0,800,40; 700,300,100,50")
    project = project_make(scene.researcher, code="RIC-ECO", pixel_regions=regions)
    export = export_run(
        project,
        scene.researcher,
        {"study_uid": scene.study.study_instance_uid},
        capture=django_capture_on_commit_callbacks,
        enqueued=enqueued,
    )
    outputs = zip_datasets(export)
    us = next(d for d in outputs.values() if d.Modality == "US")
    pixels = us.pixel_array
    assert not pixels[:40].any() and not pixels[300:350, 700:800].any()
    assert (pixels[40:300] == original.pixel_array[40:300]).all()  # the rest is the image as it was
    assert us.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in us.DeidentificationMethodCodeSequence]
    # The CT that says YES has no configured region for its size: still left out.
    assert [row["reason"] for row in export.summary["excluded"]] == [services.BURNED_IN_REASONS["stated"]]
    assert "clean_pixel_data" in export.summary["options"]


def test_a_project_with_a_bad_region_is_refused_and_not_created(scene: Scene, settings: Any) -> None:
    settings.SESSION_COOKIE_SECURE = False
    client = Client()
    client.force_login(scene.researcher)  # type: ignore[arg-type]
    form = {"code": "ric-nuovo", "title": "Nuovo", "purpose": "Didattica.", "retain_dates_modified": "on"}
    for bad in ("US 800x350 0,0,10,10", "US 800x350: 0,0,900,10", "US 800x350: a,b,c,d"):
        response = client.post("/ricerca/", {**form, "regions": bad})
        assert response.status_code == 200 and "Riga 1" in response.content.decode()
    assert not scene.project.__class__.objects.filter(code="RIC-NUOVO").exists()
    created = client.post("/ricerca/", {**form, "regions": "US 800x350: 0,0,800,40"})
    project = scene.project.__class__.objects.get(code="RIC-NUOVO")
    assert created["Location"] == f"/ricerca/progetti/{project.pk}/"
    assert project.pixel_regions == [{"modality": "US", "columns": 800, "rows": 350, "boxes": [[0, 0, 800, 40]]}]
    assert project.retain_dates_modified and not project.retain_device_identity
    assert AuditEvent.objects.filter(action="research.project.create").count() == 2


def test_an_export_that_cannot_read_an_instance_fails_and_leaves_no_file(
    scene: Scene, django_capture_on_commit_callbacks: Any, enqueued: Any, settings: Any
) -> None:
    from archive.models import Copy
    from archive.storage import tiers

    copy = Copy.objects.filter(instance__series__study=scene.study).order_by("instance__instance_number").last()
    assert copy is not None
    tiers.absolute_path(copy.tier, copy.path).unlink()
    with django_capture_on_commit_callbacks(execute=True):
        export = services.export_request(
            project=scene.project, user=scene.researcher, criteria={"study_uid": scene.study.study_instance_uid}
        )
    with pytest.raises(Exception, match=copy.instance.sop_instance_uid):
        enqueued.run()
    export.refresh_from_db()
    assert export.status == Export.Status.FAILED and copy.instance.sop_instance_uid in export.error
    assert not export.path and not list(settings.PACS_RESEARCH_EXPORT_DIR.iterdir())
    assert not AuditEvent.objects.filter(action="research.export").exists()
    client = Client()
    client.force_login(scene.researcher)  # type: ignore[arg-type]
    settings.SESSION_COOKIE_SECURE = False
    assert "non è riuscita" in client.get(f"/ricerca/esportazioni/{export.pk}/").content.decode()
