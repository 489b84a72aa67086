"""Download links: signed, bound to one user, expiring.

A link carries what it opens (``kind`` and the row's id) and the user it was
made for, signed with Django's :mod:`django.core.signing` (HMAC with the
SECRET_KEY and a salt of its own) and time-stamped. Reading it checks the
signature, the age (``PACS_PORTAL_LINK_SECONDS``) and the user: a link copied
to someone else, altered or too old opens nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import signing

from kernel.errors import Forbidden

SALT = "portal.download.v1"
KINDS = ("pdf", "p7m", "package")


class LinkRefused(Forbidden):
    """The link is not valid for this request: ``code`` is ``forged``, ``expired`` or ``other_user``
    (the page says it in words to the citizen)."""

    def __init__(self, code: str) -> None:
        super().__init__(f"download link refused: {code}", code=code)


@dataclass(frozen=True)
class Link:
    kind: str
    object_id: int


def link_token(*, user: Any, kind: str, object_id: int) -> str:
    """The signed token of a link to ``kind``/``object_id`` for ``user``."""
    if kind not in KINDS:
        raise ValueError(f"unknown link kind {kind!r}")
    return signing.dumps({"u": user.pk, "k": kind, "o": int(object_id)}, salt=SALT, compress=False)


def link_read(token: str, *, user: Any, max_age: int | None = None) -> Link:
    """What ``token`` opens for ``user``; raises :class:`LinkRefused`."""
    age = settings.PACS_PORTAL_LINK_SECONDS if max_age is None else max_age
    try:
        data = signing.loads(token, salt=SALT, max_age=age)
    except signing.SignatureExpired:
        raise LinkRefused("expired") from None
    except signing.BadSignature:
        raise LinkRefused("forged") from None
    if not isinstance(data, dict) or data.get("k") not in KINDS or not isinstance(data.get("o"), int):
        raise LinkRefused("forged")
    if data.get("u") != getattr(user, "pk", None):
        raise LinkRefused("other_user")
    return Link(kind=data["k"], object_id=data["o"])
