"""DCMTK's echoscu and storescu with +tls against the listener process's DICOM TLS port
(Debian's DCMTK is built with OpenSSL), as the README tells a node's administrator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from archive.models import Instance
from kernel.models import AuditEvent
from tests.conftest import wait_until
from tests.tls_helpers import Credential, make_pki, tls_node_create

pytestmark = pytest.mark.slow

if shutil.which("echoscu") is None:  # `make test` installs DCMTK; never skip silently in CI
    pytest.fail("DCMTK is not installed: run `make test` (apt-get install dcmtk)", pytrace=False)


def _tls(credential: Credential, ca: Path) -> list[str]:
    # -pw: the key has no passphrase (DCMTK would otherwise prompt for one).
    return ["+tls", str(credential.key), str(credential.cert), "-pw", "+cf", str(ca)]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tls_setup(start_listener_process, region, tmp_path: Path):  # type: ignore[no-untyped-def]
    pki = make_pki(tmp_path / "pki")
    node = pki.client("ct-secure")
    tls_node_create(facility=region.facility, ae_title="CTSECURE", credential=node)
    listener = start_listener_process("--tls-port", "0", env=pki.settings())
    return pki, node, listener.tls_port(), listener


def test_echoscu_and_storescu_over_tls(tls_setup, process_env, ct_study: list[Path]) -> None:  # type: ignore[no-untyped-def]
    pki, node, tls_port, _listener = tls_setup
    base = ["-aet", "CTSECURE", "-aec", "TSCAT_PACS", *_tls(node, pki.ca)]
    echo = _run(["echoscu", *base, "127.0.0.1", str(tls_port)], process_env)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    store = _run(["storescu", *base, "127.0.0.1", str(tls_port), *map(str, ct_study)], process_env)
    assert store.returncode == 0, store.stdout + store.stderr
    assert Instance.objects.filter(calling_ae="CTSECURE").count() == len(ct_study)


def test_echoscu_with_the_wrong_certificate_is_refused(  # type: ignore[no-untyped-def]
    tls_setup, process_env, tmp_path: Path
) -> None:
    pki, node, tls_port, listener = tls_setup
    # Signed by the listener's CA, but not CTSECURE's: TLS works, the association does not.
    another = pki.client("someone-else")
    refused = _run(
        ["echoscu", "-aet", "CTSECURE", "-aec", "TSCAT_PACS", *_tls(another, pki.ca), "127.0.0.1", str(tls_port)],
        process_env,
    )
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    wait_until(
        lambda: AuditEvent.objects.filter(action="dicom.association", outcome="denied", ae_title="CTSECURE").exists(),
        what="refusal audited",
    )
    # Another CA's certificate: the handshake fails.
    stranger = make_pki(tmp_path / "stranger", ca_name="Another CA").client("ct-secure")
    failed = _run(
        ["echoscu", "-aet", "CTSECURE", "-aec", "TSCAT_PACS", *_tls(stranger, pki.ca), "127.0.0.1", str(tls_port)],
        process_env,
    )
    assert failed.returncode != 0
    # The client may exit before the listener has written its line: wait for it.
    wait_until(lambda: "TLS handshake failed" in listener.log(), what="the failed handshake logged")
    # Plain DICOM for a node with a certificate: refused too.
    plain = _run(["echoscu", "-aet", "CTSECURE", "-aec", "TSCAT_PACS", "127.0.0.1", str(listener.port)], process_env)
    assert plain.returncode != 0
