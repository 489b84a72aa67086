"""The admin's storage dashboard and storage alerts."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client

from archive.models import Copy, StorageAlert
from archive.storage import lifecycle
from tests.conftest import Region
from tests.dicomweb_helpers import make_user

from .lifecycle_helpers import copy_file, ingest_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def officer(db: None) -> Client:
    # An alert naming an instance is shown to who may see its study (archive.access).
    user = make_user(
        "archivista",
        "archive.view_study",
        "archive.view_copy",
        "archive.view_storagealert",
        "archive.change_storagealert",
    )
    client = Client()
    client.force_login(user.user)
    return client


def test_the_dashboard_shows_tiers_backlog_fixity_and_alerts(  # type: ignore[no-untyped-def]
    officer: Client, region: Region, ct_study: list[Path], settings
) -> None:
    instances = ingest_files(ct_study, region.facility, age_days=10)
    lifecycle.migrate_batch()
    settings.PACS_EVICT_AFTER_DAYS = 5
    copy_file(Copy.objects.get(instance=instances[0], tier="longterm:region")).write_bytes(b"rot")
    lifecycle.fixity_audit(cycle_days=1, sample=0)

    page = officer.get("/admin/archive/storage-dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "facility:TS-CAT" in html and "longterm:region" in html
    assert page.context["to_evict"] == 6 and page.context["to_migrate"] == 0
    assert {t["tier"]: t["objects"] for t in page.context["tiers"]} == {"facility:TS-CAT": 6, "longterm:region": 6}
    assert 'class="alert-row"' in html and page.context["fixity_runs"][0].repaired == 1

    index = officer.get("/admin/")
    assert "/admin/archive/storage-dashboard/" in index.content.decode()
    assert "1 allarme di archiviazione da vedere" in index.content.decode()

    alert = StorageAlert.objects.get()
    done = officer.post(
        "/admin/archive/storagealert/", {"action": "acknowledge", "_selected_action": [alert.pk]}, follow=True
    )
    assert done.status_code == 200
    alert.refresh_from_db()
    assert alert.acknowledged_at is not None
    assert "allarme di archiviazione da vedere" not in officer.get("/admin/").content.decode()


def test_the_dashboard_needs_staff_and_permission(db: None) -> None:
    client = Client()
    assert client.get("/admin/archive/storage-dashboard/").status_code == 302
    client.force_login(make_user("altro").user)
    assert client.get("/admin/archive/storage-dashboard/").status_code == 403
