"""Authentication for the portal: throttling (django-axes) and the region's identity provider (OIDC).

:class:`ThrottleBackend` is django-axes' standalone backend, first in
``AUTHENTICATION_BACKENDS``: a login form's ``authenticate(request, ...)``
is refused once it is locked out. A call without a request (the test client's
``login``, a script) has nothing to throttle by and goes on to the next backend.

Two tiers lock out (:class:`TieredLockoutHandler`): a (username, address) pair
after ``AXES_FAILURE_LIMIT`` failures, and an address after
``PACS_LOGIN_ADDRESS_FAILURE_LIMIT`` failures whatever the usernames (one host
trying a password on many accounts), both for ``AXES_COOLOFF_MINUTES``. Every
login goes through them: the staff login, the citizen login, ``/api/token/``.

:class:`CitizenOIDCBackend` (mozilla-django-oidc) logs citizens in through
SPID or CIE: the identity provider's codice fiscale claim (SPID sends
``fiscalNumber`` as ``TINIT-<cf>``) names the account, created on first login.
It is enabled by ``PACS_OIDC_ENABLED`` and the ``OIDC_*`` settings; its two
views (:class:`CitizenOIDCLoginView`, :class:`CitizenOIDCCallbackView`) are
mozilla-django-oidc's, which say which door the citizen chose (SPID or CIE)
and tell a failed login in words. In the demo the provider is the IdP di
prova (``idp/``, its own process).
"""

from __future__ import annotations

import logging
from typing import Any

from axes.attempts import get_cool_off_threshold
from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db.models import Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from kernel.audit import audit_record
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale
from kernel.models import AuditEvent
from kernel.web import address_in, client_ip

from .accounts import citizen_account_create
from .models import CitizenAccount

logger = logging.getLogger(__name__)


class ThrottleBackend(AxesStandaloneBackend):
    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


class TieredLockoutHandler(AxesDatabaseHandler):
    """django-axes' database handler with an address tier beside the (username, address) one.

    The attempts are recorded per (username, address) as before
    (``AXES_LOCKOUT_PARAMETERS``); the address tier adds up the failures of every
    username from the request's address. A success resets its own pair only, so
    an attacker logging in with an account of their own does not wipe the count
    of the accounts they tried. Addresses in ``PACS_LOGIN_ADDRESS_EXEMPT`` (a
    hospital's NAT, whose staff share one address) have only the per-user tier.
    """

    def get_failures(self, request: Any, credentials: dict[str, Any] | None = None) -> int:
        failures = int(super().get_failures(request, credentials))
        address = getattr(request, "axes_ip_address", None)
        if not address or address_in(address, settings.PACS_LOGIN_ADDRESS_EXEMPT):
            return failures
        attempts = AccessAttempt.objects.filter(ip_address=address)
        if settings.AXES_COOLOFF_TIME is not None:
            attempts = attempts.filter(attempt_time__gte=get_cool_off_threshold(request))
        from_address = attempts.aggregate(n=Sum("failures_since_start"))["n"] or 0
        if from_address >= settings.PACS_LOGIN_ADDRESS_FAILURE_LIMIT:
            # Said in the failure count axes compares with its (per-user) limit.
            request.pacs_lockout_tier = "address"
            return max(failures, int(get_failure_limit(request, credentials)))
        return failures


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """django-axes' answer to a locked-out login: a page that says until when, audited."""
    username = str(
        (credentials or {}).get("username") or request.POST.get("username") or request.POST.get("codice_fiscale") or ""
    )
    audit_record(
        action="auth.lockout",
        outcome=AuditEvent.Outcome.DENIED,
        source=client_ip(request),
        detail={
            "username": username[:64],
            "path": request.path,
            "tier": getattr(request, "pacs_lockout_tier", "user"),
        },
    )
    minutes = round(float(settings.AXES_COOLOFF_TIME) * 60)
    return render(request, "portal/locked_out.html", {"minutes": minutes}, status=429)


def fiscal_code_from_claims(claims: dict[str, Any]) -> str:
    """The codice fiscale in the identity provider's claims ("" when absent or not valid)."""
    value = str(claims.get(settings.PACS_OIDC_FISCAL_CODE_CLAIM) or "")
    value = normalize_codice_fiscale(value)
    if value.startswith("TINIT-"):
        value = value[len("TINIT-") :]
    return "" if codice_fiscale_error(value) else value


class CitizenOIDCBackend(OIDCAuthenticationBackend):
    """SPID/CIE over OpenID Connect: the codice fiscale claim is the citizen's identity."""

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(fiscal_code_from_claims(claims))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        cf = fiscal_code_from_claims(claims)
        users = get_user_model().objects.filter(citizen__codice_fiscale=cf, is_active=True)
        return users if cf else users.none()

    def create_user(self, claims: dict[str, Any]) -> Any:
        return citizen_account_create(
            codice_fiscale=fiscal_code_from_claims(claims),
            email=str(claims.get("email") or ""),
            first_name=str(claims.get("given_name") or claims.get("name") or "")[:150],
            last_name=str(claims.get("family_name") or "")[:150],
            origin=CitizenAccount.Origin.OIDC,
        )

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        email = str(claims.get("email") or "")
        if email and email != user.email:
            user.email = email
            user.save(update_fields=["email"])
        return user


# The doors of the login page: "Entra con SPID", "Entra con CIE".
PROVIDERS = ("spid", "cie")


def _oidc_enabled() -> None:
    if not settings.PACS_OIDC_ENABLED:
        raise Http404(_("L'accesso con SPID o CIE non è attivo."))


class CitizenOIDCLoginView(OIDCAuthenticationRequestView):
    """The start of a SPID or CIE login (``?via=spid|cie``): a redirect to the provider."""

    def get(self, request: HttpRequest) -> HttpResponse:
        _oidc_enabled()
        return super().get(request)

    def get_extra_params(self, request: HttpRequest) -> dict[str, str]:
        params = dict(super().get_extra_params(request))
        via = request.GET.get("via", "")
        if settings.PACS_OIDC_PROVIDER_PARAM and via in PROVIDERS:
            params[settings.PACS_OIDC_PROVIDER_PARAM] = via
        return params


class CitizenOIDCCallbackView(OIDCAuthenticationCallbackView):
    """The provider's answer. A login that did not happen (cancelled at the
    provider, refused, no usable codice fiscale) goes back to the login page
    saying so, audited."""

    def get(self, request: HttpRequest) -> HttpResponse:
        _oidc_enabled()
        return super().get(request)

    def login_failure(self) -> HttpResponse:
        error = self.request.GET.get("error", "")
        audit_record(
            action="portal.login",
            outcome=AuditEvent.Outcome.FAILURE,
            source=client_ip(self.request),
            detail={"via": "oidc", "error": error[:64] or "not_authenticated"},
        )
        if error == "access_denied":
            messages.info(self.request, _("Accesso annullato: non ha autorizzato l'invio dei suoi dati."))
        else:
            messages.error(
                self.request,
                _(
                    "Accesso con SPID o CIE non riuscito. Riprovi; se il problema continua, si rivolga allo sportello CUP."
                ),
            )
        return super().login_failure()
