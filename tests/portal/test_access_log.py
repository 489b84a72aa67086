"""«Chi ha visto i miei dati» lists the searches whose answer included the citizen,
beside the events about them: the patients a search returned are recorded by
``audit_record(..., patients=...)`` (C-FIND, QIDO-RS, the API's and the admin's
lists call it so)."""

from __future__ import annotations

import pytest

from archive.models import Patient
from kernel.audit import audit_record
from kernel.models import AuditEvent
from portal.access_log import access_log_events, access_log_rows
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import Cup
from tests.portal.portal_helpers import CitizenExam, citizen_exam_make
from tests.reporting_helpers import Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup

pytestmark = pytest.mark.django_db


@pytest.fixture
def online(cup: Cup, reporting: Reporting) -> CitizenExam:
    return citizen_exam_make(cup, reporting)


def stranger() -> Patient:
    return Patient.objects.create(family_name="VERDI", given_name="ANNA", provisional=True)


def test_a_search_that_returned_the_citizen_is_in_their_access_log(online: CitizenExam) -> None:
    mario = online.booking.patient
    other = stranger()
    audit_record(
        action="dicomweb.search", user=online.rep.radiologist, patients=[other.pk, mario.pk], source="10.0.0.7"
    )
    audit_record(action="dicom.query", ae_title="VIEWER", patients=[mario.pk])
    page = online.client.get("/fse/accessi/").content.decode()
    assert "ha cercato gli studi nell&#x27;archivio via DICOMweb: i tuoi dati erano tra i risultati" in page
    assert "Apparecchiatura DICOM VIEWER" in page
    assert "ha cercato gli studi nell&#x27;archivio da un&#x27;apparecchiatura DICOM" in page


def test_a_search_that_did_not_return_the_citizen_is_not_in_their_log(online: CitizenExam) -> None:
    mario = online.booking.patient
    other = stranger()
    mine = audit_record(action="api.studies", user=online.rep.radiologist, patients=[mario.pk])
    theirs = audit_record(action="api.studies", user=online.rep.radiologist, patients=[other.pk])
    found = set(access_log_events(patients=[mario]).values_list("pk", flat=True))
    assert mine.pk in found and theirs.pk not in found
    assert theirs.pk in set(access_log_events(patients=[other]).values_list("pk", flat=True))


def test_an_event_about_the_citizen_that_also_lists_them_appears_once(online: CitizenExam) -> None:
    mario = online.booking.patient
    event = audit_record(action="api.studies", user=online.rep.radiologist, patient=mario, patients=[mario.pk])
    assert list(access_log_events(patients=[mario]).filter(pk=event.pk).values_list("pk", flat=True)) == [event.pk]
    [row] = [r for r in access_log_rows(patients=[mario], viewer=online.user)[0:50] if "API" in r.what]
    assert "tra i risultati" not in row.what  # the search was about them, not only its answer


def test_one_acting_for_others_sees_whose_data_a_search_returned(online: CitizenExam) -> None:
    mario = online.booking.patient
    child = Patient.objects.create(family_name="ROSSI", given_name="LUCA", provisional=True)
    audit_record(action="dicom.query", ae_title="VIEWER", patients=[child.pk, stranger().pk])
    rows = access_log_rows(patients=[mario, child], viewer=online.user)[0:50]
    [row] = [r for r in rows if r.kind == "device"]
    assert row.what.endswith(": tra i risultati") and row.about == str(child)


def test_the_access_log_counts_searches_in_its_pages(online: CitizenExam) -> None:
    mario = online.booking.patient
    before = access_log_rows(patients=[mario], viewer=online.user).count()
    for _ in range(3):
        audit_record(action="dicom.query", ae_title="VIEWER", patients=[mario.pk])
    assert access_log_rows(patients=[mario], viewer=online.user).count() == before + 3
    assert AuditEvent.objects.filter(action="dicom.query", patient=None).count() == 3
