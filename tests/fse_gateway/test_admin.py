"""The outbox in the admin: read-only, the gateway's error text on the list and the page,
filters, every exchange inline; audited; a failed operation sent again by "Riprova"."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from fse_gateway.models import Attempt, Operation
from kernel.models import AuditEvent
from tests.booking.conftest import Cup
from tests.reporting_helpers import Reporting

from .helpers import booked_and_signed, signed_and_sent
from .standin import Gateway

pytestmark = pytest.mark.django_db(transaction=False)


def test_the_admin_shows_the_outbox_and_the_gateway_s_errors(fse: Gateway, cup: Cup, reporting: Reporting) -> None:
    _booking, report = booked_and_signed(cup, reporting)
    fse.fail_next(400, path="/v1/documents/validation")
    signed_and_sent(report)
    failed = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert failed.status == Operation.Status.FAILED
    client = Client()
    client.force_login(User.objects.create_superuser("capo", password="x" * 14))

    listing = client.get(reverse("admin:fse_gateway_operation_changelist"), {"status__exact": "failed"})
    assert listing.status_code == 200
    html = listing.content.decode()
    assert "HTTP 400" in html and failed.booking.accession_number in html
    assert "rifiutata: serve un operatore" in html
    assert AuditEvent.objects.filter(action="admin.operation.list").exists()

    page = client.get(reverse("admin:fse_gateway_operation_change", args=[failed.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Errore simulato 400" in html and "/msg/error-400" in html  # the gateway's problem, whole
    assert "validation" in html  # the attempt, inline
    assert 'name="_save"' not in html  # read-only
    attempt = Attempt.objects.filter(operation=failed).first()
    assert attempt is not None
    assert client.get(reverse("admin:fse_gateway_attempt_changelist")).status_code == 200
    assert client.get(reverse("admin:fse_gateway_attempt_change", args=[attempt.pk])).status_code == 200
    assert client.get(reverse("admin:fse_gateway_operation_add")).status_code == 403

    # "Riprova": the operator sends it again; the stand-in accepts it now.
    response = client.post(
        reverse("admin:fse_gateway_operation_changelist"),
        {"action": "retry", "_selected_action": [failed.pk]},
    )
    assert response.status_code == 302
    failed.refresh_from_db()
    assert failed.status in (Operation.Status.PENDING, Operation.Status.DONE)
    assert AuditEvent.objects.filter(action="fse.retry").exists()


def test_the_demo_credentials_are_made_once_and_sign_what_the_stand_in_accepts(tmp_path: object) -> None:
    import io
    from pathlib import Path

    import jwt
    from cryptography import x509
    from django.core.management import CommandError, call_command

    directory = Path(str(tmp_path)) / "fse"
    out = io.StringIO()
    call_command("fse_demo_credentials", "--dir", str(directory), stdout=out)
    key_file, cert_file = directory / "jwt-key.pem", directory / "jwt-cert.pem"
    assert f"PACS_FSE_JWT_KEY_FILE={key_file}" in out.getvalue()
    assert key_file.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    token = jwt.encode({"sub": "x"}, key_file.read_bytes(), "RS256")
    assert jwt.decode(token, cert.public_key(), algorithms=["RS256"]) == {"sub": "x"}  # type: ignore[arg-type]
    with pytest.raises(CommandError):
        call_command("fse_demo_credentials", "--dir", str(directory), stdout=out)
    assert not list(directory.glob(".*.tmp"))


def test_the_checks_say_when_the_gateway_is_plain_http_or_the_key_unreadable(
    fse: Gateway, settings: Any, tmp_path: Any
) -> None:
    from fse_gateway import checks, gateway

    assert [w.id for w in checks.check_fse_transport(None)] == ["fse_gateway.W001", "fse_gateway.W001"]
    assert checks.check_fse_credentials(None) == []
    settings.PACS_FSE_GATEWAY_URL = "https://modipa-val.fse.salute.gov.it/govway/rest/in/FSE/gateway/v1"
    settings.PACS_FSE_MANIFEST_URL = ""
    assert checks.check_fse_transport(None) == []
    settings.PACS_FSE_JWT_KEY_FILE = str(tmp_path / "missing.pem")
    gateway._credentials_read.cache_clear()
    assert [e.id for e in checks.check_fse_credentials(None)] == ["fse_gateway.E001"]
