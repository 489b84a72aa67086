"""Small pieces shared by every web edge: download file names and their header."""

from __future__ import annotations

import email.message

import pytest

from kernel.web import content_disposition, download_filename

# A sender's AccessionNumber that tries to add a second file name to the header
# (SH, 16 characters: what the database column holds).
INJECTED_ACCESSION = '"; filename=e.sh'
NON_ASCII_ACCESSION = "ACC-Perché-ÀÉ"


def disposition_filenames(value: str) -> tuple[str, list[str], str | None]:
    """The disposition type, the names of the header's file name parameters, and the
    file name a mail/HTTP parser reads from it (RFC 2231/5987 decoded)."""
    msg = email.message.Message()
    msg["Content-Disposition"] = value
    params = msg.get_params(header="content-disposition") or []
    kind = params[0][0]
    names = [key for key, _value in params[1:] if key.lower().startswith("filename")]
    return kind, names, msg.get_filename()


def test_a_quote_and_a_semicolon_cannot_add_a_parameter() -> None:
    value = content_disposition(f"referto-{INJECTED_ACCESSION}-v1.p7m")
    kind, names, filename = disposition_filenames(value)
    assert kind == "attachment"
    assert names == ["filename"]
    assert filename == "referto-_ filename=e.sh-v1.p7m"


def test_letters_outside_ascii_travel_encoded() -> None:
    value = content_disposition(f"referto-{NON_ASCII_ACCESSION}-v1.pdf", as_attachment=False)
    assert value == "inline; filename*=utf-8''referto-ACC-Perch%C3%A9-%C3%80%C3%89-v1.pdf"
    kind, names, filename = disposition_filenames(value)
    assert (kind, names, filename) == ("inline", ["filename"], "referto-ACC-Perché-ÀÉ-v1.pdf")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "_.._etc_passwd"),
        ("a\\b:c*d?e<f>g|h", "a_b_c_d_e_f_g_h"),
        ("riga\r\nnuova", "riganuova"),
        ("referto-\u202efdp.exe", "referto-fdp.exe"),  # a right-to-left override is dropped
        ("\x00\x1f", "file"),
        ("  .nascosto. ", "nascosto"),
    ],
)
def test_download_filename_removes_what_is_unsafe(raw: str, expected: str) -> None:
    assert download_filename(raw) == expected


def test_a_long_name_keeps_its_extension() -> None:
    name = download_filename("x" * 400 + ".zip")
    assert len(name) == 150 and name.endswith(".zip")


def _request(remote: str, forwarded: str | None = None):  # type: ignore[no-untyped-def]
    from django.test import RequestFactory

    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_client_ip_believes_x_forwarded_for_only_from_a_trusted_proxy(settings) -> None:  # type: ignore[no-untyped-def]
    from kernel.web import client_ip

    settings.PACS_TRUSTED_PROXIES = []
    assert client_ip(_request("192.0.2.1", "203.0.113.9")) == "192.0.2.1"
    settings.PACS_TRUSTED_PROXIES = ["192.0.2.0/28", "2001:db8::1"]
    assert client_ip(_request("198.51.100.7", "203.0.113.9")) == "198.51.100.7"  # not from our proxy
    assert client_ip(_request("192.0.2.1", "10.0.0.1, 203.0.113.9")) == "203.0.113.9"
    assert client_ip(_request("192.0.2.1", "203.0.113.9, 192.0.2.2")) == "203.0.113.9"  # two proxies
    assert client_ip(_request("2001:db8::1", "2001:db8::99")) == "2001:db8::99"
    assert client_ip(_request("192.0.2.1", "not-an-address")) == "192.0.2.1"
    assert client_ip(_request("192.0.2.1")) == "192.0.2.1"
