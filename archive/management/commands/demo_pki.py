"""Create the demo signing PKI: the demo CA and a key and certificate for each
named user (files that exist are kept).

    manage.py demo_pki radiologo radiologa
    manage.py demo_pki --signers      # every user allowed to sign reports
    manage.py demo_pki --officer conservatore   # with the preservation-officer role
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q

from archive.reporting import signing
from kernel.audit import audit_record

AUDIT_SYSTEM = "demo_pki"


class Command(BaseCommand):
    help = (
        "Crea la PKI dimostrativa: la CA e una chiave con certificato per ogni utente indicato "
        "(i file esistenti restano com'erano)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("usernames", nargs="*", help="utenti a cui dare chiave e certificato")
        parser.add_argument(
            "--signers", action="store_true", help="tutti gli utenti attivi con il permesso archive.sign_report"
        )
        parser.add_argument(
            "--officer",
            action="append",
            default=[],
            help="utente a cui dare un certificato con il ruolo di responsabile della conservazione (ripetibile)",
        )
        parser.add_argument("--directory", type=Path, help="predefinita PACS_SIGNING_DIR")

    def handle(self, *args: Any, **opts: Any) -> None:
        User = get_user_model()
        users = list(User.objects.filter(**{f"{User.USERNAME_FIELD}__in": opts["usernames"]}))
        officers = list(User.objects.filter(**{f"{User.USERNAME_FIELD}__in": opts["officer"]}))
        missing = (set(opts["usernames"]) - {u.get_username() for u in users}) | (
            set(opts["officer"]) - {u.get_username() for u in officers}
        )
        if missing:
            raise CommandError(f"utenti inesistenti: {', '.join(sorted(missing))}")
        if opts["signers"]:
            perm = Permission.objects.get(content_type__app_label="archive", codename="sign_report")
            signers = User.objects.filter(is_active=True).filter(
                Q(user_permissions=perm) | Q(groups__permissions=perm) | Q(is_superuser=True)
            )
            users += [u for u in signers.distinct() if u not in users]
        try:
            signing.demo_pki_create(users=users, directory=opts["directory"], preservation_officers=officers)
        except signing.SigningError as exc:
            raise CommandError(exc.message) from exc
        directory = opts["directory"] or signing.signing_directory()
        audit_record(
            action="pki.demo",
            system=AUDIT_SYSTEM,
            detail={
                "directory": str(directory),
                "users": [u.get_username() for u in users],
                "preservation_officers": [u.get_username() for u in officers],
            },
        )
        self.stdout.write(f"CA: {directory / 'ca.pem'}")
        for user in [*users, *(o for o in officers if o not in users)]:
            self.stdout.write(f"{user.get_username()}: {directory / 'users' / (user.get_username() + '.crt.pem')}")
