"""API tokens: stored hashed, expiring, for staff and service accounts only.

A client exchanges a username and password for a token at ``POST /api/token/``
and sends it as ``Authorization: Token <key>`` (DICOMweb viewers and scripts,
the external CUP systems) or, the same token, as ``Authorization: Bearer <key>``
(RFC 6750's scheme, the one OHIF and most DICOMweb viewers send). The tokens are django-rest-knox's: the database
keeps a SHA-512 digest and the first characters of the key (to find it), never
the key, and each token expires ``PACS_API_TOKEN_HOURS`` after it was issued.

Who may have one: an active account that is not a citizen's (citizens use the
portal, with its own login and session limits) and holds at least one
permission: a member of staff, or a *service account*, an account without
``is_staff`` (so without the admin site) that a system such as an external
CUP uses. A citizen, or an account with no permission at all, is refused (403).

The plain tokens of DRF's ``authtoken`` app, stored in clear, were dropped
(migration ``archive.0013``) rather than converted: any copy of the database
held them, so they are to be taken as disclosed. Clients ask for a new token.
"""

from __future__ import annotations

import binascii
import datetime as dt
import logging
from dataclasses import dataclass
from hmac import compare_digest
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.models import TextField
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.translation import gettext as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox.auth import TokenAuthentication
from knox.crypto import hash_token
from knox.models import AuthToken
from knox.settings import CONSTANTS
from rest_framework import exceptions
from rest_framework.authentication import get_authorization_header

from kernel.errors import Forbidden
from kernel.querycache import Slot, compiled

from . import access

logger = logging.getLogger(__name__)


class TokenRefused(Forbidden):
    """The account may not have an API token; ``code``: ``inactive``, ``citizen``, ``no_permission``."""


@dataclass(frozen=True)
class IssuedToken:
    key: str  # shown once, to the client that asked; the database has only its digest
    expiry: dt.datetime
    token: AuthToken


def api_token_refusal(user: Any) -> TokenRefused | None:
    """Why ``user`` may not have an API token; None when it may."""
    if user is None or not getattr(user, "is_active", False):
        return TokenRefused(_("Account non attivo."), code="inactive")
    if access.principal_for_user(user).is_citizen:
        return TokenRefused(
            _("I cittadini accedono dal Fascicolo sanitario elettronico, non con un token API."), code="citizen"
        )
    if not (user.is_superuser or user.get_all_permissions()):
        return TokenRefused(_("L'account non ha alcun permesso sull'archivio: nessun token."), code="no_permission")
    return None


def api_token_issue(*, user: Any) -> IssuedToken:
    """A new token for ``user``, valid ``PACS_API_TOKEN_HOURS``.

    The user's expired tokens are removed, and past ``PACS_API_TOKENS_PER_USER``
    live tokens the oldest go, so that a client asking for a token per call
    does not fill the table.

    Raises
    ------
    TokenRefused
        The account may not have a token (a citizen, no permission, inactive).
    """
    refusal = api_token_refusal(user)
    if refusal is not None:
        raise refusal
    now = timezone.now()
    AuthToken.objects.filter(user=user, expiry__lt=now).delete()
    keep = max(settings.PACS_API_TOKENS_PER_USER - 1, 0)
    stale = list(AuthToken.objects.filter(user=user).order_by("-created").values_list("digest", flat=True)[keep:])
    if stale:
        AuthToken.objects.filter(digest__in=stale).delete()
        logger.info("revoked %d older API tokens of %s (over PACS_API_TOKENS_PER_USER)", len(stale), user)
    token, key = AuthToken.objects.create(user=user, expiry=dt.timedelta(hours=settings.PACS_API_TOKEN_HOURS))
    assert token.expiry is not None
    return IssuedToken(key=key, expiry=token.expiry, token=token)


def api_token_revoke(*, token: AuthToken) -> None:
    """Revoke one token (its client logs out)."""
    AuthToken.objects.filter(digest=token.digest).delete()


# The schemes of the Authorization header that carry an API token (RFC 7235: case-insensitive).
TOKEN_SCHEMES = (b"token", b"bearer")


# Why a Bearer credential was refused, kept on the request: DRF asks the challenge
# of a new instance of the authenticator, not of the one that refused.
_BEARER_ERROR = "_pacs_bearer_error"


def _bearer_error_set(request: Any, error: str) -> None:
    setattr(getattr(request, "_request", request), _BEARER_ERROR, error)


class ApiTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>`` or ``Authorization: Bearer <key>`` against the
    hashed, expiring tokens.

    The two schemes are one credential: the same token, expiry, access policy and
    audit; Bearer is what OHIF and other DICOMweb viewers send (RFC 6750 2.1).
    A 401 challenges with both (``WWW-Authenticate: Token, Bearer``); when a
    Bearer token was refused, the Bearer challenge says why as RFC 6750 3.1
    asks (``error="invalid_token"``, or ``"invalid_request"`` for a header
    without one token).

    Unlike knox's own class, a request looks at its token only (knox also
    sweeps the user's other expired tokens on every request: one query more
    per call; they are swept when the user next gets a token), an expired
    token is told apart from an unknown one only to whoever holds its key,
    and a key that is not UTF-8 is an invalid token (401), not a server error.
    """

    def authenticate(self, request: Any) -> tuple[Any, AuthToken] | None:
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() not in TOKEN_SCHEMES:
            return None  # no header, or another scheme: the next authenticator's
        bearer = auth[0].lower() == b"bearer"
        if len(auth) != 2:
            if bearer:
                _bearer_error_set(request, "invalid_request")
            if len(auth) == 1:
                detail = _("Intestazione Authorization senza token: si scrive 'Bearer <token>' o 'Token <token>'.")
                raise exceptions.AuthenticationFailed(detail, code="token_missing")
            raise exceptions.AuthenticationFailed(_("Il token non può contenere spazi."), code="token_malformed")
        try:
            return self.authenticate_credentials(auth[1])
        except exceptions.AuthenticationFailed:
            if bearer:
                _bearer_error_set(request, "invalid_token")
            raise

    def authenticate_header(self, request: Any) -> str:
        error = getattr(getattr(request, "_request", request), _BEARER_ERROR, "")
        return f'Token, Bearer error="{error}"' if error else "Token, Bearer"

    def authenticate_credentials(self, token: bytes) -> tuple[Any, AuthToken]:
        invalid = exceptions.AuthenticationFailed(_("Token non valido."), code="token_invalid")
        try:
            key = token.decode("utf-8")
            digest = hash_token(key)
        except (UnicodeDecodeError, TypeError, binascii.Error):
            raise invalid from None
        # Its SQL compiled once per process (kernel.querycache): the same statement, run again.
        # The user, their permissions and what the access policy's principal needs to know of
        # them come with the token: one round trip for the request's authentication and principal.
        facts = access.principal_facts_slots()

        def build(key: str, since: Any = None, now: Any = None) -> Any:
            query = (
                AuthToken.objects.filter(token_key=key)
                .select_related("user")
                .annotate(**{_PERMISSIONS: RawSQL(_permissions_sql(), [], output_field=TextField())})
            )
            if facts is not None:
                query = query.annotate(
                    **access.principal_facts(user_ref="user_id", prefix="user__", since=since, now=now)
                )
            return query

        window, values = facts if facts is not None else ([], {})
        key_shape = ("archive.api_tokens.token", access.policy_extension(), facts is not None)
        query = compiled(key_shape, [_KEY, *window], build)
        for auth_token in query.fetch(key=key[: CONSTANTS.TOKEN_KEY_LENGTH], **values):
            if not compare_digest(digest, auth_token.digest):
                continue
            if self._cleanup_token(auth_token):
                raise exceptions.AuthenticationFailed(
                    _("Token scaduto: chiederne uno nuovo a /api/token/."), code="token_expired"
                )
            user, auth_token = self.validate_user(auth_token)
            permissions_set(user, getattr(auth_token, _PERMISSIONS))
            if facts is not None:
                access.principal_facts_keep(user, auth_token)
            return user, auth_token
        raise invalid

    def _cleanup_token(self, auth_token: AuthToken) -> bool:
        if auth_token.expiry is not None and auth_token.expiry < timezone.now():
            auth_token.delete()
            return True
        return False


def expired_tokens_purge(*, batch: int = 10_000) -> int:
    """Delete the tokens whose expiry has passed, ``batch`` at a time (short transactions); the count."""
    now = timezone.now()
    total = 0
    while True:
        keys = list(AuthToken.objects.filter(expiry__lt=now).values_list("digest", flat=True)[:batch])
        if not keys:
            return total
        total += AuthToken.objects.filter(digest__in=keys, expiry__lt=now).delete()[0]


def permissions_set(user: Any, joined: str | None) -> None:
    """Fill ``user``'s permission cache (the one ``ModelBackend`` keeps on the user object)
    from the names :func:`_permissions_sql` read with the user's token (space-separated, None
    for none), instead of ModelBackend's two queries: a token's request asks ``has_perm``
    several times (the view's permission, the access policy). The set is the one ModelBackend
    would compute; a superuser's is left to ModelBackend."""
    if not user.is_active or user.is_superuser or hasattr(user, "_perm_cache"):
        return
    user._perm_cache = set(joined.split()) if joined else set()


_PERMISSIONS = "pacs_permissions"


def _permissions_sql() -> str:
    """The token's user's permissions, their own and their groups', as a correlated subquery
    of the token's query: each ``app_label.codename``, space-separated (neither has spaces).

    Each set of grants is read through its index on the user (``permission IN (...) OR
    permission IN (...)``). Not the joins Django builds for ``Q(user=user) |
    Q(group__user=user)``: their OR sits above the joins, so PostgreSQL reads every grant of
    every user and every member of every group (11 ms with 5,000 users in one group, 9.4 s
    when each also held 8 permissions of their own), on every request a token makes."""
    q = connection.ops.quote_name
    User = get_user_model()

    def table(model: Any) -> str:
        return q(model._meta.db_table)

    def column(model: Any, name: str) -> str:
        return q(model._meta.get_field(name).column)

    own, member, granted = User.user_permissions.through, User.groups.through, Group.permissions.through
    token_user = f"{table(AuthToken)}.{column(AuthToken, 'user')}"
    name = f"ct.{column(ContentType, 'app_label')} || '.' || p.{column(Permission, 'codename')}"
    joined = f"STRING_AGG({name}, ' ')" if connection.vendor == "postgresql" else f"GROUP_CONCAT({name}, ' ')"
    permission = f"p.{column(Permission, 'id')}"
    return (
        f"SELECT {joined} FROM {table(Permission)} p JOIN {table(ContentType)} ct"
        f" ON ct.{column(ContentType, 'id')} = p.{column(Permission, 'content_type')}"
        f" WHERE {permission} IN (SELECT {column(own, 'permission')} FROM {table(own)}"
        f" WHERE {column(own, 'user')} = {token_user})"
        f" OR {permission} IN (SELECT {column(granted, 'permission')} FROM {table(granted)}"
        f" WHERE {column(granted, 'group')} IN (SELECT {column(member, 'group')} FROM {table(member)}"
        f" WHERE {column(member, 'user')} = {token_user}))"
    )


_KEY = Slot("key")


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """The token in the OpenAPI description: ``Authorization: Token <key>`` (or ``Bearer <key>``)."""

    target_class = "archive.api_tokens.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> Any:
        definition = build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Token")
        definition["description"] = (
            "Token from POST /api/token/ (username and password of a staff or service account), "
            "sent as 'Authorization: Token <key>' or, the same token, 'Authorization: Bearer <key>'. "
            f"It expires {settings.PACS_API_TOKEN_HOURS:g} hours "
            "after it was issued; DELETE /api/token/ revokes it."
        )
        return definition
