"""What the gateway is told about a document: the ``requestBody`` of a publication or a
replace, the oscuramento of a metadata update, the XDS-I.b entry of a KOS manifest.

The values come from the report, its study and booking and the citizen's choices:

- ``tipoDocumentoLivAlto`` REF (a *referto*), ``tipoAttivitaClinica`` ERP (a
  booked exam, "Erogazione Prestazione Prenotata"), ``assettoOrganizzativo``
  and ``tipologiaStruttura`` from the settings (``AD_PSC103`` Radiodiagnostica
  and ``Ospedale`` by default);
- ``dataInizioPrestazione``/``dataFinePrestazione``: when the study was made
  (``StudyDate``/``StudyTime``, the booking's time when the images carry none);
- ``identificativoDoc``: the CDA's own ``id`` (root^extension), so the gateway
  finds in the metadata the document it is given;
- ``attiCliniciRegoleAccesso``: P99 while the citizen keeps the study
  concealed (``portal.models.Concealment``), nothing otherwise; the
  confidentiality follows it (V with P99, N without), as the CDA's header says.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.utils import timezone
from lxml import etree

from archive.models import Report, Study
from booking.models import Booking
from portal.models import Concealment

from . import gateway

CDA_NS = "urn:hl7-org:v3"
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


def cda_document_id(cda: bytes | None) -> str:
    """The CDA's ``ClinicalDocument/id`` as ``root^extension`` (``""`` when unreadable)."""
    if not cda:
        return ""
    try:
        root = etree.fromstring(cda, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        return ""
    node = root.find(f"{{{CDA_NS}}}id")
    if node is None or not node.get("root"):
        return ""
    extension = node.get("extension")
    return f"{node.get('root')}^{extension}" if extension else str(node.get("root"))


def fallback_document_id(report: Report) -> str:
    """The id a version gets when its PDF carries no readable CDA (before the CDA existed)."""
    return f"{settings.PACS_FSE_DOCUMENT_OID_ROOT}^{report.study.study_instance_uid}.{report.version}"


def concealed(study: Study) -> bool:
    return Concealment.objects.filter(study=study, revealed_at__isnull=True).exists()


def access_rules(study: Study) -> list[str]:
    return [gateway.ACCESS_RULE_CONCEALED] if concealed(study) else []


def confidentiality(study: Study) -> str:
    """HL7 Confidentiality: V (very restricted) for a concealed study, N (normal) otherwise."""
    return "V" if concealed(study) else "N"


def service_period(study: Study, booking: Booking) -> tuple[str, str]:
    """When the exam was performed, as the gateway's timestamps (local time)."""
    start: dt.datetime | None = None
    if study.study_date:
        digits = "".join(ch for ch in (study.study_time or "") if ch.isdigit())[:6].ljust(6, "0")
        try:
            start = dt.datetime.combine(study.study_date, dt.datetime.strptime(digits, "%H%M%S").time())
        except ValueError:
            start = dt.datetime.combine(study.study_date, dt.time())
    if start is None:
        start = timezone.localtime(booking.scheduled_at).replace(tzinfo=None)
    stamp = gateway.hl7_timestamp(start)
    return stamp, stamp


def submission_id(operation_pk: int) -> str:
    return f"{settings.PACS_FSE_SUBMISSION_OID_ROOT}.{operation_pk}"


def document_body(*, report: Report, booking: Booking, document_id: str, operation_pk: int) -> dict[str, Any]:
    """The ``requestBody`` of a publication or replace (without its ``workflowInstanceId``)."""
    start, end = service_period(report.study, booking)
    return {
        "healthDataFormat": gateway.HEALTH_DATA_FORMAT,
        "mode": gateway.INJECTION_MODE,
        "tipologiaStruttura": settings.PACS_FSE_FACILITY_TYPE,
        "attiCliniciRegoleAccesso": access_rules(report.study),
        "identificativoDoc": document_id,
        "identificativoRep": settings.PACS_FSE_REPOSITORY_OID,
        "tipoDocumentoLivAlto": "REF",
        "assettoOrganizzativo": settings.PACS_FSE_PRACTICE_SETTING,
        "dataInizioPrestazione": start,
        "dataFinePrestazione": end,
        "tipoAttivitaClinica": "ERP",
        "identificativoSottomissione": submission_id(operation_pk),
    }


def metadata_body(*, report: Report, booking: Booking, operation_pk: int) -> dict[str, Any]:
    """A metadata update (``PUT /documents/{id}/metadata``): the same classification, today's access rules."""
    start, end = service_period(report.study, booking)
    return {
        "tipologiaStruttura": settings.PACS_FSE_FACILITY_TYPE,
        "attiCliniciRegoleAccesso": access_rules(report.study),
        "tipoDocumentoLivAlto": "REF",
        "assettoOrganizzativo": settings.PACS_FSE_PRACTICE_SETTING,
        "dataInizioPrestazione": start,
        "dataFinePrestazione": end,
        "tipoAttivitaClinica": "ERP",
        "identificativoSottomissione": submission_id(operation_pk),
    }


def manifest_entry(
    *, study: Study, booking: Booking, sop_instance_uid: str, size: int, sha1: str, report_document_id: str
) -> dict[str, Any]:
    """The XDS-I.b DocumentEntry of the study's KOS manifest (IHE RAD TF-3 4.68 metadata)."""
    start, end = service_period(study, booking)
    return {
        "uniqueId": sop_instance_uid,
        "repositoryUniqueId": settings.PACS_FSE_REPOSITORY_OID,
        "mimeType": "application/dicom",
        "formatCode": {"code": KOS_SOP_CLASS, "codingScheme": "1.2.840.10008.2.6.1"},
        "typeCode": {"code": "18748-4", "codingScheme": "2.16.840.1.113883.6.1", "display": "Diagnostic imaging study"},
        "classCode": "REF",
        "practiceSettingCode": settings.PACS_FSE_PRACTICE_SETTING,
        "healthcareFacilityTypeCode": settings.PACS_FSE_FACILITY_TYPE,
        "confidentialityCode": confidentiality(study),
        "eventCodeList": access_rules(study) + sorted(set(study.modality_list())),
        "serviceStartTime": start,
        "serviceStopTime": end,
        "patientId": gateway.person_id(booking.patient.codice_fiscale or ""),
        "sourcePatientId": gateway.person_id(booking.patient.codice_fiscale or ""),
        "referenceIdList": [
            f"{study.study_instance_uid}^^^^urn:ihe:iti:xds:2016:studyInstanceUID",
            f"{booking.accession_number}^^^&{settings.PACS_FSE_ACCESSION_OID}&ISO^urn:ihe:iti:xds:2013:accession",
        ],
        "size": size,
        "hash": sha1,
        # The report it goes with (XDS association "signs"/"related": the CDA's id).
        "relatedDocument": report_document_id,
        "authorInstitution": settings.PACS_FSE_LOCALITY,
    }
