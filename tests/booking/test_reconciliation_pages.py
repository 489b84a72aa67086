"""The reconciliation pages, through Django's test client."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from archive.models import Study
from archive.sample_data import PatientInfo, write_study
from booking import matching
from booking.models import Booking, Reconciliation
from kernel.models import AuditEvent
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup
from tests.dicomweb_helpers import ingest_files, make_user

LAURA = PatientInfo(patient_id=LAURA_CF, name="BIANCHI^LAURA", birth_date="19720702", sex="F")


def queued(cup: Cup, tmp_path: Path, *, accession: str, patient: PatientInfo = LAURA) -> Reconciliation:
    files = write_study(
        tmp_path / f"s{Study.objects.count()}",
        patient=patient,
        instances_per_series=2,
        accession_number=accession,
        study_description="TC TORACE",
    )
    ingest_files(files, cup.region.facility)
    study = Study.objects.order_by("-pk").first()
    assert study is not None
    assert matching.study_match(study_pk=study.pk).result == "queued"
    return Reconciliation.objects.get(study=study)


@pytest.fixture
def staff_client(cup: Cup) -> Client:
    client = Client()
    # As the demo's archivists: the queue shows study data, so it needs archive.view_study too.
    user = make_user("riconciliatore", "booking.reconcile_study", "archive.view_study", staff=False).user
    client.force_login(user)  # type: ignore[arg-type]
    return client


def test_pages_need_login_and_the_permission(cup: Cup, tmp_path: Path) -> None:
    item = queued(cup, tmp_path, accession="NOPE1")
    pages = [
        ("get", reverse("booking:reconciliation_list")),
        ("get", reverse("booking:reconciliation_detail", args=[item.pk])),
        ("post", reverse("booking:reconciliation_link", args=[item.pk])),
        ("post", reverse("booking:reconciliation_reassign", args=[item.pk])),
        ("post", reverse("booking:reconciliation_reject", args=[item.pk])),
    ]
    anonymous = Client()
    for method, url in pages:
        response = getattr(anonymous, method)(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url

    other = Client()
    other.force_login(cup.operator.user)  # a CUP operator without the permission
    for method, url in pages:
        assert getattr(other, method)(url, {"note": "x"}).status_code == 403, url
    assert not AuditEvent.objects.filter(action="booking.reconciliation.view").exists()
    item.refresh_from_db()
    assert item.state == "pending"


def test_list_shows_pending_items_and_filters_by_state(cup: Cup, tmp_path: Path, staff_client: Client) -> None:
    pending = queued(cup, tmp_path, accession="NOPE1")
    rejected = queued(cup, tmp_path, accession="NOPE2")
    matching.reconciliation_reject(reconciliation=rejected, user=None, note="prova")

    page = staff_client.get(reverse("booking:reconciliation_list"))
    assert page.status_code == 200
    html = page.content.decode()
    assert reverse("booking:reconciliation_detail", args=[pending.pk]) in html
    assert reverse("booking:reconciliation_detail", args=[rejected.pk]) not in html
    assert '<th scope="col">' in html and 'for="id_state"' in html

    page = staff_client.get(reverse("booking:reconciliation_list"), {"state": "rejected"})
    html = page.content.decode()
    assert reverse("booking:reconciliation_detail", args=[rejected.pk]) in html
    assert reverse("booking:reconciliation_detail", args=[pending.pk]) not in html

    page = staff_client.get(reverse("booking:reconciliation_list"), {"state": ""})
    assert page.context["page"].paginator.count == 2


def test_item_page_shows_booking_and_header_side_by_side_and_is_audited(
    cup: Cup, tmp_path: Path, staff_client: Client
) -> None:
    booking = cup.book(cup.mario)
    item = queued(cup, tmp_path, accession=booking.accession_number)

    page = staff_client.get(reverse("booking:reconciliation_detail", args=[item.pk]))

    assert page.status_code == 200
    html = page.content.decode()
    rows = {row.label: row for row in page.context["rows"]}
    assert rows["Cognome^Nome"].booking == "ROSSI^MARIO" and rows["Cognome^Nome"].dicom == "BIANCHI^LAURA"
    assert rows["Identificativo del paziente"].dicom == LAURA_CF and rows["Identificativo del paziente"].differs
    assert rows["Data di nascita"].booking == "12/03/1956" and rows["Data di nascita"].dicom == "02/07/1972"
    assert rows["Sesso"].differs
    assert not rows["Accession number"].differs
    assert rows["Esame"].dicom == "TC TORACE" and rows["Modalità"].dicom == "CT"
    # Differences are marked by a class and in words, not only by colour.
    assert html.count('<tr class="diff">') == sum(1 for r in rows.values() if r.differs) >= 4
    assert "≠ diverso" in html
    assert "Intestazione DICOM completa" in html and "(0010,0010)" in html
    assert 'action="' + reverse("booking:reconciliation_link", args=[item.pk]) + '"' in html
    assert 'for="reject-note"' in html and 'for="reassign-codice_fiscale"' in html
    (event,) = AuditEvent.objects.filter(action="booking.reconciliation.view")
    assert event.user is not None and event.user.get_username() == "riconciliatore"
    assert event.study == item.study and event.detail["reconciliation"] == item.pk


def test_link_to_the_proposed_booking_through_the_page(cup: Cup, tmp_path: Path, staff_client: Client) -> None:
    booking = cup.book(cup.mario)
    item = queued(cup, tmp_path, accession=booking.accession_number)

    response = staff_client.post(
        reverse("booking:reconciliation_link", args=[item.pk]), {"booking": booking.pk, "note": "errore in modalità"}
    )

    assert response.status_code == 302 and response["Location"] == reverse("booking:reconciliation_list")
    booking.refresh_from_db()
    assert booking.study == item.study and booking.status == Booking.Status.PERFORMED
    study = Study.objects.get(pk=item.study_id)
    assert study.patient == cup.mario and study.dicom_patient_id == MARIO_CF and study.patient_name == "ROSSI^MARIO"
    item.refresh_from_db()
    assert item.state == "linked" and item.note == "errore in modalità"
    assert AuditEvent.objects.filter(action="booking.reconciliation.link").count() == 1
    follow = staff_client.get(response["Location"])
    assert "Studio collegato alla prenotazione" in follow.content.decode()


def test_link_to_another_booking_by_accession_number(cup: Cup, tmp_path: Path, staff_client: Client) -> None:
    laura_booking = cup.book(cup.laura)
    item = queued(cup, tmp_path, accession="TYPO1")
    url = reverse("booking:reconciliation_link", args=[item.pk])

    missing = staff_client.post(url, {"accession_number": "NOSUCH"})
    assert missing.status_code == 400
    assert "Nessuna prenotazione con accession number NOSUCH" in missing.content.decode()

    response = staff_client.post(url, {"accession_number": laura_booking.accession_number.lower()})
    assert response.status_code == 302
    laura_booking.refresh_from_db()
    assert laura_booking.study_id == item.study_id and laura_booking.status == "performed"
    assert Study.objects.get(pk=item.study_id).accession_number == laura_booking.accession_number


def test_reassign_through_the_page(cup: Cup, tmp_path: Path, staff_client: Client) -> None:
    unknown = PatientInfo(patient_id="PS-1", name="IGNOTO^UOMO", birth_date="", sex="M")
    item = queued(cup, tmp_path, accession="", patient=unknown)
    url = reverse("booking:reconciliation_reassign", args=[item.pk])

    bad = staff_client.post(url, {"codice_fiscale": "RSSMRA56C12L424X"})
    assert bad.status_code == 400 and "carattere di controllo" in bad.content.decode()
    unknown_cf = staff_client.post(url, {"codice_fiscale": "VRDGPP80A01L424F"})
    assert unknown_cf.status_code == 400 and "Nessun paziente registrato" in unknown_cf.content.decode()

    response = staff_client.post(url, {"codice_fiscale": MARIO_CF.lower(), "note": "urgenza PS"})
    assert response.status_code == 302
    study = Study.objects.get(pk=item.study_id)
    assert study.patient == cup.mario and study.dicom_patient_id == MARIO_CF
    item.refresh_from_db()
    assert item.state == "reassigned"
    assert AuditEvent.objects.filter(action="booking.reconciliation.reassign").count() == 1


def test_reject_through_the_page_needs_a_note(cup: Cup, tmp_path: Path, staff_client: Client) -> None:
    booking = cup.book(cup.mario)
    item = queued(cup, tmp_path, accession=booking.accession_number)
    url = reverse("booking:reconciliation_reject", args=[item.pk])

    refused = staff_client.post(url, {"note": ""})
    assert refused.status_code == 400
    assert "Indicare il motivo" in refused.content.decode()
    item.refresh_from_db()
    assert item.state == "pending"

    response = staff_client.post(url, {"note": "esame di un'altra paziente"})
    assert response.status_code == 302
    item.refresh_from_db()
    assert item.state == "rejected" and item.note == "esame di un'altra paziente"
    booking.refresh_from_db()
    assert booking.study is None and booking.status == "booked"
    assert Study.objects.get(pk=item.study_id).patient == cup.laura

    # Resolved: the page shows it without the forms, and a stale form is refused.
    page = staff_client.get(reverse("booking:reconciliation_detail", args=[item.pk]))
    assert page.status_code == 200 and "Respingi</button>" not in page.content.decode()
    again = staff_client.post(reverse("booking:reconciliation_link", args=[item.pk]), {"booking": booking.pk})
    assert again.status_code == 400 and "già stato riconciliato" in again.content.decode()


def test_item_page_of_a_study_without_a_booking(cup: Cup, tmp_path: Path, staff_client: Client) -> None:
    item = queued(cup, tmp_path, accession="")
    page = staff_client.get(reverse("booking:reconciliation_detail", args=[item.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "studio senza accession number" in html
    assert '<tr class="diff">' not in html and "Collega alla prenotazione proposta" not in html


# --- the access policy: a hidden study, another authority's study ------------------------------


def test_a_hidden_study_is_not_in_the_queue(cup: Cup, tmp_path: Path, staff_client: Client) -> None:
    from portal.oscuramento import conceal

    shown = queued(cup, tmp_path, accession="NOPE1")
    hidden = queued(cup, tmp_path, accession="NOPE2")
    conceal(patient=hidden.study.patient, study=hidden.study)

    page = staff_client.get(reverse("booking:reconciliation_list"), {"state": ""})
    html = page.content.decode()
    assert page.context["page"].paginator.count == 1
    assert reverse("booking:reconciliation_detail", args=[shown.pk]) in html
    assert reverse("booking:reconciliation_detail", args=[hidden.pk]) not in html
    assert "oscurat" not in html.lower()
    missing = staff_client.get(reverse("booking:reconciliation_detail", args=[hidden.pk + 1000]))
    response = staff_client.get(reverse("booking:reconciliation_detail", args=[hidden.pk]))
    assert response.status_code == missing.status_code == 404
    assert hidden.study.study_instance_uid not in response.content.decode()
    for action in ("reconciliation_link", "reconciliation_reassign", "reconciliation_reject"):
        assert staff_client.post(reverse(f"booking:{action}", args=[hidden.pk]), {"note": "x"}).status_code == 404
    hidden.refresh_from_db()
    assert hidden.state == "pending"
    assert not AuditEvent.objects.filter(action="booking.reconciliation.view", study=hidden.study).exists()
    denied = AuditEvent.objects.filter(action="booking.reconciliation.denied", study=hidden.study)
    assert {e.detail["reason"] for e in denied} == {"concealed"}


def test_another_authoritys_study_is_not_in_the_queue(cup: Cup, tmp_path: Path) -> None:
    from archive.models import HealthAuthority, StaffProfile

    item = queued(cup, tmp_path, accession="NOPE1")
    udine = HealthAuthority.objects.create(code="ASUFC", name="Azienda sanitaria universitaria Friuli Centrale")
    user = make_user("riconciliatore-ud", "booking.reconcile_study", "archive.view_study", staff=False).user
    StaffProfile.objects.create(user=user, authority=udine)
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    assert client.get(reverse("booking:reconciliation_list")).context["page"].paginator.count == 0
    assert client.get(reverse("booking:reconciliation_detail", args=[item.pk])).status_code == 404
    # Without archive.view_study, nothing of the archive either.
    blind = Client()
    blind.force_login(make_user("solo-cup", "booking.reconcile_study", staff=False).user)  # type: ignore[arg-type]
    assert blind.get(reverse("booking:reconciliation_list")).context["page"].paginator.count == 0
    assert blind.get(reverse("booking:reconciliation_detail", args=[item.pk])).status_code == 404
