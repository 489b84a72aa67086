"""A small region for the access-policy tests of the admin, the REST API and DICOMweb:
studies of two patients at one health authority (ASUGI) and one at another
(ASUFC), radiologists of each, and the two things that change what they see,
a concealment (*oscuramento*) and an emergency access, made as rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from django.utils import timezone

from archive.ingest import instance_ingest
from archive.models import Facility, Instance, Patient, Study
from archive.sample_data import MR, PatientInfo, write_study
from portal.models import Concealment, EmergencyAccess
from tests.reporting_helpers import Reporting, make_radiologist
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

# Valid codici fiscali (check character included).
BIANCHI_CF = "BNCLRA72L42L483A"  # Bianchi Laura, ASUGI
VERDI_CF = "VRDGPP80A01L424F"  # Verdi Giuseppe, ASUFC
REASON = "Paziente in pronto soccorso, politrauma: servono gli esami precedenti."


@dataclass
class Scene:
    rep: Reporting
    rossi: Study  # ASUGI, CT, the reporting fixture's study (PatientID is Rossi's codice fiscale)
    bianchi: Study  # ASUGI, CT, another patient
    verdi: Study  # ASUFC (facility UD-SMM), MR
    udine: Facility
    regional: object  # a radiologist with no authority: the whole region

    @property
    def radiologist(self) -> object:  # ASUGI
        return self.rep.radiologist

    @property
    def foreign(self) -> object:  # ASUFC
        return self.rep.foreign


def _ingest(tmp_path: Path, name: str, facility: Facility, patient: PatientInfo, **kwargs: object) -> Study:
    files = write_study(tmp_path / name, patient=patient, instances_per_series=2, **kwargs)
    for path in files:
        instance_ingest(path=path, facility=facility, owned=False, calling_ae="CT01")
    uid = Instance.objects.get(sop_instance_uid=_sop(files[0])).series.study.study_instance_uid
    return Study.objects.select_related("patient", "facility").get(study_instance_uid=uid)


def _sop(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture
def scene(reporting: Reporting, tmp_path: Path) -> Scene:  # noqa: F811
    udine = Facility.objects.create(
        code="UD-SMM",
        name="Ospedale Santa Maria della Misericordia",
        authority=reporting.other_authority,
        ae_title="UDSMM_PACS",
        dicom_port=11114,
    )
    bianchi = _ingest(
        tmp_path,
        "bianchi",
        reporting.region.facility,
        PatientInfo(patient_id=BIANCHI_CF, name="BIANCHI^LAURA", birth_date="19720702", sex="F"),
        accession_number="TSC260000002",
        study_description="TC addome",
    )
    verdi = _ingest(
        tmp_path,
        "verdi",
        udine,
        PatientInfo(patient_id=VERDI_CF, name="VERDI^GIUSEPPE", birth_date="19800101", sex="M"),
        source=MR,
        accession_number="UDM260000001",
        study_description="RM encefalo",
    )
    regional = make_radiologist("regionale", "Paola", "Furlan", None)
    rossi = Study.objects.select_related("patient", "facility").get(pk=reporting.study.pk)
    return Scene(rep=reporting, rossi=rossi, bianchi=bianchi, verdi=verdi, udine=udine, regional=regional)


def hide(study: Study) -> Concealment:
    """The patient hides ``study`` (as the portal records it)."""
    return Concealment.objects.create(patient=study.patient, study=study)


def reveal(study: Study) -> None:
    Concealment.objects.filter(study=study, revealed_at__isnull=True).update(revealed_at=timezone.now())


def emergency(user: object, patient: Patient) -> EmergencyAccess:
    """A live emergency access of ``user`` for ``patient`` (the page that asks for it is the portal's)."""
    return EmergencyAccess.objects.create(user=user, patient=patient, reason=REASON, at=timezone.now())
