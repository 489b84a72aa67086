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
from tests.a11y import assert_accessible
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import Cup
from tests.browser_helpers import exam_page_drawn
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
                _idp_refusals(browser, base, idp, tmp_path)
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
    assert_accessible(page, f"the front door ({shots.name})")
    page.get_by_role("link", name="Vai al Fascicolo").click()
    page.wait_for_url(f"{base}/fse/accesso/")
    page.screenshot(path=str(shots / "login.png"), full_page=True)
    assert_accessible(page, f"the portal's login ({shots.name})")
    # The password form of the desk's accounts, folded under the doors.
    page.get_by_text("Ha ricevuto allo sportello un codice fiscale e una password di prova?").click()
    page.get_by_label("Password").wait_for()
    page.screenshot(path=str(shots / "login_password.png"), full_page=True)
    assert_accessible(page, f"the portal's login, password form open ({shots.name})")

    page.get_by_role("link", name=f"Entra con {door}").click()
    page.wait_for_url(f"{idp.url}/authorize/?**")
    assert page.get_by_role("heading", level=1).inner_text() == f"Entra con {door}"
    assert f"idp_hint={door.lower()}" in page.url
    page.screenshot(path=str(shots / "idp_login.png"), full_page=True)
    assert_accessible(page, f"the IdP's identity page ({shots.name})")

    # Not a demo citizen: typed in, as registered at the CUP.
    page.get_by_label("Codice fiscale").fill(ANNA_CF.lower())
    page.get_by_role("button", name="Prosegui").click()
    page.get_by_role("heading", name="Autorizza l'invio dei dati").wait_for()
    attributes = page.locator("dl.idp-attributes").inner_text()
    for value in (ANNA_CF, "Anna", "Verdi", "anna.verdi@example.org"):
        assert value in attributes
    page.screenshot(path=str(shots / "idp_consent.png"), full_page=True)
    assert_accessible(page, f"the IdP's consent page ({shots.name})")
    page.get_by_role("button", name="Autorizza", exact=True).click()

    # Back at the portal, logged in: the exam booked at the CUP is there.
    page.wait_for_url(f"{base}/fse/")
    page.screenshot(path=str(shots / "exams.png"), full_page=True)
    row = page.locator("li.exam-item", has_text=booking.procedure.description)
    assert "Disponibile online fino al" in row.inner_text()
    row.get_by_role("link").click()
    page.wait_for_url(f"{base}/fse/esami/{booking.pk}/")
    exam_page_drawn(page)
    page.screenshot(path=str(shots / "exam.png"), full_page=True)
    with page.expect_download() as info:
        page.locator("a.report-pdf").click()
    pdf = shots / info.value.suggested_filename
    info.value.save_as(pdf)
    assert pdf.read_bytes() == reports.report_file(report=report, which="pdf")


def _idp_refusals(browser, base: str, idp: Idp, shots: Path) -> None:  # type: ignore[no-untyped-def]
    """The IdP's pages that say no: a codice fiscale nobody registered, a request from a stranger;
    and "Non autorizzare", which brings the citizen back to the portal's login, told why."""
    page = browser.new_context(locale="it-IT", viewport=VIEWPORTS["phone"]).new_page()
    page.goto(f"{base}/fse/accesso/")
    page.get_by_role("link", name="Entra con SPID").click()
    page.wait_for_url(f"{idp.url}/authorize/?**")
    page.get_by_label("Codice fiscale").fill("NREPLA79P03L483G")  # Neri Paolo: never registered
    page.get_by_role("button", name="Prosegui").click()
    alert = page.get_by_role("alert")
    assert "Nessuna identità di prova con il codice fiscale NREPLA79P03L483G" in alert.inner_text()
    assert page.get_by_label("Codice fiscale").get_attribute("aria-invalid") == "true"
    page.screenshot(path=str(shots / "idp_unknown.png"), full_page=True)
    assert_accessible(page, "the IdP's identity page with an error")

    page.get_by_role("button", name="Mario Rossi").click()
    page.get_by_role("button", name="Non autorizzare").click()
    page.wait_for_url(f"{base}/fse/accesso/")
    assert "Accesso annullato" in page.get_by_role("status").first.inner_text()
    page.screenshot(path=str(shots / "login_cancelled.png"), full_page=True)
    assert_accessible(page, "the portal's login after a cancelled SPID login")

    page.goto(f"{idp.url}/authorize/?response_type=code&client_id=someone-else&scope=openid")
    assert "Richiesta di accesso non valida" in page.get_by_role("heading", level=1).inner_text()
    page.screenshot(path=str(shots / "idp_error.png"), full_page=True)
    assert_accessible(page, "the IdP's error page")


def test_the_pages_around_the_login_are_accessible(
    transactional_db: None, live_server, cup: Cup, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A member of staff on a citizen's page, and a password login locked out after too many failures."""
    from django.test import Client
    from playwright.sync_api import sync_playwright

    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    base = live_server.url
    staff = Client()
    staff.force_login(cup.operator.user)  # type: ignore[arg-type]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            for size, viewport in VIEWPORTS.items():
                context = browser.new_context(locale="it-IT", viewport=viewport)
                context.add_cookies([{"name": "sessionid", "value": staff.cookies["sessionid"].value, "url": base}])
                page = context.new_page()
                answer = page.goto(f"{base}/fse/")
                assert answer is not None and answer.status == 403
                assert page.get_by_role("heading", level=1).inner_text() == "Pagina riservata ai cittadini"
                page.screenshot(path=str(tmp_path / f"citizens_only-{size}.png"), full_page=True)
                assert_accessible(page, f"citizens_only ({size})")
                context.close()

            page = browser.new_context(locale="it-IT", viewport=VIEWPORTS["phone"]).new_page()
            page.goto(f"{base}/fse/accesso/")
            for _attempt in range(settings.AXES_FAILURE_LIMIT):
                page.get_by_label("Codice fiscale").fill(cup.mario.codice_fiscale)
                page.get_by_label("Password").fill("non-è-la-password")
                page.get_by_role("button", name="Accedi").click()
                page.wait_for_load_state()
            assert page.get_by_role("heading", level=1).inner_text() == "Accesso temporaneamente bloccato"
            page.screenshot(path=str(tmp_path / "locked_out.png"), full_page=True)
            assert_accessible(page, "locked_out")
        finally:
            browser.close()
