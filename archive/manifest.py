"""The images behind the report: the study's IHE XDS-I.b manifest (a Key Object Selection document).

The region's FSE points at a study's images through a *manifest*: a Key Object
Selection Document (SOP Class 1.2.840.10008.5.1.4.1.1.88.59, PS3.3 A.35.4 and
C.17.6) titled (113030, DCM, "Manifest") from PS3.16 CID 7010, as the Imaging
Document Source of IHE RAD TF-3 4.68.4.1.2.3 makes it (highdicom builds the
document: TID 2010, its content tree and the evidence sequence). It carries:

* the study's patient and study attributes as the archive indexed them, and a
  Referenced Request Sequence with the accession number (the order it fulfils);
* the Current Requested Procedure Evidence Sequence, by series, each SOP
  instance in its Referenced SOP Sequence, and at series level where to fetch
  them: Retrieve AE Title (the study's facility, for DIMSE C-MOVE/C-GET),
  Retrieve Location UID (``PACS_IMAGING_SOURCE_UID``: the Imaging Document
  Source's repository, the id RAD-69 asks with) and Retrieve URL, the series'
  WADO-RS resource under ``PACS_PUBLIC_URL`` (``<url>/dicomweb/studies/<study>/series/<series>``;
  an instance is ``…/instances/<sop>`` under it, RAD-107/RAD-69 over WADO-RS).
  Retrieve URI (0040,E010), the WADO-URI location, is retired from PS3.3
  and not written: a WADO-URI consumer (RAD-55) builds its request from its
  own configuration and the three UIDs, which ``/dicomweb/wado`` answers;
* a CONTAINS IMAGE (anything with rows and columns) or COMPOSITE item for
  every instance.

It references every instance of the study in regular use (``Instance.objects``:
rejected instances and IOCM rejection notes are withdrawn, so never listed)
except manifests themselves, this archive's and any other system's.

:func:`study_manifest` stores it in the study through :func:`archive.ingest.instance_ingest`
like any received object (on disk in the facility tier, indexed, preserved with
the study, retrievable over DIMSE and DICOMweb), in one series per study kept
for manifests. A new manifest is made only when the set of referenced
instances differs from the last manifest's; the earlier manifests stay in the
series, in order (InstanceNumber). They are not withdrawn: a manifest is
immutable evidence of what was published, and the document registry (the FSE
gateway's replacement of the earlier version) is what supersedes it for
consumers; the latest is the highest InstanceNumber.

The document is derived from the index alone (its UID and number from the
manifests made before and the references, its dates from the references'
arrival), so
two workers that make it at once make the same bytes, and ingestion keeps one.
"""

from __future__ import annotations

import io
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM

from archive.storage import retrieve
from archive.storage import tiers as storage
from kernel.errors import PacsError, Unavailable

from .models import Instance, Report, Study

logger = logging.getLogger(__name__)

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
# PS3.16 CID 7010 "Key Object Selection Document Title": the XDS-I manifest's.
MANIFEST_CODE = ("113030", "DCM", "Manifest")
# The series that holds the archive's manifests of a study, numbered apart from the
# modality's series and the reports' Encapsulated PDFs (9000 + version).
MANIFEST_SERIES_NUMBER = 9900
MANIFEST_SERIES_DESCRIPTION = "Manifest XDS-I"
_MANUFACTURER = "PACS regionale"


class ManifestError(PacsError):
    """No manifest could be made (``empty``: the study has nothing to reference;
    ``storage``: ingestion refused it)."""

    code = "manifest"


@dataclass(frozen=True)
class Reference:
    """One instance a manifest names."""

    series_uid: str
    sop_class_uid: str
    sop_uid: str


def manifest_series_uid(study_uid: str) -> str:
    """The UID of the series that holds the archive's manifests of a study (derived, so always the same)."""
    return str(generate_uid(entropy_srcs=[study_uid, "XDS-I.b manifest series"]))


def imaging_source_uid() -> str:
    """Retrieve Location UID: the Imaging Document Source's id (``PACS_IMAGING_SOURCE_UID``,
    otherwise one derived from ``PACS_PUBLIC_URL``, stable for the installation)."""
    configured: str = settings.PACS_IMAGING_SOURCE_UID
    if configured:
        return configured
    return str(generate_uid(entropy_srcs=["XDS-I.b imaging document source", settings.PACS_PUBLIC_URL]))


def wado_rs_root() -> str:
    """The DICOMweb service root the manifests point at ("" when ``PACS_PUBLIC_URL`` is not set)."""
    public: str = settings.PACS_PUBLIC_URL
    return f"{public}/dicomweb" if public else ""


def is_manifest(dataset: Dataset) -> bool:
    """Whether a data set is an XDS-I manifest (a KOS titled 113030 DCM)."""
    if str(dataset.get("SOPClassUID", "")) != KEY_OBJECT_SELECTION:
        return False
    title = dataset.get("ConceptNameCodeSequence") or []
    return (
        bool(title)
        and (
            str(title[0].get("CodeValue", "")).strip(),
            str(title[0].get("CodingSchemeDesignator", "")).strip(),
        )
        == MANIFEST_CODE[:2]
    )


def _header(instance: Instance) -> Dataset:
    with retrieve.instance_open(instance) as fh:
        return dcmread(fh, stop_before_pixels=True)


def _manifests_and_others(study: Study) -> tuple[list[Instance], list[Instance]]:
    """The study's manifests (the archive's, oldest first) and every other instance in regular use."""
    own_series = manifest_series_uid(study.study_instance_uid)
    instances = list(
        Instance.objects.filter(series__study=study)
        .select_related("series", "facility")
        .order_by("series__series_number", "series__series_instance_uid", "instance_number", "sop_instance_uid")
    )
    manifests: list[Instance] = []
    others: list[Instance] = []
    for instance in instances:
        if instance.series.series_instance_uid == own_series:
            manifests.append(instance)
        elif instance.sop_class_uid == KEY_OBJECT_SELECTION and _is_foreign_manifest(instance):
            continue  # another system's manifest: never referenced, never counted as ours
        else:
            others.append(instance)
    manifests.sort(key=lambda i: (i.instance_number or 0, i.received_at))
    return manifests, others


def _is_foreign_manifest(instance: Instance) -> bool:
    # The index does not keep a KOS's title: read it (a study holds few KOS).
    try:
        return is_manifest(_header(instance))
    except (InvalidDicomError, OSError, ValueError) as exc:
        logger.warning("key object %s unreadable, referenced as any instance: %s", instance.sop_instance_uid, exc)
        return False


def manifest_references(manifest: Dataset) -> set[Reference]:
    """The instances a manifest's evidence sequence names."""
    found = set()
    for study in manifest.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            for sop in series.get("ReferencedSOPSequence") or []:
                found.add(
                    Reference(
                        series_uid=str(series.SeriesInstanceUID),
                        sop_class_uid=str(sop.ReferencedSOPClassUID),
                        sop_uid=str(sop.ReferencedSOPInstanceUID),
                    )
                )
    return found


def _reference(instance: Instance) -> Reference:
    return Reference(
        series_uid=instance.series.series_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        sop_uid=instance.sop_instance_uid,
    )


def _valid_time(value: str) -> TM | None:
    """The study's time as a TM, None when empty or not a time (a modality's odd value
    must not stop the manifest: Study Time is type 2)."""
    try:
        return TM(value) if value else None
    except ValueError:
        return None


def manifest_dataset(
    *, study: Study, instances: list[Instance], sop_instance_uid: str, instance_number: int
) -> Dataset:
    """The KOS manifest of ``instances`` of ``study`` (a highdicom KeyObjectSelectionDocument)."""
    from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
    from highdicom.sr import CodedConcept

    if not instances:
        raise ManifestError("the study has no instance to reference", code="empty")
    # The evidence: what highdicom needs of each instance, from the index (no file is read).
    evidence = []
    for instance in instances:
        item = Dataset()
        item.SOPClassUID = instance.sop_class_uid
        item.SOPInstanceUID = instance.sop_instance_uid
        item.SeriesInstanceUID = instance.series.series_instance_uid
        item.StudyInstanceUID = study.study_instance_uid
        if instance.rows and instance.columns:
            item.Rows, item.Columns = instance.rows, instance.columns
        evidence.append(item)
    # The study's attributes go on the first item: highdicom copies them from there.
    first = evidence[0]
    first.PatientID = study.dicom_patient_id
    first.PatientName = study.patient_name
    first.PatientBirthDate = study.patient_birth_date.strftime("%Y%m%d") if study.patient_birth_date else None
    first.PatientSex = study.patient_sex if study.patient_sex in ("M", "F", "O") else None
    first.AccessionNumber = study.accession_number
    first.StudyID = study.study_id
    first.StudyDate = study.study_date.strftime("%Y%m%d") if study.study_date else None
    first.StudyTime = _valid_time(study.study_time)
    first.ReferringPhysicianName = study.referring_physician_name
    first.SpecificCharacterSet = "ISO_IR 192"

    title = CodedConcept(value=MANIFEST_CODE[0], scheme_designator=MANIFEST_CODE[1], meaning=MANIFEST_CODE[2])
    content = KeyObjectSelection(document_title=title, referenced_objects=evidence)
    # Dates from the index, not the clock: the same references give the same bytes.
    created = timezone.localtime(max(i.received_at for i in instances))
    requested: list[Dataset] | None = None
    if study.accession_number:
        request = Dataset()
        request.StudyInstanceUID = study.study_instance_uid
        request.AccessionNumber = study.accession_number
        request.PlacerOrderNumberImagingServiceRequest = ""
        request.FillerOrderNumberImagingServiceRequest = ""
        request.RequestedProcedureID = study.study_id
        request.RequestedProcedureDescription = study.study_description
        request.RequestedProcedureCodeSequence = []
        requested = [request]
    document = KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=manifest_series_uid(study.study_instance_uid),
        series_number=MANIFEST_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=_MANUFACTURER,
        institution_name=study.facility.name[:64],
        requested_procedures=requested,
        series_description=MANIFEST_SERIES_DESCRIPTION,
        content_date=created.date(),
        content_time=created.time().replace(microsecond=0),
    )
    document.InstanceCreationDate = DA(created.date())
    document.InstanceCreationTime = TM(created.time().replace(microsecond=0))
    for equipment in document.get("ContributingEquipmentSequence") or []:
        # highdicom records itself as contributing equipment, at the clock's time.
        equipment.ContributionDateTime = DT(created.replace(microsecond=0))
    if study.issuer_of_patient_id:
        document.IssuerOfPatientID = study.issuer_of_patient_id
    # Where to fetch each series (IHE RAD TF-3 4.68.4.1.2.3: XDS-I.b, RAD-69 and RAD-107).
    root = wado_rs_root()
    location = imaging_source_uid()
    for study_item in document.CurrentRequestedProcedureEvidenceSequence:
        for series_item in study_item.ReferencedSeriesSequence:
            series_item.RetrieveAETitle = study.facility.ae_title
            series_item.RetrieveLocationUID = location
            if root:
                series_item.RetrieveURL = (
                    f"{root}/studies/{study_item.StudyInstanceUID}/series/{series_item.SeriesInstanceUID}"
                )
    return document


def study_manifest(*, study: Study) -> Instance:
    """The study's current manifest: the last one when it names exactly the study's
    instances, otherwise a new one, stored in the study.

    Idempotent: called again with nothing changed it stores nothing.

    Raises
    ------
    ManifestError
        ``empty``: nothing to reference; ``storage``: ingestion refused the document.
    kernel.errors.Unavailable
        The last manifest (or a KOS whose title must be read) cannot be read now:
        transient, try again.
    """
    from pydicom.filewriter import dcmwrite

    from .ingest import CONFLICT, IngestError, instance_ingest

    study = Study.objects.select_related("facility").get(pk=study.pk)
    manifests, instances = _manifests_and_others(study)
    current = {_reference(i) for i in instances}
    last = manifests[-1] if manifests else None
    if last is not None and manifest_references(_header(last)) == current:
        return last
    if not current:
        raise ManifestError(f"study {study.study_instance_uid} has no instance to reference", code="empty")
    # Every manifest the series ever held counts, a withdrawn one too (a rejection note may
    # name a manifest): the next one never takes an earlier one's UID or number.
    made_before = Instance.all_objects.filter(
        series__series_instance_uid=manifest_series_uid(study.study_instance_uid)
    ).count()
    sop_uid = str(
        generate_uid(
            entropy_srcs=[
                study.study_instance_uid,
                "XDS-I.b manifest",
                str(made_before),
                last.sop_instance_uid if last else "",
                *sorted(r.sop_uid for r in current),
            ]
        )
    )
    number = made_before + 1
    document = manifest_dataset(study=study, instances=instances, sop_instance_uid=sop_uid, instance_number=number)
    buffer = io.BytesIO()
    dcmwrite(buffer, document, enforce_file_format=True)
    path = storage.incoming_dir() / f"{uuid.uuid4().hex}.dcm"
    try:
        result = instance_ingest(path=path, facility=study.facility, owned=True, data=buffer.getvalue())
    except IngestError as exc:
        if exc.code == "out_of_resources":
            raise Unavailable(exc.message) from exc
        raise ManifestError(
            f"manifest of {study.study_instance_uid} not stored: {exc.message}", code="storage"
        ) from exc
    if result.outcome == CONFLICT:
        raise ManifestError(f"manifest {sop_uid} conflicts with an archived object", code="storage")
    logger.info("manifest %s of study %s: %d instances", sop_uid, study.study_instance_uid, len(current))
    return Instance.objects.get(sop_instance_uid=sop_uid)


def study_manifest_refresh(*, study: Study) -> Instance | None:
    """After a rejection: a new manifest when the study has one already (it may name a
    withdrawn instance), None when it has none (nothing was published to correct)."""
    if not _manifests_query(study).exists():
        return None
    try:
        return study_manifest(study=study)
    except ManifestError as exc:
        if exc.code != "empty":
            raise
        # Every instance withdrawn: no manifest can name nothing; the last one stays as the record.
        logger.warning("study %s has nothing left to reference: no new manifest", study.study_instance_uid)
        return None


def _manifests_query(study: Study | OuterRef) -> QuerySet[Instance]:
    """The archive's manifests of a study as the index can tell them without reading a file
    (their series' number and SOP class): what the sweep asks."""
    manifests = Instance.objects.filter(
        series__series_number=MANIFEST_SERIES_NUMBER, sop_class_uid=KEY_OBJECT_SELECTION
    )
    if isinstance(study, Study):
        return manifests.filter(series__study=study)
    return manifests.filter(series__study_id=study)


def reports_manifest_overdue(*, signed: QuerySet[Report], limit: int) -> list[tuple[int, int]]:
    """(study, report) of the signed versions in ``signed`` whose study has an instance in
    regular use newer than its last manifest (the report's own Encapsulated PDF included),
    or instances and no manifest: the task queued at signing was lost. Withdrawn objects
    (rejected instances, rejection notes) are not arrivals, so a study whose manifest is
    current is never one and a run finds only what is owed."""
    manifests = _manifests_query(OuterRef("study_id")).order_by("-received_at").values("received_at")[:1]
    arrivals = (
        Instance.objects.filter(series__study_id=OuterRef("study_id"))
        .exclude(series__series_number=MANIFEST_SERIES_NUMBER, sop_class_uid=KEY_OBJECT_SELECTION)
        .order_by("-received_at")
        .values("received_at")[:1]
    )
    due = (
        signed.annotate(last_manifest=Subquery(manifests), last_arrival=Subquery(arrivals))
        .filter(last_arrival__isnull=False)
        .filter(Q(last_manifest__isnull=True) | Q(last_arrival__gt=F("last_manifest")))
    )
    return [(study_pk, report_pk) for report_pk, study_pk in due.values_list("pk", "study_id")[:limit]]
