"""Verify the archive this process runs on, as after a restore: files, audit chains, giornale."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kernel.audit import AuditKeyError
from pacs.ops.backup import restore_verify


class Command(BaseCommand):
    help = (
        "Read every copy in a folder tier and every signed report's files and compare their SHA-256 with "
        "the index; check every instance has a matching copy, the audit chains and the giornale. "
        "Exit 1 naming each mismatch. Run it with a restore's environment (FOLDER/restore.env)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=100, help="problems printed at most (all are counted)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            report = restore_verify()
        except AuditKeyError as exc:
            raise CommandError(str(exc)) from exc
        for problem in report.problems[: opts["limit"]]:
            self.stderr.write(f"FAIL {problem}")
        summary = (
            f"{report.instances} instances, {report.copies_checked} copies read "
            f"({report.copies_elsewhere} on S3 not read), {report.reports_checked} signed reports, "
            f"{report.audit_events} audit events, {report.journal_entries} giornale entries"
        )
        if not report.ok:
            raise CommandError(f"verification failed: {len(report.problems)} problems. {summary}")
        self.stdout.write(f"restore verified: {summary}")
