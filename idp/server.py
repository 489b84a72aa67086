"""The IdP di prova's OpenID Provider: Authlib's authorization server, configured.

One client, the portal (``IDP_CLIENT_ID``, its secret from :mod:`idp.keys`,
its callbacks ``IDP_REDIRECT_URIS``). One flow, SPID's and CIE's over OpenID
Connect: the authorization code with PKCE (S256, required) and a nonce
(required), the code good once and for ``IDP_CODE_SECONDS``, an ID token
signed RS256 with the key published at the JWKS, the claims at userinfo.

Codes and access tokens are kept in the IdP's own cache (``idp.settings``),
shared by its workers. A code is claimed by deleting it: of two requests
presenting the same code only the one whose delete succeeded goes on, so a
code is never exchanged twice, even by two workers at once.
"""

from __future__ import annotations

import functools
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.django_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin, InvalidGrantError, InvalidRequestError, TokenMixin
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode
from django.conf import settings
from django.core.cache import cache
from joserfc.jwk import RSAKey

from . import keys
from .identities import Identity

CODE = "idp:code:"
TOKEN = "idp:token:"
NONCE = "idp:nonce:"

SCOPES = ("openid", "profile", "email")
# SPID's levels as ACR values; the CIE's login is a level 3 one.
ACR = {"spid": "https://www.spid.gov.it/SpidL2", "cie": "https://www.spid.gov.it/SpidL3"}
PROVIDERS = ("spid", "cie")


# --- the portal, the IdP's one client ---------------------------------------------


@dataclass(frozen=True)
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # OpenID Connect: the request names its redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact match, as OpenID Connect asks

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass(frozen=True)
class Config:
    """The IdP's settings (``idp.settings``; the type checker reads the project's)."""

    issuer: str
    client_id: str
    redirect_uris: tuple[str, ...]
    code_seconds: int
    access_token_seconds: int


@functools.cache
def config() -> Config:
    return Config(
        issuer=str(getattr(settings, "IDP_ISSUER")),  # noqa: B009
        client_id=str(getattr(settings, "IDP_CLIENT_ID")),  # noqa: B009
        redirect_uris=tuple(getattr(settings, "IDP_REDIRECT_URIS")),  # noqa: B009
        code_seconds=int(getattr(settings, "IDP_CODE_SECONDS")),  # noqa: B009
        access_token_seconds=int(getattr(settings, "IDP_ACCESS_TOKEN_SECONDS")),  # noqa: B009
    )


@functools.cache
def portal_client() -> Client:
    return Client(
        client_id=config().client_id,
        client_secret=keys.client_secret(settings.VAR_DIR),
        redirect_uris=config().redirect_uris,
    )


@functools.cache
def signing_key() -> RSAKey:
    return keys.signing_key(settings.VAR_DIR)


def jwks() -> dict[str, Any]:
    """The public half of the signing key, as a JSON Web Key Set."""
    return {"keys": [signing_key().as_dict(private=False, use="sig", alg="RS256")]}


# --- what is kept between the steps ------------------------------------------------


@dataclass
class StoredCode(AuthorizationCodeMixin):
    data: dict[str, Any]

    def get_redirect_uri(self) -> str:
        return str(self.data["redirect_uri"])

    def get_scope(self) -> str:
        return str(self.data["scope"])

    def get_nonce(self) -> str | None:
        return self.data.get("nonce")

    def get_auth_time(self) -> int:
        return int(self.data["auth_time"])

    def get_acr(self) -> str:
        return str(self.data["acr"])

    def get_amr(self) -> list[str]:
        return list(self.data["amr"])

    @property
    def code_challenge(self) -> str:
        return str(self.data["code_challenge"])

    @property
    def code_challenge_method(self) -> str:
        return str(self.data["code_challenge_method"])


@dataclass
class StoredToken(TokenMixin):
    data: dict[str, Any]
    client: Client = field(default_factory=portal_client)

    @property
    def scope(self) -> str:
        return str(self.data["scope"])

    def check_client(self, client: ClientMixin) -> bool:
        return client.get_client_id() == self.data["client_id"]

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.data["expires_in"])

    def is_expired(self) -> bool:
        return time.time() >= float(self.data["issued_at"]) + self.get_expires_in()

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> Identity:
        return Identity.from_dict(self.data["identity"])

    def get_client(self) -> Client:
        return self.client


# --- the grant and its extensions ----------------------------------------------------


def user_claims(identity: Identity, scope: str) -> dict[str, Any]:
    """The claims the IdP sends for ``scope``: SPID's attributes, with the
    codice fiscale as ``fiscal_number`` (``TINIT-<cf>``)."""
    scopes = set(scope.split())
    claims: dict[str, Any] = {"sub": identity.sub}
    if "profile" in scopes:
        claims.update(
            given_name=identity.given_name, family_name=identity.family_name, fiscal_number=identity.fiscal_number
        )
    if "email" in scopes and identity.email:
        claims.update(email=identity.email, email_verified=False)
    return claims


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        payload = request.payload
        provider = payload.data.get("idp_hint") if payload.data.get("idp_hint") in PROVIDERS else "spid"
        data = {
            "client_id": request.client.get_client_id(),
            "redirect_uri": payload.redirect_uri,
            "scope": request.scope,
            "identity": request.user.as_dict(),
            "nonce": payload.data.get("nonce"),
            "code_challenge": payload.data.get("code_challenge"),
            "code_challenge_method": payload.data.get("code_challenge_method") or "S256",
            "auth_time": int(time.time()),
            "acr": ACR[provider],
            "amr": [provider],
        }
        cache.set(CODE + code, data, config().code_seconds)
        if data["nonce"]:
            cache.set(f"{NONCE}{data['client_id']}:{data['nonce']}", 1, 24 * 3600)

    def query_authorization_code(self, code: str, client: Client) -> StoredCode:
        data = cache.get(CODE + code)
        # Claimed by its deletion: only one request gets True (see the module's docstring).
        if data is None or data["client_id"] != client.get_client_id() or not cache.delete(CODE + code):
            raise InvalidGrantError(
                description="The authorization code is unknown, expired or already used (a code is good once)."
            )
        return StoredCode(data)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        pass  # deleted when claimed

    def authenticate_user(self, authorization_code: StoredCode) -> Identity:
        return Identity.from_dict(authorization_code.data["identity"])


class RequiredPKCE(CodeChallenge):
    """PKCE for every request, S256 only (as the SPID/CIE OpenID Connect rules ask)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Only code_challenge_method=S256 is supported.")
        super().validate_code_challenge(grant, redirect_uri)


class IdTokens(OpenIDCode):
    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return cache.get(f"{NONCE}{request.payload.client_id}:{nonce}") is not None

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return signing_key()

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": "RS256", "kid": str(signing_key().kid)}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {"iss": config().issuer, "aud": [client.get_client_id()]}

    def generate_user_info(self, user: Identity, scope: str) -> dict[str, Any]:
        return user_claims(user, scope)


# --- the server -------------------------------------------------------------------------


class Server(AuthorizationServer):
    def __init__(self) -> None:
        super().__init__(client_model=None, token_model=None)
        self.load_config({"token_expires_in": {CodeGrant.GRANT_TYPE: config().access_token_seconds}})
        self.register_grant(CodeGrant, [RequiredPKCE(required=True), IdTokens(require_nonce=True)])

    def query_client(self, client_id: str) -> Client | None:
        client = portal_client()
        return client if client_id == client.client_id else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        data = {
            "client_id": request.client.get_client_id(),
            "scope": token.get("scope", ""),
            "identity": request.user.as_dict(),
            "issued_at": time.time(),
            "expires_in": int(token["expires_in"]),
        }
        cache.set(TOKEN + token["access_token"], data, int(token["expires_in"]))


class CachedBearer(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> StoredToken | None:
        data = cache.get(TOKEN + token_string)
        return StoredToken(data) if data else None


server = Server()
require_oauth = ResourceProtector()
require_oauth.register_token_validator(CachedBearer())


def discovery() -> dict[str, Any]:
    """The OpenID Provider's metadata (``/.well-known/openid-configuration``)."""
    issuer = config().issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize/",
        "token_endpoint": f"{issuer}/token/",
        "userinfo_endpoint": f"{issuer}/userinfo/",
        "jwks_uri": f"{issuer}/jwks.json",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": list(CodeGrant.TOKEN_ENDPOINT_AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
        "acr_values_supported": list(ACR.values()),
        "claims_supported": ["sub", "iss", "aud", "given_name", "family_name", "fiscal_number", "email"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "ui_locales_supported": ["it", "en"],
    }
