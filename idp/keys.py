"""The IdP di prova's secrets: the portal's client secret and the RSA key that signs ID tokens.

Both are generated on first use into ``<var>/idp/`` (0600 files in a 0700
folder, never committed) and read there by both processes: the IdP signs with
the key and checks the secret; the portal reads the secret through
``OIDC_RP_CLIENT_SECRET_FILE``. ``manage.py idp_keys`` creates them before
``make run`` starts the processes, so that the portal finds the secret at
start-up. Two processes creating the same file at once: ``O_EXCL`` lets one
write it and the other read what it wrote.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

CLIENT_SECRET = "client_secret"
SIGNING_KEY = "signing_key.pem"


def idp_dir(var_dir: Path) -> Path:
    folder = Path(var_dir) / "idp"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    try:
        data = path.read_bytes()
        if data:
            return data
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process is writing it: wait for its content.
        for _ in range(50):
            data = path.read_bytes()
            if data:
                return data
            time.sleep(0.1)
        raise RuntimeError(f"{path} stays empty") from None
    data = make()
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return data


def client_secret(var_dir: Path) -> str:
    """The portal's client secret (created on first call)."""
    path = idp_dir(var_dir) / CLIENT_SECRET
    return _read_or_create(path, lambda: secrets.token_urlsafe(32).encode()).decode().strip()


def signing_key(var_dir: Path) -> RSAKey:
    """The RSA key (2048 bits) that signs ID tokens, its ``kid`` the RFC 7638 thumbprint."""
    path = idp_dir(var_dir) / SIGNING_KEY

    def make() -> bytes:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    key = RSAKey.import_key(_read_or_create(path, make))
    key.ensure_kid()
    return key
