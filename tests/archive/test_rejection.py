"""IOCM rejection notes (archive.rejection): a Key Object Selection document with a
rejection title withdraws the instances it names from every query and retrieval,
is refused from another patient or an unauthorised sender, waits for instances
that have not arrived, leaves notices for what was preserved, and its instances
are purged after the retention of their reason."""

from __future__ import annotations

import datetime as dt
import io
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE, build_role, evt

from archive import rejection, removals
from archive.access import SYSTEM, studies_visible
from archive.ingest import IngestError, instance_ingest
from archive.models import (
    Copy,
    FileRemoval,
    Instance,
    Rejection,
    RejectionNote,
    RejectionNotice,
    RemoteNode,
    Report,
    Series,
    StaffProfile,
    Study,
)
from archive.sample_data import PatientInfo, rejection_note, write_study
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests.archive.test_dimse_qr import GET, Stored, StoreSCP, c_find, c_move, destination, stored  # noqa: F401
from tests.archive.test_dimse_qr import workstation as workstation  # noqa: F401  (autouse: WS may query)
from tests.booking import conftest as booking_fixtures
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def _header(path: Path) -> Dataset:
    return dcmread(path, stop_before_pixels=True)


def _note_file(tmp_path: Path, note: Dataset) -> Path:
    path = tmp_path / f"note-{note.SOPInstanceUID}.dcm"
    note.save_as(path, enforce_file_format=True)
    return path


def _send(port: int, ds: Dataset, *, calling_ae: str = "MODALITY") -> Dataset:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(KOS)
    assoc = ae.associate("127.0.0.1", port, ae_title="TSCAT_PACS")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def _c_get(port: int, study_uid: str) -> tuple[Dataset, set[str]]:
    received: set[str] = set()
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ct = "1.2.840.10008.5.1.4.1.1.2"
    ae = AE(ae_title="WS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(GET)
    for cx in (ct, KOS):
        ae.add_requested_context(cx)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="TSCAT_PACS",
        ext_neg=[build_role(ct, scp_role=True), build_role(KOS, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study_uid
        final = [status for status, _ in assoc.send_c_get(ds, GET)][-1]
    finally:
        assoc.release()
    return final, received


def _staff_client(region: Any, *perms: str) -> tuple[Client, Any]:
    user = get_user_model().objects.create_user(username=f"tsrm-{len(perms)}", password="x")
    for perm in ("view_study", "view_instance", "add_instance", *perms):
        user.user_permissions.add(Permission.objects.get(codename=perm, content_type__app_label="archive"))
    StaffProfile.objects.create(user=user, authority=region.authority)
    client = Client()
    client.force_login(user)
    return client, user


def _multipart(*files: bytes, boundary: str = "rejection-boundary") -> bytes:
    body = b""
    for data in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def _stow(client: Client, data: bytes) -> Any:
    return client.post(
        "/dicomweb/TS-CAT/studies",
        data=_multipart(data),
        content_type='multipart/related; type="application/dicom"; boundary=rejection-boundary',
        HTTP_ACCEPT="application/dicom+json",
    )


def _text(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("latin-1")
    return response.content.decode("latin-1")


def _bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- over DICOM -------------------------------------------------------------------------


def test_a_note_sent_over_dicom_hides_its_instances_from_every_query_and_retrieval(
    listener: int,
    stored: Stored,  # noqa: F811
    destination: StoreSCP,  # noqa: F811
    region: Any,
) -> None:
    files = sorted(stored.files.items())
    wrong_uid, wrong_path = files[0]
    kept = {uid for uid, _ in files[1:]}
    note = rejection_note([_header(wrong_path)], code="113037")

    status = _send(listener, note)
    assert status.Status == 0x0000

    # The note is stored (evidence) and, like what it rejects, out of regular use.
    record = RejectionNote.objects.get(sop_instance_uid=note.SOPInstanceUID)
    assert (record.code, record.withdrawn, record.pending, record.calling_ae) == ("113037", 1, 0, "MODALITY")
    assert not Instance.objects.filter(sop_instance_uid__in=[wrong_uid, note.SOPInstanceUID]).exists()
    assert Instance.all_objects.get(sop_instance_uid=wrong_uid).withdrawn_at is not None
    study = Study.objects.get(study_instance_uid=stored.study_uid)
    assert (study.number_of_instances, study.number_of_series, study.modalities_in_study) == (5, 2, "CT")
    assert sorted(Series.objects.filter(study=study).values_list("number_of_instances", flat=True)) == [2, 3]

    # C-FIND at the image level, C-GET and C-MOVE of the whole study.
    images, final = c_find(listener, "IMAGE", StudyInstanceUID=stored.study_uid, SOPInstanceUID="")
    assert final.Status == 0x0000 and {str(i.SOPInstanceUID) for i in images} == kept
    studies, _ = c_find(listener, "STUDY", StudyInstanceUID=stored.study_uid, NumberOfStudyRelatedInstances="")
    assert [int(s.NumberOfStudyRelatedInstances) for s in studies] == [5]
    final, received = _c_get(listener, stored.study_uid)
    assert final.Status == 0x0000 and received == kept
    moved = c_move(listener, "DEST", StudyInstanceUID=stored.study_uid)[-1]
    assert moved.Status == 0x0000 and set(destination.received) == kept

    # QIDO-RS and WADO-RS.
    client, _user = _staff_client(region)
    qido = client.get(f"/dicomweb/studies/{stored.study_uid}/instances", HTTP_ACCEPT="application/dicom+json")
    assert qido.status_code == 200
    assert {i["00080018"]["Value"][0] for i in qido.json()} == kept
    series_uid = str(_header(wrong_path).SeriesInstanceUID)
    wado = client.get(
        f"/dicomweb/studies/{stored.study_uid}/series/{series_uid}/instances/{wrong_uid}",
        HTTP_ACCEPT='multipart/related; type="application/dicom"',
    )
    assert wado.status_code == 404
    metadata = client.get(f"/dicomweb/studies/{stored.study_uid}/metadata", HTTP_ACCEPT="application/dicom+json")
    assert metadata.status_code == 200 and wrong_uid not in _text(metadata)

    event = AuditEvent.objects.get(action="iocm.reject")
    assert event.ae_title == "MODALITY" and event.study_id == study.pk and event.patient_id == study.patient_id
    assert event.detail["withdrawn"] == [wrong_uid] and event.detail["code"] == "113037"


@pytest.fixture
def accept_unknown(settings: Any) -> None:
    """The demo's flag, read when the listener starts: an unknown AE may associate and store."""
    settings.PACS_DICOM_ACCEPT_UNKNOWN_AE = True


def test_a_note_from_an_unknown_sender_is_refused(accept_unknown: None, listener: int, stored: Stored) -> None:  # noqa: F811
    uid, path = next(iter(sorted(stored.files.items())))
    note = rejection_note([_header(path)])
    status = _send(listener, note, calling_ae="INTRUDER")
    assert status.Status == 0x0124
    assert "not a registered node" in str(status.ErrorComment)
    assert Instance.objects.filter(sop_instance_uid=uid).exists()
    assert not Instance.all_objects.filter(sop_instance_uid=note.SOPInstanceUID).exists()
    assert not RejectionNote.objects.exists()


def test_a_note_of_another_patient_is_refused(listener: int, stored: Stored) -> None:  # noqa: F811
    uid, path = next(iter(sorted(stored.files.items())))
    other = PatientInfo(patient_id="MRN9999", name="BIANCHI^LAURA")
    note = rejection_note([_header(path)], patient=other)
    status = _send(listener, note)
    assert status.Status == 0xC000
    assert "rejection note refused" in str(status.ErrorComment)
    assert Instance.objects.filter(sop_instance_uid=uid).exists()
    assert not RejectionNote.objects.exists() and not Rejection.objects.exists()


def test_a_note_naming_an_instance_of_another_study_is_refused(
    stored: Stored,  # noqa: F811
    region: Any,
    tmp_path: Path,
) -> None:
    other_paths = write_study(
        tmp_path / "other",
        patient=PatientInfo(patient_id="MRN0001", name="ROSSI^MARIO", birth_date="19560312", sex="M"),
        instances_per_series=1,
    )
    instance_ingest(path=other_paths[0], facility=region.facility, owned=False)
    uid, path = next(iter(sorted(stored.files.items())))
    # The note is of the first study and names an instance of the second.
    foreign = _header(other_paths[0])
    note = rejection_note([_header(path), foreign])
    with pytest.raises(IngestError) as refused:
        instance_ingest(path=_note_file(tmp_path, note), facility=region.facility, owned=False, calling_ae="MODALITY")
    assert refused.value.code == "invalid" and "names an instance of study" in refused.value.message
    assert Instance.objects.filter(sop_instance_uid__in=[uid, foreign.SOPInstanceUID]).count() == 2
    assert not Instance.all_objects.filter(sop_instance_uid=note.SOPInstanceUID).exists()


def test_a_note_received_by_another_facility_is_refused(stored: Stored, region: Any, tmp_path: Path) -> None:  # noqa: F811
    """Gorizia's modality cannot withdraw what Cattinara received (STORESCU is a node of both)."""
    uid, path = next(iter(sorted(stored.files.items())))
    note = rejection_note([_header(path)])
    with pytest.raises(IngestError) as refused:
        instance_ingest(
            path=_note_file(tmp_path, note), facility=region.other_facility, owned=False, calling_ae="STORESCU"
        )
    assert refused.value.code == "not_authorized" and "another facility" in refused.value.message
    assert Instance.objects.filter(sop_instance_uid=uid).exists() and not RejectionNote.objects.exists()


def test_an_instance_named_before_it_arrives_is_withdrawn_on_arrival(region: Any, tmp_path: Path) -> None:
    patient = PatientInfo(patient_id="MRN0002", name="VERDI^ANNA", sex="F")
    paths = write_study(tmp_path / "late", patient=patient, instances_per_series=3)
    first, late = paths[0], paths[2]
    instance_ingest(path=first, facility=region.facility, owned=False)
    note = rejection_note([_header(first), _header(late)], code="113001")
    instance_ingest(path=_note_file(tmp_path, note), facility=region.facility, owned=False, calling_ae="MODALITY")
    record = RejectionNote.objects.get()
    assert (record.withdrawn, record.pending) == (1, 1)
    study = Study.objects.get(study_instance_uid=_header(first).StudyInstanceUID)
    # Everything it holds of the study is withdrawn: the study is gone for everyone but the system.
    assert study.number_of_instances == 0
    assert not studies_visible(rejection_principal(region)).filter(pk=study.pk).exists()
    assert studies_visible(SYSTEM).filter(pk=study.pk).exists()

    instance_ingest(path=paths[1], facility=region.facility, owned=False)
    result = instance_ingest(path=late, facility=region.facility, owned=False)
    assert result.outcome == "stored"
    assert Instance.all_objects.get(pk=result.instance_id).withdrawn_at is not None
    assert list(Instance.objects.filter(series__study=study).values_list("sop_instance_uid", flat=True)) == [
        str(_header(paths[1]).SOPInstanceUID)
    ]
    study.refresh_from_db()
    assert study.number_of_instances == 1
    assert studies_visible(rejection_principal(region)).filter(pk=study.pk).exists()
    record.refresh_from_db()
    assert (record.withdrawn, record.pending) == (2, 0)
    assert AuditEvent.objects.filter(action="iocm.reject_on_arrival", study=study).count() == 1


def rejection_principal(region: Any) -> Any:
    from archive.access import principal_for_node

    return principal_for_node(RemoteNode.objects.get(facility=region.facility, ae_title="WS"))


# --- over STOW-RS -----------------------------------------------------------------------


def test_a_note_sent_by_stow_hides_its_instance_and_needs_the_permission(
    stored: Stored,  # noqa: F811
    region: Any,
) -> None:
    uid, path = next(iter(sorted(stored.files.items())))
    note = rejection_note([_header(path)], code="113038")

    client, _user = _staff_client(region)
    refused = _stow(client, _bytes(note))
    assert refused.status_code == 409
    failed = refused.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0x0124]
    assert Instance.objects.filter(sop_instance_uid=uid).exists()

    client, user = _staff_client(region, "add_rejectionnote")
    response = _stow(client, _bytes(note))
    assert response.status_code == 200, response.content
    assert not Instance.objects.filter(sop_instance_uid=uid).exists()
    assert RejectionNote.objects.get().sender == user
    qido = client.get(f"/dicomweb/studies/{stored.study_uid}/instances", HTTP_ACCEPT="application/dicom+json")
    assert uid not in _text(qido) and str(note.SOPInstanceUID) not in _text(qido)
    assert AuditEvent.objects.get(action="iocm.reject").user_id == user.pk


# --- notices and purge ------------------------------------------------------------------


def test_a_preserved_study_gets_a_notice_for_the_archivist(stored: Stored, region: Any, tmp_path: Path) -> None:  # noqa: F811
    from preservation import rejections as preservation_rejections
    from preservation.models import Package

    study = Study.objects.get(study_instance_uid=stored.study_uid)
    author = get_user_model().objects.create_user(username="radiologa")
    # A signed version as the registry holds it (the signing itself is test_reports.py's).
    report = Report.objects.create(
        study=study,
        version=1,
        status=Report.Status.SIGNED,
        author=author,
        pdf_sha256="0" * 64,
        signature_path="x.p7m",
        signed_at=timezone.now(),
    )
    Package.objects.create(
        identifier="PDA-TEST-1", study=study, report=report, status=Package.Status.ARCHIVED, tier="preservation:region"
    )
    uid, path = next(iter(sorted(stored.files.items())))
    note = rejection_note([_header(path)])
    instance_ingest(path=_note_file(tmp_path, note), facility=region.facility, owned=False, calling_ae="MODALITY")
    record = RejectionNote.objects.get()

    assert preservation_rejections.rejection_preservation(note_pk=record.pk, study_pk=study.pk) == "notice"
    assert preservation_rejections.rejection_preservation(note_pk=record.pk, study_pk=study.pk) == "notice"
    notice = RejectionNotice.objects.get()
    assert (notice.kind, notice.state, notice.study_id) == ("preserved", "open", study.pk)
    assert "PDA-TEST-1" in notice.detail
    assert rejection.notice_handle(notice_pk=notice.pk, user=report.author)
    assert not rejection.notice_handle(notice_pk=notice.pk, user=report.author)
    assert AuditEvent.objects.filter(action__in=["iocm.notice", "iocm.notice_handled"]).count() == 2


def test_the_purge_waits_for_the_retention_then_removes_files_and_rows(
    stored: Stored,  # noqa: F811
    region: Any,
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.PACS_REJECTION_RETENTION_DAYS = {"113001": 30, "113039": 0, "default": 30}
    study = Study.objects.get(study_instance_uid=stored.study_uid)
    (uid, path), (other_uid, _other) = sorted(stored.files.items())[:2]
    instance_ingest(
        path=_note_file(tmp_path, rejection_note([_header(path)], code="113001")),
        facility=region.facility,
        owned=False,
        calling_ae="MODALITY",
    )
    instance = Instance.all_objects.get(sop_instance_uid=uid)
    copies = list(Copy.objects.filter(instance=instance))
    files = [storage.absolute_path(c.tier, c.path) for c in copies]
    assert files and all(f.exists() for f in files)

    # 29 days on: kept.
    Rejection.objects.filter(sop_instance_uid=uid).update(rejected_at=timezone.now() - dt.timedelta(days=29))
    assert rejection.rejections_purge() == 0
    assert all(f.exists() for f in files) and Instance.all_objects.filter(pk=instance.pk).exists()

    # 31 days on: gone, files and rows; the note and the record stay.
    Rejection.objects.filter(sop_instance_uid=uid).update(rejected_at=timezone.now() - dt.timedelta(days=31))
    assert rejection.rejections_purge() == 1
    assert not any(f.exists() for f in files)
    assert (
        not Instance.all_objects.filter(pk=instance.pk).exists()
        and not Copy.objects.filter(pk__in=[c.pk for c in copies]).exists()
    )
    row = Rejection.objects.get(sop_instance_uid=uid)
    assert row.purged_at is not None and row.instance_id is None
    assert Instance.all_objects.filter(sop_instance_uid=RejectionNote.objects.get().sop_instance_uid).exists()
    assert Instance.objects.filter(sop_instance_uid=other_uid).exists()
    event = AuditEvent.objects.get(action="iocm.purge")
    assert event.study_id == study.pk and event.patient_id == study.patient_id
    assert rejection.rejections_purge() == 0

    # 113039 (retention policy expired) has no retention: purged at the next run. This purge's
    # process dies between its commit and the files: the removals it noted are finished later.
    (uid2, path2) = sorted(stored.files.items())[2]
    instance_ingest(
        path=_note_file(tmp_path, rejection_note([_header(path2)], code="113039")),
        facility=region.facility,
        owned=False,
        calling_ae="MODALITY",
    )
    instance2 = Instance.all_objects.get(sop_instance_uid=uid2)
    files2 = {(c.tier, c.path) for c in Copy.objects.filter(instance=instance2)}
    with monkeypatch.context() as m:
        m.setattr(removals, "removals_finish", lambda pks: 0)
        assert rejection.rejections_purge() == 1
    assert not Instance.all_objects.filter(sop_instance_uid=uid2).exists()
    assert all(storage.absolute_path(tier, path).exists() for tier, path in files2)
    noted = FileRemoval.objects.filter(instance_id=instance2.pk)
    assert {(r.tier, r.path) for r in noted} == files2 and all(r.is_copy for r in noted)
    assert removals.removals_sweep(now=timezone.now() + dt.timedelta(minutes=2)) == len(files2)
    assert not any(storage.absolute_path(tier, path).exists() for tier, path in files2)
    assert not FileRemoval.objects.exists()


# --- the radiologist's and the citizen's pages and zips ----------------------------------


@pytest.fixture
def online(cup: Any, reporting: Any) -> Any:
    from tests.portal.portal_helpers import citizen_exam_make

    return citizen_exam_make(cup, reporting)


def _reject_through_ingest(study: Study, tmp_path: Path, *, index: int = -1) -> tuple[Instance, str]:
    instance = list(Instance.objects.filter(series__study=study).order_by("pk"))[index]
    copy = Copy.objects.get(instance=instance)
    note = rejection_note([dcmread(storage.absolute_path(copy.tier, copy.path), stop_before_pixels=True)])
    instance_ingest(path=_note_file(tmp_path, note), facility=study.facility, owned=False, calling_ae="CT01")
    return instance, str(note.SOPInstanceUID)


def _zip_of(client: Client, booking_pk: int, kind: str) -> bytes:
    asked = client.post(f"/fse/esami/{booking_pk}/pacchetti/{kind}/")
    url = client.get(f"{asked['Location']}?format=json").json()["download_url"]
    return b"".join(client.get(url).streaming_content)


def test_the_radiologists_pages_the_citizens_pages_and_zips_lose_the_rejected_image(
    online: Any, tmp_path: Path
) -> None:
    from portal import downloads
    from portal import rejections as portal_rejections
    from portal.models import DownloadPackage

    study = online.booking.study
    before, _created = downloads.package_request(study=study, kind="dicom", user=online.user)
    before = downloads.media_build(package_pk=before.pk)
    assert before.status == "ready" and before.instance_count == 6

    rejected, note_uid = _reject_through_ingest(study, tmp_path)
    kept = list(Instance.objects.filter(series__study=study).values_list("sop_instance_uid", flat=True))
    assert len(kept) == 5

    # The radiologist's study page and diagnostic viewer.
    staff = Client()
    staff.force_login(online.rep.radiologist)
    for url in (f"/refertazione/studi/{study.pk}/", f"/refertazione/studi/{study.pk}/viewer/"):
        page = staff.get(url)
        assert page.status_code == 200
        assert rejected.sop_instance_uid not in page.content.decode() and note_uid not in page.content.decode()
    viewer = staff.get(f"/refertazione/studi/{study.pk}/viewer/").content.decode()
    assert all(uid in viewer for uid in kept)

    # The citizen's exam page, image viewer, the rejected image's own URL and a new zip.
    exam = online.client.get(f"/fse/esami/{online.booking.pk}/")
    assert exam.status_code == 200
    images = online.client.get(f"/fse/esami/{online.booking.pk}/immagini/").content.decode()
    assert f"/immagini/{rejected.pk}.jpg" not in images
    assert online.client.get(f"/fse/esami/{online.booking.pk}/immagini/{rejected.pk}.jpg").status_code == 404
    data = _zip_of(online.client, online.booking.pk, "dicom")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        uids = set()
        for name in names:
            if "DICOMDIR" in name or not name.upper().startswith("DICOM/"):
                continue
            uids.add(str(dcmread(io.BytesIO(zf.read(name)), stop_before_pixels=True).SOPInstanceUID))
    assert uids == set(kept)
    assert rejected.sop_instance_uid.encode() not in data and note_uid.encode() not in data

    # The zip made before is withdrawn; the published report leaves a notice for the CUP.
    note = RejectionNote.objects.get(sop_instance_uid=note_uid)
    assert portal_rejections.rejection_portal(note_pk=note.pk, study_pk=study.pk).endswith("notice")
    before.refresh_from_db()
    assert before.status == DownloadPackage.Status.PURGED and not Path(before.path).exists()
    notice = RejectionNotice.objects.get(kind=RejectionNotice.Kind.PUBLISHED)
    assert notice.state == "open" and online.booking.accession_number in notice.detail


def test_dcmtk_storescu_sends_a_rejection_note(listener: int, stored: Stored, tmp_path: Path) -> None:  # noqa: F811
    """DCMTK as the modality: its storescu proposes the Key Object Selection class and the note acts."""
    import os
    import shutil
    import subprocess

    assert shutil.which("storescu"), "DCMTK's storescu is needed (make test installs it)"
    uid, path = next(iter(sorted(stored.files.items())))
    note_path = _note_file(tmp_path, rejection_note([_header(path)], code="113038"))
    done = subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", "TSCAT_PACS", "127.0.0.1", str(listener), str(note_path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert not Instance.objects.filter(sop_instance_uid=uid).exists()
    assert RejectionNote.objects.get().calling_ae == "STORESCU"
    images, _final = c_find(listener, "IMAGE", StudyInstanceUID=stored.study_uid, SOPInstanceUID="")
    assert uid not in {str(i.SOPInstanceUID) for i in images} and len(images) == 5


def test_the_sweep_announces_the_days_notes_again(stored: Stored, region: Any, tmp_path: Path) -> None:  # noqa: F811
    """A notice the broker lost: the beat task sends instances_rejected again for the day's notes."""
    from archive.signals import instances_rejected

    uid, path = next(iter(sorted(stored.files.items())))
    instance_ingest(
        path=_note_file(tmp_path, rejection_note([_header(path)])),
        facility=region.facility,
        owned=False,
        calling_ae="MODALITY",
    )
    heard: list[tuple[int, int]] = []

    def receiver(sender: Any, note_pk: int, study_pk: int, **kwargs: Any) -> None:
        heard.append((note_pk, study_pk))

    instances_rejected.connect(receiver, dispatch_uid="test.rejection.sweep")
    try:
        assert rejection.notes_announce_again() == 1
        RejectionNote.objects.update(received_at=timezone.now() - dt.timedelta(days=2))
        assert rejection.notes_announce_again() == 0
    finally:
        instances_rejected.disconnect(dispatch_uid="test.rejection.sweep")
    note = RejectionNote.objects.get()
    assert heard == [(note.pk, note.study_id)]
