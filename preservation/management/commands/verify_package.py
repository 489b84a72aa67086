"""Verify a dissemination package (PdD) offline: ``manage.py verify_package FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from preservation.export import package_verify


class Command(BaseCommand):
    help = "Verify a dissemination package (zip): hashes, signatures, time stamps. Names every file that fails."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--ca", type=Path, help="The CA to trust (default: the one in the package).")

    def handle(self, *args: Any, **opts: Any) -> None:
        ca = opts["ca"].read_bytes() if opts["ca"] else None
        result = package_verify(opts["file"], ca_pem=ca)
        for name, reason in result.problems:
            self.stderr.write(f"{name}: {reason}")
        if not result.ok:
            raise CommandError(f"{opts['file']}: NON VERIFICATO ({len(result.problems)} problemi)")
        self.stdout.write(f"{opts['file']}: verificato ({result.checked} file)")
