"""The study's IHE XDS-I.b manifest (archive.manifest): a Key Object Selection document
titled "Manifest" that names every instance of the study in regular use with where
to retrieve it, stored in the study, made again only when its instances change,
read by DCMTK and highdicom, never taken for a rejection note; the archive answers
the retrievals it lists (RAD-69 over WADO-RS, and WADO-URI) under the access policy;
it follows a signing (and its sweep), and a rejection."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from django.test import TestCase
from highdicom.ko import KeyObjectSelectionDocument
from knox.models import AuthToken
from pydicom import dcmread
from pydicom.dataset import Dataset

from archive import manifest, rejection
from archive.ingest import instance_ingest
from archive.manifest import KEY_OBJECT_SELECTION, Reference, study_manifest
from archive.models import Copy, Instance, RejectionNote, Report, Study
from archive.sample_data import rejection_note, write_study
from archive.signals import report_signed
from archive.storage import retrieve
from archive.storage import tiers as storage
from kernel import tasknames
from kernel.models import AuditEvent
from tests.access_helpers import Scene, hide
from tests.access_helpers import scene as scene  # noqa: F401  (fixture)
from tests.conftest import broker_down, tasks_kept
from tests.dicomweb_helpers import parse_multipart
from tests.reporting_helpers import PATIENT_CF, Reporting, ingest_study, signed_report
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

PUBLIC = "https://pacs.example.org"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


@pytest.fixture(autouse=True)
def _public_url(settings: Any) -> None:
    settings.PACS_PUBLIC_URL = PUBLIC
    settings.PACS_IMAGING_SOURCE_UID = "2.16.840.1.113883.2.9.2.60.4.6"


def _dataset(instance: Instance) -> Dataset:
    with retrieve.instance_open(instance) as fh:
        return dcmread(fh)


def _path(instance: Instance) -> Path:
    copy = Copy.objects.get(instance=instance)
    return storage.absolute_path(copy.tier, copy.path)


def _in_study(study: Study) -> set[Reference]:
    """The study's instances in regular use, manifests aside (what a manifest must name)."""
    return {
        Reference(i.series.series_instance_uid, i.sop_class_uid, i.sop_instance_uid)
        for i in Instance.objects.filter(series__study=study).select_related("series")
        if i.series.series_number != manifest.MANIFEST_SERIES_NUMBER
    }


def _more_instances(study: Study, tmp_path: Path, region: Any, name: str, count: int = 2) -> list[Path]:
    from archive.sample_data import PatientInfo

    patient = PatientInfo(patient_id=PATIENT_CF, name="ROSSI^MARIO", birth_date="19560312", sex="M")
    paths = write_study(
        tmp_path / name,
        patient=patient,
        study_uid=study.study_instance_uid,
        instances_per_series=count,
        accession_number=study.accession_number,
    )
    for path in paths:
        instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")
    return paths


# --- the document -----------------------------------------------------------------------


def test_the_manifest_names_every_instance_with_where_to_retrieve_it(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    made = study_manifest(study=study)

    ds = _dataset(made)
    assert made.sop_class_uid == ds.SOPClassUID == KEY_OBJECT_SELECTION
    assert ds.Modality == "KO"
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113030", "DCM", "Manifest")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    # Patient, study and order as the archive indexed them.
    assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == (
        PATIENT_CF,
        "ROSSI^MARIO",
        "19560312",
        "M",
    )
    assert ds.StudyInstanceUID == study.study_instance_uid
    assert ds.AccessionNumber == "TSC260000001"
    (request,) = ds.ReferencedRequestSequence
    assert (request.StudyInstanceUID, request.AccessionNumber) == (study.study_instance_uid, "TSC260000001")
    # Exactly the study's instances (six CT images), by series, with where to fetch them.
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == study.study_instance_uid
    assert manifest.manifest_references(ds) == _in_study(study)
    assert len(manifest.manifest_references(ds)) == 6
    for series in evidence.ReferencedSeriesSequence:
        assert series.RetrieveAETitle == "TSCAT_PACS"
        assert series.RetrieveLocationUID == "2.16.840.1.113883.2.9.2.60.4.6"
        assert series.RetrieveURL == (
            f"{PUBLIC}/dicomweb/studies/{study.study_instance_uid}/series/{series.SeriesInstanceUID}"
        )
    # The content tree: one CONTAINS IMAGE per image.
    items = ds.ContentSequence
    assert [(i.RelationshipType, i.ValueType) for i in items] == [("CONTAINS", "IMAGE")] * 6
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items} == {r.sop_uid for r in _in_study(study)}
    # highdicom reads it back as a Key Object Selection document.
    document = KeyObjectSelectionDocument.from_dataset(ds)
    for ref in _in_study(study):
        assert document.resolve_reference(ref.sop_uid) == (study.study_instance_uid, ref.series_uid, ref.sop_uid)
    # Stored in the study as any instance: indexed, on disk with a verified copy.
    assert made.series.study_id == study.pk
    assert made.series.series_number == manifest.MANIFEST_SERIES_NUMBER
    assert made.copies.filter(verified_at__isnull=False).exists()


def test_dcmtk_reads_the_manifest_as_a_valid_sr_document(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    path = _path(study_manifest(study=study))
    dumped = subprocess.run(["dsrdump", "-v", str(path)], capture_output=True, text=True, timeout=60)
    assert dumped.returncode == 0, dumped.stderr
    assert "Key Object Selection Document" in dumped.stdout
    assert '<CONTAINER:(,,"Manifest")=CONTINUOUS>' in dumped.stdout
    assert dumped.stdout.count("<contains IMAGE:") == 6
    errors = [line for line in (dumped.stdout + dumped.stderr).splitlines() if line.startswith(("E:", "F:"))]
    assert errors == []
    # dsr2xml walks the whole document too, and so does dcmdump.
    xml = subprocess.run(["dsr2xml", str(path)], capture_output=True, text=True, timeout=60)
    assert xml.returncode == 0 and '<report type="Key Object Selection Document">' in xml.stdout, xml.stderr
    assert subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, timeout=60).returncode == 0


def test_a_second_call_with_nothing_changed_stores_nothing(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    first = study_manifest(study=study)
    count = Instance.objects.count()
    assert study_manifest(study=study).pk == first.pk
    assert Instance.objects.count() == count


def test_new_instances_make_a_new_manifest_and_the_old_one_stays(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    first = study_manifest(study=study)
    added = _more_instances(study, tmp_path, region, "later")

    second = study_manifest(study=study)
    assert second.pk != first.pk
    assert (first.instance_number, second.instance_number) == (1, 2)
    assert Instance.objects.filter(pk=first.pk).exists()  # the earlier manifest stays
    names = manifest.manifest_references(_dataset(second))
    assert names == _in_study(study)
    assert len(names) == 8
    assert {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in added} <= {r.sop_uid for r in names}
    # A manifest never names a manifest.
    assert first.sop_instance_uid not in {r.sop_uid for r in names}
    assert study_manifest(study=study).pk == second.pk


def test_another_systems_manifest_is_not_referenced(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    # A manifest another Imaging Document Source made of the study, received over DICOM.
    theirs = manifest.manifest_dataset(
        study=study,
        instances=list(Instance.objects.filter(series__study=study).select_related("series")),
        sop_instance_uid="1.2.3.4.5.6.7.8.9",
        instance_number=1,
    )
    theirs.SeriesInstanceUID = "1.2.3.4.5.6.7.8.10"
    theirs.SeriesNumber = 77
    path = tmp_path / "theirs.dcm"
    theirs.save_as(path, enforce_file_format=True)
    instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")

    ours = study_manifest(study=study)
    names = {r.sop_uid for r in manifest.manifest_references(_dataset(ours))}
    assert "1.2.3.4.5.6.7.8.9" not in names
    assert len(names) == 6


def test_an_empty_study_gets_no_manifest(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    note = rejection_note([dcmread(_path(i), stop_before_pixels=True) for i in Instance.objects.all()])
    path = tmp_path / "all.dcm"
    note.save_as(path, enforce_file_format=True)
    instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")
    with pytest.raises(manifest.ManifestError) as refused:
        study_manifest(study=study)
    assert refused.value.code == "empty"
    assert not Instance.all_objects.filter(series__series_number=manifest.MANIFEST_SERIES_NUMBER).exists()


# --- rejection notes --------------------------------------------------------------------


def test_a_manifest_is_never_taken_for_a_rejection_note(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    made = study_manifest(study=study)
    data = _path(made).read_bytes()
    assert rejection.note_read(sop_class_uid=KEY_OBJECT_SELECTION, data=data, path=_path(made)) is None
    # Stored by ingestion without withdrawing anything, and without a rejection note row.
    assert Instance.objects.filter(series__study=study).count() == 7
    assert not RejectionNote.objects.exists()


def test_a_rejection_makes_a_new_manifest_without_the_note_nor_the_rejected_image(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    first = study_manifest(study=study)
    victim = Instance.objects.filter(series__study=study, sop_class_uid__startswith="1.2.840.10008.5.1.4.1.1.2").first()
    assert victim is not None
    note = rejection_note([dcmread(_path(victim), stop_before_pixels=True)])
    path = tmp_path / "note.dcm"
    note.save_as(path, enforce_file_format=True)
    with tasks_kept() as kept:
        with TestCase.captureOnCommitCallbacks(execute=True):
            instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")
        kept.run(tasknames.STUDY_MANIFEST)

    latest = Instance.objects.filter(series=first.series).order_by("-instance_number").first()
    assert latest is not None and latest.pk != first.pk
    names = {r.sop_uid for r in manifest.manifest_references(_dataset(latest))}
    assert len(names) == 5
    assert victim.sop_instance_uid not in names
    assert str(note.SOPInstanceUID) not in names


def test_a_rejection_in_a_study_without_manifest_makes_none(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    victim = Instance.objects.filter(series__study=study).first()
    assert victim is not None
    assert manifest.study_manifest_refresh(study=study) is None
    assert not Instance.objects.filter(sop_class_uid=KEY_OBJECT_SELECTION).exists()


# --- after a signing --------------------------------------------------------------------


def test_signing_queues_the_manifest_which_lists_the_signed_pdf(reporting: Reporting, settings: Any) -> None:  # noqa: F811
    settings.PACS_REPORT_ENCAPSULATED_PDF = True
    with tasks_kept() as kept:
        with TestCase.captureOnCommitCallbacks(execute=True):
            report = signed_report(reporting)
        assert tasknames.STUDY_MANIFEST in kept.names()
        # Run before the Encapsulated PDF's own task: it stores the PDF first all the same.
        (uid,) = kept.run(tasknames.STUDY_MANIFEST)
        kept.run(tasknames.REPORT_ENCAPSULATE)
    report.refresh_from_db()
    made = Instance.objects.get(sop_instance_uid=uid)
    ds = _dataset(made)
    names = manifest.manifest_references(ds)
    assert names == _in_study(reporting.study)
    assert len(names) == 7
    pdf = next(r for r in names if r.sop_uid == report.encapsulated_sop_instance_uid)
    assert pdf.sop_class_uid == ENCAPSULATED_PDF
    kinds = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: i.ValueType for i in ds.ContentSequence}
    assert kinds[report.encapsulated_sop_instance_uid] == "COMPOSITE"
    # The task again (a redelivery) stores nothing new.
    count = Instance.objects.count()
    with tasks_kept() as kept:
        with TestCase.captureOnCommitCallbacks(execute=True):
            report_signed.send(sender=Report, report_pk=report.pk, study_pk=report.study_id)
        assert kept.run(tasknames.STUDY_MANIFEST) == [uid]
    assert Instance.objects.count() == count


def test_the_sweep_queues_a_manifest_the_broker_lost(reporting: Reporting, settings: Any, tmp_path: Path) -> None:  # noqa: F811
    from archive import tasks

    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 3600

    with broker_down() as lost, TestCase.captureOnCommitCallbacks(execute=True):
        report = signed_report(reporting)  # signed all the same; its tasks are lost
    assert tasknames.STUDY_MANIFEST in lost
    assert report.status == Report.Status.SIGNED
    with tasks_kept() as kept:
        assert tasks.study_manifest_sweep() == 0  # within the grace period: its task may still run
    # Past the grace period (a signed report's row cannot be changed to age it).
    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 0
    with tasks_kept() as kept:
        assert tasks.study_manifest_sweep() == 1
        assert kept.messages == [(tasknames.STUDY_MANIFEST, (reporting.study.pk, report.pk), {})]
        (uid,) = kept.run(tasknames.STUDY_MANIFEST)
    assert uid
    with tasks_kept() as kept:
        assert tasks.study_manifest_sweep() == 0
        assert kept.messages == []
    # A rejection note is no arrival (withdrawn, as what it rejects): its own reaction makes the manifest.
    victim = Instance.objects.filter(series__study=reporting.study).first()
    assert victim is not None
    note = rejection_note([dcmread(_path(victim), stop_before_pixels=True)])
    note.save_as(tmp_path / "note.dcm", enforce_file_format=True)
    instance_ingest(path=tmp_path / "note.dcm", facility=reporting.region.facility, owned=False, calling_ae="CT01")
    with tasks_kept() as kept:
        assert tasks.study_manifest_sweep() == 0
    # An image that arrives after the manifest: owed a new one.
    _more_instances(reporting.study, tmp_path, reporting.region, "late", count=1)
    with tasks_kept() as kept:
        assert tasks.study_manifest_sweep() == 1
        kept.run(tasknames.STUDY_MANIFEST)
        assert tasks.study_manifest_sweep() == 0


# --- RAD-69: the archive answers what the manifest lists --------------------------------


def _token(user: object) -> dict[str, str]:
    _row, key = AuthToken.objects.create(user=user)  # type: ignore[misc]
    return {"Authorization": f"Token {key}"}


@pytest.mark.django_db(transaction=True)
def test_every_instance_the_manifest_lists_is_retrieved_over_wado_rs_and_wado_uri(
    scene: Scene,  # noqa: F811
    live_server: Any,
    settings: Any,
) -> None:
    settings.PACS_PUBLIC_URL = live_server.url
    study = scene.rossi
    ds = _dataset(study_manifest(study=study))
    headers = _token(scene.radiologist)
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    fetched = 0
    for series in evidence.ReferencedSeriesSequence:
        assert series.RetrieveURL.startswith(f"{live_server.url}/dicomweb/")
        for sop in series.ReferencedSOPSequence:
            uid = sop.ReferencedSOPInstanceUID
            expected = _path(Instance.objects.get(sop_instance_uid=uid)).read_bytes()
            # RAD-69 over WADO-RS: the series' Retrieve URL and the instance under it.
            answer = requests.get(
                f"{series.RetrieveURL}/instances/{uid}",
                headers={**headers, "Accept": 'multipart/related; type="application/dicom"'},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            ((part_headers, body),) = parse_multipart(answer.headers["Content-Type"], answer.content)
            assert body == expected
            # WADO-URI (RAD-55) from the same three UIDs.
            uri = requests.get(
                f"{live_server.url}/dicomweb/wado",
                params={
                    "requestType": "WADO",
                    "studyUID": evidence.StudyInstanceUID,
                    "seriesUID": series.SeriesInstanceUID,
                    "objectUID": uid,
                    "contentType": "application/dicom",
                },
                headers=headers,
                timeout=30,
            )
            assert uri.status_code == 200 and uri.content == expected
            fetched += 1
    assert fetched == len(manifest.manifest_references(ds)) == 6
    # The reading is audited with the patient: by its first image request, once for the reading
    # (PACS_AUDIT_READING_WINDOW; tests/archive/test_audit_reading.py).
    (event,) = AuditEvent.objects.filter(study=study, user=scene.radiologist, outcome="success")
    assert event.patient == study.patient and event.detail["reading_window_s"] > 0


@pytest.mark.django_db(transaction=True)
def test_the_access_policy_still_decides_who_retrieves_what_the_manifest_lists(
    scene: Scene,  # noqa: F811
    live_server: Any,
    settings: Any,
) -> None:
    settings.PACS_PUBLIC_URL = live_server.url
    study = scene.rossi
    ds = _dataset(study_manifest(study=study))
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    urls = [
        f"{series.RetrieveURL}/instances/{sop.ReferencedSOPInstanceUID}"
        for series in evidence.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    # A radiologist of another health authority: the study does not exist for them.
    foreign = _token(scene.foreign)
    for url in urls:
        assert requests.get(url, headers={**foreign, **accept}, timeout=30).status_code == 404
    # Nobody without credentials.
    assert requests.get(urls[0], headers=accept, timeout=30).status_code in (401, 403)
    # The patient hides the study: gone for the study's own radiologists too.
    own = _token(scene.radiologist)
    assert requests.get(urls[0], headers={**own, **accept}, timeout=30).status_code == 200
    hide(study)
    for url in urls:
        assert requests.get(url, headers={**own, **accept}, timeout=30).status_code == 404


# --- the same inputs, the same bytes; the setting ---------------------------------------


def test_two_workers_making_it_at_once_store_one_manifest(region: Any, tmp_path: Path) -> None:
    """The document derives from the index alone: a second worker that did not see the
    first one's manifest makes the same bytes, which ingestion takes as a duplicate."""
    import io

    from pydicom.filewriter import dcmwrite

    study = ingest_study(tmp_path, region)
    instances = list(Instance.objects.filter(series__study=study).select_related("series"))

    def encoded() -> bytes:
        buffer = io.BytesIO()
        document = manifest.manifest_dataset(
            study=study, instances=instances, sop_instance_uid="1.2.3.4", instance_number=1
        )
        dcmwrite(buffer, document, enforce_file_format=True)
        return buffer.getvalue()

    assert encoded() == encoded()
    made = study_manifest(study=study)
    # The second worker: the same document, ingested again.
    again = _path(made).read_bytes()
    copy = tmp_path / "again.dcm"
    copy.write_bytes(again)
    assert instance_ingest(path=copy, facility=region.facility, owned=False).outcome == "duplicate"
    assert Instance.objects.filter(sop_class_uid=KEY_OBJECT_SELECTION).count() == 1


def test_an_imaging_source_uid_that_is_not_a_uid_is_refused_at_start_up() -> None:
    import os
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env["PACS_IMAGING_SOURCE_UID"] = "urn:oid:2.16.840.1"
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "PACS_IMAGING_SOURCE_UID must be a DICOM UID" in done.stderr


def test_an_odd_study_time_from_the_modality_does_not_stop_the_manifest(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    Study.objects.filter(pk=study.pk).update(study_time="10:10")
    ds = _dataset(study_manifest(study=study))
    assert ds.StudyTime == ""  # type 2: present, empty
    assert len(manifest.manifest_references(ds)) == 6


def test_check_deploy_warns_when_the_manifests_would_carry_no_url(settings: Any) -> None:
    from archive.checks import check_manifest_public_url

    assert check_manifest_public_url(None) == []
    settings.PACS_PUBLIC_URL = ""
    (warning,) = check_manifest_public_url(None)
    assert warning.id == "archive.W050"


def test_a_withdrawn_manifest_is_followed_by_a_new_one_never_by_its_twin(region: Any, tmp_path: Path) -> None:
    study = ingest_study(tmp_path, region)
    first = study_manifest(study=study)
    # A rejection note that names the manifest itself (IOCM: any instance of the study).
    note = rejection_note([dcmread(_path(first), stop_before_pixels=True)])
    note.save_as(tmp_path / "note.dcm", enforce_file_format=True)
    instance_ingest(path=tmp_path / "note.dcm", facility=region.facility, owned=False, calling_ae="CT01")
    assert not Instance.objects.filter(pk=first.pk).exists()

    second = study_manifest(study=study)
    assert second.sop_instance_uid != first.sop_instance_uid
    assert second.instance_number == 2
    assert manifest.manifest_references(_dataset(second)) == _in_study(study)
