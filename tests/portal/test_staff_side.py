"""The staff side of the oscuramento and of delegations, through the pages.

A hidden study does not exist for a professional without a live emergency
access (DPCM 178/2015, art. 8): absent from the work list, its filters and the
priors, its pages 404 like a missing study, nothing saying it is hidden. The
emergency access is asked for a patient by holders of
``portal.emergency_access`` only, with a reason, for a limited time, and the
page and its links are the same whether or not anything is hidden. The CUP
desk's delegations, their kinds checked against the delegator's age.
DICOMweb's and the REST API's answers are tests/archive/test_access.py's.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse
from django.utils import timezone

from archive import access
from archive.models import Patient, Study
from kernel.models import AuditEvent
from portal import desk_views
from portal.delegations import delegation_register
from portal.emergency import emergency_access_grant
from portal.errors import PortalError
from portal.models import Delegation, EmergencyAccess
from portal.oscuramento import conceal, reveal
from tests.archive.test_reporting_pages import another_study
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup
from tests.dicomweb_helpers import make_user
from tests.reporting_helpers import RADIOLOGIST_PERMS, Reporting, signed_row
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup

REASON = "Paziente in pronto soccorso, politrauma: servono gli esami precedenti."
# Valid codes (check character included) of nobody in the index.
STRANGER_CF = "VRDGPP80A01L424F"
DESK_PERMS = ("portal.add_delegation", "portal.change_delegation")
# What no page shown to a professional may say about a hidden study.
HIDING_WORDS = re.compile(r"oscurat|nascost|conceal", re.IGNORECASE)


def client_for(user: object) -> Client:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return client


def hidden(rep: Reporting) -> Study:
    conceal(patient=rep.study.patient, study=rep.study)
    return rep.study


def study_url(study: Study) -> str:
    return reverse("reporting:study", args=[study.pk])


def patient_url(patient: Patient) -> str:
    return reverse("reporting:patient", args=[patient.pk])


EMERGENCY_URL = "/fse/sportello/emergenza/"


def emergency_post(client: Client, cf: str = MARIO_CF, reason: str = REASON, **extra: object):  # type: ignore[no-untyped-def]
    return client.post(EMERGENCY_URL, {"codice_fiscale": cf, "reason": reason}, **extra)


def without_tokens(html: str) -> str:
    """The page without what changes at each request (CSRF tokens)."""
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)


# --- The policy ---------------------------------------------------------------------------


def test_the_portal_registers_its_policy(reporting: Reporting) -> None:
    study = reporting.study
    principal = access.principal_for_user(reporting.radiologist)
    assert access.studies_concealed([study.pk]) == set()
    assert access.study_visible(principal, study)
    hidden(reporting)
    assert access.studies_concealed([study.pk]) == {study.pk}
    assert access.study_verdict(principal, study) is access.Verdict.CONCEALED
    assert list(access.studies_visible(principal)) == []


# --- A hidden study does not exist -----------------------------------------------------------


def test_a_hidden_study_is_absent_from_the_worklist_its_count_and_its_filters(reporting: Reporting) -> None:
    study = reporting.study
    client = client_for(reporting.radiologist)
    before = client.get(reverse("reporting:worklist"))
    assert study.accession_number in before.content.decode()
    facility_choices = [str(c[0]) for c in before.context["form"].fields["facility"].choices]
    assert str(reporting.region.facility.pk) in facility_choices
    listed = AuditEvent.objects.filter(action="report.worklist", study=study).count()

    hidden(reporting)
    response = client.get(reverse("reporting:worklist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert study.accession_number not in page
    assert study_url(study) not in page
    assert not HIDING_WORDS.search(page)
    assert response.context["total"] == 0
    assert "Nessuno studio da refertare" in page
    # The facility and modality choices come from the policy too: nothing hints at the study.
    facility_choices = [str(c[0]) for c in response.context["form"].fields["facility"].choices]
    assert str(reporting.region.facility.pk) not in facility_choices
    assert [c[0] for c in response.context["form"].fields["modality"].choices if c[0]] == []
    assert AuditEvent.objects.filter(action="report.worklist", study=study).count() == listed


def test_a_hidden_study_answers_404_like_a_study_that_is_not_there(reporting: Reporting) -> None:
    report = signed_row(reporting)
    study = hidden(reporting)
    # A colleague: the report's author keeps seeing the study (a hidden document stays visible to its author).
    client = client_for(reporting.colleague)
    missing = client.get(reverse("reporting:study", args=[study.pk + 1000]))
    response = client.get(study_url(study))
    assert response.status_code == missing.status_code == 404
    assert response.content == missing.content
    assert not HIDING_WORDS.search(response.content.decode())
    for url in (
        reverse("reporting:report_detail", args=[report.pk]),
        reverse("reporting:report_pdf", args=[report.pk]),
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("reporting:report_start", args=[study.pk])).status_code == 404
    refusals = AuditEvent.objects.filter(action="study.denied", study=study, user=reporting.colleague)
    assert refusals.count() == 4
    assert {e.detail["reason"] for e in refusals} == {"concealed"}  # the audit log knows why
    assert not AuditEvent.objects.filter(action="study.view", study=study).exists()


def test_a_hidden_prior_is_absent_from_the_study_page(reporting: Reporting, tmp_path: Path) -> None:
    prior = another_study(tmp_path / "prior", reporting.region, accession_number="TSC260000002")
    client = client_for(reporting.radiologist)
    shown = client.get(study_url(reporting.study)).content.decode()
    assert study_url(prior) in shown

    conceal(patient=prior.patient, study=prior)
    response = client.get(study_url(reporting.study))
    assert response.status_code == 200
    page = response.content.decode()
    assert study_url(prior) not in page
    assert response.context["priors"] == []
    assert "Nessun altro esame di questo paziente" in page
    assert not HIDING_WORDS.search(page)
    view = AuditEvent.objects.filter(action="study.view", study=reporting.study).latest("id")
    assert view.detail["priors"] == []


def test_the_patients_page_lists_only_what_the_policy_shows(reporting: Reporting, tmp_path: Path) -> None:
    prior = another_study(tmp_path / "prior", reporting.region, accession_number="TSC260000002")
    patient = reporting.study.patient
    client = client_for(reporting.radiologist)
    page = client.get(patient_url(patient))
    assert page.status_code == 200
    assert {s.pk for s in page.context["studies"]} == {reporting.study.pk, prior.pk}

    conceal(patient=patient, study=prior)
    page = client.get(patient_url(patient))
    assert [s.pk for s in page.context["studies"]] == [reporting.study.pk]
    assert not HIDING_WORDS.search(page.content.decode())
    event = AuditEvent.objects.filter(action="reporting.patient.view", patient=patient).latest("id")
    assert event.detail["studies"] == [reporting.study.study_instance_uid]

    # Another authority's radiologist: the patient has no study of theirs, so no such patient.
    assert client_for(reporting.foreign).get(patient_url(patient)).status_code == 404


def test_the_study_page_offers_the_emergency_access_whether_or_not_anything_is_hidden(
    reporting: Reporting, tmp_path: Path
) -> None:
    prior = another_study(tmp_path / "prior", reporting.region, accession_number="TSC260000002")
    client = client_for(reporting.radiologist)
    link = f'href="{EMERGENCY_URL}?paziente={reporting.study.patient_id}&amp;next='
    nothing_hidden = client.get(study_url(reporting.study))
    conceal(patient=prior.patient, study=prior)
    one_hidden = client.get(study_url(reporting.study))
    assert nothing_hidden.context["emergency_url"] == one_hidden.context["emergency_url"] != ""
    assert link in nothing_hidden.content.decode() and link in one_hidden.content.decode()
    assert not nothing_hidden.context["emergency_live"] and not one_hidden.context["emergency_live"]

    # Without the permission (an archivist who reads studies), no link.
    archivist = make_user("archivista", *[p for p in RADIOLOGIST_PERMS if p != "portal.emergency_access"]).user
    assert EMERGENCY_URL not in client_for(archivist).get(study_url(reporting.study)).content.decode()


# --- The emergency access ----------------------------------------------------------------------


def test_the_emergency_page_names_the_patient_of_the_study_page(reporting: Reporting) -> None:
    patient = reporting.study.patient
    client = client_for(reporting.radiologist)
    response = client.get(EMERGENCY_URL, {"paziente": patient.pk, "next": study_url(reporting.study)})
    assert response.status_code == 200
    page = response.content.decode()
    assert f'value="{MARIO_CF}"' in page and "ROSSI" in page
    assert '<label for="id_reason"' in page
    assert f'name="next" value="{study_url(reporting.study)}"' in page
    assert "/dicomweb/" not in page
    # A patient the user may not see is not named (another authority's radiologist).
    foreign = client_for(reporting.foreign).get(EMERGENCY_URL, {"paziente": patient.pk}).content.decode()
    assert MARIO_CF not in foreign and "ROSSI" not in foreign


def test_the_emergency_page_says_the_same_whether_or_not_anything_is_hidden(
    cup: Cup, reporting: Reporting, tmp_path: Path
) -> None:
    client = client_for(reporting.radiologist)
    mario = reporting.study.patient
    prior = another_study(tmp_path / "prior", reporting.region, accession_number="TSC260000002")
    ask = {"paziente": mario.pk, "next": study_url(reporting.study)}
    before = without_tokens(client.get(EMERGENCY_URL, ask).content.decode())
    conceal(patient=mario, study=prior)
    after = without_tokens(client.get(EMERGENCY_URL, ask).content.decode())
    assert before == after and MARIO_CF in after
    assert not HIDING_WORDS.search(re.sub(r"<div class=\"message warning\">.*?</div>", "", after, flags=re.S))
    # Granting answers alike for a patient with hidden studies and one without (Laura, from the CUP).
    hid = emergency_post(client, MARIO_CF)
    none = emergency_post(client, LAURA_CF)
    assert hid.status_code == none.status_code == 302
    assert hid["Location"] == patient_url(mario) and none["Location"] == patient_url(cup.laura)
    # Laura has no study of this authority, but the user holds an access for her: her page opens, empty.
    assert client.get(patient_url(cup.laura)).context["studies"] == []


@pytest.mark.parametrize("reason", ["", "urgente", "   ur      gente  "])
def test_an_emergency_access_without_a_real_reason_is_refused(reporting: Reporting, reason: str) -> None:
    study = hidden(reporting)
    client = client_for(reporting.radiologist)
    response = emergency_post(client, reason=reason)
    assert response.status_code == 400
    page = response.content.decode()
    assert "errorlist" in page
    assert "almeno 10 caratteri" in page or "obbligatorio" in page
    assert list(response.context["form"].errors) == ["reason"]
    assert "ROSSI" not in page  # the code typed in is no look-up of a name
    assert not EmergencyAccess.objects.exists()
    event = AuditEvent.objects.get(action="portal.emergency_access")
    assert event.outcome == AuditEvent.Outcome.DENIED and event.patient == study.patient
    assert client.get(study_url(study)).status_code == 404


@pytest.mark.parametrize(
    ("cf", "text"),
    [(STRANGER_CF, "Nessun paziente con codice fiscale"), ("RSSMRA56C12L424X", "carattere di controllo")],
)
def test_an_emergency_access_for_a_code_not_in_the_index_is_refused_at_the_field(
    reporting: Reporting, cf: str, text: str
) -> None:
    response = emergency_post(client_for(reporting.radiologist), cf)
    assert response.status_code == 400
    assert list(response.context["form"].errors) == ["codice_fiscale"]
    assert text in " ".join(response.context["form"].errors["codice_fiscale"])
    assert not EmergencyAccess.objects.exists()


def test_an_emergency_access_with_a_reason_shows_the_patients_hidden_studies_and_is_recorded(
    reporting: Reporting, tmp_path: Path
) -> None:
    prior = another_study(tmp_path / "prior", reporting.region, accession_number="TSC260000002")
    study = hidden(reporting)
    conceal(patient=prior.patient, study=prior)
    client = client_for(reporting.radiologist)
    response = emergency_post(client, MARIO_CF.lower(), REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 302
    assert response["Location"] == patient_url(study.patient)

    row = EmergencyAccess.objects.get()
    assert (row.user, row.patient, row.study, row.reason, row.source) == (
        reporting.radiologist,
        study.patient,
        None,
        REASON,
        "10.1.2.3",
    )
    event = AuditEvent.objects.get(action="portal.emergency_access", outcome=AuditEvent.Outcome.SUCCESS)
    assert event.patient == study.patient and event.user == reporting.radiologist and event.study is None
    assert event.detail["reason"] == REASON
    assert event.detail["until"] == (row.at + dt.timedelta(minutes=settings.PACS_EMERGENCY_ACCESS_MINUTES)).isoformat()

    listing = client.get(patient_url(study.patient))
    assert {s.pk for s in listing.context["studies"]} == {study.pk, prior.pk}
    assert "Hai un accesso in emergenza per questo paziente" in listing.content.decode()
    assert client.get(study_url(study)).status_code == 200
    assert [p.pk for p in client.get(study_url(study)).context["priors"]] == [prior.pk]
    worklist = client.get(reverse("reporting:worklist"))
    assert {s.pk for s in worklist.context["page"].object_list} == {study.pk, prior.pk}
    assert not HIDING_WORDS.search(worklist.content.decode())


def test_granting_drops_the_requests_cached_principal(reporting: Reporting) -> None:
    hidden(reporting)
    request = RequestFactory().post(EMERGENCY_URL, {"codice_fiscale": MARIO_CF, "reason": REASON})
    request.user = reporting.radiologist
    SessionMiddleware(lambda r: None).process_request(request)
    MessageMiddleware(lambda r: None).process_request(request)
    request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
    before = access.principal_for_request(request)
    assert before.patient_ids == frozenset()
    response = desk_views.emergency(request)
    assert response.status_code == 302
    after = access.principal_for_request(request)
    assert after is not before and after.patient_ids == {reporting.study.patient_id}


def test_an_emergency_access_is_the_users_only(reporting: Reporting) -> None:
    study = hidden(reporting)
    emergency_access_grant(user=reporting.radiologist, patient=study.patient, reason=REASON)
    assert client_for(reporting.radiologist).get(study_url(study)).status_code == 200
    assert client_for(reporting.colleague).get(study_url(study)).status_code == 404


def test_an_emergency_access_keeps_the_authority_rule(reporting: Reporting) -> None:
    study = hidden(reporting)
    client = client_for(reporting.foreign)
    assert emergency_post(client).status_code == 302  # asked for the patient: allowed, and recorded
    assert EmergencyAccess.objects.get().user == reporting.foreign
    assert client.get(study_url(study)).status_code == 404
    assert AuditEvent.objects.filter(action="study.denied", study=study).latest("id").detail == {"reason": "authority"}


@override_settings(PACS_EMERGENCY_ACCESS_MINUTES=5)
def test_an_emergency_access_expires(reporting: Reporting) -> None:
    study = hidden(reporting)
    client = client_for(reporting.radiologist)
    assert emergency_post(client).status_code == 302
    now = timezone.now()
    EmergencyAccess.objects.update(at=now - dt.timedelta(minutes=4))
    assert client.get(study_url(study)).status_code == 200
    EmergencyAccess.objects.update(at=now - dt.timedelta(minutes=settings.PACS_EMERGENCY_ACCESS_MINUTES, seconds=1))
    response = client.get(study_url(study))
    assert response.status_code == 404
    assert AuditEvent.objects.filter(action="study.denied", study=study, detail__reason="concealed").exists()
    # A new access, with its own reason, opens it again.
    assert emergency_post(client).status_code == 302
    assert client.get(study_url(study)).status_code == 200
    assert EmergencyAccess.objects.count() == 2


def test_only_clinicians_ask_for_an_emergency_access(cup: Cup, reporting: Reporting) -> None:
    hidden(reporting)
    # An archivist and the preservation officer read studies; the CUP books. None is a clinician.
    archivist = make_user("archivista", "archive.view_study", "archive.view_patient", "archive.view_report").user
    officer = make_user("conservatore", "archive.view_study", "kernel.view_auditevent").user
    for user in (archivist, officer, cup.operator.user):
        client = client_for(user)
        assert client.get(EMERGENCY_URL).status_code == 403
        assert emergency_post(client).status_code == 403
        with pytest.raises(PortalError) as refused:
            emergency_access_grant(user=user, patient=reporting.study.patient, reason=REASON)
        assert refused.value.code == "permission"
    assert not EmergencyAccess.objects.exists()
    assert access.principal_for_user(archivist).patient_ids == frozenset()

    anonymous = Client().get(EMERGENCY_URL)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))


@pytest.mark.django_db
def test_the_demo_gives_the_emergency_permission_to_radiologists_only() -> None:
    from archive.demo import ROLES

    holders = [group for group, perms in ROLES.items() if "portal.emergency_access" in perms]
    assert holders == ["Radiologi"]
    assert Permission.objects.filter(content_type__app_label="portal", codename="emergency_access").exists()


def test_a_revealed_study_opens_again(reporting: Reporting) -> None:
    study = hidden(reporting)
    client = client_for(reporting.radiologist)
    assert client.get(study_url(study)).status_code == 404
    reveal(patient=study.patient, study=study)
    assert client.get(study_url(study)).status_code == 200
    assert study_url(study) in client.get(reverse("reporting:worklist")).content.decode()


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
    html = page.content.decode()
    assert LAURA_CF in html
    # The list says what the delegation allows.
    assert "oscurare gli esami" in html and "revocare il consenso" in html
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
        # Mario is 70: a parent's delegation is for a minor.
        ({"kind": Delegation.Kind.PARENT}, "kind", "il delegante è maggiorenne"),
    ],
)
def test_the_desk_shows_each_error_at_its_field(cup: Cup, overrides: dict[str, str], field: str, text: str) -> None:
    client = client_for(desk_operator(*DESK_PERMS))
    response = client.post(reverse("portal:staff_delegations"), register_data(**overrides))
    assert response.status_code == 400
    form = response.context["form"]
    assert list(form.errors) == [field]
    assert text.lower() in " ".join(form.errors[field]).lower()
    html = response.content.decode().replace("&#x27;", "'")
    assert text.lower() in html.lower()
    assert not Delegation.objects.exists()
    failed = AuditEvent.objects.get(action="portal.delegation.register")
    assert failed.outcome == AuditEvent.Outcome.FAILURE and failed.detail["errors"] == [field]


def test_the_desk_registers_a_parent_for_a_minor_until_the_18th_birthday(cup: Cup) -> None:
    birth = timezone.localdate().replace(year=timezone.localdate().year - 10, day=1)
    Patient.objects.filter(pk=cup.mario.pk).update(birth_date=birth)
    client = client_for(desk_operator(*DESK_PERMS))
    response = client.post(reverse("portal:staff_delegations"), register_data(kind=Delegation.Kind.PARENT))
    assert response.status_code == 302
    delegation = Delegation.objects.get()
    assert timezone.localtime(delegation.valid_until).date() == birth.replace(year=birth.year + 18)


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
