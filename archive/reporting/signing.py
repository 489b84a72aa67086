"""Digital signatures of the reports: detached CAdES-BES over the report's PDF.

Each radiologist signs with their own key and certificate, kept in
``settings.PACS_SIGNING_DIR``::

    ca.pem                      the CA whose certificates the archive trusts
    ca.key.pem                  the demo CA's key (only where the demo issues certificates)
    users/<username>.key.pem    PKCS#8, encrypted with PACS_SIGNING_KEY_PASSPHRASE when set
    users/<username>.crt.pem

The signature is a CMS SignedData (RFC 5652) in DER, SHA-256, without the
content (the PDF is stored next to it), with the signed attributes CAdES-BES
asks for (ETSI EN 319 122-1): content type, message digest, signing time and
ESS signing-certificate-v2, so that the certificate cannot be swapped.
pyHanko builds it; the verification is ours (asn1crypto and cryptography),
so that a failure says which check failed.

The demo creates its own CA ("PACS regionale FVG – CA dimostrativa") and a
certificate per radiologist (:func:`demo_pki_create`); production mounts the
keys and certificates the qualified certification authority issued.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asn1crypto import cms
from asn1crypto import keys as asn1_keys
from asn1crypto import tsp as _asn1_tsp  # noqa: F401  (registers the ESS signing-certificate(-v2) attributes)
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.utils.translation import gettext as _

from kernel.errors import PacsError

logger = logging.getLogger(__name__)

CA_NAME = "PACS regionale FVG – CA dimostrativa"
ORGANIZATION = "PACS regionale FVG"
CA_VALIDITY = dt.timedelta(days=10 * 365)
USER_VALIDITY = dt.timedelta(days=3 * 365)
DIGEST_ALGORITHM = "sha256"
# The certificate policy the demo CA issues for the preservation-officer role
# (responsabile della conservazione), under the private-enterprise arc kept
# for examples (RFC 5612). Radiologists' certificates never carry it; a
# production CA's own role OID goes in PACS_PRESERVATION_SIGNER_POLICIES.
PRESERVATION_OFFICER_POLICY = "1.3.6.1.4.1.32473.1.9.2"

# Usernames become file names: Django's default validator allows these characters.
_USERNAME_RE = re.compile(r"^[\w.@+-]{1,150}$")

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


# Names for the subject attributes cryptography prints as dotted numbers.
_ATTRIBUTE_NAMES = {NameOID.SERIAL_NUMBER: "serialNumber", NameOID.GIVEN_NAME: "GN", NameOID.SURNAME: "SN"}


class SigningError(PacsError):
    """Signing is not possible (no key, no certificate, an unreadable key); ``message`` in Italian."""

    code = "signing"


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of :func:`cades_verify_detached`."""

    ok: bool
    reason: str  # Italian, why not ok ("" when ok)
    signer_subject: str  # e.g. "CN=Stefano Cossutta, O=PACS regionale FVG, C=IT"
    signer_certificate_pem: str
    signing_time: dt.datetime | None

    @property
    def signer_roles(self) -> CertificateRoles:
        """The certificate policies and extended key usages of the signer's certificate."""
        return certificate_roles(self.signer_certificate_pem)


@dataclass(frozen=True)
class CertificateRoles:
    """What a certificate says its holder may do: certificate policies and extended key usages (dotted OIDs)."""

    policies: tuple[str, ...] = ()
    extended_key_usages: tuple[str, ...] = ()

    def holds(self, oid: str) -> bool:
        return oid in self.policies or oid in self.extended_key_usages


def certificate_roles(certificate_pem: str | bytes) -> CertificateRoles:
    """The policies and extended key usages of a PEM certificate (none when it has none or is empty)."""
    if not certificate_pem:
        return CertificateRoles()
    pem = certificate_pem.encode("ascii") if isinstance(certificate_pem, str) else certificate_pem
    cert = x509.load_pem_x509_certificate(pem)
    policies: tuple[str, ...] = ()
    ekus: tuple[str, ...] = ()
    try:
        value = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
        policies = tuple(p.policy_identifier.dotted_string for p in value)
    except x509.ExtensionNotFound:
        pass
    try:
        ekus = tuple(o.dotted_string for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        pass
    return CertificateRoles(policies=policies, extended_key_usages=ekus)


# --- files -------------------------------------------------------------------


def signing_directory() -> Path:
    """Where the keys and certificates are (``settings.PACS_SIGNING_DIR``)."""
    return Path(settings.PACS_SIGNING_DIR)


def _directory(directory: Path | None = None) -> Path:
    return Path(directory) if directory is not None else signing_directory()


def _passphrase() -> bytes | None:
    value = settings.PACS_SIGNING_KEY_PASSPHRASE
    return value.encode("utf-8") if value else None


def _username(user: Any) -> str:
    username = str(user.get_username())
    if not _USERNAME_RE.match(username) or username.startswith("."):
        raise SigningError(_("Il nome utente %(username)s non è adatto a un file di chiave.") % {"username": username})
    return username


def _user_paths(directory: Path, username: str) -> tuple[Path, Path]:
    users = directory / "users"
    return users / f"{username}.key.pem", users / f"{username}.crt.pem"


def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_once(path: Path, data: bytes) -> bool:
    """Write ``path`` (mode 0600) only if it does not exist; True when this call wrote it.

    The file appears whole or not at all (written aside, then hard-linked),
    and of two processes creating it at once one wins and the other keeps it.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    passphrase = _passphrase()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _load_key(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(
            _("La chiave di firma %(file)s non si legge: %(error)s") % {"file": path.name, "error": exc}
        ) from exc
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    passphrase = _passphrase()
    if encrypted and not passphrase:
        raise SigningError(
            _("La chiave di firma %(file)s è cifrata ma non è configurata la passphrase (PACS_SIGNING_KEY_PASSPHRASE).")
            % {"file": path.name}
        )
    try:
        return serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        logger.warning("signing key %s not loaded: %s", path, exc)
        raise SigningError(
            _("La chiave di firma %(file)s non si apre: passphrase errata o file danneggiato.") % {"file": path.name}
        ) from exc


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise SigningError(_("Il certificato %(file)s è danneggiato.") % {"file": path.name}) from exc


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def _subject_text(name: x509.Name) -> str:
    """The name with its most specific part first ("CN=…, O=…, C=IT"), as people read it."""
    return ", ".join(rdn.rfc4514_string(_ATTRIBUTE_NAMES) for rdn in reversed(list(name.rdns)))


def subject_text(name: x509.Name) -> str:
    """A certificate's name as people read it: ``CN=…, O=…, C=IT``."""
    return _subject_text(name)


# --- the demo PKI ----------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _ski(key: Any) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _demo_ca(directory: Path) -> tuple[x509.Certificate, Any]:
    ca_pem, ca_key_pem = directory / "ca.pem", directory / "ca.key.pem"
    if ca_pem.exists() and not ca_key_pem.exists():
        raise SigningError(
            _(
                "La CA in %(dir)s non ha la chiave (ca.key.pem): i certificati dei firmatari vanno "
                "chiesti all'autorità di certificazione."
            )
            % {"dir": directory}
        )
    if not ca_key_pem.exists():
        _write_once(ca_key_pem, _key_pem(ec.generate_private_key(ec.SECP256R1())))
    key = _load_key(ca_key_pem)  # the one on disk, whoever wrote it
    if not ca_pem.exists():
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(_ski(key), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_once(ca_pem, cert.public_bytes(serialization.Encoding.PEM))
    return _load_certificate(ca_pem), key


def _user_name(user: Any, username: str) -> x509.Name:
    full_name = (user.get_full_name() if hasattr(user, "get_full_name") else "").strip() or username
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
    ]
    last, first = (getattr(user, "last_name", "") or "").strip(), (getattr(user, "first_name", "") or "").strip()
    if last:
        attributes.append(x509.NameAttribute(NameOID.SURNAME, last))
    if first:
        attributes.append(x509.NameAttribute(NameOID.GIVEN_NAME, first))
    # The signer's identifier in the archive, where a qualified certificate has the tax code.
    attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, f"PACS-{username}"))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, full_name[:64]))
    return x509.Name(attributes)


def demo_certificate_issue(
    *,
    subject: x509.Name,
    key: Any,
    ca_cert: x509.Certificate,
    ca_key: Any,
    validity: dt.timedelta,
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A signing certificate from the demo CA: not a CA, digital signature and
    non-repudiation, key identifiers; ``extensions`` (extension, critical) are
    added (the time-stamp authority's extended key usage)."""
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,  # nonRepudiation
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return (
        builder.add_extension(_ski(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]  # our CA's key, a kind that signs
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _officer_extensions() -> list[tuple[x509.ExtensionType, bool]]:
    policy = x509.PolicyInformation(
        x509.ObjectIdentifier(PRESERVATION_OFFICER_POLICY),
        [x509.UserNotice(notice_reference=None, explicit_text="Responsabile della conservazione (dimostrazione)")],
    )
    return [(x509.CertificatePolicies([policy]), False)]


def _demo_user(directory: Path, user: Any, ca_cert: x509.Certificate, ca_key: Any, *, officer: bool = False) -> None:
    username = _username(user)
    key_path, cert_path = _user_paths(directory, username)
    if key_path.exists() and cert_path.exists():
        if not officer or certificate_roles(cert_path.read_bytes()).holds(PRESERVATION_OFFICER_POLICY):
            return
        # An officer's certificate from before the role existed: issued again
        # for the same key, with the role (the old one stays aside).
        cert_path.replace(cert_path.with_name(f"{cert_path.name}.{uuid.uuid4().hex[:8]}.senza-ruolo"))
        logger.warning("demo signing certificate of %s issued again with the preservation-officer role", username)
    if not key_path.exists():
        cert_path.unlink(missing_ok=True)  # a certificate without its key is of no use
        _write_once(key_path, _key_pem(ec.generate_private_key(ec.SECP256R1())))
    key = _load_key(key_path)
    cert = demo_certificate_issue(
        subject=_user_name(user, username),
        key=key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        validity=USER_VALIDITY,
        extensions=_officer_extensions() if officer else (),
    )
    if _write_once(cert_path, cert.public_bytes(serialization.Encoding.PEM)):
        logger.info("demo signing certificate issued for %s", username)


def demo_pki_create(
    *, users: Iterable[Any], directory: Path | None = None, preservation_officers: Iterable[Any] = ()
) -> None:
    """Create the demo CA (if missing) and a key and certificate for each of ``users`` (if missing).

    Existing files are kept: running it again changes nothing, except that
    an officer's certificate without the role is issued again with it.
    Keys are encrypted with ``PACS_SIGNING_KEY_PASSPHRASE`` when it is set;
    files are written with mode 0600 in directories with mode 0700.

    Parameters
    ----------
    users : iterable of users
        The certificate's subject CN is the user's full name (the username when
        there is none).
    directory : Path, optional
        Default ``settings.PACS_SIGNING_DIR``.
    preservation_officers : iterable of users
        Their certificates carry the preservation-officer role
        (certificate policy :data:`PRESERVATION_OFFICER_POLICY`), which the
        preservation asks of whoever signs a volume index or a DIP manifest.
    """
    root = _directory(directory)
    _make_dir(root)
    _make_dir(root / "users")
    ca_cert, ca_key = _demo_ca(root)
    everyone = {_username(u): u for u in users}
    officer_names = set()
    for officer in preservation_officers:
        everyone.setdefault(_username(officer), officer)
        officer_names.add(_username(officer))
    for username, user in everyone.items():
        _demo_user(root, user, ca_cert, ca_key, officer=username in officer_names)


# --- who signs -------------------------------------------------------------------


def _user_material(user: Any) -> tuple[Path, Path]:
    username = _username(user)
    key_path, cert_path = _user_paths(_directory(), username)
    if not key_path.exists() or not cert_path.exists():
        raise SigningError(
            _(
                "L'utente %(username)s non ha una chiave e un certificato di firma: "
                "chiedere all'amministratore di configurarli (manage.py demo_pki nella dimostrazione)."
            )
            % {"username": username}
        )
    return key_path, cert_path


def ca_certificate_pem() -> bytes:
    """The certificate of the CA the archive trusts (``PACS_SIGNING_DIR/ca.pem``)."""
    path = _directory() / "ca.pem"
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise SigningError(_("Manca il certificato della CA (%(file)s).") % {"file": path}) from exc


def signer_certificate_pem(user: Any) -> str:
    """The PEM of ``user``'s signing certificate; SigningError if there is none."""
    _key_path, cert_path = _user_material(user)
    return _load_certificate(cert_path).public_bytes(serialization.Encoding.PEM).decode("ascii")


def signer_name(user: Any) -> str:
    """The subject CN of ``user``'s signing certificate: the name the signature shows."""
    _key_path, cert_path = _user_material(user)
    return _cn(_load_certificate(cert_path).subject)


# --- signing ---------------------------------------------------------------------


def _run(coro: Any) -> Any:
    """Run pyHanko's coroutine from synchronous code, also inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def cades_sign_detached(*, data: bytes, user: Any, signing_time: dt.datetime | None = None) -> bytes:
    """A detached CAdES-BES signature of ``data`` by ``user``, as DER.

    Parameters
    ----------
    data : bytes
        What is signed (the report's PDF); not included in the signature.
    user : user
        Signs with ``PACS_SIGNING_DIR/users/<username>.key.pem`` and ``.crt.pem``.
    signing_time : datetime, optional
        The signing-time attribute (aware); default now. Pass the time the
        PDF prints so that both say the same.
    """
    from pyhanko.sign.signers.pdf_cms import PdfCMSSignedAttributes, SimpleSigner
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    key_path, cert_path = _user_material(user)
    key = _load_key(key_path)
    cert = _load_certificate(cert_path)
    ca_path = _directory() / "ca.pem"
    chain = (
        [asn1_x509.Certificate.load(_load_certificate(ca_path).public_bytes(serialization.Encoding.DER))]
        if ca_path.exists()
        else []
    )
    when = signing_time or dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        raise ValueError("signing_time must be aware")
    signer = SimpleSigner(
        signing_cert=asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)),
        signing_key=asn1_keys.PrivateKeyInfo.load(
            key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        ),
        cert_registry=SimpleCertificateStore.from_certs(chain),
    )
    content_info = _run(
        signer.async_sign_general_data(
            data,
            DIGEST_ALGORITHM,
            detached=True,
            use_cades=True,  # ESS signing-certificate-v2 and signing time: CAdES-BES
            signed_attr_settings=PdfCMSSignedAttributes(signing_time=when.astimezone(dt.UTC)),
        )
    )
    return bytes(content_info.dump())


# --- verification ------------------------------------------------------------------


def _fail(reason: str, cert: x509.Certificate | None = None, signing_time: dt.datetime | None = None) -> SignatureCheck:
    return SignatureCheck(
        ok=False,
        reason=reason,
        signer_subject=_subject_text(cert.subject) if cert is not None else "",
        signer_certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii") if cert else "",
        signing_time=signing_time,
    )


def _attribute(signed_attrs: cms.CMSAttributes, name: str) -> list[Any] | None:
    for attr in signed_attrs:
        if attr["type"].native == name:
            return list(attr["values"])
    return None


def _verify_raw(cert: x509.Certificate, signer_info: cms.SignerInfo, signed_bytes: bytes, digest: str) -> None:
    """Raises InvalidSignature (or ValueError for what we do not support)."""
    public_key = cert.public_key()
    signature = bytes(signer_info["signature"].native)
    algo = signer_info["signature_algorithm"]
    mechanism = algo.signature_algo
    if isinstance(public_key, rsa.RSAPublicKey) and mechanism == "rsassa_pkcs1v15":
        public_key.verify(signature, signed_bytes, padding.PKCS1v15(), _HASHES[digest]())
    elif isinstance(public_key, rsa.RSAPublicKey) and mechanism == "rsassa_pss":
        params = algo["parameters"]
        pss_hash = _HASHES[params["hash_algorithm"]["algorithm"].native]()
        mgf_hash = _HASHES[params["mask_gen_algorithm"]["parameters"]["algorithm"].native]()
        public_key.verify(
            signature,
            signed_bytes,
            padding.PSS(mgf=padding.MGF1(mgf_hash), salt_length=params["salt_length"].native),
            pss_hash,
        )
    elif isinstance(public_key, ec.EllipticCurvePublicKey) and mechanism == "ecdsa":
        public_key.verify(signature, signed_bytes, ec.ECDSA(_HASHES[digest]()))
    else:
        raise ValueError(f"unsupported signature mechanism {mechanism}")


def _signer_certificate(signed_data: cms.SignedData, signer_info: cms.SignerInfo) -> x509.Certificate | None:
    sid = signer_info["sid"]
    for choice in signed_data["certificates"] or []:
        if choice.name != "certificate":
            continue
        candidate = choice.chosen
        if sid.name == "issuer_and_serial_number":
            if (
                candidate.issuer == sid.chosen["issuer"]
                and candidate.serial_number == sid.chosen["serial_number"].native
            ):
                return _certificate_strict(candidate.dump())
        elif sid.name == "subject_key_identifier" and candidate.key_identifier == sid.chosen.native:
            return _certificate_strict(candidate.dump())
    return None


def _chain_check(cert: x509.Certificate, ca_pem: bytes, when: dt.datetime) -> str:
    """Why ``cert`` is not a valid signing certificate from the CA at ``when`` ("" if it is)."""
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        return _("Il certificato della CA non si legge.")
    issuers = [ca for ca in cas if ca.subject == cert.issuer]
    if not issuers:
        return _("Il certificato del firmatario non è emesso dalla CA attendibile (emittente: %(issuer)s).") % {
            "issuer": _subject_text(cert.issuer)
        }
    for ca in issuers:
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        if not ca.not_valid_before_utc <= when <= ca.not_valid_after_utc:
            return _("Il certificato della CA non era valido al momento della firma.")
        break
    else:
        return _("La firma della CA sul certificato del firmatario non è valida.")
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        return _("Il certificato del firmatario non era valido al momento della firma (valido dal %(a)s al %(b)s).") % {
            "a": cert.not_valid_before_utc.strftime("%d/%m/%Y"),
            "b": cert.not_valid_after_utc.strftime("%d/%m/%Y"),
        }
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return ""
    if not (usage.digital_signature or usage.content_commitment):
        return _("Il certificato del firmatario non è abilitato alla firma (key usage).")
    return ""


def _certificate_strict(der: bytes) -> x509.Certificate:
    """Parse a certificate as OpenSSL does before trusting anything in it (ValueError if it does not parse).

    cryptography reads DER strictly but some parts only when asked: every
    part OpenSSL decodes up front is asked for here.
    """
    cert = x509.load_der_x509_certificate(der)
    if cert.public_bytes(serialization.Encoding.DER) != der:
        raise ValueError("the certificate is not in DER")
    cert.signature_algorithm_oid  # noqa: B018  (parsed on access)
    cert.issuer, cert.subject  # noqa: B018
    cert.not_valid_before_utc, cert.not_valid_after_utc  # noqa: B018
    cert.extensions  # noqa: B018  (a malformed or repeated extension raises)
    cert.public_key()
    return cert


def _cms_strict(signature: bytes) -> cms.ContentInfo:
    """The CMS structure, read whole and strictly.

    Raises ValueError (or TypeError, KeyError) when anything does not parse
    cleanly: bytes after the structure, any field (of the embedded
    certificates too) that does not decode. asn1crypto parses lazily and
    forgives, so a damaged part that nobody reads would otherwise pass where
    ``openssl cms -verify`` refuses the file. (The whole need not be DER:
    OpenSSL, for one, does not sort the SET OF certificates it writes.)
    """
    content_info = cms.ContentInfo.load(signature, strict=True)  # strict: no trailing bytes
    content_info.native  # noqa: B018  (decodes every field)
    return content_info


def cades_verify_detached(*, data: bytes, signature: bytes, ca_pem: bytes | None = None) -> SignatureCheck:
    """Verify a detached CAdES-BES ``signature`` (DER) of ``data``.

    Checks that the signature is a detached CMS SignedData with one signer,
    that its message-digest attribute is the digest of ``data``, that the
    signing-certificate-v2 attribute names the signer's certificate, that the
    signature over the signed attributes verifies with that certificate's key,
    and that the certificate was issued by the CA (``ca_pem``, default the
    archive's ``ca.pem``) and valid at the signing time. Never raises for a
    bad signature: the answer says why in ``reason``.
    """
    try:
        content_info = _cms_strict(signature)
        if content_info["content_type"].native != "signed_data":
            return _fail(_("Il file di firma non contiene una firma CMS (SignedData)."))
        signed_data = content_info["content"]
        signer_infos = list(signed_data["signer_infos"])
        encap = signed_data["encap_content_info"]
        has_content = encap["content"].native is not None
    except (ValueError, TypeError, KeyError) as exc:
        logger.info("unreadable CMS signature: %s", exc)
        return _fail(_("Il file di firma non è una firma CMS leggibile (DER)."))
    if has_content:
        return _fail(_("La firma non è separata (detached): contiene il documento."))
    if len(signer_infos) != 1:
        return _fail(_("La firma ha %(n)d firmatari: se ne attende uno.") % {"n": len(signer_infos)})
    signer_info = signer_infos[0]
    try:
        cert = _signer_certificate(signed_data, signer_info)
    except Exception as exc:  # cryptography has several error types for a certificate that does not parse
        # A damaged certificate inside the signature: a bad signature, not an error.
        logger.info("unreadable certificate in a CMS signature: %s", exc)
        return _fail(_("Il certificato del firmatario nella firma non è leggibile."))
    if cert is None:
        return _fail(_("La firma non contiene il certificato del firmatario."))

    signed_attrs = signer_info["signed_attrs"]
    if not signed_attrs:
        return _fail(_("La firma non ha attributi firmati: non è una firma CAdES."), cert)
    signed_attrs = signed_attrs.untag()
    try:
        # What is signed is the DER of the attributes (RFC 5652 5.4): other bytes are another message.
        as_received = signed_attrs.dump()
        if signed_attrs.dump(force=True) != as_received:
            return _fail(_("Gli attributi firmati non sono in DER."), cert)
    except (ValueError, TypeError) as exc:
        logger.info("signed attributes not re-encoded: %s", exc)
        return _fail(_("Gli attributi firmati non sono leggibili."), cert)
    times = _attribute(signed_attrs, "signing_time")
    signing_time: dt.datetime | None = times[0].native if times else None
    digest = signer_info["digest_algorithm"]["algorithm"].native
    if digest not in _HASHES:
        return _fail(_("Algoritmo di hash non ammesso: %(algo)s.") % {"algo": digest}, cert, signing_time)
    # OpenSSL digests the content with every algorithm listed in SignedData: an
    # unknown one, or a list without the signer's, makes the file unverifiable.
    listed = [algo["algorithm"].native for algo in signed_data["digest_algorithms"]]
    unknown = [algo for algo in listed if algo not in _HASHES]
    if unknown or digest not in listed:
        return _fail(
            _("Gli algoritmi di hash della firma (%(algos)s) non sono ammessi o non comprendono quello del firmatario.")
            % {"algos": ", ".join(listed) or "—"},
            cert,
            signing_time,
        )

    content_types = _attribute(signed_attrs, "content_type")
    if not content_types or content_types[0].native != encap["content_type"].native:
        return _fail(_("L'attributo content-type manca o non corrisponde."), cert, signing_time)
    digests = _attribute(signed_attrs, "message_digest")
    if not digests:
        return _fail(_("Manca l'attributo message-digest."), cert, signing_time)
    actual = hashlib.new(digest, data).digest()
    if bytes(digests[0].native) != actual:
        return _fail(
            _("L'impronta del documento (%(algo)s) non corrisponde a quella firmata: il documento è stato modificato.")
            % {"algo": digest.upper()},
            cert,
            signing_time,
        )
    if signing_time is None:
        return _fail(_("Manca l'attributo signing-time richiesto da CAdES-BES."), cert)

    ess = _attribute(signed_attrs, "signing_certificate_v2")
    if not ess:
        return _fail(_("Manca l'attributo signing-certificate-v2: non è una firma CAdES-BES."), cert, signing_time)
    cert_ids = list(ess[0]["certs"])
    if not cert_ids:
        return _fail(_("L'attributo signing-certificate-v2 è vuoto."), cert, signing_time)
    ess_hash_algo = cert_ids[0]["hash_algorithm"]["algorithm"].native
    if ess_hash_algo not in _HASHES:
        return _fail(_("Algoritmo di hash non ammesso: %(algo)s.") % {"algo": ess_hash_algo}, cert, signing_time)
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    if bytes(cert_ids[0]["cert_hash"].native) != hashlib.new(ess_hash_algo, cert_der).digest():
        return _fail(
            _("L'attributo signing-certificate-v2 non corrisponde al certificato del firmatario."), cert, signing_time
        )

    try:
        _verify_raw(cert, signer_info, signed_attrs.dump(), digest)
    except InvalidSignature:
        return _fail(
            _("La firma sugli attributi firmati non è valida con la chiave del certificato del firmatario."),
            cert,
            signing_time,
        )
    except (ValueError, KeyError) as exc:
        logger.info("signature not verified: %s", exc)
        return _fail(_("Algoritmo di firma non supportato."), cert, signing_time)

    if ca_pem is None:
        try:
            ca_pem = ca_certificate_pem()
        except SigningError as exc:
            return _fail(exc.message, cert, signing_time)
    reason = _chain_check(cert, ca_pem, signing_time)
    if reason:
        return _fail(reason, cert, signing_time)
    return SignatureCheck(
        ok=True,
        reason="",
        signer_subject=_subject_text(cert.subject),
        signer_certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        signing_time=signing_time,
    )


# --- for the demo's other certificates (the time-stamp authority's) -----------------


def demo_ca_load(directory: Path | None = None) -> tuple[x509.Certificate, Any]:
    """The demo CA's certificate and key, created if missing (as :func:`demo_pki_create` does)."""
    root = _directory(directory)
    _make_dir(root)
    return _demo_ca(root)


def private_key_pem(key: Any) -> bytes:
    """A private key as PKCS#8 PEM, encrypted with ``PACS_SIGNING_KEY_PASSPHRASE`` when it is set."""
    return _key_pem(key)


def private_key_load(path: Path) -> Any:
    """Load a key written by :func:`private_key_pem`."""
    return _load_key(path)


def write_once(path: Path, data: bytes) -> bool:
    """Write ``path`` (mode 0600) only if it does not exist; True when this call wrote it."""
    return _write_once(path, data)
