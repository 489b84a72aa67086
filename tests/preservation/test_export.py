"""Dissemination packages (DIP): exported for a study, a patient or a volume,
verified offline by manage.py verify_package and by sha256sum and openssl;
one changed byte anywhere fails and names the file."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from preservation import export
from preservation.models import JournalEntry, PackageFile

from .conftest import Preserved

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def dip(preserved: Preserved, tmp_path: Path) -> Path:
    return export.dip_export(
        packages=export.packages_for(study=preserved.rep.study), label="studio di prova", directory=tmp_path / "out"
    )


def _with_one_byte_changed(src: Path, member: str, dst: Path) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == member:
                changed = bytearray(data)
                changed[len(changed) // 2] ^= 0x01
                data = bytes(changed)
            zout.writestr(info, data)
    return dst


def test_a_study_dip_verifies_offline(preserved: Preserved, dip: Path, tmp_path: Path) -> None:
    result = export.package_verify(dip)
    assert result.ok, result.problems
    names = zipfile.ZipFile(dip).namelist()
    volume = preserved.volume
    assert f"volumes/{volume.identifier}/index.xml" in names
    assert f"volumes/{volume.identifier}/index.xml.p7m" in names
    assert f"volumes/{volume.identifier}/index.xml.tsr" in names
    for f in PackageFile.objects.filter(package=preserved.package):
        assert f.path in names
    assert result.checked == len(names) - 2  # all but the manifest and its signature
    call_command("verify_package", str(dip))
    readme = zipfile.ZipFile(dip).read("LEGGIMI.txt").decode()
    assert "sha256sum -c manifest.sha256" in readme and "openssl ts -verify" in readme
    assert JournalEntry.objects.filter(action="export.dip").count() == 1

    # Standard tools, as the README says.
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(dip).extractall(folder)
    done = subprocess.run(["sha256sum", "--quiet", "-c", "manifest.sha256"], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    index = f"volumes/{volume.identifier}/index.xml"
    for cmd in (
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "manifest.sha256.p7m",
         "-content", "manifest.sha256", "-CAfile", "certificati/ca.pem", "-purpose", "any", "-out", "/dev/null"],
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", f"{index}.p7m",
         "-content", index, "-CAfile", "certificati/ca.pem", "-purpose", "any", "-out", "/dev/null"],
        ["openssl", "ts", "-verify", "-data", index, "-in", f"{index}.tsr",
         "-CAfile", "certificati/ca.pem", "-untrusted", "certificati/tsa.pem"],
    ):  # fmt: skip
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, (cmd, done.stdout, done.stderr)


def _members(preserved: Preserved) -> dict[str, str]:
    v = preserved.volume.identifier
    dicom = PackageFile.objects.filter(package=preserved.package, role=PackageFile.Role.DICOM).first()
    return {
        "dicom": dicom.path,
        "report": f"{preserved.package.path}/referto/referto-v1.pdf",
        "report signature": f"{preserved.package.path}/referto/referto-v1.pdf.p7m",
        "metadata": f"{preserved.package.path}/PdA.xml",
        "index": f"volumes/{v}/index.xml",
        "index signature": f"volumes/{v}/index.xml.p7m",
        "time stamp": f"volumes/{v}/index.xml.tsr",
        "manifest": "manifest.sha256",
        "readme": "LEGGIMI.txt",
        "descriptor": "PdD.xml",
    }


def test_one_changed_byte_anywhere_fails_and_names_the_file(preserved: Preserved, dip: Path, tmp_path: Path) -> None:
    # One export, each member altered in turn (a fixture per member would rebuild the study each time).
    for what, member in _members(preserved).items():
        bad = _with_one_byte_changed(dip, member, tmp_path / f"bad-{what.replace(' ', '-')}.zip")
        result = export.package_verify(bad)
        assert not result.ok, what
        assert member in {name for name, _ in result.problems}, (what, result.problems)
    with pytest.raises(CommandError, match="NON VERIFICATO"):
        call_command("verify_package", str(bad))


def test_a_missing_file_is_named(preserved: Preserved, dip: Path, tmp_path: Path) -> None:
    member = _members(preserved)["dicom"]
    bad = tmp_path / "short.zip"
    with zipfile.ZipFile(dip) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            if info.filename != member:
                zout.writestr(info, zin.read(info.filename))
    problems = dict(export.package_verify(bad).problems)
    assert member in problems


def test_a_dip_for_the_patient_and_for_the_volume(preserved: Preserved, tmp_path: Path) -> None:
    out = tmp_path / "cmd"
    call_command(
        "preservation", "export", "--patient", preserved.rep.study.patient.codice_fiscale, "--output", str(out)
    )
    call_command("preservation", "export", "--volume", preserved.volume.identifier, "--output", str(out))
    zips = sorted(out.glob("*.zip"))
    assert len(zips) == 2
    for z in zips:
        assert export.package_verify(z).ok


def test_a_package_not_yet_in_a_volume_is_not_exported(signed: Preserved, tmp_path: Path) -> None:
    from preservation import packages

    packages.package_build(study_pk=signed.rep.study.pk)
    with pytest.raises(export.ExportError, match="volume"):
        export.dip_export(packages=export.packages_for(study=signed.rep.study), label="x", directory=tmp_path)


def test_the_officer_exports_a_volume_from_the_admin(preserved: Preserved, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from django.test import Client

    settings.SESSION_COOKIE_SECURE = False
    settings.PACS_PRESERVATION_EXPORT_DIR = tmp_path / "exports"
    client = Client()
    client.force_login(preserved.officer)
    response = client.post(
        "/admin/preservation/volume/", {"action": "export_dip", "_selected_action": [preserved.volume.pk]}
    )
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    zipped = tmp_path / "from-admin.zip"
    zipped.write_bytes(b"".join(response.streaming_content))
    assert export.package_verify(zipped).ok
    entry = JournalEntry.objects.get(action="export.dip")
    assert entry.username == "conservatore" and entry.detail["volumes"] == [preserved.volume.identifier]
