"""C-GET and C-MOVE sub-operations for a peer that did not accept the stored transfer syntax.

The listener sends an archived file byte for byte on a context accepted in
its stored transfer syntax (``fence.send_file``). Otherwise the object is
transcoded (``archive.dicom_transcode``) to a syntax the peer accepted for
its SOP class, in this order of preference: Explicit VR Little Endian,
Implicit VR Little Endian, Deflated, then the lossless compressed syntaxes
(RLE, JPEG-LS, JPEG 2000). A retrieve never makes a lossy copy: a peer that
accepted only lossy syntaxes for a lossless image gets a failed
sub-operation, as does one whose conversion fails (a corrupted compressed
stream): :class:`~archive.dicom_transcode.TranscodeError`, which the
listener turns into a failed sub-operation, the association going on.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from archive.dicom_transcode import (
    LOSSLESS_COMPRESSED,
    UNCOMPRESSED,
    TranscodeError,
    dataset_transcode,
    has_pixel_data,
    producible,
)
from archive.dicomnet import fence
from archive.rendering.transcoding import transcode_isolated

if TYPE_CHECKING:  # the index's model, for the type hint only
    from archive.models import Instance

logger = logging.getLogger(__name__)

PREFERENCE = (*UNCOMPRESSED, *LOSSLESS_COMPRESSED)


def accepted_syntaxes(assoc: Association, sop_class_uid: str) -> list[str]:
    """The transfer syntaxes of the contexts accepted for ``sop_class_uid`` on which
    this side may send a C-STORE (as SCU: a C-GET's storage contexts are negotiated
    with the peer as SCP, SCP/SCU role selection)."""
    out = []
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != sop_class_uid or not cx.transfer_syntax:
            continue
        if assoc.is_acceptor and not cx.as_scu:
            continue
        ts = str(cx.transfer_syntax[0])
        if ts not in out:
            out.append(ts)
    return out


def stored_context(assoc: Association, instance: Instance) -> PresentationContext | None:
    """The accepted context on which the instance goes as archived; None when the peer
    did not accept its stored transfer syntax (asked only then: pynetdicom logs an
    error for every context it does not find)."""
    if instance.transfer_syntax_uid not in accepted_syntaxes(assoc, instance.sop_class_uid):
        return None
    return fence.exact_context(assoc, instance.sop_class_uid, instance.transfer_syntax_uid)


def for_peer(assoc: Association, path: Path, instance: Instance) -> Dataset:
    """The archived object at ``path``, read and transcoded to a syntax ``assoc``
    accepted for its SOP class. Raises :class:`TranscodeError`."""
    accepted = accepted_syntaxes(assoc, instance.sop_class_uid)
    if not accepted:
        raise TranscodeError(f"the peer accepted no presentation context for SOP class {instance.sop_class_uid}")
    try:
        ds = dcmread(path, defer_size=1024)  # the pixel data is read only if the object is uncompressed
    except Exception as exc:
        raise TranscodeError(f"the archived file cannot be read: {exc}") from exc
    stored = UID(str(ds.file_meta.get("TransferSyntaxUID", instance.transfer_syntax_uid)))
    possible = producible(stored, has_pixels=has_pixel_data(ds), lossy=False)
    targets = [ts for ts in PREFERENCE if ts in accepted and ts in possible]
    if not targets:
        raise TranscodeError(
            f"stored in {stored.name}; the peer accepted only {', '.join(UID(t).name for t in accepted)}"
        )
    if stored.is_compressed:
        # Decoding can crash the process (a damaged stream): in a worker.
        result = transcode_isolated(path, targets)
        try:
            return dcmread(io.BytesIO(result.data))
        except Exception as exc:
            raise TranscodeError(f"the transcoded object cannot be read back: {exc}") from exc
    failures = []
    for n, target in enumerate(targets):
        try:
            if n:
                ds = dcmread(path)  # the failed attempt may have changed the data set half-way
            return dataset_transcode(ds, target)
        except TranscodeError as exc:
            failures.append(exc.message)
    raise TranscodeError("; ".join(failures))
