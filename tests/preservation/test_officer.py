"""Who may sign the preservation's evidence: only a certificate with the
preservation-officer role (issue 22, finding 1).

The forged DIP of the issue: one DICOM file changed, its hash fixed in the
volume's index, the index and manifest.sha256 re-signed with the demo
radiologist's key (a valid certificate of the same CA) and the index
time-stamped again by the genuine TSA. It must fail verify_package naming the
signer, and fail the openssl commands the DIP's LEGGIMI gives an auditor.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from django.core.management import CommandError, call_command

from archive.reporting import signing
from preservation import export, packages, signer, timestamp, volumes
from preservation.models import PackageFile, Volume

from .conftest import Preserved, tier_root

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def dip(preserved: Preserved, tmp_path: Path) -> Path:
    return export.dip_export(
        packages=export.packages_for(study=preserved.rep.study), label="studio di prova", directory=tmp_path / "out"
    )


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(members: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(members):
            zf.writestr(name, members[name])
    return path


def _b64(hex_sha: str) -> bytes:
    return base64.b64encode(bytes.fromhex(hex_sha))


def forge(dip: Path, preserved: Preserved, out: Path, *, user: object) -> tuple[Path, str]:
    """The forgery of the issue, signed with ``user``'s key; returns the zip and the DICOM file changed."""
    members = _members(dip)
    dicom = PackageFile.objects.filter(package=preserved.package, role=PackageFile.Role.DICOM).order_by("name").first()
    data = bytearray(members[dicom.path])
    data[-1] ^= 0x01  # one pixel
    members[dicom.path] = bytes(data)
    index_name = f"volumes/{preserved.volume.identifier}/index.xml"
    index = members[index_name]
    assert index.count(_b64(dicom.sha256)) == 1
    index = index.replace(_b64(dicom.sha256), _b64(hashlib.sha256(members[dicom.path]).hexdigest()))
    members[index_name] = index
    members[index_name + ".p7m"] = signing.cades_sign_detached(data=index, user=user)
    members[index_name + ".tsr"] = timestamp.timestamp_obtain(index)  # the genuine TSA stamps any hash
    manifest = "".join(
        f"{hashlib.sha256(members[name]).hexdigest()}  {name}\n"
        for name in sorted(members)
        if name not in (export.MANIFEST, export.MANIFEST_SIGNATURE)
    ).encode()
    members[export.MANIFEST] = manifest
    members[export.MANIFEST_SIGNATURE] = signing.cades_sign_detached(data=manifest, user=user)
    return _write(members, out), dicom.path


def _readme_commands(folder: Path) -> list[str]:
    """The command lines LEGGIMI.txt gives the auditor (openssl and sha256sum), as printed."""
    readme = (folder / export.README).read_text()
    return [line.strip() for line in readme.splitlines() if re.match(r"\s+(openssl|sha256sum) ", line)]


def _run(cmd: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shlex.split(cmd), cwd=folder, capture_output=True, text=True, timeout=60)


def test_the_demo_officer_certificate_holds_the_role_and_a_radiologist_does_not(preserved: Preserved) -> None:
    officer_pem = signing.signer_certificate_pem(preserved.officer)
    radiologist_pem = signing.signer_certificate_pem(preserved.rep.radiologist)
    assert signing.PRESERVATION_OFFICER_POLICY in signing.certificate_roles(officer_pem).policies
    assert signing.certificate_roles(radiologist_pem).policies == ()
    assert signer.officer_role(officer_pem).ok
    role = signer.officer_role(radiologist_pem)
    assert not role.ok and "non ha il ruolo di responsabile della conservazione" in role.text
    # The volume was signed by the officer, and the registry says so.
    assert preserved.volume.signer_name.startswith("CN=Anna Zorzut")


def test_the_forged_dip_of_the_issue_fails_naming_the_signer(preserved: Preserved, dip: Path, tmp_path: Path) -> None:
    forged, changed = forge(dip, preserved, tmp_path / "forged.zip", user=preserved.rep.radiologist)

    result = export.package_verify(forged)

    assert not result.ok
    index_sig = f"volumes/{preserved.volume.identifier}/index.xml.p7m"
    problems = dict(result.problems)
    assert set(problems) == {export.MANIFEST_SIGNATURE, index_sig}, result.problems  # nothing else gives it away
    for reason in problems.values():
        assert "firmato da CN=Stefano Cossutta" in reason
        assert "non ha il ruolo di responsabile della conservazione" in reason
    seen = {s.name: s for s in result.signatures}
    assert seen[index_sig].signer.startswith("CN=Stefano Cossutta") and not seen[index_sig].ok

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="NON VERIFICATO"):
        call_command("verify_package", str(forged), stdout=out, stderr=err)
    assert "firmatario CN=Stefano Cossutta" in out.getvalue()
    assert "NON VALIDA" in out.getvalue()
    assert "CN=Stefano Cossutta" in err.getvalue() and "ruolo" in err.getvalue()

    # The auditor's openssl commands from LEGGIMI.txt catch it too: the hashes
    # and the time stamp pass (they were redone), the signer's role does not.
    folder = tmp_path / "forged"
    zipfile.ZipFile(forged).extractall(folder)
    verdicts = {cmd: _run(cmd, folder).returncode for cmd in _readme_commands(folder)}
    role_checks = [c for c in verdicts if c.startswith("openssl cms -verify")]
    assert len(role_checks) == 2 and all("-explicit_policy" in c for c in role_checks)
    assert all(verdicts[c] != 0 for c in role_checks), verdicts
    assert all(rc == 0 for c, rc in verdicts.items() if c.startswith(("sha256sum", "openssl ts"))), verdicts


def test_a_dip_re_signed_by_the_officer_still_verifies(preserved: Preserved, dip: Path, tmp_path: Path) -> None:
    # The same rebuild with the officer's key: the role, not the rebuild, is what the check refuses.
    rebuilt, _changed = forge(dip, preserved, tmp_path / "rebuilt.zip", user=preserved.officer)
    assert export.package_verify(rebuilt).ok


def test_the_readme_commands_work_on_a_genuine_dip(preserved: Preserved, dip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "genuine"
    zipfile.ZipFile(dip).extractall(folder)
    commands = _readme_commands(folder)
    assert any(c.startswith("sha256sum -c") for c in commands)
    assert sum(c.startswith("openssl ts -verify") for c in commands) == 2
    assert any(f"-policy {signing.PRESERVATION_OFFICER_POLICY} -explicit_policy" in c for c in commands)
    for cmd in commands:
        done = _run(cmd, folder)
        assert done.returncode == 0, (cmd, done.stdout, done.stderr)
        if cmd.startswith("openssl x509") and "firmatario" in cmd:
            # Who signed, and the role their certificate carries.
            assert "Anna Zorzut" in done.stdout and signing.PRESERVATION_OFFICER_POLICY in done.stdout
    out = io.StringIO()
    call_command("verify_package", str(dip), stdout=out)
    text = out.getvalue()
    assert "firmatario CN=Anna Zorzut" in text
    assert f"ruolo: responsabile della conservazione (politica {signing.PRESERVATION_OFFICER_POLICY})" in text
    assert "TSA CN=PACS regionale FVG – TSA dimostrativa" in text and "CA: SHA-256 " in text


def test_the_signer_refuses_a_key_without_the_role(signed: Preserved, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_PRESERVATION_SIGNER = "radiologo"
    [package] = packages.package_build(study_pk=signed.rep.study.pk)
    with pytest.raises(volumes.VolumeError, match="non ha il ruolo di responsabile della conservazione"):
        volumes.volume_close()
    # Nothing was published, and the volume is closed by the officer once configured.
    volume = Volume.objects.get()
    assert volume.status == Volume.Status.BUILDING and not volume.index_path
    settings.PACS_PRESERVATION_SIGNER = "conservatore"
    Volume.objects.filter(pk=volume.pk).update(heartbeat_at=volume.created_at.replace(year=2000))
    closed = volumes.volume_close()
    assert closed is not None and closed.pk == volume.pk and closed.status == Volume.Status.CLOSED
    package.refresh_from_db()
    settings.PACS_PRESERVATION_SIGNER = "radiologo"
    with pytest.raises(export.ExportError, match="non ha il ruolo"):
        export.dip_export(packages=[package], label="x", directory=tmp_path)


def test_a_subject_rule_narrows_the_role(preserved: Preserved, dip: Path, settings) -> None:  # type: ignore[no-untyped-def]
    # A qualified CA's policy is held by every holder: the officer is then named by subject.
    settings.PACS_PRESERVATION_SIGNER_SUBJECTS = ["serialNumber=PACS-someone-else"]
    result = export.package_verify(dip)
    assert not result.ok and all("responsabili della conservazione ammessi" in r for _, r in result.problems)
    settings.PACS_PRESERVATION_SIGNER_SUBJECTS = ["serialNumber=PACS-conservatore"]
    assert export.package_verify(dip).ok


def test_a_time_stamp_from_another_tsa_is_refused(preserved: Preserved, tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    # A second TSA with a valid certificate from the same CA: not in PACS_TSA_CERTIFICATES.
    settings.PACS_TSA_DIR = tmp_path / "other-tsa"
    timestamp.tsa_demo_create()
    data = b"the index of a volume"
    tsr = timestamp.timestamp_obtain(data)
    ca = signing.ca_certificate_pem()
    assert timestamp.timestamp_verify(data=data, tsr=tsr, ca_pem=ca).ok  # the CA alone would accept it
    check = timestamp.timestamp_verify(data=data, tsr=tsr, ca_pem=ca, trusted_tsa_pem=timestamp.trusted_tsa_pem())
    assert not check.ok and "TSA non accettata" in check.reason
    # The auditor's pinned check (LEGGIMI: -CAfile certificati/tsa.pem -partial_chain) refuses it as well.
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "x.tsr").write_bytes(tsr)
    (tmp_path / "tsa.pem").write_bytes(timestamp.trusted_tsa_pem())
    done = subprocess.run(
        ["openssl", "ts", "-verify", "-data", "data", "-in", "x.tsr", "-CAfile", "tsa.pem", "-partial_chain"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert x509.load_pem_x509_certificates(timestamp.trusted_tsa_pem())[0] != x509.load_pem_x509_certificate(
        (tmp_path / "other-tsa" / "tsa.crt.pem").read_bytes()
    )


def test_the_role_must_be_configured(settings) -> None:  # type: ignore[no-untyped-def]
    from preservation.checks import check_preservation

    assert not [e for e in check_preservation(None) if e.id.startswith("preservation.E")]
    settings.PACS_PRESERVATION_SIGNER_POLICIES = []
    settings.PACS_PRESERVATION_SIGNER_SUBJECTS = []
    assert "preservation.E003" in {e.id for e in check_preservation(None)}
    settings.PACS_PRESERVATION_SIGNER_POLICIES = ["not-an-oid"]
    assert "preservation.E004" in {e.id for e in check_preservation(None)}


def test_a_damaged_time_stamp_token_fails_as_in_openssl(preserved: Preserved, tmp_path: Path) -> None:
    from asn1crypto import tsp

    index = (tier_root() / preserved.volume.index_path).read_bytes()
    tsr = (tier_root() / preserved.volume.timestamp_path).read_bytes()
    ca = signing.ca_certificate_pem()
    trusted = timestamp.trusted_tsa_pem()
    token = tsp.TimeStampResp.load(tsr)["time_stamp_token"]["content"]
    ca_in_token = next(c.chosen.dump() for c in token["certificates"] if c.chosen.ca)
    at = tsr.find(ca_in_token)
    damaged = bytearray(tsr)
    damaged[at + ca_in_token.find(b"\x17\x0d")] ^= 0x01  # a validity time's tag in the CA certificate the token carries
    (tmp_path / "index.xml").write_bytes(index)
    (tmp_path / "ca.pem").write_bytes(ca)
    (tmp_path / "tsa.pem").write_bytes(trusted)
    # OpenSSL refuses the damaged certificate and ignores trailing bytes; the project refuses both.
    for name, data, openssl_accepts in (("damaged", bytes(damaged), False), ("trailing", tsr + b"\x00", True)):
        (tmp_path / f"{name}.tsr").write_bytes(data)
        ours = timestamp.timestamp_verify(data=index, tsr=data, ca_pem=ca, trusted_tsa_pem=trusted)
        assert not ours.ok, name
        theirs = subprocess.run(
            ["openssl", "ts", "-verify", "-data", "index.xml", "-in", f"{name}.tsr", "-CAfile", "ca.pem"]
            + ["-untrusted", "tsa.pem"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert (theirs.returncode == 0) is openssl_accepts, (name, theirs.stdout, theirs.stderr)


def test_the_fixity_audit_names_a_volume_signer_without_the_role(preserved: Preserved) -> None:
    from django.utils import timezone as tz

    from preservation import fixity
    from preservation.models import PreservationAlert

    from .conftest import as_owner

    volume = preserved.volume
    index = (tier_root() / volume.index_path).read_bytes()
    forged = signing.cades_sign_detached(data=index, user=preserved.rep.radiologist)
    target = tier_root() / volume.signature_path
    target.chmod(0o644)
    target.write_bytes(forged)
    with as_owner():  # the registry made to agree: only the role gives it away
        Volume.objects.filter(pk=volume.pk).update(signature_sha256=hashlib.sha256(forged).hexdigest())

    audit = fixity.fixity_audit()

    alert = PreservationAlert.objects.get()
    assert (alert.kind, alert.path, alert.volume_id) == (
        PreservationAlert.Kind.SIGNATURE,
        volume.signature_path,
        volume.pk,
    )
    assert (
        "firmato da CN=Stefano Cossutta" in alert.detail and "ruolo di responsabile della conservazione" in alert.detail
    )
    assert audit.failures == 1 and alert.last_seen_at <= tz.now()
