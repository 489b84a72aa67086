"""A patient registered and booked at the CUP, with no account and no password,
logs in to the FSE in a real Chromium through the IdP di prova (its own
gunicorn process) the way the region's citizens log in with SPID or CIE: the
front door, "Sono un cittadino", "Entra con SPID", the IdP's identity and
consent pages, back to the portal through mozilla-django-oidc. The first
login creates the account from the codice fiscale; the exam booked at the
CUP is there, and the signed report downloads. On a phone and on a desktop."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest

from archive.ingest import instance_ingest
from archive.models import Study
from archive.reporting import services as reports
from archive.sample_data import PatientInfo, write_study
from booking import matching
from booking import services as booking_services
from booking.models import Booking
from kernel.models import AuditEvent
from portal import publication
from portal.models import CitizenAccount
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import Cup
from tests.idp_helpers import Idp, idp_running
from tests.reporting_helpers import Reporting, signed_report
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

CHROMIUM = Path("/usr/bin/chromium")
cup = booking_fixtures.cup
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

# Verdi Anna, born in Trieste on 18 April 1985: registered at the CUP desk in
# the test, not one of the demo's citizens.
ANNA_CF = "VRDNNA85D58L424X"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 900}}


def _anna_exam(cup: Cup, rep: Reporting, tmp_path: Path) -> tuple[Booking, object]:
    """Anna registered and booked at the CUP (online delivery), her CT performed,
    reported, signed and published."""
    # The shared fixture's study (Mario Rossi's) holds the accession number the CUP gives first.
    Study.objects.filter(pk=rep.study.pk).update(accession_number="ALTRO-1")
    anna = booking_services.patient_create(
        codice_fiscale=ANNA_CF,
        family_name="VERDI",
        given_name="ANNA",
        birth_date=dt.date(1985, 4, 18),
        sex="F",
        user=cup.operator.user,
    )
    booking = cup.book(anna, contact_email="anna.verdi@example.org")
    files = write_study(
        tmp_path / "anna",
        patient=PatientInfo(patient_id=ANNA_CF, name="VERDI^ANNA", birth_date="19850418", sex="F"),
        series=1,
        instances_per_series=2,
        accession_number=booking.accession_number,
    )
    for path in files:
        instance_ingest(path=path, facility=cup.region.facility, owned=False, calling_ae="CT01")
    study = Study.objects.get(accession_number=booking.accession_number)
    assert matching.study_match(study_pk=study.pk).result == "linked"
    report = signed_report(dataclasses.replace(rep, study=study))
    publication.report_publish(report_pk=report.pk, study_pk=study.pk)
    booking.refresh_from_db()
    return booking, report


def test_a_patient_booked_at_the_cup_logs_in_with_spid_and_downloads_the_report(
    transactional_db: None, live_server, cup: Cup, reporting: Reporting, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False  # the live server speaks plain http
    settings.CSRF_COOKIE_SECURE = False
    booking, report = _anna_exam(cup, reporting, tmp_path)
    assert not CitizenAccount.objects.filter(codice_fiscale=ANNA_CF).exists()
    base = live_server.url

    with idp_running(redirect_uris=[f"{base}/fse/oidc/callback/"], log_path=tmp_path / "idp.log") as idp:
        for name, value in idp.portal_settings().items():
            setattr(settings, name, value)
        settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "portal.auth.CitizenOIDCBackend"]

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            try:
                for size, door in (("phone", "SPID"), ("desktop", "CIE")):
                    shots = tmp_path / size
                    shots.mkdir()
                    context = browser.new_context(accept_downloads=True, locale="it-IT", viewport=VIEWPORTS[size])
                    page = context.new_page()
                    page.set_default_timeout(20_000)
                    _log_in_and_download(page, base, idp, door, booking, report, shots)
                    context.close()
            finally:
                browser.close()

    account = CitizenAccount.objects.select_related("user").get(codice_fiscale=ANNA_CF)
    assert account.origin == CitizenAccount.Origin.OIDC
    assert account.user.username == ANNA_CF and not account.user.has_usable_password()
    assert (account.user.first_name, account.user.last_name, account.user.email) == (
        "Anna",
        "Verdi",
        "anna.verdi@example.org",
    )
    logins = AuditEvent.objects.filter(action="portal.login", user=account.user, outcome="success")
    assert logins.count() == 2 and all(e.detail["origin"] == "oidc" for e in logins)
    assert logins.first().patient == booking.patient  # type: ignore[union-attr]


def _log_in_and_download(page, base: str, idp: Idp, door: str, booking: Booking, report, shots: Path) -> None:  # type: ignore[no-untyped-def]
    # The front door: an anonymous visitor chooses the citizen's way in.
    page.goto(f"{base}/")
    page.screenshot(path=str(shots / "home.png"), full_page=True)
    page.get_by_role("link", name="Vai al Fascicolo").click()
    page.wait_for_url(f"{base}/fse/accesso/")
    page.screenshot(path=str(shots / "login.png"), full_page=True)

    page.get_by_role("link", name=f"Entra con {door}").click()
    page.wait_for_url(f"{idp.url}/authorize/?**")
    assert page.get_by_role("heading", level=1).inner_text() == f"Entra con {door}"
    assert f"idp_hint={door.lower()}" in page.url
    page.screenshot(path=str(shots / "idp_login.png"), full_page=True)

    # Not a demo citizen: typed in, as registered at the CUP.
    page.get_by_label("Codice fiscale").fill(ANNA_CF.lower())
    page.get_by_role("button", name="Prosegui").click()
    page.get_by_role("heading", name="Autorizza l'invio dei dati").wait_for()
    attributes = page.locator("dl.idp-attributes").inner_text()
    for value in (ANNA_CF, "Anna", "Verdi", "anna.verdi@example.org"):
        assert value in attributes
    page.screenshot(path=str(shots / "idp_consent.png"), full_page=True)
    page.get_by_role("button", name="Autorizza", exact=True).click()

    # Back at the portal, logged in: the exam booked at the CUP is there.
    page.wait_for_url(f"{base}/fse/")
    page.screenshot(path=str(shots / "exams.png"), full_page=True)
    row = page.locator("tr", has_text=booking.procedure.description)
    assert "Disponibile online fino al" in row.inner_text()
    row.get_by_role("link").click()
    page.wait_for_url(f"{base}/fse/esami/{booking.pk}/")
    page.screenshot(path=str(shots / "exam.png"), full_page=True)
    with page.expect_download() as info:
        page.locator("a.report-pdf").click()
    pdf = shots / info.value.suggested_filename
    info.value.save_as(pdf)
    assert pdf.read_bytes() == reports.report_file(report=report, which="pdf")
