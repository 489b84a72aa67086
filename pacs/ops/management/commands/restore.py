"""Restore a backup into a NEW database and a NEW folder, then verify it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pacs.ops.backup import BackupError, restore, verify_in


class Command(BaseCommand):
    help = (
        "Check BACKUP against its manifest, restore its dump into the new database --database-url (created "
        "here; an existing one is refused) and its files into the new FOLDER, write FOLDER/restore.env, and "
        "run restore_verify on the result: exit 1 on any mismatch."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("backup", type=Path)
        parser.add_argument("folder", type=Path)
        parser.add_argument("--database-url", required=True, help="postgres://.../NEW_DATABASE")
        parser.add_argument("--no-verify", action="store_true", help="restore only")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            environment = restore(opts["backup"], opts["folder"], database_url=opts["database_url"])
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"restored into {opts['folder']}; its environment: {opts['folder'] / 'restore.env'}")
        if opts["no_verify"]:
            return
        done = verify_in(environment)
        self.stdout.write(done.stdout)
        if done.returncode != 0:
            raise CommandError(f"the restore does not verify:\n{done.stderr.strip()}")
