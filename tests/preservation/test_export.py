"""Dissemination packages (DIP): exported for a study, a patient or a volume,
verified offline by manage.py verify_package and by sha256sum and openssl;
one changed byte anywhere fails and names the file. From the admin, a study the
user may not see (hidden by the patient, another authority's) is absent from a
DIP and from the preservation pages (archive.access)."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from archive.models import StaffProfile
from portal.models import Concealment, EmergencyAccess
from preservation import export, retention
from preservation.models import JournalEntry, LegalHold, PackageFile, PreservationAlert

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
    settings.SESSION_COOKIE_SECURE = False
    settings.PACS_PRESERVATION_EXPORT_DIR = tmp_path / "exports"
    _may_see_studies(preserved.officer)
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


# --- The admin through the access policy (archive.access) --------------------------------------------


def _may_see_studies(user: object, *perms: str) -> None:
    """The officer reads the region's studies (``archive.view_study``, no authority) and ``perms``."""
    for perm in ("archive.view_study", *perms):
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))  # type: ignore[attr-defined]


def _officer_client(preserved: Preserved, *perms: str) -> Client:
    _may_see_studies(preserved.officer, *perms)
    client = Client()
    client.force_login(get_user_model().objects.get(pk=preserved.officer.pk))  # type: ignore[attr-defined]
    return client


def _export(client: Client, model: str, pk: int) -> object:
    return client.post(f"/admin/preservation/{model}/", {"action": "export_dip", "_selected_action": [pk]}, follow=True)


@pytest.mark.parametrize("model", ["volume", "package"])
def test_the_admin_exports_no_dip_of_a_hidden_study(preserved: Preserved, settings, tmp_path: Path, model: str) -> None:  # type: ignore[no-untyped-def]
    settings.SESSION_COOKIE_SECURE = False
    settings.PACS_PRESERVATION_EXPORT_DIR = tmp_path / "exports"
    client = _officer_client(preserved)
    study = preserved.rep.study
    pk = preserved.volume.pk if model == "volume" else preserved.package.pk
    Concealment.objects.create(patient=study.patient, study=study)

    response = _export(client, model, pk)

    # Absent, as for a volume with nothing archived (or a package that is not there).
    assert response.status_code == 200 and "Content-Disposition" not in response
    assert "Nessun pacchetto archiviato da esportare." in response.content.decode()
    assert not JournalEntry.objects.filter(action="export.dip").exists()
    assert not list((tmp_path / "exports").glob("*.zip"))
    assert client.get("/admin/preservation/package/").context["cl"].result_count == 0

    # An emergency access for the patient opens it again, for this officer only.
    EmergencyAccess.objects.create(
        user=preserved.officer,
        patient=study.patient,
        reason="Richiesta urgente dell'autorità giudiziaria.",
        at=timezone.now(),
    )
    opened = _export(client, model, pk)
    assert opened.status_code == 200 and "attachment" in opened["Content-Disposition"]


def test_the_admin_exports_no_dip_of_another_authoritys_study(preserved: Preserved, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.SESSION_COOKIE_SECURE = False
    settings.PACS_PRESERVATION_EXPORT_DIR = tmp_path / "exports"
    client = _officer_client(preserved)
    StaffProfile.objects.create(user=preserved.officer, authority=preserved.rep.other_authority)
    response = _export(client, "volume", preserved.volume.pk)
    assert "Content-Disposition" not in response
    assert "Nessun pacchetto archiviato da esportare." in response.content.decode()
    assert client.get("/admin/preservation/package/").context["cl"].result_count == 0
    assert client.get(f"/admin/preservation/package/{preserved.package.pk}/change/").status_code == 302


def test_the_preservation_admin_shows_nothing_of_a_hidden_study(preserved: Preserved) -> None:
    study = preserved.rep.study
    client = _officer_client(
        preserved,
        "preservation.view_journalentry",
        "preservation.view_legalhold",
        "preservation.add_legalhold",
        "preservation.view_preservationalert",
    )
    hold = retention.hold_place(user=preserved.officer, reason="Contenzioso in corso.", study=study)
    alert = PreservationAlert.objects.create(kind=PreservationAlert.Kind.DAMAGED, package=preserved.package, path="x")
    package_entries = set(JournalEntry.objects.filter(object_id=preserved.package.identifier))
    hold_entries = set(JournalEntry.objects.filter(event=JournalEntry.Event.HOLD))
    assert package_entries and hold_entries

    def listed(model: str) -> set:  # type: ignore[type-arg]
        response = client.get(f"/admin/preservation/{model}/")
        assert response.status_code == 200
        return set(response.context["cl"].result_list)

    assert package_entries | hold_entries <= listed("journalentry")
    assert hold in listed("legalhold") and alert in listed("preservationalert")

    Concealment.objects.create(patient=study.patient, study=study)

    assert not listed("journalentry") & (package_entries | hold_entries)
    assert hold not in listed("legalhold") and alert not in listed("preservationalert")
    assert (
        client.get("/admin/preservation/package/", {"q": study.patient.codice_fiscale}).context["cl"].result_count == 0
    )
    # A hidden study's id typed into a new hold is "not a valid choice", as a missing one.
    form = {"reason": "Nuovo blocco.", "study": str(study.pk), "patient": ""}
    hidden = client.post("/admin/preservation/legalhold/add/", form)
    missing = client.post("/admin/preservation/legalhold/add/", {**form, "study": "999999"})
    assert hidden.status_code == missing.status_code == 200
    assert hidden.context["adminform"].form.errors == missing.context["adminform"].form.errors
    assert str(study) not in hidden.content.decode() and study.study_description not in hidden.content.decode()
    assert LegalHold.objects.count() == 1
