"""A node's registered addresses and TLS fingerprint: parsing, matching, and the
validation the admin shows for a bad entry."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from archive.dicomnet import peers
from archive.models import RemoteNode
from tests.conftest import Region

FINGERPRINT = "ab" * 32


@pytest.mark.parametrize(
    "entry",
    ["10.1.2.3", "10.1.0.0/16", "2001:db8::1", "2001:db8::/32", "tc01.asugi.sanita.fvg.it", "localhost", "ct-01."],
)
def test_good_entries(entry: str) -> None:
    assert peers.address_entry_error(entry) is None


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("10.1.2.300", "non è un indirizzo IP"),
        ("10.1.2.3/33", "non è una rete"),
        ("10.1.2.3/16", "forse intendeva 10.1.0.0/16"),
        ("tc_01.example", "non è un indirizzo IP"),
        ("-ct.example", "non è un indirizzo IP"),
        ("http://ct01", "non è un indirizzo IP"),
    ],
)
def test_bad_entries_say_why(entry: str, why: str) -> None:
    error = peers.address_entry_error(entry)
    assert error is not None and why in error and entry in error


def test_matching() -> None:
    entries = peers.address_entries("10.1.2.3, 192.168.10.0/24  localhost")
    assert entries == ["10.1.2.3", "192.168.10.0/24", "localhost"]
    assert peers.address_allowed("10.1.2.3", entries)
    assert peers.address_allowed("192.168.10.77", entries)
    assert peers.address_allowed("127.0.0.1", entries)  # localhost, resolved
    assert peers.address_allowed("::ffff:10.1.2.3", entries)  # IPv4 seen through a dual-stack socket
    assert not peers.address_allowed("10.1.2.4", entries)
    assert not peers.address_allowed("not an address", entries)
    assert not peers.address_allowed("10.1.2.3", ["no-such-host.invalid"])


def test_host_names_are_resolved_once_per_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    peers.resolve_cache_clear()
    calls: list[str] = []
    real = socket.getaddrinfo

    def counting(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    for _ in range(20):
        assert peers.address_allowed("127.0.0.1", ["localhost"])
    assert calls == ["localhost"]


def test_fingerprint_as_openssl_prints_it() -> None:
    printed = "sha256 Fingerprint=" + ":".join(FINGERPRINT[i : i + 2].upper() for i in range(0, 64, 2))
    assert peers.fingerprint_normalize(printed) == FINGERPRINT
    assert peers.fingerprint_error(printed) is None
    assert peers.fingerprint_error("abcd") is not None


def test_model_validation(region: Region) -> None:
    node = RemoteNode(
        facility=region.facility, ae_title="CT02", host="ct02.example", port=104, addresses="10.0.0.1;10.0.0.0/8"
    )
    node.full_clean()
    assert node.addresses == "10.0.0.1 10.0.0.0/8"
    assert node.allowed_addresses() == ["10.0.0.1", "10.0.0.0/8"]
    node.addresses = ""
    assert node.allowed_addresses() == ["ct02.example"]
    node.tls_certificate_sha256 = ":".join(FINGERPRINT[i : i + 2].upper() for i in range(0, 64, 2))
    node.full_clean()
    assert node.tls_certificate_sha256 == FINGERPRINT
    node.addresses = "10.0.0.1 10.0.0.999"
    node.tls_certificate_sha256 = "zz"
    with pytest.raises(ValidationError) as caught:
        node.full_clean()
    assert set(caught.value.message_dict) == {"addresses", "tls_certificate_sha256"}
    assert "10.0.0.999" in caught.value.message_dict["addresses"][0]


def test_the_admin_form_shows_a_bad_address(admin_client: Client, region: Region) -> None:
    url = reverse("admin:archive_remotenode_add")
    form = {
        "facility": region.facility.pk,
        "ae_title": "CT02",
        "host": "10.0.0.5",
        "port": 104,
        "scope": "facility",
        "addresses": "10.0.0.5, 10.0.0/24",
        "can_store": "on",
    }
    response = admin_client.post(url, form)
    assert response.status_code == 200
    assert "10.0.0/24" in response.context["adminform"].form.errors["addresses"][0]
    assert not RemoteNode.objects.filter(ae_title="CT02").exists()
    form["addresses"] = "10.0.0.5, 10.0.0.0/24"
    form["tls_certificate_sha256"] = "xyz"
    response = admin_client.post(url, form)
    assert "SHA-256" in response.context["adminform"].form.errors["tls_certificate_sha256"][0]
    # Pasted as openssl prints it.
    form["tls_certificate_sha256"] = "sha256 Fingerprint=" + ":".join(
        FINGERPRINT[i : i + 2].upper() for i in range(0, 64, 2)
    )
    assert admin_client.post(url, form).status_code == 302
    node = RemoteNode.objects.get(ae_title="CT02")
    assert node.addresses == "10.0.0.5 10.0.0.0/24" and node.tls_certificate_sha256 == FINGERPRINT


def test_the_demo_flag_on_a_network_address_is_flagged(settings) -> None:  # type: ignore[no-untyped-def]
    from archive.checks import check_dicom

    settings.PACS_DICOM_ACCEPT_UNKNOWN_AE = True
    settings.PACS_DICOM_HOST = "127.0.0.1"
    assert "archive.W012" not in {e.id for e in check_dicom(None)}
    settings.PACS_DICOM_HOST = "0.0.0.0"
    assert "archive.W012" in {e.id for e in check_dicom(None)}
