"""The preservation by hand: ``manage.py preservation package|volume|export|fixity|propose-discard|seal-audit``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.models import Patient, Study
from preservation import export, packages, retention, volumes
from preservation.models import Volume


class Command(BaseCommand):
    help = "Preservation: package due studies, close volumes, export a DIP, run the fixity audit, propose discards."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("package", help="Package every study that is due.")
        sub.add_parser("volume", help="Close volumes of the packages without one.")
        exp = sub.add_parser("export", help="Export a dissemination package (zip).")
        group = exp.add_mutually_exclusive_group(required=True)
        group.add_argument("--study", help="StudyInstanceUID")
        group.add_argument("--patient", help="codice fiscale")
        group.add_argument("--volume", help="volume identifier")
        exp.add_argument("--output", type=Path)
        sub.add_parser("fixity", help="Run the fixity audit now.")
        sub.add_parser("propose-discard", help="Propose the discard of what is past its retention.")
        sub.add_parser("seal-audit", help="Seal the audit chains' heads into the giornale now, time-stamped.")

    def handle(self, *args: Any, **opts: Any) -> None:
        action = opts["action"]
        if action == "package":
            n = sum(len(packages.package_build(study_pk=pk)) for pk in packages.studies_due())
            self.stdout.write(f"{n} packages archived")
        elif action == "volume":
            closed = []
            while (v := volumes.volume_close()) is not None:
                closed.append(v.identifier)
            self.stdout.write(f"{len(closed)} volumes closed {' '.join(closed)}")
        elif action == "export":
            if opts["study"]:
                study = Study.objects.filter(study_instance_uid=opts["study"]).first()
                if study is None:
                    raise CommandError("no such study")
                found, label = export.packages_for(study=study), f"studio {opts['study']}"
            elif opts["patient"]:
                patient = Patient.objects.filter(codice_fiscale=opts["patient"]).first()
                if patient is None:
                    raise CommandError("no such patient")
                found, label = export.packages_for(patient=patient), f"paziente {opts['patient']}"
            else:
                volume = Volume.objects.filter(identifier=opts["volume"]).first()
                if volume is None:
                    raise CommandError("no such volume")
                found, label = export.packages_for(volume=volume), f"volume {opts['volume']}"
            try:
                path = export.dip_export(packages=found, label=label, directory=opts["output"])
            except export.ExportError as exc:
                raise CommandError(exc.message) from exc
            self.stdout.write(str(path))
        elif action == "fixity":
            from preservation import fixity

            audit = fixity.fixity_audit()
            self.stdout.write(
                f"{audit.files_checked} files, {audit.volumes_checked} volumes, {audit.failures} anomalies"
            )
        elif action == "seal-audit":
            from preservation.audit_seal import audit_seal

            entry = audit_seal()
            chains = len(entry.detail["seal"]["chains"])
            stamped = entry.detail["timestamp"] or f"not time-stamped: {entry.detail['timestamp_error']}"
            self.stdout.write(f"seal #{entry.pk}: {chains} chains, {stamped}")
        elif action == "propose-discard":
            discard = retention.discard_propose()
            self.stdout.write(f"discard #{discard.pk} proposed" if discard else "nothing to discard")
