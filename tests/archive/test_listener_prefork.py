"""The listener of several processes (``--processes``, archive/dicomnet/prefork.py), as real
processes over loopback: concurrent associations, the limits across processes, SIGTERM,
a child killed."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from archive.models import Instance, Study
from archive.sample_data import PatientInfo, write_study
from archive.storage import tiers as storage
from tests.conftest import wait_until
from tests.dicom_client import echo

pytestmark = pytest.mark.slow


def _children(parent: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, the last ")" ends it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _receivers(among: set[int]) -> set[int]:
    """Which of ``among`` received a C-STORE: each process writes under its own incoming folder."""
    return {pid for pid in among if storage.incoming_dir_of(pid).is_dir()}


def _associate(port: int, *, contexts: tuple[str, ...] = (Verification,)) -> Association:
    ae = AE(ae_title="STORESCU")
    for uid in contexts:
        ae.add_requested_context(uid)
    return ae.associate("127.0.0.1", port, ae_title="TSCAT_PACS")


def _storescu(port: int, folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["storescu", "-aet", "STORESCU", "-aec", "TSCAT_PACS", "127.0.0.1", str(port), "+sd", str(folder)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_processes_share_concurrent_associations_and_index_each_instance_once(  # type: ignore[no-untyped-def]
    start_listener_process, region, tmp_path: Path
) -> None:
    listener = start_listener_process("--processes", "3")
    assert "3 listener processes" in listener.log()
    children = _children(listener.proc.pid)
    assert len(children) == 3
    folders = []
    for i in range(4):
        write_study(tmp_path / f"s{i}", patient=PatientInfo(patient_id=f"P{i}"), instances_per_series=25)
        folders.append(tmp_path / f"s{i}")
    senders = [_storescu(listener.port, folder) for folder in folders]
    for sender in senders:
        out = sender.communicate(timeout=120)[0].decode(errors="replace")
        assert sender.returncode == 0, out
    # storescu exits 0 only when every C-STORE was acknowledged with success.
    assert Instance.objects.count() == 100
    assert sorted(Study.objects.values_list("number_of_instances", flat=True)) == [25] * 4
    assert len(set(Instance.objects.values_list("sop_instance_uid", flat=True))) == 100
    # The four associations were served by more than one process, all children of the listener.
    assert len(_receivers(children)) >= 2


def test_an_idle_process_takes_the_next_association(start_listener_process, region, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Associations opened one after another while the first ones stay open go to the
    processes that hold none: three associations, three processes."""
    listener = start_listener_process("--processes", "3")
    files = write_study(tmp_path, patient=PatientInfo(patient_id="P1"), instances_per_series=3)
    held = []
    try:
        for path in files:
            assoc = _associate(listener.port, contexts=(CTImageStorage,))
            assert assoc.is_established
            held.append(assoc)
            assert assoc.send_c_store(dcmread(path)).Status == 0
        children = _children(listener.proc.pid)
        assert _receivers(children) == children
    finally:
        for assoc in held:
            assoc.release()


def test_the_association_limit_holds_across_processes(start_listener_process, region) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process("--processes", "3", env={"PACS_DICOM_MAX_ASSOCIATIONS": "2"})
    held = [_associate(listener.port) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        # Whichever process takes it (one of them holds none), the listener is full.
        for _ in range(3):
            third = _associate(listener.port)
            assert third.is_rejected
            answer = third.acceptor.primitive
            assert answer is not None
            assert (answer.result, answer.result_source, answer.diagnostic) == (0x02, 0x03, 0x02)
        wait_until(
            lambda: "associations in progress (PACS_DICOM_MAX_ASSOCIATIONS)" in listener.log(),
            what="the refusal logged",
        )
    finally:
        for a in held:
            a.release()
    assert wait_until(lambda: echo(listener.port) == 0, timeout=10, what="a free association slot")


def test_the_per_address_cap_holds_across_processes(start_listener_process, region) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process("--processes", "3", env={"PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS": "2"})
    held = [_associate(listener.port) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        for _ in range(3):
            assert not _associate(listener.port).is_established
    finally:
        for a in held:
            a.release()
    assert wait_until(lambda: echo(listener.port) == 0, timeout=10, what="the address's slots given back")


def test_sigterm_lets_the_association_in_flight_finish_then_exits(  # type: ignore[no-untyped-def]
    start_listener_process, region, tmp_path: Path
) -> None:
    listener = start_listener_process("--processes", "2", env={"PACS_DICOM_SHUTDOWN_GRACE": "60"})
    children = _children(listener.proc.pid)
    files = write_study(tmp_path, patient=PatientInfo(patient_id="P1"), instances_per_series=60)
    report, acked = listener.send_and_signal(files, after=10, sig=signal.SIGTERM)
    assert listener.proc.wait(timeout=90) == 0, listener.log()
    log = listener.log()
    assert "stopping: no new associations" in log and "DICOM listener stopped" in log
    # The association in flight went on to its end: every image sent, acknowledged and indexed.
    assert not report.aborted
    assert len(acked) == 60
    assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == set(acked)
    assert Study.objects.get().number_of_instances == 60
    assert not any(_alive(pid) for pid in children)
    assert echo(listener.port) != 0  # nothing listens


def test_a_killed_process_is_replaced_and_gives_its_slots_back(  # type: ignore[no-untyped-def]
    start_listener_process, region, tmp_path: Path
) -> None:
    listener = start_listener_process("--processes", "2", env={"PACS_DICOM_MAX_ASSOCIATIONS": "1"})
    children = _children(listener.proc.pid)
    assert len(children) == 2
    # The one association the listener takes, on the process that receives its C-STORE.
    files = write_study(tmp_path, patient=PatientInfo(patient_id="P1"), instances_per_series=1)
    held = _associate(listener.port, contexts=(CTImageStorage,))
    assert held.is_established
    assert held.send_c_store(dcmread(files[0])).Status == 0
    (victim,) = _receivers(children)
    assert _associate(listener.port).is_rejected  # full
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(_children(listener.proc.pid) - {victim}) == 2, timeout=30, what="a replacement")
    wait_until(lambda: "died (signal 9)" in listener.log(), what="the death logged")
    # Its association's slot came back with it: a new association is accepted.
    assert wait_until(lambda: echo(listener.port) == 0, timeout=10, what="the dead process's slot")
    held.abort()
    assert Instance.objects.count() == 1
    assert listener.stop() == 0


def test_the_processes_stop_when_the_parent_is_killed(start_listener_process, region) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process("--processes", "2")
    children = _children(listener.proc.pid)
    assert len(children) == 2
    listener.proc.kill()
    listener.proc.wait(timeout=10)
    wait_until(lambda: not any(_alive(pid) for pid in children), timeout=30, what="the orphans to stop")


def test_a_bad_process_count_is_refused(start_listener_process, region) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="--processes -1"):
        start_listener_process("--processes", "-1")


def test_the_tls_port_is_served_by_the_processes_too(start_listener_process, region, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.tls_helpers import make_pki, tls_node_create

    pki = make_pki(tmp_path / "pki")
    secure = pki.client("secure")
    tls_node_create(facility=region.facility, ae_title="SECURE", credential=secure)
    listener = start_listener_process("--processes", "2", "--tls-port", "0", env=pki.settings())
    ae = AE(ae_title="SECURE")
    ae.add_requested_context(Verification)
    for _ in range(3):
        assoc = ae.associate(
            "127.0.0.1", listener.tls_port(), ae_title="TSCAT_PACS", tls_args=(pki.client_context(secure), "localhost")
        )
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    # The node with a certificate is refused on the plain port, by whichever process.
    assert not ae.associate("127.0.0.1", listener.port, ae_title="TSCAT_PACS").is_established
