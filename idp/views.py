"""The IdP di prova's pages and endpoints.

The login is two pages, as on SPID's test IdPs: choose (or type) the identity,
then "Autorizza" on a page that lists the attributes the portal will receive.
Both forms post to the authorization address itself, its query string (the
portal's request) unchanged, and Authlib validates that request again at each
step: nothing is kept between them. A request that cannot be answered to the
portal (unknown client, a callback address not registered) gets an error page
here; any other error goes back to the portal as OAuth 2.0 says.
"""

from __future__ import annotations

import logging
from typing import Any

from authlib.oauth2 import OAuth2Error
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .identities import Identity, UnknownIdentity, demo_identities, identity_find
from .server import PROVIDERS, discovery, jwks, require_oauth, server, user_claims

logger = logging.getLogger(__name__)


@require_GET
def openid_configuration(request: HttpRequest) -> JsonResponse:
    return JsonResponse(discovery())


@require_GET
def jwks_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(jwks())


@csrf_exempt  # called by the portal's server, authenticated by the client secret
@require_POST
def token(request: HttpRequest) -> HttpResponse:
    return server.create_token_response(request)


@csrf_exempt
@require_http_methods(["GET", "POST"])
@require_oauth("openid")
def userinfo(request: HttpRequest) -> JsonResponse:
    access = request.oauth_token  # type: ignore[attr-defined]  # set by require_oauth
    return JsonResponse(user_claims(access.get_user(), access.get_scope()))


def _error_page(request: HttpRequest, error: OAuth2Error) -> HttpResponse:
    logger.warning("authorization request refused: %s %s", error.error, error.description)
    return render(request, "idp/error.html", {"error": error.error, "description": error.description or ""}, status=400)


def _attributes(identity: Identity, scope: str) -> list[tuple[str, str]]:
    """What the portal will receive, in the citizen's words (the consent page's list)."""
    rows = [(_("Codice fiscale"), identity.codice_fiscale)]
    if "profile" in scope.split():
        rows += [(_("Nome"), identity.given_name), (_("Cognome"), identity.family_name)]
    if "email" in scope.split() and identity.email:
        rows.append((_("Indirizzo e-mail"), identity.email))
    return rows


@never_cache
@require_http_methods(["GET", "POST"])
def authorize(request: HttpRequest) -> HttpResponseBase:
    try:
        grant = server.get_consent_grant(request)
    except OAuth2Error as error:
        if error.redirect_uri:
            return server.handle_error_response(request, error)
        return _error_page(request, error)

    provider = request.GET.get("idp_hint") if request.GET.get("idp_hint") in PROVIDERS else "spid"
    context: dict[str, Any] = {
        "provider": provider,
        "provider_name": "CIE" if provider == "cie" else "SPID",
        "client_id": grant.client.get_client_id(),
        "demo": demo_identities(),
    }
    step = request.POST.get("step") if request.method == "POST" else ""

    if step == "deny":
        return server.create_authorization_response(request, grant_user=None, grant=grant)

    if step in ("identity", "consent"):
        try:
            identity = identity_find(request.POST.get("codice_fiscale", ""))
        except UnknownIdentity as exc:
            context.update(error=str(exc), codice_fiscale=request.POST.get("codice_fiscale", "")[:32])
            return render(request, "idp/login.html", context, status=400)
        if step == "consent":
            return server.create_authorization_response(request, grant_user=identity, grant=grant)
        context.update(identity=identity, attributes=_attributes(identity, grant.request.scope or ""))
        return render(request, "idp/consent.html", context)

    return render(request, "idp/login.html", context)
