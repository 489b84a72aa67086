"""The citizen's exam pages as a new user meets them (issue 17): one date per exam,
one name for its number, the report readable in the page (served inline, audited),
plain words with the technical names in a "Per il medico" box, "Lei" throughout,
consent revocable only before the report, where and from when to collect a CD,
and one series numbering for the staff viewer, the citizen's viewer and the zips."""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile

import pytest
from django.test import Client
from django.utils import timezone

from archive.models import Instance, Report, Series, Study
from archive.series_numbers import series_number_assign, study_series_numbered
from booking.models import DistributionChoice
from kernel.models import AuditEvent
from portal import delegations
from portal.accounts import citizen_account_create
from portal.models import CdPickup, Delegation
from tests.archive.test_web import disposition_filenames
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup, linked_booking
from tests.pdf_text import pdf_text
from tests.portal.portal_helpers import CITIZEN_PASSWORD, CitizenExam, citizen_exam_make, citizen_login
from tests.reporting_helpers import Reporting, signed_report
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup

pytestmark = pytest.mark.django_db

JARGON = ("CAdES", ".p7m", "AgID", "DICOMDIR", "DICOMweb", "Accession", "accession", "Numero di accesso",
          "Numero di accettazione", "IHE", "PS3.10")  # fmt: skip
# The informal "tu" a page must not slip into (the pages address the citizen as "Lei").
TU = re.compile(r"\b(puoi|tuo|tua|tuoi|tue|hai|sei|accedi|torna|scarica il tuo|richiedilo|conferma la)\b", re.I)


@pytest.fixture
def online(cup: Cup, reporting: Reporting) -> CitizenExam:
    return citizen_exam_make(cup, reporting)


def visible_text(html: str) -> str:
    """The page's words as a person reads them, without the "Per il medico" boxes,
    the scripts' data and the tags."""
    html = re.sub(r"<details class=\"for-doctor.*?</details>", " ", html, flags=re.S)
    html = re.sub(r"<script.*?</script>", " ", html, flags=re.S)
    html = re.sub(r"<[^>]+>", " ", html)
    return " ".join(html.replace("&#x27;", "'").split())


def doctor_boxes(html: str) -> str:
    return " ".join(re.findall(r"<details class=\"for-doctor.*?</details>", html, flags=re.S))


def main_of(html: str) -> str:
    return html[html.index('<main id="content"') : html.index("</main>")]


def citizen_client(cf: str = MARIO_CF) -> Client:
    citizen_account_create(codice_fiscale=cf, password=CITIZEN_PASSWORD)
    client = Client()
    assert citizen_login(client, cf).status_code == 302
    return client


# --- one date --------------------------------------------------------------------------


def test_before_the_exam_the_date_is_the_appointment_with_its_time(cup: Cup) -> None:
    booking = cup.book(when=cup.next_slot(days=3))
    client = citizen_client()
    slot = timezone.localtime(booking.scheduled_at)
    for page in (client.get("/fse/").content.decode(), client.get(f"/fse/esami/{booking.pk}/").content.decode()):
        text = visible_text(main_of(page))
        assert "Appuntamento" in text and "Eseguito il" not in text
        assert slot.strftime("%H:%M") in text and str(slot.year) in text


def test_once_performed_the_date_is_the_studys_on_the_list_the_page_the_report_and_the_zip(
    cup: Cup, reporting: Reporting
) -> None:
    """The list showed the booked slot, the report and the zip the study date."""
    performed = dt.date(2026, 2, 27)  # the modality's StudyDate, not the day of the slot
    Study.objects.filter(pk=reporting.study.pk).update(study_date=performed)
    reporting.study.refresh_from_db()
    exam = citizen_exam_make(cup, reporting)
    from django.utils.formats import date_format

    shown = date_format(performed, "DATE_FORMAT")  # 27 febbraio 2026
    exams = visible_text(main_of(exam.client.get("/fse/").content.decode()))
    page = visible_text(main_of(exam.client.get(f"/fse/esami/{exam.booking.pk}/").content.decode()))
    for text in (exams, page):
        assert f"Eseguito il {shown}" in text and "Appuntamento" not in text
    slot_day = timezone.localtime(exam.booking.scheduled_at).strftime("%d/%m/%Y")
    assert slot_day not in exams
    from archive.reporting import services as reports

    report_text = pdf_text(reports.report_file(report=exam.report, which="pdf"))
    assert "27/02/2026" in report_text and "Numero di prenotazione" in report_text
    asked = exam.client.post(f"/fse/esami/{exam.booking.pk}/pacchetti/jpeg/")
    url = exam.client.get(f"{asked['Location']}?format=json").json()["download_url"]
    body = b"".join(exam.client.get(url).streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        raw = zf.read("README.TXT")
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8, marked as such for older Windows
    readme = raw.decode("utf-8-sig")
    assert "Data dell'esame / Date of the study: 27/02/2026" in readme
    assert f"Numero di prenotazione / Booking (accession) number: {exam.booking.accession_number}" in readme
    assert "qualità" in readme and "qualita'" not in readme


# --- one name, plain words, one form of address ------------------------------------------


def test_citizen_pages_say_numero_di_prenotazione_in_plain_words_and_lei(online: CitizenExam) -> None:
    exam_url = f"/fse/esami/{online.booking.pk}/"
    pages = {
        "exams": online.client.get("/fse/").content.decode(),
        "exam": online.client.get(exam_url).content.decode(),
        "viewer": online.client.get(f"{exam_url}immagini/").content.decode(),
    }
    asked = online.client.post(f"{exam_url}pacchetti/dicom/")
    pages["package"] = online.client.get(asked["Location"]).content.decode()
    pages["link_refused"] = online.client.get("/fse/scarica/not-a-token/").content.decode()
    for name in ("exams", "exam"):
        text = visible_text(main_of(pages[name]))
        assert f"Numero di prenotazione {online.booking.accession_number}" in text, name
        assert "Rossi" in text and "Mario Rossi (Lei)" in text, name
        assert " io " not in f" {text} ", name
    for name, html in pages.items():
        text = visible_text(main_of(html))
        assert not [w for w in JARGON if w in text], (name, [w for w in JARGON if w in text])
        assert not TU.findall(text), (name, TU.findall(text))
    # The technical names are there for a doctor, in a box of their own.
    box = doctor_boxes(pages["exam"])
    assert "Per il medico" in box and all(w in box for w in ("CAdES", ".p7m", "AgID", "DICOMDIR"))


def test_a_delegates_list_names_the_person_not_io(online: CitizenExam) -> None:
    mario = online.booking.patient
    laura = online.cup.laura
    delegations.delegation_register(
        delegator=mario,
        delegate=laura,
        kind=Delegation.Kind.OTHER,
        evidence="Delega scritta",
        user=online.cup.operator.user,
    )
    client = citizen_client(LAURA_CF)
    text = visible_text(main_of(client.get("/fse/").content.decode()))
    assert "Mario Rossi (per delega)" in text and "(Lei)" not in text
    page = visible_text(main_of(client.get(f"/fse/esami/{online.booking.pk}/").content.decode()))
    assert "Mario Rossi (per delega)" in page


# --- the report in the page -----------------------------------------------------------------


def test_the_report_is_shown_inline_for_pdfjs_and_still_audited(online: CitizenExam) -> None:
    page = online.client.get(f"/fse/esami/{online.booking.pk}/").content.decode()
    (viewer,) = re.findall(r'<div class="report-viewer" data-url="([^"]+)"', page)
    assert viewer.endswith("?mostra=1")
    for name in ("data-pdfjs", "data-worker", "data-fonts"):
        (static,) = re.findall(rf'{name}="([^"]+)"', page)
        assert static.startswith("/static/vendor/pdfjs/")
    inline = online.client.get(viewer.replace("&amp;", "&"))
    assert inline.status_code == 200 and inline["Content-Type"] == "application/pdf"
    assert disposition_filenames(inline["Content-Disposition"])[0] == "inline"
    from archive.reporting import services as reports

    assert inline.content == reports.report_file(report=online.report, which="pdf")
    downloaded = online.client.get(viewer.split("?")[0])
    assert disposition_filenames(downloaded["Content-Disposition"])[0] == "attachment"
    events = list(AuditEvent.objects.filter(action="portal.download", user=online.user).order_by("pk"))
    assert [e.detail.get("inline") for e in events] == [True, None]
    # PDF.js itself, from this server, under a policy that lets its worker run from here only.
    response = online.client.get(f"/fse/esami/{online.booking.pk}/")
    policy = dict((d.strip().split(" ", 1) + [""])[:2] for d in response["Content-Security-Policy"].split(";"))
    assert policy["worker-src"] == "'self'" and "unsafe" not in response["Content-Security-Policy"]
    for path in ("/static/vendor/pdfjs/build/pdf.min.mjs", "/static/vendor/pdfjs/build/pdf.worker.min.mjs"):
        script = Client().get(path)
        assert script.status_code == 200 and script["Content-Type"].startswith("text/javascript"), path
    # The p7m stays an attachment, whatever the query says.
    (p7m,) = re.findall(r'<a href="([^"]+)" class="[^"]*report-p7m', page)
    signed = online.client.get(f"{p7m}?mostra=1")
    assert disposition_filenames(signed["Content-Disposition"])[0] == "attachment"


# --- consent ------------------------------------------------------------------------------------


def test_before_the_report_the_page_offers_the_revocation_and_it_is_accepted(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)  # performed, not reported
    client = citizen_client()
    exam_url = f"/fse/esami/{booking.pk}/"
    page = client.get(exam_url).content.decode().replace("&#x27;", "'")
    assert "revoca-consenso" in page and "finché il referto non è pubblicato" in page
    response = client.post(f"{exam_url}revoca-consenso/", {"confirm": "yes"}, follow=True)
    assert "riceverà referto e immagini su CD" in response.content.decode()
    choice = booking.current_choice()
    assert choice.delivery == "cd" and choice.revokes_consent and choice.channel == "online"
    # Signed now: the exam is on CD, and nothing more to revoke.
    signed_report(reporting)
    page = client.get(exam_url).content.decode()
    assert "revoca-consenso" not in page and "Ritiro del CD" in page


def test_a_parent_revokes_a_minors_consent_before_the_report(cup: Cup, reporting: Reporting) -> None:
    booking = linked_booking(cup, reporting.study)
    today = timezone.localdate()
    mario = cup.mario
    type(mario).objects.filter(pk=mario.pk).update(birth_date=today.replace(year=today.year - 10, day=1))
    mario.refresh_from_db()
    delegations.delegation_register(
        delegator=mario, delegate=cup.laura, kind=Delegation.Kind.PARENT, evidence="Certificato", user=cup.operator.user
    )
    client = citizen_client(LAURA_CF)
    assert "revoca-consenso" in client.get(f"/fse/esami/{booking.pk}/").content.decode()
    client.post(f"/fse/esami/{booking.pk}/revoca-consenso/", {"confirm": "yes"})
    assert booking.current_choice().revokes_consent


# --- a CD: where and from when -------------------------------------------------------------------


def _pickup_rule(cup: Cup) -> None:
    CdPickup.objects.create(
        facility=cup.region.facility,
        place="Sportello ritiro referti, piano terra",
        hours="dal lunedì al venerdì, 8–13",
        days_after_signing=2,
    )


def test_a_booked_exam_on_cd_says_where_and_from_when_to_collect_it(cup: Cup) -> None:
    _pickup_rule(cup)
    booking = cup.book(delivery=DistributionChoice.Delivery.CD, when=cup.next_slot(days=2))
    client = citizen_client()
    before = visible_text(main_of(client.get(f"/fse/esami/{booking.pk}/").content.decode()))
    assert "Ritiro del CD" in before
    assert "da 2 giorni dopo la firma del referto, presso Sportello ritiro referti, piano terra" in before
    assert "dal lunedì al venerdì, 8–13" in before
    assert "Prenotato: referto e immagini su CD" in visible_text(main_of(client.get("/fse/").content.decode()))


def test_a_reported_exam_on_cd_gives_the_day_it_is_ready(cup: Cup, reporting: Reporting) -> None:
    _pickup_rule(cup)
    exam = citizen_exam_make(cup, reporting, delivery=DistributionChoice.Delivery.CD)
    signed = Report.objects.get(pk=exam.report.pk).signed_at
    ready = timezone.localdate(signed) + dt.timedelta(days=2)
    from django.utils.formats import date_format

    page = visible_text(main_of(exam.client.get(f"/fse/esami/{exam.booking.pk}/").content.decode()))
    assert f"Il CD con il referto e le immagini si ritira dal {date_format(ready, 'DATE_FORMAT')}" in page
    listing = visible_text(main_of(exam.client.get("/fse/").content.decode()))
    assert f"Su CD, da ritirare dal {date_format(ready, 'DATE_FORMAT')} presso Sportello ritiro referti" in listing


def test_without_a_pickup_rule_the_cd_is_collected_at_the_facility_the_day_after(cup: Cup) -> None:
    booking = cup.book(delivery=DistributionChoice.Delivery.CD)
    client = citizen_client()
    text = visible_text(main_of(client.get(f"/fse/esami/{booking.pk}/").content.decode()))
    assert f"si ritira dal giorno dopo la firma del referto, presso {cup.region.facility.name}" in text


# --- one series numbering ---------------------------------------------------------------------------


def test_series_keep_their_own_number_and_the_clashing_or_missing_get_the_next_free() -> None:
    rows = [Series(pk=pk, series_number=n) for pk, n in ((1, 2), (2, 2), (3, 5), (4, None), (5, 0))]
    assert series_number_assign(rows) == {1: 2, 3: 5, 2: 6, 4: 7, 5: 8}


def test_the_staff_viewer_the_citizens_viewer_and_the_jpeg_zip_number_series_alike(online: CitizenExam) -> None:
    """The citizen's viewer said "Serie 1" for the first in the list, the staff viewer the
    DICOM number, the JPEG folders both: now one function decides, for all three."""
    first, second = Series.objects.order_by("series_number")
    Series.objects.filter(pk=first.pk).update(series_number=7)
    Series.objects.filter(pk=second.pk).update(series_number=7)  # a clash: the later one moves on
    numbered = study_series_numbered(study_id=online.booking.study_id)
    assert [n.number for n in numbered] == [7, 8]
    expected = [f"Serie {n.number}" for n in numbered]

    staff = Client()
    staff.force_login(online.rep.radiologist)
    staff_page = staff.get(f"/refertazione/studi/{online.booking.study_id}/").content.decode()
    staff_labels = re.findall(r"<span>(Serie \d+) –", staff_page)
    viewer_page = online.client.get(f"/fse/esami/{online.booking.pk}/immagini/?serie=8&immagine=2").content.decode()
    citizen_labels = re.findall(r"<span>(Serie \d+) –", viewer_page)
    asked = online.client.post(f"/fse/esami/{online.booking.pk}/pacchetti/jpeg/")
    url = online.client.get(f"{asked['Location']}?format=json").json()["download_url"]
    with zipfile.ZipFile(io.BytesIO(b"".join(online.client.get(url).streaming_content))) as zf:
        folders = sorted({n.split("/")[0] for n in zf.namelist() if n.endswith(".jpg")})
    assert staff_labels == expected and citizen_labels == expected
    assert [f.split(" - ")[0].replace("Serie 0", "Serie ") for f in folders] == expected
    # ?serie= is the number: the page opened on series 8, its second image.
    assert 'id="viewer-series-title">Serie 8 –' in viewer_page and "immagine 2 di 3" in viewer_page
    second_images = list(numbered[1].instances)
    assert f"/immagini/{second_images[1].pk}.jpg" in re.findall(r'id="viewer-image" src="([^"]+)"', viewer_page)[0]


def test_the_viewer_offers_thumbnails_and_phone_help_not_only_arrow_keys(online: CitizenExam) -> None:
    page = online.client.get(f"/fse/esami/{online.booking.pk}/immagini/").content.decode()
    thumbs = re.findall(r'<img src="([^"]+\?formato=miniatura)"', page)
    assert len(thumbs) == 2
    thumb = online.client.get(thumbs[0].replace("&amp;", "&"))
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    full = online.client.get(re.findall(r'id="viewer-image" src="([^"]+)"', page)[0])
    from PIL import Image

    assert max(Image.open(io.BytesIO(thumb.content)).size) <= max(Image.open(io.BytesIO(full.content)).size)
    help_text = visible_text(page[page.index('id="viewer-help"') :][:2000])
    assert "scorra con un dito" in help_text.lower() and "allarghi due dita" in help_text.lower()
    assert 'type="range" id="viewer-slider"' in page and 'data-step="1"' in page
    assert Instance.objects.filter(rows__isnull=False).count() == 6
