"""Fixtures of the preservation tests: a study with a signed report, the
preservation officer with a key from the demo CA, and the local TSA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from archive.models import Report
from archive.reporting import signing
from preservation import packages, timestamp, volumes
from preservation.models import Package, Volume
from tests.reporting_helpers import Reporting, reporting, signed_report  # noqa: F401  (fixture)

OFFICER_PASSWORD = "una-password-da-conservatore-3"


@dataclass
class Preserved:
    rep: Reporting
    report: Report
    officer: object
    package: Package | None = None
    volume: Volume | None = None


@pytest.fixture
def officer(db: None) -> object:
    user = get_user_model().objects.create_user(
        username="conservatore", password=OFFICER_PASSWORD, first_name="Anna", last_name="Zorzut", is_staff=True
    )
    for codename in ("approve_discard", "view_package", "view_volume", "view_discard", "change_discard"):
        user.user_permissions.add(Permission.objects.get(content_type__app_label="preservation", codename=codename))
    signing.demo_pki_create(users=[], preservation_officers=[user])
    timestamp.tsa_demo_create()
    return get_user_model().objects.get(pk=user.pk)


@pytest.fixture
def signed(reporting: Reporting, officer: object, settings) -> Preserved:  # type: ignore[no-untyped-def]  # noqa: F811
    settings.PACS_PRESERVATION_STABLE_MINUTES = 0
    return Preserved(rep=reporting, report=signed_report(reporting), officer=officer)


@pytest.fixture
def preserved(signed: Preserved) -> Preserved:
    """The study packaged (AIP archived) and its volume closed."""
    [signed.package] = packages.package_build(study_pk=signed.rep.study.pk)
    signed.volume = volumes.volume_close()
    signed.package.refresh_from_db()
    return signed


def tier_root() -> Path:
    from archive.storage import tiers as storage

    return storage.absolute_path("preservation:region", ".")


def addendum_volume(preserved: Preserved) -> Volume:
    """An addendum to the preserved report, packaged and closed in a second volume (which follows the first)."""
    from archive.reporting import services as reports
    from tests.reporting_helpers import RADIOLOGIST_PASSWORD

    radiologist = preserved.rep.radiologist
    amended = reports.report_amend(report=preserved.report, user=radiologist, kind=Report.Kind.ADDENDUM)
    amended = reports.report_save(
        report=amended,
        user=radiologist,
        revision=amended.revision,
        clinical_question=amended.clinical_question,
        technique=amended.technique,
        findings=amended.findings,
        conclusion="Integrazione: confermato.",
    )
    reports.report_sign(report=amended, user=radiologist, password=RADIOLOGIST_PASSWORD, revision=amended.revision)
    packages.package_build(study_pk=preserved.rep.study.pk)
    volume = volumes.volume_close()
    assert volume is not None and volume.previous_id == preserved.volume.pk
    return volume


@contextmanager
def as_owner() -> Iterator[None]:
    """What the database's owner can do: lift the registry's triggers, change rows, and put them back."""
    from django.db import connection

    from tests.audit_helpers import audit_guards_lifted

    with audit_guards_lifted(connection):
        yield
