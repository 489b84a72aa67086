"""The IdP di prova as an OpenID Provider, over HTTP to its own gunicorn
process: its discovery document, the code flow with PKCE, the ID token checked
with the published JWKS, userinfo, and the requests it must refuse (a wrong
client secret, a callback address not registered, a code used twice, no PKCE
or the wrong verifier, an unknown codice fiscale), each with a clear error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup
from tests.idp_helpers import Idp, authorization_params, authorize, idp_running, token_request

cup = booking_fixtures.cup
REDIRECT = "http://127.0.0.1:9/fse/oidc/callback/"  # never followed: the tests read the redirect
NOBODY_CF = "VRDNNA85D58L424X"  # Verdi Anna, Trieste, 18 April 1985: not in the registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def idp(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    with django_db_blocker.unblock():
        with idp_running(redirect_uris=[REDIRECT], log_path=tmp_path_factory.mktemp("idp") / "idp.log") as running:
            yield running


def _id_token_claims(idp: Idp, id_token: str) -> dict[str, Any]:
    """The ID token's claims, its RS256 signature checked with the keys the IdP publishes."""
    keyset = KeySet.import_key_set(requests.get(idp.endpoint("jwks"), timeout=10).json())
    token = jwt.decode(id_token, keyset, algorithms=["RS256"])
    assert token.header["alg"] == "RS256" and token.header["kid"] == keyset.keys[0].kid
    return dict(token.claims)


def test_discovery_names_the_endpoints_and_what_the_provider_supports(idp: Idp) -> None:
    answer = requests.get(idp.endpoint("discovery"), timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    meta = answer.json()
    assert meta["issuer"] == idp.url
    assert meta["authorization_endpoint"] == idp.endpoint("authorize")
    assert meta["token_endpoint"] == idp.endpoint("token")
    assert meta["userinfo_endpoint"] == idp.endpoint("userinfo")
    assert meta["jwks_uri"] == idp.endpoint("jwks")
    assert meta["response_types_supported"] == ["code"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "fiscal_number" in meta["claims_supported"]
    from authlib.oidc.discovery import OpenIDProviderMetadata

    OpenIDProviderMetadata(meta).validate()  # what the OpenID Connect Discovery spec requires
    jwks = requests.get(idp.endpoint("jwks"), timeout=10).json()
    assert [(k["kty"], k["use"], k["alg"]) for k in jwks["keys"]] == [("RSA", "sig", "RS256")]
    assert "d" not in jwks["keys"][0], "the private half stays home"


def test_the_code_flow_with_pkce_gives_a_signed_id_token_and_the_spid_claims(
    transactional_db: None, idp: Idp, cup: Cup
) -> None:
    cup.book(cup.laura, contact_email="laura.bianchi@example.org")
    auth = authorize(idp, LAURA_CF.lower(), idp_hint="cie")
    assert auth.response.status_code == 302, auth.response.text[:2000]
    assert auth.response.headers["Location"].startswith(REDIRECT)
    assert auth.callback["state"] == auth.state

    answer = token_request(idp, auth.callback["code"], auth.verifier)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    tokens = answer.json()
    assert tokens["token_type"].lower() == "bearer"

    claims = _id_token_claims(idp, tokens["id_token"])
    assert claims["iss"] == idp.url and claims["aud"] == [idp.client_id]
    assert claims["nonce"] == auth.nonce
    assert claims["acr"] == "https://www.spid.gov.it/SpidL3" and claims["amr"] == ["cie"]
    assert claims["fiscal_number"] == f"TINIT-{LAURA_CF}"
    assert claims["sub"] != LAURA_CF and LAURA_CF not in claims["sub"]

    info = requests.get(
        idp.endpoint("userinfo"), headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=10
    )
    assert info.status_code == 200, info.text
    assert info.json() == {
        "sub": claims["sub"],
        "given_name": "Laura",
        "family_name": "Bianchi",
        "fiscal_number": f"TINIT-{LAURA_CF}",
        "email": "laura.bianchi@example.org",
        "email_verified": False,
    }
    refused = requests.get(idp.endpoint("userinfo"), headers={"Authorization": "Bearer nonsense"}, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"


def test_refusing_at_the_consent_page_sends_access_denied_and_no_code(
    transactional_db: None, idp: Idp, cup: Cup
) -> None:
    auth = authorize(idp, MARIO_CF, decision="deny")
    assert auth.response.status_code == 302
    assert auth.callback["error"] == "access_denied" and "code" not in auth.callback
    assert auth.callback["state"] == auth.state


def test_the_pages_offer_the_demo_citizens_and_list_what_the_portal_will_receive(
    transactional_db: None, idp: Idp, cup: Cup
) -> None:
    params, _verifier = authorization_params(idp, idp_hint="cie")
    browser = requests.Session()
    page = browser.get(idp.endpoint("authorize"), params=params, timeout=10)
    assert page.status_code == 200
    assert "Entra con CIE" in page.text and "IdP di prova" in page.text
    # Mario Rossi and Laura Bianchi of the CUP's fixture are demo citizens too: one click each.
    assert f'value="{MARIO_CF}"' in page.text and f'value="{LAURA_CF}"' in page.text
    token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    consent = browser.post(
        page.url,
        data={"csrfmiddlewaretoken": token, "step": "identity", "codice_fiscale": MARIO_CF},
        timeout=10,
        allow_redirects=False,
    )
    assert consent.status_code == 200
    for text in ("Autorizza", "Codice fiscale", MARIO_CF, "Nome", "Mario", "Cognome", "Rossi"):
        assert text in consent.text
    assert "Indirizzo e-mail" not in consent.text  # none known for him


def test_an_unknown_codice_fiscale_is_refused_on_the_page(transactional_db: None, idp: Idp, cup: Cup) -> None:
    auth = authorize(idp, "VRDNNA85D58L424Y")  # a wrong check character
    assert auth.response.status_code == 400 and "Location" not in auth.response.headers
    assert "carattere di controllo" in auth.response.text
    auth = authorize(idp, NOBODY_CF)  # well formed, nobody registered with it
    assert auth.response.status_code == 400 and "Location" not in auth.response.headers
    assert f"Nessuna identità di prova con il codice fiscale {NOBODY_CF}" in auth.response.text


def test_a_wrong_client_secret_is_refused(transactional_db: None, idp: Idp, cup: Cup) -> None:
    auth = authorize(idp, MARIO_CF)
    answer = token_request(idp, auth.callback["code"], auth.verifier, secret="not-the-secret")
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


def test_a_callback_address_not_registered_gets_an_error_page_not_a_redirect(
    transactional_db: None, idp: Idp, cup: Cup
) -> None:
    auth = authorize(idp, MARIO_CF, redirect_uri="http://evil.example/fse/oidc/callback/")
    assert auth.response.status_code == 400 and "Location" not in auth.response.headers
    assert "Richiesta di accesso non valida" in auth.response.text
    assert "http://evil.example/fse/oidc/callback/ is not supported by client" in auth.response.text

    auth = authorize(idp, MARIO_CF, client_id="someone-else")
    assert auth.response.status_code == 400 and "Location" not in auth.response.headers
    assert "invalid_client" in auth.response.text


def test_the_token_request_must_name_the_same_redirect_uri(transactional_db: None, idp: Idp, cup: Cup) -> None:
    auth = authorize(idp, MARIO_CF)
    answer = token_request(idp, auth.callback["code"], auth.verifier, redirect_uri=REDIRECT + "other/")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant" and "redirect_uri" in answer.json()["error_description"]


def test_a_code_is_good_once(transactional_db: None, idp: Idp, cup: Cup) -> None:
    auth = authorize(idp, MARIO_CF)
    first = token_request(idp, auth.callback["code"], auth.verifier)
    assert first.status_code == 200
    again = token_request(idp, auth.callback["code"], auth.verifier)
    assert again.status_code == 400
    assert again.json() == {
        "error": "invalid_grant",
        "error_description": "The authorization code is unknown, expired or already used (a code is good once).",
    }


def test_pkce_is_required_and_checked(transactional_db: None, idp: Idp, cup: Cup) -> None:
    # No challenge: the request goes back to the portal refused.
    auth = authorize(idp, MARIO_CF, code_challenge=None, code_challenge_method=None)
    assert auth.response.status_code == 302
    assert auth.callback["error"] == "invalid_request" and "PKCE is required" in auth.callback["error_description"]

    auth = authorize(idp, MARIO_CF, code_challenge_method="plain")
    assert auth.callback["error"] == "invalid_request" and "S256" in auth.callback["error_description"]

    # The wrong verifier, or none: the code buys nothing.
    auth = authorize(idp, MARIO_CF)
    wrong = token_request(idp, auth.callback["code"], "x" * 64)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    auth = authorize(idp, MARIO_CF)
    missing = token_request(idp, auth.callback["code"], None)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_a_nonce_is_required_and_not_reused(transactional_db: None, idp: Idp, cup: Cup) -> None:
    auth = authorize(idp, MARIO_CF, nonce=None)
    assert auth.callback["error"] == "invalid_request" and "nonce" in auth.callback["error_description"]

    first = authorize(idp, MARIO_CF, nonce="the-same-nonce")
    assert "code" in first.callback
    replay = authorize(idp, MARIO_CF, nonce="the-same-nonce")
    assert replay.callback["error"] == "invalid_request"
