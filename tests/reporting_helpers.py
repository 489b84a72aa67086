"""Fixtures shared by the report tests: a CT study in the archive, radiologists
of the study's health authority and of another one, and their demo signing
keys (imported by the test modules that use them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import TestCase
from django.utils import timezone

from archive.ingest import instance_ingest
from archive.models import HealthAuthority, Report, StaffProfile, Study
from archive.reporting import services as reports
from archive.reporting import signing
from archive.sample_data import PatientInfo, write_study
from archive.signals import report_signed
from kernel import tasknames
from tests.conftest import Region, tasks_kept

RADIOLOGIST_PASSWORD = "una-password-da-radiologo-7"
RADIOLOGIST_PERMS = (
    "archive.view_patient",
    "archive.view_study",
    "archive.view_series",
    "archive.view_instance",
    "archive.view_report",
    "archive.add_report",
    "archive.change_report",
    "archive.sign_report",
    "portal.emergency_access",  # as the demo's "Radiologi"
)
# Rossi Mario, born in Trieste on 12 March 1956 (python-codicefiscale's encoding).
PATIENT_CF = "RSSMRA56C12L424P"
# The exposure a radiologist confirms for the CT study (D.Lgs 101/2020, art. 161, c. 5: required to sign).
EXPOSURE_TEXT = "TC: CTDIvol 8,2 mGy; DLP totale 412,5 mGy·cm (2 acquisizioni). Fonte: inserita dal medico."


@dataclass
class Reporting:
    region: Region
    study: Study
    radiologist: object  # of the study's authority (ASUGI)
    colleague: object  # ASUGI too: for conflicting edits
    foreign: object  # a radiologist of another authority (ASUFC)
    other_authority: HealthAuthority


def make_radiologist(username: str, first: str, last: str, authority: HealthAuthority | None) -> object:
    user = get_user_model().objects.create_user(
        username=username, password=RADIOLOGIST_PASSWORD, first_name=first, last_name=last, is_staff=True
    )
    for perm in RADIOLOGIST_PERMS:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    StaffProfile.objects.create(user=user, authority=authority)
    return get_user_model().objects.get(pk=user.pk)  # fresh permission cache


def ingest_study(tmp_path: Path, region: Region, *, accession_number: str = "TSC260000001") -> Study:
    patient = PatientInfo(patient_id=PATIENT_CF, name="ROSSI^MARIO", birth_date="19560312", sex="M")
    files = write_study(
        tmp_path / "study", patient=patient, series=2, instances_per_series=3, accession_number=accession_number
    )
    for path in files:
        instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")
    study = Study.objects.get()
    Study.objects.filter(pk=study.pk).update(
        reason_for_request="Dispnea da sforzo, fumatore: escludere lesioni polmonari.", priority="B"
    )
    study.refresh_from_db()
    return study


@pytest.fixture
def reporting(region: Region, tmp_path: Path) -> Reporting:
    asufc = HealthAuthority.objects.create(code="ASUFC", name="Azienda sanitaria universitaria Friuli Centrale")
    study = ingest_study(tmp_path, region)
    radiologist = make_radiologist("radiologo", "Stefano", "Cossutta", region.authority)
    colleague = make_radiologist("radiologa", "Chiara", "Degano", region.authority)
    foreign = make_radiologist("udinese", "Marco", "Tosolini", asufc)
    signing.demo_pki_create(users=[radiologist, colleague, foreign])
    return Reporting(region, study, radiologist, colleague, foreign, asufc)


def written_draft(r: Reporting, user: object | None = None) -> Report:
    """A draft of the study, claimed by ``user`` (the radiologist by default), with its sections saved."""
    user = user or r.radiologist
    draft = reports.report_draft_start(study=r.study, user=user)
    return reports.report_save(
        report=draft,
        user=user,
        revision=draft.revision,
        clinical_question=draft.clinical_question,
        technique="TC del torace senza mezzo di contrasto.",
        findings="Non lesioni focali parenchimali. Non versamento pleurico.",
        conclusion="Quadro TC nei limiti della norma.",
        exposure=EXPOSURE_TEXT,
        exposure_confirmed=True,
    )


def signed_report(r: Reporting) -> Report:
    """The radiologist's report of the study, written and signed."""
    draft = written_draft(r)
    return reports.report_sign(report=draft, user=r.radiologist, password=RADIOLOGIST_PASSWORD, revision=draft.revision)


def signed_row(
    rep: Reporting, *, version: int = 1, previous: Report | None = None, kind: str = Report.Kind.ORIGINAL
) -> Report:
    """A signed version as the database holds it (the files are not needed here)."""
    return Report.objects.create(
        study=rep.study,
        version=version,
        previous=previous,
        kind=kind,
        status=Report.Status.SIGNED,
        author=rep.radiologist,
        findings="Nessuna lesione focale.",
        conclusion="Nella norma.",
        signed_at=timezone.now(),
        signer_name="Stefano Cossutta",
        tier="facility:TS-CAT",
        pdf_path=f"reports/v{version}.pdf",
        pdf_sha256="a" * 64,
        pdf_size=1,
        signature_path=f"reports/v{version}.p7m",
        signature_sha256="b" * 64,
    )


def report_signed_send(report: Report, *names: str) -> list[object]:
    """``report_signed`` for ``report`` as its signing sends it (after commit), then the
    tasks its receivers queued, those named (by default the booking's and the portal's),
    run here as a worker runs them; their results."""
    with tasks_kept() as kept:
        with TestCase.captureOnCommitCallbacks(execute=True):
            report_signed.send(sender=Report, report_pk=report.pk, study_pk=report.study_id)
        return kept.run(*(names or (tasknames.BOOKING_REPORTED, tasknames.REPORT_PUBLISH)))
