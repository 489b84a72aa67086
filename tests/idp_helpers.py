"""The IdP di prova as the tests run it: its own gunicorn process (``idp.settings``)
on a free port, on the test database, and a client that walks its pages as a
browser would (choose the identity, "Autorizza") with PKCE and a nonce."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from django.conf import settings

from idp import keys
from tests.conftest import REPO, database_url, free_port, process_stop, wait_until

CLIENT_ID = "fse-pacs-test"


@dataclass
class Idp:
    url: str
    client_id: str
    redirect_uri: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def client_secret(self) -> str:
        return keys.client_secret(settings.VAR_DIR)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def endpoint(self, name: str) -> str:
        return {
            "authorize": f"{self.url}/authorize/",
            "token": f"{self.url}/token/",
            "userinfo": f"{self.url}/userinfo/",
            "jwks": f"{self.url}/jwks.json",
            "discovery": f"{self.url}/.well-known/openid-configuration",
        }[name]

    def portal_settings(self) -> dict[str, object]:
        """The portal's settings that point mozilla-django-oidc at this IdP."""
        return {
            "PACS_OIDC_ENABLED": True,
            "OIDC_RP_CLIENT_ID": self.client_id,
            "OIDC_RP_CLIENT_SECRET": self.client_secret,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": self.endpoint("authorize"),
            "OIDC_OP_TOKEN_ENDPOINT": self.endpoint("token"),
            "OIDC_OP_USER_ENDPOINT": self.endpoint("userinfo"),
            "OIDC_OP_JWKS_ENDPOINT": self.endpoint("jwks"),
        }


@contextmanager
def idp_running(*, redirect_uris: list[str], log_path: Path) -> Iterator[Idp]:
    """gunicorn serving the IdP di prova; stopped on leaving."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "idp.settings",
        "DATABASE_URL": database_url(),
        "PACS_VAR_DIR": str(settings.VAR_DIR),
        "SECRET_KEY": settings.SECRET_KEY,
        "SECURE_COOKIES": "0",  # plain http, as in the demo
        "IDP_ISSUER": url,
        "IDP_CLIENT_ID": CLIENT_ID,
        "IDP_REDIRECT_URIS": ",".join(redirect_uris),
        "PYTHONUNBUFFERED": "1",
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [
            str(gunicorn),
            "idp.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "2",
            "--no-control-socket",
        ],
        cwd=REPO,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    idp = Idp(url=url, client_id=CLIENT_ID, redirect_uri=redirect_uris[0], proc=proc, log_path=log_path)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the IdP di prova exited:\n{idp.log()}")
        try:
            return requests.get(idp.endpoint("discovery"), timeout=10).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False  # not listening yet, or its workers still starting

    try:
        wait_until(answers, timeout=60, what="the IdP di prova answering")
        yield idp
    finally:
        process_stop(proc)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Authorization:
    """One walk through the IdP's pages: what the portal sent and what came back."""

    state: str
    nonce: str
    verifier: str
    response: requests.Response  # the IdP's last answer (a redirect to the portal, or a page)

    @property
    def callback(self) -> dict[str, str]:
        """The parameters of the redirect to the portal."""
        location = self.response.headers.get("Location", "")
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def authorization_params(idp: Idp, **overrides: str | None) -> tuple[dict[str, str], str]:
    verifier, challenge = pkce_pair()
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": idp.client_id,
        "redirect_uri": idp.redirect_uri,
        "scope": "openid profile email",
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "idp_hint": "spid",
        **overrides,
    }
    return {k: v for k, v in params.items() if v is not None}, verifier


def _csrf(page: requests.Response) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert found, page.text[:2000]
    return found.group(1)


def authorize(idp: Idp, codice_fiscale: str, *, decision: str = "consent", **overrides: str | None) -> Authorization:
    """Walk the IdP's login for ``codice_fiscale``: the identity page, the consent
    page, then ``decision`` ("consent" or "deny")."""
    params, verifier = authorization_params(idp, **overrides)
    url = f"{idp.endpoint('authorize')}?{urlencode(params)}"
    browser = requests.Session()
    page = browser.get(url, allow_redirects=False, timeout=10)
    if page.status_code != 200:
        return Authorization(params.get("state", ""), params.get("nonce", ""), verifier, page)
    consent = browser.post(
        url,
        data={"csrfmiddlewaretoken": _csrf(page), "step": "identity", "codice_fiscale": codice_fiscale},
        allow_redirects=False,
        timeout=10,
    )
    if consent.status_code != 200:
        return Authorization(params["state"], params["nonce"], verifier, consent)
    answer = browser.post(
        url,
        data={"csrfmiddlewaretoken": _csrf(consent), "step": decision, "codice_fiscale": codice_fiscale},
        allow_redirects=False,
        timeout=10,
    )
    return Authorization(params["state"], params["nonce"], verifier, answer)


def token_request(
    idp: Idp,
    code: str,
    verifier: str | None,
    *,
    secret: str | None = None,
    redirect_uri: str | None = None,
) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri or idp.redirect_uri}
    if verifier is not None:
        data["code_verifier"] = verifier
    return requests.post(
        idp.endpoint("token"),
        data=data,
        auth=(idp.client_id, idp.client_secret if secret is None else secret),
        timeout=10,
    )
