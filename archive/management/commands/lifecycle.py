"""Run the storage lifecycle by hand, or see where it stands.

``manage.py lifecycle run``: one pass (copy what is due to the long-term tier,
evict, advance a scope migration); ``--until-done`` repeats passes until
nothing that can move is left -- a pass that moved nothing and met no new
failure -- then prints what is stuck and why (copies whose sources are
damaged wait for their next try, skipped meanwhile; see
:func:`archive.storage.lifecycle.copy_failure_record`). ``manage.py lifecycle
status``: the backlog, the scope migration's progress, stuck copies, the last
fixity audit and open alerts. ``manage.py lifecycle fixity``: tonight's
fixity audit now.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from archive.storage import lifecycle


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
        seen: set[tuple[int, str]] = set()
        while True:
            result = lifecycle.lifecycle_run(limit=opts["limit"])
            if result.skipped:
                self.stdout.write("another lifecycle pass is running (beat's, or another host's): nothing done")
                break
            self.stdout.write(
                f"migrated {result.migrated}, evicted {result.evicted}, scope copied {result.scope_copied}, "
                f"scope released {result.scope_released}, failed {result.failed}, files removed {result.removed}"
            )
            self.stdout.flush()
            busy = result.migrated + result.evicted + result.scope_copied + result.scope_released
            new_failures = result.failed_objects - seen
            seen |= result.failed_objects
            # A failure moves the queue on too: the object waits and the next pass takes others.
            if not opts["until_done"] or (not busy and not new_failures):
                break
        if opts["until_done"]:
            self._stuck()

    def _stuck(self) -> None:
        stuck = lifecycle.copies_stuck(limit=1000)
        self.stdout.write(f"stuck: {len(stuck)}")
        for row in stuck:
            why = "sources damaged" if row.damaged else "store unreachable"
            self.stdout.write(
                f"  {row.instance.sop_instance_uid} -> {row.tier or '?'} ({row.step}, {why}): "
                f"{row.attempts} attempts, next try {timezone.localtime(row.next_try_at):%Y-%m-%d %H:%M}, {row.last_error}"
            )

    def _status(self) -> None:
        summary = lifecycle.storage_summary()
        w = self.stdout.write
        w(f"long-term scope: {summary['scope']}")
        for row in summary["tiers"]:
            w(f"  {row['tier']:<24} {row['objects']:>8} objects {row['bytes'] or 0:>14} bytes")
        w(
            f"to migrate: {summary['to_migrate']}, to evict: {summary['to_evict']}, unverified: {summary['unverified']}, "
            f"file removals pending: {summary['removals_pending']}"
        )
        migration = summary["migration"]
        if migration is not None:
            state = "done" if migration.finished_at else "running"
            w(
                f"scope migration to {migration.target_scope}: {state}, {migration.released}/{migration.total} "
                f"({migration.percent}%), failures {migration.failures}"
            )
        w(f"stuck copies: {summary['stuck_count']}")
        for run in summary["fixity_runs"][:1]:
            w(f"last fixity audit {run.started_at:%Y-%m-%d %H:%M}: {run.ok}/{run.checked} ok, {run.repaired} repaired")
        w(f"open alerts: {len(summary['alerts'])}")
