"""Reports in the admin: read-only, a signed one never changed or deleted, every
page audited; staff profiles with a TOTP secret that is written, never shown."""

from __future__ import annotations

from typing import Any

import pyotp
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.forms.models import model_to_dict
from django.test import Client
from django.urls import reverse

from archive.models import Report, StaffProfile
from kernel.models import AuditEvent
from tests.reporting_helpers import Reporting, signed_report, written_draft
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)


@pytest.fixture(autouse=True)
def _fresh_lookups() -> None:
    cache.clear()


@pytest.fixture
def admin_client(reporting: Reporting) -> Client:
    admin = get_user_model().objects.create_superuser("amministratore", password="x-admin-password-1")
    client = Client()
    client.force_login(admin)
    return client


def snapshot(report: Report) -> dict[str, Any]:
    row = Report.objects.get(pk=report.pk)
    return model_to_dict(row) | {"updated_at": row.updated_at}


def change_url(report: Report) -> str:
    return reverse("admin:archive_report_change", args=[report.pk])


def test_the_list_and_the_page_of_a_signed_report_are_read_only_and_audited(
    admin_client: Client, reporting: Reporting
) -> None:
    report = signed_report(reporting)

    listing = admin_client.get(reverse("admin:archive_report_changelist"), {"status__exact": "signed"})
    assert listing.status_code == 200
    assert (
        reporting.study.accession_number in listing.content.decode() or str(reporting.study) in listing.content.decode()
    )
    page = admin_client.get(change_url(report))

    assert page.status_code == 200
    html = page.content.decode()
    assert "Quadro TC nei limiti della norma." in html
    assert 'name="conclusion"' not in html and 'name="_save"' not in html
    assert reverse("admin:archive_report_delete", args=[report.pk]) not in html
    assert AuditEvent.objects.filter(action="admin.report.list").exists()
    view = AuditEvent.objects.filter(action="admin.report.view").last()
    assert view is not None and view.study_id == reporting.study.pk and view.patient_id == reporting.study.patient_id


def test_posting_a_change_to_a_signed_report_changes_nothing(admin_client: Client, reporting: Reporting) -> None:
    report = signed_report(reporting)
    before = snapshot(report)
    form = {**model_to_dict(report), "conclusion": "Riscritto dall'amministratore.", "_save": "Salva"}
    form = {k: ("" if v is None else v) for k, v in form.items()}

    response = admin_client.post(change_url(report), form)

    assert response.status_code == 403
    assert snapshot(report) == before
    denied = AuditEvent.objects.filter(action="admin.report.change", outcome=AuditEvent.Outcome.DENIED).last()
    assert denied is not None and denied.study_id == reporting.study.pk


def test_a_signed_report_cannot_be_deleted_from_the_admin(admin_client: Client, reporting: Reporting) -> None:
    report = signed_report(reporting)
    before = snapshot(report)

    response = admin_client.post(reverse("admin:archive_report_delete", args=[report.pk]), {"post": "yes"})
    assert response.status_code == 403
    # Nor through the list's bulk action.
    action = admin_client.post(
        reverse("admin:archive_report_changelist"),
        {"action": "delete_selected", "_selected_action": [report.pk], "post": "yes"},
    )
    assert action.status_code in (200, 302, 403)

    assert snapshot(report) == before


def test_a_draft_is_read_only_but_an_abandoned_one_can_be_removed(admin_client: Client, reporting: Reporting) -> None:
    draft = written_draft(reporting)
    before = snapshot(draft)

    form = {k: ("" if v is None else v) for k, v in model_to_dict(draft).items()} | {"findings": "cambiato"}
    response = admin_client.post(change_url(draft), form)
    assert response.status_code == 403
    assert snapshot(draft) == before
    assert admin_client.get(reverse("admin:archive_report_add")).status_code == 403

    response = admin_client.post(reverse("admin:archive_report_delete", args=[draft.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Report.objects.filter(pk=draft.pk).exists()
    assert AuditEvent.objects.filter(action="admin.report.delete", study=reporting.study).exists()


def test_a_radiologist_sees_in_the_admin_only_their_authoritys_reports(reporting: Reporting) -> None:
    report = signed_report(reporting)
    client = Client()
    client.force_login(reporting.foreign)

    listing = client.get(reverse("admin:archive_report_changelist"))
    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 0
    assert client.get(change_url(report)).status_code in (302, 404)


def test_the_totp_secret_is_written_never_shown_and_kept_when_left_empty(
    admin_client: Client, reporting: Reporting
) -> None:
    profile = StaffProfile.objects.get(user=reporting.radiologist)
    secret = pyotp.random_base32()
    url = reverse("admin:archive_staffprofile_change", args=[profile.pk])
    base = {"user": reporting.radiologist.pk, "authority": reporting.region.authority.pk}

    assert admin_client.post(url, {**base, "totp_secret": secret}).status_code == 302
    profile.refresh_from_db()
    assert profile.totp_secret == secret
    assert secret not in admin_client.get(url).content.decode()

    assert admin_client.post(url, {**base, "cross_authority": "on", "totp_secret": ""}).status_code == 302
    profile.refresh_from_db()
    assert profile.totp_secret == secret and profile.cross_authority

    page = admin_client.post(url, {**base, "totp_secret": "not base32!"})
    assert page.status_code == 200 and "base32" in page.content.decode()

    assert admin_client.post(url, {**base, "totp_remove": "on"}).status_code == 302
    profile.refresh_from_db()
    assert profile.totp_secret == ""


def test_the_user_page_carries_the_staff_profile(admin_client: Client, reporting: Reporting) -> None:
    page = admin_client.get(reverse("admin:auth_user_change", args=[reporting.foreign.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "staff_profile-0-authority" in html
    assert "staff_profile-0-totp_secret" in html
