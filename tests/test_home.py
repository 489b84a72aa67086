"""The front door sends each role to its work."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.dicomweb_helpers import make_user


@pytest.mark.parametrize(
    "perms,landing",
    [
        (("booking.view_booking", "booking.add_booking", "archive.view_patient"), "/cup/"),
        (("archive.view_study", "archive.view_report", "archive.sign_report"), "/refertazione/"),
        (("booking.view_booking", "booking.reconcile_study"), "/cup/riconciliazione/"),
        ((), "/admin/"),
    ],
)
def test_staff_land_on_their_work(db: None, perms: tuple[str, ...], landing: str) -> None:
    client = Client()
    client.force_login(make_user("persona", *perms).user)  # type: ignore[arg-type]
    assert client.get("/")["Location"] == landing


def test_anonymous_is_asked_to_log_in(db: None) -> None:
    assert Client().get("/")["Location"] == "/accounts/login/"
