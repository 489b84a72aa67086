"""Retention table, legal holds, and the discard procedure (proposed by a task,
approved by an officer in the admin, executed with a record of the hashes)."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.utils import timezone

from preservation import export, retention, tasks
from preservation.models import Discard, JournalEntry, LegalHold, PackageFile, RetentionClass

from .conftest import OFFICER_PASSWORD, Preserved, tier_root

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
FAR = dt.date.today() + dt.timedelta(days=11 * 366)


def test_the_retention_table(db: None) -> None:
    report = retention.retention_class_for(document_type="report")
    image = retention.retention_class_for(document_type="image", modality="CT")
    assert report.years is None and "1986" in report.legal_basis
    assert image.years == 10 and "1997" in image.legal_basis
    RetentionClass.objects.create(code="MAMMO", name="Mammografie", document_type="image", modality="MG", years=20)
    assert retention.retention_class_for(document_type="image", modality="MG").years == 20
    assert retention.retention_class_for(document_type="image", modality="CT").years == 10
    assert retention.keep_until(retention_class=image, start=dt.date(2016, 2, 29)) == dt.date(2026, 2, 28)
    assert retention.keep_until(retention_class=report, start=dt.date(2016, 1, 1)) is None


def test_nothing_is_proposed_before_its_time(preserved: Preserved) -> None:
    assert retention.discard_propose() is None


def test_a_discard_is_proposed_approved_and_executed_with_its_record(preserved: Preserved) -> None:
    discard = retention.discard_propose(today=FAR)
    assert discard is not None and discard.status == Discard.Status.PROPOSED
    items = list(discard.items.select_related("package_file"))
    # Only the images: the report, its signature and the metadata are kept without limit.
    assert len(items) == 6 and {i.package_file.role for i in items} == {PackageFile.Role.DICOM}
    assert retention.discard_propose(today=FAR) is None  # already proposed
    with pytest.raises(retention.RetentionError):
        retention.discard_execute(discard=discard)  # not approved
    radiologist = preserved.rep.radiologist
    with pytest.raises(PermissionDenied):
        retention.discard_approve(discard=discard, user=radiologist)
    retention.discard_approve(discard=discard, user=preserved.officer)
    done = retention.discard_execute(discard=discard, user=preserved.officer)
    assert done.status == Discard.Status.EXECUTED
    assert {f["sha256"] for f in done.record["files"]} == {i.sha256 for i in items}
    assert done.record["approved_by"] == "conservatore" and len(done.record_sha256) == 64
    for item in items:
        assert not (tier_root() / item.path).exists()
        item.package_file.refresh_from_db()
        assert item.package_file.discarded_at is not None
    assert (tier_root() / preserved.package.path / "referto/referto-v1.pdf").exists()
    actions = list(JournalEntry.objects.filter(event="discard").order_by("id").values_list("action", "outcome"))
    assert actions == [
        ("discard.propose", "success"),
        ("discard.execute", "denied"),  # the attempt before the approval
        ("discard.approve", "success"),
        ("discard.execute", "success"),
    ]
    # A DIP made afterwards still verifies, and names what was discarded.
    path = export.dip_export(packages=export.packages_for(study=preserved.rep.study), label="dopo lo scarto")
    assert export.package_verify(path).ok


def test_a_legal_hold_blocks_the_discard(preserved: Preserved) -> None:
    study = preserved.rep.study
    hold = retention.hold_place(user=preserved.officer, reason="Contenzioso n. 123/2026", patient=study.patient)
    assert retention.discard_propose(today=FAR) is None
    retention.hold_release(hold=hold, user=preserved.officer)
    discard = retention.discard_propose(today=FAR)
    assert discard is not None
    retention.discard_approve(discard=discard, user=preserved.officer)
    # A hold placed after the approval still stops it: nothing is removed.
    retention.hold_place(user=preserved.officer, reason="Richiesta dell'autorità giudiziaria", study=study)
    with pytest.raises(retention.RetentionError, match="blocco legale"):
        retention.discard_execute(discard=discard, user=preserved.officer)
    for item in discard.items.all():
        assert (tier_root() / item.path).exists()
    LegalHold.objects.filter(released_at__isnull=True).update(released_at=timezone.now())
    assert retention.discard_execute(discard=discard, user=preserved.officer).status == Discard.Status.EXECUTED


def test_the_officer_approves_in_the_admin_and_others_cannot(preserved: Preserved, settings) -> None:  # type: ignore[no-untyped-def]
    settings.SESSION_COOKIE_SECURE = False
    discard = retention.discard_propose(today=FAR)
    url = "/admin/preservation/discard/"
    # A staff member who may see discards but not approve them is not offered the action.
    clerk = get_user_model().objects.create_user(username="archivista", password=OFFICER_PASSWORD, is_staff=True)
    from django.contrib.auth.models import Permission

    clerk.user_permissions.add(Permission.objects.get(codename="view_discard"))
    clerk.user_permissions.add(Permission.objects.get(codename="change_discard"))
    client = Client()
    client.force_login(clerk)
    page = client.get(url)
    assert page.status_code == 200 and b"approve_and_execute" not in page.content
    client.post(url, {"action": "approve_and_execute", "_selected_action": [discard.pk]})
    discard.refresh_from_db()
    assert discard.status == Discard.Status.PROPOSED
    # The preservation officer approves and executes.
    client.force_login(preserved.officer)
    assert b"approve_and_execute" in client.get(url).content
    response = client.post(url, {"action": "approve_and_execute", "_selected_action": [discard.pk]}, follow=True)
    assert response.status_code == 200
    discard.refresh_from_db()
    assert discard.status == Discard.Status.EXECUTED and discard.approved_by == preserved.officer
    assert client.get(f"{url}{discard.pk}/change/").status_code == 200


def test_the_discard_task_proposes(preserved: Preserved, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(timezone, "localdate", lambda *a: FAR)
    pk = tasks.discard_propose()
    assert Discard.objects.get(pk=pk).items.count() == 6
