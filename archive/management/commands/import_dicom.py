"""Import DICOM files, folders, DICOMDIR media and zip archives into a facility's tier."""

from __future__ import annotations

import contextlib
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from archive.bulk_import import (
    FileOutcome,
    ImportReport,
    ImportSetupError,
    candidate_count,
    dicom_import,
    import_facility,
    import_paths,
)
from archive.models import ae_title_validator


class _BarStream:
    """tqdm's output through the command's stderr, without the newline and colour Django adds."""

    def __init__(self, out: OutputWrapper) -> None:
        self._out = out

    def write(self, text: str) -> None:
        self._out.write(text, style_func=lambda s: s, ending="")

    def flush(self) -> None:
        self._out.flush()


class Command(BaseCommand):
    help = (
        "Import DICOM objects from files, folders (recursively), DICOMDIR media and zip archives into a "
        "facility's tier, through the same checks as a C-STORE. Give a DICOMDIR to import just the files it "
        "lists; give its folder to import every DICOM file found there. Exits 1 if any file was rejected."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH", help="file, folder, DICOMDIR or zip archive")
        parser.add_argument(
            "--facility",
            metavar="CODE",
            help="the facility whose tier receives the files (needed if there are several)",
        )
        parser.add_argument(
            "--calling-ae", metavar="AET", default="", help="AE title recorded as the sender of the imported instances"
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar (none anyway when stderr is no terminal)"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        calling_ae = opts["calling_ae"] or ""
        if calling_ae:
            try:
                ae_title_validator(calling_ae)
            except ValidationError:
                raise CommandError(
                    f"{calling_ae!r} is not a valid AE title (1-16 printable ASCII characters)"
                ) from None
        try:
            facility = import_facility(code=opts["facility"])
            paths = import_paths(paths=opts["paths"])
        except ImportSetupError as exc:
            raise CommandError(str(exc)) from exc

        bar: tqdm | None = None
        if not opts["no_progress"] and self.stderr.isatty():
            bar = tqdm(
                total=candidate_count(paths=paths),
                file=_BarStream(self.stderr),
                unit="file",
                dynamic_ncols=True,
                desc=f"import into {facility.code}",
            )

        def progress(item: FileOutcome) -> None:
            if bar is not None:
                bar.update(1)

        # Log lines (a conflict, a pydicom warning) printed above the bar instead of through it.
        redirect = logging_redirect_tqdm(tqdm_class=tqdm) if bar is not None else contextlib.nullcontext()
        try:
            with redirect:
                report = dicom_import(paths=paths, facility=facility, calling_ae=calling_ae, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        self._summary(report, facility_label=f"{facility.code} ({facility.name})", verbosity=opts["verbosity"])
        if not report.ok:
            problems = []
            if report.rejected:
                problems.append(f"{len(report.rejected)} file(s) rejected")
            if report.stopped:
                problems.append("stopped early")
            if report.audit_errors:
                problems.append("audit trail incomplete")
            raise CommandError("import incomplete: " + ", ".join(problems) + " (see the summary above)")

    def _summary(self, report: ImportReport, *, facility_label: str, verbosity: int) -> None:
        w = self.stdout.write
        w(f"Import into {facility_label}:")
        w(f"  imported:   {report.imported}")
        w(f"  duplicates: {report.duplicates}  (already archived with the same content, unchanged)")
        w(f"  conflicts:  {len(report.conflicts)}  (kept for review, the archived objects unchanged)")
        w(f"  rejected:   {len(report.rejected)}")
        w(f"  skipped:    {len(report.skipped)}  (not instances: DICOMDIR files, files beside the media)")
        w(f"  studies:    {len(report.studies)}")
        if report.conflicts:
            w("Conflicts:")
            for item in report.conflicts:
                w(f"  {item.source}: {item.reason}")
        if report.rejected:
            w("Rejected:")
            for item in report.rejected:
                w(f"  {item.source}: {item.reason}")
        if report.skipped and verbosity >= 2:
            w("Skipped:")
            for item in report.skipped:
                w(f"  {item.source}: {item.reason}")
        if report.stopped:
            w(self.style.ERROR(report.stopped))
        for error in report.audit_errors:
            w(self.style.ERROR(f"audit event not written: {error}"))
        if report.ok:
            w(self.style.SUCCESS("Done: nothing was rejected."))
