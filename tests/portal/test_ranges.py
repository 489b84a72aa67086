"""Serving a prepared download with single byte ranges (resuming)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.http.response import HttpResponseBase
from django.test import RequestFactory

from portal.ranges import file_response_with_ranges

# Closing a response sends request_finished, whose receiver closes old database connections.
pytestmark = pytest.mark.django_db

SIZE = 3 * 1024 * 1024 + 17  # more than one 1 MiB chunk, not a multiple of it


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "study.zip"
    path.write_bytes(data)
    return path, data


def _get(path: Path, **headers: str) -> HttpResponseBase:
    request = RequestFactory().get("/download", headers=headers)
    return file_response_with_ranges(request, path, filename="esame 2024.zip")


def _body(response: HttpResponseBase) -> bytes:
    try:
        return b"".join(response.streaming_content) if response.streaming else response.content  # type: ignore[attr-defined]
    finally:
        response.close()


def test_full_download_has_length_validator_and_attachment(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    response = _get(path)
    assert response.status_code == 200
    assert response["Content-Length"] == str(SIZE)
    assert response["Accept-Ranges"] == "bytes"
    assert response["Content-Type"] == "application/zip"
    assert response["ETag"].startswith('"') and response["ETag"].endswith('"')
    assert response["Content-Disposition"] == 'attachment; filename="esame 2024.zip"'
    assert response.streaming
    assert _body(response) == data


def test_first_hundred_bytes(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    response = _get(path, Range="bytes=0-99")
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 0-99/{SIZE}"
    assert response["Content-Length"] == "100"
    assert _body(response) == data[:100]


def test_suffix_range_gives_the_last_bytes(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    response = _get(path, Range="bytes=-10")
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}"
    assert _body(response) == data[-10:]


def test_open_range_resumes_to_the_end_across_chunks(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    response = _get(path, Range="bytes=100-")
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 100-{SIZE - 1}/{SIZE}"
    assert response["Content-Length"] == str(SIZE - 100)
    assert _body(response) == data[100:]


def test_range_past_the_end_is_clamped(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    response = _get(path, Range=f"bytes={SIZE - 5}-{SIZE + 1000}")
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {SIZE - 5}-{SIZE - 1}/{SIZE}"
    assert _body(response) == data[-5:]


def test_if_range_with_the_current_etag_gives_the_range(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    etag = _get(path)["ETag"]
    response = _get(path, Range="bytes=10-19", **{"If-Range": etag})
    assert response.status_code == 206
    assert _body(response) == data[10:20]


def test_if_range_with_another_etag_gives_the_whole_file(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    response = _get(path, Range="bytes=10-19", **{"If-Range": '"not-this-one"'})
    assert response.status_code == 200
    assert response["Content-Length"] == str(SIZE)
    assert _body(response) == data


def test_unsatisfiable_range_is_416_with_the_size(blob: tuple[Path, bytes]) -> None:
    path, _data = blob
    response = _get(path, Range=f"bytes={SIZE}-")
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{SIZE}"
    response.close()


def test_several_ranges_get_the_whole_file(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    response = _get(path, Range="bytes=0-9,20-29")
    assert response.status_code == 200
    assert _body(response) == data


def test_given_sha256_is_the_etag(blob: tuple[Path, bytes]) -> None:
    path, _data = blob
    request = RequestFactory().get("/download")
    response = file_response_with_ranges(request, path, filename="x.zip", sha256="ab" * 32)
    assert response["ETag"] == f'"{"ab" * 32}"'
    response.close()


def test_non_ascii_filename_is_encoded(blob: tuple[Path, bytes]) -> None:
    path, _data = blob
    request = RequestFactory().get("/download")
    response = file_response_with_ranges(request, path, filename="ecografia perché.zip")
    assert response["Content-Disposition"] == "attachment; filename*=utf-8''ecografia%20perch%C3%A9.zip"
    response.close()
