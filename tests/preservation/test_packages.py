"""A signed report's study becomes a SIP, an AIP in the write-once preservation
tier, and part of a signed and time-stamped volume."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from django.utils import timezone

from archive.models import Instance, Study
from archive.storage import tiers as storage
from preservation import journal, metadata, packages, sincro, tasks, volumes
from preservation.models import JournalEntry, Package, PackageFile, Volume
from tests.conftest import assert_private

from .conftest import Preserved, tier_root

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _tier_sha256(relpath: str) -> str:
    return hashlib.sha256((tier_root() / relpath).read_bytes()).hexdigest()


def test_a_signed_stable_study_becomes_an_archival_package(preserved: Preserved) -> None:
    package = preserved.package
    assert package is not None and package.status == Package.Status.ARCHIVED
    assert package.path == f"aip/{package.identifier}"
    files = {f.name: f for f in package.files.all()}
    instances = Instance.objects.filter(series__study=preserved.rep.study)
    dicom = [f for f in files.values() if f.role == PackageFile.Role.DICOM]
    assert {f.sha256 for f in dicom} == {i.sha256 for i in instances} and len(dicom) == 6
    report = preserved.report
    assert files["referto/referto-v1.pdf"].sha256 == report.pdf_sha256
    assert files["referto/referto-v1.pdf.p7m"].sha256 == report.signature_sha256
    # One metadata record per document (the report and each instance), plus the PdV and PdA indexes.
    assert sum(f.role == PackageFile.Role.METADATA for f in files.values()) == 7
    assert {"PdV.xml", "PdA.xml"} <= set(files)
    for f in files.values():
        assert _tier_sha256(f.path) == f.sha256, f.name
    # Retention: the report without limit, the images ten years from the study date.
    assert files["referto/referto-v1.pdf"].keep_until is None
    study_date = preserved.rep.study.study_date or timezone.localdate()
    assert dicom[0].keep_until == study_date.replace(year=study_date.year + 10)
    assert package.ingest_report["accepted"] is True
    assert package.ingest_report["report_signature"]["ok"] is True
    # The AgID metadata record of the report carries the required fields.
    record = (tier_root() / package.path / f"metadati/REF-{preserved.rep.study.study_instance_uid}-v1.xml").read_bytes()
    assert metadata.metadata_missing(record) == []
    assert b"RSSMRA56C12L424P" in record and report.pdf_sha256.encode() in record
    actions = list(JournalEntry.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["package.archive", "volume.close"]
    assert journal.journal_verify().ok


def test_the_volume_index_lists_every_file_with_its_hash(preserved: Preserved) -> None:
    volume = preserved.volume
    assert volume is not None and volume.status == Volume.Status.CLOSED
    assert preserved.package.volume_id == volume.pk
    index = sincro.index_parse((tier_root() / volume.index_path).read_bytes())
    assert index.volume_id == volume.identifier and index.previous_id == ""
    listed = {f.path: f.sha256 for f in index.files()}
    expected = {f.path: f.sha256 for f in PackageFile.objects.filter(package__volume=volume)}
    assert listed == expected and len(listed) == 17
    for path, sha in listed.items():
        assert _tier_sha256(path) == sha
    xml = (tier_root() / volume.index_path).read_text()
    assert 'xmlns="http://www.uni.com/U3011/sincro-v2/"' in xml and 'sincroVersion="2.0"' in xml
    for element in ("SelfDescription", "PVolume", "FileGroup", "Process", 'role="AuthorizedSigner"', "TimeReference"):
        assert element in xml
    assert volume.timestamp_time is not None and "Zorzut" in volume.signer_name


def test_the_index_signature_and_time_stamp_verify_with_openssl(preserved: Preserved, tmp_path: Path) -> None:
    from archive.reporting import signing
    from preservation import timestamp

    volume = preserved.volume
    assert volume is not None
    root = tier_root()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(signing.ca_certificate_pem())
    index, p7m, tsr = root / volume.index_path, root / volume.signature_path, root / volume.timestamp_path
    cms = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(p7m), "-content", str(index),
         "-CAfile", str(ca), "-purpose", "any", "-out", "/dev/null"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert cms.returncode == 0, cms.stderr
    assert "Verification successful" in cms.stderr
    ts = subprocess.run(
        ["openssl", "ts", "-verify", "-data", str(index), "-in", str(tsr), "-CAfile", str(ca),
         "-untrusted", str(timestamp.tsa_paths()[1])],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ts.returncode == 0, ts.stdout + ts.stderr
    assert "Verification: OK" in ts.stdout
    # The same by the archive's own checks; and one changed byte fails both.
    check = timestamp.timestamp_verify(data=index.read_bytes(), tsr=tsr.read_bytes(), ca_pem=ca.read_bytes())
    assert check.ok, check.reason
    changed = index.read_bytes().replace(b"PIndex", b"PIndeX", 1)
    assert not timestamp.timestamp_verify(data=changed, tsr=tsr.read_bytes(), ca_pem=ca.read_bytes()).ok
    assert not signing.cades_verify_detached(data=changed, signature=p7m.read_bytes()).ok


def test_a_second_volume_follows_the_first(preserved: Preserved, tmp_path: Path) -> None:
    from archive.models import Report
    from archive.reporting import services as reports
    from tests.reporting_helpers import RADIOLOGIST_PASSWORD

    first = preserved.volume
    amended = reports.report_amend(report=preserved.report, user=preserved.rep.radiologist, kind=Report.Kind.ADDENDUM)
    amended = reports.report_save(
        report=amended,
        user=preserved.rep.radiologist,
        revision=amended.revision,
        clinical_question=amended.clinical_question,
        technique=amended.technique,
        findings=amended.findings,
        conclusion="Integrazione: confermato.",
    )
    reports.report_sign(
        report=amended, user=preserved.rep.radiologist, password=RADIOLOGIST_PASSWORD, revision=amended.revision
    )
    [second_package] = packages.package_build(study_pk=preserved.rep.study.pk)
    # The instances are already preserved: the addendum's package holds the report and its metadata.
    assert not second_package.files.filter(role=PackageFile.Role.DICOM).exists()
    second = volumes.volume_close()
    assert second is not None and second.previous_id == first.pk
    index = sincro.index_parse((tier_root() / second.index_path).read_bytes())
    assert index.previous_id == f"IdC-{first.identifier}" and index.previous_sha256 == first.index_sha256
    assert volumes.volume_close() is None


def test_packaging_waits_until_the_study_is_stable(signed: Preserved, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_PRESERVATION_STABLE_MINUTES = 60
    study = signed.rep.study
    Study.objects.filter(pk=study.pk).update(last_received_at=timezone.now() - dt.timedelta(minutes=10))
    assert packages.studies_due() == []
    assert packages.package_build(study_pk=study.pk) == []
    Study.objects.filter(pk=study.pk).update(last_received_at=timezone.now() - dt.timedelta(minutes=61))
    assert packages.studies_due() == [study.pk]
    assert len(packages.package_build(study_pk=study.pk)) == 1
    assert packages.studies_due() == []
    assert packages.package_build(study_pk=study.pk) == []  # idempotent
    assert Package.objects.count() == 1


def test_signing_queues_the_package_task_after_the_stable_time(  # type: ignore[no-untyped-def]
    reporting, officer, settings, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    from tests.reporting_helpers import signed_report

    settings.PACS_PRESERVATION_STABLE_MINUTES = 30
    queued = []
    monkeypatch.setattr(tasks.study_package, "apply_async", lambda **kw: queued.append(kw))
    with django_capture_on_commit_callbacks(execute=True):
        signed_report(reporting)
    assert queued == [{"args": [reporting.study.pk], "countdown": 30 * 60 + 5}]
    # A wait longer than the broker's visibility timeout is left to the sweep.
    settings.PACS_PRESERVATION_STABLE_MINUTES = 24 * 60
    tasks.package_on_report_signed(sender=None, report_pk=1, study_pk=reporting.study.pk)
    assert len(queued) == 1
    assert tasks.studies_package_sweep.__name__  # the beat entry's task exists


def test_a_damaged_report_file_is_rejected_not_archived(signed: Preserved) -> None:
    report = signed.report
    path = storage.absolute_path(report.tier, report.pdf_path)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert packages.package_build(study_pk=signed.rep.study.pk) == []
    package = Package.objects.get()
    assert package.status == Package.Status.REJECTED and not package.files.exists()
    assert not (tier_root() / "aip" / package.identifier).exists()
    assert JournalEntry.objects.get().action == "package.reject"


def test_the_management_command_runs_each_step(signed: Preserved) -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("preservation", "package", stdout=out)
    call_command("preservation", "volume", stdout=out)
    call_command("preservation", "fixity", stdout=out)
    call_command("preservation", "propose-discard", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "1 packages archived"
    assert lines[1].startswith("1 volumes closed VOL-")
    assert lines[2] == "20 files, 1 volumes, 0 anomalies"
    assert lines[3] == "nothing to discard"


def test_an_http_time_stamp_authority_when_one_is_configured(signed: Preserved, settings) -> None:  # type: ignore[no-untyped-def]
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from preservation import timestamp

    seen: list[str] = []

    class TSA(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen.append(self.headers["Content-Type"])
            query = self.rfile.read(int(self.headers["Content-Length"]))
            reply = timestamp._ask_openssl(query)  # the local TSA behind an RFC 3161 HTTP front
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), TSA)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings.PACS_TSA_URL = f"http://127.0.0.1:{server.server_address[1]}/tsa"
        packages.package_build(study_pk=signed.rep.study.pk)
        volume = volumes.volume_close()
    finally:
        server.shutdown()
    assert seen == ["application/timestamp-query"]
    assert volume is not None and volume.timestamp_time is not None
    from archive.reporting import signing

    check = timestamp.timestamp_verify(
        data=(tier_root() / volume.index_path).read_bytes(),
        tsr=(tier_root() / volume.timestamp_path).read_bytes(),
        ca_pem=signing.ca_certificate_pem(),
    )
    assert check.ok, check.reason


def test_archived_packages_and_exports_are_the_service_accounts_only(
    loose_umask: None, preserved: Preserved, tmp_path: Path, settings
) -> None:  # type: ignore[no-untyped-def]
    """Archived files were 0444 in folders 0755, exports 0644: readable by every local user."""
    from preservation import export

    # Write-once: not even the owner may write an archived file.
    assert assert_private(tier_root().resolve(), file_mode=0o400) > 0
    settings.PACS_PRESERVATION_EXPORT_DIR = tmp_path / "exports"
    path = export.dip_export(packages=[preserved.package], label="studio", user=preserved.officer)
    assert path.parent == tmp_path / "exports"
    assert assert_private(tmp_path / "exports") == 1
