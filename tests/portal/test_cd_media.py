"""The CD of an exam for the patient who chose CD (IHE PDI, issue 20): the ISO 9660
image made when the report is signed, read back by isoinfo, pycdlib and pydicom;
corrections, rejection notes, the CUP's page, who may use it."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
from django.test import Client
from django.utils import timezone
from pydicom import dcmread
from pydicom.fileset import FileSet

from archive.models import Copy, HealthAuthority, Instance, Report, StaffProfile, Study
from archive.reporting import services as reports
from archive.sample_data import rejection_note
from archive.storage import retrieve
from archive.storage import tiers as storage
from booking.models import DistributionChoice
from kernel import tasknames
from kernel.models import AuditEvent
from portal import cdmedia
from portal import tasks as portal_tasks
from portal.models import CdMedium
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import CUP_PERMS, MARIO_CF, Cup, linked_booking
from tests.dicomweb_helpers import make_user
from tests.portal.portal_helpers import CITIZEN_PASSWORD, citizen_login
from tests.reporting_helpers import RADIOLOGIST_PASSWORD, Reporting, report_signed_send, signed_report
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup

pytestmark = pytest.mark.django_db

ISOINFO = shutil.which("isoinfo")
CD_PERMS = (*CUP_PERMS, "portal.view_cdmedium", "portal.deliver_cdmedium")


@pytest.fixture(autouse=True)
def _media_dir(settings, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    settings.PACS_CD_MEDIA_DIR = tmp_path / "cd-media"
    return settings.PACS_CD_MEDIA_DIR


def cd_operator(username: str, authority: HealthAuthority | None) -> object:
    user = make_user(username, *CD_PERMS, staff=False).user
    StaffProfile.objects.create(user=user, authority=authority)
    return user


def signed_on_cd(cup: Cup, rep: Reporting) -> tuple[object, Report, str]:
    """A CD booking of the study, its report signed for real and the signal's tasks run as a worker would."""
    booking = linked_booking(cup, rep.study, delivery=DistributionChoice.Delivery.CD)
    report = signed_report(rep)
    results = report_signed_send(report, tasknames.CD_MEDIUM_MAKE)
    return booking, report, str(results[0])


def iso_files(path: Path, out: Path) -> dict[str, Path]:
    """Every file of the image, extracted with pycdlib under ``out``: {ISO 9660 path: file}."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    found: dict[str, Path] = {}
    try:
        for dirname, _dirs, files in iso.walk(iso_path="/"):
            for name in files:
                iso_path = f"{dirname.rstrip('/')}/{name}"
                plain = iso_path.split(";")[0].rstrip(".")
                target = out / plain.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as fh:
                    iso.get_file_from_iso_fp(fh, iso_path=iso_path)
                found[iso_path] = target
    finally:
        iso.close()
    return found


def check_dicom_files(root: Path, study: Study) -> None:
    """The file-set as tests/portal/test_media.py checks the citizen's zip: the DICOMDIR reads with
    FileSet and references every instance, each file byte for byte the stored one, dcmdump reads it."""
    fs = FileSet(root / "DICOMDIR")
    stored = {i.sop_instance_uid: i for i in Instance.objects.filter(series__study=study)}
    assert sorted(i.SOPInstanceUID for i in fs) == sorted(stored)
    for item in fs:
        data = Path(item.path).read_bytes()
        instance = stored[item.SOPInstanceUID]
        assert hashlib.sha256(data).hexdigest() == instance.sha256
        with retrieve.instance_open(instance) as fh:
            assert data == fh.read()
        assert all(re.fullmatch(r"[A-Z0-9_]{1,8}", c) for c in item.ReferencedFileID)
        assert dcmread(item.path).SOPInstanceUID == item.SOPInstanceUID
    assert {i.StudyInstanceUID for i in fs} == {study.study_instance_uid}
    dump = subprocess.run(["dcmdump", str(root / "DICOMDIR")], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "DICOM\\S0001\\I0001" in dump.stdout


def verify_cms(pdf: Path, p7m: Path, tmp_path: Path) -> None:
    """The detached CAdES verifies over the PDF (the demo PKI: the signature's own certificate)."""
    run = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(p7m),
            "-content",
            str(pdf),
            "-noverify",
            "-out",
            str(tmp_path / "verified"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "verified").read_bytes() == pdf.read_bytes()


@pytest.mark.skipif(ISOINFO is None, reason="isoinfo (genisoimage) is not installed")
def test_a_signed_cd_booking_gets_an_ihe_pdi_iso(cup: Cup, reporting: Reporting, tmp_path: Path) -> None:
    booking, report, result = signed_on_cd(cup, reporting)
    assert result == "ready"
    medium = CdMedium.objects.get()
    assert medium.booking == booking and medium.report == report and medium.status == CdMedium.Status.READY
    path = Path(medium.path)
    assert path.is_file() and path.stat().st_size == medium.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == medium.sha256
    assert medium.instance_count == Instance.objects.filter(series__study=reporting.study).count()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    # isoinfo lists it: ISO 9660 level 1 names only, the PDI layout.
    listing = subprocess.run([ISOINFO, "-l", "-i", str(path)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    names = re.findall(r"\s(\S+;1)\s*$", listing.stdout, flags=re.M)
    assert {"DICOMDIR.;1", "README.TXT;1", "INDEX.HTM;1", "V001.PDF;1", "V001.P7M;1", "I0001.;1"} <= set(names)
    assert all(re.fullmatch(r"[A-Z0-9_]{1,8}\.[A-Z0-9_]{0,3};1", n) for n in names), names
    assert "Directory listing of /DICOM/S0001/" in listing.stdout
    assert "Directory listing of /REFERTO/" in listing.stdout
    pvd = subprocess.run([ISOINFO, "-d", "-i", str(path)], capture_output=True, text=True).stdout
    assert f"Volume id: PDI_{booking.accession_number}" in pvd

    # pycdlib reads it back; the DICOMDIR reads with FileSet and references every instance.
    files = iso_files(path, tmp_path / "cd")
    root = tmp_path / "cd"
    check_dicom_files(root, reporting.study)
    stored_pdf = reports.report_file(report=report, which="pdf")
    stored_p7m = reports.report_file(report=report, which="p7m")
    assert (root / "REFERTO" / "V001.PDF").read_bytes() == stored_pdf
    assert (root / "REFERTO" / "V001.P7M").read_bytes() == stored_p7m
    verify_cms(root / "REFERTO" / "V001.PDF", root / "REFERTO" / "V001.P7M", tmp_path)
    readme = (root / "README.TXT").read_text(encoding="utf-8-sig")
    assert "ROSSI MARIO" in readme and booking.accession_number in readme and "DICOMDIR" in readme
    assert "Ospedale di Cattinara" in readme and "Sul disco non c'è un visualizzatore" in readme
    index = (root / "INDEX.HTM").read_text(encoding="utf-8")
    assert '<html lang="it">' in index and 'href="REFERTO/V001.PDF"' in index and 'href="README.TXT"' in index
    # Nothing but DICOM files under DICOM/ (IHE PDI: other content elsewhere).
    assert all(re.fullmatch(r"/DICOM/S\d{4}/I\d{4}\.;1", p) for p in files if p.startswith("/DICOM/")), sorted(files)
    assert AuditEvent.objects.filter(action="portal.cd.make", patient=booking.patient).count() == 1

    # Idempotent: the task again keeps the medium.
    assert cdmedia.medium_make(report_pk=report.pk, study_pk=reporting.study.pk) == "already"
    assert CdMedium.objects.count() == 1


def test_no_medium_for_an_online_booking(cup: Cup, reporting: Reporting) -> None:
    linked_booking(cup, reporting.study, delivery=DistributionChoice.Delivery.ONLINE)
    report = signed_report(reporting)
    assert report_signed_send(report, tasknames.CD_MEDIUM_MAKE) == ["not_cd"]
    assert not CdMedium.objects.exists()
    assert cdmedia.media_overdue() == []


def test_a_correction_makes_a_new_medium_and_supersedes_the_old(cup: Cup, reporting: Reporting, tmp_path: Path) -> None:
    booking, first, _result = signed_on_cd(cup, reporting)
    old = CdMedium.objects.get()
    old_path = Path(old.path)
    draft = reports.report_amend(report=first, user=reporting.radiologist, kind=Report.Kind.CORRECTION)
    draft = reports.report_save(
        report=draft,
        user=reporting.radiologist,
        revision=draft.revision,
        clinical_question=draft.clinical_question,
        technique=draft.technique,
        findings="Nodulo di 4 mm al lobo superiore destro.",
        conclusion="Controllo TC fra 12 mesi.",
    )
    second = reports.report_sign(
        report=draft, user=reporting.radiologist, password=RADIOLOGIST_PASSWORD, revision=draft.revision
    )
    assert report_signed_send(second, tasknames.CD_MEDIUM_MAKE) == ["ready"]
    old.refresh_from_db()
    new = CdMedium.objects.get(report=second)
    assert old.status == CdMedium.Status.SUPERSEDED and old.superseded_by == new and not old_path.exists()
    assert new.status == CdMedium.Status.READY
    root = tmp_path / "cd"
    files = iso_files(Path(new.path), root)
    # The correction replaces the first version: only it is on the disc.
    assert sorted(p for p in files if p.startswith("/REFERTO/")) == ["/REFERTO/V002.P7M;1", "/REFERTO/V002.PDF;1"]
    assert (root / "REFERTO" / "V002.PDF").read_bytes() == reports.report_file(report=second, which="pdf")
    # The old version's task arriving late makes nothing.
    assert cdmedia.medium_make(report_pk=first.pk, study_pk=reporting.study.pk) == "outdated"
    assert list(cdmedia.media_to_burn(user=cd_operator("cupts", reporting.region.authority))) == [new]


def test_delivered_from_the_cup_page_and_downloaded(cup: Cup, reporting: Reporting) -> None:
    booking, _report, _result = signed_on_cd(cup, reporting)
    medium = CdMedium.objects.get()
    operator = cd_operator("cupts", reporting.region.authority)
    client = Client()
    client.force_login(operator)
    page = client.get("/cup/cd/")
    assert page.status_code == 200
    text = page.content.decode()
    assert booking.accession_number in text and "ROSSI" in text and "pronto da masterizzare" in text
    assert AuditEvent.objects.filter(action="portal.cd.list", patient=booking.patient, user=operator).exists()

    download = client.get(f"/cup/cd/{medium.pk}/immagine.iso")
    assert download.status_code == 200 and download["Content-Type"] == "application/x-iso9660-image"
    assert f"{booking.accession_number}" in download["Content-Disposition"]
    data = b"".join(download.streaming_content)
    assert hashlib.sha256(data).hexdigest() == medium.sha256
    assert AuditEvent.objects.filter(action="portal.cd.download", patient=booking.patient, user=operator).count() == 1

    # Consegnato: a GET changes nothing; a POST without CSRF is refused.
    assert client.get(f"/cup/cd/{medium.pk}/consegnato/").status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    assert strict.post(f"/cup/cd/{medium.pk}/consegnato/").status_code == 403
    medium.refresh_from_db()
    assert medium.status == CdMedium.Status.READY
    done = client.post(f"/cup/cd/{medium.pk}/consegnato/")
    assert done.status_code == 302
    medium.refresh_from_db()
    assert medium.status == CdMedium.Status.DELIVERED and medium.delivered_by == operator
    assert medium.delivered_at is not None
    event = AuditEvent.objects.get(action="portal.cd.deliver")
    assert event.patient == booking.patient and event.user == operator
    # Twice: a clear message, nothing changes.
    again = client.post(f"/cup/cd/{medium.pk}/consegnato/", follow=True)
    assert "non si può segnare come consegnato" in again.content.decode()
    assert AuditEvent.objects.filter(action="portal.cd.deliver").count() == 1
    listed = client.get("/cup/cd/").content.decode()
    assert "consegnato" in listed


def test_another_authoritys_cup_and_a_citizen_are_refused(cup: Cup, reporting: Reporting) -> None:
    _booking, _report, _result = signed_on_cd(cup, reporting)
    medium = CdMedium.objects.get()
    foreign = cd_operator("cupud", reporting.other_authority)
    client = Client()
    client.force_login(foreign)
    page = client.get("/cup/cd/")
    assert page.status_code == 200 and medium.booking.accession_number not in page.content.decode()
    assert client.get(f"/cup/cd/{medium.pk}/immagine.iso").status_code == 404
    assert client.post(f"/cup/cd/{medium.pk}/consegnato/").status_code == 404
    medium.refresh_from_db()
    assert medium.status == CdMedium.Status.READY
    assert (
        not AuditEvent.objects.filter(action__startswith="portal.cd.", user=foreign)
        .exclude(action="portal.cd.list")
        .exists()
    )

    # A CUP operator without the CD permissions, and a citizen: 403.
    plain = Client()
    plain.force_login(cup.operator.user)
    assert plain.get("/cup/cd/").status_code == 403
    from portal.accounts import citizen_account_create

    citizen_account_create(codice_fiscale=MARIO_CF, password=CITIZEN_PASSWORD, email="mario@example.org")
    citizen = Client()
    assert citizen_login(citizen, MARIO_CF).status_code == 302
    assert citizen.get("/cup/cd/").status_code in (302, 403)
    assert citizen.get(f"/cup/cd/{medium.pk}/immagine.iso").status_code in (302, 403)
    assert citizen.post(f"/cup/cd/{medium.pk}/consegnato/").status_code in (302, 403)
    medium.refresh_from_db()
    assert medium.status == CdMedium.Status.READY


def test_a_failure_leaves_no_half_written_image(cup: Cup, reporting: Reporting, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    booking = linked_booking(cup, reporting.study, delivery=DistributionChoice.Delivery.CD)
    last = Instance.objects.filter(series__study=reporting.study).order_by("pk").last()
    assert last is not None
    copy = last.copies.get()
    stored = storage.absolute_path(copy.tier, copy.path)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the pixel data
    stored.write_bytes(bytes(data))
    report = signed_report(reporting)
    assert report_signed_send(report, tasknames.CD_MEDIUM_MAKE) == ["failed"]
    medium = CdMedium.objects.get(booking=booking)
    assert medium.status == CdMedium.Status.FAILED and "SHA-256" in medium.error and medium.path == ""
    folder = cdmedia.media_dir()
    assert list(folder.iterdir()) == []
    # The sweep tries it again (once the grace period is over); repaired, it is made.
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    later = timezone.now() + dt.timedelta(hours=1)  # past the grace period
    assert cdmedia.media_overdue() == []
    assert cdmedia.media_overdue(now=later) == [(report.pk, reporting.study.pk)]
    assert cdmedia.medium_make(report_pk=report.pk, study_pk=reporting.study.pk) == "ready"
    medium.refresh_from_db()
    assert medium.status == CdMedium.Status.READY and medium.error == ""
    assert cdmedia.media_overdue(now=later) == []
    assert portal_tasks.cd_media_sweep() == 0


def test_rejected_images_make_the_ready_medium_stale_and_remade(cup: Cup, reporting: Reporting, tmp_path: Path) -> None:
    from archive.ingest import instance_ingest

    booking, _report, _result = signed_on_cd(cup, reporting)
    before = CdMedium.objects.get()
    rejected = Instance.objects.filter(series__study=reporting.study).order_by("pk").last()
    assert rejected is not None
    copy = Copy.objects.get(instance=rejected)
    note = rejection_note([dcmread(storage.absolute_path(copy.tier, copy.path), stop_before_pixels=True)])
    note_path = tmp_path / "note.dcm"
    note.save_as(note_path, enforce_file_format=True)
    from django.test import TestCase

    from tests.conftest import tasks_kept

    with tasks_kept() as kept:
        with TestCase.captureOnCommitCallbacks(execute=True):
            instance_ingest(path=note_path, facility=reporting.study.facility, owned=False, calling_ae="CT01")
        with TestCase.captureOnCommitCallbacks(execute=True):
            results = kept.run(tasknames.REJECTION_PORTAL)
        assert "CDs remade: 1" in str(results[0])
        assert kept.run(tasknames.CD_MEDIUM_MAKE) == ["ready"]
    before.refresh_from_db()
    assert before.status == CdMedium.Status.STALE and not Path(before.path).exists()
    after = CdMedium.objects.get(status=CdMedium.Status.READY)
    assert after.booking == booking and after.instance_count == before.instance_count - 1
    root = tmp_path / "cd"
    iso_files(Path(after.path), root)
    fs = FileSet(root / "DICOMDIR")
    assert rejected.sop_instance_uid not in {i.SOPInstanceUID for i in fs}
    assert len(fs) == after.instance_count
    _ = io  # noqa: B018


def test_memory_does_not_grow_with_the_study(region, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """24 MB of instances go into the image with a few hundred KB of Python memory at most:
    each file is read in pycdlib's blocks, never whole."""
    import tracemalloc

    from archive.sample_data import PatientInfo, write_study
    from portal.media import dicom_media_iso_write
    from tests.dicomweb_helpers import ingest_files

    patient = PatientInfo(patient_id="MRN0001", name="ROSSI^MARIO", birth_date="19560312", sex="M")
    paths = write_study(tmp_path / "big", patient=patient, series=2, instances_per_series=6)
    for path in paths:  # 2 MB each: 1024 x 1024 pixels of 16 bits
        ds = dcmread(path)
        ds.Rows = ds.Columns = 1024
        ds.PixelData = bytes(2 << 20)
        ds.save_as(path, enforce_file_format=True)
    ingest_files(paths, region.facility)
    study = Study.objects.get()
    total = sum(i.size for i in Instance.objects.all())
    assert total > 24 << 20
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        info = dicom_media_iso_write(
            study=study, path=tmp_path / "out" / "big.iso", volume_id="PDI_BIG", files=[(("README.TXT",), b"x")]
        )
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.instance_count == 12 and info.size > total
    print(f"CD image: peak {peak} bytes of Python memory for {total} bytes of instances")
    assert peak < 2 << 20, f"peak {peak} bytes for {total} bytes of instances"
    fs_root = tmp_path / "read"
    iso_files(info.path, fs_root)
    check_dicom_files(fs_root, study)


def test_a_worker_killed_mid_image_is_taken_over(cup: Cup, reporting: Reporting) -> None:
    """A medium left "preparing" without news, and the temporary file of its dead worker:
    the sweep queues the medium again and removes the file once it is old."""
    import os
    import time

    booking = linked_booking(cup, reporting.study, delivery=DistributionChoice.Delivery.CD)
    report = signed_report(reporting)
    now = timezone.now()
    later = now + dt.timedelta(hours=1)  # past the sweep's grace period
    stuck = CdMedium.objects.create(booking=booking, report=report, heartbeat_at=later - dt.timedelta(minutes=1))
    folder = cdmedia.media_dir()
    part = folder / f".{booking.accession_number}-v1-{stuck.pk}.iso.abc.part"
    part.write_bytes(b"half")
    fresh = folder / ".other.iso.def.part"
    fresh.write_bytes(b"being written")
    old = time.time() - 2 * 86400
    os.utime(part, (old, old))

    # News a minute old: its worker is alive.
    assert cdmedia.media_overdue(now=later) == []
    # Ten minutes without news: queued again, and the task takes it over.
    CdMedium.objects.filter(pk=stuck.pk).update(heartbeat_at=later - cdmedia.STALE - dt.timedelta(seconds=1))
    assert cdmedia.media_overdue(now=later) == [(report.pk, reporting.study.pk)]
    assert cdmedia.leftovers_remove() == 1
    assert not part.exists() and fresh.exists()
    assert cdmedia.medium_make(report_pk=report.pk, study_pk=reporting.study.pk) == "ready"
    stuck.refresh_from_db()
    assert stuck.status == CdMedium.Status.READY and CdMedium.objects.count() == 1
    assert cdmedia.media_overdue(now=later) == []


def test_a_hidden_studys_disc_does_not_exist_for_the_cup(cup: Cup, reporting: Reporting) -> None:
    """The oscuramento: the disc is made, but to the CUP it does not exist until the patient reveals the exam."""
    from tests.access_helpers import hide, reveal

    _booking, _report, _result = signed_on_cd(cup, reporting)
    medium = CdMedium.objects.get()
    operator = cd_operator("cupts", reporting.region.authority)
    client = Client()
    client.force_login(operator)
    hide(reporting.study)
    assert medium.booking.accession_number not in client.get("/cup/cd/").content.decode()
    assert client.get(f"/cup/cd/{medium.pk}/immagine.iso").status_code == 404
    assert client.post(f"/cup/cd/{medium.pk}/consegnato/").status_code == 404
    assert client.get("/cup/cd/?format=json").json() == {"media": []}
    reveal(reporting.study)
    assert medium.booking.accession_number in client.get("/cup/cd/").content.decode()
