"""Run the storage lifecycle by hand, or see where it stands.

``manage.py lifecycle run``: one pass (copy what is due to the long-term tier,
evict, advance a scope migration); ``--until-done`` repeats passes until a
pass has nothing left to do. ``manage.py lifecycle status``: the backlog, the
scope migration's progress, the last fixity audit and open alerts.
``manage.py lifecycle fixity``: tonight's fixity audit now.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from archive import lifecycle


class Command(BaseCommand):
    help = "Run the storage lifecycle (run, fixity) or print its status."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["run", "status", "fixity"])
        parser.add_argument("--limit", type=int, default=None, help="Objects per batch.")
        parser.add_argument("--until-done", action="store_true", help="Repeat passes until nothing is left.")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "status":
            self._status()
            return
        if opts["action"] == "fixity":
            run = lifecycle.fixity_audit()
            self.stdout.write(
                f"fixity: {run.checked} checked, {run.ok} ok, {run.damaged} damaged, "
                f"{run.repaired} repaired, {run.unreadable} unreadable"
            )
            return
        while True:
            result = lifecycle.lifecycle_run(limit=opts["limit"])
            self.stdout.write(
                f"migrated {result.migrated}, evicted {result.evicted}, scope copied {result.scope_copied}, "
                f"scope released {result.scope_released}, failed {result.failed}"
            )
            self.stdout.flush()
            busy = result.migrated + result.evicted + result.scope_copied + result.scope_released
            if not opts["until_done"] or not busy or result.failed:
                break

    def _status(self) -> None:
        summary = lifecycle.storage_summary()
        w = self.stdout.write
        w(f"long-term scope: {summary['scope']}")
        for row in summary["tiers"]:
            w(f"  {row['tier']:<24} {row['objects']:>8} objects {row['bytes'] or 0:>14} bytes")
        w(f"to migrate: {summary['to_migrate']}, to evict: {summary['to_evict']}, unverified: {summary['unverified']}")
        migration = summary["migration"]
        if migration is not None:
            state = "done" if migration.finished_at else "running"
            w(
                f"scope migration to {migration.target_scope}: {state}, {migration.released}/{migration.total} "
                f"({migration.percent}%), failures {migration.failures}"
            )
        for run in summary["fixity_runs"][:1]:
            w(f"last fixity audit {run.started_at:%Y-%m-%d %H:%M}: {run.ok}/{run.checked} ok, {run.repaired} repaired")
        w(f"open alerts: {len(summary['alerts'])}")
