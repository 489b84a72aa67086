"""Packages without pages: one per content, a dead builder taken over, purging."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.test import override_settings
from django.utils import timezone

from archive.models import Instance
from portal import downloads
from portal.models import DownloadPackage, Notification
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import Cup
from tests.conftest import assert_private
from tests.portal.portal_helpers import CitizenExam, citizen_exam_make
from tests.reporting_helpers import Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup
pytestmark = pytest.mark.django_db


@pytest.fixture
def online(cup: Cup, reporting: Reporting) -> CitizenExam:
    return citizen_exam_make(cup, reporting)


def test_one_package_per_content_and_a_new_one_when_the_study_changes(online: CitizenExam) -> None:
    study = online.booking.study
    first, created = downloads.package_request(study=study, kind="dicom", user=online.user)
    again, created_again = downloads.package_request(study=study, kind="dicom", user=online.user)
    assert created and not created_again and again.pk == first.pk
    assert first.total_bytes == sum(i.size for i in Instance.objects.all())
    Instance.objects.filter(pk=Instance.objects.first().pk).update(sha256="0" * 64)  # the content changed
    changed, created_changed = downloads.package_request(study=study, kind="dicom", user=online.user)
    assert created_changed and changed.fingerprint != first.fingerprint


def test_a_running_package_is_left_alone_until_its_builder_is_stale(online: CitizenExam) -> None:
    package, _ = downloads.package_request(study=online.booking.study, kind="dicom", user=online.user)
    DownloadPackage.objects.filter(pk=package.pk).update(status="running", heartbeat_at=timezone.now())
    assert downloads.media_build(package_pk=package.pk).status == "running"  # someone is at it
    stale = timezone.now() - downloads.STALE - dt.timedelta(seconds=1)
    DownloadPackage.objects.filter(pk=package.pk).update(heartbeat_at=stale)  # ... who died
    built = downloads.media_build(package_pk=package.pk)
    assert built.status == "ready" and Path(built.path).stat().st_size == built.size
    assert not list(Path(built.path).parent.glob(".*.part"))


def test_the_build_tells_who_asked_only_once_the_package_is_finished(online: CitizenExam) -> None:
    from portal import tasks

    package, _ = downloads.package_request(study=online.booking.study, kind="jpeg", user=online.user)
    asked = {"package_pk": package.pk, "user_pk": online.user.pk, "booking_pk": online.booking.pk}
    DownloadPackage.objects.filter(pk=package.pk).update(status="running", heartbeat_at=timezone.now())
    assert downloads.package_build_notify(**asked).status == "running"  # another builder: look again later
    assert not Notification.objects.exists()
    DownloadPackage.objects.filter(pk=package.pk).update(heartbeat_at=timezone.now() - downloads.STALE * 2)
    assert downloads.package_build_notify(**asked).status == "ready"
    (notification,) = Notification.objects.filter(user=online.user, booking=online.booking)
    assert "è pronto da scaricare" in notification.message
    assert tasks.package_build.apply(args=[package.pk + 1000]).get() == "missing"


def test_the_notification_names_the_exam(online: CitizenExam) -> None:
    package, _ = downloads.package_request(study=online.booking.study, kind="jpeg", user=online.user)
    package = downloads.media_build(package_pk=package.pk)
    notification = downloads.package_notify(package=package, user=online.user, booking=online.booking)
    assert "è pronto da scaricare" in notification.message
    assert online.booking.procedure.description in notification.message
    assert Notification.objects.filter(user=online.user, read_at__isnull=True).count() == 1
    page = online.client.get("/fse/").content.decode()
    assert "è pronto da scaricare" in page
    assert Notification.objects.filter(user=online.user, read_at__isnull=True).count() == 0


def test_purge_removes_old_files_and_leftovers(online: CitizenExam) -> None:
    package, _ = downloads.package_request(study=online.booking.study, kind="dicom", user=online.user)
    package = downloads.media_build(package_pk=package.pk)
    leftover = downloads.package_dir() / ".00000099-dicom.zip.abc.part"
    leftover.write_bytes(b"half")
    old = timezone.now().timestamp() - 3600
    import os

    os.utime(leftover, (old, old))
    assert downloads.packages_purge() == 0  # young package kept
    with override_settings(PACS_PORTAL_PACKAGE_HOURS=0):
        assert downloads.packages_purge(now=timezone.now() + dt.timedelta(seconds=1)) == 1
    assert not Path(package.path).exists() and not leftover.exists()
    assert DownloadPackage.objects.get(pk=package.pk).status == "purged"


def test_the_citizens_zips_are_the_service_accounts_only(
    loose_umask: None, online: CitizenExam, tmp_path: Path, settings
) -> None:  # type: ignore[no-untyped-def]
    """A prepared zip is a whole study: it was readable by every local user."""
    settings.PACS_PORTAL_PACKAGE_DIR = tmp_path / "var" / "portal-packages"
    for kind in ("dicom", "jpeg"):
        package, _ = downloads.package_request(study=online.booking.study, kind=kind, user=online.user)
        assert downloads.media_build(package_pk=package.pk).status == DownloadPackage.Status.READY
    assert assert_private(tmp_path / "var") == 2


def test_a_package_is_only_for_someone_who_sees_the_study(online: CitizenExam, cup: Cup) -> None:
    from archive.access import StudyNotVisible
    from portal.accounts import citizen_account_create
    from tests.booking.conftest import LAURA_CF

    stranger = citizen_account_create(codice_fiscale=LAURA_CF, password="x" * 20)
    with pytest.raises(StudyNotVisible):
        downloads.package_request(study=online.booking.study, kind="dicom", user=stranger)
    with pytest.raises(StudyNotVisible):
        downloads.package_request(study=online.booking.study, kind="dicom", user=online.rep.foreign)
    assert not DownloadPackage.objects.exists()
    # Told nothing about an exam they do not see.
    package, _ = downloads.package_request(study=online.booking.study, kind="jpeg", user=online.user)
    package = downloads.media_build(package_pk=package.pk)
    assert downloads.package_notify(package=package, user=stranger, booking=online.booking) is None
    assert not Notification.objects.filter(user=stranger).exists()
