"""Citizens' accounts and download packages in the admin (issue 17): read-mostly,
through the access policy, audited like every admin of patient data."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from archive.models import Study
from kernel.models import AuditEvent
from portal.accounts import citizen_account_create
from portal.models import CitizenAccount, DownloadPackage
from tests.access_helpers import BIANCHI_CF, VERDI_CF, Scene, emergency, hide, reveal
from tests.access_helpers import scene as scene  # noqa: F401  (fixture)
from tests.archive.test_admin_policy import client_for, rows
from tests.reporting_helpers import PATIENT_CF
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (fixture)

PASSWORD = "una-password-lunga-1"


def url(model: str, view: str, *args: object) -> str:
    return reverse(f"admin:portal_{model}_{view}", args=args)


def package(study: Study, kind: str = DownloadPackage.Kind.DICOM) -> DownloadPackage:
    return DownloadPackage.objects.create(
        study=study, kind=kind, fingerprint="f" * 64, status=DownloadPackage.Status.READY, instance_count=2
    )


def accounts(*codes: str) -> list[CitizenAccount]:
    for code in codes:
        citizen_account_create(codice_fiscale=code, password=PASSWORD)
    return list(CitizenAccount.objects.order_by("codice_fiscale"))


def superuser_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("capo", password="x" * 12))
    return client


# --- citizens' accounts -------------------------------------------------------------------------------


def test_the_accounts_list_names_the_person_and_is_audited_with_them(scene: Scene) -> None:
    accounts(PATIENT_CF, BIANCHI_CF, "ZNTGLI90S63G888K")  # the last: no exam in the archive yet
    client = superuser_client()
    response = client.get(url("citizenaccount", "changelist"))
    listed = rows(response)
    assert {a.codice_fiscale for a in listed} == {PATIENT_CF, BIANCHI_CF, "ZNTGLI90S63G888K"}
    html = response.content.decode()
    assert "Account dei cittadini" in html and "non ancora nell&#x27;anagrafe" in html
    assert "Bianchi Laura" in html or "BIANCHI LAURA" in html.upper()
    event = AuditEvent.objects.filter(action="admin.citizenaccount.list").latest("pk")
    assert sorted(event.detail["patients"]) == sorted([scene.rossi.patient_id, scene.bianchi.patient_id])

    account = CitizenAccount.objects.get(codice_fiscale=BIANCHI_CF)
    page = client.get(url("citizenaccount", "change", account.pk))
    assert page.status_code == 200
    body = page.content.decode()
    assert 'name="_save"' not in body  # read-only: nothing to save
    viewed = AuditEvent.objects.filter(action="admin.citizenaccount.view").latest("pk")
    assert viewed.patient_id == scene.bianchi.patient_id
    # Nothing is added or deleted here.
    assert client.get(url("citizenaccount", "add")).status_code == 403
    assert client.get(url("citizenaccount", "delete", account.pk)).status_code == 403


def test_an_authority_restricted_user_sees_only_the_accounts_of_its_patients(scene: Scene) -> None:
    accounts(PATIENT_CF, VERDI_CF, "ZNTGLI90S63G888K")
    asugi = client_for(scene.rep.colleague, "portal.view_citizenaccount")
    assert [a.codice_fiscale for a in rows(asugi.get(url("citizenaccount", "changelist")))] == [PATIENT_CF]
    asufc = client_for(scene.foreign, "portal.view_citizenaccount")
    assert [a.codice_fiscale for a in rows(asufc.get(url("citizenaccount", "changelist")))] == [VERDI_CF]
    verdi = CitizenAccount.objects.get(codice_fiscale=VERDI_CF)
    assert asugi.get(url("citizenaccount", "change", verdi.pk)).status_code == 302  # as for a missing row
    # The region's staff see the registry's every account, and the ones it does not know yet.
    regional = client_for(scene.regional, "portal.view_citizenaccount")
    assert len(rows(regional.get(url("citizenaccount", "changelist")))) == 3


def test_a_login_switched_off_is_refused_audited_and_can_be_switched_on(scene: Scene) -> None:
    (account,) = accounts(BIANCHI_CF)
    citizen = Client()
    assert citizen.login(username=BIANCHI_CF, password=PASSWORD)
    client = superuser_client()
    changelist = url("citizenaccount", "changelist")

    response = client.post(changelist, {"action": "login_disable", "_selected_action": [account.pk]}, follow=True)
    assert "1 account disattivato." in response.content.decode()
    account.user.refresh_from_db()
    assert not account.user.is_active
    assert not Client().login(username=BIANCHI_CF, password=PASSWORD)
    assert citizen.get("/fse/").status_code == 302  # the open session no longer loads
    event = AuditEvent.objects.get(action="admin.citizenaccount.disable")
    assert event.patient_id == scene.bianchi.patient_id and event.detail["codice_fiscale"] == BIANCHI_CF

    client.post(changelist, {"action": "login_enable", "_selected_action": [account.pk]})
    account.user.refresh_from_db()
    assert account.user.is_active and Client().login(username=BIANCHI_CF, password=PASSWORD)
    assert AuditEvent.objects.filter(action="admin.citizenaccount.enable").count() == 1

    # Whoever may only view the accounts has no switch.
    viewer = client_for(scene.regional, "portal.view_citizenaccount")
    viewer.post(changelist, {"action": "login_disable", "_selected_action": [account.pk]})
    account.user.refresh_from_db()
    assert account.user.is_active


# --- download packages --------------------------------------------------------------------------------


def test_a_hidden_studys_package_is_not_there_without_an_emergency_access(scene: Scene) -> None:
    rossi, bianchi = package(scene.rossi), package(scene.bianchi, DownloadPackage.Kind.JPEG)
    client = client_for(scene.rep.colleague, "portal.view_downloadpackage")
    changelist = url("downloadpackage", "changelist")
    assert set(rows(client.get(changelist))) == {rossi, bianchi}
    assert client.get(url("downloadpackage", "change", rossi.pk)).status_code == 200

    hide(scene.rossi)
    assert rows(client.get(changelist)) == [bianchi]
    assert rows(client.get(changelist, {"q": PATIENT_CF})) == []
    missing = client.get(url("downloadpackage", "change", rossi.pk))
    unknown = client.get(url("downloadpackage", "change", 987654))
    assert (missing.status_code, missing.get("Location")) == (unknown.status_code, unknown.get("Location"))
    denied = AuditEvent.objects.filter(action="admin.downloadpackage.view", outcome="denied").latest("pk")
    assert denied.detail["reason"] == "concealed"  # for the audit log only, never shown

    emergency(scene.rep.colleague, scene.rossi.patient)
    assert set(rows(client.get(changelist))) == {rossi, bianchi}
    reveal(scene.rossi)

    # Another authority's packages are not there either.
    foreign = client_for(scene.foreign, "portal.view_downloadpackage")
    assert rows(foreign.get(changelist)) == []


def test_package_pages_are_read_only_and_audited_with_their_patient(scene: Scene) -> None:
    rossi = package(scene.rossi)
    client = client_for(scene.rep.colleague, "portal.view_downloadpackage")
    response = client.get(url("downloadpackage", "changelist"))
    assert rows(response) == [rossi]
    assert "Pacchetti da scaricare" in response.content.decode()
    listed = AuditEvent.objects.filter(action="admin.downloadpackage.list").latest("pk")
    assert listed.detail["patients"] == [scene.rossi.patient_id]
    page = client.get(url("downloadpackage", "change", rossi.pk))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    viewed = AuditEvent.objects.filter(action="admin.downloadpackage.view").latest("pk")
    assert viewed.study_id == scene.rossi.pk and viewed.patient_id == scene.rossi.patient_id
    superuser = superuser_client()
    assert superuser.get(url("downloadpackage", "add")).status_code == 403
    assert superuser.get(url("downloadpackage", "delete", rossi.pk)).status_code == 403
