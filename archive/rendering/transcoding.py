"""Transcoding a stored file in a render worker process (``archive.rendering.isolated``).

Decoding compressed pixel data can crash the process (GDCM aborts on some
damaged JPEG streams, pylibjpeg-rle panics on a corrupt RLE stream: see
``isolated``'s docstring), and an archived file is what a modality sent. The
listener's C-GET/C-MOVE and WADO-RS therefore transcode a compressed object
in a worker: a crash, a timeout or an allocation beyond the limit becomes a
:class:`~archive.dicom_transcode.TranscodeError`, one failed sub-operation or
one refused request, and the listener or the web worker lives on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings

from archive.dicom_transcode import Transcoded, TranscodeError, file_transcode

from . import pipeline as rendering
from .isolated import run_isolated

logger = logging.getLogger(__name__)


def transcode_isolated(path: Path, acceptable: Iterable[str], *, lossy: bool = False) -> Transcoded:
    """:func:`archive.dicom_transcode.file_transcode` of the file at ``path`` in a worker
    process, within ``PACS_TRANSCODE_TIMEOUT`` seconds. Raises :class:`TranscodeError`."""
    try:
        kind, value, transfer_syntax, changed = run_isolated(
            _transcode_path,
            timeout=settings.PACS_TRANSCODE_TIMEOUT,
            path=_for_worker(path),
            acceptable=[str(ts) for ts in acceptable],
            lossy=lossy,
        )
    except rendering.NoImage as exc:
        raise TranscodeError(exc.message.replace("the image could not be decoded", "the conversion failed")) from None
    if kind != "ok":
        raise TranscodeError(value)
    return Transcoded(value, transfer_syntax, changed)


def _for_worker(path: Path) -> str:
    # A held copy is named by this process's descriptor (archive.storage.retrieve.instance_file):
    # the worker, a child of this process, reads it by this process's id.
    text = str(path)
    if text.startswith("/proc/self/"):
        return f"/proc/{os.getpid()}/" + text.removeprefix("/proc/self/")
    return text


def _transcode_path(*, path: str, acceptable: list[str], lossy: bool) -> tuple[str, bytes | str, str, bool]:
    # In the worker: an expected refusal comes back as a value, not as an error to log.
    try:
        result = file_transcode(Path(path), acceptable, lossy=lossy)
    except TranscodeError as exc:
        return "error", exc.message, "", False
    return "ok", result.data, result.transfer_syntax, result.changed
