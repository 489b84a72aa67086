"""Serving a prepared file with HTTP range requests (RFC 9110 section 14), so
that an interrupted download of a large package resumes where it stopped."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.http import http_date, parse_http_date_safe

from kernel.web import content_disposition

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def file_etag(st: os.stat_result, *, sha256: str | None = None) -> str:
    """A strong ETag: the content's SHA-256 when known, else size and modification time."""
    if sha256:
        return f'"{sha256}"'
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def _parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """The one byte range ``header`` asks for, as (first, last) inclusive.

    None when the header is to be ignored (malformed, several ranges, not
    bytes): the whole file is sent. ``"unsatisfiable"`` when no byte of the
    file is in the range.
    """
    match = _RANGE.match(header.replace(" ", ""))
    if not match:
        return None  # RFC 9110 14.2: a server may ignore a Range it does not understand
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # invalid, not unsatisfiable
    if first >= size:
        return "unsatisfiable"
    last = min(int(last_text), size - 1) if last_text else size - 1
    return first, last


def _if_range_holds(value: str, *, etag: str, mtime: float) -> bool:
    """RFC 9110 13.1.5: the range applies only if the validator still matches
    (strong comparison: a weak ETag never does)."""
    value = value.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False
    when = parse_http_date_safe(value)
    return when is not None and when == int(mtime)


class _FileRange:
    """``length`` bytes of ``fh`` from ``start``, in chunks; closed by Django
    when the response is, whether or not it was read to the end."""

    def __init__(self, fh: BinaryIO, start: int, length: int) -> None:
        self.fh = fh
        self.start = start
        self.left = length

    def __iter__(self) -> Iterator[bytes]:
        self.fh.seek(self.start)
        while self.left > 0:
            chunk = self.fh.read(min(CHUNK, self.left))
            if not chunk:
                logger.error("%s ended %d bytes early", getattr(self.fh, "name", "file"), self.left)
                return
            self.left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self.fh.close()


def file_response_with_ranges(
    request: HttpRequest,
    path: Path,
    *,
    filename: str,
    content_type: str = "application/zip",
    sha256: str | None = None,
) -> HttpResponseBase:
    """The file at ``path`` as a download, streamed in chunks of 1 MiB, with
    single byte ranges.

    - ``Range: bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` are answered 206 with
      ``Content-Range``; a range that starts past the end answers 416 with
      ``Content-Range: bytes */size``.
    - Several ranges (``bytes=0-1,5-9``), or a Range header that cannot be
      parsed, are answered with the whole file (200): RFC 9110 lets a server
      ignore Range, and download managers resume with one range.
    - ``If-Range`` with an ETag (strong comparison) or an HTTP date that no
      longer matches gives the whole file (200).
    - The ETag is ``sha256`` when given (the package's recorded hash), else
      one made of the file's size and modification time.

    Only GET and HEAD consider ``Range``; the caller decides who may download.
    """
    fh = path.open("rb")
    try:
        st = os.fstat(fh.fileno())  # the file being sent, even if renamed over since
        size = st.st_size
        etag = file_etag(st, sha256=sha256)
        byte_range: tuple[int, int] | None | str = None
        range_header = request.headers.get("Range")
        if range_header and request.method in ("GET", "HEAD"):
            if_range = request.headers.get("If-Range")
            if if_range is None or _if_range_holds(if_range, etag=etag, mtime=st.st_mtime):
                byte_range = _parse_range(range_header, size)
        if byte_range == "unsatisfiable":
            fh.close()
            response: HttpResponseBase = HttpResponse(status=416, content_type="text/plain")
            response["Content-Range"] = f"bytes */{size}"
        elif isinstance(byte_range, tuple):
            first, last = byte_range
            length = last - first + 1
            response = StreamingHttpResponse(_FileRange(fh, first, length), status=206, content_type=content_type)
            response["Content-Range"] = f"bytes {first}-{last}/{size}"
            response["Content-Length"] = str(length)
        else:
            response = StreamingHttpResponse(_FileRange(fh, 0, size), content_type=content_type)
            response["Content-Length"] = str(size)
    except BaseException:
        fh.close()
        raise
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = etag
    response["Last-Modified"] = http_date(st.st_mtime)
    response["Content-Disposition"] = content_disposition(filename)
    return response
