"""Write the DICOM Conformance Statement (docs/DICOM_CONFORMANCE.md) from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from archive.conformance import statement_write


class Command(BaseCommand):
    # Writing a document needs neither the front end nor the storage the checks look at.
    requires_system_checks: list[str] = []
    help = "Write docs/DICOM_CONFORMANCE.md from the listener's and DICOMweb's own tables."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", type=Path, default=None, help="another file to write")

    def handle(self, *args: Any, output: Path | None = None, **options: Any) -> None:
        path = statement_write(output)
        self.stdout.write(f"written {path}")
