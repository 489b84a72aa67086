"""The diagnostic viewer's page (archive.reporting.views.viewer): the study page's checks and
audit, the data the bundle reads, a CSP widened on this page only, and the system check that
the bundle is built. The viewer itself runs in Chromium in tests/interop/test_browser_viewer3d.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

from django.core.checks import run_checks
from django.test import Client
from django.urls import reverse

from archive.checks import check_viewer_bundle
from archive.models import Instance
from kernel.models import AuditEvent
from tests.archive.test_reporting_pages import client_for
from tests.reporting_helpers import Reporting, reporting  # noqa: F401


def _data(response) -> dict:  # type: ignore[no-untyped-def]
    match = re.search(r'<script id="viewer3d-data" type="application/json">(.*?)</script>', response.content.decode())
    assert match
    return json.loads(match.group(1))


def test_the_viewer_page_lists_the_series_frames_on_dicomweb_and_is_audited(reporting: Reporting) -> None:  # noqa: F811
    study = reporting.study
    response = client_for(reporting.radiologist).get(reverse("reporting:viewer", args=[study.pk]))
    assert response.status_code == 200
    data = _data(response)
    assert data["study"]["uid"] == study.study_instance_uid
    assert data["patient"]["id"] == "RSSMRA56C12L424P"
    series = data["study"]["series"]
    assert [s["label"].split(" ")[1] for s in series] == ["1", "2"]  # archive.series_numbers
    first = series[0]
    assert len(first["frames"]) == len(first["instances"]) == 3
    instance = Instance.objects.get(sop_instance_uid=first["instances"][0])
    assert first["frames"][0] == (
        f"/dicomweb/studies/{study.study_instance_uid}/series/{instance.series.series_instance_uid}"
        f"/instances/{instance.sop_instance_uid}/frames/1"
    )
    assert first["metadata"].endswith(f"/series/{instance.series.series_instance_uid}/metadata")
    assert AuditEvent.objects.filter(
        action="study.view", study=study, user=reporting.radiologist, detail__page="reporting.viewer"
    ).exists()
    # The study page and the work list lead to it.
    url = reverse("reporting:viewer", args=[study.pk])
    assert url in client_for(reporting.radiologist).get(reverse("reporting:study", args=[study.pk])).content.decode()
    assert url in client_for(reporting.radiologist).get(reverse("reporting:worklist")).content.decode()


def test_the_csp_is_widened_on_the_viewer_page_only(reporting: Reporting) -> None:  # noqa: F811
    client = client_for(reporting.radiologist)
    viewer = client.get(reverse("reporting:viewer", args=[reporting.study.pk]))["Content-Security-Policy"]
    study = client.get(reverse("reporting:study", args=[reporting.study.pk]))["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in viewer.split(";") if d.strip())
    assert "'wasm-unsafe-eval'" in directives["script-src"] and "'unsafe-eval'" not in directives["script-src"]
    assert "'unsafe-inline'" not in directives["script-src"]
    assert directives["style-src-attr"] == "'unsafe-inline'"
    assert "blob:" in directives["img-src"]
    assert directives["worker-src"] == "'self'"
    assert "wasm-unsafe-eval" not in study and "style-src-attr" not in study and "blob:" not in study


def test_another_authoritys_radiologist_gets_what_a_missing_study_gets(reporting: Reporting) -> None:  # noqa: F811
    client = client_for(reporting.foreign)
    response = client.get(reverse("reporting:viewer", args=[reporting.study.pk]))
    missing = client.get(reverse("reporting:viewer", args=[reporting.study.pk + 1000]))
    assert response.status_code == missing.status_code == 404
    assert response.content == missing.content
    assert AuditEvent.objects.filter(action="study.denied", user=reporting.foreign).exists()
    anonymous = Client().get(reverse("reporting:viewer", args=[reporting.study.pk]))
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


def test_a_missing_bundle_is_a_system_check_error(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert not [e for e in run_checks() if e.id == "archive.E040"]  # built by `npm run build`
    settings.VIEWER3D_DIST_DIR = tmp_path
    errors = check_viewer_bundle(None)
    assert [e.id for e in errors] == ["archive.E040"]
    assert "npm run build" in (errors[0].hint or "")
