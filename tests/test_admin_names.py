"""The admin's sections of the libraries in Italian (issue 17): django-axes' failed
logins and knox's API tokens were "AXES – Access attempts" and "AUTH TOKEN" among
Italian sections. English is the translation, as everywhere."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone


@pytest.fixture
def admin_client_it(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("capo", password="x" * 12))
    return client


def _page(client: Client, url: str, language: str = "it") -> str:
    response = client.get(url, HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 200, url
    return response.content.decode()


def test_the_admin_index_names_the_login_and_token_sections_in_italian(admin_client_it: Client) -> None:
    html = _page(admin_client_it, "/admin/")
    for name in (
        "Accessi falliti e blocchi",
        "Tentativi di accesso falliti",
        "Accesso alle API",
        "Token di accesso alle API",
        "Archivio immagini",
        "Registro di audit",
    ):
        assert name in html, name
    for english in ("Axes", "Access attempts", "Access logs", "Knox", "Auth token", "Auth Token"):
        assert english not in html, english


def test_in_english_they_are_translated(admin_client_it: Client) -> None:
    html = _page(admin_client_it, "/admin/", "en")
    for name in ("Failed logins and lockouts", "Failed login attempts", "API access", "API access tokens"):
        assert name in html, name
    assert "Accessi falliti e blocchi" not in html


def test_the_failed_logins_and_tokens_lists_speak_italian(admin_client_it: Client) -> None:
    from axes.models import AccessAttempt
    from knox.models import AuthToken

    AccessAttempt.objects.create(
        username="radiologo",
        ip_address="192.0.2.7",
        user_agent="Firefox",
        path_info="/accounts/login/",
        failures_since_start=2,
        attempt_time=timezone.now(),
        get_data="",
        post_data="",
        http_accept="text/html",
    )
    html = _page(admin_client_it, "/admin/axes/accessattempt/")
    for label in ("Data e ora", "Indirizzo IP", "Browser (user agent)", "Nome utente", "Stato", "tentativi rimasti"):
        assert label in html, label
    for english in ("Attempt Time", "IP Address", "Status", "Attempt Remaining"):
        assert english not in html, english

    AuthToken.objects.create(user=User.objects.get(username="capo"), expiry=None)
    html = _page(admin_client_it, "/admin/knox/authtoken/")
    for label in ("Inizio del token", "Utente", "Creato il", "Scade il", "mai"):
        assert label in html, label
    assert "Expiry" not in html and "Created" not in html


def test_the_names_ask_for_no_migration_of_the_libraries(db: None) -> None:
    # Only what the admin shows changed; the models' migration state is the libraries' own.
    call_command("makemigrations", "axes", "knox", "--check", "--dry-run", stdout=StringIO())
