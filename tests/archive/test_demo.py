"""The demo region that `make run` loads."""

from __future__ import annotations

import json
import stat
from io import StringIO

from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command

from archive import demo
from archive.models import Facility, HealthAuthority, Instance, Patient, RemoteNode, Study


def test_load_demo_builds_the_region_and_is_idempotent(db: None) -> None:
    out = StringIO()
    call_command("load_demo", stdout=out)
    assert set(HealthAuthority.objects.values_list("code", flat=True)) == {"ASUGI", "ASUFC", "ASFO"}
    assert Facility.objects.count() == len(demo.FACILITIES)
    assert RemoteNode.objects.filter(ae_title="STORESCU", can_store=True).count() == len(demo.FACILITIES)
    # Every demo node calls from this machine; the reporting workstation reads its whole
    # health authority, every other node its own facility (issue 15).
    assert set(RemoteNode.objects.values_list("host", "addresses")) == {("127.0.0.1", "")}
    scopes = set(RemoteNode.objects.values_list("ae_title", "scope"))
    assert {scope for ae, scope in scopes if ae == "RADWS"} == {"authority"}
    assert {scope for ae, scope in scopes if ae != "RADWS"} == {"facility"}
    studies = Study.objects.count()
    instances = Instance.objects.count()
    assert studies == len(demo.STUDIES) and instances > 0
    assert {m for s in Study.objects.all() for m in s.modality_list()} >= {"CT", "MR", "US", "NM"}
    # Patients named by their codice fiscale, and one provisional to reconcile.
    assert Patient.objects.filter(provisional=False).count() == 4
    assert Patient.objects.filter(provisional=True).count() == 1

    creds = json.loads(demo.credentials_path().read_text())
    assert stat.S_IMODE(demo.credentials_path().stat().st_mode) == 0o600
    for username, *_ in demo.ACCOUNTS:
        user = authenticate(username=username, password=creds[username])
        assert user is not None, username
        # A service account (the external CUP) never has the admin site.
        assert user.is_staff == (username not in demo.SERVICE_ACCOUNTS), username
    assert not get_user_model().objects.get(username="cup-regionale").is_staff
    radiologist = get_user_model().objects.get(username="radiologo")
    assert radiologist.has_perm("archive.view_study") and not radiologist.has_perm("archive.change_remotenode")

    again = StringIO()
    call_command("load_demo", stdout=again)
    assert (Study.objects.count(), Instance.objects.count()) == (studies, instances)
    assert json.loads(demo.credentials_path().read_text()) == creds  # passwords kept
    assert f"0 instances stored, {instances} already there" in again.getvalue()


def test_demo_info_prints_urls_dicom_port_ae_titles_and_logins(db: None, settings) -> None:  # type: ignore[no-untyped-def]
    call_command("load_demo", stdout=StringIO())
    out = StringIO()
    call_command("demo_info", stdout=out)
    text = out.getvalue()
    creds = demo.demo_credentials()
    assert "http://127.0.0.1:8000/" in text
    assert f"port {settings.PACS_DICOM_PORT}" in text
    for _, code, _, ae in demo.FACILITIES:
        assert ae in text and code in text
    for username in ("admin", "radiologo", "cup"):
        assert username in text and creds[username] in text


def test_demo_radiologists_report_for_their_authority_and_can_sign(db: None) -> None:
    from archive.models import StaffProfile
    from archive.reporting import signing
    from kernel.codice_fiscale import validate_codice_fiscale

    call_command("load_demo", stdout=StringIO())
    call_command("load_demo", stdout=StringIO())  # the profiles and keys are kept, not duplicated
    users = get_user_model().objects
    for username, authority in (("radiologo", "ASUGI"), ("radiologa", "ASUFC")):
        user = users.get(username=username)
        for perm in ("view_report", "add_report", "change_report", "sign_report"):
            assert user.has_perm(f"archive.{perm}"), (username, perm)
        assert StaffProfile.objects.get(user=user).authority.code == authority
        # The CDA names its author and signer by codice fiscale: a valid one each.
        fiscal_code = StaffProfile.objects.get(user=user).codice_fiscale
        validate_codice_fiscale(fiscal_code)
        assert signing.signer_name(user) == user.get_full_name()
        assert "BEGIN CERTIFICATE" in signing.signer_certificate_pem(user)
    # Only the radiologists are bound to an authority; the others' profiles give their title and role.
    assert StaffProfile.objects.filter(authority__isnull=False).count() == 2
    titles = dict(StaffProfile.objects.values_list("user__username", "role"))
    assert titles["radiologa"] == "radiologa" and titles["cup"] == "operatore CUP"
    assert StaffProfile.objects.get(user__username="radiologa").title == "Dott.ssa"
    assert not users.get(username="cup").has_perm("archive.sign_report")


def test_demo_has_report_templates_a_head_and_phrases(db: None) -> None:
    from archive.models import ReportPhrase, ReportTemplate

    call_command("load_demo", stdout=StringIO())
    call_command("load_demo", stdout=StringIO())  # found again, not duplicated
    users = get_user_model().objects
    head = users.get(username="radiologo")
    assert head.has_perm("archive.change_reporttemplate") and head.has_perm("archive.sign_report")
    assert not users.get(username="radiologa").has_perm("archive.change_reporttemplate")
    names = set(ReportTemplate.objects.filter(authority__code="ASUGI").values_list("procedure_code", "name"))
    assert ("87.41", "TC torace standard") in names and ("88.91.1", "RM encefalo standard") in names
    assert ReportTemplate.objects.count() == 4
    assert ReportPhrase.objects.filter(owner=head).count() == 3
    # Every demo template's procedure is in the demo catalogue.
    from booking.models import Procedure

    codes = set(ReportTemplate.objects.values_list("procedure_code", flat=True))
    assert codes <= set(Procedure.objects.values_list("code", flat=True))
