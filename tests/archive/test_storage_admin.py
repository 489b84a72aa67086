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


def test_the_dashboard_names_the_tiers_totals_them_and_shows_free_space(  # type: ignore[no-untyped-def]
    officer: Client, region: Region, ct_study: list[Path], settings
) -> None:
    """Issue 17: raw names ("facility:TS-CAT"), no totals, no free space."""
    import shutil

    from archive.storage import tiers as storage

    ingest_files(ct_study, region.facility, age_days=10)
    lifecycle.migrate_batch()
    page = officer.get("/admin/archive/storage-dashboard/")
    html = page.content.decode()
    rows = {r.tier: r for r in page.context["tier_rows"]}
    # Every facility's tier, the long-term tier of the scope and the preservation tier, with copies or not.
    assert set(rows) == {"facility:TS-CAT", "facility:GO-SG", "longterm:region", "preservation:region"}
    assert rows["facility:TS-CAT"].label == "Ospedale di Cattinara – archivio a breve termine"
    assert rows["facility:GO-SG"].label == "Ospedale di Gorizia – archivio a breve termine"
    assert rows["longterm:region"].label == "Archivio regionale a lungo termine"
    assert rows["preservation:region"].label == "Conservazione a norma (regionale)"
    for row in rows.values():
        assert row.label in html
    assert "archivio a lungo termine regionale" in html

    sizes = sum(c.size for c in Copy.objects.all())
    assert page.context["totals"] == {"objects": 12, "bytes": sizes}
    assert (rows["facility:TS-CAT"].objects, rows["longterm:region"].objects, rows["facility:GO-SG"].objects) == (
        6,
        6,
        0,
    )
    assert 'id="storage-totals"' in html

    # Free space: the tier's filesystem as shutil.disk_usage measures it (a tier with no
    # folder yet is measured where it will be made).
    tier_dir = storage.absolute_path("facility:TS-CAT", ".")
    usage = shutil.disk_usage(tier_dir)
    space = rows["facility:TS-CAT"].space
    assert space is not None and space.total == usage.total
    assert abs(space.free - usage.free) < 64 * 1024 * 1024  # the disk is shared: others write meanwhile
    assert rows["facility:GO-SG"].space is not None and rows["facility:GO-SG"].space.total == usage.total
    assert html.count('class="free-space"') == 4

    # A long-term tier in an object store: its free space is said not to be measurable.
    settings.STORAGES = {
        **settings.STORAGES,
        "longterm": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "pacs-longterm",
                "endpoint_url": "http://127.0.0.1:9",
                "access_key": "x",
                "secret_key": "y",
            },
        },
    }
    page = officer.get("/admin/archive/storage-dashboard/")
    s3 = next(r for r in page.context["tier_rows"] if r.tier == "longterm:region")
    assert s3.space is None and s3.space_note == "non misurabile: archivio a oggetti (S3)"
    assert "non misurabile: archivio a oggetti (S3)" in page.content.decode()


def test_a_tier_low_on_space_is_flagged() -> None:
    from archive.storage.admin import LOW_SPACE_PERCENT, TierRow
    from archive.storage.tiers import TierSpace

    assert TierRow("facility:TS-CAT", "x", space=TierSpace(total=100, used=95, free=5)).low_space
    assert not TierRow("facility:TS-CAT", "x", space=TierSpace(total=100, used=50, free=50)).low_space
    assert not TierRow("longterm:region", "x", space=None).low_space
    assert LOW_SPACE_PERCENT == 10


def test_per_authority_long_term_tiers_are_named_by_authority(  # type: ignore[no-untyped-def]
    officer: Client, region: Region, settings
) -> None:
    settings.PACS_LONG_TERM_SCOPE = "authority"
    page = officer.get("/admin/archive/storage-dashboard/")
    rows = {r.tier: r.label for r in page.context["tier_rows"]}
    assert rows["longterm:ASUGI"] == "Azienda sanitaria universitaria Giuliano Isontina – archivio a lungo termine"
    assert "longterm:region" not in rows
    assert "archivio a lungo termine per azienda sanitaria" in page.content.decode()
