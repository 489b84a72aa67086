"""The outbox in the admin: read-only, the gateway's error text on the list and the page,
filters, every exchange inline; audited; a failed operation sent again by "Riprova"."""

from __future__ import annotations

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
