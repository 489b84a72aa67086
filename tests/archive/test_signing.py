from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from archive.models import Report
from archive.reporting import signing
from archive.reporting.pdf import report_pdf
from archive.storage import tiers as storage
from kernel.models import AuditEvent
from tests.conftest import REPO, assert_private
from tests.reporting_helpers import Reporting, reporting  # noqa: F401
from tests.reporting_helpers import signed_report as report_signed_for_real

PDF = b"%PDF-1.4\n% a report\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"


def openssl_verify(tmp_path: Path, *, pdf: bytes, p7m: bytes, ca: bytes) -> subprocess.CompletedProcess[str]:
    (tmp_path / "r.pdf").write_bytes(pdf)
    (tmp_path / "r.p7m").write_bytes(p7m)
    (tmp_path / "ca.pem").write_bytes(ca)
    return subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "r.p7m", "-content", "r.pdf"]
        + ["-CAfile", "ca.pem", "-purpose", "any", "-out", "/dev/null"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_signature_verifies_with_our_code_and_with_openssl(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.radiologist, signing_time=when)

    check = signing.cades_verify_detached(data=PDF, signature=p7m)

    assert check.ok, check.reason
    assert check.reason == ""
    assert check.signer_subject.startswith("CN=Stefano Cossutta, ")
    assert check.signing_time == when
    assert check.signer_certificate_pem == signing.signer_certificate_pem(reporting.radiologist)
    assert signing.signer_name(reporting.radiologist) == "Stefano Cossutta"
    result = openssl_verify(tmp_path, pdf=PDF, p7m=p7m, ca=signing.ca_certificate_pem())
    assert result.returncode == 0, result.stderr
    assert "Verification successful" in result.stderr


def test_one_changed_byte_fails_in_openssl_and_our_verifier_says_why(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.radiologist)
    damaged = PDF.replace(b"a report", b"a rEport")

    check = signing.cades_verify_detached(data=damaged, signature=p7m)

    assert not check.ok
    assert "modificato" in check.reason
    assert check.signer_subject.startswith("CN=Stefano Cossutta")
    result = openssl_verify(tmp_path, pdf=damaged, p7m=p7m, ca=signing.ca_certificate_pem())
    assert result.returncode != 0
    assert "Verification failure" in result.stderr


def test_the_signature_is_detached_cades_bes(reporting: Reporting) -> None:  # noqa: F811
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.radiologist)

    content_info = cms.ContentInfo.load(p7m)
    signed_data = content_info["content"]
    assert content_info["content_type"].native == "signed_data"
    assert signed_data["encap_content_info"]["content"].native is None
    (signer_info,) = signed_data["signer_infos"]
    assert signer_info["digest_algorithm"]["algorithm"].native == "sha256"
    names = {attr["type"].native for attr in signer_info["signed_attrs"]}
    assert {"content_type", "message_digest", "signing_time", "signing_certificate_v2"} <= names


def test_a_signature_from_another_ca_is_refused(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    other_ca = tmp_path / "other"
    signing.demo_pki_create(users=[], directory=other_ca)
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.radiologist)

    check = signing.cades_verify_detached(data=PDF, signature=p7m, ca_pem=(other_ca / "ca.pem").read_bytes())

    assert not check.ok
    assert "CA" in check.reason


def test_a_swapped_certificate_or_a_forged_signature_is_refused(reporting: Reporting) -> None:  # noqa: F811
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.radiologist)
    content_info = cms.ContentInfo.load(p7m)
    signature = content_info["content"]["signer_infos"][0]["signature"]
    forged = bytearray(signature.native)
    forged[-1] ^= 1
    content_info["content"]["signer_infos"][0]["signature"] = bytes(forged)

    check = signing.cades_verify_detached(data=PDF, signature=content_info.dump(force=True))

    assert not check.ok
    assert "non è valida" in check.reason


def test_garbage_is_not_a_signature(reporting: Reporting) -> None:  # noqa: F811
    check = signing.cades_verify_detached(data=PDF, signature=b"not a signature")

    assert not check.ok
    assert "CMS" in check.reason


def test_a_user_without_key_cannot_sign(region: object) -> None:
    user = get_user_model().objects.create_user(username="senzachiave", first_name="Anna", last_name="Bianchi")

    with pytest.raises(signing.SigningError) as excinfo:
        signing.cades_sign_detached(data=PDF, user=user)

    assert "senzachiave" in excinfo.value.message
    assert "chiave" in excinfo.value.message
    with pytest.raises(signing.SigningError):
        signing.signer_name(user)


def test_demo_pki_create_is_idempotent(region: object, tmp_path: Path) -> None:
    user = get_user_model().objects.create_user(username="m.rossi", first_name="Maria", last_name="Rossi")
    directory = tmp_path / "pki"

    signing.demo_pki_create(users=[user], directory=directory)
    files = sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file())
    first = {p: (directory / p).read_bytes() for p in files}
    signing.demo_pki_create(users=[user], directory=directory)

    assert files == [Path("ca.key.pem"), Path("ca.pem"), Path("users/m.rossi.crt.pem"), Path("users/m.rossi.key.pem")]
    assert {p: (directory / p).read_bytes() for p in files} == first
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "users").stat().st_mode) == 0o700
    for path in files:
        assert stat.S_IMODE((directory / path).stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(first[Path("users/m.rossi.crt.pem")])
    ca = x509.load_pem_x509_certificate(first[Path("ca.pem")])
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "Maria Rossi"
    assert ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == signing.CA_NAME
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and not usage.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    cert.verify_directly_issued_by(ca)


def test_keys_are_encrypted_with_the_passphrase(region: object, tmp_path: Path, settings: object) -> None:
    settings.PACS_SIGNING_DIR = tmp_path / "pki"  # type: ignore[attr-defined]
    settings.PACS_SIGNING_KEY_PASSPHRASE = "una passphrase lunga"  # type: ignore[attr-defined]
    user = get_user_model().objects.create_user(username="cifrato", first_name="Luca", last_name="Verdi")

    signing.demo_pki_create(users=[user])
    key_pem = (tmp_path / "pki" / "users" / "cifrato.key.pem").read_bytes()
    p7m = signing.cades_sign_detached(data=PDF, user=user)

    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert (tmp_path / "pki" / "ca.key.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    serialization.load_pem_private_key(key_pem, password=b"una passphrase lunga")
    assert signing.cades_verify_detached(data=PDF, signature=p7m).ok

    settings.PACS_SIGNING_KEY_PASSPHRASE = "sbagliata"  # type: ignore[attr-defined]
    with pytest.raises(signing.SigningError) as excinfo:
        signing.cades_sign_detached(data=PDF, user=user)
    assert "passphrase" in excinfo.value.message

    settings.PACS_SIGNING_KEY_PASSPHRASE = ""  # type: ignore[attr-defined]
    with pytest.raises(signing.SigningError) as excinfo:
        signing.cades_sign_detached(data=PDF, user=user)
    assert "PACS_SIGNING_KEY_PASSPHRASE" in excinfo.value.message


def test_the_default_directory_is_the_setting(reporting: Reporting) -> None:  # noqa: F811
    directory = Path(settings.PACS_SIGNING_DIR)
    assert (directory / "users" / "radiologo.key.pem").exists()
    assert signing.ca_certificate_pem() == (directory / "ca.pem").read_bytes()


# --- manage.py verify_report -------------------------------------------------------


def signed_report(rep: Reporting) -> Report:
    """A signed report stored the way report_sign stores it."""
    signed_at = timezone.now()
    draft = Report(study=rep.study, version=1, author=rep.radiologist, conclusion="Nei limiti della norma.")
    pdf = report_pdf(report=draft, signer_name=signing.signer_name(rep.radiologist), signed_at=signed_at)
    p7m = signing.cades_sign_detached(data=pdf, user=rep.radiologist, signing_time=signed_at)
    tier = storage.facility_tier(rep.study.facility.code)
    paths = {}
    for data, ext in ((pdf, "pdf"), (p7m, "p7m")):
        sha = hashlib.sha256(data).hexdigest()
        paths[ext] = (
            storage.report_relpath(study_uid=rep.study.study_instance_uid, version=1, sha256=sha, extension=ext),
            sha,
        )
        storage.place_bytes(data, tier, paths[ext][0])
    draft.status = Report.Status.SIGNED
    draft.signed_at = signed_at
    draft.signer_name = signing.signer_name(rep.radiologist)
    draft.signer_certificate = signing.signer_certificate_pem(rep.radiologist)
    draft.tier = tier
    draft.pdf_path, draft.pdf_sha256 = paths["pdf"]
    draft.pdf_size = len(pdf)
    draft.signature_path, draft.signature_sha256 = paths["p7m"]
    draft.save()
    return draft


def test_verify_report_by_id(reporting: Reporting) -> None:  # noqa: F811
    report = signed_report(reporting)
    out = io.StringIO()

    call_command("verify_report", str(report.pk), stdout=out)

    assert "firmatario: CN=Stefano Cossutta" in out.getvalue()
    assert "OK" in out.getvalue()
    event = AuditEvent.objects.filter(action="report.verify").get()
    assert event.outcome == AuditEvent.Outcome.SUCCESS
    assert event.study == reporting.study


def test_verify_report_by_id_fails_when_the_stored_pdf_was_changed(reporting: Reporting) -> None:  # noqa: F811
    report = signed_report(reporting)
    path = storage.absolute_path(report.tier, report.pdf_path)
    path.chmod(0o600)
    path.write_bytes(path.read_bytes().replace(b"Nei limiti", b"Nei liMiti"))

    with pytest.raises(CommandError) as excinfo:
        call_command("verify_report", str(report.pk), stdout=io.StringIO())

    assert "danneggiato" in str(excinfo.value)
    assert AuditEvent.objects.filter(action="report.verify").get().outcome == AuditEvent.Outcome.FAILURE


def test_verify_report_on_files(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.colleague)
    (tmp_path / "r.pdf").write_bytes(PDF)
    (tmp_path / "r.p7m").write_bytes(p7m)
    out = io.StringIO()

    call_command("verify_report", "--pdf", str(tmp_path / "r.pdf"), "--p7m", str(tmp_path / "r.p7m"), stdout=out)

    assert "Chiara Degano" in out.getvalue()
    assert "firmato il:" in out.getvalue()
    (tmp_path / "r.pdf").write_bytes(PDF + b" ")
    with pytest.raises(CommandError) as excinfo:
        call_command("verify_report", "--pdf", str(tmp_path / "r.pdf"), "--p7m", str(tmp_path / "r.p7m"), stdout=out)
    assert "modificato" in str(excinfo.value)


def test_verify_report_exits_1_with_the_reason(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.radiologist)
    (tmp_path / "r.pdf").write_bytes(PDF + b"x")
    (tmp_path / "r.p7m").write_bytes(p7m)
    env = {**os.environ, "PACS_SIGNING_DIR": str(settings.PACS_SIGNING_DIR)}
    args = ["--pdf", str(tmp_path / "r.pdf"), "--p7m", str(tmp_path / "r.p7m"), "--ca", str(tmp_path / "ca.pem")]
    (tmp_path / "ca.pem").write_bytes(signing.ca_certificate_pem())

    result = subprocess.run(
        [sys.executable, "manage.py", "verify_report", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert "modificato" in result.stderr


def test_demo_pki_command(region: object, tmp_path: Path) -> None:
    get_user_model().objects.create_user(username="tecnico", first_name="Paolo", last_name="Neri")
    out = io.StringIO()

    call_command("demo_pki", "tecnico", "--directory", str(tmp_path / "pki"), stdout=out)

    assert (tmp_path / "pki" / "users" / "tecnico.crt.pem").exists()
    assert "tecnico" in out.getvalue()
    with pytest.raises(CommandError):
        call_command("demo_pki", "nessuno", "--directory", str(tmp_path / "pki"), stdout=out)


def test_verify_report_in_a_fresh_process_accepts_a_good_signature(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    """A process that has not signed anything (pyHanko never imported) still
    reads the ESS signing-certificate-v2 attribute: asn1crypto knows it only
    once its tsp module is loaded."""
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.radiologist)
    (tmp_path / "r.pdf").write_bytes(PDF)
    (tmp_path / "r.p7m").write_bytes(p7m)
    (tmp_path / "ca.pem").write_bytes(signing.ca_certificate_pem())
    args = ["--pdf", str(tmp_path / "r.pdf"), "--p7m", str(tmp_path / "r.p7m"), "--ca", str(tmp_path / "ca.pem")]

    result = subprocess.run(
        [sys.executable, "manage.py", "verify_report", *args],
        cwd=REPO,
        env={**os.environ, "PACS_SIGNING_DIR": str(settings.PACS_SIGNING_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "Stefano Cossutta" in result.stdout


# --- as strict as OpenSSL (issue 22, finding 3) -------------------------------------


def _flip(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x01
    return bytes(changed)


def _inside(haystack: bytes, needle: bytes, start: int = 0, end: int | None = None) -> int:
    """Where ``needle`` is in ``haystack[start:end]`` (exactly once there), as an offset in ``haystack``."""
    window = haystack[start:end]
    at = window.find(needle)
    assert at >= 0 and window.find(needle, at + 1) < 0, needle
    return start + at


def _damaged_set(p7m: bytes, data: bytes) -> dict[str, bytes]:
    """One byte changed in each part of the CMS structure, and trailing garbage."""
    content_info = cms.ContentInfo.load(p7m)
    signed_data = content_info["content"]
    signer_info = signed_data["signer_infos"][0]
    certificates = [c.chosen for c in signed_data["certificates"]]
    signer_cert = next(c for c in certificates if c.serial_number == signer_info["sid"].chosen["serial_number"].native)
    ca_cert = next(c for c in certificates if c is not signer_cert)

    def span(element: object) -> tuple[int, int]:
        der = element.dump()  # type: ignore[attr-defined]
        start = _inside(p7m, der)
        return start, start + len(der)

    content_type = span(content_info["content_type"])
    digest_algorithms = span(signed_data["digest_algorithms"])
    encap = span(signed_data["encap_content_info"])
    ca = span(ca_cert)
    signer = span(signer_cert)
    signer_tbs = span(signer_cert["tbs_certificate"])
    attrs = span(signer_info["signed_attrs"])
    sha256_oid = bytes.fromhex("0609608648016503040201")
    validity = _inside(p7m, ca_cert["tbs_certificate"]["validity"].dump(), *ca)
    signing_time = _inside(p7m, signer_info["signed_attrs"][1].dump(), *attrs)  # content type, signing time, ...
    return {
        "content type (the signedData OID)": _flip(p7m, content_type[1] - 1),
        "digest algorithms (the OID)": _flip(p7m, _inside(p7m, sha256_oid, *digest_algorithms) + len(sha256_oid) - 1),
        "encapsulated content info (its tag)": _flip(p7m, encap[0]),
        "embedded CA certificate (a validity time's tag)": _flip(p7m, validity + 2),
        "signer certificate tbs (version)": _flip(p7m, signer_tbs[0] + 8),
        "signer certificate tbs (subject)": _flip(p7m, _inside(p7m, b"Stefano Cossutta", *signer_tbs)),
        "signer certificate signature": _flip(p7m, signer[1] - 1),
        "signed attributes (message digest)": _flip(p7m, _inside(p7m, hashlib.sha256(data).digest(), *attrs)),
        "signed attributes (signing time)": _flip(p7m, signing_time + 20),
        "signed attributes (their tag)": _flip(p7m, attrs[0]),
        "signature value": _flip(p7m, len(p7m) - 1),
        "trailing garbage": p7m + b"\x00\x01",
    }


def test_damaged_signatures_get_the_verdict_openssl_gives(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.radiologist)
    ca = signing.ca_certificate_pem()
    assert signing.cades_verify_detached(data=PDF, signature=p7m).ok
    assert openssl_verify(tmp_path, pdf=PDF, p7m=p7m, ca=ca).returncode == 0

    verdicts = {}
    for part, damaged in _damaged_set(p7m, PDF).items():
        assert damaged != p7m
        ours = signing.cades_verify_detached(data=PDF, signature=damaged, ca_pem=ca)  # never raises
        theirs = openssl_verify(tmp_path, pdf=PDF, p7m=damaged, ca=ca).returncode == 0
        verdicts[part] = (ours.ok, theirs, ours.reason)
    differing = {part: v for part, v in verdicts.items() if v[0] != v[1]}
    # Trailing bytes: OpenSSL 3.0 reads the first DER object and ignores the
    # rest; the issue asks that anything after the signature fail it, so here
    # the project is the stricter of the two, by design.
    assert set(differing) == {"trailing garbage"}, verdicts
    assert differing["trailing garbage"][:2] == (False, True)
    assert not any(ok for ok, _theirs, _reason in verdicts.values()), verdicts
    # The case of the issue: a certificate in the file that does not parse (a
    # time's tag changed) was accepted because nothing read it.
    assert "non è una firma CMS leggibile" in verdicts["embedded CA certificate (a validity time's tag)"][2]


def test_where_the_project_is_stricter_than_openssl(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    """Two changes OpenSSL 3.0 lets through and RFC 5652 does not: the project refuses them."""
    p7m = signing.cades_sign_detached(data=PDF, user=reporting.radiologist)
    ca = signing.ca_certificate_pem()
    content_info = cms.ContentInfo.load(p7m)
    encap_oid = content_info["content"]["encap_content_info"]["content_type"].dump()  # id-data
    signer_info = content_info["content"]["signer_infos"][0].dump()
    signature_algorithm = content_info["content"]["signer_infos"][0]["signature_algorithm"].dump()
    signer_info_at = _inside(p7m, signer_info)
    cases = {
        # eContentType no longer the content-type attribute's value (RFC 5652 11.1).
        "eContentType": _flip(p7m, _inside(p7m, encap_oid, 0, 60) + len(encap_oid) - 1),
        # ecdsa-with-SHA256 (1.2.840.10045.4.3.2) becomes an unknown 1.2.840.10045.5.3.2: OpenSSL
        # goes by the key's type and the digest algorithm and never looks.
        "signatureAlgorithm": _flip(
            p7m, _inside(p7m, signature_algorithm, signer_info_at) + len(signature_algorithm) - 3
        ),
    }
    for name, damaged in cases.items():
        assert not signing.cades_verify_detached(data=PDF, signature=damaged, ca_pem=ca).ok, name
        assert openssl_verify(tmp_path, pdf=PDF, p7m=damaged, ca=ca).returncode == 0, name


def test_an_officer_certificate_without_the_role_is_issued_again_with_it(region: object, tmp_path: Path) -> None:
    officer = get_user_model().objects.create_user(username="conservatore", first_name="Anna", last_name="Zorzut")
    radiologist = get_user_model().objects.create_user(username="m.rossi", first_name="Maria", last_name="Rossi")
    directory = tmp_path / "pki"
    signing.demo_pki_create(users=[officer, radiologist], directory=directory)  # before the role existed
    cert_path = directory / "users" / "conservatore.crt.pem"
    key_before = (directory / "users" / "conservatore.key.pem").read_bytes()
    assert signing.certificate_roles(cert_path.read_bytes()).policies == ()

    out = io.StringIO()
    call_command("demo_pki", "m.rossi", "--officer", "conservatore", "--directory", str(directory), stdout=out)

    roles = signing.certificate_roles(cert_path.read_bytes())
    assert roles.policies == (signing.PRESERVATION_OFFICER_POLICY,)
    assert (directory / "users" / "conservatore.key.pem").read_bytes() == key_before  # the same key
    assert signing.certificate_roles((directory / "users" / "m.rossi.crt.pem").read_bytes()).policies == ()
    assert "conservatore:" in out.getvalue()
    # Run again: nothing changes.
    issued = cert_path.read_bytes()
    signing.demo_pki_create(users=[], directory=directory, preservation_officers=[officer])
    assert cert_path.read_bytes() == issued


def test_signed_report_files_and_keys_are_the_service_accounts_only(
    loose_umask: None,
    reporting: Reporting,  # noqa: F811
    tmp_path: Path,
    settings: object,
) -> None:
    """The report's PDF and signature were written 0644 in folders 0755."""
    settings.PACS_SIGNING_DIR = tmp_path / "pki"  # type: ignore[attr-defined]
    signing.demo_pki_create(users=[reporting.radiologist])
    report = report_signed_for_real(reporting)  # archive.reporting.services.report_sign

    assert assert_private(tmp_path / "pki") == 4  # CA key and certificate, the radiologist's
    for relpath in (report.pdf_path, report.signature_path):
        assert stat.S_IMODE(storage.absolute_path(report.tier, relpath).stat().st_mode) == 0o600
    assert_private(Path(settings.PACS_FACILITY_TIER_DIR))  # type: ignore[attr-defined]
