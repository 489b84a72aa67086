"""The front door sends each role to its work, and lets a visitor choose a door."""

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


def test_a_visitor_chooses_between_the_citizen_and_the_staff_login(db: None) -> None:
    answer = Client().get("/")
    assert answer.status_code == 200
    page = answer.content.decode()
    assert "Sono un cittadino" in page and 'href="/fse/accesso/"' in page
    assert "Sono un operatore" in page and 'href="/accounts/login/"' in page


def test_a_citizen_lands_on_their_exams(db: None) -> None:
    from portal.accounts import citizen_account_create
    from tests.booking.conftest import MARIO_CF

    client = Client()
    client.force_login(citizen_account_create(codice_fiscale=MARIO_CF))
    assert client.get("/")["Location"] == "/fse/"
