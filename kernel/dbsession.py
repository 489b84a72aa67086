"""What every PostgreSQL connection of the project sets when it opens (``connection_created``).

``jit = off`` (unless ``DB_JIT``): PostgreSQL compiles a statement with LLVM when its
estimated cost passes ``jit_above_cost`` (100,000 by default), and the access policy's
conditions put ordinary statements past it: a common surname's C-FIND wildcard (20-40 ms of
compiling for a query of a few ms, README "C-FIND fast road"), the radiologist's worklist at
an authority's 35,000 studies (up to 574 ms of compiling a statement: 3.3 s a page, 0.6 s
without). The project's statements are index lookups and short joins, which JIT never pays
back. Set on the connection, not as a startup parameter: a pooler passes a ``SET`` through,
where PgBouncer refuses an ``options`` startup parameter it does not track. A server
configured with ``jit = off`` needs none of this; ``DB_JIT=1`` leaves the server's setting.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings


def session_settings(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created``'s receiver: the session settings of a new PostgreSQL connection."""
    if connection.vendor != "postgresql" or getattr(settings, "DB_JIT", False):
        return
    with connection.cursor() as cursor:
        cursor.execute("SET jit = off")
