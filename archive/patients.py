"""Putting a study under another patient: the index follows, the files do not.

Staff do this when a study arrived under a wrong or unknown PatientID
(reconciliation against the booking). The stored objects stay byte for byte
as the modality sent them (DOMAIN.md); the study's patient and the patient
attributes the archive answers queries with are those of the patient chosen.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction

from kernel.audit import audit_record

from .models import Patient, PatientIdentifier, Study

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)


def patient_dicom_name(patient: Patient) -> str:
    """The patient's name as a DICOM PN: FAMILY^GIVEN."""
    return f"{patient.family_name}^{patient.given_name}".strip("^")


def study_patient_assign(
    *,
    study: Study,
    patient: Patient,
    user: User | None,
    source: str = "",
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> Study:
    """Make ``patient`` the study's patient and rewrite the study's patient attributes.

    The facility's mapping of the PatientID the modality sent is moved to
    ``patient`` when it pointed at a provisional patient, so that later
    objects of the study, sent with the same PatientID, join it; a mapping to
    an identified patient is left alone (another person may rightly own that
    PatientID), and such later objects are kept as conflicts for review.
    """
    if patient.provisional or not patient.codice_fiscale:
        raise ValueError("a study is assigned to an identified patient only")
    with transaction.atomic():
        study = Study.objects.select_for_update().select_related("patient").get(pk=study.pk)
        before = {
            "patient_pk": study.patient_id,
            "PatientName": study.patient_name,
            "PatientID": study.dicom_patient_id,
            "IssuerOfPatientID": study.issuer_of_patient_id,
            "PatientBirthDate": study.patient_birth_date.isoformat() if study.patient_birth_date else "",
            "PatientSex": study.patient_sex,
        }
        if study.dicom_patient_id:
            PatientIdentifier.objects.filter(
                facility_id=study.facility_id,
                dicom_patient_id=study.dicom_patient_id,
                issuer=study.issuer_of_patient_id,
                patient__provisional=True,
            ).update(patient=patient)
        study.patient = patient
        study.patient_name = patient_dicom_name(patient)
        study.dicom_patient_id = patient.codice_fiscale
        study.issuer_of_patient_id = settings.PACS_PATIENT_ID_ISSUER
        study.patient_birth_date = patient.birth_date
        study.patient_sex = patient.sex
        study.save(
            update_fields=[
                "patient",
                "patient_name",
                "dicom_patient_id",
                "issuer_of_patient_id",
                "patient_birth_date",
                "patient_sex",
            ]
        )
        audit_record(
            action="archive.study.patient_assign",
            user=user,
            study=study,
            patient=patient,
            source=source,
            detail={"before": before, "reason": reason[:500], **(detail or {})},
        )
    logger.info("study %s assigned to patient %s (%s)", study.study_instance_uid, patient.pk, reason)
    return study
