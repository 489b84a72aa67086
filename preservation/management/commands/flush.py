"""``manage.py flush``, as Django's, but the preservation's SQLite DELETE triggers let it empty the tables.

A flush removes everything -- the giornale, the registry, every other table
-- so it cannot hide one row; on PostgreSQL it is a TRUNCATE, which row
triggers do not see anyway (see :mod:`preservation.guard`).
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.flush import Command as DjangoFlush

from preservation.guard import whole_database_flush


class Command(DjangoFlush):
    def handle(self, **options: Any) -> None:
        with whole_database_flush():
            super().handle(**options)
