"""Streamed response bodies: the multipart/related writer (RFC 2387) and stored files in chunks.

A retrieve is a generator of multipart/related chunks, each file read in
1 MiB pieces, so memory does not grow with a study's size.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from archive.storage import tiers as storage

from .media import MULTIPART

_CHUNK = 1024 * 1024


@dataclass
class Streamed:
    """A response body to stream, with its content type."""

    content_type: str
    chunks: Iterable[bytes]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Part:
    """One body part: its headers and a lazily produced body."""

    content_type: str
    body: Callable[[], Iterable[bytes]]
    location: str = ""


def body_of(data: bytes) -> Callable[[], Iterable[bytes]]:
    """A part's body that is ``data`` already in memory (bound now, not when the part is sent)."""
    return lambda: [data]


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    value = f'{MULTIPART}; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def multipart_stream(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related message (RFC 2387), part by part, chunk by chunk."""
    dash = f"--{boundary}".encode("ascii")
    first = True
    for part in parts:
        head = [b"" if first else b"\r\n", dash, b"\r\nContent-Type: ", part.content_type.encode("ascii")]
        if part.location:
            head += [b"\r\nContent-Location: ", part.location.encode("ascii", "replace")]
        head.append(b"\r\n\r\n")
        first = False
        # The head goes out with the body's first chunk: one write per part
        # for a file under 1 MiB (most images), not two.
        body = iter(part.body())
        yield b"".join(head) + next(body, b"")
        yield from body
    yield (b"" if first else b"\r\n") + dash + b"--\r\n"


def file_chunks(fh: BinaryIO, *, start: int = 0, length: int | None = None, swap: int = 0) -> Iterator[bytes]:
    """``length`` bytes of ``fh`` from ``start`` (to the end if None), in 1 MiB chunks; closes ``fh``.

    ``swap``: reverse the byte order of each ``swap``-byte word (big endian
    values sent little endian, PS3.18 8.7.3.3.2).
    """
    try:
        fh.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            size = _CHUNK if remaining is None else min(_CHUNK, remaining)
            data = fh.read(size)
            if not data:
                if remaining:
                    raise storage.StorageError(f"the stored file ends {remaining} bytes early")
                break
            if remaining is not None:
                remaining -= len(data)
            yield _swap(data, swap) if swap > 1 else data
    finally:
        fh.close()


def _swap(data: bytes, size: int) -> bytes:
    import numpy as np

    usable = len(data) - len(data) % size
    dtype = {2: "u2", 4: "u4", 8: "u8"}[size]
    swapped = np.frombuffer(data[:usable], dtype=f"<{dtype}").byteswap().tobytes()
    return swapped + data[usable:]
