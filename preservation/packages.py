"""From a signed, stable study to an archival package (PdV -> PdA, SIP -> AIP).

:func:`package_build` claims the package row of each signed report version
not yet preserved (a heartbeat lease, :mod:`kernel.leases`: taken over when
the builder's heartbeat is stale), gathers the submission package in this process's
incoming folder -- the study's DICOM instances not in an earlier package of
the study, the signed report's PDF and ``.p7m``, a metadata record per
document (:mod:`preservation.metadata`) and the PdV index -- checks it (every
file's SHA-256 against the archive's, the report's CAdES signature, the
required metadata), and publishes the AIP into the write-once preservation
tier in one step (:func:`preservation.vault.publish_folder`). Only then is
the row marked archived; a worker killed on the way leaves no folder under
the package's name, and the next run builds it again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from archive.models import Instance, Report, Study
from archive.reporting import services as reports
from archive.storage import retrieve
from archive.storage import tiers as storage
from kernel import leases
from kernel.errors import PacsError

from . import metadata, retention, vault
from .journal import journal_record
from .models import JournalEntry, Package, PackageFile, RetentionClass

logger = logging.getLogger(__name__)

STALE = dt.timedelta(minutes=5)
SYSTEM = "preservation.package_build"
MANIFEST = "PdA.xml"
SIP_INDEX = "PdV.xml"
SOFTWARE = "PACS regionale FVG"


class PackageError(PacsError):
    """The submission package was refused (``permanent``, code ``rejected``: recorded, never
    retried) or could not be built now (code ``not_built``: the task retries it)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message, code="rejected" if permanent else "not_built")
        self.permanent = permanent


@dataclass
class _Doc:
    name: str
    path: Path
    sha256: str
    size: int
    role: str
    mime_type: str
    document_id: str
    retention_class: RetentionClass
    keep_until: dt.date | None


def studies_due(*, now: dt.datetime | None = None) -> list[int]:
    """Studies with a signed report version not yet preserved and no new instance for the stable time."""
    now = now or timezone.now()
    stable_before = now - dt.timedelta(minutes=settings.PACS_PRESERVATION_STABLE_MINUTES)
    preserved = Package.objects.filter(status__in=[Package.Status.ARCHIVED, Package.Status.REJECTED]).values(
        "report_id"
    )
    return list(
        Report.objects.filter(status=Report.Status.SIGNED)
        .exclude(pk__in=preserved)
        .filter(Q(study__last_received_at__isnull=True) | Q(study__last_received_at__lte=stable_before))
        .order_by("study_id")
        .values_list("study_id", flat=True)
        .distinct()
    )


def study_is_stable(study: Study, *, now: dt.datetime | None = None) -> bool:
    now = now or timezone.now()
    if study.last_received_at is None:
        return True
    return study.last_received_at <= now - dt.timedelta(minutes=settings.PACS_PRESERVATION_STABLE_MINUTES)


def package_build(*, study_pk: int, stale_after: dt.timedelta = STALE, force: bool = False) -> list[Package]:
    """Preserve every signed report version of the study that is not preserved yet.

    Returns the packages this call archived (an empty list when nothing was
    due, the study is not stable yet, or another live builder holds it).
    ``force`` skips the stability wait (the officer's "preserve now").
    """
    study = Study.objects.select_related("facility", "facility__authority", "patient").filter(pk=study_pk).first()
    if study is None or (not force and not study_is_stable(study)):
        return []
    done = []
    versions = Report.objects.filter(study=study, status=Report.Status.SIGNED).order_by("version")
    for report in versions:
        package = _claim(study=study, report=report, stale_after=stale_after)
        if package is None:
            continue
        try:
            done.append(_build(package=package, study=study, report=report))
        except PackageError as exc:
            if exc.permanent:
                Package.objects.filter(pk=package.pk).update(
                    status=Package.Status.REJECTED, ingest_report={"accepted": False, "reason": exc.message}
                )
                journal_record(
                    event=JournalEntry.Event.PACKAGE,
                    action="package.reject",
                    object_id=package.identifier,
                    outcome="failure",
                    system=SYSTEM,
                    detail={"study": study.study_instance_uid, "report": report.pk, "reason": exc.message},
                )
                logger.error("package %s rejected: %s", package.identifier, exc.message)
                continue
            raise
    return done


def _claim(*, study: Study, report: Report, stale_after: dt.timedelta) -> Package | None:
    now = timezone.now()
    try:
        with transaction.atomic():
            package, created = Package.objects.get_or_create(
                report=report,
                defaults={
                    "identifier": vault.new_identifier("PdA"),
                    "study": study,
                    "tier": vault.tier(),
                    "heartbeat_at": now,
                },
            )
    except IntegrityError:
        return None  # another builder created it at the same moment
    if created:
        return package
    if package.status != Package.Status.BUILDING:
        return None
    building = Package.objects.filter(pk=package.pk, status=Package.Status.BUILDING)
    if not leases.lease_claim(building, stale_after=stale_after, now=now):
        return None  # a live builder holds it
    logger.warning("package %s taken over from a builder that stopped", package.identifier)
    package.refresh_from_db()
    return package


def _heartbeat(package: Package) -> None:
    leases.lease_renew(Package.objects.filter(pk=package.pk))
    pause = settings.PACS_PRESERVATION_THROTTLE_SECONDS
    if pause > 0:
        time.sleep(pause)


def _write(workdir: Path, name: str, data: bytes) -> Path:
    path = workdir / name
    storage.makedirs_durable(path.parent)
    storage.write_private_file(path, data)
    return path


def _study_date(study: Study) -> dt.date:
    return study.study_date or timezone.localdate(study.created_at)


def _build(*, package: Package, study: Study, report: Report) -> Package:
    prefix = f"aip/{package.identifier}"
    vault.staging_clean(prefix)
    workdir = storage.incoming_dir() / f"sip-{package.identifier}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(mode=storage.DIR_MODE)
    try:
        docs, records = _gather(package=package, study=study, report=report, workdir=workdir)
        checks = _check(report=report, docs=docs, records=records)
        sip_index = _write(workdir, SIP_INDEX, _index_xml("PdV", package, study, report, docs, checks=None))
        docs.append(
            _Doc(
                SIP_INDEX,
                sip_index,
                _sha(sip_index),
                sip_index.stat().st_size,
                PackageFile.Role.MANIFEST,
                "application/xml",
                f"{package.identifier}-PdV",
                retention.retention_class_for(document_type=RetentionClass.DocumentType.METADATA),
                None,
            )
        )
        manifest = _write(workdir, MANIFEST, _index_xml("PdA", package, study, report, docs, checks=checks))
        manifest_sha = _sha(manifest)
        docs.append(
            _Doc(
                MANIFEST,
                manifest,
                manifest_sha,
                manifest.stat().st_size,
                PackageFile.Role.MANIFEST,
                "application/xml",
                f"{package.identifier}-PdA",
                retention.retention_class_for(document_type=RetentionClass.DocumentType.METADATA),
                None,
            )
        )
        _heartbeat(package)
        vault.publish_folder(prefix, [vault.StagedFile(d.name, d.path, d.sha256) for d in docs], last=MANIFEST)
        # The rows are written in the transaction that marks the package
        # archived, so a builder that died left none (and none is ever deleted).
        with transaction.atomic():
            PackageFile.objects.bulk_create(
                [
                    PackageFile(
                        package=package,
                        role=d.role,
                        name=d.name,
                        path=f"{prefix}/{d.name}",
                        mime_type=d.mime_type,
                        sha256=d.sha256,
                        size=d.size,
                        document_id=d.document_id,
                        retention_class=d.retention_class,
                        keep_until=d.keep_until,
                    )
                    for d in docs
                ]
            )
            updated = Package.objects.filter(pk=package.pk, status=Package.Status.BUILDING).update(
                status=Package.Status.ARCHIVED,
                path=prefix,
                manifest_sha256=manifest_sha,
                archived_at=timezone.now(),
                ingest_report={**checks, "at": timezone.now().isoformat()},
            )
            if updated != 1:
                raise PackageError("the package row changed while it was being built")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    journal_record(
        event=JournalEntry.Event.PACKAGE,
        action="package.archive",
        object_id=package.identifier,
        system=SYSTEM,
        detail={
            "study": study.study_instance_uid,
            "report": report.pk,
            "version": report.version,
            "files": len(docs),
            "manifest_sha256": manifest_sha,
        },
    )
    package.refresh_from_db()
    return package


def _sha(path: Path) -> str:
    with open(path, "rb") as fh:
        return storage.file_sha256(fh)


def _gather(*, package: Package, study: Study, report: Report, workdir: Path) -> tuple[list[_Doc], dict[str, bytes]]:
    docs: list[_Doc] = []
    records: dict[str, bytes] = {}
    start = _study_date(study)
    patient = study.patient
    subject = ("Soggetto", "PF", patient.codice_fiscale or study.dicom_patient_id)
    producer = ("Produttore", "PAI", f"{study.facility.name} ({study.facility.authority.name})")
    registration = study.accession_number or study.study_instance_uid

    def add_record(doc: _Doc, md: metadata.DocumentMetadata) -> None:
        data = metadata.metadata_xml(md)
        name = f"metadati/{doc.document_id}.xml"
        path = _write(workdir, name, data)
        records[doc.document_id] = data
        docs.append(
            _Doc(
                name,
                path,
                hashlib.sha256(data).hexdigest(),
                len(data),
                PackageFile.Role.METADATA,
                "application/xml",
                f"{doc.document_id}-metadati",
                retention.retention_class_for(document_type=RetentionClass.DocumentType.METADATA),
                None,
            )
        )

    # The report: its PDF and its detached signature, read back and checked against the signing's hashes.
    report_class = retention.retention_class_for(document_type=RetentionClass.DocumentType.REPORT)
    report_id = f"REF-{study.study_instance_uid}-v{report.version}"
    for which, role, mime in (
        ("pdf", PackageFile.Role.REPORT_PDF, "application/pdf"),
        ("p7m", PackageFile.Role.REPORT_SIGNATURE, "application/pkcs7-signature"),
    ):
        try:
            data = reports.report_file(report=report, which=which)
        except reports.ReportError as exc:
            raise PackageError(exc.message, permanent=exc.code == "damaged") from exc
        name = f"referto/referto-v{report.version}.pdf" + (".p7m" if which == "p7m" else "")
        path = _write(workdir, name, data)
        docs.append(
            _Doc(
                name,
                path,
                hashlib.sha256(data).hexdigest(),
                len(data),
                role,
                mime,
                report_id if which == "pdf" else f"{report_id}-firma",
                report_class,
                retention.keep_until(retention_class=report_class, start=start),
            )
        )
    pdf = docs[0]
    author = report.signer_name or (report.author.get_full_name() if report.author_id else "")
    add_record(
        pdf,
        metadata.DocumentMetadata(
            identifier=report_id,
            sha256=pdf.sha256,
            formation="a",
            document_type="Referto di diagnostica per immagini",
            registration_date=report.signed_at or timezone.now(),
            registration_number=registration,
            subjects=[("Autore", "PF", author), producer, subject],
            description=study.study_description,
            classification=settings.PACS_PRESERVATION_CLASSIFICATION,
            mime_type="application/pdf",
            software=SOFTWARE,
            signed=True,
            aggregation=study.study_instance_uid,
            name=Path(pdf.name).name,
            version=str(report.version),
            retention_class=report_class.code,
            retention_years=report_class.years,
            extra={"firma": docs[1].name, "tipo_versione": report.kind},
        ),
    )

    # The instances not preserved by an earlier package of the study.
    earlier = PackageFile.objects.filter(
        package__study=study, package__status=Package.Status.ARCHIVED, role=PackageFile.Role.DICOM
    ).values_list("document_id", flat=True)
    earlier_ids = set(earlier)
    instances = retrieve.instances_with_copies(
        Instance.objects.filter(series__study=study)
        .select_related("series")
        .order_by("series_id", "instance_number", "pk")
    )
    for instance in instances:
        doc_id = f"DCM-{instance.sop_instance_uid}"
        if doc_id in earlier_ids:
            continue
        name = f"dicom/{instance.series.series_instance_uid}/{instance.sop_instance_uid}.dcm"
        target = workdir / name
        storage.makedirs_durable(target.parent)
        try:
            with retrieve.instance_open(instance) as src, storage.open_private_file(target) as out:
                digest = hashlib.sha256()
                for chunk in iter(lambda: src.read(1024 * 1024), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except retrieve.NotAvailable as exc:
            raise PackageError(f"{instance.sop_instance_uid}: {exc.reason}") from exc
        if digest.hexdigest() != instance.sha256:
            raise PackageError(f"{instance.sop_instance_uid}: the copy read does not have the archived SHA-256")
        image_class = retention.retention_class_for(
            document_type=RetentionClass.DocumentType.IMAGE, modality=instance.series.modality
        )
        doc = _Doc(
            name,
            target,
            instance.sha256,
            instance.size,
            PackageFile.Role.DICOM,
            "application/dicom",
            doc_id,
            image_class,
            retention.keep_until(retention_class=image_class, start=start),
        )
        docs.append(doc)
        add_record(
            doc,
            metadata.DocumentMetadata(
                identifier=doc_id,
                sha256=instance.sha256,
                formation="b",
                document_type=f"Immagine diagnostica DICOM ({instance.series.modality or 'OT'})",
                registration_date=instance.received_at,
                registration_number=registration,
                subjects=[producer, subject],
                description=instance.series.series_description or study.study_description,
                classification=settings.PACS_PRESERVATION_CLASSIFICATION,
                mime_type="application/dicom",
                software=SOFTWARE,
                signed=False,
                aggregation=study.study_instance_uid,
                name=Path(name).name,
                version="1",
                retention_class=image_class.code,
                retention_years=image_class.years,
                primary_document=report_id,
                extra={"SOPClassUID": instance.sop_class_uid, "TransferSyntaxUID": instance.transfer_syntax_uid},
            ),
        )
        _heartbeat(package)
    return docs, records


def _check(*, report: Report, docs: list[_Doc], records: dict[str, bytes]) -> dict:
    """The acceptance checks of the PdV; the rapporto di versamento when they pass."""
    for doc in docs:
        if _sha(doc.path) != doc.sha256:
            raise PackageError(f"{doc.name}: SHA-256 changed while the package was gathered")
    check = reports.report_verify(report=report)
    if not check.ok:
        raise PackageError(f"referto v{report.version}: {check.reason}", permanent=True)
    missing = {doc_id: metadata.metadata_missing(data) for doc_id, data in records.items()}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        raise PackageError(f"metadati obbligatori mancanti: {missing}", permanent=True)
    # No clock in here: the PdA written from it must come out byte for byte the
    # same when a run that died after publishing it is done again.
    return {
        "accepted": True,
        "files": len(docs),
        "hashes": "SHA-256 of every file checked against the archive",
        "report_signature": {"ok": True, "signer": check.signer_subject},
        "metadata_records": len(records),
    }


def _index_xml(
    kind: str, package: Package, study: Study, report: Report, docs: list[_Doc], *, checks: dict | None
) -> bytes:
    root = ET.Element(
        "PacchettoDiArchiviazione" if kind == "PdA" else "PacchettoDiVersamento",
        {"xmlns": "urn:pacs-fvg:conservazione:pacchetto:1", "identificativo": package.identifier},
    )
    ET.SubElement(root, "Studio", {"StudyInstanceUID": study.study_instance_uid, "accession": study.accession_number})
    ET.SubElement(root, "Referto", {"versione": str(report.version), "tipo": report.kind})
    files = ET.SubElement(root, "File")
    for d in docs:
        ET.SubElement(
            files,
            "Documento",
            {
                "nome": d.name,
                "identificativo": d.document_id,
                "formato": d.mime_type,
                "dimensione": str(d.size),
                "sha256": d.sha256,
                "classe": d.retention_class.code,
            },
        )
    if checks is not None:
        rv = ET.SubElement(root, "RapportoDiVersamento", {"esito": "accettato"})
        for key, value in checks.items():
            ET.SubElement(rv, "Controllo", {"nome": key}).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
