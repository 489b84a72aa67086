"""Verify a dissemination package (PdD) offline: ``manage.py verify_package FILE``.

Prints who signed each file and with which role, which TSA stamped each
index, and the CA's fingerprint (to compare with the one the preservation
service publishes); names every file that fails, and exits non-zero then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from preservation.export import package_verify


class Command(BaseCommand):
    help = "Verify a dissemination package (zip): hashes, signatures and their signer's role, time stamps."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--ca", type=Path, help="The CA to trust (default: the one in the package).")
        parser.add_argument(
            "--tsa", type=Path, help="The TSA certificates to accept (default: certificati/tsa.pem in the package)."
        )
        parser.add_argument(
            "--policy",
            action="append",
            help="The preservation-officer role's policy OID (repeatable; default PACS_PRESERVATION_SIGNER_POLICIES).",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        ca = opts["ca"].read_bytes() if opts["ca"] else None
        tsa = opts["tsa"].read_bytes() if opts["tsa"] else None
        result = package_verify(opts["file"], ca_pem=ca, tsa_pem=tsa, policies=opts["policy"])
        if result.ca_fingerprint:
            self.stdout.write(f"CA: SHA-256 {result.ca_fingerprint}")
        for seen in result.signatures:
            verdict = "valida" if seen.ok else "NON VALIDA"
            self.stdout.write(
                f"{seen.name}: firma {verdict}, firmatario {seen.signer or '?'}, ruolo: {seen.role or '?'}"
            )
        for name, tsa_subject, when in result.timestamps:
            self.stdout.write(f"{name}: marca temporale del {when or '?'}, TSA {tsa_subject or '?'}")
        for name, reason in result.problems:
            self.stderr.write(f"{name}: {reason}")
        if not result.ok:
            raise CommandError(f"{opts['file']}: NON VERIFICATO ({len(result.problems)} problemi)")
        self.stdout.write(f"{opts['file']}: verificato ({result.checked} file)")
