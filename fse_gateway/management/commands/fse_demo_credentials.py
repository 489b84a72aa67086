"""``manage.py fse_demo_credentials``: a demo key and self-signed certificate for the FSE JWTs.

The gateway's test system wants the certificate the region was issued; a demo
or a local stand-in takes this one. Nothing of it is committed: the files are
written under ``PACS_VAR_DIR/fse`` (the key readable by its owner only),
through a temporary name renamed into place, and never overwritten.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Command(BaseCommand):
    help = "Crea una chiave e un certificato di prova per i JWT verso il gateway FSE (solo demo)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", default=str(Path(settings.VAR_DIR) / "fse"))
        parser.add_argument("--cn", default="060001PACSREGIONALE", help="Common Name (iss: auth:/integrity:<CN>)")
        parser.add_argument("--days", type=int, default=365)

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"])
        key_file, cert_file = directory / "jwt-key.pem", directory / "jwt-cert.pem"
        if key_file.exists() or cert_file.exists():
            raise CommandError(f"{directory} holds credentials already: remove them first to make new ones")
        directory.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, options["cn"])])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=options["days"]))
            .sign(key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write(key_file, pem, 0o600)
        _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self.stdout.write(f"PACS_FSE_JWT_KEY_FILE={key_file}\nPACS_FSE_JWT_CERT_FILE={cert_file}\n")
