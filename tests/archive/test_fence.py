"""The fence around pynetdicom (archive/dicomnet/fence.py): its check, and that a
listener changes nothing of pynetdicom for the rest of the process."""

from __future__ import annotations

import io
import queue
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pydicom import dcmread
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.transport import RequestHandler

from archive.checks import check_pynetdicom_fence
from archive.dicomnet import fence
from archive.dicomnet.listener import start_listener, stop_listener
from kernel.models import AuditEvent
from tests.conftest import REPO, free_port, wait_until


def _e030() -> list[str]:
    errors = check_pynetdicom_fence(None)
    assert all(e.id == "archive.E030" for e in errors)
    return [e.msg for e in errors]


# --- the check and its canaries -------------------------------------------------------


def test_the_fence_holds_on_the_installed_pynetdicom() -> None:
    assert fence.problems() == []
    assert _e030() == []


def test_the_fence_is_written_for_the_pinned_pynetdicom() -> None:
    pins = re.findall(r"^pynetdicom==(\S+)\s*$", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    assert pins == [fence.PYNETDICOM_VERSION] == [pynetdicom.__version__]


def test_another_pynetdicom_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.0.5")
    [message] = _e030()
    assert "pynetdicom 3.0.5 is installed" in message and "3.0.4" in message


@pytest.mark.parametrize(
    "owner,name,named",
    [
        (DULServiceProvider, "_read_pdu_data", "DULServiceProvider._read_pdu_data"),
        (DULServiceProvider, "run_reactor", "DULServiceProvider.run_reactor"),
        (Association, "_serve_request", "Association._serve_request"),
        (RequestHandler, "_create_association", "RequestHandler._create_association"),
        (_config, "LOG_RESPONSE_IDENTIFIERS", "_config.LOG_RESPONSE_IDENTIFIERS"),
    ],
)
def test_a_missing_name_is_refused_and_named(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, named: str
) -> None:
    monkeypatch.delattr(owner, name)
    [message] = _e030()
    assert f"pynetdicom's {named} " in message and "missing" in message


def test_a_missing_instance_attribute_is_refused_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    made_by_pynetdicom = DULServiceProvider.__init__

    def without_recv_pdu(self: DULServiceProvider, assoc: Association) -> None:
        made_by_pynetdicom(self, assoc)
        del self._recv_pdu

    monkeypatch.setattr(DULServiceProvider, "__init__", without_recv_pdu)
    [message] = _e030()
    assert "DULServiceProvider._recv_pdu" in message and "missing" in message


def test_a_copied_method_whose_source_changed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_reactor(self: DULServiceProvider) -> None:
        pass  # another loop than the one the fence copied

    monkeypatch.setattr(DULServiceProvider, "run_reactor", run_reactor)
    [message] = _e030()
    assert "DULServiceProvider.run_reactor" in message and "source differs" in message


def test_a_method_with_other_parameters_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def _serve_request(self: Association, msg: Any) -> None:
        pass

    monkeypatch.setattr(Association, "_serve_request", _serve_request)
    [message] = _e030()
    assert "Association._serve_request" in message and "takes" in message


def test_the_listener_does_not_start_when_the_fence_is_broken(
    transactional_db: None, region: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(DULServiceProvider, "_read_pdu_data")
    with pytest.raises(fence.FenceBroken, match=r"DULServiceProvider\._read_pdu_data"):
        start_listener(host="127.0.0.1", port=0)


@pytest.mark.slow  # a real process
def test_the_listener_command_refuses_another_pynetdicom(process_env: dict[str, str]) -> None:
    """``manage.py dicom_listener`` as it is run, in a process whose pynetdicom says 3.0.5:
    Django's system checks stop it before it listens."""
    code = (
        "import runpy, sys, pynetdicom; pynetdicom.__version__ = '3.0.5'; "
        "sys.argv = ['manage.py', 'dicom_listener', '--host', '127.0.0.1', '--port', '0']; "
        "runpy.run_path('manage.py', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=process_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "archive.E030" in proc.stderr and "pynetdicom 3.0.5 is installed" in proc.stderr
    assert "listener ready" not in proc.stdout


# --- no leak into the rest of the process --------------------------------------------


def _pynetdicom_state() -> dict[str, int]:
    """What every pynetdicom module and class holds, by identity."""
    state = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "pynetdicom" or module_name.startswith("pynetdicom.")):
            continue
        for name, value in list(vars(module).items()):
            if name.startswith("__") or type(value).__name__ == "module":
                continue
            state[f"{module_name}.{name}"] = id(value)
            if isinstance(value, type) and value.__module__ == module_name:
                for attribute, member in list(vars(value).items()):
                    state[f"{module_name}.{name}.{attribute}"] = id(member)
    return state


def _plain_store_round_trip(path: Path) -> dict[str, Any]:
    """A pynetdicom SCP and SCU of this test process exchange one C-STORE; what the SCP saw."""
    seen: dict[str, Any] = {}

    def on_store(event: evt.Event) -> int:
        seen["association"] = type(event.assoc)
        seen["dul"] = type(event.assoc.dul)
        seen["data_set"] = type(event.request.DataSet)
        seen["dataset_path"] = event.dataset_path
        seen["sop_instance_uid"] = event.dataset.SOPInstanceUID
        return 0x0000

    scp = AE(ae_title="PLAIN_SCP")
    scp.add_supported_context(CTImageStorage)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        scu = AE(ae_title="PLAIN_SCU")
        scu.add_requested_context(CTImageStorage)
        assoc = scu.associate("127.0.0.1", port)
        assert assoc.is_established
        try:
            seen["client"] = (type(assoc), type(assoc.dul), type(assoc.dimse))
            assert assoc.send_c_store(dcmread(path)).Status == 0x0000
        finally:
            assoc.release()
    finally:
        server.shutdown()
    return seen


def test_a_listener_changes_nothing_of_pynetdicom_for_the_rest_of_the_process(
    transactional_db: None, region: Any, ct_study: list[Path]
) -> None:
    from pynetdicom import association, dimse_messages, dul, sop_class

    from tests.dicom_client import echo, send_files

    before = _pynetdicom_state()
    server = start_listener(host="127.0.0.1", port=0)
    try:
        port = server.server_address[1]
        assert set(send_files(port, ct_study[:2]).statuses.values()) == {0x0000}
        assert echo(port) == 0x0000
        seen = _plain_store_round_trip(ct_study[2])
    finally:
        stop_listener(server, grace=0)
    after = _pynetdicom_state()

    changed = sorted(key for key in before if after.get(key) != before[key])
    assert changed == []
    # What the listener used to replace for everyone, by name.
    assert association.time is time and dul.time is time
    assert dimse_messages.NamedTemporaryFile is tempfile.NamedTemporaryFile
    assert association.uid_to_service_class is sop_class.uid_to_service_class
    assert _config.STORE_RECV_CHUNKED_DATASET is False
    assert _config.LOG_REQUEST_IDENTIFIERS is True and _config.LOG_RESPONSE_IDENTIFIERS is True
    # A pynetdicom SCP and SCU in the same process work as released, listener or not.
    assert seen["client"] == (Association, DULServiceProvider, pynetdicom.dimse.DIMSEServiceProvider)
    assert (seen["association"], seen["dul"]) == (Association, DULServiceProvider)
    assert seen["data_set"] is io.BytesIO and seen["dataset_path"] is None
    assert seen["sop_instance_uid"] == dcmread(ct_study[2]).SOPInstanceUID


# --- the setting, and the association's end ----------------------------------------------


@pytest.mark.plain_too
def test_the_setting_chooses_the_fast_paths_per_listener(
    transactional_db: None, region: Any, dicom_fast_paths: bool
) -> None:
    server = start_listener(host="127.0.0.1", port=0)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="TSCAT_PACS")
    try:
        assert assoc.is_established
        [served] = wait_until(lambda: server.active_associations, what="the served association")
        assert served.pacs_fast is dicom_fast_paths
        assert (type(served.dul.to_provider_queue) is queue.Queue) is not dicom_fast_paths
        assert (type(served.dimse.msg_queue) is queue.Queue) is not dicom_fast_paths
        nodelay = served.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert bool(nodelay) is dicom_fast_paths
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
        stop_listener(server, grace=0)


def _malformed_command(context_id: int) -> bytes:
    """A P-DATA-TF whose last command fragment decodes to a command set without a
    CommandField: pynetdicom's state machine fails on it and stops its DUL."""
    element = struct.pack("<HHL", 0x0000, 0x0002, 4) + b"1.2\0"  # Affected SOP Class UID only
    pdv = struct.pack(">LBB", len(element) + 2, context_id, 0x03) + element
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


# The malformed command set stops pynetdicom's DUL thread with an exception, as it would
# any pynetdicom DUL: that is the point of the case.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("end", ["release", "abort", "malformed-command"])
def test_however_an_association_ends_its_stores_are_audited_once_and_its_slot_is_freed(  # type: ignore[no-untyped-def]
    transactional_db, region, ct_study, dicom_fast_paths, end: str
) -> None:
    server = start_listener(host="127.0.0.1", port=0)
    try:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="TSCAT_PACS")
        assert assoc.is_established
        assert server.slots.held("127.0.0.1") == 1
        assert assoc.send_c_store(dcmread(ct_study[0])).Status == 0x0000
        if end == "release":
            assoc.release()
        elif end == "abort":
            assoc.abort()
        else:
            assoc.dul.socket.socket.sendall(_malformed_command(assoc.accepted_contexts[0].context_id))
            wait_until(lambda: not assoc.is_established, what="the listener dropping the association")
        wait_until(lambda: server.slots.held("127.0.0.1") == 0, what="the slot given back")
        wait_until(lambda: AuditEvent.objects.filter(action="dicom.store").exists(), what="the store audit")
        wait_until(lambda: not server.active_associations, what="the association's thread to end")
        event = AuditEvent.objects.get(action="dicom.store")  # once
        assert event.detail["stored"] == 1 and event.ae_title == "STORESCU"
    finally:
        stop_listener(server, grace=0)


def test_a_requestor_class_with_state_is_not_switched_onto_an_association() -> None:
    class WithState(Association):
        counter = 0

    assoc = Association(AE(), "requestor")
    with pytest.raises(TypeError, match="adds no state"):
        fence.requestor_becomes(assoc, WithState)
    assert type(assoc) is Association


def test_the_listeners_threads_end(transactional_db: None, region: Any) -> None:
    """Nothing the fence starts outlives the listener (the DUL's wake-up sockets
    are closed with its thread)."""
    from tests.dicom_client import echo

    before = {t.ident for t in threading.enumerate()}
    server = start_listener(host="127.0.0.1", port=0)
    assert echo(server.server_address[1]) == 0x0000
    stop_listener(server, grace=0)
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.ident not in before and t.is_alive()],
        what="the listener's threads to end",
    )


# --- row 6: the reactor's race with a sending thread (pynetdicom issue 875) ----------------


class _GatedCheckpoint(threading.Event):
    """The association's ``_reactor_checkpoint``, holding its loop, once, where pynetdicom
    issue 875's race opens: after its wait returned and before it marks itself running,
    until the response to the request a sending thread then sends is on the DIMSE queue.
    ``turn_done`` is set when the loop comes back to the checkpoint after that."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self.set()
        self.assoc = assoc
        self.armed = False
        self.past_wait = threading.Event()
        self.turn_done = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is self.assoc and self.past_wait.is_set() and not self.turn_done.is_set():
            self.turn_done.set()  # the loop's next turn: it read the queue, or did not, already
        woke = super().wait(timeout)
        if threading.current_thread() is self.assoc and self.armed and not self.past_wait.is_set():
            self.past_wait.set()
            deadline = time.monotonic() + 5
            while self.assoc.dimse.msg_queue.empty() and time.monotonic() < deadline:
                time.sleep(0.001)
        return woke


@pytest.mark.parametrize("reactor", [Association, fence.CheckedReactor], ids=["pynetdicom", "fence"])
def test_the_reactor_does_not_take_the_response_a_sender_waits_for(
    reactor: type[Association], caplog: pytest.LogCaptureFixture
) -> None:
    """The interleaving of pynetdicom issue 875, forced: the sender clears the checkpoint
    and reads the loop as paused just after the loop's wait returned; the response is on
    the queue before the loop goes on, and the sender reads the queue after the loop's
    turn. pynetdicom's loop takes the response and the sender times out; the fence's
    (every association of the listener and the archive's requestors, row 6) does not."""
    scp = AE(ae_title="ECHOSCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:

        class Requestor(fence.CheckedAE):
            requestor_class = reactor

        scu = Requestor(ae_title="ECHOSCU")
        scu.dimse_timeout = 1
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="ECHOSCP")
        assert assoc.is_established and type(assoc) is reactor
        gate = _GatedCheckpoint(assoc)
        assoc._reactor_checkpoint = gate
        real_get_msg = assoc.dimse.get_msg

        def get_msg(block: bool = False) -> Any:
            if threading.current_thread() is not assoc:  # the sender: after the loop's turn
                assert gate.turn_done.wait(5)
            return real_get_msg(block)

        assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]
        gate.armed = True
        assert gate.past_wait.wait(5)
        with caplog.at_level("WARNING", logger="pynetdicom"):
            status = assoc.send_c_echo()
        assert gate.turn_done.is_set()
        taken = [r for r in caplog.records if "unexpected" in r.getMessage()]
        if reactor is Association:  # the race is forced: the test can fail
            assert "Status" not in status and taken
            assert assoc.is_aborted
        else:
            assert status.Status == 0x0000 and not taken
            assoc.release()
            assert assoc.is_released
    finally:
        server.shutdown()


def test_requestors_are_switched_before_their_thread_starts() -> None:
    """Row 12: an association already running keeps its class."""
    assoc = Association(AE(), "requestor")
    assoc.is_alive = lambda: True  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="before its thread starts"):
        fence.requestor_becomes(assoc, fence.CheckedReactor)
    assert type(assoc) is Association
