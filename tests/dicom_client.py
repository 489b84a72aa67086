"""A pynetdicom storage SCU for the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pynetdicom import _config
from pynetdicom.sop_class import Verification

# pynetdicom's AE, whose associations' loop does not take the response a send_c_*
# waits for (pynetdicom issue 875; archive/dicomnet/fence.py row 6).
from archive.dicomnet.fence import CheckedAE as AE

# Send files byte for byte from disk, as a modality would: pynetdicom otherwise
# decodes and re-encodes them (and refuses, or repairs, the broken ones the
# tests send on purpose).
_config.STORE_SEND_CHUNKED_DATASET = True


@dataclass
class SendReport:
    established: bool
    rejected: bool = False
    statuses: dict[str, int] = field(default_factory=dict)  # SOPInstanceUID -> status
    comments: dict[str, str] = field(default_factory=dict)
    aborted: bool = False

    def acknowledged(self) -> list[str]:
        """Instances the SCP answered with success or warning."""
        return [uid for uid, s in self.statuses.items() if s == 0x0000 or (s & 0xF000) == 0xB000]


def _contexts_for(files: Iterable[Path]) -> list[tuple[str, str]]:
    pairs = []
    for f in files:
        meta = dcmread(f, stop_before_pixels=True).file_meta
        pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def send_files(
    port: int,
    files: list[Path],
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = "TSCAT_PACS",
    on_status: Callable[[str, int], None] | None = None,
) -> SendReport:
    """One association sending every file as received on disk (pynetdicom reads the
    file's meta for the context and sends the data set's bytes unchanged)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, ts in _contexts_for(files):
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    report = SendReport(established=assoc.is_established, rejected=assoc.is_rejected)
    if not assoc.is_established:
        return report
    try:
        for f in files:
            uid = str(dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
            rsp = assoc.send_c_store(f)
            if not rsp or "Status" not in rsp:
                report.aborted = True
                break
            report.statuses[uid] = int(rsp.Status)
            report.comments[uid] = str(rsp.get("ErrorComment", ""))
            if on_status:
                on_status(uid, int(rsp.Status))
    finally:
        if assoc.is_established:
            assoc.release()
        report.aborted = report.aborted or assoc.is_aborted
    return report


def echo(port: int, *, calling_ae: str = "STORESCU", called_ae: str = "TSCAT_PACS") -> int | None:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return None
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status)
    finally:
        assoc.release()
