"""DICOM TLS on its own port, over real TLS on loopback: a node is accepted only with
its own client certificate, and a node that has one only on the TLS port."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes these names at run time
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from archive.models import Instance, Patient, RemoteNode, Study
from kernel.models import AuditEvent
from tests.conftest import Region, wait_until
from tests.dicom_client import echo
from tests.tls_helpers import Credential, Pki, make_pki, tls_node_create


@dataclass
class TlsListener:
    port: int
    tls_port: int
    pki: Pki
    secure: Credential  # the registered node SECURE's certificate
    other: Credential  # a certificate of the same CA for another node (OTHER)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_listener(
    transactional_db: None, region: Region, settings, pki: Pki, dicom_fast_paths: bool
) -> Iterator[TlsListener]:  # type: ignore[no-untyped-def]
    from archive.dicomnet.listener import start_listener, stop_listener

    for name, value in pki.settings().items():
        setattr(settings, name, value)
    secure, other = pki.client("secure"), pki.client("other")
    # Their SHA-256 as openssl prints it: the model's clean() normalises, the listener compares normalised.
    tls_node_create(facility=region.facility, ae_title="SECURE", credential=secure)
    tls_node_create(facility=region.facility, ae_title="OTHER", credential=other)
    server = start_listener(host="127.0.0.1", port=0, tls_port=0)
    assert server.tls_server is not None
    try:
        yield TlsListener(
            port=int(server.server_address[1]),
            tls_port=int(server.tls_server.server_address[1]),
            pki=pki,
            secure=secure,
            other=other,
        )
    finally:
        stop_listener(server, grace=0.0)


def _associate(port: int, calling_ae: str, context: ssl.SSLContext | None, *contexts: str):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for cx in contexts or (Verification,):
        ae.add_requested_context(cx)
    tls_args = (context, "localhost") if context is not None else None
    return ae.associate("127.0.0.1", port, ae_title="TSCAT_PACS", tls_args=tls_args)


def tls_echo(port: int, calling_ae: str, context: ssl.SSLContext | None) -> int | None:
    assoc = _associate(port, calling_ae, context)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def _denied(reason: str) -> AuditEvent:
    def find() -> AuditEvent | None:
        events = AuditEvent.objects.filter(action="dicom.association", outcome="denied")
        return next((e for e in events if reason in e.detail.get("reason", "")), None)

    return wait_until(find, what=f"audit {reason!r}")


@pytest.mark.plain_too
def test_node_with_its_own_certificate_stores_over_tls(tls_listener: TlsListener, ct_study: list[Path]) -> None:
    context = tls_listener.pki.client_context(tls_listener.secure)
    assert tls_echo(tls_listener.tls_port, "SECURE", context) == 0x0000
    assoc = _associate(tls_listener.tls_port, "SECURE", context, CTImageStorage)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(dcmread(ct_study[0])).Status == 0x0000
    finally:
        assoc.release()
    assert Instance.objects.get().calling_ae == "SECURE"


@pytest.mark.plain_too
def test_a_find_of_hundreds_of_matches_is_answered_over_tls(tls_listener: TlsListener, region: Region) -> None:
    """The C-FIND fast road writes many PDUs at once, here through the TLS socket."""
    RemoteNode.objects.filter(ae_title="SECURE").update(can_query=True)
    patient = Patient.objects.create(provisional=True)
    Study.objects.bulk_create(
        Study(
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.8.{i}",
            patient=patient,
            facility=region.facility,
            patient_name="TLS^STUDIO",
            dicom_patient_id="TLS",
            study_date=dt.date(2020, 1, 1) + dt.timedelta(days=i),
        )
        for i in range(300)
    )
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "TLS"
    ds.PatientName = ""
    ds.StudyInstanceUID = ""
    context = tls_listener.pki.client_context(tls_listener.secure)
    assoc = _associate(tls_listener.tls_port, "SECURE", context, StudyRootQueryRetrieveInformationModelFind)
    assert assoc.is_established
    try:
        answers = list(assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    pending = [identifier for status, identifier in answers if status.Status == 0xFF00]
    assert answers[-1][0].Status == 0x0000
    assert len({str(d.StudyInstanceUID) for d in pending}) == 300
    assert {str(d.PatientName) for d in pending} == {"TLS^STUDIO"}


def test_another_nodes_certificate_is_refused(tls_listener: TlsListener) -> None:
    # OTHER's certificate is signed by the same CA: TLS succeeds, the association does not.
    context = tls_listener.pki.client_context(tls_listener.other)
    assoc = _associate(tls_listener.tls_port, "SECURE", context)
    assert assoc.is_rejected
    event = _denied("presented another TLS certificate")
    assert event.outcome == "denied" and event.ae_title == "SECURE"
    # OTHER itself, with its own certificate, is fine.
    assert tls_echo(tls_listener.tls_port, "OTHER", context) == 0x0000


def test_a_certificate_of_another_ca_fails_the_handshake(tls_listener: TlsListener, tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "stranger", ca_name="Someone else's CA")
    context = tls_listener.pki.client_context(stranger.client("secure"))
    assert tls_echo(tls_listener.tls_port, "SECURE", context) is None
    assert tls_echo(tls_listener.tls_port, "SECURE", tls_listener.pki.client_context(None)) is None  # no certificate
    assert tls_echo(tls_listener.tls_port, "SECURE", tls_listener.pki.client_context(tls_listener.secure)) == 0


def test_node_with_a_certificate_is_refused_on_the_plain_port(tls_listener: TlsListener) -> None:
    assert echo(tls_listener.port, calling_ae="SECURE") is None
    assert _denied("must call the DICOM TLS port").ae_title == "SECURE"
    # A node without a certificate still uses the plain port (the hospital network).
    assert echo(tls_listener.port, calling_ae="STORESCU") == 0x0000


def test_node_without_a_registered_certificate_is_refused_on_the_tls_port(tls_listener: TlsListener) -> None:
    context = tls_listener.pki.client_context(tls_listener.secure)
    assert tls_echo(tls_listener.tls_port, "STORESCU", context) is None
    assert _denied("has no TLS certificate registered").ae_title == "STORESCU"


def test_a_silent_peer_does_not_stop_the_tls_port(tls_listener: TlsListener) -> None:
    """pynetdicom does the TLS handshake in the accepting thread: one connection that
    never speaks would stop the port. The gate does it in the connection's own thread."""
    silent = [socket.create_connection(("127.0.0.1", tls_listener.tls_port)) for _ in range(3)]
    try:
        start = time.monotonic()
        context = tls_listener.pki.client_context(tls_listener.secure)
        assert tls_echo(tls_listener.tls_port, "SECURE", context) == 0x0000
        assert time.monotonic() - start < 2
    finally:
        for sock in silent:
            sock.close()


def test_tls_settings_are_checked_at_start_up(settings, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name, value in pki.settings().items():
        setattr(settings, name, value)
    call_command("check")  # all three files, readable, matching
    settings.PACS_DICOM_TLS_CA = str(tmp_path / "missing.pem")
    with pytest.raises(SystemCheckError, match="archive.E012"):
        call_command("check")
    settings.PACS_DICOM_TLS_CA = ""
    with pytest.raises(SystemCheckError, match="archive.E011"):
        call_command("check")
    settings.PACS_DICOM_TLS_CA = str(pki.ca)
    settings.PACS_DICOM_TLS_KEY = str(pki.client("someone").key)  # not the certificate's key
    with pytest.raises(SystemCheckError, match="archive.E014"):
        call_command("check")
