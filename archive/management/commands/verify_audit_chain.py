"""Check that no audit event was changed or removed since it was written."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from archive.audit import audit_chain_verify


class Command(BaseCommand):
    help = "Recompute the audit log's hash chain; exit 1 at the first row that does not fit."

    def handle(self, *args: Any, **opts: Any) -> None:
        report = audit_chain_verify()
        if not report.ok:
            raise CommandError(f"audit chain broken at event #{report.broken_at}: {report.reason}")
        self.stdout.write(f"audit chain intact: {report.checked} events")
