"""A radiologist of another health authority cannot open a study through
DICOMweb either: the same rule as the radiologist's pages (archive.access)."""

from __future__ import annotations

import pytest
from django.test import Client

from archive.access import authority_restriction
from archive.models import StaffProfile
from tests.reporting_helpers import Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)


def _client(user: object) -> Client:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return client


def _urls(reporting: Reporting) -> dict[str, str]:
    study = reporting.study
    series = study.series.order_by("series_number").first()
    assert series is not None
    instance = series.instances.first()
    assert instance is not None
    base = f"/dicomweb/studies/{study.study_instance_uid}"
    return {
        "qido": f"/dicomweb/studies?StudyInstanceUID={study.study_instance_uid}",
        "qido_series": f"{base}/series",
        "metadata": f"{base}/metadata",
        "thumbnail": f"{base}/series/{series.series_instance_uid}/thumbnail",
        "wado_uri": (
            f"/dicomweb/wado?requestType=WADO&studyUID={study.study_instance_uid}"
            f"&seriesUID={series.series_instance_uid}&objectUID={instance.sop_instance_uid}&contentType=application/dicom"
        ),
    }


def test_the_rule(reporting: Reporting) -> None:
    assert authority_restriction(reporting.radiologist) == reporting.region.authority.pk
    assert authority_restriction(reporting.foreign) == reporting.other_authority.pk
    profile = StaffProfile.objects.get(user=reporting.foreign)
    profile.cross_authority = True
    profile.save()
    assert authority_restriction(reporting.foreign) is None


def test_dicomweb_shows_a_study_only_to_its_authoritys_staff(reporting: Reporting, settings) -> None:  # type: ignore[no-untyped-def]
    urls = _urls(reporting)
    own, foreign = _client(reporting.radiologist), _client(reporting.foreign)
    assert len(own.get(urls["qido"], HTTP_ACCEPT="application/dicom+json").json()) == 1
    for name in ("qido_series", "metadata", "thumbnail", "wado_uri"):
        assert own.get(urls[name]).status_code == 200, name
    for name in ("qido", "qido_series"):
        found = foreign.get(urls[name], HTTP_ACCEPT="application/dicom+json")
        assert found.status_code in (200, 204) and not (found.content and found.json()), name
    for name in ("metadata", "thumbnail", "wado_uri"):
        assert foreign.get(urls[name]).status_code == 404, name

    settings.PACS_REPORT_CROSS_AUTHORITY = True
    assert foreign.get(urls["metadata"]).status_code == 200
    assert len(foreign.get(urls["qido"], HTTP_ACCEPT="application/dicom+json").json()) == 1


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_qido_at_every_level_hides_other_authorities(reporting: Reporting, level: str) -> None:
    found = _client(reporting.foreign).get(f"/dicomweb/{level}", HTTP_ACCEPT="application/dicom+json")
    assert found.status_code in (200, 204) and not (found.content and found.json())
    assert _client(reporting.radiologist).get(f"/dicomweb/{level}", HTTP_ACCEPT="application/dicom+json").json()
