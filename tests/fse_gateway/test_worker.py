"""With a real Celery worker: the signing's signal queues the plan, the worker sends;
the gateway down when the report is signed, back a moment later, and the worker's own
retry (its countdown, the backoff) publishes it, nothing lost."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import TestCase

from archive.models import Report
from archive.signals import report_signed
from fse_gateway.models import Operation
from tests.booking.conftest import Cup
from tests.conftest import wait_until
from tests.reporting_helpers import Reporting

from .conftest import SUBJECT, Keys
from .helpers import booked_and_signed
from .standin import Gateway

pytestmark = pytest.mark.slow


@pytest.fixture
def fse_process_env(process_env: dict[str, str], fse: Gateway, fse_keys: Keys) -> dict[str, str]:
    """The worker's environment pointing at the stand-in, retrying after one second."""
    process_env.update(
        {
            "PACS_FSE_GATEWAY_URL": fse.base_url,
            "PACS_FSE_MANIFEST_URL": fse.manifest_url,
            "PACS_FSE_JWT_KEY_FILE": str(fse_keys.key_file),
            "PACS_FSE_JWT_CERT_FILE": str(fse_keys.cert_file),
            "PACS_FSE_JWT_SUBJECT": SUBJECT,
            "PACS_FSE_RETRY_BASE_SECONDS": "1",
            "PACS_FSE_RETRY_MAX_SECONDS": "2",
        }
    )
    return process_env


def test_the_worker_publishes_once_the_gateway_is_back(
    fse_process_env: dict[str, str], celery_worker: Any, fse: Gateway, cup: Cup, reporting: Reporting
) -> None:
    _booking, report = booked_and_signed(cup, reporting)
    fse.stop()
    with TestCase.captureOnCommitCallbacks(execute=True):
        report_signed.send(sender=Report, report_pk=report.pk, study_pk=report.study_id)
    publish = wait_until(
        lambda: Operation.objects.filter(
            kind=Operation.Kind.PUBLISH, attempts__gte=1, last_error__contains="Connection"
        ).first(),
        timeout=60,
        what="a first attempt refused by the network",
    )
    assert publish.status in (Operation.Status.PENDING, Operation.Status.SENDING)
    fse.start()
    wait_until(
        lambda: Operation.objects.filter(status=Operation.Status.DONE).count() == 2,  # the report and its KOS
        timeout=90,
        what="published by the worker's retry",
    )
    publish.refresh_from_db()
    assert publish.attempts >= 2 and fse.documents[publish.document_id]["status"] == "current"
    assert len(fse.manifests) == 1
