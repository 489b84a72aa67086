"""The staff side of the oscuramento and of delegations, through the pages:
a concealed study marked on the work list and refused on its pages (DICOMweb's
answers are tests/archive/test_access.py's), the emergency access (a reason, a time limit, the audit trail),
the revealed study opening again, and the CUP desk's delegations with their
errors and permissions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from archive import access
from archive.models import AuditEvent, Patient, Study
from portal.availability import conceal, delegation_register, emergency_access, reveal
from portal.models import Delegation, EmergencyAccess
from tests.archive.test_reporting_pages import another_study
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup
from tests.dicomweb_helpers import make_user
from tests.reporting_helpers import Reporting, signed_row
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup

REASON = "Paziente in pronto soccorso, politrauma: servono gli esami precedenti."
# Valid codes (check character included) of nobody in the index.
STRANGER_CF = "VRDGPP80A01L424F"
DESK_PERMS = ("portal.add_delegation", "portal.change_delegation")


def client_for(user: object) -> Client:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return client


def hidden(rep: Reporting) -> Study:
    conceal(patient=rep.study.patient, study=rep.study)
    return rep.study


def study_url(study: Study) -> str:
    return reverse("reporting:study", args=[study.pk])


def emergency_url(study: Study) -> str:
    return reverse("portal:staff_emergency_access", args=[study.pk])


# --- The guard ---------------------------------------------------------------------------


def test_the_portal_registers_its_guard(reporting: Reporting) -> None:
    study = reporting.study
    assert access.studies_concealed([study.pk]) == set()
    assert not access.study_concealed_for(reporting.radiologist, study)
    hidden(reporting)
    assert access.studies_concealed([study.pk]) == {study.pk}
    assert access.study_concealed_for(reporting.radiologist, study)


# --- Concealed: marked, refused ------------------------------------------------------------


def test_a_concealed_study_is_marked_on_the_worklist_and_not_linked(reporting: Reporting) -> None:
    study = hidden(reporting)
    response = client_for(reporting.radiologist).get(reverse("reporting:worklist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Oscurato dal paziente" in page
    assert f'href="{emergency_url(study)}"' in page
    assert f'href="{study_url(study)}"' not in page
    event = AuditEvent.objects.filter(action="report.worklist", study=study).latest("id")
    assert event.detail["concealed"] is True


def test_a_concealed_study_page_is_refused_and_leads_to_the_emergency_access(reporting: Reporting) -> None:
    study = hidden(reporting)
    client = client_for(reporting.radiologist)
    response = client.get(study_url(study))
    assert response.status_code == 403
    page = response.content.decode()
    assert "oscurato dal paziente" in page
    assert f'href="{emergency_url(study)}"' in page
    assert "Rossi" not in page and "ROSSI" not in page  # no patient data beyond date, exam, facility
    event = AuditEvent.objects.get(action="study.denied", study=study)
    assert event.outcome == AuditEvent.Outcome.DENIED
    assert event.detail == {"reason": "concealed"}
    assert not AuditEvent.objects.filter(action="study.view", study=study).exists()


def test_a_concealed_studys_report_and_its_pdf_are_refused(reporting: Reporting) -> None:
    report = signed_row(reporting)
    hidden(reporting)
    client = client_for(reporting.radiologist)
    assert client.get(reverse("reporting:report_detail", args=[report.pk])).status_code == 403
    assert client.get(reverse("reporting:report_pdf", args=[report.pk])).status_code == 403
    response = client.post(reverse("reporting:report_start", args=[reporting.study.pk]))
    assert response.status_code == 403
    assert AuditEvent.objects.filter(action="study.denied", detail__reason="concealed").count() == 3


# --- The emergency access --------------------------------------------------------------------


def test_the_emergency_page_shows_the_study_but_not_the_images(reporting: Reporting) -> None:
    study = hidden(reporting)
    response = client_for(reporting.radiologist).get(emergency_url(study))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Studio oscurato dal paziente" in page
    assert reporting.region.facility.name in page
    assert '<label for="id_reason"' in page
    assert "/dicomweb/" not in page
    event = AuditEvent.objects.get(action="portal.emergency_access.page")
    assert event.study == study
    assert event.detail["concealed"] is True


@pytest.mark.parametrize("reason", ["", "urgente", "   ur      gente  "])
def test_an_emergency_access_without_a_real_reason_is_refused(reporting: Reporting, reason: str) -> None:
    study = hidden(reporting)
    client = client_for(reporting.radiologist)
    response = client.post(emergency_url(study), {"reason": reason})
    assert response.status_code == 400
    page = response.content.decode()
    assert "errorlist" in page
    assert "almeno 10 caratteri" in page or "obbligatorio" in page
    assert not EmergencyAccess.objects.exists()
    event = AuditEvent.objects.get(action="portal.emergency_access")
    assert event.outcome == AuditEvent.Outcome.DENIED
    assert client.get(study_url(study)).status_code == 403


def test_an_emergency_access_with_a_reason_opens_the_study_and_is_recorded(reporting: Reporting) -> None:
    study = hidden(reporting)
    client = client_for(reporting.radiologist)
    response = client.post(emergency_url(study), {"reason": REASON}, REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 302
    assert response["Location"] == study_url(study)

    row = EmergencyAccess.objects.get()
    assert (row.user, row.study, row.reason, row.source) == (reporting.radiologist, study, REASON, "10.1.2.3")
    event = AuditEvent.objects.get(action="portal.emergency_access", outcome=AuditEvent.Outcome.SUCCESS)
    assert event.study == study and event.user == reporting.radiologist
    assert event.detail["reason"] == REASON and event.detail["concealed"] is True

    page = client.get(study_url(study))
    assert page.status_code == 200
    assert "accesso in emergenza" in page.content.decode()
    view = AuditEvent.objects.get(action="study.view", study=study)
    assert view.detail["concealed"] is True
    # The work list links the study again, still marked.
    worklist = client.get(reverse("reporting:worklist")).content.decode()
    assert f'href="{study_url(study)}"' in worklist
    assert "Oscurato dal paziente" in worklist


def test_an_emergency_access_is_the_users_only(reporting: Reporting) -> None:
    study = hidden(reporting)
    emergency_access(user=reporting.radiologist, study=study, reason=REASON, source="")
    assert client_for(reporting.radiologist).get(study_url(study)).status_code == 200
    assert client_for(reporting.colleague).get(study_url(study)).status_code == 403


@override_settings(PACS_EMERGENCY_ACCESS_MINUTES=5)
def test_an_emergency_access_expires(reporting: Reporting) -> None:
    study = hidden(reporting)
    client = client_for(reporting.radiologist)
    assert client.post(emergency_url(study), {"reason": REASON}).status_code == 302
    now = timezone.now()
    EmergencyAccess.objects.update(at=now - dt.timedelta(minutes=4))
    assert client.get(study_url(study)).status_code == 200
    EmergencyAccess.objects.update(at=now - dt.timedelta(minutes=settings.PACS_EMERGENCY_ACCESS_MINUTES, seconds=1))
    response = client.get(study_url(study))
    assert response.status_code == 403
    assert AuditEvent.objects.filter(action="study.denied", study=study, detail__reason="concealed").exists()
    # A new access, with its own reason, opens it again.
    assert client.post(emergency_url(study), {"reason": REASON}).status_code == 302
    assert client.get(study_url(study)).status_code == 200
    assert EmergencyAccess.objects.count() == 2


def test_a_revealed_study_opens_again(reporting: Reporting) -> None:
    study = hidden(reporting)
    client = client_for(reporting.radiologist)
    assert client.get(study_url(study)).status_code == 403
    reveal(patient=study.patient, study=study)
    assert client.get(study_url(study)).status_code == 200
    worklist = client.get(reverse("reporting:worklist")).content.decode()
    assert "Oscurato dal paziente" not in worklist
    assert f'href="{study_url(study)}"' in worklist


def test_the_emergency_page_of_a_study_not_concealed_only_points_to_it(reporting: Reporting) -> None:
    study = reporting.study
    client = client_for(reporting.radiologist)
    page = client.get(emergency_url(study))
    assert page.status_code == 200
    assert "non è oscurato" in page.content.decode()
    assert 'name="reason"' not in page.content.decode()
    response = client.post(emergency_url(study), {"reason": REASON})
    assert response.status_code == 302 and response["Location"] == study_url(study)
    assert not EmergencyAccess.objects.exists()


def test_the_emergency_page_keeps_the_authority_rule_and_needs_a_login(reporting: Reporting) -> None:
    study = hidden(reporting)
    response = client_for(reporting.foreign).post(emergency_url(study), {"reason": REASON})
    assert response.status_code == 403
    assert not EmergencyAccess.objects.exists()
    assert AuditEvent.objects.get(action="study.denied", study=study).detail == {"reason": "authority"}

    anonymous = Client().get(emergency_url(study))
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("login"))

    no_perm = make_user("segreteria", staff=True).user
    assert client_for(no_perm).get(emergency_url(study)).status_code == 403


# --- The delegations desk -------------------------------------------------------------------


def desk_operator(*perms: str) -> object:
    return make_user("sportello", *perms, staff=False).user


def register_data(**overrides: str) -> dict[str, str]:
    data = {
        "delegator_cf": MARIO_CF,
        "delegate_cf": LAURA_CF,
        "kind": Delegation.Kind.GUARDIAN,
        "evidence": "Decreto di nomina del giudice tutelare n. 123/2026, verificato in originale.",
        "valid_until": "",
    }
    data.update(overrides)
    return data


def test_the_desk_registers_a_delegation(cup: Cup) -> None:
    operator = desk_operator(*DESK_PERMS)
    client = client_for(operator)
    until = timezone.localdate() + dt.timedelta(days=30)
    response = client.post(
        reverse("portal:staff_delegations"), register_data(delegator_cf=MARIO_CF.lower(), valid_until=str(until))
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    delegation = Delegation.objects.get()
    assert (delegation.delegator, delegation.delegate, delegation.registered_by) == (cup.mario, cup.laura, operator)
    assert timezone.localtime(delegation.valid_until).date() == until + dt.timedelta(days=1)
    assert AuditEvent.objects.filter(action="portal.delegation.register", outcome="success").count() == 1

    page = client.get(reverse("portal:staff_delegations"))
    assert page.status_code == 200
    assert LAURA_CF in page.content.decode()
    listed = AuditEvent.objects.filter(action="portal.delegation.list").latest("id")
    assert listed.detail["delegations"] == [delegation.pk]


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"delegate_cf": STRANGER_CF}, "delegate_cf", "Nessun paziente con codice fiscale"),
        ({"delegator_cf": "RSSMRA56C12L424X"}, "delegator_cf", "carattere di controllo"),
        ({"delegate_cf": MARIO_CF}, "delegate_cf", "non può delegare sé stesso"),
        ({"evidence": "  "}, "evidence", "obbligatorio"),
        ({"kind": ""}, "kind", "obbligatorio"),
        ({"valid_until": "2020-01-01"}, "valid_until", "già passata"),
    ],
)
def test_the_desk_shows_each_error_at_its_field(cup: Cup, overrides: dict[str, str], field: str, text: str) -> None:
    client = client_for(desk_operator(*DESK_PERMS))
    response = client.post(reverse("portal:staff_delegations"), register_data(**overrides))
    assert response.status_code == 400
    form = response.context["form"]
    assert list(form.errors) == [field]
    assert text in " ".join(form.errors[field])
    assert text in response.content.decode().replace("&#x27;", "'")
    assert not Delegation.objects.exists()
    failed = AuditEvent.objects.get(action="portal.delegation.register")
    assert failed.outcome == AuditEvent.Outcome.FAILURE and failed.detail["errors"] == [field]


def test_the_desk_revokes_a_delegation(cup: Cup) -> None:
    operator = desk_operator(*DESK_PERMS)
    delegation = delegation_register(
        delegator=cup.mario, delegate=cup.laura, kind=Delegation.Kind.OTHER, evidence="Delega firmata.", user=operator
    )
    client = client_for(operator)
    assert f'action="{reverse("portal:staff_delegation_revoke", args=[delegation.pk])}"' in (
        client.get(reverse("portal:staff_delegations")).content.decode()
    )
    url = reverse("portal:staff_delegation_revoke", args=[delegation.pk])
    assert client.get(url).status_code == 405
    response = client.post(url)
    assert response.status_code == 302 and response["Location"] == reverse("portal:staff_delegations")
    delegation.refresh_from_db()
    assert delegation.revoked_at is not None and delegation.revoked_by == operator
    assert AuditEvent.objects.filter(action="portal.delegation.revoke", outcome="success").count() == 1
    listed = client.get(reverse("portal:staff_delegations"))
    assert "Delega revocata" in listed.content.decode()
    assert list(listed.context["page"].object_list) == []

    again = client.post(url, follow=True)
    assert "già stata revocata" in again.content.decode()
    assert AuditEvent.objects.filter(action="portal.delegation.revoke", outcome="failure").count() == 1


def test_the_desk_needs_its_permissions(cup: Cup, reporting: Reporting) -> None:
    delegation = delegation_register(
        delegator=cup.mario,
        delegate=cup.laura,
        kind=Delegation.Kind.OTHER,
        evidence="Delega firmata.",
        user=cup.operator.user,
    )
    desk = reverse("portal:staff_delegations")
    revoke = reverse("portal:staff_delegation_revoke", args=[delegation.pk])

    radiologist = client_for(reporting.radiologist)
    assert radiologist.get(desk).status_code == 403
    assert radiologist.post(desk, register_data(delegator_cf=LAURA_CF, delegate_cf=MARIO_CF)).status_code == 403
    assert radiologist.post(revoke).status_code == 403

    registrar = client_for(desk_operator("portal.add_delegation"))
    page = registrar.get(desk)
    assert page.status_code == 200
    assert revoke not in page.content.decode()  # no revoke button without the permission
    assert registrar.post(revoke).status_code == 403

    anonymous = Client()
    for response in (anonymous.get(desk), anonymous.post(revoke)):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    assert Delegation.objects.get().revoked_at is None
    assert Delegation.objects.count() == 1


@pytest.mark.django_db
def test_the_cup_role_holds_the_desk_permissions() -> None:
    from archive.demo import ROLES

    for perm in DESK_PERMS:
        assert perm in ROLES["Operatori CUP"]
        app, codename = perm.split(".")
        assert Permission.objects.filter(content_type__app_label=app, codename=codename).exists()


def test_both_sides_of_a_delegation_must_be_in_the_index(cup: Cup) -> None:
    Patient.objects.filter(pk=cup.laura.pk).update(codice_fiscale="")
    response = client_for(desk_operator(*DESK_PERMS)).post(reverse("portal:staff_delegations"), register_data())
    assert response.status_code == 400
    assert "delegate_cf" in response.context["form"].errors


def test_a_concealed_prior_is_marked_on_the_study_page(reporting: Reporting, tmp_path: Path) -> None:
    prior = another_study(tmp_path / "prior", reporting.region, accession_number="TSC260000002")
    conceal(patient=prior.patient, study=prior)
    page = client_for(reporting.radiologist).get(study_url(reporting.study))
    assert page.status_code == 200
    text = page.content.decode()
    assert "Oscurato dal paziente" in text
    assert f'href="{emergency_url(prior)}"' in text
    assert f'href="{study_url(prior)}"' not in text
