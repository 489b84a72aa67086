"""XDS-I.b manifest (archive.manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archive.manifest import study_manifest
from archive.models import Instance
from tests.reporting_helpers import ingest_study


def test_smoke(region: Any, tmp_path: Path, settings: Any) -> None:
    settings.PACS_PUBLIC_URL = "https://pacs.example.org"
    study = ingest_study(tmp_path, region)
    m = study_manifest(study=study)
    from archive.storage import retrieve
    with retrieve.instance_open(m) as fh:
        open("/tmp/kos/m.dcm", "wb").write(fh.read())
    assert study_manifest(study=study).pk == m.pk
    assert Instance.objects.filter(series__study=study).count() == 7
