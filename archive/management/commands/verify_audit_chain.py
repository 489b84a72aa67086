"""Check that no audit event was changed or removed since it was written, and that the seals agree."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kernel.audit import AuditKeyError, audit_verify


class Command(BaseCommand):
    help = (
        "Verify every audit chain (HMAC, order, patient links), each seal of the chain heads "
        "(giornale, time stamp) and the database guards; exit 1 naming each place that fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=100, help="problems printed at most (all are counted)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            report = audit_verify()
        except AuditKeyError as exc:
            raise CommandError(str(exc)) from exc
        for note in report.notes:
            self.stdout.write(f"NOTE {note}")
        for problem in report.problems[: opts["limit"]]:
            self.stderr.write(f"FAIL {problem}")
        if len(report.problems) > opts["limit"]:
            self.stderr.write(f"... and {len(report.problems) - opts['limit']} more")
        if not report.seals_checked:
            seals = "seals not checked (no seal keeper installed)"
        elif report.seals:
            seals = f"{report.seals} seals checked, the last at {report.last_seal:%Y-%m-%d %H:%M:%S %Z}"
        else:
            seals = "no seal yet"
        summary = (
            f"{report.events} events in {report.chains} chains ({report.legacy} legacy, unkeyed SHA-256); "
            f"{seals}; {report.unsealed} events after the last seal of their chain"
        )
        if not report.ok:
            raise CommandError(f"audit log verification failed: {len(report.problems)} problems. {summary}")
        self.stdout.write(f"audit chain intact: {summary}")
