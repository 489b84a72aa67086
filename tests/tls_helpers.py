"""A small PKI made at test time (never committed): a CA, the listener's certificate
and client certificates for DICOM nodes, as PEM files."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from archive.models import Facility, RemoteNode


@dataclass(frozen=True)
class Credential:
    cert: Path
    key: Path
    sha256: str  # of the DER certificate, as RemoteNode.tls_certificate_sha256 holds it


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Credential
    folder: Path

    def client(self, name: str) -> Credential:
        """A client certificate for ``name`` signed by this CA."""
        return _issue(self.folder, name, ca=_load_ca(self.folder), server=False)

    def client_context(self, credential: Credential | None) -> ssl.SSLContext:
        """A client's TLS context: trusts the CA, presents ``credential`` (None: no certificate)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(self.ca))
        if credential is not None:
            context.load_cert_chain(certfile=str(credential.cert), keyfile=str(credential.key))
        return context

    def settings(self) -> dict[str, str]:
        return {
            "PACS_DICOM_TLS_CERT": str(self.server.cert),
            "PACS_DICOM_TLS_KEY": str(self.server.key),
            "PACS_DICOM_TLS_CA": str(self.ca),
        }


def tls_node_create(*, facility: Facility, ae_title: str, credential: Credential) -> RemoteNode:
    """A node of ``facility`` that may store, known by its client certificate: with it, the
    listener accepts it only on the TLS port (``host``/``port`` are where it would be called)."""
    return RemoteNode.objects.create(
        facility=facility,
        ae_title=ae_title,
        host="127.0.0.1",
        port=104,
        can_store=True,
        tls_certificate_sha256=credential.sha256,
    )


def _key() -> rsa.RSAPrivateKey:
    # RSA: DCMTK's default BCP 195 profile offers ECDHE-RSA suites.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PACS regionale (test)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _load_ca(folder: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    return cert, key  # type: ignore[return-value]


def _issue(folder: Path, name: str, *, ca: tuple[x509.Certificate, rsa.RSAPrivateKey], server: bool) -> Credential:
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return Credential(cert=cert_path, key=key_path, sha256=cert.fingerprint(hashes.SHA256()).hex())


def make_pki(folder: Path, *, ca_name: str = "PACS test CA") -> Pki:
    """A CA and the listener's certificate (for localhost and 127.0.0.1) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / "ca.key", key)
    server = _issue(folder, "listener", ca=(cert, key), server=True)
    return Pki(ca=folder / "ca.pem", server=server, folder=folder)
