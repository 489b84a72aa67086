"""The archive's admin: browsing, search, read-only index rows, the DICOM header
page, conflict resolution and the audit events every view of patient data writes.

Data enters as in production: real DICOM files through ``instance_ingest``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.test import Client
from django.urls import NoReverseMatch, reverse
from pydicom import dcmread

from archive.dicom_header import dataset_rows, format_value, read_header
from archive.ingest import CONFLICT, instance_ingest
from archive.models import Copy, Instance, InstanceConflict, Study
from archive.sample_data import MR, PatientInfo, write_study
from archive.storage import tiers as storage
from kernel.audit import audit_record
from kernel.models import AuditEvent

CF = "RSSMRA85T10A562S"


@dataclass
class Archive:
    study: Study  # Rossi, PatientID MRN0001, ACC1, CT, 2 series x 2 instances
    other: Study  # Bianchi, PatientID MRN0002, ACC2, MR
    cf_study: Study  # PatientID is a codice fiscale
    files: list[Path]


def _ingest(path: Path, facility) -> None:  # type: ignore[no-untyped-def]
    instance_ingest(path=path, facility=facility, owned=False, calling_ae="CT01")


@pytest.fixture(autouse=True)
def _fresh_lookups() -> None:
    # Filter choices are cached across requests; each test has its own database.
    cache.clear()


@pytest.fixture
def archive(region, tmp_path: Path) -> Archive:  # type: ignore[no-untyped-def]
    rossi = write_study(
        tmp_path / "rossi",
        patient=PatientInfo(patient_id="MRN0001", name="Rossi^Mario", birth_date="19700101"),
        series=2,
        instances_per_series=2,
        accession_number="ACC1",
        study_description="TC torace",
        extra={"TextValue": "y" * 20000, "ImageComments": "commento " * 50 + "fine"},
    )
    bianchi = write_study(
        tmp_path / "bianchi",
        patient=PatientInfo(patient_id="MRN0002", name="Bianchi^Anna", birth_date="19801231", sex="F"),
        source=MR,
        instances_per_series=1,
        accession_number="ACC2",
        study_description="<script>alert(1)</script>",
    )
    verdi = write_study(
        tmp_path / "cf",
        patient=PatientInfo(patient_id=CF, name="Rossi^Mario", birth_date="19851210"),
        instances_per_series=1,
        accession_number="ACC3",
    )
    for p in [*rossi, *bianchi, *verdi]:
        _ingest(p, region.facility)
    return Archive(
        study=Study.objects.get(accession_number="ACC1"),
        other=Study.objects.get(accession_number="ACC2"),
        cf_study=Study.objects.get(accession_number="ACC3"),
        files=rossi,
    )


def _staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="x" * 12, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label__in=("archive", "kernel"), codename__in=codenames)
    )
    return user


VIEW_ALL = (
    "view_healthauthority",
    "view_facility",
    "view_remotenode",
    "view_patient",
    "view_study",
    "view_series",
    "view_instance",
    "view_copy",
    "view_instanceconflict",
    "view_auditevent",
)


@pytest.fixture
def viewer_client(db: None) -> Client:
    client = Client()
    client.force_login(_staff("lettore", *VIEW_ALL))
    return client


# The audit log's rows are the kernel's models; the rest are the archive's.
KERNEL_MODELS = {"auditevent"}


def _url(model: str, view: str, *args: object) -> str:
    app = "kernel" if model in KERNEL_MODELS else "archive"
    return reverse(f"admin:{app}_{model}_{view}", args=args)


def _header_url(instance: Instance) -> str:
    return _url("instance", "header", instance.pk)


def _first_instance(study: Study) -> Instance:
    return Instance.objects.filter(series__study=study).order_by("series__series_number", "instance_number").first()


def _events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def _results(response) -> list:  # type: ignore[no-untyped-def]
    return list(response.context["cl"].result_list)


# --- Lists and search -----------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "healthauthority",
        "facility",
        "remotenode",
        "patient",
        "patientidentifier",
        "study",
        "series",
        "instance",
        "copy",
        "instanceconflict",
        "auditevent",
    ],
)
def test_every_list_page_renders(admin_client: Client, archive: Archive, model: str) -> None:
    if model == "patientidentifier":
        # Shown inline under the patient, not on its own.
        with pytest.raises(NoReverseMatch):
            _url(model, "changelist")
        return
    response = admin_client.get(_url(model, "changelist"))
    assert response.status_code == 200


def test_site_header_is_italian(admin_client: Client, db: None) -> None:
    response = admin_client.get(reverse("admin:index"))
    assert "PACS regionale — amministrazione" in response.content.decode()


def test_study_list_shows_the_columns(admin_client: Client, archive: Archive) -> None:
    response = admin_client.get(_url("study", "changelist"))
    body = response.content.decode()
    assert response.status_code == 200
    assert set(_results(response)) == {archive.study, archive.other, archive.cf_study}
    for text in ("MRN0001", "ACC1", "Rossi Mario", "TC torace", "TS-CAT", "Bianchi Anna"):
        assert text in body
    # A description from the modality is data: escaped, never markup.
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


@pytest.mark.parametrize(
    "query, expected",
    [
        ("MRN0001", {"study"}),
        ("mrn0002", {"other"}),
        ("ACC1", {"study"}),
        ("Bianchi", {"other"}),
        ("Rossi Mario", {"study", "cf_study"}),
        ("rssmra85", {"cf_study"}),
    ],
)
def test_study_search(admin_client: Client, archive: Archive, query: str, expected: set[str]) -> None:
    response = admin_client.get(_url("study", "changelist"), {"q": query})
    assert response.status_code == 200
    assert set(_results(response)) == {getattr(archive, name) for name in expected}


def test_study_search_by_study_instance_uid(admin_client: Client, archive: Archive) -> None:
    response = admin_client.get(_url("study", "changelist"), {"q": archive.other.study_instance_uid})
    assert _results(response) == [archive.other]


def test_study_filters(admin_client: Client, archive: Archive, region) -> None:  # type: ignore[no-untyped-def]
    url = _url("study", "changelist")
    assert set(_results(admin_client.get(url, {"modality": "MR"}))) == {archive.other}
    assert set(_results(admin_client.get(url, {"modality": "CT"}))) == {archive.study, archive.cf_study}
    assert _results(admin_client.get(url, {"facility__id__exact": region.other_facility.pk})) == []
    # Nothing ran the post-ingest work in these tests: all three are pending.
    assert len(_results(admin_client.get(url, {"post_ingest_pending__exact": "1"}))) == 3
    assert _results(admin_client.get(url, {"post_ingest_pending__exact": "0"})) == []
    day = archive.study.study_date
    response = admin_client.get(
        url, {"study_date__year": day.year, "study_date__month": day.month, "study_date__day": day.day}
    )
    assert len(_results(response)) == 3


def test_study_modality_filter_matches_whole_codes(admin_client: Client, archive: Archive) -> None:
    Study.objects.filter(pk=archive.other.pk).update(modalities_in_study="CTX\\MR")
    response = admin_client.get(_url("study", "changelist"), {"modality": "CT"})
    assert archive.other not in _results(response)
    Study.objects.filter(pk=archive.other.pk).update(modalities_in_study="SR\\CT\\MR")
    response = admin_client.get(_url("study", "changelist"), {"modality": "CT"})
    assert archive.other in _results(response)


def test_series_and_instance_lists_search_and_filter(admin_client: Client, archive: Archive) -> None:
    series = archive.study.series.order_by("series_number").first()
    response = admin_client.get(_url("series", "changelist"), {"q": series.series_instance_uid})
    assert _results(response) == [series]
    response = admin_client.get(_url("series", "changelist"), {"modality": "MR"})
    assert [s.study for s in _results(response)] == [archive.other]

    instance = _first_instance(archive.study)
    url = _url("instance", "changelist")
    assert _results(admin_client.get(url, {"q": instance.sop_instance_uid})) == [instance]
    assert len(_results(admin_client.get(url, {"q": archive.study.study_instance_uid}))) == 4
    assert len(_results(admin_client.get(url, {"series__id__exact": series.pk}))) == 2
    mr = _results(admin_client.get(url, {"modality": "MR"}))
    assert [i.series.study for i in mr] == [archive.other]
    by_class = _results(admin_client.get(url, {"sop_class": instance.sop_class_uid}))
    assert len(by_class) == 5  # the CT instances; MR has its own class
    by_ts = _results(admin_client.get(url, {"transfer_syntax": instance.transfer_syntax_uid}))
    assert len(by_ts) == Instance.objects.filter(transfer_syntax_uid=instance.transfer_syntax_uid).count() > 0
    body = admin_client.get(url).content.decode()
    assert "CT Image Storage" in body  # SOP class by name


def test_patient_search_and_provisional_filter(admin_client: Client, archive: Archive) -> None:
    url = _url("patient", "changelist")
    rossi = archive.study.patient
    bianchi = archive.other.patient
    known = archive.cf_study.patient
    assert _results(admin_client.get(url, {"q": CF.lower()})) == [known]
    assert set(_results(admin_client.get(url, {"q": "rossi"}))) == {rossi, known}
    assert _results(admin_client.get(url, {"q": "31/12/1980"})) == [bianchi]
    assert _results(admin_client.get(url, {"q": "1980-12-31"})) == [bianchi]
    assert _results(admin_client.get(url, {"q": "rossi 01/01/1970"})) == [rossi]
    assert _results(admin_client.get(url, {"q": "MRN0002"})) == [bianchi]
    assert set(_results(admin_client.get(url, {"provisional__exact": "1"}))) == {rossi, bianchi}
    assert _results(admin_client.get(url, {"provisional__exact": "0"})) == [known]


def test_patient_page_shows_identifiers_and_links_studies(admin_client: Client, archive: Archive) -> None:
    patient = archive.study.patient
    response = admin_client.get(_url("patient", "change", patient.pk))
    body = response.content.decode()
    assert response.status_code == 200
    assert "MRN0001" in body  # the PatientIdentifier inline
    assert f"?patient__id__exact={patient.pk}" in body
    studies = admin_client.get(_url("study", "changelist"), {"patient__id__exact": patient.pk})
    assert _results(studies) == [archive.study]


def test_patient_reconciliation_is_saved_normalised_and_audited(admin_client: Client, archive: Archive) -> None:
    patient = archive.study.patient
    response = admin_client.post(
        _url("patient", "change", patient.pk),
        {
            "codice_fiscale": "rssmra70a01l424d",
            "family_name": "Rossi",
            "given_name": "Mario",
            "birth_date": "01/01/1970",
            "sex": "M",
            "provisional": "",
            "identifiers-TOTAL_FORMS": "1",
            "identifiers-INITIAL_FORMS": "1",
            "identifiers-MIN_NUM_FORMS": "0",
            "identifiers-MAX_NUM_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    patient.refresh_from_db()
    assert patient.codice_fiscale == "RSSMRA70A01L424D" and not patient.provisional
    event = AuditEvent.objects.get(action="admin.patient.change")
    assert event.patient_id == patient.pk and set(event.detail["fields"]) >= {"codice_fiscale", "provisional"}


# --- Study, series, instance pages ------------------------------------------------


def test_study_page_shows_its_series_read_only(admin_client: Client, archive: Archive) -> None:
    response = admin_client.get(_url("study", "change", archive.study.pk))
    body = response.content.decode()
    assert response.status_code == 200
    assert archive.study.study_instance_uid in body
    for series in archive.study.series.all():
        assert _url("series", "change", series.pk) in body
        assert f"?series__id__exact={series.pk}" in body
    # View only: no form fields to change, no save, no delete.
    assert 'name="accession_number"' not in body
    assert 'name="_save"' not in body
    assert _url("study", "delete", archive.study.pk) not in body


def test_instance_page_shows_copies_and_links_the_header(admin_client: Client, archive: Archive) -> None:
    instance = _first_instance(archive.study)
    response = admin_client.get(_url("instance", "change", instance.pk))
    body = response.content.decode()
    assert response.status_code == 200
    copy = instance.copies.get()
    assert copy.path in body and "facility:TS-CAT" in body
    assert _header_url(instance) in body


@pytest.mark.parametrize("model", ["study", "series", "instance", "copy", "auditevent"])
def test_ingested_rows_cannot_be_added_changed_or_deleted(admin_client: Client, archive: Archive, model: str) -> None:
    obj = {
        "study": lambda: archive.study,
        "series": lambda: archive.study.series.first(),
        "instance": lambda: _first_instance(archive.study),
        "copy": lambda: Copy.objects.first(),
        "auditevent": lambda: audit_record(action="test.event", system="pytest"),
    }[model]()
    assert admin_client.get(_url(model, "add")).status_code == 403
    assert admin_client.get(_url(model, "delete", obj.pk)).status_code == 403
    assert admin_client.post(_url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
    assert admin_client.post(_url(model, "change", obj.pk), {}).status_code == 403
    changelist = admin_client.get(_url(model, "changelist")).content.decode()
    assert _url(model, "add") not in changelist
    assert "delete_selected" not in changelist
    assert type(obj).objects.filter(pk=obj.pk).exists()


def test_study_list_offers_no_bulk_delete(admin_client: Client, archive: Archive) -> None:
    response = admin_client.post(
        _url("study", "changelist"), {"action": "delete_selected", "_selected_action": [archive.study.pk]}
    )
    assert Study.objects.filter(pk=archive.study.pk).exists()
    assert response.status_code in (200, 302)


# --- The DICOM header page -------------------------------------------------------


def test_header_page_shows_every_element_without_pixel_data(admin_client: Client, archive: Archive) -> None:
    instance = _first_instance(archive.study)
    response = admin_client.get(_header_url(instance))
    body = response.content.decode()
    assert response.status_code == 200
    assert "(0010,0020)" in body and "PatientID" in body and "MRN0001" in body
    assert "(0002,0010)" in body and "TransferSyntaxUID" in body  # the file meta
    assert instance.sop_instance_uid in body
    assert "(7FE0,0010)" not in body  # never read
    # A nested sequence: the item and its elements, indented.
    assert "OtherPatientIDsSequence" in body and "Item #1" in body and "ABCD1234" in body
    assert 'class="dicom-tag dicom-depth-2"' in body
    # Binary values by size, private tags by their creator's dictionary.
    assert "&lt;2068 bytes&gt;" in body
    assert "[Histogram tables]" in body
    # Long values: cut, with the full length; over defer_size: not loaded at all.
    assert "(troncato: 454 caratteri)" in body
    assert "&lt;20000 bytes&gt;" in body and "y" * 300 not in body


def test_header_page_escapes_values(admin_client: Client, archive: Archive) -> None:
    response = admin_client.get(_header_url(_first_instance(archive.other)))
    body = response.content.decode()
    assert response.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<script>alert(1)" not in body


def test_header_page_writes_an_audit_event(admin_client: Client, archive: Archive) -> None:
    instance = _first_instance(archive.study)
    admin_client.get(_header_url(instance))
    [event] = _events("admin.instance.header")
    user = User.objects.get(username="admin")
    assert event.outcome == AuditEvent.Outcome.SUCCESS
    assert event.study_id == archive.study.pk and event.patient_id == archive.study.patient_id
    assert event.study_instance_uid == archive.study.study_instance_uid
    assert event.user_id == user.pk and event.username == "admin"
    assert event.source == "127.0.0.1"
    assert event.detail["copy"].startswith("facility:TS-CAT:studies/")


def test_header_page_needs_staff(client: Client, archive: Archive) -> None:
    url = _header_url(_first_instance(archive.study))
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    user = User.objects.create_user("paziente", password="x" * 12)
    user.user_permissions.set(Permission.objects.filter(codename="view_instance"))
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert not _events("admin.instance.header")


def test_header_page_needs_view_instance(client: Client, archive: Archive) -> None:
    user = _staff("solo-studi", "view_study", "view_series")
    client.force_login(user)
    instance = _first_instance(archive.study)
    response = client.get(_header_url(instance))
    assert response.status_code == 403
    [event] = _events("admin.instance.header")
    assert event.outcome == AuditEvent.Outcome.DENIED and event.user_id == user.pk
    assert event.study_id == archive.study.pk
    # The pages it may see work.
    assert client.get(_url("study", "change", archive.study.pk)).status_code == 200
    assert client.get(_url("instance", "change", instance.pk)).status_code == 403


def test_view_only_staff_browses_and_reads_headers(viewer_client: Client, archive: Archive) -> None:
    instance = _first_instance(archive.study)
    assert viewer_client.get(_url("study", "changelist")).status_code == 200
    assert viewer_client.get(_url("study", "change", archive.study.pk)).status_code == 200
    assert viewer_client.get(_url("instance", "change", instance.pk)).status_code == 200
    assert viewer_client.get(_header_url(instance)).status_code == 200
    assert viewer_client.get(_url("study", "add")).status_code == 403
    assert viewer_client.get(_url("patient", "add")).status_code == 403


def test_missing_file_is_a_clear_error_page(admin_client: Client, archive: Archive) -> None:
    instance = _first_instance(archive.study)
    copy = instance.copies.get()
    storage.absolute_path(copy.tier, copy.path).unlink()
    response = admin_client.get(_header_url(instance))
    body = response.content.decode()
    assert response.status_code == 404
    assert "Nessuna copia leggibile" in body and copy.path in body and "il file non esiste" in body
    [event] = _events("admin.instance.header")
    assert event.outcome == AuditEvent.Outcome.FAILURE and event.study_id == archive.study.pk


def test_instance_without_copies_is_a_clear_error_page(admin_client: Client, archive: Archive) -> None:
    instance = _first_instance(archive.study)
    instance.copies.all().delete()
    response = admin_client.get(_header_url(instance))
    assert response.status_code == 404
    assert "Nessuna copia registrata" in response.content.decode()


def test_unknown_instance_is_a_clear_404(admin_client: Client, archive: Archive) -> None:
    response = admin_client.get(_url("instance", "header", 999999))
    assert response.status_code == 404
    assert "non esiste" in response.content.decode()


def test_damaged_file_is_an_error_page_not_a_traceback(admin_client: Client, archive: Archive) -> None:
    instance = _first_instance(archive.study)
    copy = instance.copies.get()
    path = storage.absolute_path(copy.tier, copy.path)
    path.chmod(0o644)
    path.write_bytes(b"not dicom at all")
    response = admin_client.get(_header_url(instance))
    assert response.status_code == 500
    body = response.content.decode()
    assert "Nessuna copia leggibile" in body and "InvalidDicomError" in body


def test_header_falls_back_to_the_next_copy(admin_client: Client, archive: Archive, region) -> None:  # type: ignore[no-untyped-def]
    instance = _first_instance(archive.study)
    source = next(p for p in archive.files if dcmread(p).SOPInstanceUID == instance.sop_instance_uid)
    _ingest(source, region.other_facility)  # the same bytes: a second copy in GO-SG's tier
    first, second = instance.copies.order_by("pk")
    storage.absolute_path(first.tier, first.path).unlink()
    response = admin_client.get(_header_url(instance))
    body = response.content.decode()
    assert response.status_code == 200
    assert "MRN0001" in body and "facility:GO-SG" in body and "il file non esiste" in body
    assert _events("admin.instance.header")[0].detail["copy"].startswith("facility:GO-SG:")


# --- Audit of the other pages ---------------------------------------------------------


@pytest.mark.parametrize("model", ["patient", "study", "series", "instance"])
def test_detail_pages_write_one_audit_event(admin_client: Client, archive: Archive, model: str) -> None:
    obj = {
        "patient": archive.study.patient,
        "study": archive.study,
        "series": archive.study.series.first(),
        "instance": _first_instance(archive.study),
    }[model]
    before = AuditEvent.objects.count()
    response = admin_client.get(_url(model, "change", obj.pk))
    assert response.status_code == 200
    assert AuditEvent.objects.count() == before + 1
    event = AuditEvent.objects.order_by("-id").first()
    assert event.action == f"admin.{model}.view"
    assert event.patient_id == archive.study.patient_id
    assert event.study_id == (None if model == "patient" else archive.study.pk)
    assert event.username == "admin" and event.source == "127.0.0.1"


@pytest.mark.parametrize("model", ["patient", "study", "series", "instance"])
def test_list_pages_write_one_audit_event_with_the_query(admin_client: Client, archive: Archive, model: str) -> None:
    before = AuditEvent.objects.count()
    response = admin_client.get(_url(model, "changelist"), {"q": "MRN0001"})
    assert response.status_code == 200
    assert AuditEvent.objects.count() == before + 1
    event = AuditEvent.objects.order_by("-id").first()
    assert event.action == f"admin.{model}.list" and event.detail["q"] == "MRN0001"


def test_history_page_is_audited(admin_client: Client, archive: Archive) -> None:
    admin_client.get(_url("patient", "history", archive.study.patient_id))
    [event] = _events("admin.patient.history")
    assert event.patient_id == archive.study.patient_id


def test_audit_events_are_read_only_newest_first_and_filterable(admin_client: Client, archive: Archive) -> None:
    admin_client.get(_header_url(_first_instance(archive.study)))
    Client().get(_header_url(_first_instance(archive.study)))  # anonymous: redirected, no event
    url = _url("auditevent", "changelist")
    rows = _results(admin_client.get(url))
    assert [e.pk for e in rows] == sorted((e.pk for e in rows), reverse=True)
    assert {e.action for e in _results(admin_client.get(url, {"action": "admin.instance.header"}))} == {
        "admin.instance.header"
    }
    assert _results(admin_client.get(url, {"outcome__exact": "denied"})) == []
    assert {e.username for e in _results(admin_client.get(url, {"q": "admin"}))} == {"admin"}
    found = _results(admin_client.get(url, {"q": archive.study.study_instance_uid}))
    assert found and {e.study_id for e in found} == {archive.study.pk}
    event = _events("admin.instance.header")[0]
    response = admin_client.get(_url("auditevent", "change", event.pk))
    assert response.status_code == 200 and event.hash in response.content.decode()
    assert 'name="_save"' not in response.content.decode()


# --- Conflicts ---------------------------------------------------------------------


@pytest.fixture
def conflict(archive: Archive, region, tmp_path: Path) -> InstanceConflict:  # type: ignore[no-untyped-def]
    ds = dcmread(archive.files[0])
    ds.StudyDescription = "altro contenuto"
    path = tmp_path / "other.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")
    assert result.outcome == CONFLICT
    return InstanceConflict.objects.get()


def test_conflict_list_and_page(admin_client: Client, conflict: InstanceConflict) -> None:
    url = _url("instanceconflict", "changelist")
    response = admin_client.get(url)
    assert _results(response) == [conflict]
    assert "stesso SOPInstanceUID, contenuto diverso" in response.content.decode()
    assert _results(admin_client.get(url, {"resolved": "no"})) == [conflict]
    assert _results(admin_client.get(url, {"resolved": "yes"})) == []
    assert _results(admin_client.get(url, {"reason__exact": "other_patient"})) == []
    assert admin_client.get(_url("instanceconflict", "add")).status_code == 403
    assert admin_client.get(_url("instanceconflict", "delete", conflict.pk)).status_code == 403
    page = admin_client.get(_url("instanceconflict", "change", conflict.pk)).content.decode()
    assert 'name="resolve"' in page and 'name="resolution_note"' in page
    assert 'name="sha256"' not in page and 'name="reason"' not in page
    # Its own bytes can be read, to compare with the archived instance.
    header = admin_client.get(_url("instanceconflict", "header", conflict.pk))
    assert header.status_code == 200 and "altro contenuto" in header.content.decode()


def test_conflict_resolved_from_the_change_form(admin_client: Client, conflict: InstanceConflict) -> None:
    url = _url("instanceconflict", "change", conflict.pk)
    response = admin_client.post(url, {"resolve": "on", "resolution_note": ""})
    assert response.status_code == 200  # a note is required
    conflict.refresh_from_db()
    assert conflict.resolved_at is None
    response = admin_client.post(url, {"resolve": "on", "resolution_note": "Reinvio dalla modalità: scartato."})
    assert response.status_code == 302
    conflict.refresh_from_db()
    assert conflict.resolved_at is not None and conflict.resolved_by.username == "admin"
    assert conflict.resolution_note == "Reinvio dalla modalità: scartato."
    assert _events("admin.instanceconflict.resolve")[0].study_id == conflict.study_id
    # Resolved is final: the page is read-only now.
    page = admin_client.get(url).content.decode()
    assert 'name="resolution_note"' not in page and "Reinvio dalla modalità" in page
    assert admin_client.post(url, {"resolution_note": "altro"}).status_code == 403
    assert _events("admin.instanceconflict.change")[0].outcome == AuditEvent.Outcome.DENIED


def test_conflict_resolved_by_the_admin_action(client: Client, conflict: InstanceConflict) -> None:
    # The conflict names a study: only who may see studies (archive.access) sees it.
    user = _staff("revisore", "view_study", "view_instanceconflict", "change_instanceconflict")
    client.force_login(user)
    url = _url("instanceconflict", "changelist")
    data = {"action": "mark_resolved", "_selected_action": [conflict.pk]}
    response = client.post(url, data)
    assert response.status_code == 200 and 'name="note"' in response.content.decode()
    conflict.refresh_from_db()
    assert conflict.resolved_at is None
    response = client.post(url, {**data, "apply": "1", "note": "Verificato con il reparto."})
    assert response.status_code == 302
    conflict.refresh_from_db()
    assert conflict.resolved_by == user and conflict.resolution_note == "Verificato con il reparto."
    # A second pass changes nothing.
    client.post(url, {**data, "apply": "1", "note": "altra nota"})
    conflict.refresh_from_db()
    assert conflict.resolution_note == "Verificato con il reparto."
    assert len(_events("admin.instanceconflict.resolve")) == 1


def test_view_only_staff_cannot_resolve(viewer_client: Client, conflict: InstanceConflict) -> None:
    url = _url("instanceconflict", "changelist")
    response = viewer_client.post(
        url, {"action": "mark_resolved", "_selected_action": [conflict.pk], "apply": "1", "note": "x"}
    )
    conflict.refresh_from_db()
    assert conflict.resolved_at is None
    assert response.status_code in (200, 302)
    assert viewer_client.post(_url("instanceconflict", "change", conflict.pk), {"resolve": "on"}).status_code == 403


# --- The header's rows, without the web -------------------------------------------


def _file_with(tmp_path: Path, **extra: object) -> Path:
    [path] = write_study(tmp_path, patient=PatientInfo(patient_id="MRN0009"), instances_per_series=1, extra=extra)
    return path


def test_a_large_sequence_is_read_from_the_open_file(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    items = []
    for _ in range(300):
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = "1.2.3." + "4" * 50
        items.append(item)
    path = _file_with(tmp_path, ReferencedImageSequence=items)
    with path.open("rb") as fh:
        header = read_header(fh)
    seq = next(r for r in header.rows if r.keyword == "ReferencedImageSequence")
    # Over defer_size, so deferred by the reader; a sequence is still shown whole.
    assert int(seq.length) > 16 * 1024 and seq.value == "300 items"
    assert sum(1 for r in header.rows if r.kind == "item") >= 300
    assert sum(1 for r in header.rows if r.keyword == "ReferencedSOPInstanceUID" and r.depth == 2) == 300


def test_rows_stop_at_the_limit(tmp_path: Path) -> None:
    with _file_with(tmp_path).open("rb") as fh:
        header = read_header(fh, max_rows=10)
    assert header.truncated and len(header.rows) == 10
    rows, truncated = dataset_rows(dcmread(_file_with(tmp_path / "b"), stop_before_pixels=True))
    assert not truncated and len(rows) > 10


def test_a_cut_header_says_so(admin_client: Client, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("archive.dicom_header.MAX_ROWS", 15)
    response = admin_client.get(_header_url(_first_instance(archive.study)))
    assert response.status_code == 200
    assert "troncata dopo 15 righe" in response.content.decode()


@pytest.mark.parametrize(
    "value, shown, full_length",
    [
        (None, "", None),
        (b"\x00\x01", "<2 bytes> 00 01", None),
        (b"\x00" * 100, "<100 bytes>", None),
        ("a" * 250, "a" * 200 + "…", 250),
        (["ORIGINAL", "PRIMARY"], "ORIGINAL\\PRIMARY", None),
        (12, "12", None),
    ],
)
def test_format_value(value: object, shown: str, full_length: int | None) -> None:
    assert format_value(value) == (shown, full_length)


def test_audit_event_of_a_deleted_patient_still_displays(admin_client: Client, db: None) -> None:
    from archive.models import Patient

    patient = Patient.objects.create(codice_fiscale=CF, family_name="Rossi")
    event = audit_record(action="test.event", system="pytest", patient=patient)
    patient.delete()  # the audit row keeps its id: no database constraint
    assert admin_client.get(_url("auditevent", "changelist")).status_code == 200
    assert admin_client.get(_url("auditevent", "change", event.pk)).status_code == 200


def test_change_forms_link_to_the_dicom_header(admin_client: Client, conflict: InstanceConflict) -> None:
    instance = conflict.instance
    for model, pk in (("instance", instance.pk), ("instanceconflict", conflict.pk)):
        page = admin_client.get(_url(model, "change", pk)).content.decode()
        tools = page.split('class="object-tools"', 1)[1].split("</ul>", 1)[0]
        assert f'href="{_url(model, "header", pk)}"' in tools, model
