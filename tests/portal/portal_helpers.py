"""A citizen with an exam online: booked online, performed, reported and signed for real, published."""

from __future__ import annotations

from dataclasses import dataclass

from django.test import Client

from archive.models import Report
from booking.models import Booking
from portal import publication
from portal.accounts import citizen_account_create
from tests.booking.conftest import MARIO_CF, Cup, linked_booking
from tests.reporting_helpers import Reporting, signed_report

CITIZEN_PASSWORD = "password-del-cittadino-42"


@dataclass
class CitizenExam:
    cup: Cup
    rep: Reporting
    booking: Booking
    report: Report
    user: object
    client: Client


def citizen_login(client: Client, cf: str, password: str = CITIZEN_PASSWORD, **extra: object):  # type: ignore[no-untyped-def]
    return client.post("/fse/accesso/", {"codice_fiscale": cf, "password": password}, **extra)


def citizen_exam_make(cup: Cup, rep: Reporting, *, delivery: str | None = None) -> CitizenExam:
    kwargs = {"delivery": delivery} if delivery else {}
    booking = linked_booking(cup, rep.study, **kwargs)
    report = signed_report(rep)
    publication.report_publish(report_pk=report.pk, study_pk=rep.study.pk)
    booking.refresh_from_db()
    user = citizen_account_create(codice_fiscale=MARIO_CF, password=CITIZEN_PASSWORD, email="mario@example.org")
    client = Client()
    response = citizen_login(client, MARIO_CF)
    assert response.status_code == 302, response.content[:500]
    return CitizenExam(cup, rep, booking, report, user, client)
