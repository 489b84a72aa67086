"""The Python floor: a bare pynetdicom C-STORE SCP that only writes and fsyncs each file.

Run: python bench/ingest/floor_scp.py PORT DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from archive.dicom import ACCEPTED_TRANSFER_SYNTAXES  # noqa: E402  (same contexts as the archive)


def main() -> None:
    port, dest = int(sys.argv[1]), Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)

    def handle_store(event: evt.Event) -> int:
        path = dest / f"{event.request.AffectedSOPInstanceUID}.dcm"
        with open(path, "wb") as fh:
            fh.write(event.encoded_dataset())
            fh.flush()
            os.fsync(fh.fileno())
        return 0x0000

    ae = AE(ae_title="FLOOR")
    ae.maximum_associations = 32
    ae.maximum_pdu_size = 262144
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    print(f"floor SCP ready on {port}", flush=True)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, handle_store)])


if __name__ == "__main__":
    main()
