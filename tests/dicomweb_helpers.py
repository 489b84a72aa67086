"""Fixtures and helpers shared by the DICOMweb tests (imported by the test modules that use them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from knox.models import AuthToken
from pydicom import dcmread

from archive.ingest import instance_ingest
from archive.models import Facility
from archive.storage import tiers as storage


@dataclass
class ApiUser:
    user: object
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Token {self.token}"}

    @property
    def header(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}


def make_user(username: str, *perms: str, staff: bool = True) -> ApiUser:
    user = get_user_model().objects.create_user(username=username, password=uuid.uuid4().hex, is_staff=staff)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    # Made directly, as any account may be given one in a test: who may ask for
    # one at /api/token/ is tested in tests/archive/test_api.py.
    _token, key = AuthToken.objects.create(user=user)
    return ApiUser(user=user, token=key)


def token_authenticated(user: object) -> object:
    """``user`` as a token's request authenticates it (a new token for it, as any account may
    hold one in a test): a fresh user object with what the token's query brought."""
    from archive.api_tokens import ApiTokenAuthentication

    _token, key = AuthToken.objects.create(user=user)  # type: ignore[misc]
    found, _ = ApiTokenAuthentication().authenticate_credentials(key.encode())
    return found


# The access policy (archive.access) shows studies only to holders of archive.view_study;
# DICOMweb then asks archive.view_instance to read and archive.add_instance to store.
@pytest.fixture
def reader(db: None) -> ApiUser:
    return make_user("lettore", "archive.view_study", "archive.view_instance")


@pytest.fixture
def archivist(db: None) -> ApiUser:
    return make_user("archivista", "archive.view_study", "archive.view_instance", "archive.add_instance")


@pytest.fixture
def nobody(db: None) -> ApiUser:
    return make_user("nessuno")


def ingest_files(paths: list[Path], facility: Facility) -> None:
    for path in paths:
        instance_ingest(path=path, facility=facility, owned=False, calling_ae="CT01")


def uids(path: Path) -> tuple[str, str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def tier_files(facility_code: str) -> list[Path]:
    root = storage.absolute_path(storage.facility_tier(facility_code), ".")
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def incoming_files() -> list[Path]:
    return sorted(p for p in storage.incoming_dir().rglob("*") if p.is_file())


def multipart_body(
    parts: list[bytes], *, boundary: str = "b0undary-7f3c", part_type: str = "application/dicom"
) -> bytes:
    out = b""
    for data in parts:
        out += f"\r\n--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data
    return out + f"\r\n--{boundary}--\r\n".encode()


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """A strict multipart/related reader for checking what the server sends."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    boundary = params["boundary"].strip('"').encode()
    assert body.startswith(b"--" + boundary + b"\r\n"), body[:80]
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n"), body[-80:]
    inner = body[len(boundary) + 4 : -(len(boundary) + 8)]
    parts = []
    for chunk in inner.split(b"\r\n--" + boundary + b"\r\n"):
        head, _, data = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts
