"""Load or update the CUP's procedure catalogue from a CSV file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from booking.services import BookingError, procedures_load_csv


class Command(BaseCommand):
    help = (
        "Load the procedure catalogue from a CSV with the header code,description,modality,body_part[,active]. "
        "Existing codes are updated; a bad row loads nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("csv_file", type=Path)

    def handle(self, *args: Any, csv_file: Path, **opts: Any) -> None:
        try:
            text = csv_file.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise CommandError(f"cannot read {csv_file}: {exc.strerror}") from None
        try:
            result = procedures_load_csv(text)
        except BookingError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"{result.created} procedures added, {result.updated} updated")
