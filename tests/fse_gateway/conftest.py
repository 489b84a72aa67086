"""The FSE tests' fixtures: the producer's JWT key and certificate (made here, never
committed), the stand-in gateway on 127.0.0.1 (one per session, reset per test) and
the settings that point the outbox at it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command

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
    """A key and its self-signed certificate, made by the demo's own command (fse_demo_credentials)."""
    call_command("fse_demo_credentials", dir=str(directory), cn=common_name, stdout=io.StringIO())
    key_file, cert_file = directory / "jwt-key.pem", directory / "jwt-cert.pem"
    return Keys(key_file, cert_file, cert_file.read_bytes())


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
