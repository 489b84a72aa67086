"""Verify a signed report: one stored in the archive (by its id), or a PDF and
its detached CAdES signature given as files.

    manage.py verify_report 42
    manage.py verify_report --pdf referto.pdf --p7m referto.pdf.p7m [--ca ca.pem]

Prints the signer, the signing time and OK; exits 1 with the reason otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from archive.models import Report
from archive.reporting import signing
from kernel.audit import audit_record
from kernel.models import AuditEvent

AUDIT_SYSTEM = "verify_report"


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"{what} {path} non si legge: {exc.strerror or exc}") from exc


class Command(BaseCommand):
    help = (
        "Verifica un referto firmato (CAdES separato): dall'archivio per id, oppure da file con --pdf e --p7m. "
        "Stampa firmatario, ora della firma e OK; esce con 1 e il motivo altrimenti."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("report_id", nargs="?", type=int, help="id del referto nell'archivio")
        parser.add_argument("--pdf", help="il PDF del referto")
        parser.add_argument("--p7m", help="la sua firma CAdES separata (DER)")
        parser.add_argument(
            "--ca", help="il certificato della CA attendibile (PEM); predefinito PACS_SIGNING_DIR/ca.pem"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        on_disk = opts["pdf"] or opts["p7m"]
        if (opts["report_id"] is None) == (not on_disk):
            raise CommandError("indicare l'id di un referto oppure --pdf e --p7m")
        if on_disk:
            if not (opts["pdf"] and opts["p7m"]):
                raise CommandError("--pdf e --p7m vanno indicati insieme")
            check = self._files(pdf=opts["pdf"], p7m=opts["p7m"], ca=opts["ca"])
            label = opts["pdf"]
        else:
            if opts["ca"]:
                raise CommandError(
                    "--ca vale solo con --pdf e --p7m: un referto dell'archivio si verifica con la sua CA"
                )
            check = self._stored(opts["report_id"])
            label = f"referto {opts['report_id']}"
        self._print(label, check)

    def _files(self, *, pdf: str, p7m: str, ca: str | None) -> signing.SignatureCheck:
        ca_pem = _read(ca, "la CA") if ca else None
        return signing.cades_verify_detached(data=_read(pdf, "il PDF"), signature=_read(p7m, "la firma"), ca_pem=ca_pem)

    def _stored(self, report_id: int) -> signing.SignatureCheck:
        from archive.reporting.services import report_verify

        report = Report.objects.select_related("study").filter(pk=report_id).first()
        if report is None:
            raise CommandError(f"nessun referto con id {report_id}")
        check = report_verify(report=report)
        audit_record(
            action="report.verify",
            outcome=AuditEvent.Outcome.SUCCESS if check.ok else AuditEvent.Outcome.FAILURE,
            system=AUDIT_SYSTEM,
            study=report.study,
            detail={"report": report.pk, "version": report.version, "ok": check.ok, "reason": check.reason},
        )
        return check

    def _print(self, label: str, check: signing.SignatureCheck) -> None:
        if check.signer_subject:
            self.stdout.write(f"firmatario: {check.signer_subject}")
        if check.signing_time is not None:
            when = timezone.localtime(check.signing_time)
            self.stdout.write(f"firmato il: {when:%d/%m/%Y %H:%M:%S %Z}")
        if not check.ok:
            raise CommandError(f"{label}: firma NON valida: {check.reason}")
        self.stdout.write(self.style.SUCCESS(f"{label}: OK, firma CAdES valida"))
