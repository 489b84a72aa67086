"""The outbox: the gateway's errors kept with their text and retried with backoff, a
gateway that is down delays and loses nothing, the consent decides, the oscuramento is
carried, a revocation deletes."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import TestCase
from django.utils import timezone

from archive.models import Report
from booking import services as booking_services
from booking.models import Booking, DistributionChoice
from fse_gateway import outbox
from fse_gateway.models import Attempt, Operation
from kernel import tasknames
from tests.access_helpers import hide
from tests.booking.conftest import Cup, linked_booking
from tests.conftest import tasks_kept
from tests.reporting_helpers import Reporting, report_signed_send

from .conftest import Keys, keys_make
from .helpers import booked_and_signed, ops, signed_and_sent
from .standin import Gateway

pytestmark = pytest.mark.django_db(transaction=False)


def later(op: Operation, seconds: float = 1) -> dt.datetime:
    return op.next_attempt_at + dt.timedelta(seconds=seconds)


def test_a_gateway_error_is_kept_with_its_text_and_retried_with_backoff(
    fse: Gateway, cup: Cup, reporting: Reporting
) -> None:
    _booking, report = booked_and_signed(cup, reporting)
    fse.fail_next(503, path="/v1/documents/validation")
    signed_and_sent(report)
    publish = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert publish.status == Operation.Status.PENDING and publish.attempts == 1
    assert publish.last_status_code == 503
    assert "Service unavailable" in publish.last_error and "Errore simulato 503" in publish.last_error
    assert "traceID" in publish.last_error
    wait = (publish.next_attempt_at - publish.updated_at).total_seconds()
    assert 29 <= wait <= 31  # the base
    [attempt] = Attempt.objects.filter(operation=publish)
    assert attempt.status_code == 503 and '"status": 503' in attempt.response_body
    # The manifest waits behind the report of its booking.
    manifest = Operation.objects.get(kind=Operation.Kind.MANIFEST)
    assert outbox.operation_send(op_pk=manifest.pk) == "waiting"
    # Not before its time; then again, and the wait doubles on a second error.
    assert outbox.operation_send(op_pk=publish.pk) == "not_due"
    fse.fail_next(502, path="/v1/documents")
    second = later(publish)
    assert outbox.operation_send(op_pk=publish.pk, now=second) == Operation.Status.PENDING
    publish.refresh_from_db()
    assert publish.attempts == 2 and publish.last_status_code == 502
    assert publish.next_attempt_at == second + dt.timedelta(seconds=60)  # doubled
    assert outbox.operation_send(op_pk=publish.pk, now=later(publish)) == Operation.Status.DONE
    publish.refresh_from_db()
    assert publish.last_error == "" and publish.attempts == 3
    assert [a.status_code for a in Attempt.objects.filter(operation=publish)] == [
        503,
        502,
        201,
        201,
    ]  # validation 503; validation 502; validation, publication


def test_a_refusal_stops_for_an_operator_and_is_sent_again_on_request(
    fse: Gateway, cup: Cup, reporting: Reporting
) -> None:
    _booking, report = booked_and_signed(cup, reporting)
    fse.fail_next(400, path="/v1/documents/validation")
    signed_and_sent(report)
    publish = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert publish.status == Operation.Status.FAILED
    assert "Bad Request" in publish.last_error and "/msg/error-400" in publish.last_error
    assert publish.pk not in outbox.operations_due(now=timezone.now() + dt.timedelta(days=1))
    assert outbox.operation_retry(op=publish, user=reporting.radiologist)
    assert outbox.operation_send(op_pk=publish.pk) == Operation.Status.DONE


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_the_gateway_refuses_are_kept_as_its_answer(
    fse: Gateway, cup: Cup, reporting: Reporting, settings: object, tmp_path: object, status: int
) -> None:
    _booking, report = booked_and_signed(cup, reporting)
    fse.fail_next(status)
    signed_and_sent(report)
    publish = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert publish.status == Operation.Status.FAILED and publish.last_status_code == status


def test_a_key_the_gateway_does_not_know_is_refused(
    fse: Gateway, cup: Cup, reporting: Reporting, settings: object, tmp_path: object
) -> None:
    """The stand-in checks the JWTs' signature and certificate: another key does not pass."""
    from fse_gateway import gateway

    other: Keys = keys_make(tmp_path)  # type: ignore[arg-type]
    settings.PACS_FSE_JWT_KEY_FILE = str(other.key_file)  # type: ignore[attr-defined]
    settings.PACS_FSE_JWT_CERT_FILE = str(other.cert_file)  # type: ignore[attr-defined]
    gateway._credentials_read.cache_clear()
    _booking, report = booked_and_signed(cup, reporting)
    signed_and_sent(report)
    publish = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert publish.status == Operation.Status.FAILED
    assert publish.last_status_code == 403 and "x5c" in publish.last_error
    assert not fse.documents


def test_with_the_gateway_down_the_outbox_keeps_the_document_and_publishes_it_when_back(
    fse: Gateway, cup: Cup, reporting: Reporting
) -> None:
    _booking, report = booked_and_signed(cup, reporting)
    fse.stop()
    signed_and_sent(report)
    publish = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert publish.status == Operation.Status.PENDING and publish.last_status_code is None
    assert "ConnectionError" in publish.last_error
    [attempt] = Attempt.objects.filter(operation=publish)
    assert attempt.status_code is None and "ConnectionError" in attempt.error
    # Still down at the next attempt: kept, the wait doubled.
    assert outbox.operation_send(op_pk=publish.pk, now=later(publish)) == Operation.Status.PENDING
    publish.refresh_from_db()
    assert publish.attempts == 2
    # Back: the beat sweep finds what is due and the worker publishes it.
    fse.start()
    Operation.objects.filter(pk=publish.pk).update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1))
    with tasks_kept() as kept:
        kept.messages.append((tasknames.FSE_OUTBOX_SWEEP, (), {}))
        kept.run()
    publish.refresh_from_db()
    assert publish.status == Operation.Status.DONE, publish.last_error
    assert fse.documents[publish.document_id]["status"] == "current"
    assert Operation.objects.get(kind=Operation.Kind.MANIFEST).status == Operation.Status.DONE


def test_a_lost_task_is_planned_by_the_sweep(fse: Gateway, cup: Cup, reporting: Reporting, settings: object) -> None:
    _booking, report = booked_and_signed(cup, reporting)  # report_signed never sent: the broker lost it
    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 0  # type: ignore[attr-defined]  # its time is up
    assert outbox.reports_unplanned() == [(report.pk, report.study_id)]
    with tasks_kept() as kept:
        kept.messages.append((tasknames.FSE_OUTBOX_SWEEP, (), {}))
        kept.run()
    assert Operation.objects.get(kind=Operation.Kind.PUBLISH).status == Operation.Status.DONE
    assert outbox.reports_unplanned() == []


def test_nothing_is_published_without_online_consent(fse: Gateway, cup: Cup, reporting: Reporting) -> None:
    _booking, report = booked_and_signed(cup, reporting, delivery=DistributionChoice.Delivery.CD)
    assert signed_and_sent(report) == ["no_consent"]
    assert not Operation.objects.exists() and not fse.received


def test_nothing_is_published_for_a_study_without_booking(fse: Gateway, reporting: Reporting) -> None:
    from tests.reporting_helpers import signed_report

    report = signed_report(reporting)
    assert signed_and_sent(report) == ["no_booking"]
    assert not Operation.objects.exists() and not fse.received


def test_nothing_is_published_when_no_gateway_is_configured(
    fse: Gateway, cup: Cup, reporting: Reporting, settings: object
) -> None:
    settings.PACS_FSE_GATEWAY_URL = ""  # type: ignore[attr-defined]
    _booking, report = booked_and_signed(cup, reporting)
    with tasks_kept() as kept:
        with TestCase.captureOnCommitCallbacks(execute=True):
            from archive.signals import report_signed

            report_signed.send(sender=Report, report_pk=report.pk, study_pk=report.study_id)
    assert not [n for n in kept.names() if n.startswith("fse_gateway.")]


def test_a_concealed_report_carries_the_oscuramento_and_a_reveal_updates_it(
    fse: Gateway, cup: Cup, reporting: Reporting
) -> None:
    _booking, report = booked_and_signed(cup, reporting)
    hide(reporting.study)  # after signing, before the publication went out
    signed_and_sent(report)
    publication = [r for r in fse.received if r.path == "/v1/documents"][-1]
    assert publication.body["attiCliniciRegoleAccesso"] == ["P99"]
    manifest = fse.answered("/xds-i/manifests", "POST")[-1]
    assert manifest.body["confidentialityCode"] == "V" and "P99" in manifest.body["eventCodeList"]
    # The citizen makes it visible again: the published document's metadata follow.
    with tasks_kept() as kept:
        with TestCase.captureOnCommitCallbacks(execute=True):
            from portal.models import Concealment

            active = Concealment.objects.get(study=reporting.study, revealed_at__isnull=True)
            active.revealed_at = timezone.now()
            active.save()
        kept.run(tasknames.FSE_CONCEALMENT_CHECK, tasknames.FSE_OPERATION_SEND)
    update = Operation.objects.get(kind=Operation.Kind.METADATA)
    assert update.status == Operation.Status.DONE, update.last_error
    [put] = [r for r in fse.received if r.path.endswith("/metadata")]
    assert put.body["attiCliniciRegoleAccesso"] == []
    assert put.body["identificativoSottomissione"].endswith(f".{update.pk}")
    assert put.claims["action_id"] == "UPDATE"
    doc = Operation.objects.get(kind=Operation.Kind.PUBLISH).document_id
    assert fse.documents[doc]["body"]["attiCliniciRegoleAccesso"] == []


def test_a_revocation_deletes_what_was_published(fse: Gateway, cup: Cup, reporting: Reporting) -> None:
    booking, report = booked_and_signed(cup, reporting)
    signed_and_sent(report)
    doc = Operation.objects.get(kind=Operation.Kind.PUBLISH).document_id
    kos = Operation.objects.get(kind=Operation.Kind.MANIFEST).document_id
    with tasks_kept() as kept:
        with TestCase.captureOnCommitCallbacks(execute=True):
            booking_services.consent_revoke(
                booking=booking,
                channel=Booking.Channel.AUTHORITY_CUP,
                user=cup.operator.user,  # type: ignore[arg-type]
            )
        kept.run(tasknames.FSE_CONSENT_CHECK, tasknames.FSE_OPERATION_SEND)
    deletes = ops(kind__in=[Operation.Kind.DELETE, Operation.Kind.MANIFEST_DELETE])
    assert {(d.kind, d.target_document_id, d.status) for d in deletes} == {
        (Operation.Kind.DELETE, doc, Operation.Status.DONE),
        (Operation.Kind.MANIFEST_DELETE, kos, Operation.Status.DONE),
    }
    assert fse.documents[doc]["status"] == "deleted" and fse.manifests[kos]["status"] == "deleted"
    delete = [r for r in fse.received if r.method == "DELETE" and r.path.startswith("/v1/")][0]
    assert delete.claims["action_id"] == "DELETE"
    # Idempotent: asked again, nothing more.
    assert outbox.consent_check(booking_pk=booking.pk) == []
    # A version signed after the revocation is not published.
    assert outbox.report_plan(report_pk=report.pk, study_pk=report.study_id)[0] == "no_consent"


def test_a_revocation_before_sending_cancels_what_waits(fse: Gateway, cup: Cup, reporting: Reporting) -> None:
    booking, report = booked_and_signed(cup, reporting)
    fse.stop()
    signed_and_sent(report)
    publish = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert publish.status == Operation.Status.PENDING
    booking_services.consent_revoke(
        booking=booking,
        channel=Booking.Channel.AUTHORITY_CUP,
        user=cup.operator.user,  # type: ignore[arg-type]
    )
    fse.start()
    assert outbox.operation_send(op_pk=publish.pk, now=later(publish)) == Operation.Status.CANCELLED
    assert not fse.documents
    assert not ops(kind=Operation.Kind.DELETE)  # nothing had reached the gateway


def test_a_correction_of_a_cd_booking_is_not_published(fse: Gateway, cup: Cup, reporting: Reporting) -> None:
    linked_booking(cup, reporting.study, delivery=DistributionChoice.Delivery.CD)
    from tests.reporting_helpers import signed_report

    report = signed_report(reporting)
    assert report_signed_send(report, tasknames.FSE_REPORT_PLAN) == ["no_consent"]
    assert not fse.received


def test_a_publication_whose_answer_was_lost_is_done_on_the_gateway_s_409(
    fse: Gateway, cup: Cup, reporting: Reporting
) -> None:
    """The worker died after the gateway accepted the document: sent again, the gateway answers
    409 (duplicate), which says the document is there; the outbox takes it as done."""
    _booking, report = booked_and_signed(cup, reporting)
    signed_and_sent(report)
    publish = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    Operation.objects.filter(pk=publish.pk).update(
        status=Operation.Status.SENDING, updated_at=timezone.now() - dt.timedelta(hours=1)
    )
    assert publish.pk in outbox.operations_due()
    assert outbox.operation_send(op_pk=publish.pk) == Operation.Status.DONE
    publish.refresh_from_db()
    assert publish.last_status_code == 409 and "Conflict" in publish.note
    assert [r.status for r in fse.received if r.path == "/v1/documents"] == [201, 409]
    assert len([d for d in fse.documents.values() if d["status"] == "current"]) == 1
