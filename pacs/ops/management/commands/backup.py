"""Back up the installation into a new folder: the database (pg_dump), the tiers' files, the keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pacs.ops.backup import BackupError, backup_make


class Command(BaseCommand):
    help = (
        "Write a backup into DIR (new or empty): pg_dump -Fc of the database, the folder tiers' files, "
        "the keys (audit, signing, TSA, the generated SECRET_KEY) and the --config paths, with a manifest "
        "of the SHA-256 of every file. Tiers on S3 are not copied (their bucket's versioning is their backup)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument(
            "--config",
            type=Path,
            action="append",
            default=[],
            help="a file or folder of the deployment to keep as well (repeatable): /etc/pacs",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            manifest = backup_make(opts["directory"], config=opts["config"])
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        size = sum(f["size"] for f in manifest["files"].values())
        self.stdout.write(
            f"backup written to {opts['directory']}: {len(manifest['files'])} files, {size} bytes; "
            + ", ".join(f"{kind} {where}" for kind, where in manifest["tiers"].items())
        )
