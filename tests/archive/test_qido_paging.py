"""QIDO-RS pages (PS3.18 8.3.4.4): a default page size, a maximum, the Warning of a cut answer, offset paging.

dicomweb-client (the reference Python DICOMweb client) against pytest-django's
``live_server`` over real HTTP, the headers read with a plain ``requests`` call;
seven real studies ingested, one patient each, on seven days (newest first).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from archive.sample_data import PatientInfo, write_study
from kernel.models import AuditEvent
from tests import dicomweb_helpers as helpers
from tests.dicomweb_helpers import ingest_files, uids

reader = helpers.reader

pytestmark = pytest.mark.usefixtures("transactional_db")

TRUNCATED = '"The number of results exceeded the maximum supported by the server. Additional results can be requested."'
STUDIES = 7


@pytest.fixture(autouse=True)
def _pages(live_server, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_PUBLIC_URL = live_server.url
    settings.PACS_QIDO_DEFAULT_LIMIT = 3
    settings.PACS_QIDO_MAX_LIMIT = 5


@pytest.fixture
def seven(region, tmp_path: Path) -> list[str]:
    """Seven studies' UIDs, newest first (the order QIDO-RS answers in)."""
    found = []
    for n in range(STUDIES):
        files = write_study(
            tmp_path / f"s{n}",
            patient=PatientInfo(f"MRN{n:04d}", name=f"Rossi^Paziente{n}"),
            series=1,
            instances_per_series=1,
            study_date=dt.date(2024, 1, 1) + dt.timedelta(days=n),
        )
        ingest_files(files, region.facility)
        found.append(uids(files[0])[0])
    return found[::-1]


def _client(live_server, user: helpers.ApiUser) -> DICOMwebClient:  # type: ignore[no-untyped-def]
    session = requests.Session()
    session.headers.update(user.header)
    return DICOMwebClient(url=f"{live_server.url}/dicomweb", session=session)


def _get(live_server, user: helpers.ApiUser, **params: Any) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.get(
        f"{live_server.url}/dicomweb/studies",
        params=params,
        headers={**user.header, "Accept": "application/dicom+json"},
        timeout=30,
    )


def _study_uids(results: list[dict[str, Any]]) -> list[str]:
    return [r["0020000D"]["Value"][0] for r in results]


def test_without_a_limit_the_default_page_is_served_with_the_warning(live_server, seven, reader) -> None:
    client = _client(live_server, reader)
    assert _study_uids(client.search_for_studies()) == seven[:3]
    response = _get(live_server, reader)
    assert response.status_code == 200 and len(response.json()) == 3
    warning = response.headers["Warning"]
    assert warning.startswith("299 ") and warning.endswith(TRUNCATED)
    event = AuditEvent.objects.filter(action="dicomweb.search").latest("pk")
    assert event.detail["matches"] == 3 and event.detail["truncated"] is True


def test_the_warning_only_when_the_answer_was_cut(live_server, seven, reader, settings) -> None:
    # Fewer matches than the default page: all of them, no Warning.
    response = _get(live_server, reader, PatientName="ROSSI^PAZIENTE1*")
    assert response.status_code == 200 and len(response.json()) == 1 and "Warning" not in response.headers
    # The client's own limit within the maximum is its page: no Warning although more matched.
    response = _get(live_server, reader, limit=2)
    assert _study_uids(response.json()) == seven[:2] and "Warning" not in response.headers
    # The last page of the default size: nothing was cut.
    response = _get(live_server, reader, offset=6)
    assert _study_uids(response.json()) == seven[6:] and "Warning" not in response.headers
    # A default page as large as the archive: everything, no Warning.
    settings.PACS_QIDO_DEFAULT_LIMIT = settings.PACS_QIDO_MAX_LIMIT = STUDIES
    response = _get(live_server, reader)
    assert _study_uids(response.json()) == seven and "Warning" not in response.headers


def test_a_limit_above_the_maximum_is_clamped_with_the_warning(live_server, seven, reader) -> None:
    client = _client(live_server, reader)
    assert _study_uids(client.search_for_studies(limit=100)) == seven[:5]
    response = _get(live_server, reader, limit="9" * 30)
    assert _study_uids(response.json()) == seven[:5] and response.headers["Warning"].endswith(TRUNCATED)
    # At the maximum exactly, the client's own page.
    response = _get(live_server, reader, limit=5)
    assert len(response.json()) == 5 and "Warning" not in response.headers
    # Clamped, but nothing cut: the two last studies.
    response = _get(live_server, reader, limit=50, offset=5)
    assert _study_uids(response.json()) == seven[5:] and "Warning" not in response.headers


@pytest.mark.parametrize("limit", [None, 2, 5, 100])
def test_offset_pages_cover_every_study_once(live_server, seven, reader, limit) -> None:
    client = _client(live_server, reader)
    # dicomweb-client's own paging: offset by what each page held, until an empty one.
    assert _study_uids(client.search_for_studies(limit=limit, get_remaining=True)) == seven
    # The same by hand, following the Warning when the page size is the server's.
    pages, offset = [], 0
    while True:
        params = {"offset": offset} if limit is None else {"offset": offset, "limit": limit}
        response = _get(live_server, reader, **params)
        assert response.status_code in (200, 204)
        page = _study_uids(response.json()) if response.status_code == 200 else []
        if not page:
            break
        pages.append(page)
        offset += len(page)
    assert [uid for page in pages for uid in page] == seven
    expected = {None: [3, 3, 1], 2: [2, 2, 2, 1], 5: [5, 2], 100: [5, 2]}[limit]
    assert [len(page) for page in pages] == expected


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"limit": "-3"}, "limit cannot be negative"),
        ({"limit": "ten"}, "limit must be a whole number"),
        ({"limit": "2.5"}, "limit must be a whole number"),
        ({"offset": "-1"}, "offset cannot be negative"),
        ({"offset": "1e3"}, "offset must be a whole number"),
        ({"offset": "1000001"}, "offset must be at most 1000000"),
    ],
)
def test_bad_limit_or_offset_is_a_clear_400(live_server, seven, reader, params, detail) -> None:
    response = _get(live_server, reader, **params)
    assert response.status_code == 400 and detail in response.json()["detail"]
