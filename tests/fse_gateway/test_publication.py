"""Signed reports reach the stand-in FSE gateway: validated, then published with their
metadata; a correction replaces, an addendum is a new document; the KOS goes beside."""

from __future__ import annotations

import hashlib

import pydicom
import pytest

from archive.models import Report
from fse_gateway.metadata import cda_document_id
from fse_gateway.models import Attempt, Operation
from kernel.models import AuditEvent
from tests.booking.conftest import MARIO_CF, Cup
from tests.reporting_helpers import Reporting

from .helpers import amended, booked_and_signed, ops, signed_and_sent
from .standin import Gateway, cda_checker

pytestmark = pytest.mark.django_db(transaction=False)


def test_a_signed_report_is_validated_then_published_with_its_metadata(
    fse: Gateway, cup: Cup, reporting: Reporting
) -> None:
    booking, report = booked_and_signed(cup, reporting)
    signed_and_sent(report)

    publish = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert publish.status == Operation.Status.DONE, publish.last_error
    assert [(r.method, r.path, r.status) for r in fse.answered("/v1")] == [
        ("POST", "/v1/documents/validation", 201),
        ("POST", "/v1/documents", 201),
    ]
    validation, publication = fse.answered("/v1")
    body = publication.body
    assert body["workflowInstanceId"] == validation.answer["workflowInstanceId"] == publish.workflow_instance_id
    assert publish.trace_id == publication.answer["traceID"]
    assert body["tipoDocumentoLivAlto"] == "REF" and body["tipoAttivitaClinica"] == "ERP"
    assert body["assettoOrganizzativo"] == "AD_PSC103" and body["tipologiaStruttura"] == "Ospedale"
    assert body["attiCliniciRegoleAccesso"] == []
    assert body["identificativoDoc"] == publish.document_id
    study_date = reporting.study.study_date
    assert study_date is not None and body["dataInizioPrestazione"].startswith(study_date.strftime("%Y%m%d"))
    # The JWTs: the one who publishes, for this patient, this file.
    claims = publication.claims
    assert claims["person_id"] == f"{MARIO_CF}^^^&2.16.840.1.113883.2.9.4.3.2&ISO"
    assert claims["action_id"] == "CREATE" and claims["purpose_of_use"] == "TREATMENT"
    assert claims["attachment_hash"] == hashlib.sha256(publication.file).hexdigest()
    assert claims["iss"] == "integrity:060001PACSREGIONALE"
    # The file sent is the signed PDF, byte for byte.
    assert hashlib.sha256(publication.file).hexdigest() == report.pdf_sha256
    assert fse.documents[publish.document_id]["status"] == "current"
    # Every exchange is in the outbox's log.
    assert [(a.step, a.status_code) for a in Attempt.objects.filter(operation=publish)] == [
        ("validation", 201),
        ("publication", 201),
    ]
    event = AuditEvent.objects.filter(action="fse.publish").get()
    assert event.patient_id == booking.patient_id and event.detail["traceID"] == publish.trace_id


def test_the_document_sent_carries_a_valid_cda_whose_id_is_the_metadata_s(
    fse: Gateway, cup: Cup, reporting: Reporting
) -> None:
    if cda_checker() is None:
        pytest.skip("archive.reporting.cda/pdfa (the cda branch) not on this branch: the CDA is not checked")
    from archive.reporting.cda import cda_problems
    from archive.reporting.pdfa import pdf_attachment

    _booking, report = booked_and_signed(cup, reporting)
    signed_and_sent(report)
    publication = [r for r in fse.answered("/v1/documents", "POST") if r.path == "/v1/documents"][-1]
    cda = pdf_attachment(publication.file)
    assert cda is not None and cda_problems(cda) == []
    assert cda_document_id(cda) == publication.body["identificativoDoc"]


def test_the_kos_manifest_goes_beside_the_report(fse: Gateway, cup: Cup, reporting: Reporting) -> None:
    booking, report = booked_and_signed(cup, reporting)
    signed_and_sent(report)
    manifest = Operation.objects.get(kind=Operation.Kind.MANIFEST)
    assert manifest.status == Operation.Status.DONE, manifest.last_error
    [received] = fse.answered("/xds-i/manifests", "POST")
    kos = pydicom.dcmread(__import__("io").BytesIO(received.file))
    assert kos.SOPInstanceUID == manifest.document_id and kos.StudyInstanceUID == reporting.study.study_instance_uid
    entry = received.body
    assert entry["relatedDocument"] == Operation.objects.get(kind=Operation.Kind.PUBLISH).document_id
    assert f"{booking.accession_number}^^^" in entry["referenceIdList"][1]
    assert entry["confidentialityCode"] == "N"
    # Sent after the report it goes with (one booking, one order).
    assert [r.path for r in fse.received][-1] == "/xds-i/manifests"


def test_a_correction_replaces_the_document_and_an_addendum_is_a_new_one(
    fse: Gateway, cup: Cup, reporting: Reporting
) -> None:
    _booking, original = booked_and_signed(cup, reporting)
    signed_and_sent(original)
    first = Operation.objects.get(kind=Operation.Kind.PUBLISH, report=original)

    correction = amended(reporting, original, Report.Kind.CORRECTION)
    signed_and_sent(correction)
    replace = Operation.objects.get(report=correction, kind=Operation.Kind.REPLACE)
    assert replace.status == Operation.Status.DONE, replace.last_error
    assert replace.target_document_id == first.document_id != replace.document_id
    put = fse.answered("/v1/documents/", "PUT")[-1]
    assert put.claims["action_id"] == "UPDATE" and put.claims["purpose_of_use"] == "UPDATE"
    assert fse.documents[first.document_id]["status"] == "replaced"
    assert fse.documents[replace.document_id]["status"] == "current"

    addendum = amended(reporting, correction, Report.Kind.ADDENDUM)
    signed_and_sent(addendum)
    added = Operation.objects.get(report=addendum, kind__in=[Operation.Kind.PUBLISH, Operation.Kind.REPLACE])
    assert added.kind == Operation.Kind.PUBLISH and added.status == Operation.Status.DONE, added.last_error
    current = {doc for doc, d in fse.documents.items() if d["status"] == "current"}
    assert current == {replace.document_id, added.document_id}


def test_a_signal_delivered_twice_publishes_once(fse: Gateway, cup: Cup, reporting: Reporting) -> None:
    _booking, report = booked_and_signed(cup, reporting)
    signed_and_sent(report)
    signed_and_sent(report)
    assert len(ops(kind=Operation.Kind.PUBLISH)) == 1
    assert [r.path for r in fse.answered("/v1")] == ["/v1/documents/validation", "/v1/documents"]


def test_a_replace_never_overtakes_its_publication(fse: Gateway, cup: Cup, reporting: Reporting) -> None:
    """The gateway refuses the original (a 400 for an operator): the correction waits behind it."""
    from fse_gateway import outbox
    from tests.reporting_helpers import report_signed_send

    _booking, original = booked_and_signed(cup, reporting)
    fse.fail_next(400, path="/v1/documents/validation")
    signed_and_sent(original)
    publish = Operation.objects.get(kind=Operation.Kind.PUBLISH)
    assert publish.status == Operation.Status.FAILED
    correction = amended(reporting, original, Report.Kind.CORRECTION)
    report_signed_send(correction, "fse_gateway.tasks.report_plan")
    replace = Operation.objects.get(report=correction)
    assert replace.kind == Operation.Kind.REPLACE
    assert outbox.operation_send(op_pk=replace.pk) == "waiting"
    assert not fse.answered("/v1/documents/", "PUT")
    assert replace.pk not in outbox.operations_due()
