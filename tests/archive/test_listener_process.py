"""The listener as a real process: shutdown, crashes, a full disk, hostile peers."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings

from archive.dicom import read_part10
from archive.models import Copy, Instance, RemoteNode, Study
from archive.sample_data import PatientInfo, write_study
from archive.storage import tiers as storage
from tests.conftest import wait_until
from tests.dicom_client import echo, send_files

pytestmark = pytest.mark.slow


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _assert_index_matches_files(tier_root: Path) -> None:
    """Every copy row has its complete file; every file in the tier has its row."""
    rows = {}
    for copy in Copy.objects.select_related("instance"):
        path = storage.absolute_path(copy.tier, copy.path)
        data = path.read_bytes()
        assert len(data) == copy.size == copy.instance.size, copy.path
        assert hashlib.sha256(data).hexdigest() == copy.sha256 == copy.instance.sha256, copy.path
        read_part10(data)  # complete and valid
        rows[path.resolve()] = copy
    files = {p.resolve() for p in tier_root.rglob("*") if p.is_file()}
    assert files == set(rows), "files without rows or rows without files"


def _acked_all_stored(acked: list[str]) -> None:
    stored = set(Instance.objects.values_list("sop_instance_uid", flat=True))
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged instances lost"


def test_sigterm_finishes_the_store_in_flight_and_exits(start_listener_process, region, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # 290 stores after the signal take well over the half-second grace period.
    listener = start_listener_process(env={"PACS_DICOM_SHUTDOWN_GRACE": "0.5"})
    files = write_study(tmp_path, patient=PatientInfo(patient_id="P1"), instances_per_series=300)
    report, acked = listener.send_and_signal(files, after=10, sig=signal.SIGTERM)
    assert listener.proc.wait(timeout=60) == 0, listener.log()
    assert "DICOM listener stopped" in listener.log()
    assert 10 <= len(acked) < 300  # cut between two stores, after the grace period
    assert report.aborted
    _acked_all_stored(acked)
    assert Study.objects.get().number_of_instances == Instance.objects.count()
    _assert_index_matches_files(Path(settings.PACS_FACILITY_TIER_DIR))
    # Nothing listens any more.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=1).close()


def test_sigkill_mid_transfer_loses_no_acknowledged_instance(start_listener_process, region, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process()
    files = write_study(tmp_path, patient=PatientInfo(patient_id="P1"), series=2, instances_per_series=100)
    _report, acked = listener.send_and_signal(files, after=70, sig=signal.SIGKILL)
    listener.proc.wait(timeout=30)
    assert len(acked) == 70
    _acked_all_stored(acked)
    # At most the one store in flight committed without being acknowledged.
    assert Instance.objects.count() in (70, 71)
    study = Study.objects.get()
    assert study.number_of_instances == Instance.objects.count()
    _assert_index_matches_files(Path(settings.PACS_FACILITY_TIER_DIR))
    # The dead listener's half-received file is removed by the next one.
    dead = storage.incoming_dir_of(listener.proc.pid)
    restarted = start_listener_process()
    assert not dead.exists()
    # And the sender's retry of everything completes the study, duplicates included.
    report = send_files(restarted.port, files)
    assert set(report.statuses.values()) == {0}
    assert Study.objects.get().number_of_instances == 200
    _assert_index_matches_files(Path(settings.PACS_FACILITY_TIER_DIR))


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("spool", ["in-memory", "spilled-to-disk"])
def test_full_disk_answers_out_of_resources_and_leaves_no_partial_file(
    start_listener_process, region, tmp_path: Path, small_tmpfs: Path, spool: str
) -> None:  # type: ignore[no-untyped-def]
    tier, incoming = small_tmpfs / "tier", small_tmpfs / "incoming"
    listener = start_listener_process(
        env={
            "PACS_FACILITY_TIER_DIR": str(tier),
            "PACS_INCOMING_DIR": str(incoming),
            # Spilled: the disk fills while pynetdicom writes the data set as it arrives.
            "PACS_DICOM_SPOOL_MEMORY": "4096" if spool == "spilled-to-disk" else str(4 * 1024 * 1024),
        }
    )
    # 60 CT images of 39 KB cannot fit in 1 MB.
    files = write_study(tmp_path, patient=PatientInfo(patient_id="P1"), instances_per_series=60)
    report = send_files(listener.port, files)
    statuses = list(report.statuses.values())
    assert statuses[0] == 0x0000
    assert 0xA700 in statuses, statuses
    assert set(statuses) <= {0x0000, 0xA700}
    stored = [uid for uid, s in report.statuses.items() if s == 0]
    assert sorted(Instance.objects.values_list("sop_instance_uid", flat=True)) == sorted(stored)
    from django.test import override_settings

    with override_settings(
        STORAGES={
            **settings.STORAGES,
            "facility": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": tier}},
        }
    ):
        _assert_index_matches_files(tier)
    # Nothing half-written: no empty or partial file anywhere on the full disk.
    leftovers = [p for p in incoming.rglob("*") if p.is_file()]
    assert leftovers == []
    assert echo(listener.port) == 0  # still serving


def _raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _stream_until_cut(sock: socket.socket, total: int) -> int:
    """Send up to ``total`` bytes of junk; return how many were sent before the peer cut us."""
    chunk = b"\0" * 65536
    sent = 0
    try:
        while sent < total:
            sent += sock.send(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
        pass
    return sent


@pytest.mark.plain_too
@pytest.mark.parametrize("where", ["association-request", "established"])
def test_a_declared_4gib_pdu_is_cut_without_buffering(start_listener_process, region, where: str) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process()
    pid = listener.proc.pid
    assert echo(listener.port) == 0  # warm up: threads, imports, database connection
    before = _rss_kib(pid)
    sock = _raw_connect(listener.port)
    if where == "established":
        from pynetdicom.pdu import A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
        from pynetdicom.presentation import build_context
        from pynetdicom.transport import AddressInformation

        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title = "STORESCU"
        primitive.called_ae_title = "TSCAT_PACS"
        primitive.calling_presentation_address = AddressInformation("127.0.0.1", 0)
        primitive.called_presentation_address = AddressInformation("127.0.0.1", listener.port)
        cx = build_context("1.2.840.10008.1.1")
        cx.context_id = 1
        primitive.presentation_context_definition_list = [cx]
        max_len = MaximumLengthNotification()
        max_len.maximum_length_received = 16384
        primitive.user_information = [max_len]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(primitive)
        sock.sendall(pdu.encode())
        answer = sock.recv(6)
        assert answer[0] == 0x02, "association not accepted"
        length = struct.unpack(">L", answer[2:6])[0]
        while length:
            length -= len(sock.recv(length))
        header = struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF)  # P-DATA-TF of 4 GiB
    else:
        header = struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF)  # A-ASSOCIATE-RQ of 4 GiB
    sock.sendall(header)
    sent = _stream_until_cut(sock, 256 * 1024 * 1024)
    sock.close()
    after = _rss_kib(pid)
    assert sent < 64 * 1024 * 1024, f"the listener kept reading ({sent} bytes)"
    assert after - before < 4 * 1024, f"RSS grew by {after - before} KiB"
    assert "connection cut" in listener.log()
    assert echo(listener.port) == 0  # and it still serves others


def test_concurrent_association_limit(start_listener_process, region) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process(env={"PACS_DICOM_MAX_ASSOCIATIONS": "2"})
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", listener.port, ae_title="TSCAT_PACS") for _ in range(2)]
    assert all(a.is_established for a in held)
    third = ae.associate("127.0.0.1", listener.port, ae_title="TSCAT_PACS")
    assert third.is_rejected
    for a in held:
        a.release()
    assert wait_until(lambda: echo(listener.port) == 0, timeout=10, what="free slot")


def test_idle_peer_is_dropped_after_the_request_timeout(start_listener_process, region) -> None:  # type: ignore[no-untyped-def]
    listener = start_listener_process(env={"PACS_DICOM_REQUEST_TIMEOUT": "1"})
    sock = _raw_connect(listener.port)  # connects, then says nothing
    start = time.monotonic()
    sock.settimeout(15)
    assert sock.recv(100) == b""  # the listener closed it
    assert 0.9 < time.monotonic() - start < 5
    sock.close()


def _idle_sockets(port: int, source: str, count: int) -> list[socket.socket]:
    """``count`` connections from ``source`` that never send an A-ASSOCIATE-RQ."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def _closed_after(sockets: list[socket.socket], start: float, *, timeout: float = 30) -> list[float]:
    """Seconds from ``start`` until the listener closed each socket (read to EOF)."""
    import select

    open_ = {sock.fileno(): sock for sock in sockets}
    times = []
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_.values()), [], [], 0.5)
        for sock in readable:
            try:
                assert sock.recv(100) == b"", "the listener sent something"
            except ConnectionResetError:
                pass
            times.append(time.monotonic() - start)
            del open_[sock.fileno()]
            sock.close()
    assert not open_, f"{len(open_)} idle sockets still open after {timeout} s"
    return times


def _echoscu(port: int, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(
        ["echoscu", "-aet", "STORESCU", "-aec", "TSCAT_PACS", "127.0.0.1", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - start


def test_idle_socket_flood_from_one_address_does_not_lock_others_out(  # type: ignore[no-untyped-def]
    start_listener_process, region, process_env
) -> None:
    """Issue 15: 32 idle connections filled every association slot for 30 s. Now 100
    idle sockets from 127.0.0.2 hold at most that address's slots, none of the
    association slots, and are closed after the request timeout."""
    listener = start_listener_process(env={"PACS_DICOM_REQUEST_TIMEOUT": "3"})
    start = time.monotonic()
    flood = _idle_sockets(listener.port, "127.0.0.2", 100)
    result, took = _echoscu(listener.port, process_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert took < 2, f"echoscu took {took:.1f} s"
    closed = _closed_after(flood, start)
    # Beyond PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS (8) closed at once; the rest at the timeout.
    assert sum(t < 2 for t in closed) == 92, sorted(closed)
    assert all(2.5 < t < 8 for t in sorted(closed)[92:]), sorted(closed)[92:]
    assert "PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS" in listener.log()
    assert "no A-ASSOCIATE-RQ within the request timeout" in listener.log()


def test_idle_connections_do_not_take_association_slots(  # type: ignore[no-untyped-def]
    start_listener_process, region, process_env
) -> None:
    """Even with no per-address cap to speak of, connections that have not sent their
    A-ASSOCIATE-RQ do not count against PACS_DICOM_MAX_ASSOCIATIONS."""
    listener = start_listener_process(
        env={
            "PACS_DICOM_MAX_ASSOCIATIONS": "4",
            "PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS": "1000",
            "PACS_DICOM_REQUEST_TIMEOUT": "3",
        }
    )
    flood = _idle_sockets(listener.port, "127.0.0.2", 100)
    try:
        result, took = _echoscu(listener.port, process_env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert took < 2
    finally:
        for sock in flood:
            sock.close()


def test_one_address_holds_at_most_its_slots_of_associations(start_listener_process, region) -> None:  # type: ignore[no-untyped-def]
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    listener = start_listener_process(env={"PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS": "2"})
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", listener.port, ae_title="TSCAT_PACS") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        assert not ae.associate("127.0.0.1", listener.port, ae_title="TSCAT_PACS").is_established
        # Another address of the same node still gets in.
        RemoteNode.objects.filter(ae_title="STORESCU").update(addresses="127.0.0.0/8")
        other = ae.associate("127.0.0.1", listener.port, ae_title="TSCAT_PACS", bind_address=("127.0.0.3", 0))
        assert other.is_established
        other.release()
    finally:
        for a in held:
            a.release()
    assert wait_until(lambda: echo(listener.port) == 0, timeout=10, what="slots given back")
