"""One audit event per reading of a study (archive.dicomweb.views, PACS_AUDIT_READING_WINDOW): a viewer's
image requests, after the first, are not written one by one; whole studies and series, refusals,
failures and other credentials always are."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.test import Client, TestCase, override_settings

from archive.sample_data import PatientInfo, write_study
from kernel.models import AuditEvent
from tests import dicomweb_helpers as helpers
from tests.dicomweb_helpers import ingest_files, uids

reader = helpers.reader  # the fixture

JPEG = {"HTTP_ACCEPT": "image/jpeg"}
JSON = {"HTTP_ACCEPT": "application/dicom+json"}
DICOM = {"HTTP_ACCEPT": 'multipart/related; type="application/dicom"'}


@pytest.fixture
def stored(region, ct_study: list[Path]) -> list[Path]:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    return ct_study


def _instance(path: Path) -> str:
    study, series, sop = uids(path)
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def _events(action: str = "dicomweb.retrieve", **filters: object) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("pk"))


def _read(client: Client, url: str, headers: dict[str, str], who: helpers.ApiUser | None = None) -> int:
    # A request is served outside a transaction (no ATOMIC_REQUESTS), so the reading is remembered
    # as soon as its event is written; here the test's transaction holds it until this block ends.
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = client.get(url, **headers, **(who.auth if who else {}))
    if getattr(response, "streaming", False):
        b"".join(response.streaming_content)
    return int(response.status_code)


def test_a_readings_image_requests_write_one_event_and_say_so(client: Client, stored, reader) -> None:  # type: ignore[no-untyped-def]
    a, b = stored[0], stored[4]  # two instances of two series
    for url, headers in (
        (_instance(a) + "/rendered", JPEG),
        (_instance(b) + "/rendered", JPEG),
        (_instance(b) + "/thumbnail", JPEG),
        (_instance(a) + "/frames/1", {"HTTP_ACCEPT": "multipart/related; type=application/octet-stream"}),
        (_instance(b), DICOM),
    ):
        assert _read(client, url, headers, reader) == 200, url
    (event,) = _events(outcome=AuditEvent.Outcome.SUCCESS)
    assert event.user == reader.user and event.study.study_instance_uid == uids(a)[0]
    assert event.detail["resource"] == "instance.rendered" and event.detail["reading_window_s"] == 1800
    # The metadata is a reading of its own kind: its first request is an event, the next are not.
    assert _read(client, _instance(a) + "/metadata", JSON, reader) == 200
    assert _read(client, _instance(b) + "/metadata", JSON, reader) == 200
    assert len(_events("dicomweb.metadata")) == 1

    # A whole series (an export, not a viewer's image) is always an event, and has no window.
    study, series, _ = uids(a)
    assert _read(client, f"/dicomweb/studies/{study}/series/{series}", DICOM, reader) == 200
    events = _events(outcome=AuditEvent.Outcome.SUCCESS)
    assert (
        len(events) == 2 and events[-1].detail["resource"] == "series" and "reading_window_s" not in events[-1].detail
    )
    # So is a failure inside the same reading: an instance the study does not hold.
    assert _read(client, f"/dicomweb/studies/{study}/series/{series}/instances/1.2.3.4/rendered", JPEG, reader) == 404
    assert len(_events(outcome=AuditEvent.Outcome.FAILURE)) == 1


def test_another_credential_another_study_or_the_window_past_is_a_new_event(  # type: ignore[no-untyped-def]
    client: Client, stored, reader, region, tmp_path: Path
) -> None:
    assert _read(client, _instance(stored[0]) + "/rendered", JPEG, reader) == 200
    # The same user with a second token (another viewer), then with a session.
    second = helpers.ApiUser(user=reader.user, token=_token_for(reader.user))
    assert _read(client, _instance(stored[1]) + "/rendered", JPEG, second) == 200
    session = Client()
    session.force_login(reader.user)
    assert _read(session, _instance(stored[2]) + "/rendered", JPEG) == 200
    assert _read(session, _instance(stored[3]) + "/rendered", JPEG) == 200
    assert len(_events()) == 3
    # Another study, with the first token.
    other = write_study(tmp_path / "other", patient=PatientInfo(patient_id="MRN0002", name="Bianchi^Anna"))
    ingest_files(other, region.facility)
    assert _read(client, _instance(other[0]) + "/rendered", JPEG, reader) == 200
    assert [e.study.study_instance_uid for e in _events()][-1] == uids(other[0])[0]
    # The window past, the next image request of a reading is an event again (a reading by a third
    # token, with a window of one second).
    third = helpers.ApiUser(user=reader.user, token=_token_for(reader.user))
    with override_settings(PACS_AUDIT_READING_WINDOW=1):
        assert _read(client, _instance(other[1]) + "/rendered", JPEG, third) == 200  # written
        assert _read(client, _instance(other[2]) + "/rendered", JPEG, third) == 200  # within its second
        assert len(_events()) == 5 and _events()[-1].detail["reading_window_s"] == 1
        time.sleep(1.2)
        assert _read(client, _instance(other[2]) + "/rendered", JPEG, third) == 200
        assert len(_events()) == 6


def _token_for(user: object) -> str:
    from knox.models import AuthToken

    _row, key = AuthToken.objects.create(user=user)
    return str(key)


def test_window_zero_audits_every_image(client: Client, stored, reader, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_AUDIT_READING_WINDOW = 0
    for path in stored[:3]:
        assert _read(client, _instance(path) + "/rendered", JPEG, reader) == 200
    assert len(_events()) == 3 and all("reading_window_s" not in e.detail for e in _events())


def test_a_cache_that_cannot_answer_audits_every_image(client: Client, stored, reader) -> None:  # type: ignore[no-untyped-def]
    # A Redis nobody listens on: each read and write of the cache fails, and each image is an event.
    broken = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",
            "OPTIONS": {"socket_connect_timeout": 0.5},
        }
    }
    with override_settings(CACHES=broken):
        for path in stored[:3]:
            assert _read(client, _instance(path) + "/rendered", JPEG, reader) == 200
    assert len(_events()) == 3
