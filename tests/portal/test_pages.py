"""The citizen's pages through the Django test client: login and its throttle,
my exams, the exam page, signed links, packages, the viewer, who saw my
data, delegations, oscuramento and consent revocation; every refusal."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from archive.models import Instance, Patient
from archive.reporting import services as reports
from booking.models import Booking, DistributionChoice
from kernel.models import AuditEvent
from portal import delegations, emergency, links
from portal.accounts import citizen_account_create
from portal.auth import CitizenOIDCBackend, fiscal_code_from_claims
from portal.models import Concealment, Delegation, DownloadPackage, Publication
from tests.archive.test_web import INJECTED_ACCESSION, NON_ASCII_ACCESSION, disposition_filenames
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup, linked_booking
from tests.portal.portal_helpers import CITIZEN_PASSWORD, CitizenExam, citizen_exam_make, citizen_login
from tests.reporting_helpers import RADIOLOGIST_PASSWORD, Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup

pytestmark = pytest.mark.django_db


@pytest.fixture
def online(cup: Cup, reporting: Reporting) -> CitizenExam:
    return citizen_exam_make(cup, reporting)


def links_in(html: str, cls: str) -> list[str]:
    return re.findall(rf'<a href="([^"]+)" class="(?:[^"]* )?{cls}(?: [^"]*)?"', html)


def audit(action: str, **filters: object) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("pk"))


# --- login ----------------------------------------------------------------------------


def test_login_with_the_codice_fiscale_sets_a_short_session(online: CitizenExam) -> None:
    session = online.client.session
    assert session.get_expiry_age() == 15 * 60
    assert audit("portal.login", user=online.user)[-1].outcome == "success"
    assert online.client.get("/").url == "/fse/"


def test_a_malformed_codice_fiscale_is_refused_with_its_reason(cup: Cup) -> None:
    response = citizen_login(Client(), "RSSMRA56C12L424X")
    assert response.status_code == 200
    assert "carattere di controllo" in response.content.decode().lower() or "controllo" in response.content.decode()


def test_a_wrong_password_is_refused_and_audited(cup: Cup) -> None:
    citizen_account_create(codice_fiscale=MARIO_CF, password=CITIZEN_PASSWORD)
    response = citizen_login(Client(), MARIO_CF, "sbagliata-sbagliata")
    assert response.status_code == 401
    assert "Codice fiscale o password non corretti" in response.content.decode()
    assert audit("portal.login", outcome="failure")[-1].detail["codice_fiscale"] == MARIO_CF


def test_repeated_wrong_passwords_lock_the_account_out_from_that_address(cup: Cup) -> None:
    citizen_account_create(codice_fiscale=MARIO_CF, password=CITIZEN_PASSWORD)
    client = Client()
    answers = [citizen_login(client, MARIO_CF, "sbagliata-sbagliata").status_code for _ in range(5)]
    assert answers == [401, 401, 401, 401, 429]  # the fifth failure locks
    locked = citizen_login(client, MARIO_CF)  # even the right password now
    assert locked.status_code == 429
    assert "bloccato" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    assert audit("auth.lockout")[-1].detail["username"] == MARIO_CF
    # Another address is not locked out.
    assert citizen_login(Client(), MARIO_CF, REMOTE_ADDR="10.1.2.3").status_code == 302


def test_staff_logins_are_throttled_too(online: CitizenExam) -> None:
    client = Client()
    answers = [
        client.post("/accounts/login/", {"username": "radiologo", "password": "sbagliata"}).status_code
        for _ in range(5)
    ]
    assert answers == [200, 200, 200, 200, 429]
    assert audit("auth.lockout")[-1].detail == {"username": "radiologo", "path": "/accounts/login/", "tier": "user"}


def _fiscal_codes(n: int) -> list[str]:
    from codicefiscale import codicefiscale

    return [
        str(codicefiscale.encode("Verdi", name, "M", f"1980-01-{day:02d}", "Trieste"))
        for day, name in zip(
            range(1, n + 1), ["Aldo", "Bruno", "Carlo", "Dario", "Enzo", "Fabio", "Gino"], strict=False
        )
    ]


@override_settings(PACS_LOGIN_ADDRESS_FAILURE_LIMIT=6)
def test_many_citizens_tried_from_one_address_lock_that_address_out(cup: Cup) -> None:
    """The lockout was per (username, address) only: one host could try a password on every account."""
    citizen_account_create(codice_fiscale=MARIO_CF, password=CITIZEN_PASSWORD)
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    answers = [citizen_login(attacker, cf, "password-provata-1").status_code for cf in _fiscal_codes(6)]
    assert answers == [401] * 5 + [429]  # each username tried once: the address tier locks
    assert audit("auth.lockout")[-1].detail["tier"] == "address"
    locked = citizen_login(attacker, MARIO_CF)  # another account, the right password
    assert locked.status_code == 429 and "_auth_user_id" not in attacker.session
    assert citizen_login(Client(REMOTE_ADDR="198.51.100.7"), MARIO_CF).status_code == 302


@override_settings(PACS_LOGIN_ADDRESS_FAILURE_LIMIT=6)
def test_many_staff_usernames_from_one_address_lock_that_address_out(online: CitizenExam) -> None:
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    names = ["admin", "root", "radiologa", "archivista", "cup", "operatore"]
    answers = [
        attacker.post("/accounts/login/", {"username": name, "password": "Estate2026!"}).status_code for name in names
    ]
    assert answers == [200] * 5 + [429]
    credentials = {"username": "radiologo", "password": RADIOLOGIST_PASSWORD}
    assert attacker.post("/accounts/login/", credentials).status_code == 429  # the right password too
    assert Client(REMOTE_ADDR="198.51.100.7").post("/accounts/login/", credentials).status_code == 302


@override_settings(PACS_LOGIN_ADDRESS_FAILURE_LIMIT=4)
def test_logging_in_with_ones_own_account_does_not_reset_the_address_tier(cup: Cup) -> None:
    citizen_account_create(codice_fiscale=MARIO_CF, password=CITIZEN_PASSWORD)
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    codes = _fiscal_codes(4)
    assert [citizen_login(attacker, cf, "password-provata-1").status_code for cf in codes[:3]] == [401] * 3
    assert citizen_login(attacker, MARIO_CF).status_code == 302  # the attacker's own account
    assert citizen_login(Client(REMOTE_ADDR="203.0.113.9"), codes[3], "password-provata-1").status_code == 429


@override_settings(PACS_LOGIN_ADDRESS_FAILURE_LIMIT=3, PACS_LOGIN_ADDRESS_EXEMPT=["10.0.0.0/8"])
def test_an_exempt_address_keeps_only_the_per_user_tier(cup: Cup) -> None:
    hospital = Client(REMOTE_ADDR="10.20.30.40")
    answers = [citizen_login(hospital, cf, "password-provata-1").status_code for cf in _fiscal_codes(5)]
    assert answers == [401] * 5
    per_user = [citizen_login(hospital, MARIO_CF, "sbagliata-sbagliata").status_code for _ in range(5)]
    assert per_user == [401] * 4 + [429]


@override_settings(PACS_TRUSTED_PROXIES=["192.0.2.1"], PACS_LOGIN_ADDRESS_FAILURE_LIMIT=3)
def test_behind_a_trusted_proxy_the_forwarded_address_is_locked_out(cup: Cup) -> None:
    """Behind a reverse proxy every client had the proxy's address: the address tier would lock everyone."""
    citizen_account_create(codice_fiscale=MARIO_CF, password=CITIZEN_PASSWORD)
    proxy = {"REMOTE_ADDR": "192.0.2.1"}
    attacker = Client(**proxy, HTTP_X_FORWARDED_FOR="10.9.9.9, 203.0.113.9")  # the first is the client's lie
    answers = [citizen_login(attacker, cf, "password-provata-1").status_code for cf in _fiscal_codes(3)]
    assert answers == [401, 401, 429]
    assert audit("auth.lockout")[-1].source == "203.0.113.9"
    neighbour = Client(**proxy, HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert citizen_login(neighbour, MARIO_CF).status_code == 302


def test_staff_cannot_use_the_citizen_login_nor_the_citizen_pages(online: CitizenExam) -> None:
    staff = Client()
    assert citizen_login(staff, "RSSMRA56C12L424P", "x").status_code == 401
    staff.force_login(online.rep.radiologist)
    assert staff.get("/fse/").status_code == 403


def test_the_anonymous_are_sent_to_the_citizen_login() -> None:
    response = Client().get("/fse/esami/1/")
    assert response.status_code == 302 and response.url.startswith("/fse/accesso/?next=")


@override_settings(PACS_PORTAL_SESSION_MAX_SECONDS=-1)
def test_a_session_older_than_the_limit_ends(online: CitizenExam) -> None:
    response = online.client.get("/fse/")
    assert response.status_code == 302 and response.url == "/fse/accesso/"
    assert "_auth_user_id" not in online.client.session


# --- my exams and the exam page ------------------------------------------------------------


def test_my_exams_lists_the_exam_as_online_and_is_audited(online: CitizenExam) -> None:
    page = online.client.get("/fse/").content.decode()
    assert online.booking.procedure.description in page
    assert "Disponibile online fino al" in page
    assert audit("portal.exams.view", user=online.user)[-1].detail["count"] == 1


def test_the_exam_page_offers_the_report_and_downloads_it_byte_for_byte(online: CitizenExam) -> None:
    page = online.client.get(f"/fse/esami/{online.booking.pk}/").content.decode()
    (pdf_url,) = links_in(page, "report-pdf")
    (p7m_url,) = links_in(page, "report-p7m")
    pdf = online.client.get(pdf_url)
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content == reports.report_file(report=online.report, which="pdf")
    p7m = online.client.get(p7m_url)
    assert p7m.content == reports.report_file(report=online.report, which="p7m")
    assert [e.detail["file"] for e in audit("portal.download", user=online.user)] == ["pdf", "p7m"]
    assert audit("portal.exam.view", user=online.user)


def test_the_file_name_of_a_download_cannot_be_injected_by_the_accession_number(online: CitizenExam) -> None:
    page = online.client.get(f"/fse/esami/{online.booking.pk}/").content.decode()
    (pdf_url,) = links_in(page, "report-pdf")
    (p7m_url,) = links_in(page, "report-p7m")
    Booking.objects.filter(pk=online.booking.pk).update(accession_number=INJECTED_ACCESSION)
    pdf = online.client.get(pdf_url)
    assert pdf.status_code == 200
    assert disposition_filenames(pdf["Content-Disposition"]) == (
        "attachment",
        ["filename"],
        "referto-_ filename=e.sh-v1.pdf",
    )
    Booking.objects.filter(pk=online.booking.pk).update(accession_number=NON_ASCII_ACCESSION)
    p7m = online.client.get(p7m_url)
    assert p7m["Content-Disposition"] == (
        "attachment; filename*=utf-8''referto-ACC-Perch%C3%A9-%C3%80%C3%89-v1.pdf.p7m"
    )


def test_another_citizens_exam_is_not_found_and_audited(online: CitizenExam, cup: Cup) -> None:
    other = citizen_account_create(codice_fiscale=LAURA_CF, password=CITIZEN_PASSWORD)
    client = Client()
    citizen_login(client, LAURA_CF)
    assert client.get(f"/fse/esami/{online.booking.pk}/").status_code == 404
    assert client.post(f"/fse/esami/{online.booking.pk}/pacchetti/dicom/").status_code == 404
    denied = audit("portal.exam.denied", user=other)
    assert len(denied) == 2 and denied[0].outcome == "denied"
    # The owner's link does not work for someone else either.
    token = links.link_token(user=online.user, kind="pdf", object_id=online.report.pk)
    assert client.get(f"/fse/scarica/{token}/").status_code == 403


def test_a_forged_link_and_an_expired_link_answer_403(online: CitizenExam) -> None:
    token = links.link_token(user=online.user, kind="pdf", object_id=online.report.pk)
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    response = online.client.get(f"/fse/scarica/{forged}/")
    assert response.status_code == 403 and "alterato" in response.content.decode()
    tampered = links.link_token(user=online.user, kind="pdf", object_id=online.report.pk + 1).split(":")
    mixed = ":".join([tampered[0], *token.split(":")[1:]])
    assert online.client.get(f"/fse/scarica/{mixed}/").status_code == 403
    with override_settings(PACS_PORTAL_LINK_SECONDS=-1):
        expired = online.client.get(f"/fse/scarica/{token}/")
    assert expired.status_code == 403 and "scaduto" in expired.content.decode()
    assert [e.detail["reason"] for e in audit("portal.download", outcome="denied")] == ["forged", "forged", "expired"]


def test_an_exam_on_cd_has_no_downloads(cup: Cup, reporting: Reporting) -> None:
    exam = citizen_exam_make(cup, reporting, delivery=DistributionChoice.Delivery.CD)
    page = exam.client.get(f"/fse/esami/{exam.booking.pk}/").content.decode()
    assert "Su CD, da ritirare dal" in page and not links_in(page, "report-pdf")
    assert exam.client.post(f"/fse/esami/{exam.booking.pk}/pacchetti/dicom/").status_code == 403
    assert exam.client.get(f"/fse/esami/{exam.booking.pk}/immagini/").status_code == 403
    token = links.link_token(user=exam.user, kind="pdf", object_id=exam.report.pk)
    assert exam.client.get(f"/fse/scarica/{token}/").status_code == 403
    assert not Publication.objects.exists()


def test_an_exam_without_a_signed_report_is_awaiting_it(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    citizen_account_create(codice_fiscale=MARIO_CF, password=CITIZEN_PASSWORD)
    client = Client()
    citizen_login(client, MARIO_CF)
    page = client.get(f"/fse/esami/{booking.pk}/").content.decode()
    assert "in attesa del referto" in page
    assert client.post(f"/fse/esami/{booking.pk}/pacchetti/jpeg/").status_code == 403


def test_consent_is_not_revoked_after_publication_as_the_information_text_says(online: CitizenExam) -> None:
    """The text the citizen accepted says "prima della pubblicazione del referto": the page
    offered the revocation after it, and the view accepted it."""
    token = links.link_token(user=online.user, kind="pdf", object_id=online.report.pk)
    exam_url = f"/fse/esami/{online.booking.pk}/"
    page = online.client.get(exam_url).content.decode().replace("&#x27;", "'")
    assert "revoca-consenso" not in page
    assert "si poteva revocare solo prima della pubblicazione del referto" in page
    response = online.client.post(f"{exam_url}revoca-consenso/", {"confirm": "yes"}, follow=True)
    shown = response.content.decode().replace("&#x27;", "'")
    assert "si può revocare solo prima della pubblicazione del referto" in shown
    assert online.booking.current_choice().delivery == "online"
    assert Publication.objects.get().withdrawn_at is None
    assert online.client.get(f"/fse/scarica/{token}/").status_code == 200
    assert [e.detail["reason"] for e in audit("portal.consent_revoke", outcome="denied")] == ["published"]


def test_after_the_availability_period_the_page_says_how_to_get_a_copy(online: CitizenExam) -> None:
    from django.utils import timezone

    Publication.objects.update(available_until=timezone.now())
    page = online.client.get(f"/fse/esami/{online.booking.pk}/").content.decode()
    assert "Non più disponibile online dal" in page and "Per avere una copia" in page
    assert not links_in(page, "report-pdf")


# --- packages --------------------------------------------------------------------------


def test_a_small_study_is_zipped_at_once_and_downloads_with_ranges(online: CitizenExam) -> None:
    response = online.client.post(f"/fse/esami/{online.booking.pk}/pacchetti/dicom/")
    package = DownloadPackage.objects.get()
    assert response.url == f"/fse/pacchetti/{package.pk}/" and package.status == "ready"
    status = online.client.get(f"/fse/pacchetti/{package.pk}/?format=json").json()
    assert status["status"] == "ready" and status["percent"] == 100
    whole = online.client.get(status["download_url"])
    assert whole.status_code == 200 and whole["Accept-Ranges"] == "bytes"
    body = b"".join(whole.streaming_content)
    assert len(body) == package.size
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = zf.namelist()
        assert "DICOMDIR" in names and "README.TXT" in names
        assert len([n for n in names if n.startswith("DICOM/")]) == Instance.objects.count()
    part = online.client.get(status["download_url"], HTTP_RANGE="bytes=100-199")
    assert part.status_code == 206 and b"".join(part.streaming_content) == body[100:200]
    # A second request reuses the package.
    online.client.post(f"/fse/esami/{online.booking.pk}/pacchetti/dicom/")
    assert DownloadPackage.objects.count() == 1
    assert [e.detail.get("range") for e in audit("portal.download", user=online.user)] == ["", "bytes=100-199"]


def test_unknown_package_kind_is_not_found(online: CitizenExam) -> None:
    assert online.client.post(f"/fse/esami/{online.booking.pk}/pacchetti/tiff/").status_code == 404


def test_a_package_on_disk_that_vanished_is_made_again(online: CitizenExam) -> None:
    from pathlib import Path

    online.client.post(f"/fse/esami/{online.booking.pk}/pacchetti/jpeg/")
    first = DownloadPackage.objects.get()
    Path(first.path).unlink()
    online.client.post(f"/fse/esami/{online.booking.pk}/pacchetti/jpeg/")
    assert DownloadPackage.objects.filter(status="ready").exclude(pk=first.pk).count() == 1
    assert DownloadPackage.objects.get(pk=first.pk).status == "purged"


# --- viewer ----------------------------------------------------------------------------------


def test_the_viewer_shows_each_image_as_jpeg(online: CitizenExam) -> None:
    page = online.client.get(f"/fse/esami/{online.booking.pk}/immagini/").content.decode()
    (src,) = re.findall(r'id="viewer-image" src="([^"]+)"', page)
    image = online.client.get(src)
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
    assert 'id="viewer-next"' in page and "immagine 1 di" in page
    assert audit("portal.viewer", user=online.user)
    other_study_instance = Instance.objects.first()
    assert online.client.get(f"/fse/esami/{online.booking.pk}/immagini/999999.jpg").status_code == 404
    assert other_study_instance is not None


def test_a_viewer_image_with_no_free_render_worker_is_503_not_a_wait(online: CitizenExam, settings) -> None:
    """Every render worker busy beyond a render's time: the image answers 503 with
    Retry-After, never a request left hanging."""
    import time

    from tests.conftest import render_workers_busy

    page = online.client.get(f"/fse/esami/{online.booking.pk}/immagini/").content.decode()
    (src,) = re.findall(r'id="viewer-image" src="([^"]+)"', page)
    settings.PACS_RENDER_WORKERS = 1
    settings.PACS_RENDER_TIMEOUT = 0.5
    with render_workers_busy(2.5):
        started = time.monotonic()
        image = online.client.get(src)
        assert 0.5 <= time.monotonic() - started < 2.4
        assert image.status_code == 503 and image["Retry-After"]
    assert online.client.get(src).status_code == 200


# --- who saw my data, delegation, oscuramento ----------------------------------------------------


def test_who_saw_my_data_lists_the_radiologist_and_the_citizen(online: CitizenExam) -> None:
    online.client.get(f"/fse/esami/{online.booking.pk}/")
    page = online.client.get("/fse/accessi/").content.decode()
    assert "Stefano Cossutta" in page and "ha firmato il referto" in page
    assert ">Lei<" in page and "Ha aperto la pagina dell&#x27;esame" in page
    assert audit("portal.access_log.view", user=online.user)


def test_a_delegate_sees_the_delegators_exam_and_the_log_says_who_acted(online: CitizenExam) -> None:
    laura = (
        Patient.objects.get(codice_fiscale=LAURA_CF)
        if Patient.objects.filter(codice_fiscale=LAURA_CF).exists()
        else None
    )
    if laura is None:
        laura = Patient.objects.create(codice_fiscale=LAURA_CF, family_name="BIANCHI", given_name="LAURA")
    mario = online.booking.patient
    delegations.delegation_register(
        delegator=mario,
        delegate=laura,
        kind="tutore",
        evidence="Decreto del giudice tutelare n. 12/2026",
        user=online.rep.radiologist,
    )
    delegate_user = citizen_account_create(codice_fiscale=LAURA_CF, password=CITIZEN_PASSWORD)
    client = Client()
    citizen_login(client, LAURA_CF)
    assert online.booking.procedure.description in client.get("/fse/").content.decode()
    page = client.get(f"/fse/esami/{online.booking.pk}/").content.decode()
    (pdf_url,) = links_in(page, "report-pdf")
    assert client.get(pdf_url).status_code == 200
    event = audit("portal.download", user=delegate_user)[-1]
    assert event.patient_id == mario.pk and event.detail["acting_for"] == MARIO_CF
    assert "Mario Rossi" in client.get("/fse/deleghe/").content.decode()
    log = online.client.get("/fse/accessi/").content.decode()
    assert "persona delegata" in log


def test_the_citizen_conceals_and_reveals_an_exam(online: CitizenExam) -> None:
    url = f"/fse/esami/{online.booking.pk}/oscuramento/"
    online.client.post(url, {"action": "conceal"})
    active = Concealment.objects.get(revealed_at__isnull=True)
    assert active.hidden_by_patient and active.study_id == online.booking.study_id
    assert "Questo esame è oscurato" in online.client.get(f"/fse/esami/{online.booking.pk}/").content.decode()
    online.client.post(url, {"action": "reveal"})
    assert not Concealment.objects.filter(revealed_at__isnull=True).exists()
    assert audit("portal.conceal") and audit("portal.reveal")


def delegate_client(online: CitizenExam, kind: str, *, minor: bool = False) -> Client:
    """Laura logged in as ``kind`` delegate of Mario (made a child of ten when ``minor``)."""
    from django.utils import timezone

    mario = online.booking.patient
    if minor:
        today = timezone.localdate()
        Patient.objects.filter(pk=mario.pk).update(birth_date=today.replace(year=today.year - 10, day=1))
        mario.refresh_from_db()
    laura = Patient.objects.get(codice_fiscale=LAURA_CF)
    delegations.delegation_register(
        delegator=mario,
        delegate=laura,
        kind=kind,
        evidence="Documento verificato allo sportello",
        user=online.cup.operator.user,
    )
    citizen_account_create(codice_fiscale=LAURA_CF, password=CITIZEN_PASSWORD)
    client = Client()
    citizen_login(client, LAURA_CF)
    return client


def test_a_delegate_cannot_lift_a_hiding_the_delegator_set_herself(online: CitizenExam) -> None:
    """Reproduces: a delegate lifted, from the exam page, a hiding the delegator had set herself."""
    exam_url = f"/fse/esami/{online.booking.pk}/"
    online.client.post(f"{exam_url}oscuramento/", {"action": "conceal"})
    client = delegate_client(online, Delegation.Kind.SUPPORT)
    page = client.get(exam_url).content.decode().replace("&#x27;", "'")
    assert "Questo esame è oscurato" in page
    assert 'value="reveal"' not in page
    assert "solo l'interessato può renderlo di nuovo visibile" in page
    response = client.post(f"{exam_url}oscuramento/", {"action": "reveal"}, follow=True)
    assert "solo l'interessato può renderlo di nuovo visibile" in response.content.decode().replace("&#x27;", "'")
    assert Concealment.objects.filter(revealed_at__isnull=True).count() == 1
    (refused,) = audit("portal.reveal", outcome="denied")
    assert refused.detail["reason"] == "subject_choice" and refused.detail["acting_for"] == MARIO_CF
    # The patient herself still can.
    online.client.post(f"{exam_url}oscuramento/", {"action": "reveal"})
    assert not Concealment.objects.filter(revealed_at__isnull=True).exists()


def test_a_delegate_cannot_revoke_the_consent_of_a_person_who_can_act(online: CitizenExam) -> None:
    """Reproduces: a delegate revoked the delegator's consent to online delivery."""
    exam_url = f"/fse/esami/{online.booking.pk}/"
    client = delegate_client(online, Delegation.Kind.OTHER)
    page = client.get(exam_url).content.decode()
    assert "revoca-consenso" not in page and 'value="conceal"' not in page
    assert "La sua delega permette di vedere e scaricare" in page
    client.post(f"{exam_url}revoca-consenso/", {"confirm": "yes"})
    client.post(f"{exam_url}oscuramento/", {"action": "conceal"})
    assert online.booking.current_choice().delivery == "online"
    assert not Concealment.objects.exists()
    assert [e.detail["reason"] for e in audit("portal.consent_revoke", outcome="denied")] == ["not_representative"]
    assert [e.detail["reason"] for e in audit("portal.conceal", outcome="denied")] == ["not_representative"]
    # Seeing and downloading, every delegate may.
    (pdf_url,) = links_in(page, "report-pdf")
    assert client.get(pdf_url).status_code == 200


def test_a_parent_manages_a_minors_hiding_and_consent(online: CitizenExam) -> None:
    exam_url = f"/fse/esami/{online.booking.pk}/"
    client = delegate_client(online, Delegation.Kind.PARENT, minor=True)
    page = client.get(exam_url).content.decode()
    assert 'value="conceal"' in page
    client.post(f"{exam_url}oscuramento/", {"action": "conceal"})
    hiding = Concealment.objects.get(revealed_at__isnull=True)
    assert hiding.requested_by.codice_fiscale == LAURA_CF
    client.post(f"{exam_url}oscuramento/", {"action": "reveal"})  # the parent's own hiding
    assert not Concealment.objects.filter(revealed_at__isnull=True).exists()
    # The consent, the parent may revoke too, but before publication only (tests/portal/test_exam_pages.py).
    assert "revoca-consenso" not in page
    client.post(f"{exam_url}revoca-consenso/", {"confirm": "yes"})
    assert not online.booking.current_choice().revokes_consent
    assert [e.detail["reason"] for e in audit("portal.consent_revoke", outcome="denied")] == ["published"]


def test_a_parents_delegation_ends_at_18_on_every_portal_path(online: CitizenExam) -> None:
    from django.utils import timezone

    client = delegate_client(online, Delegation.Kind.PARENT, minor=True)
    exam_url = f"/fse/esami/{online.booking.pk}/"
    page = client.get(exam_url).content.decode()
    (pdf_url,) = links_in(page, "report-pdf")
    instance = Instance.objects.order_by("pk").first()
    assert instance is not None
    paths = [
        ("get", exam_url),
        ("get", f"{exam_url}immagini/"),
        ("get", f"{exam_url}immagini/{instance.pk}.jpg"),
        ("post", f"{exam_url}pacchetti/jpeg/"),
        ("get", pdf_url),
    ]
    assert [getattr(client, m)(u).status_code for m, u in paths] == [200, 200, 200, 302, 200]
    (package,) = DownloadPackage.objects.all()
    paths.append(("get", f"/fse/pacchetti/{package.pk}/"))
    # The child comes of age: the parent's delegation no longer holds, anywhere.
    today = timezone.localdate()
    Patient.objects.filter(pk=online.booking.patient_id).update(birth_date=today.replace(year=today.year - 18))
    assert [getattr(client, m)(u).status_code for m, u in paths] == [404] * len(paths)
    assert online.booking.procedure.description not in client.get("/fse/").content.decode()


def test_an_exam_whose_study_is_someone_elses_is_not_found(online: CitizenExam) -> None:
    """The policy decides on the study too: images re-assigned to another patient are theirs."""
    laura = Patient.objects.get(codice_fiscale=LAURA_CF)
    exam_url = f"/fse/esami/{online.booking.pk}/"
    assert online.client.get(exam_url).status_code == 200
    from archive.models import Study

    Study.objects.filter(pk=online.booking.study_id).update(patient=laura)
    assert online.client.get(exam_url).status_code == 404
    assert online.client.get(f"{exam_url}immagini/").status_code == 404


def test_the_citizen_reads_each_emergency_access_with_who_when_until_and_why(online: CitizenExam) -> None:
    from django.utils import timezone

    reason = "Paziente incosciente in pronto soccorso: servono le TC precedenti."
    row = emergency.emergency_access_grant(
        user=online.rep.colleague, patient=online.booking.patient, reason=reason, source="10.0.0.7"
    )
    response = online.client.get("/fse/accessi/")
    page = response.content.decode().replace("&#x27;", "'")
    section = page[page.index('id="emergency-title"') : page.index('id="accesses-title"')]
    assert "Chiara Degano" in section and "Giuliano Isontina" in section  # who, and of which authority
    assert reason in section
    (shown,) = response.context["page"].emergencies
    assert shown.at == row.at and shown.until == emergency.emergency_access_until(row)
    assert timezone.localtime(shown.until).strftime("%H:%M") in section
    assert "who-staff emergency" in page  # the audit row stands out too


# --- the identity provider ---------------------------------------------------------------------


def test_the_oidc_backend_maps_the_spid_fiscal_number_to_a_citizen_account(db: None) -> None:
    assert fiscal_code_from_claims({"fiscal_number": f"TINIT-{MARIO_CF}"}) == MARIO_CF
    assert fiscal_code_from_claims({"fiscal_number": "TINIT-RSSMRA56C12L424X"}) == ""
    backend = CitizenOIDCBackend.__new__(CitizenOIDCBackend)
    claims = {
        "fiscal_number": f"TINIT-{MARIO_CF}",
        "given_name": "Mario",
        "family_name": "Rossi",
        "email": "m@example.org",
    }
    assert backend.verify_claims(claims) and not backend.verify_claims({"email": "x@example.org"})
    assert not backend.filter_users_by_claims(claims).exists()
    user = backend.create_user(claims)
    assert user.citizen.origin == "oidc" and not user.has_usable_password()
    assert list(backend.filter_users_by_claims(claims)) == [user]
    assert get_user_model().objects.filter(username=MARIO_CF).count() == 1
    assert Booking.objects.count() == 0
