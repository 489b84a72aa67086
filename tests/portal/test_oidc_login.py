"""The portal's side of the SPID/CIE login (mozilla-django-oidc): the login
page's doors, the redirect to the provider with PKCE, a nonce and the door
chosen, a login cancelled at the provider told in words and audited, and
nothing of it while ``PACS_OIDC_ENABLED`` is off. The whole flow against a
real provider is tests/idp and tests/interop/test_browser_spid.py."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from kernel.models import AuditEvent
from portal.accounts import citizen_account_create
from portal.auth import CitizenOIDCBackend
from tests.booking.conftest import MARIO_CF

OP = "https://broker.regione.example/oidc"


@pytest.fixture
def oidc(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = "fse-pacs"
    settings.OIDC_RP_CLIENT_SECRET = "segreto-di-prova"
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{OP}/authorize"
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{OP}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{OP}/userinfo"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{OP}/jwks"
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "portal.auth.CitizenOIDCBackend"]


def test_without_a_provider_the_portal_has_only_its_own_login(db: None) -> None:
    client = Client()
    page = client.get("/fse/accesso/").content.decode()
    assert "Entra con SPID" not in page and 'name="password"' in page
    assert client.get("/fse/oidc/authenticate/?via=spid").status_code == 404
    assert client.get("/fse/oidc/callback/?code=x&state=y").status_code == 404


def test_the_login_page_offers_spid_and_cie_and_keeps_the_password_for_desk_accounts(db: None, oidc: None) -> None:
    page = Client().get("/fse/accesso/?next=/fse/esami/7/").content.decode()
    assert 'href="/fse/oidc/authenticate/?via=spid&amp;next=/fse/esami/7/"' in page
    assert 'href="/fse/oidc/authenticate/?via=cie&amp;next=/fse/esami/7/"' in page
    assert "<details" in page and 'name="password"' in page  # the desk's demo accounts, folded away


@pytest.mark.parametrize("via", ["spid", "cie"])
def test_a_door_redirects_to_the_provider_with_pkce_a_nonce_and_the_door_chosen(db: None, oidc: None, via: str) -> None:
    client = Client()
    answer = client.get(f"/fse/oidc/authenticate/?via={via}&next=/fse/esami/7/")
    assert answer.status_code == 302
    url = urlsplit(answer["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{OP}/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["response_type"] == "code" and query["client_id"] == "fse-pacs"
    assert query["redirect_uri"] == "http://testserver/fse/oidc/callback/"
    assert query["scope"] == "openid profile email"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["nonce"] and query["state"]
    assert query["idp_hint"] == via
    assert client.session["oidc_login_next"] == "/fse/esami/7/"


def test_the_door_is_not_named_when_the_broker_takes_no_hint(db: None, oidc: None, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_OIDC_PROVIDER_PARAM = ""
    answer = Client().get("/fse/oidc/authenticate/?via=cie")
    assert "idp_hint" not in answer["Location"]


def test_a_login_cancelled_at_the_provider_is_told_and_audited(db: None, oidc: None) -> None:
    client = Client()
    start = client.get("/fse/oidc/authenticate/?via=spid")
    state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
    answer = client.get(f"/fse/oidc/callback/?error=access_denied&state={state}")
    assert answer.status_code == 302 and answer["Location"] == "/fse/accesso/"
    page = client.get("/fse/accesso/").content.decode().replace("&#x27;", "'")
    assert "Accesso annullato: non ha autorizzato l'invio dei suoi dati." in page
    assert state not in client.session.get("oidc_states", {})  # no replay of that state
    event = AuditEvent.objects.get(action="portal.login")
    assert event.outcome == AuditEvent.Outcome.FAILURE and event.detail["error"] == "access_denied"

    client.get(f"/fse/oidc/callback/?error=server_error&state={state}")
    page = client.get("/fse/accesso/").content.decode()
    assert "Accesso con SPID o CIE non riuscito" in page


def test_a_desk_account_with_a_password_is_the_same_account_through_spid(db: None) -> None:
    user = citizen_account_create(codice_fiscale=MARIO_CF, password="una-password-lunga-42")
    backend = CitizenOIDCBackend.__new__(CitizenOIDCBackend)
    claims = {"fiscal_number": f"TINIT-{MARIO_CF}", "given_name": "Mario", "family_name": "Rossi"}
    assert list(backend.filter_users_by_claims(claims)) == [user]
    assert backend.update_user(user, {**claims, "email": "mario@example.org"}).email == "mario@example.org"
