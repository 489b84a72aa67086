"""The FSE tests' fixtures: the producer's JWT key and certificate (made here, never
committed), the stand-in gateway on 127.0.0.1 (one per session, reset per test) and
the settings that point the outbox at it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fse_gateway import gateway as client
from tests.booking.conftest import cup as cup  # noqa: F401  (fixture)
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (fixture)

from .standin import Gateway

SUBJECT = "CSSSFN70A01L424Y^^^&2.16.840.1.113883.2.9.4.3.2&ISO"


@dataclass(frozen=True)
class Keys:
    key_file: Path
    cert_file: Path
    cert_pem: bytes


def keys_make(directory: Path, common_name: str = "060001PACSREGIONALE") -> Keys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = directory / "fse-key.pem", directory / "fse-cert.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file.write_bytes(cert_pem)
    return Keys(key_file, cert_file, cert_pem)


@pytest.fixture(scope="session")
def fse_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return keys_make(tmp_path_factory.mktemp("fse-keys"))


@pytest.fixture(scope="session")
def fse_standin(fse_keys: Keys) -> Iterator[Gateway]:
    gw = Gateway(cert_pem=fse_keys.cert_pem)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def fse(fse_standin: Gateway, fse_keys: Keys, settings: object) -> Iterator[Gateway]:
    """The stand-in, emptied, with the outbox pointed at it (and sending again at once after an error)."""
    if fse_standin.server is None:
        fse_standin.start()
    fse_standin.reset()
    for name, value in {
        "PACS_FSE_GATEWAY_URL": fse_standin.base_url,
        "PACS_FSE_MANIFEST_URL": fse_standin.manifest_url,
        "PACS_FSE_JWT_KEY_FILE": str(fse_keys.key_file),
        "PACS_FSE_JWT_CERT_FILE": str(fse_keys.cert_file),
        "PACS_FSE_JWT_SUBJECT": SUBJECT,
        "PACS_FSE_TIMEOUT_SECONDS": 5.0,
        "PACS_FSE_RETRY_BASE_SECONDS": 30.0,
        "PACS_FSE_RETRY_MAX_SECONDS": 600.0,
    }.items():
        setattr(settings, name, value)
    client._credentials_read.cache_clear()
    yield fse_standin
    if fse_standin.server is None:
        fse_standin.start()
