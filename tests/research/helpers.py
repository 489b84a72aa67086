"""A small scene for the anonymised exports: one patient's CT study full of identifying
attributes (nested ones too), an ultrasound series and a CT image that says it has
burned-in text, a second patient, a researcher, the DPO and a colleague."""

from __future__ import annotations

import datetime as dt
import importlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from archive.ingest import instance_ingest
from archive.models import Facility, Study
from archive.sample_data import CT, US_PALETTE, PatientInfo, fresh_copy
from research import services
from research.models import Export, ExportProject
from tests.conftest import Region

BIANCHI_CF = "BNCLRA72L42L483A"
VERDI_CF = "VRDGPP80A01L424F"
PASSWORD = "una-password-lunga-42"

# What anyone would call identifying, whatever the table says: none may survive with its value.
IDENTIFYING = {
    "PatientName": "BIANCHI^LAURA",
    "PatientID": BIANCHI_CF,
    "PatientBirthDate": "19720702",
    "InstitutionName": "Ospedale di Cattinara",
    "InstitutionAddress": "Strada di Fiume 447, Trieste",
    "ReferringPhysicianName": "ROSSI^GIULIA",
    "PerformingPhysicianName": "NERI^PAOLO",
    "OperatorsName": "VERDI^ANNA",
    "AccessionNumber": "TSC26000042",
    "StudyID": "ST4242",
    "OtherPatientIDs": "MRN-998877",
    "PatientAddress": "Via Roma 1, Trieste",
    "PatientTelephoneNumbers": "040123456",
}
DEVICE = {"StationName": "TSCAT-CT01", "DeviceSerialNumber": "SN-55501"}


@dataclass
class Scene:
    region: Region
    study: Study
    other: Study  # another patient's study
    files: list[Path]
    researcher: object
    dpo: object
    colleague: object
    project: ExportProject


def make_user(username: str, *, groups: tuple[str, ...] = (), perms: tuple[str, ...] = ()) -> object:
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=True)
    if groups and Group.objects.filter(name__in=groups).count() < len(set(groups)):
        # A transactional test before this one flushed the tables, the groups research's
        # migration 0002 made with them: make them again the same way.
        importlib.import_module("research.migrations.0002_dpo_and_research_groups")._groups_create(django_apps, None)
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return get_user_model().objects.get(pk=user.pk)


def _identified(ds: Dataset, *, referenced: Dataset | None = None) -> Dataset:
    for keyword, value in {**IDENTIFYING, **DEVICE}.items():
        setattr(ds, keyword, value)
    ds.StudyDescription = "TC torace BIANCHI controllo 12/03/2026"
    ds.SeriesDescription = "Torace BNCLRA72L42L483A"
    ds.StudyDate = "20260312"
    ds.SeriesDate = "20260312"
    ds.AcquisitionDateTime = "20260312101500"
    ds.PatientAge = "053Y"
    ds.PatientWeight = "61"
    # Nested identifying data: the table's actions apply at any depth.
    request = Dataset()
    request.RequestedProcedureID = "RP-777"
    request.ScheduledProcedureStepID = "SPS-777"
    request.RequestingPhysician = "BIANCHI^MARCO"
    ds.RequestAttributesSequence = Sequence([request])
    if referenced is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = referenced.SOPClassUID
        ref.ReferencedSOPInstanceUID = referenced.SOPInstanceUID
        ds.ReferencedImageSequence = Sequence([ref])
    # A private element (a vendor's block): removed.
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "BIANCHI LAURA")
    return ds


def write_scene_files(dest: Path, *, patient_id: str = BIANCHI_CF, name: str = "BIANCHI^LAURA") -> list[Path]:
    """A study: 2 CT images (the second referencing the first), a CT image with Burned In
    Annotation YES, an ultrasound image (burned-in likely, not stated)."""
    dest.mkdir(parents=True, exist_ok=True)
    patient = PatientInfo(patient_id=patient_id, name=name, birth_date="19720702", sex="F")
    study_uid, ct_series, us_series = generate_uid(), generate_uid(), generate_uid()
    common = {"patient": patient, "study_uid": study_uid, "accession_number": IDENTIFYING["AccessionNumber"]}
    # Each from its own read of the file: a Dataset's copy() shares the file meta.
    first = fresh_copy(CT, series_uid=ct_series, instance_number=1, **common)
    second = fresh_copy(CT, series_uid=ct_series, instance_number=2, **common)
    burned = fresh_copy(CT, series_uid=ct_series, instance_number=3, **common)
    us = fresh_copy(US_PALETTE, series_uid=us_series, instance_number=1, series_number=2, **common)
    datasets = [_identified(first), _identified(second, referenced=first), _identified(burned), _identified(us)]
    burned.BurnedInAnnotation = "YES"
    for ds in datasets:
        ds.PatientID, ds.PatientName = patient_id, name
    paths = []
    for ds in datasets:
        path = dest / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ingest(paths: list[Path], facility: Facility) -> Study:
    for path in paths:
        instance_ingest(path=path, facility=facility, owned=False, calling_ae="CT01")
    uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    return Study.objects.select_related("patient").get(study_instance_uid=uid)


def project_make(user: object, code: str = "RIC-TORACE", **options: bool) -> ExportProject:
    return services.project_create(
        user=user, code=code, title="Noduli polmonari", purpose="Didattica: casi di noduli.", **options
    )


def export_run(
    scene_project: ExportProject, user: object, criteria: dict[str, str], *, capture: object, enqueued: object
) -> Export:
    """Request an export as ``user`` and run its build as the worker would."""
    with capture(execute=True):  # type: ignore[operator]
        export = services.export_request(project=scene_project, user=user, criteria=criteria)
    enqueued.run()  # type: ignore[attr-defined]
    export.refresh_from_db()
    return export


def zip_datasets(export: Export) -> dict[str, Dataset]:
    with zipfile.ZipFile(export.path) as zf:
        return {n: dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist() if n.endswith(".dcm")}


def zip_text(export: Export, name: str) -> str:
    with zipfile.ZipFile(export.path) as zf:
        return zf.read(name).decode("utf-8")


@pytest.fixture
def scene(region: Region, tmp_path: Path, settings: Any) -> Scene:
    settings.PACS_RESEARCH_EXPORT_DIR = tmp_path / "exports"
    files = write_scene_files(tmp_path / "bianchi")
    study = ingest(files, region.facility)
    other = ingest(write_scene_files(tmp_path / "verdi", patient_id=VERDI_CF, name="VERDI^GIUSEPPE"), region.facility)
    researcher = make_user("ricercatrice", groups=("Didattica e ricerca",), perms=("archive.view_study",))
    dpo = make_user("dpo", groups=("Responsabile protezione dati",), perms=("archive.view_study",))
    colleague = make_user("collega", groups=("Didattica e ricerca",), perms=("archive.view_study",))
    project = project_make(researcher, retain_dates_modified=True)
    return Scene(region, study, other, files, researcher, dpo, colleague, project)


def today() -> dt.date:
    return dt.date.today()
